"""ImageNet-1k (imagenet2012) and Imagenette, streamed from tensorflow-datasets.

Training images get an Inception-style random-resized crop: a window covering
8% to 100% of the image area with aspect ratio 3/4 to 4/3, resized to
`image_size` (224 by default), then a random left-right flip. Evaluation
resizes the shorter side to `round(image_size * 256 / 224)` and cuts the
central `image_size` square. Both resize bilinearly with antialiasing and
normalise with the ImageNet per-channel mean and standard deviation.

Training order is deterministic. The pipeline for epoch `e` shuffles file order
and a buffer of examples with a seed drawn from (seed, process_index, e). The
random crop and flip of the example at position `i` of that epoch use a
stateless seed drawn from (seed, process_index, e, i). Resuming at step `k`
rebuilds the pipeline of epoch `k // steps_per_epoch` and skips the examples
before step `k` of that epoch, reading their encoded bytes without decoding.
"""

from __future__ import annotations

from collections.abc import Iterator
import functools

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments.data import common
from experiments.data import tfds_access

NAMES = ('imagenet2012', 'imagenette')
TRAIN_SPLIT = 'train'
EVAL_SPLIT = 'validation'
DEFAULT_IMAGE_SIZE = 224
# Evaluation resizes the shorter side to image_size * 256 / 224.
RESIZE_RATIO = 256 / 224
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)
AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
# Attempts to find a crop within both ranges before the whole image is used.
MAX_CROP_ATTEMPTS = 10
# Examples in the shuffle buffer. For ImageNet, whose encoded JPEGs average
# roughly 110 KB, 10,000 of them hold about 1.1 GB of host memory (estimate).
DEFAULT_SHUFFLE_BUFFER_SIZE = 10_000


def resolve_image_size(image_size: int | None) -> int:
  if image_size is None:
    return DEFAULT_IMAGE_SIZE
  if not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise ValueError(
        f'image_size must be a positive integer or None (for '
        f'{DEFAULT_IMAGE_SIZE}), got {image_size!r}.'
    )
  return int(image_size)


def _normalize(image: tf.Tensor) -> tf.Tensor:
  """Map float pixel values in [0, 255] to normalised float32."""
  mean = tf.constant(MEAN_RGB, tf.float32)
  std = tf.constant(STD_RGB, tf.float32)
  return (tf.cast(image, tf.float32) / 255.0 - mean) / std


def random_resized_crop(
    image_bytes: tf.Tensor, image_size: int, seed: tf.Tensor
) -> tf.Tensor:
  """Decode a random window of a JPEG and resize it to image_size x image_size.

  Only the window is decoded. When no window within AREA_RANGE and
  ASPECT_RATIO_RANGE is found in MAX_CROP_ATTEMPTS tries, the whole image is
  used (torchvision's RandomResizedCrop takes a central crop instead).

  Args:
    image_bytes: scalar string tensor, a JPEG.
    image_size: side of the output in pixels.
    seed: int64 [2] stateless seed.

  Returns:
    float32 [image_size, image_size, 3] with values in [0, 255].
  """
  shape = tf.image.extract_jpeg_shape(image_bytes)
  whole_image = tf.constant([[[0.0, 0.0, 1.0, 1.0]]], tf.float32)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape,
      bounding_boxes=whole_image,
      seed=seed,
      min_object_covered=0.0,
      aspect_ratio_range=ASPECT_RATIO_RANGE,
      area_range=AREA_RANGE,
      max_attempts=MAX_CROP_ATTEMPTS,
      use_image_if_no_bounding_boxes=True,
  )
  window = tf.stack([begin[0], begin[1], size[0], size[1]])
  crop = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
  return tf.image.resize(
      crop, [image_size, image_size], method='bilinear', antialias=True
  )


def resize_and_center_crop(
    image_bytes: tf.Tensor, image_size: int
) -> tf.Tensor:
  """Decode a JPEG, resize its shorter side, and cut the central square.

  Args:
    image_bytes: scalar string tensor, a JPEG.
    image_size: side of the output in pixels; the shorter side is first
      resized to round(image_size * RESIZE_RATIO).

  Returns:
    float32 [image_size, image_size, 3] with values in [0, 255].
  """
  image = tf.io.decode_jpeg(image_bytes, channels=3)
  height = tf.cast(tf.shape(image)[0], tf.float64)
  width = tf.cast(tf.shape(image)[1], tf.float64)
  shorter_side = float(round(image_size * RESIZE_RATIO))
  scale = shorter_side / tf.minimum(height, width)
  new_height = tf.cast(tf.round(height * scale), tf.int32)
  new_width = tf.cast(tf.round(width * scale), tf.int32)
  new_height = tf.maximum(new_height, image_size)
  new_width = tf.maximum(new_width, image_size)
  image = tf.image.resize(
      image, [new_height, new_width], method='bilinear', antialias=True
  )
  top = (new_height - image_size) // 2
  left = (new_width - image_size) // 2
  return image[top : top + image_size, left : left + image_size, :]


