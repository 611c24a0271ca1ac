"""Tests of the training program: doors, parallelism, resume, errors.

Every run uses the tiny ResNet on the embedded digits, padded to 32x32, on 4
of the 8 CPU devices that tests/conftest.py forces. Runs that several tests
share are made once per module by the `runs` fixture.
"""

import functools
import glob
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import chex
import jax
from jax.experimental.compilation_cache import compilation_cache as cc_lib
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import checkpointing
from experiments import input_pipeline
from experiments import metrics as metrics_lib
from experiments import models
from experiments import parallel
from experiments import plots
from experiments import train
from experiments import workdir as workdir_lib
from experiments.configs import local
from tests.test_metrics import read_scalar_events

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NUM_DEVICES = 4


def tiny_config(**overrides):
  """Returns the local debugging recipe shrunk for tests, with overrides."""
  config = local.get_config()
  config.num_devices = NUM_DEVICES
  config.batch_size = 32
  config.eval_batch_size = 200
  config.num_epochs = 2
  config.steps_per_epoch = 25
  config.warmup_epochs = 0.0
  config.learning_rate = 0.2
  config.learning_rate_batch_size = 32
  config.progress_bar = False
  for name, value in overrides.items():
    config[name] = value
  return config


class _Runs:
  """Trains each named configuration once per test module."""

  def __init__(self, directory):
    self._directory = directory
    self._results = {}

  def get(self, name, **overrides):
    if name not in self._results:
      workdir = os.path.join(self._directory, name)
      state = train.train_and_evaluate(tiny_config(**overrides), workdir)
      self._results[name] = (state, workdir)
    return self._results[name]


_CACHE_OPTIONS = ('jax_compilation_cache_dir',
                  'jax_persistent_cache_min_compile_time_secs',
                  'jax_persistent_cache_min_entry_size_bytes')


@pytest.fixture(scope='module', autouse=True)
def compilation_cache(tmp_path_factory):
  """Lets runs that build the same programs share compilations.

  Every run compiles its steps afresh (new closures), which takes most of a
  tiny run's time on CPU. JAX's persistent cache, in a folder of this module,
  hands identical programs (a resumed run's, the same model's evaluation)
  back without compiling.
  """
  previous = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  # Workers of pytest-xdist share one folder, since they may repeat a run.
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent
  cc_lib.reset_cache()
  jax.config.update('jax_compilation_cache_dir',
                    str(base / 'jax_compilation_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  yield
  for name, value in previous.items():
    jax.config.update(name, value)
  cc_lib.reset_cache()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  return _Runs(str(tmp_path_factory.mktemp('runs')))


def _max_abs_difference(tree_a, tree_b):
  return max(
      float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
      for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)))


# ---------------------------------------------------------------------------
# Whole runs.

_DOOR_RUNS = {
    'baseline': dict(alpha=None),
    'loss_door': dict(alpha=0.25, pgt_door='loss'),
    'transform_door': dict(alpha=0.25, pgt_door='transform'),
}


@pytest.mark.parametrize('name', list(_DOOR_RUNS))
def test_pmap_run_lowers_loss(runs, name):
  _, workdir = runs.get(name, **_DOOR_RUNS[name])
  records = metrics_lib.epoch_records(workdir)
  assert [r['epoch'] for r in records] == [1, 2]
  first, last = records
  # PGT descends (1 / alpha) * CE(alpha * logits); the ordinary
  # cross-entropy it reports may rise while the logits grow.
  objective = 'train_pgt_loss' if name != 'baseline' else 'train_loss'
  assert last[objective] < first[objective]
  assert last['train_top1'] > first['train_top1']
  assert last['test_top1'] > 0.15


def test_run_writes_metrics_and_config(runs):
  state, workdir = runs.get('transform_door', **_DOOR_RUNS['transform_door'])
  last = metrics_lib.epoch_records(workdir)[-1]
  expected_names = {
      'train_cross_entropy', 'train_loss', 'train_top1', 'test_top1',
      'test_cross_entropy', 'learning_rate', 'gradient_norm', 'param_norm',
      'update_norm', 'images_per_second', 'train_logit_norm',
      'train_logit_mean', 'train_logit_max', 'train_logit_variance',
      'test_logit_norm', 'dead_features', 'filters_near_zero',
      'filters_zeroed_out', 'filters_recovered',
  }
  assert expected_names <= set(last)
  for name in expected_names:
    assert math.isfinite(last[name]), name
  # Ten classes: no top-5.
  assert 'test_top5' not in last
  assert last['step'] == 50
  assert int(state.step) == 50

  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    stored = json.load(f)
  assert stored['alpha'] == 0.25
  assert stored['pgt_door'] == 'transform'
  top1_events = [(step, value) for step, tag, value
                 in read_scalar_events(workdir) if tag == 'test_top1']
  assert [step for step, _ in top1_events] == [25, 50]
  np.testing.assert_allclose(top1_events[-1][1], last['test_top1'],
                             rtol=1e-6)
  assert len(glob.glob(os.path.join(workdir, 'filter_norms', '*.npz'))) == 2


