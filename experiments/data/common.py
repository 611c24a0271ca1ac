"""Dataset metadata, label checks, per-process sharding and seed derivation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset and its model inputs after preprocessing.

  Attributes:
    name: one of `experiments.input_pipeline.DATASET_NAMES`.
    num_classes: number of classes; labels lie in `[0, num_classes)`.
    image_shape: (height, width, channels) of the model input.
    num_train: examples in the training split, all processes together.
    num_test: examples in the evaluation split, all processes together.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int


class LabelError(ValueError):
  """A dataset yielded a label that is not a class index of the run."""


def check_labels(labels, num_classes: int) -> None:
  """Raise ValueError unless every label is an integer in `[0, num_classes)`.

  optax's integer-label cross-entropy returns a NaN loss but a finite, wrong
  gradient for an out-of-range label, so bad labels must be stopped where the
  data enters.

  Args:
    labels: array-like of integer class indices, any shape.
    num_classes: number of classes.

  Raises:
    LabelError: for non-integer labels, or naming the first out-of-range
      value, its position and how many labels are out of range.

  Example:
    >>> check_labels(np.array([0, 3, 9]), num_classes=10)  # Returns None.

    `check_labels(np.array([0, 10]), num_classes=10)` raises "label 10 at
    position 1 is outside [0, 10) (1 of 2 labels are out of range) ...".
  """
  labels = np.asarray(labels)
  if not np.issubdtype(labels.dtype, np.integer):
    raise LabelError(
        f'labels must be integer class indices, got dtype {labels.dtype}.'
    )
  invalid = (labels < 0) | (labels >= num_classes)
  if not invalid.any():
    return

  position = tuple(int(i) for i in np.argwhere(invalid)[0])
  value = int(labels[position])
  if len(position) == 1:
    position = position[0]
  raise LabelError(
      f'label {value} at position {position} is outside [0, {num_classes}) '
      f'({int(invalid.sum())} of {labels.size} labels are out of range). Check '
      'that the dataset and its num_classes belong together.'
  )


def resolve_process(
    process_index: int | None, process_count: int | None
) -> tuple[int, int]:
  """Return (process_index, process_count), taking JAX's values for None."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    if process_index is None:
      process_index = jax.process_index()
    if process_count is None:
      process_count = jax.process_count()
  if process_count < 1:
    raise ValueError(f'process_count must be at least 1, got {process_count}.')
  if not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index {process_index} is outside [0, {process_count}) for '
        f'process_count {process_count}.'
    )
  return process_index, process_count


def validate_batch_size(batch_size: int) -> None:
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(
        f'batch_size must be a positive integer (the per-process batch), got '
        f'{batch_size!r}.'
    )


def validate_seed(seed: int) -> None:
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'seed must be a non-negative integer, got {seed!r}.')


def shard_bounds(
    num_examples: int,
    process_index: int,
    process_count: int,
    *,
    drop_remainder: bool,
) -> tuple[int, int]:
  """Return [start, stop) of this process's contiguous shard of a split.

  The shards follow `tfds.even_splits`: with `drop_remainder` every process
  gets `num_examples // process_count` examples and the last few are unused.
  Without it the first `num_examples % process_count` processes get one more.

  Args:
    num_examples: size of the whole split.
    process_index: this process, in `[0, process_count)`.
    process_count: number of processes.
    drop_remainder: whether to drop the examples left after an even division.

  Returns:
    (start, stop) indices into the split.
  """
  base, remainder = divmod(num_examples, process_count)
  if drop_remainder:
    return process_index * base, (process_index + 1) * base
  start = process_index * base + min(process_index, remainder)
  stop = start + base + (1 if process_index < remainder else 0)
  return start, stop


def num_eval_batches(
    num_examples: int, batch_size: int, process_count: int
) -> int:
  """Return the batch count every process yields for a one-pass evaluation.

  The largest shard of an even split contains
  ceil(num_examples / process_count) examples. Every process pads its shard
  to the batches this one needs, so collectives under `pmap` line up across
  processes.
  """
  largest_shard = math.ceil(num_examples / process_count)
  return max(1, math.ceil(largest_shard / batch_size))


# First entry of every random-stream key, so the shuffle order and the
# augmentation never share a stream. np.random.SeedSequence pads keys shorter
# than its 4-word pool with zeros, so without a tag [seed, process, epoch] and
# [seed, process, epoch, 0] would give the same stream (checked, NumPy 2).
ORDER_STREAM = 0
AUGMENT_STREAM = 1


def random_generator(*key: int) -> np.random.Generator:
  """Return a NumPy generator for a key like (ORDER_STREAM, seed, epoch)."""
  return np.random.default_rng(np.random.SeedSequence(list(key)))


def derive_seed(*key: int) -> int:
  """Return a 31-bit seed hashed from a key of non-negative integers.

  np.random.SeedSequence hashes the key, so nearby keys (epoch 3 and 4) give
  unrelated seeds. The result fits the int64 seeds of tf.data and tfds.
  """
  state = np.random.SeedSequence(list(key)).generate_state(1)
  return int(state[0] & 0x7FFFFFFF)


def split_start_step(start_step: int, steps_per_epoch: int) -> tuple[int, int]:
  """Return (epoch, step within that epoch) of global step `start_step`."""
  if not isinstance(start_step, (int, np.integer)) or start_step < 0:
    raise ValueError(
        f'start_step must be a non-negative integer, got {start_step!r}.'
    )
  return divmod(int(start_step), steps_per_epoch)


def steps_per_epoch_or_raise(
    shard_size: int, batch_size: int, name: str, process_count: int
) -> int:
  """Return the full batches per epoch of a shard; raise ValueError if none."""
  steps = shard_size // batch_size
  if steps == 0:
    raise ValueError(
        f"batch_size {batch_size} is larger than this process's training "
        f'shard of {name} ({shard_size} examples with process_count '
        f'{process_count}), so an epoch holds no full batch. Use a batch_size '
        f'of at most {shard_size}.'
    )
  return steps
