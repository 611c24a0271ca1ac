r"""Command line of the training program.

Trains and evaluates one configuration file from experiments/configs/:

  python -m experiments.main --config experiments/configs/resnet50_cosine.py \
      --workdir runs/resnet50_cosine_pgt

Fields of the configuration can be overridden with `--config.FIELD=VALUE`,
for example `--config.alpha=1.0` for the baseline. Running the same command
again resumes from the newest checkpoint in the work directory. An invalid
field, or a work directory that contains a run of another configuration, stops
the program before training with a message and no traceback (exit status
1).

On several hosts (a TPU pod slice, or GPU nodes under SLURM or Open MPI),
start the same command on every host. With `--distributed=auto` (the
default) the program calls `jax.distributed.initialize()` when the
environment names a coordinator (JAX_COORDINATOR_ADDRESS) or several
processes (SLURM_NTASKS, OMPI_COMM_WORLD_SIZE, TPU_WORKER_HOSTNAMES), or
when `--coordinator_address` or `--num_processes` is given for a manual
launch. `--distributed=true` calls it in any case, which a Cloud TPU VM pod
slice needs, and `--distributed=false` never does.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from experiments import cli
from experiments import parallel

FLAGS = flags.FLAGS

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics and TensorBoard '
    'events of the run; an existing checkpoint there is resumed.')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'true', 'false'],
    'Whether to call jax.distributed.initialize() before training: auto '
    '(when the environment shows several processes), true or false.')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for a manual '
    'multi-process launch (default: $JAX_COORDINATOR_ADDRESS or the cluster '
    "environment's).")
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes, for a manual multi-process '
    'launch (default: from the cluster environment).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'Index of this process, for a manual multi-process '
    'launch (default: from the cluster environment).')
config_flags.DEFINE_config_file(
    'config', None, 'Path to a configuration file in experiments/configs/.',
    lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(
        f'Unexpected arguments: {" ".join(argv[1:])}. Set fields with '
        '--config.FIELD=VALUE.')
  config = cli.load_config()

  manual_launch = _COORDINATOR_ADDRESS.value is not None or (
      _NUM_PROCESSES.value is not None and _NUM_PROCESSES.value > 1)
  if _DISTRIBUTED.value == 'true' or (
      _DISTRIBUTED.value == 'auto'
      and (manual_launch or parallel.launched_on_several_processes())):
    logging.info('Calling jax.distributed.initialize().')
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR_ADDRESS.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )

  # Imported after the distributed set-up, which must precede any use of a
  # JAX backend.
  from experiments import metrics  # pylint: disable=g-import-not-at-top
  from experiments import train  # pylint: disable=g-import-not-at-top

  metrics.hide_orbax_info_logs()

  logging.info('Process %d of %d, %d local devices of %d: %s',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except train.USAGE_ERRORS as error:
    # The message names the field and the fix, which a traceback would bury.
    raise SystemExit(f'Error: {error}') from None
  except train.TrainingInterrupted as error:
    print(f'{error} Run the same command again to resume.', file=sys.stderr)
    # The shell's convention for a process ended by a signal.
    sys.exit(128 + error.signal_number)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
