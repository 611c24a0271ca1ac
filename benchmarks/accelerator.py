"""Times and analyses the ResNet-50 training step on an accelerator.

Usage::

  python -m benchmarks.accelerator [--setup NAME] [--batch-size N]
      [--dtype {float32,bfloat16}] [--repeats N] [--warmup N] [--json OUT]

By default: ResNet-50 on 224x224x3 images, 1000 classes, bfloat16
computation on float32 parameters, batch 256, on the first device of JAX's
default backend. It runs the same measurements as benchmarks/step_speed.py
and benchmarks/step_memory.py on the baseline, PGT through the loss door and
PGT through the transform door. Each variant is the per-device
``train_step`` of experiments/train.py under ``jax.pmap`` over one device.
Then it prints a Markdown section for benchmarks/README.md: images per
second, the PGT / baseline time ratio, and the compiled step's memory.

The script runs on any backend. On a CPU, use a small set-up, for example
``--setup tiny --repeats 3``.
"""

import argparse
from typing import Optional, Sequence

from benchmarks import _measure
from benchmarks import _training_step
from benchmarks import step_memory
from benchmarks import step_speed

DEFAULT_SETUP = "resnet50_224"
# Accelerators tune kernels and fill caches in the first steps.
DEFAULT_WARMUP = 3


def format_markdown(
    environment: dict, speed_records: Sequence[dict],
    memory_records: Sequence[dict]
) -> str:
  """Returns the results as a Markdown section for benchmarks/README.md."""
  first = speed_records[0]
  memory_by_variant = {record["variant"]: record for record in memory_records}
  lines = [
      f"### Accelerator: {first['title']}, {first['dtype']}",
      "",
      f"- Date: {environment['date']}",
      f"- Device: {environment['device']} ({environment['backend']} "
      f"backend), one device; host CPU {environment['cpu']}, "
      f"{environment['cpu_count']} cores",
      f"- Versions: jax {environment['jax']}, jaxlib {environment['jaxlib']}, "
      f"optax {environment['optax']}, flax {environment['flax']}",
      f"- Command: `{environment['command']}`",
      f"- Batch {first['batch_size']} per step; {first['repeats']} "
      f"interleaved rounds after {first['warmup']} warm-up steps of each "
      "variant; PGT alpha "
      f"{speed_records[-1]['alpha']}",
      "",
      "| variant | median ms | images/s | time / baseline (round ratio "
      "[95% CI]) | total MB | memory / baseline |",
      "|---|---:|---:|---|---:|---:|",
  ]
  for record in speed_records:
    memory = memory_by_variant[record["variant"]]
    lines.append(
        f"| {record['variant']} | {1e3 * record['median_s']:.2f} "
        f"| {record['images_per_s']:.1f} | {_measure.format_ratio(record)} "
        f"| {memory['total'] / 1e6:.1f} | {memory['total_ratio']:.4f} |")
  return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.accelerator",
      description=__doc__.split("\n\n", 1)[0])
  parser.add_argument(
      "--setup", choices=list(_training_step.SETUPS), default=DEFAULT_SETUP,
      metavar="NAME",
      help="set-up to run, from: " + ", ".join(_training_step.SETUPS)
      + f" (default: {DEFAULT_SETUP})")
  parser.add_argument(
      "--batch-size", type=int, default=None,
      help="examples per step (default: the set-up's, 256 for "
      f"{DEFAULT_SETUP})")
  parser.add_argument(
      "--dtype", choices=_training_step.DTYPES, default="bfloat16",
      help="computation dtype; parameters stay float32 (default: bfloat16)")
  parser.add_argument(
      "--repeats", type=int, default=step_speed.MIN_RECORD_REPEATS,
      help="timed rounds, at least "
      f"{step_speed.MIN_RECORD_REPEATS} for a record "
      f"(default: {step_speed.MIN_RECORD_REPEATS})")
  parser.add_argument(
      "--warmup", type=int, default=DEFAULT_WARMUP,
      help="untimed steps of each variant before the first round "
      f"(default: {DEFAULT_WARMUP})")
  _measure.add_json_argument(parser)
  args = parser.parse_args(argv)
  _measure.check_counts(parser, args, positive=("repeats", "batch_size"),
                        non_negative=("warmup",))
  return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
  environment = _measure.start_report("benchmarks.accelerator", argv)

  speed_records = step_speed.run(
      [args.setup], repeats=args.repeats, warmup=args.warmup,
      dtype=args.dtype, batch_size=args.batch_size)
  print(step_speed.format_table(speed_records))
  print()
  memory_records = step_memory.run(
      [args.setup], dtype=args.dtype, batch_size=args.batch_size)
  print(step_memory.format_table(memory_records))
  environment["load_average_after"] = _measure.load_average()
  print()
  print(format_markdown(environment, speed_records, memory_records))

  results = {
      "environment": environment,
      "step_speed": speed_records,
      "step_memory": memory_records,
  }
  _measure.write_json(args.json, results)
  return results


if __name__ == "__main__":
  main()
