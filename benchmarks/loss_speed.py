"""Times the PGT losses' value and gradient against optax's cross-entropy.

Usage::

  python -m benchmarks.loss_speed [--repeats N] [--json OUT]

For each shape and dtype it times, jitted, the value and gradient of the mean
loss over the batch for

* ``optax``: ``optax.softmax_cross_entropy_with_integer_labels``, the baseline;
* ``pgt_int``: ``power_grad_softmax_cross_entropy_with_integer_labels``;
* ``pgt_prob``: ``power_grad_softmax_cross_entropy`` with one-hot labels made
  before timing;

and two references that are not losses:

* ``copy``: a copy of the logits into a new array, the memory bandwidth
  reference;
* ``exp_sum``: ``sum(exp(logits - row_max))`` over the classes with the row
  max given, the one pass over the logits that PGT adds to plain
  cross-entropy. Plain cross-entropy reuses ``exp(z - max)`` from its value
  for its gradient; PGT's gradient needs ``exp(alpha * (z - max))``, so the
  value's exponentials cost a pass of their own. ``1 + exp_sum / optax``
  therefore estimates the lowest ``pgt_int / optax`` that the machine at hand
  allows.

Every time is the median of interleaved rounds (one call of each function per
round, after warm-up), reported with its ratio to ``optax``.

Bytes per second follow a minimum-traffic model, not the passes XLA actually
makes. A value-and-gradient step must read the logits once and write the
gradient once, 2 x the logits' bytes, and probability labels add one read of
the labels. A copy reads and writes the logits once (2 x), and ``exp_sum``
reads them once. The last column divides each function's bytes per second by
the copy's: the fraction of this machine's copy bandwidth that the step
reaches.

alpha is 0.25 for both PGT losses, as a Python float closed over by the jitted
function, as a training step would have it.
"""

import argparse
import statistics
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _measure
import pgt_optax

SHAPES = ((256, 10), (1024, 1000), (4096, 32000))
DTYPES = (jnp.float32, jnp.bfloat16)
ALPHA = 0.25
# Shapes this much smaller than the largest are timed for this many times more
# rounds: their calls take milliseconds, and more rounds steady their medians.
SMALL_SHAPE_REPEAT_FACTOR = 5


def _make_problem(shape, dtype, seed=0):
  """Returns logits in ``dtype``, integer labels and their one-hot labels."""
  logits_key, labels_key = jax.random.split(jax.random.PRNGKey(seed))
  logits = (3.0 * jax.random.normal(logits_key, shape, jnp.float32)).astype(
      dtype)
  labels = jax.random.randint(labels_key, shape[:-1], 0, shape[-1])
  one_hot = jax.nn.one_hot(labels, shape[-1], dtype=dtype)
  return logits, labels, one_hot


def _value_and_grad(loss_fn):
  """Returns the jitted value and gradient of the batch-mean ``loss_fn``."""
  return jax.jit(jax.value_and_grad(
      lambda logits, labels: jnp.mean(loss_fn(logits, labels))))


def _timed_functions(shape, dtype):
  """Returns the functions to time for one shape and dtype, without arguments.

  Returns:
    ``(functions, model_bytes)``: the functions by name, and the bytes that
    each one must at least move (see the module docstring).
  """
  logits, labels, one_hot = _make_problem(shape, dtype)
  optax_step = _value_and_grad(optax.softmax_cross_entropy_with_integer_labels)
  pgt_int_step = _value_and_grad(
      lambda z, y: pgt_optax.power_grad_softmax_cross_entropy_with_integer_labels(
          z, y, ALPHA))
  pgt_prob_step = _value_and_grad(
      lambda z, q: pgt_optax.power_grad_softmax_cross_entropy(z, q, ALPHA))
  copy = jax.jit(jnp.copy)
  row_max = jnp.max(logits, axis=-1, keepdims=True).astype(jnp.float32)
  exp_sum = jax.jit(
      lambda z, m: jnp.sum(jnp.exp(z.astype(jnp.float32) - m), axis=-1))

  functions = {
      "optax": lambda: optax_step(logits, labels),
      "pgt_int": lambda: pgt_int_step(logits, labels),
      "pgt_prob": lambda: pgt_prob_step(logits, one_hot),
      "copy": lambda: copy(logits),
      "exp_sum": lambda: exp_sum(logits, row_max),
  }
  array_bytes = logits.size * logits.dtype.itemsize
  model_bytes = {
      "optax": 2 * array_bytes,
      "pgt_int": 2 * array_bytes,
      "pgt_prob": 2 * array_bytes + one_hot.size * one_hot.dtype.itemsize,
      "copy": 2 * array_bytes,
      "exp_sum": array_bytes,
  }
  return functions, model_bytes


