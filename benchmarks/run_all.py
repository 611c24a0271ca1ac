"""Runs every CPU benchmark in one process and prints a summary table.

Usage (what ``make bench`` runs)::

  python -m benchmarks.run_all [--repeats N] [--setups NAME ...]
      [--consumer SETUP] [--json OUT]

In order: benchmarks/loss_speed.py (the losses alone), step_speed.py (the
training step's time), step_memory.py (its compiled memory and cost) and
pipeline_speed.py (the input pipelines against the step). The scripts share
the compiled steps, so each is compiled once, and the pipelines are compared
with the baseline step rates that step_speed measured. Each script's table
is printed as it finishes, then one summary with a line per comparison:

* step time: the ratio of median step times, PGT over baseline, with the
  median per-round ratio's 95% confidence interval. The target is at most
  1.02. It is met when the interval lies at or below 1.02, missed when the
  interval lies above 1.02, and not resolved otherwise: the load on the
  machine left the ratio too uncertain.
* step memory: the ratio of the compiled step's total buffer bytes, PGT over
  baseline (target: equal), and of XLA's floating-point operation estimate.
* pipelines: examples per second over the consumer step's images per second.

With the defaults the whole run took 6.4 and 8.6 minutes on a 2-core AMD
EPYC machine shared with other jobs (load averages of 1.7 to 3.5), most of
it in the losses' largest shape and the ResNet-20 step. Expect longer on a
busier machine.
"""

import argparse
import time
from typing import Optional, Sequence

import numpy as np

from benchmarks import _measure
from benchmarks import _training_step
from benchmarks import loss_speed
from benchmarks import pipeline_speed
from benchmarks import step_memory
from benchmarks import step_speed

STEP_TIME_TARGET = 1.02


def step_time_verdict(record: dict) -> str:
  """Returns 'met', 'missed' or 'not resolved' for a PGT step-time record."""
  low, high = record["round_ratio_low"], record["round_ratio_high"]
  if low is None or high is None:
    return "not resolved (too few rounds)"
  if high <= STEP_TIME_TARGET:
    return "met"
  if low > STEP_TIME_TARGET:
    return "missed"
  return "not resolved"


def _loss_lines(loss_records: Sequence[dict]) -> list[tuple[str, str, str]]:
  largest = max((tuple(r["shape"]) for r in loss_records), key=np.prod)
  lines = []
  for record in loss_records:
    if tuple(record["shape"]) == largest and record["function"] == "pgt_int":
      shape = "x".join(str(size) for size in largest)
      lines.append((f"loss {shape} {record['dtype']} pgt_int / optax",
                    f"{record['ratio_to_optax']:.3f}", "see loss_speed"))
  return lines


def format_summary(
    loss_records: Sequence[dict],
    step_records: Sequence[dict],
    memory_records: Sequence[dict],
    pipeline_records: Sequence[dict],
) -> str:
  """Returns one line per comparison: quantity, measured value, target."""
  rows = list(_loss_lines(loss_records))
  for record in step_records:
    if record["variant"] == "baseline":
      continue
    rows.append((
        f"step {record['setup']} b{record['batch_size']} {record['kind']} "
        f"{record['variant']} / baseline time",
        _measure.format_ratio(record),
        f"<= {STEP_TIME_TARGET}: {step_time_verdict(record)}"))
  for record in memory_records:
    if record["variant"] == "baseline":
      continue
    name = (f"{record['setup']} b{record['batch_size']} {record['kind']} "
            f"{record['variant']} / baseline")
    difference = record["total_difference"]
    if difference == 0:
      verdict = "equal"
    else:
      relative = difference / (record["total"] - difference)
      verdict = f"differs by {relative:+.1e} of the baseline's total"
    rows.append((f"step {name} memory",
                 f"{record['total_ratio']:.4f} ({difference:+,} B)",
                 f"= 1: {verdict}"))
    if record["flops_ratio"] is not None:
      rows.append((f"step {name} flops",
                   f"{record['flops_ratio']:.6f} "
                   f"({record['flops_difference']:+,.0f})", ""))
  for record in pipeline_records:
    rows.append((
        f"pipeline {record['pipeline']} / {record['consumer']} step",
        f"{record['ratio_to_consumer']:.1f}x", ">= 1"))
  quantity_width = max(len(row[0]) for row in rows)
  value_width = max(len(row[1]) for row in rows)
  header = (f"{'quantity':<{quantity_width}}  "
            f"{'measured':<{value_width}}  target")
  lines = [header, "-" * (len(header) + 24)]
  for quantity, value, target in rows:
    lines.append(
        f"{quantity:<{quantity_width}}  {value:<{value_width}}  {target}")
  return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.run_all",
      description=__doc__.split("\n\n", 1)[0])
  parser.add_argument(
      "--repeats", type=int, default=step_speed.MIN_RECORD_REPEATS,
      help="timed rounds of every benchmark, at least "
      f"{step_speed.MIN_RECORD_REPEATS} for a record "
      f"(default: {step_speed.MIN_RECORD_REPEATS})")
  _measure.add_setups_argument(
      parser, _training_step.SETUPS, step_speed.DEFAULT_SETUPS,
      "time and compile")
  parser.add_argument(
      "--consumer", choices=list(_training_step.SETUPS), default=None,
      metavar="SETUP",
      help="compare every pipeline with this set-up's step, at its batch "
      "size (default: each pipeline's own consumer)")
  _measure.add_json_argument(parser)
  args = parser.parse_args(argv)
  _measure.check_counts(parser, args, positive=("repeats",))
  return args


def _section(title: str) -> None:
  print(f"\n== {title} ==\n", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
  start = time.perf_counter()
  environment = _measure.start_report("benchmarks.run_all", argv)

  _section(f"Losses (benchmarks/loss_speed.py, alpha {loss_speed.ALPHA})")
  loss_records = loss_speed.run(args.repeats)
  print(loss_speed.format_table(loss_records))
  print()
  print(loss_speed.format_summary(loss_records))

  _section("Training step time (benchmarks/step_speed.py)")
  step_records = step_speed.run(args.setups, repeats=args.repeats)
  print(step_speed.format_table(step_records))

  _section("Training step memory and cost (benchmarks/step_memory.py)")
  memory_records = step_memory.run(args.setups)
  print(step_memory.format_table(memory_records))

  _section("Input pipelines (benchmarks/pipeline_speed.py)")
  step_rates = {
      record["setup"]: record["images_per_s"]
      for record in step_records
      if record["variant"] == "baseline" and record["kind"] == "full"
  }
  pipeline_records = pipeline_speed.run(
      list(pipeline_speed.PIPELINES), repeats=args.repeats,
      consumer=args.consumer, step_images_per_s=step_rates,
      step_repeats=args.repeats)
  print(pipeline_speed.format_table(pipeline_records))

  environment["load_average_after"] = _measure.load_average()
  environment["wall_s"] = time.perf_counter() - start
  _section("Summary")
  print(format_summary(loss_records, step_records, memory_records,
                       pipeline_records))
  print(f"\nwall time: {environment['wall_s'] / 60:.1f} min; load average "
        f"before {environment['load_average']}, after "
        f"{environment['load_average_after']}")
  results = {
      "environment": environment,
      "loss_speed": loss_records,
      "step_speed": step_records,
      "step_memory": memory_records,
      "pipeline_speed": pipeline_records,
  }
  _measure.write_json(args.json, results)
  return results


if __name__ == "__main__":
  main()