def test_pgt_changes_training(runs):
  baseline, _ = runs.get('baseline', **_DOOR_RUNS['baseline'])
  pgt, _ = runs.get('loss_door', **_DOOR_RUNS['loss_door'])
  assert _max_abs_difference(baseline.params, pgt.params) > 1e-3


def test_run_without_batch_norm_with_agc(tmp_path):
  # The best row of Das et al.'s table: no normalisation, AGC after PGT.
  config = tiny_config(
      norm='none', clipping='agc', agc_clipping=0.05, alpha=0.25,
      pgt_door='transform', label_smoothing=0.1, num_epochs=1,
      steps_per_epoch=20, learning_rate=0.05)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert state.batch_stats == {}
  record = metrics_lib.epoch_records(str(tmp_path))[-1]
  for name in ('train_cross_entropy', 'train_pgt_loss', 'test_top1',
               'gradient_norm', 'update_norm'):
    assert math.isfinite(record[name]), name
  # With label smoothing the objective's targets differ from the labels.
  assert record['train_loss'] != pytest.approx(record['train_cross_entropy'])


def test_shard_map_matches_pmap(runs):
  pmap_state, _ = runs.get('transform_door', **_DOOR_RUNS['transform_door'])
  shard_map_state, _ = runs.get(
      'transform_door_shard_map', parallelism='shard_map',
      **_DOOR_RUNS['transform_door'])
  chex.assert_trees_all_close(
      shard_map_state.params, pmap_state.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(
      shard_map_state.batch_stats, pmap_state.batch_stats, rtol=1e-5,
      atol=1e-6)


def test_resume_continues_exactly(runs, tmp_path):
  # The uninterrupted run: 50 steps. checkpoint_every_steps does not change
  # training, so that run serves as the reference.
  full_state, _ = runs.get('transform_door', **_DOOR_RUNS['transform_door'])

  workdir = str(tmp_path / 'resumed')
  overrides = dict(checkpoint_every_steps=11, **_DOOR_RUNS['transform_door'])
  stopped = train.train_and_evaluate(
      tiny_config(stop_at_step=33, **overrides), workdir)
  assert int(stopped.step) == 33
  resumed = train.train_and_evaluate(tiny_config(**overrides), workdir)

  assert int(resumed.step) == int(full_state.step) == 50
  chex.assert_trees_all_equal(resumed.params, full_state.params)
  chex.assert_trees_all_equal(resumed.batch_stats, full_state.batch_stats)
  chex.assert_trees_all_equal(resumed.opt_state, full_state.opt_state)
  chex.assert_trees_all_equal(resumed.rng, full_state.rng)
  # Epoch 1 was finished before the stop at step 33, epoch 2 after the resume.
  assert [r['epoch'] for r in metrics_lib.epoch_records(workdir)] == [1, 2]


def test_resume_rejects_other_config(runs, tmp_path):
  _, finished = runs.get('loss_door', **_DOOR_RUNS['loss_door'])
  workdir = str(tmp_path / 'copy')
  shutil.copytree(finished, workdir)
  with pytest.raises(ValueError, match=r"alpha: 0\.25 -> 0\.5"):
    train.train_and_evaluate(
        tiny_config(alpha=0.5, pgt_door='loss'), workdir)
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['alpha'] == 0.25


def _copy_without_checkpoints(source, destination, keep_steps=()):
  shutil.copytree(source, destination)
  directory = os.path.join(destination, train.CHECKPOINT_DIRNAME)
  for name in os.listdir(directory):
    if name not in map(str, keep_steps):
      shutil.rmtree(os.path.join(directory, name))


def _file_contents(workdir, names):
  contents = {}
  for name in names:
    with open(os.path.join(workdir, name), 'rb') as f:
      contents[name] = f.read()
  return contents


def test_fresh_start_rejects_other_records(tmp_path):
  # Records of a run with alpha 0.25 that stopped before its first
  # checkpoint.
  workdir = str(tmp_path)
  metrics_lib.write_config(
      workdir, tiny_config(**_DOOR_RUNS['loss_door']), enabled=True)
  writer = metrics_lib.MetricWriter(workdir, enabled=True)
  writer.write(25, {'epoch': 1, 'train_top1': 0.5})
  writer.close()
  names = ['config.json', 'metrics.jsonl'] + [
      os.path.basename(p) for p in metrics_lib.event_files(workdir)]
  before = _file_contents(workdir, names)

  with pytest.raises(checkpointing.ConfigMismatchError) as error:
    train.train_and_evaluate(
        tiny_config(alpha=0.5, pgt_door='loss'), workdir)
  message = str(error.value)
  assert workdir in message
  assert 'alpha: 0.25 -> 0.5' in message
  assert 'Pass a new --workdir' in message
  assert _file_contents(workdir, names) == before

  # Records without the config.json that names their configuration.
  os.remove(os.path.join(workdir, 'config.json'))
  with pytest.raises(checkpointing.ConfigMismatchError,
                     match='no config.json'):
    train.train_and_evaluate(tiny_config(**_DOOR_RUNS['loss_door']), workdir)


def test_restart_replaces_own_records(runs, tmp_path):
  # The same run restarted before its first checkpoint: its two epochs of
  # records are replaced by the one epoch this run trains.
  _, finished = runs.get('loss_door', **_DOOR_RUNS['loss_door'])
  workdir = str(tmp_path / 'restarted')
  _copy_without_checkpoints(finished, workdir)
  assert len(metrics_lib.read_metrics(workdir)) == 2
  # stop_at_step does not change training, so the configuration matches.
  train.train_and_evaluate(
      tiny_config(stop_at_step=25, **_DOOR_RUNS['loss_door']), workdir)

  assert [r['step'] for r in metrics_lib.read_metrics(workdir)] == [25]
  assert {step for step, _, _ in read_scalar_events(workdir)} == {25}
  assert sorted(os.listdir(os.path.join(workdir, 'filter_norms'))) == [
      'epoch_0001.npz']


def test_resume_drops_later_records(runs, tmp_path):
  # A crash after epoch 2's records but before its checkpoint: the newest
  # checkpoint is of step 25, and the records reach step 50.
  full_state, finished = runs.get('loss_door', **_DOOR_RUNS['loss_door'])
  workdir = str(tmp_path / 'crashed')
  _copy_without_checkpoints(finished, workdir, keep_steps=(25,))
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a',
            encoding='utf-8') as f:
    f.write('{"step": 50, "epo')

  resumed = train.train_and_evaluate(
      tiny_config(**_DOOR_RUNS['loss_door']), workdir)

  chex.assert_trees_all_equal(resumed.params, full_state.params)
  assert [r['step'] for r in metrics_lib.read_metrics(workdir)] == [25, 50]
  top1_steps = [step for step, tag, _ in read_scalar_events(workdir)
                if tag == 'train_top1']
  assert top1_steps == [25, 50]


