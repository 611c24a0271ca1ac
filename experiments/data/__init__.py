"""Input pipelines for the experiments.

The public interface is `experiments.input_pipeline`. The modules here
implement it: `common` (dataset metadata, label checks, per-process sharding
and seeds), `arrays` (batches drawn from images in host memory), `digits` (the
embedded MNIST subset), `tfds_access` (opening tensorflow-datasets builders),
`cifar` and `imagenet`.
"""
