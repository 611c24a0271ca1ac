"""Times the training step with and without PGT, side by side.

Usage::

  python -m benchmarks.step_speed [--setups NAME ...] [--repeats N]
      [--warmup N] [--dtype {float32,bfloat16}] [--batch-size N] [--core]
      [--json OUT]

For every set-up (model, input shape, batch size) it times the per-device
``train_step`` of experiments/train.py, compiled under ``jax.pmap`` over one
device with donated state. There are three variants: the ``baseline``, PGT
through the loss door (``pgt_loss``) and PGT through the transform door
(``pgt_transform``). benchmarks/_training_step.py describes how the variants
are built. The set-ups are

* ``resnet20``: ResNet-20 on 32x32x3 images, 10 classes, batch 128;
* ``resnet18_64``: ResNet-18 on 64x64x3 images, 1000 classes, batch 8;
* ``resnet50_224``: ResNet-50 on 224x224x3 images, 1000 classes, batch 256
  (for accelerators; see benchmarks/accelerator.py);
* ``tiny``: a 4,934-parameter ResNet on 32x32x1 images, batch 8, for tests.

Each repetition is one round that calls every variant once, in an order that
rotates from round to round, after ``--warmup`` untimed steps of each. A call
is timed up to ``jax.block_until_ready`` of its output. The table gives each
variant's median seconds per step, its images per second, and its ratio to
the baseline: the ratio of the medians, then the median of the per-round
ratios with its 95% confidence interval.

``--core`` also times the step without its metrics (see
benchmarks/_training_step.py), in the same rounds: the full step is what a
user's training step costs, and the core step is what PGT itself changes.
"""

import argparse
import statistics
from typing import Optional, Sequence

from benchmarks import _measure
from benchmarks import _training_step

DEFAULT_SETUPS = ("resnet20", "resnet18_64")
MIN_RECORD_REPEATS = 20


def run(
    setup_names: Sequence[str],
    *,
    repeats: int,
    warmup: int = 1,
    dtype: str = "float32",
    kinds: Sequence[str] = ("full",),
    variants: Sequence[str] = _training_step.VARIANTS,
    batch_size: Optional[int] = None,
) -> list[dict]:
  """Times the variants of every set-up and step kind.

  Args:
    setup_names: keys of `_training_step.SETUPS`.
    repeats: timed rounds, at least 1 (20 or more for a record).
    warmup: untimed steps of each variant before the first round.
    dtype: 'float32', or 'bfloat16' computation on float32 parameters.
    kinds: step kinds to time, from `_training_step.STEP_KINDS`.
    variants: variants to time; must include 'baseline'.
    batch_size: examples per step for every set-up; None for each set-up's
      own batch size.

  Returns:
    One record per set-up, kind and variant.
  """
  if "baseline" not in variants:
    raise ValueError(
        f"variants must include 'baseline', the reference of every ratio; "
        f"got {tuple(variants)}.")
  records = []
  for setup_name in setup_names:
    # Every kind and variant of a set-up takes part in the same rounds.
    steps = {
        (kind, variant): _training_step.get_step(
            setup_name, variant, kind, dtype, batch_size)
        for kind in kinds
        for variant in variants
    }
    times = _measure.interleaved_times(steps, repeats, warmup)
    for (kind, variant), step in steps.items():
      median = statistics.median(times[kind, variant])
      record = {
          "setup": setup_name,
          "title": step.setup.title,
          "kind": kind,
          "dtype": dtype,
          "batch_size": step.batch_size,
          "variant": variant,
          "alpha": step.config.alpha,
          "pgt_door": step.config.pgt_door if variant != "baseline" else None,
          "repeats": repeats,
          "warmup": warmup,
          "compile_s": step.compile_seconds,
          "median_s": median,
          "images_per_s": step.batch_size / median,
          "times_s": times[kind, variant],
      }
      if variant == "baseline":
        record.update(ratio=1.0, round_ratio=1.0, round_ratio_low=None,
                      round_ratio_high=None)
      else:
        record.update(_measure.ratio_statistics(
            times[kind, variant], times[kind, "baseline"]))
      records.append(record)
  return records


def format_table(records: Sequence[dict]) -> str:
  """Returns the records as a plain-text table, one variant per line."""
  header = (f"{'setup':<12} {'batch':>5} {'dtype':>8} {'step':>4} "
            f"{'variant':<13} {'rounds':>6} {'median s':>9} {'images/s':>9}  "
            "/ baseline (round ratio [95% CI])")
  lines = [header, "-" * len(header)]
  for record in records:
    lines.append(
        f"{record['setup']:<12} {record['batch_size']:>5} "
        f"{record['dtype']:>8} {record['kind']:>4} {record['variant']:<13} "
        f"{record['repeats']:>6} {record['median_s']:>9.4f} "
        f"{record['images_per_s']:>9.1f}  {_measure.format_ratio(record)}")
  return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.step_speed",
      description=__doc__.split("\n\n", 1)[0])
  _measure.add_setups_argument(
      parser, _training_step.SETUPS, DEFAULT_SETUPS, "time")
  parser.add_argument(
      "--repeats", type=int, default=MIN_RECORD_REPEATS,
      help=f"timed rounds, at least {MIN_RECORD_REPEATS} for a record "
      f"(default: {MIN_RECORD_REPEATS})")
  parser.add_argument(
      "--warmup", type=int, default=1,
      help="untimed steps of each variant before the first round; compiling "
      "happens before them (default: 1)")
  parser.add_argument(
      "--dtype", choices=_training_step.DTYPES, default="float32",
      help="computation dtype; parameters stay float32 (default: float32)")
  parser.add_argument(
      "--batch-size", type=int, default=None,
      help="examples per step for every set-up (default: each set-up's own)")
  parser.add_argument(
      "--core", action="store_true",
      help="also time the step without its metrics")
  _measure.add_json_argument(parser)
  args = parser.parse_args(argv)
  _measure.check_counts(parser, args, positive=("repeats", "batch_size"),
                        non_negative=("warmup",))
  return args


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
  args = parse_args(argv)
  environment = _measure.start_report("benchmarks.step_speed", argv)
  kinds = ("full", "core") if args.core else ("full",)
  records = run(args.setups, repeats=args.repeats, warmup=args.warmup,
                dtype=args.dtype, kinds=kinds, batch_size=args.batch_size)
  print(format_table(records))
  environment["load_average_after"] = _measure.load_average()
  print(f"\nload average after: {environment['load_average_after']}")
  _measure.write_json(
      args.json, {"environment": environment, "records": records})
  return records


if __name__ == "__main__":
  main()