class _Crash(Exception):
  """Simulated death of the process at a chosen point."""


def test_checkpoint_follows_epoch_records(tmp_path, monkeypatch):
  # A crash while epoch 2's records are written must not leave a checkpoint
  # of epoch 2, which a resume would take as recorded.
  real_write = metrics_lib.MetricWriter.write
  real_save = checkpointing.Checkpointer.save

  def write_or_crash_at_epoch_2(self, step, scalars):
    if scalars.get('epoch') == 2:
      raise _Crash()
    real_write(self, step, scalars)

  def save_and_wait(self, step, host_state):
    # Synchronous saves, so every checkpoint started before the crash is on
    # disk when the test looks.
    real_save(self, step, host_state)
    self.wait_until_finished()

  monkeypatch.setattr(metrics_lib.MetricWriter, 'write',
                      write_or_crash_at_epoch_2)
  monkeypatch.setattr(checkpointing.Checkpointer, 'save', save_and_wait)
  workdir = str(tmp_path)
  config = tiny_config(checkpoint_every_steps=25, checkpoint_every_epochs=0,
                       **_DOOR_RUNS['loss_door'])
  with pytest.raises(_Crash):
    train.train_and_evaluate(config, workdir)

  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, train.CHECKPOINT_DIRNAME), config, max_to_keep=3)
  checkpointer.wait_until_finished()
  assert checkpointer.latest_step() == 25
  checkpointer.close()
  assert [r['step'] for r in metrics_lib.read_metrics(workdir)] == [25]


