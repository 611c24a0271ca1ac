"""Metrics of the training program: per-step sums, summaries, writers, tables.

The steps return sums over examples (reduced across devices with `psum`), and
the host turns a run of such sums into averages once per epoch, so every
example counts once however the batches were split. The logit statistics are
the ones Das et al. (arXiv:2111.12495) report: the L2 norm of the logit vector
averaged over examples, and the mean, maximum and variance of all logits.
"""

import json
import logging as python_logging
import math
import os
from typing import Any, Mapping, Optional, Sequence

from absl import logging
from clu import metric_writers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

METRICS_FILENAME = 'metrics.jsonl'
CONFIG_FILENAME = 'config.json'


def prediction_sums(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    top5: bool,
) -> dict[str, jax.Array]:
  """Sums correct predictions and logit statistics over unmasked examples.

  Args:
    logits: float logits of shape [batch, num_classes].
    labels: integer labels of shape [batch].
    mask: boolean of shape [batch]; False marks padding.
    top5: also count top-5 correct predictions.

  Returns:
    A dict of scalars: 'count', 'correct' (and 'correct_top5'), and the sums
    'logit_norm_sum' (of per-example L2 norms), 'logit_sum',
    'logit_square_sum' and the maximum 'logit_max' over unmasked entries.
  """
  logits = logits.astype(jnp.float32)
  weights = mask.astype(jnp.float32)
  sums = {
      'count': jnp.sum(mask.astype(jnp.int32)),
      'correct': jnp.sum(
          (jnp.argmax(logits, axis=-1) == labels) & mask, dtype=jnp.int32
      ),
      'logit_norm_sum': jnp.sum(jnp.linalg.norm(logits, axis=-1) * weights),
      'logit_sum': jnp.sum(jnp.sum(logits, axis=-1) * weights),
      'logit_square_sum': jnp.sum(jnp.sum(logits**2, axis=-1) * weights),
      'logit_max': jnp.max(jnp.where(mask[:, None], logits, -jnp.inf)),
  }
  if top5:
    _, top_classes = jax.lax.top_k(logits, 5)
    in_top5 = jnp.any(top_classes == labels[:, None], axis=-1)
    sums['correct_top5'] = jnp.sum(in_top5 & mask, dtype=jnp.int32)
  return sums


def reduce_across_devices(
    sums: Mapping[str, jax.Array], axis_name: str
) -> dict[str, jax.Array]:
  """Sums each entry over `axis_name`; takes the max of names ending '_max'."""
  return {
      name: (
          jax.lax.pmax(value, axis_name)
          if name.endswith('_max')
          else jax.lax.psum(value, axis_name)
      )
      for name, value in sums.items()
  }


def accumulate(
    totals: Optional[dict[str, np.ndarray]], sums: Mapping[str, Any]
) -> dict[str, np.ndarray]:
  """Adds one step's host sums to running totals (maxima take the maximum).

  Values are accumulated in float64 (int64 for counts) so long epochs lose no
  precision.
  """
  sums = {
      name: np.asarray(value, np.int64 if np.issubdtype(
          np.asarray(value).dtype, np.integer) else np.float64)
      for name, value in sums.items()
  }
  if totals is None:
    return sums
  return {
      name: (
          np.maximum(totals[name], value)
          if name.endswith('_max')
          else totals[name] + value
      )
      for name, value in sums.items()
  }


def summarize_predictions(
    totals: Mapping[str, np.ndarray], num_classes: int, prefix: str
) -> dict[str, float]:
  """Turns prediction sums into accuracies and logit statistics.

  Args:
    totals: accumulated output of `prediction_sums`, possibly with
      'cross_entropy_sum', 'loss_sum' and 'pgt_loss_sum'.
    num_classes: number of logits per example.
    prefix: 'train' or 'test', prepended to every name.

  Returns:
    `{prefix}_top1` (and `_top5`) as fractions in [0, 1],
    `{prefix}_cross_entropy`, `{prefix}_loss` and `{prefix}_pgt_loss` when
    their sums are present,
    and `{prefix}_logit_norm`, `_logit_mean`, `_logit_max`,
    `_logit_variance`.
  """
  count = float(totals['count'])
  if count == 0:
    raise ValueError(f'No {prefix} examples were counted.')
  num_logits = count * num_classes
  logit_mean = float(totals['logit_sum']) / num_logits
  summary = {
      f'{prefix}_top1': float(totals['correct']) / count,
      f'{prefix}_logit_norm': float(totals['logit_norm_sum']) / count,
      f'{prefix}_logit_mean': logit_mean,
      f'{prefix}_logit_max': float(totals['logit_max']),
      f'{prefix}_logit_variance': (
          float(totals['logit_square_sum']) / num_logits - logit_mean**2
      ),
  }
  if 'correct_top5' in totals:
    summary[f'{prefix}_top5'] = float(totals['correct_top5']) / count
  if 'cross_entropy_sum' in totals:
    summary[f'{prefix}_cross_entropy'] = (
        float(totals['cross_entropy_sum']) / count
    )
  if 'loss_sum' in totals:
    summary[f'{prefix}_loss'] = float(totals['loss_sum']) / count
  if 'pgt_loss_sum' in totals:
    summary[f'{prefix}_pgt_loss'] = float(totals['pgt_loss_sum']) / count
  return summary


