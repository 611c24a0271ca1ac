"""A small local run for debugging: a tiny ResNet on the embedded digits.

It exercises every part of the program (PGT, evaluation, analyses,
checkpoints) and took 42 s on a busy 2-core machine. Force several CPU
devices to exercise data parallelism too:

  XLA_FLAGS=--xla_force_host_platform_device_count=4 \
  python -m experiments.main \
      --config experiments/configs/local.py \
      --config.alpha=0.25 --workdir runs/local
"""

from experiments.configs import default


def get_config():
  """Returns the debugging recipe."""
  config = default.get_config()
  config.model = 'resnet_tiny'
  config.dataset = 'digits'
  config.image_size = 32
  config.half_precision = False
  config.batch_size = 64
  config.eval_batch_size = 200
  config.num_epochs = 2
  config.steps_per_epoch = 20
  config.learning_rate = 0.1
  config.learning_rate_batch_size = 64
  config.warmup_epochs = 0.5
  return config