def test_second_run_in_busy_workdir_rejected(tmp_path):
  workdir = str(tmp_path)
  with workdir_lib.exclusive_use(workdir, enabled=True):
    with pytest.raises(workdir_lib.WorkdirError) as error:
      train.train_and_evaluate(tiny_config(), workdir)
  message = str(error.value)
  assert f'Another run is training in {workdir}' in message
  assert f'process {os.getpid()}' in message
  assert 'pass another --workdir' in message
  assert workdir_lib.WorkdirError in train.USAGE_ERRORS
  # Nothing but the lock file was written.
  assert os.listdir(workdir) == [workdir_lib.LOCK_FILENAME]
  # The lock is released with its holder.
  with workdir_lib.exclusive_use(workdir, enabled=True):
    pass


def test_workdir_that_is_a_file_rejected(tmp_path):
  path = tmp_path / 'a_file'
  path.write_text('', encoding='utf-8')
  with pytest.raises(workdir_lib.WorkdirError, match='is a file'):
    train.train_and_evaluate(tiny_config(), str(path))


def test_signal_stops_with_checkpoint(runs, tmp_path, monkeypatch):
  # SIGTERM arrives when the pipeline reads batch 31, a few steps before
  # that batch is trained on because batches are prefetched, inside epoch 2.
  # The run saves a checkpoint of the step it reached and stops, and the same
  # command resumes it.
  full_state, _ = runs.get('loss_door', **_DOOR_RUNS['loss_door'])
  real_train_batches = input_pipeline.train_batches

  def batches_with_signal(*args, **kwargs):
    for index, batch in enumerate(real_train_batches(*args, **kwargs)):
      if index == 30:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  workdir = str(tmp_path)
  config = tiny_config(**_DOOR_RUNS['loss_door'])
  monkeypatch.setattr(input_pipeline, 'train_batches', batches_with_signal)
  with pytest.raises(train.TrainingInterrupted) as error:
    train.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  assert error.value.signal_number == signal.SIGTERM
  match = re.search(r'Stopped by SIGTERM at step (\d+) of 50',
                    str(error.value))
  assert match
  stopped_step = int(match.group(1))
  assert 25 < stopped_step < 50
  # The handler is gone: the usual SIGTERM handler is back.
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, train.CHECKPOINT_DIRNAME), config, max_to_keep=3)
  assert checkpointer.latest_step() == stopped_step
  checkpointer.close()
  assert [r['epoch'] for r in metrics_lib.epoch_records(workdir)] == [1]

  resumed = train.train_and_evaluate(config, workdir)
  chex.assert_trees_all_equal(resumed.params, full_state.params)
  chex.assert_trees_all_equal(resumed.opt_state, full_state.opt_state)
  assert [r['epoch'] for r in metrics_lib.epoch_records(workdir)] == [1, 2]


def test_earlier_records_lists_run_files(tmp_path):
  workdir = str(tmp_path)
  assert workdir_lib.earlier_records(workdir) == []
  metrics_lib.write_config(workdir, tiny_config(), enabled=True)
  # config.json alone (a run stopped in its first epoch) is no record.
  assert workdir_lib.earlier_records(workdir) == []
  assert workdir_lib.check_fresh_start(workdir, tiny_config(alpha=0.5)) == []
  os.makedirs(os.path.join(workdir, 'filter_norms'))
  assert workdir_lib.earlier_records(workdir) == []
  metrics_lib.MetricWriter(workdir, enabled=True).write(5, {'epoch': 1})
  found = workdir_lib.earlier_records(workdir)
  assert found[0] == 'metrics.jsonl'
  assert found[1].startswith('events.out.tfevents.')
  assert len(found) == 2


def test_training_fields_allow_extension_without_cosine():
  cosine = tiny_config(schedule='cosine')
  step = tiny_config(schedule='step', step_boundaries_epochs=(1,))
  assert 'num_epochs' in checkpointing.training_fields(cosine)
  assert 'num_epochs' not in checkpointing.training_fields(step)
  assert 'parallelism' not in checkpointing.training_fields(step)
  assert 'alpha' in checkpointing.training_fields(step)
  extended = tiny_config(schedule='step', step_boundaries_epochs=(1,),
                         num_epochs=5, parallelism='shard_map')
  assert checkpointing.config_differences(
      checkpointing.training_fields(step),
      checkpointing.training_fields(extended)) == []