def run(repeats: int) -> list[dict]:
  """Times every shape and dtype and returns one record per function."""
  largest = max(np.prod(shape) for shape in SHAPES)
  records = []
  for shape in SHAPES:
    # One warm-up call compiles; small shapes get a second, which is cheap.
    shape_repeats, warmup = repeats, 1
    if np.prod(shape) * SMALL_SHAPE_REPEAT_FACTOR <= largest:
      shape_repeats, warmup = repeats * SMALL_SHAPE_REPEAT_FACTOR, 2
    for dtype in DTYPES:
      functions, model_bytes = _timed_functions(shape, dtype)
      times = _measure.interleaved_times(functions, shape_repeats, warmup)
      medians = {name: statistics.median(t) for name, t in times.items()}
      copy_rate = model_bytes["copy"] / medians["copy"]
      for name, seconds in medians.items():
        rate = model_bytes[name] / seconds
        records.append({
            "shape": list(shape),
            "dtype": jnp.dtype(dtype).name,
            "function": name,
            "repeats": shape_repeats,
            "median_ms": 1e3 * seconds,
            "ratio_to_optax": seconds / medians["optax"],
            "model_bytes": model_bytes[name],
            "gb_per_s": rate / 1e9,
            "fraction_of_copy_rate": rate / copy_rate,
        })
  return records


def format_table(records: Sequence[dict]) -> str:
  """Returns the records as a plain-text table, one function per line."""
  header = (f"{'shape':>14} {'dtype':>9} {'function':>9} {'rounds':>6} "
            f"{'median ms':>10} {'/ optax':>8} {'model MB':>9} "
            f"{'GB/s':>7} {'/ copy':>7}")
  lines = [header, "-" * len(header)]
  for record in records:
    shape = "x".join(str(size) for size in record["shape"])
    lines.append(
        f"{shape:>14} {record['dtype']:>9} {record['function']:>9} "
        f"{record['repeats']:>6} {record['median_ms']:>10.3f} "
        f"{record['ratio_to_optax']:>8.3f} "
        f"{record['model_bytes'] / 1e6:>9.1f} {record['gb_per_s']:>7.2f} "
        f"{record['fraction_of_copy_rate']:>7.3f}")
  return "\n".join(lines)


def format_summary(records: Sequence[dict]) -> str:
  """Returns the ratios at the largest shape and the floor estimate."""
  largest = max(SHAPES, key=np.prod)
  lines = [f"At {largest[0]}x{largest[1]} (target: pgt_int / optax <= 1.05):"]
  for dtype in DTYPES:
    name = jnp.dtype(dtype).name
    ratio = {
        record["function"]: record["ratio_to_optax"]
        for record in records
        if tuple(record["shape"]) == largest and record["dtype"] == name
    }
    lines.append(
        f"  {name}: pgt_int / optax = {ratio['pgt_int']:.3f}, "
        f"pgt_prob / optax = {ratio['pgt_prob']:.3f}, "
        f"floor estimate 1 + exp_sum / optax = {1 + ratio['exp_sum']:.3f}")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.loss_speed",
      description=__doc__.split("\n\n", 1)[0])
  parser.add_argument(
      "--repeats", type=int, default=20,
      help="timed rounds at the largest shape, at least 20 for a record; "
      f"smaller shapes get {SMALL_SHAPE_REPEAT_FACTOR} times as many "
      "(default: 20)")
  _measure.add_json_argument(parser)
  args = parser.parse_args(argv)
  _measure.check_counts(parser, args, positive=("repeats",))

  environment = _measure.start_report("benchmarks.loss_speed", argv)
  print(f"alpha: {ALPHA}\n")
  records = run(args.repeats)
  print(format_table(records))
  print()
  print(format_summary(records))
  _measure.write_json(
      args.json,
      {"environment": environment, "alpha": ALPHA, "records": records})


if __name__ == "__main__":
  main()
