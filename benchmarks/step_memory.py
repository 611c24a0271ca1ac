"""Compares the compiled training step's memory and cost with and without PGT.

Usage::

  python -m benchmarks.step_memory [--setups NAME ...]
      [--dtype {float32,bfloat16}] [--batch-size N] [--core] [--json OUT]

It takes the same set-ups and variants as benchmarks/step_speed.py: the
baseline, PGT through the loss door and PGT through the transform door. For
each, it compiles the per-device ``train_step`` of experiments/train.py under
``jax.pmap`` over one device with donated state. Then it reads two static
analyses of the compiled program, which do not depend on the load of the
machine:

* ``compiled.memory_analysis()``: the bytes of the arguments, the outputs,
  the outputs that reuse donated argument buffers (aliased), XLA's temporary
  buffers, and the generated code where the backend reports it. The total,
  argument + output - aliased + temporary, is the memory the step's buffers
  occupy while it runs.
* ``compiled.cost_analysis()``: XLA's estimate of the floating-point
  operations, the transcendental operations (exp, log, ...) and the bytes
  accessed by one step.

Every ratio is the variant's value over the baseline's.
"""

import argparse
from typing import Optional, Sequence

from benchmarks import _measure
from benchmarks import _training_step

DEFAULT_SETUPS = ("resnet20", "resnet18_64")
MEMORY_KEYS = ("argument", "output", "alias", "temp", "total",
               "generated_code")
COST_KEYS = ("flops", "transcendentals", "bytes_accessed")


def _ratio(value, baseline_value) -> Optional[float]:
  if value is None or not baseline_value:
    return None
  return value / baseline_value


def run(
    setup_names: Sequence[str],
    *,
    dtype: str = "float32",
    kinds: Sequence[str] = ("full",),
    batch_size: Optional[int] = None,
) -> list[dict]:
  """Compiles every variant of every set-up and step kind and analyses it.

  Args:
    setup_names: keys of `_training_step.SETUPS`.
    dtype: 'float32', or 'bfloat16' computation on float32 parameters.
    kinds: step kinds, from `_training_step.STEP_KINDS`.
    batch_size: examples per step for every set-up; None for each set-up's
      own batch size.

  Returns:
    One record per set-up, kind and variant, with the sizes in bytes, the
    cost estimates, and their ratios to the baseline's ('<key>_ratio') and
    differences from them ('<key>_difference').
  """
  records = []
  for setup_name in setup_names:
    for kind in kinds:
      baseline = None
      for variant in _training_step.VARIANTS:
        step = _training_step.get_step(
            setup_name, variant, kind, dtype, batch_size)
        record = {
            "setup": setup_name,
            "title": step.setup.title,
            "kind": kind,
            "dtype": dtype,
            "batch_size": step.batch_size,
            "variant": variant,
            "alpha": step.config.alpha,
        }
        record.update(step.memory_analysis())
        record.update(step.cost_analysis())
        if baseline is None:
          baseline = record
        for key in MEMORY_KEYS + COST_KEYS:
          record[f"{key}_ratio"] = _ratio(record[key], baseline[key])
        for key in MEMORY_KEYS + COST_KEYS:
          record[f"{key}_difference"] = (
              None if record[key] is None or baseline[key] is None
              else record[key] - baseline[key])
        records.append(record)
  return records


def _megabytes(value: Optional[int]) -> str:
  return "n/a" if value is None else f"{value / 1e6:.2f}"


def _ratio_text(value: Optional[float]) -> str:
  return "n/a" if value is None else f"{value:.4f}"


def format_table(records: Sequence[dict]) -> str:
  """Returns the records as a plain-text table, one variant per line."""
  header = (f"{'setup':<12} {'batch':>5} {'dtype':>8} {'step':>4} "
            f"{'variant':<13} {'arg MB':>8} {'out MB':>8} {'alias MB':>8} "
            f"{'temp MB':>8} {'total MB':>9} {'/ base':>7} {'code MB':>7} "
            f"{'GFLOP':>8} {'/ base':>7} {'transc.':>9}")
  lines = [header, "-" * len(header)]
  for record in records:
    flops = record["flops"]
    gigaflops = "n/a" if flops is None else f"{flops / 1e9:.3f}"
    transcendentals = record["transcendentals"]
    transcendental_text = (
        "n/a" if transcendentals is None else f"{transcendentals:.0f}")
    lines.append(
        f"{record['setup']:<12} {record['batch_size']:>5} "
        f"{record['dtype']:>8} {record['kind']:>4} {record['variant']:<13} "
        f"{_megabytes(record['argument']):>8} "
        f"{_megabytes(record['output']):>8} "
        f"{_megabytes(record['alias']):>8} "
        f"{_megabytes(record['temp']):>8} "
        f"{_megabytes(record['total']):>9} "
        f"{_ratio_text(record['total_ratio']):>7} "
        f"{_megabytes(record['generated_code']):>7} "
        f"{gigaflops:>8} {_ratio_text(record['flops_ratio']):>7} "
        f"{transcendental_text:>9}")
  return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.step_memory",
      description=__doc__.split("\n\n", 1)[0])
  _measure.add_setups_argument(
      parser, _training_step.SETUPS, DEFAULT_SETUPS, "compile")
  parser.add_argument(
      "--dtype", choices=_training_step.DTYPES, default="float32",
      help="computation dtype; parameters stay float32 (default: float32)")
  parser.add_argument(
      "--batch-size", type=int, default=None,
      help="examples per step for every set-up (default: each set-up's own)")
  parser.add_argument(
      "--core", action="store_true",
      help="also analyse the step without its metrics")
  _measure.add_json_argument(parser)
  args = parser.parse_args(argv)
  _measure.check_counts(parser, args, positive=("batch_size",))
  return args


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
  args = parse_args(argv)
  environment = _measure.start_report("benchmarks.step_memory", argv)
  kinds = ("full", "core") if args.core else ("full",)
  records = run(args.setups, dtype=args.dtype, kinds=kinds,
                batch_size=args.batch_size)
  print(format_table(records))
  _measure.write_json(
      args.json, {"environment": environment, "records": records})
  return records


if __name__ == "__main__":
  main()