# ---------------------------------------------------------------------------
# One step of each door.


def _one_step(config, batch):
  model = train.create_model(config, 10)
  learning_rate_fn = train.create_learning_rate_schedule(
      config, config.steps_per_epoch)
  tx = train.create_optimizer(config, learning_rate_fn)
  state = train.create_train_state(config, model, tx, (32, 32, 1))
  data_parallel = parallel.DataParallel(
      'pmap', jax.local_devices()[:NUM_DEVICES])
  step = data_parallel.map(functools.partial(
      train.train_step, model=model, tx=tx,
      learning_rate_fn=learning_rate_fn, num_classes=10, alpha=config.alpha,
      pgt_door=config.pgt_door, label_smoothing=config.label_smoothing,
      top5=False), donate_state=True)
  new_state, output = step(data_parallel.replicate(state),
                           data_parallel.shard_batch(batch))
  return state, data_parallel.unreplicate(new_state), data_parallel.unreplicate(
      output)


@pytest.fixture(scope='module')
def digits_batch():
  batches = input_pipeline.train_batches(
      'digits', batch_size=32, seed=0, image_size=32)
  return next(batches)


def test_doors_match_after_one_step(digits_batch):
  # The same configurations as the door runs, so their compiled steps are
  # reused from the cache.
  initial, by_loss, loss_output = _one_step(
      tiny_config(**_DOOR_RUNS['loss_door']), digits_batch)
  _, by_transform, transform_output = _one_step(
      tiny_config(**_DOOR_RUNS['transform_door']), digits_batch)

  assert _max_abs_difference(initial.params, by_loss.params) > 1e-3
  chex.assert_trees_all_close(
      by_transform.params, by_loss.params, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(
      by_transform.batch_stats, by_loss.batch_stats, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
      transform_output['norms']['gradient_norm'],
      loss_output['norms']['gradient_norm'], rtol=1e-5)

  # The reported cross-entropy is the ordinary one against the labels. Batch
  # statistics synced over the 4 devices equal those of the whole batch.
  model = models.create_model('resnet_tiny', 10)
  logits, _ = model.apply(
      {'params': initial.params, 'batch_stats': initial.batch_stats},
      digits_batch['image'], train=True, mutable=['batch_stats'])
  expected = optax.softmax_cross_entropy_with_integer_labels(
      logits, digits_batch['label']).mean()
  sums = transform_output['sums']
  assert int(sums['count']) == 32
  np.testing.assert_allclose(
      sums['cross_entropy_sum'] / sums['count'], expected, rtol=1e-5)


# ---------------------------------------------------------------------------
# Evaluation.


def test_evaluation_counts_each_example_once():
  # 1,000 test digits in global batches of 24 on 4 devices: 41 full batches
  # and one with 16 real examples and 8 of padding.
  config = tiny_config(eval_batch_size=24)
  info = input_pipeline.get_dataset_info('digits', image_size=32)
  assert info.num_test % config.eval_batch_size
  model = train.create_model(config, info.num_classes)
  tx = train.create_optimizer(
      config, train.create_learning_rate_schedule(config, 10))
  state = train.create_train_state(config, model, tx, info.image_shape)
  data_parallel = parallel.DataParallel(
      'pmap', jax.local_devices()[:NUM_DEVICES])
  p_eval_step = data_parallel.map(
      functools.partial(train.eval_step, model=model, top5=True))

  totals = train.evaluate(p_eval_step, data_parallel.replicate(state),
                          data_parallel, config, info)

  images, labels = [], []
  for batch in input_pipeline.eval_batches(
      'digits', batch_size=config.eval_batch_size, image_size=32):
    images.append(batch['image'][batch['mask']])
    labels.append(batch['label'][batch['mask']])
  images, labels = np.concatenate(images), np.concatenate(labels)
  assert len(labels) == info.num_test
  logits = model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats},
      jnp.asarray(images), train=False)
  expected_correct = int(np.sum(np.argmax(logits, axis=-1) == labels))
  expected_cross_entropy = float(np.sum(
      optax.softmax_cross_entropy_with_integer_labels(logits, labels)))
  top5 = np.argsort(-np.asarray(logits), axis=-1)[:, :5]
  expected_top5 = int(np.sum(np.any(top5 == labels[:, None], axis=-1)))

  assert int(totals['count']) == info.num_test
  assert int(totals['correct']) == expected_correct
  assert int(totals['correct_top5']) == expected_top5
  np.testing.assert_allclose(
      totals['cross_entropy_sum'], expected_cross_entropy, rtol=1e-5)
  np.testing.assert_allclose(
      totals['logit_norm_sum'],
      np.sum(np.linalg.norm(np.asarray(logits), axis=-1)), rtol=1e-5)