def _train_example(example, index, *, image_size, augment_seed, augment):
  if augment:
    seed = tf.stack([tf.constant(augment_seed, tf.int64), index])
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=2)
    )
    image = random_resized_crop(example['image'], image_size, crop_seed)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  else:
    image = resize_and_center_crop(example['image'], image_size)
  image = tf.ensure_shape(_normalize(image), [image_size, image_size, 3])
  return {'image': image, 'label': tf.cast(example['label'], tf.int32)}


def _eval_example(example, *, image_size):
  image = _normalize(resize_and_center_crop(example['image'], image_size))
  return {
      'image': tf.ensure_shape(image, [image_size, image_size, 3]),
      'label': tf.cast(example['label'], tf.int32),
      'mask': tf.constant(True),
  }


def get_dataset_info(
    name: str, data_dir: str | None, image_size: int | None
) -> common.DatasetInfo:
  size = resolve_image_size(image_size)
  builder = tfds_access.get_builder(name, data_dir)
  return common.DatasetInfo(
      name=name,
      num_classes=builder.info.features['label'].num_classes,
      image_shape=(size, size, 3),
      num_train=tfds_access.split_size(builder, TRAIN_SPLIT),
      num_test=tfds_access.split_size(builder, EVAL_SPLIT),
  )


def _read_encoded(builder, split, *, shuffle_seed: int | None):
  """Return the split's examples with the images left as encoded bytes."""
  read_config = tfds.ReadConfig(
      shuffle_seed=shuffle_seed, options=tfds_access.deterministic_options()
  )
  return tfds_access.load_split(
      builder,
      split,
      shuffle_files=shuffle_seed is not None,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=read_config,
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
    shuffle_buffer_size: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Return an infinite iterator of training batches of this process's shard."""
  size = resolve_image_size(image_size)
  if shuffle_buffer_size is None:
    shuffle_buffer_size = DEFAULT_SHUFFLE_BUFFER_SIZE
  if shuffle_buffer_size < 1:
    raise ValueError(
        f'shuffle_buffer_size must be positive, got {shuffle_buffer_size}.'
    )
  builder = tfds_access.get_builder(name, data_dir)
  num_classes = builder.info.features['label'].num_classes
  shard_size = tfds_access.split_size(builder, TRAIN_SPLIT) // process_count
  steps_per_epoch = common.steps_per_epoch_or_raise(
      shard_size, batch_size, name, process_count
  )
  epoch, step = common.split_start_step(start_step, steps_per_epoch)
  split = tfds_access.process_split(
      TRAIN_SPLIT, process_index, process_count, drop_remainder=True
  )

  def epoch_dataset(epoch: int, skip_examples: int) -> tf.data.Dataset:
    order_seed = common.derive_seed(
        common.ORDER_STREAM, seed, process_index, epoch
    )
    augment_seed = common.derive_seed(
        common.AUGMENT_STREAM, seed, process_index, epoch
    )
    dataset = _read_encoded(builder, split, shuffle_seed=order_seed)
    dataset = dataset.shuffle(shuffle_buffer_size, seed=order_seed)
    # A fixed epoch length, also when the shard is longer than
    # num_train // process_count (tfds.testing.mock_data ignores slicing).
    dataset = dataset.take(steps_per_epoch * batch_size)
    dataset = dataset.enumerate().skip(skip_examples)
    dataset = dataset.map(
        lambda index, example: _train_example(
            example, index, image_size=size, augment_seed=augment_seed,
            augment=augment,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)

  def generate(epoch: int, step: int):
    while True:
      for batch in tfds.as_numpy(epoch_dataset(epoch, step * batch_size)):
        common.check_labels(batch['label'], num_classes)
        yield batch
      epoch += 1
      step = 0

  return generate(epoch, step)


def eval_batches(
    name: str,
    *,
    batch_size: int,
    data_dir: str | None,
    image_size: int | None,
    process_index: int,
    process_count: int,
) -> Iterator[dict[str, np.ndarray]]:
  """Return one padded pass over this process's validation shard."""
  size = resolve_image_size(image_size)
  builder = tfds_access.get_builder(name, data_dir)
  num_classes = builder.info.features['label'].num_classes
  num_eval = tfds_access.split_size(builder, EVAL_SPLIT)
  split = tfds_access.process_split(
      EVAL_SPLIT, process_index, process_count, drop_remainder=False
  )
  dataset = _read_encoded(builder, split, shuffle_seed=None)
  num_batches = common.num_eval_batches(num_eval, batch_size, process_count)
  shard_size = int(dataset.cardinality().numpy())
  if shard_size >= 0:
    # Only larger than an even shard under tfds.testing.mock_data, which
    # ignores slicing.
    num_batches = max(num_batches, -(-shard_size // batch_size))

  dataset = dataset.map(
      functools.partial(_eval_example, image_size=size),
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([size, size, 3], tf.float32),
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(False),
  }).repeat()
  dataset = dataset.concatenate(padding)
  dataset = dataset.batch(batch_size, drop_remainder=True).take(num_batches)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)

  def generate():
    for batch in tfds.as_numpy(dataset):
      common.check_labels(batch['label'], num_classes)
      yield batch

  return generate()
