"""Timing helpers shared by the benchmark scripts.

Machines that run these benchmarks are often shared, so a single timing is
unreliable. The helpers here time several functions in interleaved rounds, so
that a burst of load from elsewhere slows every function in a round alike.
They report medians, which are meant to be compared as ratios.
"""

import datetime
import importlib.metadata
import os
import platform
import statistics
import time
from typing import Any, Callable, Mapping

import jax


def interleaved_medians(
    functions: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 2,
) -> dict[str, float]:
  """Times functions in interleaved rounds and returns each one's median.

  Every function is first called ``warmup`` times (compiling it), then the
  functions are called in turn, one call each per round, for ``repeats``
  rounds. Each call is timed up to ``jax.block_until_ready`` of its result.

  Args:
    functions: Functions without arguments, by name; each returns JAX arrays.
    repeats: Number of timed rounds, at least 1.
    warmup: Untimed calls of each function before the first round.

  Returns:
    The median seconds per call, by name.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be at least 1, got {repeats}.")
  for function in functions.values():
    for _ in range(warmup):
      jax.block_until_ready(function())
  seconds = {name: [] for name in functions}
  for _ in range(repeats):
    for name, function in functions.items():
      start = time.perf_counter()
      jax.block_until_ready(function())
      seconds[name].append(time.perf_counter() - start)
  return {name: statistics.median(times) for name, times in seconds.items()}


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


def environment(command: str) -> dict[str, str]:
  """Returns the facts a benchmark record needs: date, machine and versions.

  Args:
    command: The command line that ran the benchmark, recorded as given.
  """
  return {
      "date": datetime.datetime.now().astimezone().isoformat(
          timespec="seconds"),
      "cpu": cpu_model(),
      "cpu_count": str(os.cpu_count()),
      "jax": importlib.metadata.version("jax"),
      "jaxlib": importlib.metadata.version("jaxlib"),
      "optax": importlib.metadata.version("optax"),
      "backend": jax.default_backend(),
      "python": platform.python_version(),
      "command": command,
  }