# ---------------------------------------------------------------------------
# Schedule and optimiser.


def test_schedule_warmup_peak_and_steps():
  config = tiny_config(
      batch_size=256, learning_rate=0.4, learning_rate_batch_size=1024,
      warmup_epochs=5.0, num_epochs=100, schedule='step',
      step_boundaries_epochs=(30, 60, 90))
  schedule = train.create_learning_rate_schedule(config, steps_per_epoch=10)
  np.testing.assert_allclose(schedule(0), 4e-4, rtol=1e-5)
  np.testing.assert_allclose(schedule(50), 0.1, rtol=1e-5)
  np.testing.assert_allclose(schedule(299), 0.1, rtol=1e-5)
  np.testing.assert_allclose(schedule(300), 0.01, rtol=1e-5)
  np.testing.assert_allclose(schedule(600), 0.001, rtol=1e-5)
  np.testing.assert_allclose(schedule(999), 1e-4, rtol=1e-5)


def test_schedule_cosine_decays_to_zero():
  config = tiny_config(
      batch_size=1024, learning_rate=0.4, learning_rate_batch_size=1024,
      warmup_epochs=5.0, num_epochs=100, schedule='cosine')
  schedule = train.create_learning_rate_schedule(config, steps_per_epoch=10)
  np.testing.assert_allclose(schedule(25), (4e-4 + 0.4) / 2, rtol=1e-5)
  np.testing.assert_allclose(schedule(50), 0.4, rtol=1e-5)
  np.testing.assert_allclose(schedule(525), 0.2, rtol=1e-5)
  np.testing.assert_allclose(schedule(1000), 0.0, atol=1e-7)


def test_optimizer_decays_weights_after_clipping():
  config = tiny_config(
      clipping='global_norm', clip_norm=1e-6, weight_decay=0.5, momentum=0.0,
      warmup_epochs=0.0, schedule='step', step_boundaries_epochs=(1,),
      learning_rate=0.1, learning_rate_batch_size=32)
  tx = train.create_optimizer(
      config, train.create_learning_rate_schedule(config, 10))
  params = {'kernel': jnp.full((2, 2), 2.0), 'bias': jnp.full((2,), 2.0)}
  grads = {'kernel': jnp.full((2, 2), 100.0), 'bias': jnp.full((2,), 100.0)}
  updates, state = tx.update(grads, tx.init(params), params)
  # The decay term 0.5 * 2 is added after clipping, so it is not clipped.
  chex.assert_trees_all_close(
      updates, jax.tree.map(lambda p: -0.1 * 0.5 * p, params), atol=1e-6)
  np.testing.assert_allclose(
      optax.tree.get(state, 'gradient_norm'), 100.0 * math.sqrt(6),
      rtol=1e-5)


def test_weight_decay_mask_kernels_skips_vectors():
  config = tiny_config(weight_decay_mask='kernels', weight_decay=0.5,
                       momentum=0.0, warmup_epochs=0.0)
  tx = train.create_optimizer(
      config, train.create_learning_rate_schedule(config, 10))
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones((2,))}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert float(jnp.max(jnp.abs(updates['kernel']))) > 0
  np.testing.assert_array_equal(updates['bias'], 0.0)


# ---------------------------------------------------------------------------
# Invalid input stops the run before training.


