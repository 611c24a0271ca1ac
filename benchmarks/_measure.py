"""Interleaved timing with per-round ratios, and the record of the machine.

On a shared machine the speed of every function drifts with the load from
other programs. The timing here calls each function once per round, in an
order that rotates from round to round, so that each round's ratio of a
function's time to the baseline's compares calls made seconds apart. The
ratio of the medians is the headline number. The median of the per-round
ratios, with a distribution-free confidence interval, shows how well the
load let the ratio be resolved.
"""

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Hashable, Mapping, Optional, Sequence

import jax


def interleaved_times(
    functions: Mapping[Hashable, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
) -> dict[Hashable, list[float]]:
  """Times functions in interleaved rounds and returns every call's seconds.

  Every function is first called `warmup` times. Then each round calls every
  function once, timed up to `jax.block_until_ready` of its result. Round r
  starts with function r modulo the number of functions, so no function is
  always first or last.

  Args:
    functions: functions without arguments, by name (any hashable key);
      each returns JAX arrays.
    repeats: number of timed rounds, at least 1.
    warmup: untimed calls of each function before the first round.

  Returns:
    The seconds of each call, in round order, by name.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be at least 1, got {repeats}.")
  if warmup < 0:
    raise ValueError(f"warmup must be non-negative, got {warmup}.")
  names = list(functions)
  for name in names:
    for _ in range(warmup):
      jax.block_until_ready(functions[name]())
  seconds = {name: [] for name in names}
  for round_index in range(repeats):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      start = time.perf_counter()
      jax.block_until_ready(functions[name]())
      seconds[name].append(time.perf_counter() - start)
  return seconds


def median_confidence_interval(
    values: Sequence[float], confidence: float = 0.95
) -> Optional[tuple[float, float]]:
  """Returns a distribution-free confidence interval for the median.

  The interval runs from the k-th smallest to the k-th largest value, with
  the largest k for which it covers the median with at least `confidence`
  probability. For any continuous distribution that probability is
  1 - 2 P(B < k), where B counts the values below the median,
  B ~ Binomial(n, 1/2). For n = 20 and 95% the interval is [x(6), x(15)],
  with coverage 95.9%.

  Args:
    values: independent samples.
    confidence: the coverage probability wanted, in (0, 1).

  Returns:
    (low, high), or None when there are too few values (fewer than 6 for
    95%).
  """
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
  ordered = sorted(values)
  n = len(ordered)
  best = None
  below = 0.0  # P(B < k), accumulated as k grows.
  for k in range(1, n // 2 + 1):
    below += math.comb(n, k - 1) / 2**n
    if 1 - 2 * below < confidence:
      break
    best = k
  if best is None:
    return None
  return ordered[best - 1], ordered[n - best]


def ratio_statistics(
    times: Sequence[float], baseline_times: Sequence[float]
) -> dict[str, Optional[float]]:
  """Compares a function's per-round times with the baseline's.

  Args:
    times: the function's seconds per round.
    baseline_times: the baseline's seconds in the same rounds.

  Returns:
    'ratio': median of `times` over median of `baseline_times`;
    'round_ratio': median of the per-round ratios; 'round_ratio_low' and
    'round_ratio_high': its 95% confidence interval (None below 6 rounds).
  """
  if len(times) != len(baseline_times):
    raise ValueError(
        f"Got {len(times)} times but {len(baseline_times)} baseline times; "
        "both must come from the same rounds.")
  round_ratios = [t / b for t, b in zip(times, baseline_times)]
  interval = median_confidence_interval(round_ratios)
  return {
      "ratio": statistics.median(times) / statistics.median(baseline_times),
      "round_ratio": statistics.median(round_ratios),
      "round_ratio_low": interval[0] if interval else None,
      "round_ratio_high": interval[1] if interval else None,
  }


def load_average() -> Optional[list[float]]:
  """Returns the 1, 5 and 15 minute load averages, or None where unknown."""
  try:
    return [round(value, 2) for value in os.getloadavg()]
  except OSError:
    return None


def cpu_model() -> str:
  """Returns the CPU model name from /proc/cpuinfo, or platform's guess."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def environment(command: str) -> dict[str, Any]:
  """Returns the date, machine, versions, device and load for a record.

  Args:
    command: the command line that ran the benchmark, recorded as given.
  """
  record = {
      "date": datetime.datetime.now().astimezone().isoformat(
          timespec="seconds"),
      "cpu": cpu_model(),
      "cpu_count": str(os.cpu_count()),
      "python": platform.python_version(),
      "backend": jax.default_backend(),
      "device": jax.local_devices()[0].device_kind,
  }
  for package in ("jax", "jaxlib", "optax", "flax", "tensorflow-datasets"):
    try:
      record[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      record[package] = "not installed"
  record["command"] = command
  record["load_average"] = load_average()
  return record


def start_report(
    module: str, argv: Optional[Sequence[str]]
) -> dict[str, Any]:
  """Prints and returns the environment of a benchmark run.

  Args:
    module: the script's module, such as 'benchmarks.step_speed'.
    argv: the arguments given to its `main`, or None for the command line's.
  """
  arguments = sys.argv[1:] if argv is None else argv
  record = environment(" ".join([f"python -m {module}", *arguments]))
  for key, value in record.items():
    print(f"{key}: {value}")
  print()
  return record


def write_json(path: Optional[str], results: Mapping[str, Any]) -> None:
  """Writes `results` to the JSON file at `path`, unless `path` is None."""
  if path is None:
    return
  with open(path, "w", encoding="utf-8") as output:
    json.dump(results, output, indent=1)


def add_json_argument(parser: argparse.ArgumentParser) -> None:
  """Adds the --json option that every benchmark script takes."""
  parser.add_argument(
      "--json", metavar="OUT",
      help="also write the environment and every record to this JSON file")


def add_setups_argument(
    parser: argparse.ArgumentParser, choices: Sequence[str],
    defaults: Sequence[str], verb: str
) -> None:
  """Adds the --setups option, naming the training-step set-ups to `verb`."""
  parser.add_argument(
      "--setups", nargs="+", default=list(defaults), choices=list(choices),
      metavar="NAME",
      help=f"set-ups to {verb}, from: " + ", ".join(choices)
      + f" (default: {' '.join(defaults)})")


def check_counts(
    parser: argparse.ArgumentParser, args: argparse.Namespace, *,
    positive: Sequence[str] = (), non_negative: Sequence[str] = ()
) -> None:
  """Exits through `parser.error` for a count option out of its range.

  Args:
    parser: the script's parser.
    args: its parsed arguments.
    positive: attribute names that must be at least 1 when not None.
    non_negative: attribute names that must be at least 0.
  """
  for name in positive:
    value = getattr(args, name)
    if value is not None and value < 1:
      parser.error(f"--{name.replace('_', '-')} must be at least 1, got "
                   f"{value}.")
  for name in non_negative:
    value = getattr(args, name)
    if value < 0:
      parser.error(f"--{name.replace('_', '-')} must be non-negative, got "
                   f"{value}.")


def format_ratio(statistics_record: Mapping[str, Optional[float]]) -> str:
  """Returns 'ratio (round ratio [low, high])' for a table cell."""
  text = f"{statistics_record['ratio']:.3f}"
  low = statistics_record.get("round_ratio_low")
  high = statistics_record.get("round_ratio_high")
  if low is None or high is None:
    return text
  return (f"{text} ({statistics_record['round_ratio']:.3f} "
          f"[{low:.3f}, {high:.3f}])")
