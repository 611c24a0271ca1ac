"""Opening tensorflow-datasets builders, with clear errors for missing data.

TensorFlow is imported only by this module and the ones that use it, so the
embedded digits dataset runs without importing it. On import, this module
hides all GPUs from TensorFlow, which leaves the accelerators to JAX.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments.data import common

try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:
  # TensorFlow was initialised earlier by other code; its device choice stays.
  pass

# Datasets whose source files tfds cannot download by itself.
_MANUAL_DOWNLOADS = {
    'imagenet2012': (
        'imagenet2012 cannot be downloaded automatically. Download '
        'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from '
        'https://image-net.org/ (an account is required) and put them, '
        'unextracted, in {manual_dir} before running the command below.'
    ),
}


def not_prepared_message(builder: tfds.core.DatasetBuilder) -> str:
  """Return the steps that prepare the dataset of `builder` in its directory."""
  name = builder.name
  root = builder.data_dir_root
  lines = [
      f'Dataset {name!r} is not prepared in {builder.data_dir}.',
  ]
  manual = _MANUAL_DOWNLOADS.get(name)
  if manual:
    manual_dir = os.path.join(root, 'downloads', 'manual')
    lines.append(manual.format(manual_dir=manual_dir))
  lines += [
      'Prepare it once with',
      f'  tfds build {name} --data_dir={root}',
      'or',
      '  python -m tensorflow_datasets.scripts.download_and_prepare '
      f'--datasets={name} --data_dir={root}',
      'then point the pipeline at that directory: pass data_dir (the '
      'data_dir config field) or set the TFDS_DATA_DIR environment variable. '
      f'data_dir is now {root}.',
  ]
  return '\n'.join(lines)


def get_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """Return the tfds builder of `name`; data_dir None means tfds' default."""
  return tfds.builder(name, data_dir=data_dir)


def load_split(
    builder: tfds.core.DatasetBuilder, split, **as_dataset_kwargs
) -> tf.data.Dataset:
  """Return `builder.as_dataset(split=split, ...)` for a prepared dataset.

  Raises:
    FileNotFoundError: the dataset has not been prepared in the builder's
      directory. The message gives the commands that prepare it.
  """
  try:
    return builder.as_dataset(split=split, **as_dataset_kwargs)
  except AssertionError as error:
    # tensorflow-datasets 4.9.10 signals missing files with an AssertionError
    # ("could not find data in ...").
    if 'could not find data' not in str(error):
      raise
    raise FileNotFoundError(not_prepared_message(builder)) from error


def split_size(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """Return the number of examples in `split`.

  A prepared dataset records split sizes in its metadata. Under
  `tfds.testing.mock_data` the metadata has no splits, so the mock split is
  counted instead, which also raises the not-prepared error for real data
  that is missing.
  """
  if split in builder.info.splits:
    return builder.info.splits[split].num_examples
  dataset = load_split(builder, split)
  count = int(dataset.cardinality().numpy())
  if count < 0:
    count = int(dataset.reduce(0, lambda total, _: total + 1).numpy())
  return count


def process_split(
    split: str, process_index: int, process_count: int, *, drop_remainder: bool
):
  """Return this process's part of `split`, as `tfds.even_splits` defines it.

  `common.shard_bounds` gives the same ranges, which the tests check.
  """
  if process_count == 1:
    return split
  return tfds.even_splits(split, process_count, drop_remainder=drop_remainder)[
      process_index
  ]


def deterministic_options() -> tf.data.Options:
  """Return tf.data options that keep element order fixed across runs."""
  options = tf.data.Options()
  options.deterministic = True
  return options


def load_arrays(
    builder: tfds.core.DatasetBuilder,
    split,
    *,
    num_classes: int,
    chunk_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
  """Read a whole split of fixed-size images into host memory.

  Args:
    builder: a builder with 'image' (uint8) and 'label' features.
    split: split name or tfds split object, read in file order.
    num_classes: for the label check.
    chunk_size: examples converted to numpy at a time.

  Returns:
    (images uint8 [n, H, W, C], labels int32 [n]).

  Raises:
    FileNotFoundError: the dataset is not prepared.
    ValueError: a label is outside [0, num_classes).
  """
  dataset = load_split(
      builder,
      split,
      shuffle_files=False,
      read_config=tfds.ReadConfig(options=deterministic_options()),
  )
  dataset = dataset.map(
      lambda example: (example['image'], example['label']),
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  image_chunks, label_chunks = [], []
  for images, labels in tfds.as_numpy(
      dataset.batch(chunk_size).prefetch(tf.data.AUTOTUNE)
  ):
    image_chunks.append(images)
    label_chunks.append(labels)
  if not image_chunks:
    raise ValueError(f'Split {split} of {builder.name} is empty.')
  labels = np.concatenate(label_chunks)
  common.check_labels(labels, num_classes)
  return np.concatenate(image_chunks), labels.astype(np.int32)