@pytest.mark.parametrize('overrides, message', [
    (dict(model='resnet9000'), r"Unknown model 'resnet9000'"),
    (dict(dataset='mnist'), r"Unknown dataset 'mnist'"),
    (dict(alpha=1.5), r'alpha must lie in \[0, 1\], got 1.5'),
    (dict(alpha=-0.25), r'alpha must lie in \[0, 1\], got -0.25'),
    (dict(batch_size=30), r'batch_size 30 is not a positive multiple of '
     r'the 4 devices'),
    (dict(eval_batch_size=50), r'eval_batch_size 50 is not a positive '
     r'multiple of the 4 devices'),
    (dict(pgt_door='backward'), r"Unknown pgt_door 'backward'"),
    (dict(parallelism='pjit'), r"Unknown parallelism 'pjit'"),
    (dict(schedule='linear'), r"Unknown schedule 'linear'"),
    (dict(clipping='norm'), r"Unknown clipping 'norm'"),
    (dict(num_devices=64), r'num_devices=64, but this process has 8'),
    (dict(image_size=30), r'image_size 30 is not supported for digits'),
    (dict(eval_every_epochs=0), r'eval_every_epochs must be at least 1'),
    (dict(checkpoint_every_steps=-5),
     r'checkpoint_every_steps must be 0 \(off\) or positive, got -5'),
    (dict(max_checkpoints_to_keep=0),
     r'max_checkpoints_to_keep must be at least 1'),
    (dict(learning_rate_batch_size=0),
     r'learning_rate_batch_size must be positive'),
    (dict(seed=-1), r'seed must be a non-negative integer, got -1'),
    (dict(learning_rate=-1.0), r'learning_rate must be positive, got -1.0'),
    # steps_per_epoch is set, yet every batch must fit in the training set.
    (dict(batch_size=8192, eval_batch_size=8192),
     r'batch_size 8192 is larger than the training set of 4000 examples'),
])
def test_invalid_config_raises(tmp_path, overrides, message):
  with pytest.raises(train.ConfigError, match=message):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
  # Nothing was written.
  assert not os.listdir(tmp_path)


def test_labels_out_of_range_raise_before_training(tmp_path, monkeypatch):
  real_train_batches = input_pipeline.train_batches

  def train_batches_with_bad_label(*args, **kwargs):
    for batch in real_train_batches(*args, **kwargs):
      labels = np.array(batch['label'])
      labels[3] = 10
      yield {'image': batch['image'], 'label': labels}

  monkeypatch.setattr(input_pipeline, 'train_batches',
                      train_batches_with_bad_label)
  with pytest.raises(input_pipeline.LabelError,
                     match=r'label 10 at position 3 is outside \[0, 10\)'):
    train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert input_pipeline.LabelError in train.USAGE_ERRORS
  assert not os.path.exists(os.path.join(tmp_path, 'metrics.jsonl'))
  assert not glob.glob(os.path.join(tmp_path, 'checkpoints', '*'))


# ---------------------------------------------------------------------------
# Command line, comparison table and plot.


@pytest.mark.parametrize('environ, expected', [
    ({}, False),
    ({'SLURM_NTASKS': '1'}, False),
    ({'SLURM_NTASKS': '16'}, True),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, True),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, True),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, False),
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'}, True),
])
def test_multi_process_detection(environ, expected):
  assert parallel.launched_on_several_processes(environ) is expected


class _Stream(io.StringIO):

  def __init__(self, is_terminal):
    super().__init__()
    self._is_terminal = is_terminal

  def isatty(self):
    return self._is_terminal


@pytest.mark.parametrize('setting, is_main_process, is_terminal, expected', [
    (None, True, True, True),
    (None, True, False, False),
    (True, True, False, True),
    (False, True, True, False),
    (True, False, True, False),
    (None, False, True, False),
])
def test_progress_bar_default_needs_terminal(
    setting, is_main_process, is_terminal, expected):
  assert train.progress_bar_enabled(
      setting, is_main_process=is_main_process,
      stream=_Stream(is_terminal)) is expected


def _run_module(module, *args, python_options=()):
  return subprocess.run(
      [sys.executable, *python_options, '-m', module, *args],
      capture_output=True, text=True, cwd=REPOSITORY_ROOT, timeout=300,
      check=False)


def test_main_reports_config_error_briefly(tmp_path):
  result = _run_module(
      'experiments.main', '--config', 'experiments/configs/local.py',
      '--config.batch_size=30', '--workdir', str(tmp_path / 'run'))
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  error_lines = [line for line in result.stderr.splitlines()
                 if line.startswith('Error:')]
  assert len(error_lines) == 1
  assert 'batch_size 30 is not a positive multiple' in error_lines[0]
  assert not os.path.exists(tmp_path / 'run')


