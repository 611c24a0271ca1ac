"""Orbax checkpoints of the training state, refused under a different config.

Each checkpoint contains two items: 'state' (step, parameters, batch statistics,
optimiser state and random key, as host NumPy arrays) and 'config' (the
configuration fields that shape training up to that step, as JSON). On
resume the stored fields are compared with the current ones, and a
difference stops the run with a message that names each field.

Fields that do not change the first `step` steps of training may differ.
They are how often to save, evaluate or log, where the data lives, which
parallelism runs the same step, how many devices share the batch (batch
statistics are averaged over all of them), the evaluation batch size, the
analysis thresholds and `stop_at_step`. `num_epochs` may differ (to extend
a run) unless the schedule is 'cosine', whose decay length depends on it.
"""

import json
from typing import Any, Mapping, Optional

from absl import logging
import ml_collections
import orbax.checkpoint as ocp

# Configuration fields that a resumed run may change; see the module
# docstring for why each is safe.
RESUMABLE_CHANGES = frozenset({
    'checkpoint_every_epochs',
    'checkpoint_every_steps',
    'data_dir',
    'eval_batch_size',
    'eval_every_epochs',
    'feature_threshold',
    'filter_norm_threshold',
    'max_checkpoints_to_keep',
    'num_devices',
    'parallelism',
    'progress_bar',
    'stop_at_step',
})


class ConfigMismatchError(ValueError):
  """The work directory contains a run of a different configuration."""


def training_fields(
    config: ml_collections.ConfigDict | Mapping[str, Any]
) -> dict[str, Any]:
  """Returns the config fields that a checkpoint must match, as JSON types.

  Args:
    config: a configuration, or its JSON form as `config.json` stores it.
  """
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  fields = {
      name: value
      for name, value in config.items()
      if name not in RESUMABLE_CHANGES
  }
  if config.get('schedule') != 'cosine':
    fields.pop('num_epochs', None)
  # A JSON round trip turns tuples into lists, as the stored copy has them.
  return json.loads(json.dumps(fields))


def config_differences(
    stored: dict[str, Any], current: dict[str, Any]
) -> list[str]:
  """Lists 'name: stored -> current' for every field that differs."""
  differences = []
  for name in sorted(set(stored) | set(current)):
    before = stored.get(name, '<absent>')
    after = current.get(name, '<absent>')
    if before != after:
      note = ''
      if name == 'num_epochs':
        # Only here, because training_fields drops it for other schedules.
        note = (' (with the cosine schedule, num_epochs sets where the '
                'learning rate reaches zero)')
      differences.append(f'{name}: {before!r} -> {after!r}{note}')
  return differences


class Checkpointer:
  """Saves and restores the training state with an orbax CheckpointManager.

  Every process must call `save` and `restore_latest`; orbax coordinates
  them and writes from the primary process.
  """

  def __init__(
      self,
      directory: str,
      config: ml_collections.ConfigDict,
      *,
      max_to_keep: int,
  ):
    """Opens (and creates) the checkpoint directory.

    Args:
      directory: absolute path of the checkpoint directory.
      config: the run's configuration.
      max_to_keep: number of most recent checkpoints to keep.
    """
    self.directory = directory
    self._fields = training_fields(config)
    self._manager = ocp.CheckpointManager(
        directory,
        item_names=('state', 'config'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True
        ),
    )

  def latest_step(self) -> Optional[int]:
    """Returns the step of the newest checkpoint, or None if there is none."""
    return self._manager.latest_step()

  def save(self, step: int, host_state: Any) -> None:
    """Starts saving `host_state` (a pytree of NumPy arrays) as `step`."""
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(host_state),
            config=ocp.args.JsonSave(self._fields),
        ),
    )
    logging.info('Saving a checkpoint of step %d in %s.', step, self.directory)

  def restore_latest(self, target: Any) -> Optional[Any]:
    """Restores the newest checkpoint into the structure of `target`.

    Args:
      target: a host pytree with the structure, shapes and dtypes of the
        saved state, such as the freshly initialised state.

    Returns:
      The restored state, or None when the directory contains no checkpoint.

    Raises:
      ConfigMismatchError: when the checkpoint was written under a
        configuration that differs in a field outside `RESUMABLE_CHANGES`.
    """
    step = self.latest_step()
    if step is None:
      return None
    stored = self._manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
    )['config']
    differences = config_differences(stored, self._fields)
    if differences:
      raise ConfigMismatchError(
          f'The checkpoint of step {step} in {self.directory} was written '
          'under a different configuration, so resuming would not continue '
          'that run. Fields that differ (checkpoint -> now):\n  '
          + '\n  '.join(differences)
          + '\nRerun with the checkpoint\'s values, or pass a new --workdir '
          'to start a separate run.'
      )
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(target)),
    )['state']
    logging.info('Restored the checkpoint of step %d from %s.', step,
                 self.directory)
    return restored

  def wait_until_finished(self) -> None:
    """Blocks until every started save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
