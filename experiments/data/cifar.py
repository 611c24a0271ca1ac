"""CIFAR-10 and CIFAR-100 from tensorflow-datasets, held in host memory.

Each process reads its shard of a split once (about 150 MB of uint8 for a
whole 50,000-image training split) and draws batches as `arrays` describes,
so an epoch is a full permutation and resuming at any step is free. Training
images get a random 32x32 crop of the image zero-padded by 4 pixels and a
random left-right flip. Images are normalised per channel with the training
split's pixel mean and standard deviation.
"""

from __future__ import annotations

from experiments.data import arrays
from experiments.data import common
from experiments.data import tfds_access

IMAGE_SIZE = 32
TRAIN_SPLIT = 'train'
EVAL_SPLIT = 'test'

# Per-channel (R, G, B) pixel mean and standard deviation over the 50,000
# training images scaled to [0, 1]. These are the widely published values;
# they were not recomputed in this repository.
STATISTICS = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
NAMES = tuple(STATISTICS)

# Zero pixels added on every side before the random 32x32 training crop.
CROP_PADDING = 4


def resolve_image_size(name: str, image_size: int | None) -> int:
  if image_size not in (None, IMAGE_SIZE):
    raise ValueError(
        f'image_size {image_size!r} is not supported for {name}; its images '
        f'are {IMAGE_SIZE}x{IMAGE_SIZE}. Use None or {IMAGE_SIZE}.'
    )
  return IMAGE_SIZE


def preprocessing(name: str) -> arrays.Preprocessing:
  mean, std = STATISTICS[name]
  return arrays.Preprocessing(
      mean=mean, std=std, crop_padding=CROP_PADDING, flip=True
  )


def get_dataset_info(
    name: str, data_dir: str | None, image_size: int | None
) -> common.DatasetInfo:
  size = resolve_image_size(name, image_size)
  builder = tfds_access.get_builder(name, data_dir)
  return common.DatasetInfo(
      name=name,
      num_classes=builder.info.features['label'].num_classes,
      image_shape=(size, size, 3),
      num_train=tfds_access.split_size(builder, TRAIN_SPLIT),
      num_test=tfds_access.split_size(builder, EVAL_SPLIT),
  )


def train_batches(
    name: str,
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    data_dir: str | None,
    image_size: int | None,
    process_index: int,
    process_count: int,
    augment: bool,
):
  """Load this process's training shard and return its infinite iterator."""
  resolve_image_size(name, image_size)
  builder = tfds_access.get_builder(name, data_dir)
  split = tfds_access.process_split(
      TRAIN_SPLIT, process_index, process_count, drop_remainder=True
  )
  images, labels = tfds_access.load_arrays(
      builder, split, num_classes=builder.info.features['label'].num_classes
  )
  return arrays.train_batches(
      images,
      labels,
      name=name,
      preprocessing=preprocessing(name),
      augment=augment,
      batch_size=batch_size,
      seed=seed,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
  )


def eval_batches(
    name: str,
    *,
    batch_size: int,
    data_dir: str | None,
    image_size: int | None,
    process_index: int,
    process_count: int,
):
  """Load this process's test shard and return one padded pass over it."""
  resolve_image_size(name, image_size)
  builder = tfds_access.get_builder(name, data_dir)
  num_test = tfds_access.split_size(builder, EVAL_SPLIT)
  split = tfds_access.process_split(
      EVAL_SPLIT, process_index, process_count, drop_remainder=False
  )
  images, labels = tfds_access.load_arrays(
      builder, split, num_classes=builder.info.features['label'].num_classes
  )
  # NOTE: tfds.testing.mock_data ignores split slicing, so under it every
  # process reads the whole split; the batch count then grows to hold it.
  num_batches = max(
      common.num_eval_batches(num_test, batch_size, process_count),
      -(-len(labels) // batch_size),
  )
  return arrays.eval_batches(
      images,
      labels,
      preprocessing=preprocessing(name),
      batch_size=batch_size,
      num_batches=num_batches,
  )