class MetricWriter:
  """Writes scalars as JSON lines and TensorBoard events from process 0 only.

  Every call of `write` appends one line `{"step": ..., name: value, ...}` to
  `workdir/metrics.jsonl` and one event per scalar to TensorBoard files in
  `workdir` (through `clu.metric_writers.SummaryWriter`). On other processes
  it does nothing.
  """

  def __init__(self, workdir: str, *, enabled: bool):
    self._workdir = workdir
    self._enabled = enabled
    self._writer = None
    self._jsonl = None

  def _open(self) -> None:
    # Opened at the first write, so a run that fails before its first epoch
    # leaves no empty files behind.
    os.makedirs(self._workdir, exist_ok=True)
    # TensorBoard only: the training program logs its own one-line summary
    # per epoch, where clu's default writer would also log every scalar.
    self._writer = metric_writers.SummaryWriter(self._workdir)
    self._jsonl = open(
        os.path.join(self._workdir, METRICS_FILENAME), 'a', encoding='utf-8')

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    if self._writer is None:
      self._open()
    self._writer.write_scalars(step, dict(scalars))
    record = {'step': int(step)}
    record.update({name: _json_number(v) for name, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()

  def close(self) -> None:
    if self._writer is None:
      return
    self._writer.flush()
    self._writer.close()
    self._jsonl.close()


def _json_number(value: Any) -> Any:
  """Returns a number JSON can store (NaN and infinity become strings)."""
  value = np.asarray(value).item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def write_config(
    workdir: str, config: ml_collections.ConfigDict, *, enabled: bool
) -> None:
  """Writes the resolved configuration to `workdir/config.json` on process 0."""
  if not enabled:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILENAME)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  logging.info('Wrote the configuration to %s.', path)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Reads `workdir/metrics.jsonl` into a list of dicts, one per write.

  A resumed run appends to the same file. An epoch written before an
  interruption and again after the resume therefore appears twice, and
  `epoch_records` keeps the later record.
  """
  path = os.path.join(workdir, METRICS_FILENAME)
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def epoch_records(workdir: str) -> list[dict[str, Any]]:
  """Returns the last record written for each epoch, in epoch order."""
  by_epoch = {}
  for record in read_metrics(workdir):
    if 'epoch' in record:
      by_epoch[record['epoch']] = record
  return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def format_summary(scalars: Mapping[str, float], names: Sequence[str]) -> str:
  """Formats the named scalars that are present as 'name=value' pairs."""
  return ', '.join(
      f'{name}={scalars[name]:.4g}' for name in names if name in scalars
  )


class _BelowWarningFromOrbax(python_logging.Filter):
  """Drops records below WARNING that come from orbax's source files."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    from_orbax = f'{os.sep}orbax{os.sep}' in record.pathname
    return not from_orbax or record.levelno >= python_logging.WARNING


def hide_orbax_info_logs() -> None:
  """Keeps orbax's per-save INFO lines (dozens per checkpoint) out of the log.

  orbax logs through absl, so its records reach the absl handler along with
  the training program's; this filter drops only orbax's records below
  WARNING.
  """
  logging.get_absl_handler().addFilter(_BelowWarningFromOrbax())


# Rows of `format_comparison_table`: (row label, metric name, scale, format).
_TABLE_ROWS = (
    ('train top-1 (%)', 'train_top1', 100.0, '{:.2f}'),
    ('test top-1 (%)', 'test_top1', 100.0, '{:.2f}'),
    ('train cross-entropy', 'train_cross_entropy', 1.0, '{:.4f}'),
    ('test cross-entropy', 'test_cross_entropy', 1.0, '{:.4f}'),
    ('train logit norm', 'train_logit_norm', 1.0, '{:.3f}'),
    ('test logit norm', 'test_logit_norm', 1.0, '{:.3f}'),
    ('train images/s', 'images_per_second', 1.0, '{:.0f}'),
)


def format_comparison_table(
    results: Mapping[str, Mapping[str, Any]], wall_seconds: Mapping[str, float]
) -> str:
  """Formats the final-epoch metrics of each run side by side.

  Args:
    results: column label -> the run's last epoch record.
    wall_seconds: column label -> wall time of the run in seconds.

  Returns:
    A plain-text table with one column per run.
  """
  labels = list(results)
  rows = [['', *labels]]
  rows.append(
      ['epochs', *[str(int(results[label]['epoch'])) for label in labels]])
  for row_label, name, scale, number_format in _TABLE_ROWS:
    cells = [
        number_format.format(results[label][name] * scale)
        if name in results[label] else '-'
        for label in labels
    ]
    rows.append([row_label, *cells])
  rows.append(['wall time (s)',
               *[f'{wall_seconds[label]:.0f}' for label in labels]])
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = []
  for index, row in enumerate(rows):
    cells = [row[0].ljust(widths[0])]
    cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
    lines.append('  '.join(cells))
    if index == 0:
      lines.append('  '.join('-' * width for width in widths))
  return '\n'.join(lines)
