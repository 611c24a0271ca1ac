"""Measures the input pipelines' examples per second against the step's.

Usage::

  python -m benchmarks.pipeline_speed [--pipelines NAME ...] [--repeats N]
      [--warmup N] [--batch-size N] [--consumer SETUP] [--step-repeats N]
      [--json OUT]

It times ``experiments.input_pipeline.train_batches``, the training input of
experiments/train.py, for

* ``digits``: the embedded MNIST digits padded to 32x32x1, without
  augmentation (the dataset's default), batch 128;
* ``cifar10``: the tensorflow-datasets CIFAR-10 pipeline on
  ``tfds.testing.mock_data``: the split is read into memory once, then the
  random crop and flip run in NumPy; batch 128;
* ``imagenet2012_64``: the tensorflow-datasets ImageNet pipeline on mock
  data: tf.data decodes a random-resized crop of each JPEG, resizes it to
  64x64 and flips it; batch 8.

NOTE: mock ImageNet JPEGs are small (five sampled from
tensorflow-datasets 4.9.10's mock data had sides of 6 to 47 pixels), so
decoding them is much cheaper than decoding ImageNet photos, whose sides are
hundreds of pixels. Read that rate as an upper bound for real data.

Each pipeline is compared with the training step that would consume it:
``resnet20`` for digits and CIFAR-10, ``resnet18_64`` for ImageNet (see
benchmarks/step_speed.py). The reference is the images per second of the
baseline step in float32, timed on the same machine unless the caller
supplies the rate.

The first batch (which loads or opens the data) and ``--warmup`` more are not
timed; then ``--repeats`` consecutive batches are, each up to the return of
``next``. Pipelines are timed one after the other, not interleaved, because
the ImageNet pipeline prepares batches in background threads (tf.data
prefetch) and would fill its buffer during the others' turns. The mock data
holds enough examples that the timed batches fall in one epoch.

On a CPU-only machine the pipeline and the step share the same cores, so
1 / ratio estimates the time the pipeline adds to each step, as a fraction of
the step's time. It does not say whether an accelerator would wait for data.
"""

import argparse
import contextlib
import dataclasses
import logging
import statistics
import time
from typing import Mapping, Optional, Sequence

from benchmarks import _measure
from benchmarks import _training_step
from benchmarks import step_speed
from experiments import input_pipeline


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """A training input pipeline and the step that consumes it.

  Attributes:
    name: key in `PIPELINES`, used on the command line.
    dataset: a name from `experiments.input_pipeline.DATASET_NAMES`.
    image_size: side of the model input; None for the dataset's default.
    mock: read `tfds.testing.mock_data` instead of prepared data.
    consumer: the set-up in `_training_step.SETUPS` whose step consumes it;
      its batch size is the pipeline's.
  """

  name: str
  dataset: str
  image_size: Optional[int]
  mock: bool
  consumer: str


PIPELINES = {
    pipeline.name: pipeline for pipeline in (
        Pipeline("digits", "digits", 32, False, "resnet20"),
        Pipeline("cifar10", "cifar10", None, True, "resnet20"),
        Pipeline("imagenet2012_64", "imagenet2012", 64, True, "resnet18_64"),
    )
}


def _drop_tensor_info_warning(record: logging.LogRecord) -> bool:
  # tensorflow-datasets 4.9.10's mock data logs a deprecation warning of its
  # own `TensorInfo.dtype` once per read, which would flood the table.
  return "`TensorInfo.dtype` is deprecated" not in record.getMessage()


def _mock_data(num_examples: int):
  # TensorFlow is imported only when a pipeline needs mock data.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  absl_logger = logging.getLogger("absl")
  if _drop_tensor_info_warning not in absl_logger.filters:
    absl_logger.addFilter(_drop_tensor_info_warning)
  return tfds.testing.mock_data(num_examples=num_examples)


def time_pipeline(
    pipeline: Pipeline, *, batch_size: int, repeats: int, warmup: int
) -> dict:
  """Times `repeats` consecutive batches of one pipeline.

  Args:
    pipeline: the pipeline.
    batch_size: examples per batch.
    repeats: timed batches, at least 1.
    warmup: untimed batches after the first.

  Returns:
    A record with the seconds of the first batch, the median seconds per
    timed batch, and examples per second from the median
    ('examples_per_s') and from the total time ('mean_examples_per_s').
  """
  if repeats < 1:
    raise ValueError(f"repeats must be at least 1, got {repeats}.")
  # One more batch than taken, so that no epoch ends inside the timing.
  num_examples = batch_size * (warmup + repeats + 2)
  context = (_mock_data(num_examples) if pipeline.mock
             else contextlib.nullcontext())
  with context:
    start = time.perf_counter()
    batches = input_pipeline.train_batches(
        pipeline.dataset,
        batch_size=batch_size,
        seed=0,
        image_size=pipeline.image_size,
        process_index=0,
        process_count=1,
    )
    first = next(batches)
    first_batch_s = time.perf_counter() - start
    for _ in range(warmup):
      next(batches)
    seconds = []
    for _ in range(repeats):
      start = time.perf_counter()
      next(batches)
      seconds.append(time.perf_counter() - start)
  median = statistics.median(seconds)
  return {
      "pipeline": pipeline.name,
      "dataset": pipeline.dataset,
      "mock": pipeline.mock,
      "image_shape": list(first["image"].shape[1:]),
      "batch_size": batch_size,
      "repeats": repeats,
      "warmup": warmup,
      "first_batch_s": first_batch_s,
      "median_batch_s": median,
      "examples_per_s": batch_size / median,
      "mean_examples_per_s": batch_size * repeats / sum(seconds),
  }