@pytest.mark.parametrize('arguments, message', [
    (['--config', 'experiments/configs/nothere.py'],
     'could not load the configuration file given to --config: [Errno 2] '
     "No such file or directory: 'experiments/configs/nothere.py'"),
    (['--config', 'experiments/configs/local.py', '--config.num_epoch=1'],
     "the configuration has no field 'num_epoch'. Did you mean "
     '"num_epochs"'),
])
def test_main_reports_flag_error_briefly(tmp_path, arguments, message):
  result = _run_module('experiments.main', *arguments,
                       '--workdir', str(tmp_path / 'run'))
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert f'Error: {message}' in result.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_compare_checks_configs_first(tmp_path):
  earlier = tmp_path / 'baseline' / 'metrics.jsonl'
  earlier.parent.mkdir()
  earlier.write_text('{"step": 1}\n', encoding='utf-8')
  # -X importtime lists every imported module on stderr.
  result = _run_module('experiments.compare', '--config.model=resnet51',
                       '--workdir', str(tmp_path),
                       python_options=('-X', 'importtime'))
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert "Error in the baseline run: Unknown model 'resnet51'" in (
      result.stderr)
  assert earlier.read_text(encoding='utf-8') == '{"step": 1}\n'
  assert sorted(os.listdir(tmp_path)) == ['baseline']
  # The digits runs need no TensorFlow, which takes seconds to import.
  imported = [line.rsplit('|', 1)[-1].strip()
              for line in result.stderr.splitlines()
              if line.startswith('import time:')]
  assert 'experiments.train' in imported
  assert 'tensorflow' not in imported


def test_compare_rejects_busy_workdir(tmp_path):
  earlier = tmp_path / 'baseline' / 'metrics.jsonl'
  earlier.parent.mkdir()
  earlier.write_text('{"step": 1}\n', encoding='utf-8')
  with workdir_lib.exclusive_use(str(tmp_path), enabled=True):
    result = _run_module('experiments.compare', '--workdir', str(tmp_path))
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert f'Error: Another run is training in {tmp_path}' in result.stderr
  # The earlier comparison stayed where it was.
  assert earlier.read_text(encoding='utf-8') == '{"step": 1}\n'
  assert sorted(os.listdir(tmp_path)) == ['baseline',
                                          workdir_lib.LOCK_FILENAME]


def test_compare_moves_earlier_comparison_aside(tmp_path):
  from experiments import compare  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  assert compare.move_earlier_comparison(workdir) is None
  for name in ('baseline', 'pgt'):
    os.makedirs(os.path.join(workdir, name, 'checkpoints'))
  (tmp_path / 'curves.png').write_bytes(b'png')
  os.utime(tmp_path / 'curves.png', (1.6e9, 1.6e9))
  for name in ('baseline', 'pgt'):
    os.utime(tmp_path / name, (1.6e9, 1.6e9))

  moved_to = compare.move_earlier_comparison(workdir)
  stamp = os.path.basename(moved_to)
  assert os.path.dirname(moved_to) == os.path.join(workdir, 'earlier')
  assert len(stamp) == len('YYYYMMDD-HHMMSS')
  assert sorted(os.listdir(moved_to)) == ['baseline', 'curves.png', 'pgt']
  assert os.path.isdir(os.path.join(moved_to, 'pgt', 'checkpoints'))
  assert sorted(os.listdir(workdir)) == ['earlier']

  # A second comparison with the same time stamp gets its own folder.
  os.makedirs(os.path.join(workdir, 'baseline'))
  os.utime(tmp_path / 'baseline', (1.6e9, 1.6e9))
  second = compare.move_earlier_comparison(workdir)
  assert os.path.basename(second) == stamp + '-2'
  assert os.listdir(second) == ['baseline']


def test_compare_table_and_plot(tmp_path):
  run_dirs = {'baseline': str(tmp_path / 'baseline'),
              'PGT': str(tmp_path / 'pgt')}
  for offset, run_dir in enumerate(run_dirs.values()):
    writer = metrics_lib.MetricWriter(run_dir, enabled=True)
    for epoch in (1, 2, 3):
      writer.write(epoch * 10, {
          'epoch': epoch, 'train_top1': 0.3 * epoch, 'test_top1':
          0.25 * epoch + 0.01 * offset, 'train_cross_entropy': 1.0 / epoch,
          'test_cross_entropy': 1.2 / epoch, 'train_logit_norm': 5.0 * epoch,
          'test_logit_norm': 4.0 * epoch, 'images_per_second': 100.0})
    writer.close()
  results = {label: metrics_lib.epoch_records(run_dir)[-1]
             for label, run_dir in run_dirs.items()}

  table = metrics_lib.format_comparison_table(
      results, {'baseline': 12.0, 'PGT': 13.0})
  lines = table.splitlines()
  assert lines[0].split() == ['baseline', 'PGT']
  test_row = next(line for line in lines if line.startswith('test top-1'))
  assert test_row.split()[-2:] == ['75.00', '76.00']
  assert lines[-1].split()[-2:] == ['12', '13']

  path = plots.plot_runs(run_dirs, str(tmp_path / 'curves.png'))
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
