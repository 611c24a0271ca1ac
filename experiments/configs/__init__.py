"""Configuration files of the training program, one per reported recipe."""
