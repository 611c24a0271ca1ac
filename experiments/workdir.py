"""Keeps a work directory to one run: the checks and clean-up at its start.

A run writes `config.json`, `metrics.jsonl`, TensorBoard event files,
`filter_norms/epoch_NNNN.npz` and `checkpoints/` into its work directory.
Each epoch's metrics, events and filter norms are written before that
epoch's checkpoint starts saving, so a crash between the two leaves records
ahead of the newest checkpoint, never a checkpoint without its records. At
start:

* A run resumed from the checkpoint of step k calls `discard_records_after`,
  which removes every record of a step above k, because the run writes
  them again.
* A run without a checkpoint calls `check_fresh_start`, which rejects the
  records of a run with a different configuration (compared on the fields a
  checkpoint must match, `checkpointing.training_fields`). Records of the
  same configuration come from this run, restarted before its first
  checkpoint, and are all discarded. A `config.json` without any records
  (a run stopped during its first epoch) is simply replaced.
"""

import contextlib
import fcntl
import os
import socket
from typing import Iterator

import ml_collections

from experiments import analysis
from experiments import checkpointing
from experiments import metrics as metrics_lib

_FIX = (
    'Pass a new --workdir, or delete config.json, metrics.jsonl, '
    'events.out.tfevents.* and filter_norms/ from it to start over there.'
)


LOCK_FILENAME = 'run.lock'


class WorkdirError(ValueError):
  """Error for a work directory that is a file or that another run uses."""


@contextlib.contextmanager
def exclusive_use(workdir: str, *, enabled: bool) -> Iterator[None]:
  """Locks `workdir` for one run at a time, for the duration of a run.

  Two runs in one directory would write their metrics and checkpoints over
  each other, so the second one is rejected. The lock is an `flock` on
  `workdir/run.lock`, which the operating system releases when the process
  ends, however it ends, so a crashed run never leaves a stale lock. The
  file stays, with the process id and host of the last run that held it.

  NOTE: `flock` is advisory, and some network file systems do not enforce
  it between hosts.

  Args:
    workdir: the run directory, created if missing.
    enabled: lock only when True (process 0 of a multi-host run).

  Raises:
    WorkdirError: when `workdir` is a file, or another process holds the
      lock.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(
        f'The work directory {workdir} is a file. Pass a directory to '
        '--workdir.')
  if not enabled:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILENAME)
  descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      with open(path, encoding='utf-8') as f:
        holder = f.read().strip() or 'unknown'
      raise WorkdirError(
          f'Another run is training in {workdir} ({holder}, from {path}). '
          'Wait for it to end, or pass another --workdir.') from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor,
             f'process {os.getpid()} on {socket.gethostname()}\n'.encode())
    yield
  finally:
    # Closing the descriptor releases the lock.
    os.close(descriptor)


def earlier_records(workdir: str) -> list[str]:
  """Lists the records of an earlier run in `workdir`, relative to it.

  Records are `metrics.jsonl`, event files and `filter_norms/`. Checkpoints
  are handled by `checkpointing.Checkpointer`, and `config.json` describes
  the records rather than being one.
  """
  names = []
  if os.path.exists(os.path.join(workdir, metrics_lib.METRICS_FILENAME)):
    names.append(metrics_lib.METRICS_FILENAME)
  names += [os.path.basename(path)
            for path in metrics_lib.event_files(workdir)]
  directory = os.path.join(workdir, analysis.FILTER_NORMS_DIRNAME)
  if os.path.isdir(directory) and os.listdir(directory):
    names.append(analysis.FILTER_NORMS_DIRNAME + os.sep)
  return names


def check_fresh_start(
    workdir: str, config: ml_collections.ConfigDict
) -> list[str]:
  """Checks that a run without a checkpoint may write into `workdir`.

  Args:
    workdir: the run directory, which contains no checkpoint.
    config: the run's configuration.

  Returns:
    The earlier records found (see `earlier_records`), empty when there
    are none. Non-empty means the same configuration wrote them, so the
    caller discards them with `discard_records_after(workdir, 0, ...)`.

  Raises:
    checkpointing.ConfigMismatchError: when `workdir` contains records but its
      `config.json` is missing, unreadable or differs from `config` in a
      field that shapes training.
  """
  found = earlier_records(workdir)
  if not found:
    return []
  listing = ', '.join(found)
  try:
    stored = metrics_lib.read_config(workdir)
  except ValueError as error:
    raise checkpointing.ConfigMismatchError(
        f'{workdir} contains records of an earlier run ({listing}), and its '
        f'configuration cannot be read: {error} {_FIX}') from error
  if stored is None:
    raise checkpointing.ConfigMismatchError(
        f'{workdir} contains records of an earlier run ({listing}) but no '
        'config.json, so they cannot be matched to this configuration. '
        + _FIX)
  differences = checkpointing.config_differences(
      checkpointing.training_fields(stored),
      checkpointing.training_fields(config))
  if differences:
    raise checkpointing.ConfigMismatchError(
        f'{workdir} contains records of a run with a different '
        f'configuration ({listing}) and no checkpoint, so this run would '
        'add its metrics to that run\'s. Fields that differ (config.json -> '
        'now):\n  ' + '\n  '.join(differences) + '\n' + _FIX)
  return found


def discard_records_after(
    workdir: str, step: int, steps_per_epoch: int
) -> dict[str, int]:
  """Removes the records of steps after `step`, where the run restarts.

  Rewrites `metrics.jsonl` and the event files atomically without those
  records and deletes the filter norms of later epochs. Call it on process 0
  only.

  Args:
    workdir: the run directory.
    step: the step of the restored checkpoint, or 0 without one.
    steps_per_epoch: optimiser steps per epoch; epoch e ends at step
      e * steps_per_epoch.

  Returns:
    How many records were removed: 'metrics' (lines of metrics.jsonl),
    'events' (TensorBoard events) and 'filter_norms' (files).
  """
  return {
      'metrics': metrics_lib.drop_metrics_after(workdir, step),
      'events': metrics_lib.drop_events_after(workdir, step),
      'filter_norms': analysis.remove_filter_norms_after(
          workdir, step // steps_per_epoch),
  }
