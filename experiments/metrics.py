"""Metrics of the training program: per-step sums, summaries, writers, tables.

The steps return sums over examples (reduced across devices with `psum`), and
the host turns a run of such sums into averages once per epoch, so every
example counts once however the batches were split. The logit statistics are
the ones Das et al. (arXiv:2111.12495) report: the L2 norm of the logit vector
averaged over examples, and the mean, maximum and variance of all logits.
"""

import glob
import io
import itertools
import json
import logging as python_logging
import math
import os
import socket
import struct
import tempfile
import time
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
# The tensorboard package's protocol buffers and record framing write event
# files without TensorFlow, which takes seconds to import.
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.summary.writer import record_writer

METRICS_FILENAME = 'metrics.jsonl'
CONFIG_FILENAME = 'config.json'
# TensorBoard reads every file in a run directory whose name contains
# 'tfevents'.
EVENT_FILE_PATTERN = 'events.out.tfevents.*'
_EVENT_FILE_IDS = itertools.count()


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
  `workdir/metrics.jsonl` and one event, with a scalar summary value per
  name, to a new TensorBoard event file in `workdir`. On other processes it
  does nothing.
  """

  def __init__(self, workdir: str, *, enabled: bool):
    self._workdir = workdir
    self._enabled = enabled
    self._events = None
    self._jsonl = None

  def _open(self) -> None:
    # Opened at the first write, so a run that fails before its first epoch
    # leaves no empty files behind.
    os.makedirs(self._workdir, exist_ok=True)
    name = 'events.out.tfevents.{:010d}.{}.{}.{}'.format(
        int(time.time()), socket.gethostname(), os.getpid(),
        next(_EVENT_FILE_IDS))
    # Mode 'xb' never truncates an existing file.
    self._events = record_writer.RecordWriter(
        open(os.path.join(self._workdir, name), 'xb'))
    self._events.write(event_pb2.Event(
        wall_time=time.time(), file_version='brain.Event:2'
    ).SerializeToString())
    self._jsonl = open(
        os.path.join(self._workdir, METRICS_FILENAME), 'a', encoding='utf-8')

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Appends one record of `scalars` at `step` to both outputs."""
    if not self._enabled:
      return
    if self._events is None:
      self._open()
    summary = summary_pb2.Summary()
    for name, value in scalars.items():
      summary.value.extend(scalar_summary.scalar_pb(name, value).value)
    self._events.write(event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary
    ).SerializeToString())
    self._events.flush()
    record = {'step': int(step)}
    record.update({name: _json_number(v) for name, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()

  def close(self) -> None:
    if self._events is None:
      return
    self._events.close()
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
  """Writes the resolved configuration to `workdir/config.json` on process 0.

  The file is replaced atomically, so a crash leaves the old or the new copy.
  """
  if not enabled:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILENAME)
  _replace_file(
      path, config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  logging.info('Wrote the configuration to %s.', path)


def read_config(workdir: str) -> Optional[dict[str, Any]]:
  """Returns the configuration stored in `workdir/config.json`, or None.

  Raises:
    ValueError: when the file exists but is not a JSON object.
  """
  path = os.path.join(workdir, CONFIG_FILENAME)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    try:
      stored = json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f'{path} is not valid JSON: {error}.') from error
  if not isinstance(stored, dict):
    raise ValueError(f'{path} does not contain a JSON object.')
  return stored


def new_file_mode() -> int:
  """Returns the permissions `open` gives a new file under the current umask.

  Temporary files are created readable by their owner only, so files that
  replace a record atomically get these permissions before the rename.
  """
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


def _replace_file(path: str, content: str | bytes) -> None:
  """Writes `content` to a temporary file beside `path`, then renames it."""
  directory, name = os.path.split(path)
  binary = isinstance(content, bytes)
  with tempfile.NamedTemporaryFile(
      'wb' if binary else 'w', dir=directory, prefix=f'.{name}.',
      suffix='.tmp', delete=False,
      **({} if binary else {'encoding': 'utf-8'})) as f:
    f.write(content)
    f.flush()
    os.fsync(f.fileno())
  os.chmod(f.name, new_file_mode())
  os.replace(f.name, path)


def _parse_metrics(path: str) -> tuple[list[dict[str, Any]], bool]:
  """Parses a metrics file into its records and whether its end was cut.

  A process killed while writing leaves a last line without its newline,
  which is skipped. Any other line that is not JSON raises ValueError.
  """
  with open(path, encoding='utf-8') as f:
    lines = f.read().split('\n')
  # After the final newline, split leaves '' or the unterminated last line.
  tail = lines.pop()
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      raise ValueError(
          f'Line {number} of {path} is not valid JSON ({error}). Remove the '
          'line to read the file.') from error
  return records, bool(tail.strip())


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Reads `workdir/metrics.jsonl` into a list of dicts, one per write.

  A resumed run first drops the records written after its checkpoint (see
  `drop_metrics_after`), so each epoch normally appears once. A last line
  cut short by a crash is skipped.
  """
  path = os.path.join(workdir, METRICS_FILENAME)
  records, cut = _parse_metrics(path)
  if cut:
    logging.warning('Skipped the incomplete last line of %s.', path)
  return records


def epoch_records(workdir: str) -> list[dict[str, Any]]:
  """Returns the last record written for each epoch, in epoch order."""
  by_epoch = {}
  for record in read_metrics(workdir):
    if 'epoch' in record:
      by_epoch[record['epoch']] = record
  return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def drop_metrics_after(workdir: str, step: int) -> int:
  """Removes the records of `workdir/metrics.jsonl` with a step above `step`.

  The file is rewritten atomically, and removed when no record is left.
  An incomplete last line (from a crash) is removed as well.

  Args:
    workdir: the run directory.
    step: the step the run restarts from.

  Returns:
    The number of records (and incomplete lines) removed.
  """
  path = os.path.join(workdir, METRICS_FILENAME)
  if not os.path.exists(path):
    return 0
  records, cut = _parse_metrics(path)
  kept_records = [record for record in records if record['step'] <= step]
  dropped = len(records) - len(kept_records) + int(cut)
  if not dropped:
    return 0
  if kept_records:
    _replace_file(path,
                  ''.join(json.dumps(r) + '\n' for r in kept_records))
  else:
    os.remove(path)
  return dropped


def event_files(workdir: str) -> list[str]:
  """Lists the TensorBoard event files in `workdir`, oldest name first."""
  return sorted(glob.glob(os.path.join(workdir, EVENT_FILE_PATTERN)))


def read_event_records(path: str) -> tuple[list[bytes], bool]:
  """Reads the serialised events of a TensorBoard event file.

  Event files are TFRecord files: each record is a little-endian uint64
  length, its masked CRC-32C, the data and the data's masked CRC-32C.

  Returns:
    The records, and whether the file ends in a record cut short by a crash
    (which is left out).

  Raises:
    ValueError: when a checksum does not match.
  """
  with open(path, 'rb') as f:
    data = f.read()
  records = []
  offset = 0
  while offset < len(data):
    header = data[offset:offset + 8]
    end = offset + 12
    if len(header) < 8 or end > len(data):
      return records, True
    (length,) = struct.unpack('<Q', header)
    (header_crc,) = struct.unpack('<I', data[offset + 8:end])
    if header_crc != masked_crc32c(header):
      raise ValueError(f'{path} is corrupt: bad length checksum at byte '
                       f'{offset}.')
    payload = data[end:end + length]
    if end + length + 4 > len(data):
      return records, True
    (payload_crc,) = struct.unpack('<I', data[end + length:end + length + 4])
    if payload_crc != masked_crc32c(payload):
      raise ValueError(f'{path} is corrupt: bad data checksum at byte '
                       f'{offset}.')
    records.append(payload)
    offset = end + length + 4
  return records, False


def drop_events_after(workdir: str, step: int) -> int:
  """Removes the TensorBoard scalar events with a step above `step`.

  Each event file in `workdir` that contains such events, or a record cut short
  by a crash, is rewritten atomically without them. A file left with no
  summary is removed.

  Args:
    workdir: the run directory.
    step: the step the run restarts from.

  Returns:
    The number of events removed.
  """
  dropped = 0
  for path in event_files(workdir):
    records, cut = read_event_records(path)
    events = [event_pb2.Event.FromString(record) for record in records]
    kept_events = [event for event in events
                   if not (event.HasField('summary') and event.step > step)]
    if len(kept_events) == len(events) and not cut:
      continue
    dropped += len(events) - len(kept_events)
    if not any(event.HasField('summary') for event in kept_events):
      os.remove(path)
      continue
    framed = io.BytesIO()
    writer = record_writer.RecordWriter(framed)
    for event in kept_events:
      writer.write(event.SerializeToString())
    _replace_file(path, framed.getvalue())
  return dropped


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