def run(
    pipeline_names: Sequence[str],
    *,
    repeats: int,
    warmup: int = 1,
    batch_size: Optional[int] = None,
    consumer: Optional[str] = None,
    step_images_per_s: Optional[Mapping[str, float]] = None,
    step_repeats: int = step_speed.MIN_RECORD_REPEATS,
) -> list[dict]:
  """Times each pipeline and compares it with its consumer step.

  Args:
    pipeline_names: keys of `PIPELINES`.
    repeats: timed batches per pipeline.
    warmup: untimed batches after the first.
    batch_size: examples per batch for every pipeline; None for each
      consumer's batch size.
    consumer: a set-up whose step every pipeline is compared with; None for
      each pipeline's own consumer.
    step_images_per_s: images per second of the float32 baseline step by
      set-up name, from `step_speed.run`. Set-ups missing here are timed.
    step_repeats: timed steps for a set-up that must be timed.

  Returns:
    One record per pipeline, with 'consumer', 'consumer_images_per_s' and
    'ratio_to_consumer' (the pipeline's examples per second over the step's
    images per second).
  """
  rates = dict(step_images_per_s or {})
  records = []
  for name in pipeline_names:
    if name not in PIPELINES:
      raise ValueError(
          f"Unknown pipeline {name!r}. Valid pipelines: "
          f"{', '.join(PIPELINES)}.")
    pipeline = PIPELINES[name]
    consumer_name = consumer or pipeline.consumer
    consumer_setup = _training_step.get_setup(consumer_name)
    record = time_pipeline(
        pipeline,
        batch_size=batch_size or consumer_setup.batch_size,
        repeats=repeats,
        warmup=warmup)
    if consumer_name not in rates:
      step_records = step_speed.run(
          [consumer_name], repeats=step_repeats, variants=("baseline",))
      rates[consumer_name] = step_records[0]["images_per_s"]
    record["consumer"] = consumer_name
    record["consumer_images_per_s"] = rates[consumer_name]
    record["ratio_to_consumer"] = (
        record["examples_per_s"] / rates[consumer_name])
    records.append(record)
  return records


def format_table(records: Sequence[dict]) -> str:
  """Returns the records as a plain-text table, one pipeline per line."""
  header = (f"{'pipeline':<16} {'image':>9} {'batch':>5} {'batches':>7} "
            f"{'first s':>7} {'examples/s':>10} {'mean ex/s':>10} "
            f"{'consumer':<12} {'step img/s':>10} {'ratio':>8}")
  lines = [header, "-" * len(header)]
  for record in records:
    image = "x".join(str(size) for size in record["image_shape"])
    lines.append(
        f"{record['pipeline']:<16} {image:>9} {record['batch_size']:>5} "
        f"{record['repeats']:>7} {record['first_batch_s']:>7.2f} "
        f"{record['examples_per_s']:>10,.0f} "
        f"{record['mean_examples_per_s']:>10,.0f} "
        f"{record['consumer']:<12} {record['consumer_images_per_s']:>10.1f} "
        f"{record['ratio_to_consumer']:>8.1f}")
  return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.pipeline_speed",
      description=__doc__.split("\n\n", 1)[0])
  parser.add_argument(
      "--pipelines", nargs="+", default=list(PIPELINES),
      choices=list(PIPELINES), metavar="NAME",
      help="pipelines to time, from: " + ", ".join(PIPELINES)
      + " (default: all)")
  parser.add_argument(
      "--repeats", type=int, default=step_speed.MIN_RECORD_REPEATS,
      help="timed batches per pipeline, at least "
      f"{step_speed.MIN_RECORD_REPEATS} for a record "
      f"(default: {step_speed.MIN_RECORD_REPEATS})")
  parser.add_argument(
      "--warmup", type=int, default=1,
      help="untimed batches after the first (default: 1)")
  parser.add_argument(
      "--batch-size", type=int, default=None,
      help="examples per batch for every pipeline (default: the consumer "
      "step's batch size)")
  parser.add_argument(
      "--consumer", choices=list(_training_step.SETUPS), default=None,
      metavar="SETUP",
      help="compare every pipeline with this set-up's step, from: "
      + ", ".join(_training_step.SETUPS)
      + " (default: each pipeline's own consumer)")
  parser.add_argument(
      "--step-repeats", type=int, default=step_speed.MIN_RECORD_REPEATS,
      help="timed steps of each consumer "
      f"(default: {step_speed.MIN_RECORD_REPEATS})")
  _measure.add_json_argument(parser)
  args = parser.parse_args(argv)
  _measure.check_counts(
      parser, args, positive=("repeats", "step_repeats", "batch_size"),
      non_negative=("warmup",))
  return args


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
  args = parse_args(argv)
  environment = _measure.start_report("benchmarks.pipeline_speed", argv)
  records = run(args.pipelines, repeats=args.repeats, warmup=args.warmup,
                batch_size=args.batch_size, consumer=args.consumer,
                step_repeats=args.step_repeats)
  print(format_table(records))
  _measure.write_json(
      args.json, {"environment": environment, "records": records})
  return records


if __name__ == "__main__":
  main()
