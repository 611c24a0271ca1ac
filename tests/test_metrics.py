"""Tests of the metric sums, their summaries and the writers."""

import json
import os

import chex
import jax
import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import errors as tb_errors
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow as tb_records
from tensorboard.util import tensor_util

from experiments import metrics


def read_scalar_events(workdir):
  """Returns (step, tag, value) of every scalar in `workdir`'s event files.

  Reads with TensorBoard's own record reader, not with `metrics`, so the
  files are checked against the format TensorBoard loads.
  """
  scalars = []
  for path in metrics.event_files(workdir):
    reader = tb_records.PyRecordReader_New(path)
    while True:
      try:
        reader.GetNext()
      except tb_errors.OutOfRangeError:
        break
      event = event_pb2.Event.FromString(reader.record())
      for value in event.summary.value:
        assert value.metadata.plugin_data.plugin_name == 'scalars'
        scalars.append((event.step, value.tag,
                        tensor_util.make_ndarray(value.tensor).item()))
  return scalars


class PredictionSumsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_sums_skip_masked_examples(self):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 120)).astype(np.float32)
    labels = rng.integers(0, 120, size=6).astype(np.int32)
    labels[0] = int(np.argmax(logits[0]))
    # A masked example that would be counted correct and would set the max.
    logits[5, 7] = 100.0
    labels[5] = 7
    mask = np.array([True, True, True, True, True, False])

    sums = self.variant(
        lambda z, y, m: metrics.prediction_sums(z, y, m, top5=True))(
            logits, labels, mask)

    kept_logits, kept_labels = logits[mask], labels[mask]
    chex.assert_shape(sums['count'], ())
    assert int(sums['count']) == 5
    assert int(sums['correct']) == int(
        np.sum(np.argmax(kept_logits, -1) == kept_labels))
    top5 = np.argsort(-kept_logits, axis=-1)[:, :5]
    assert int(sums['correct_top5']) == int(
        np.sum(np.any(top5 == kept_labels[:, None], -1)))
    np.testing.assert_allclose(
        sums['logit_norm_sum'], np.linalg.norm(kept_logits, axis=-1).sum(),
        rtol=1e-5)
    np.testing.assert_allclose(sums['logit_sum'], kept_logits.sum(),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sums['logit_max'], kept_logits.max(),
                               rtol=1e-6)


def test_summary_gives_mean_and_variance_of_logits():
  logits = np.array([[1.0, -1.0, 3.0], [0.0, 2.0, 1.0]], np.float32)
  labels = np.array([2, 0], np.int32)
  sums = metrics.prediction_sums(logits, labels, np.ones(2, bool), top5=False)
  totals = metrics.accumulate(None, jax.device_get(sums))
  totals = metrics.accumulate(totals, jax.device_get(sums))
  summary = metrics.summarize_predictions(totals, 3, 'test')
  assert summary['test_top1'] == 0.5
  np.testing.assert_allclose(summary['test_logit_mean'], logits.mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(summary['test_logit_variance'], logits.var(),
                             rtol=1e-5)
  np.testing.assert_allclose(
      summary['test_logit_norm'], np.linalg.norm(logits, axis=-1).mean(),
      rtol=1e-6)
  assert summary['test_logit_max'] == 3.0
  assert 'test_top5' not in summary


def test_summary_without_examples_raises():
  totals = {'count': np.int64(0), 'correct': np.int64(0),
            'logit_norm_sum': 0.0, 'logit_sum': 0.0, 'logit_square_sum': 0.0,
            'logit_max': -np.inf}
  with pytest.raises(ValueError, match='No test examples'):
    metrics.summarize_predictions(totals, 10, 'test')


def test_accumulate_takes_maximum_of_max_entries():
  totals = metrics.accumulate(None, {'count': 2, 'feature_abs_max':
                                     np.array([1.0, 5.0])})
  totals = metrics.accumulate(totals, {'count': 3, 'feature_abs_max':
                                       np.array([4.0, 2.0])})
  assert totals['count'] == 5
  np.testing.assert_array_equal(totals['feature_abs_max'], [4.0, 5.0])


def test_writer_appends_json_lines(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path), enabled=True)
  writer.write(10, {'epoch': 1, 'train_top1': 0.5, 'gradient_norm':
                    float('nan')})
  writer.write(20, {'epoch': 2, 'train_top1': 0.75})
  writer.close()
  records = metrics.read_metrics(str(tmp_path))
  assert records[0] == {'step': 10, 'epoch': 1, 'train_top1': 0.5,
                        'gradient_norm': 'nan'}
  assert records[1]['step'] == 20
  # A second writer appends. For an epoch written twice the later record
  # wins.
  writer = metrics.MetricWriter(str(tmp_path), enabled=True)
  writer.write(20, {'epoch': 2, 'train_top1': 0.8})
  writer.close()
  epochs = metrics.epoch_records(str(tmp_path))
  assert [r['epoch'] for r in epochs] == [1, 2]
  assert epochs[1]['train_top1'] == 0.8


def test_writer_events_readable_by_tensorboard(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path), enabled=True)
  writer.write(10, {'epoch': 1, 'train_top1': 0.5, 'gradient_norm':
                    float('nan')})
  writer.write(20, {'epoch': 2, 'train_top1': 0.75})
  writer.close()
  # Two writers in the same second get separate files.
  writer = metrics.MetricWriter(str(tmp_path), enabled=True)
  writer.write(30, {'epoch': 3, 'train_top1': 0.875})
  writer.close()
  assert len(metrics.event_files(str(tmp_path))) == 2

  scalars = read_scalar_events(str(tmp_path))
  top1 = [(step, value) for step, tag, value in scalars
          if tag == 'train_top1']
  assert top1 == [(10, 0.5), (20, 0.75), (30, 0.875)]
  assert [tag for step, tag, _ in scalars if step == 10] == [
      'epoch', 'train_top1', 'gradient_norm']
  nan_values = [value for _, tag, value in scalars if tag == 'gradient_norm']
  assert len(nan_values) == 1
  assert np.isnan(nan_values[0])


def _write_steps(workdir, steps):
  writer = metrics.MetricWriter(workdir, enabled=True)
  for step in steps:
    writer.write(step, {'epoch': step // 10, 'train_top1': step / 100})
  writer.close()


def test_drop_metrics_after_keeps_earlier_steps(tmp_path):
  workdir = str(tmp_path)
  _write_steps(workdir, (10, 20, 30))
  # A crash while writing leaves a line without its newline.
  with open(tmp_path / metrics.METRICS_FILENAME, 'a', encoding='utf-8') as f:
    f.write('{"step": 40, "ep')
  assert [r['step'] for r in metrics.read_metrics(workdir)] == [10, 20, 30]

  # Two later records and the incomplete line.
  assert metrics.drop_metrics_after(workdir, 20) == 2
  assert [r['step'] for r in metrics.read_metrics(workdir)] == [10, 20]
  with open(tmp_path / metrics.METRICS_FILENAME, encoding='utf-8') as f:
    assert f.read().endswith('}\n')
  assert metrics.drop_metrics_after(workdir, 20) == 0
  assert sorted(os.listdir(workdir))[-1] == metrics.METRICS_FILENAME
  assert not [name for name in os.listdir(workdir) if name.endswith('.tmp')]

  assert metrics.drop_metrics_after(workdir, 0) == 2
  assert not os.path.exists(tmp_path / metrics.METRICS_FILENAME)
  assert metrics.drop_metrics_after(workdir, 0) == 0


def test_read_metrics_names_a_corrupt_line(tmp_path):
  _write_steps(str(tmp_path), (10, 20))
  path = tmp_path / metrics.METRICS_FILENAME
  lines = path.read_text(encoding='utf-8').splitlines()
  path.write_text('\n'.join([lines[0], 'not json', lines[1]]) + '\n',
                  encoding='utf-8')
  with pytest.raises(ValueError, match=r'Line 2 of .*metrics\.jsonl'):
    metrics.read_metrics(str(tmp_path))
  with pytest.raises(ValueError, match=r'Line 2 of'):
    metrics.drop_metrics_after(str(tmp_path), 10)
  # Nothing was rewritten.
  assert path.read_text(encoding='utf-8').splitlines()[1] == 'not json'


def test_drop_events_after_keeps_earlier_steps(tmp_path):
  workdir = str(tmp_path)
  _write_steps(workdir, (10, 20))
  _write_steps(workdir, (30,))
  first, second = metrics.event_files(workdir)
  # A record cut short by a crash at the end of the first file.
  with open(first, 'ab') as f:
    f.write(b'\x05\x00\x00')

  # Step 20's two scalars share one event, as do step 30's.
  assert metrics.drop_events_after(workdir, 10) == 2
  assert [(step, tag) for step, tag, _ in read_scalar_events(workdir)] == [
      (10, 'epoch'), (10, 'train_top1')]
  # The second file held only later steps.
  assert not os.path.exists(second)
  assert metrics.drop_events_after(workdir, 10) == 0
  assert metrics.drop_events_after(workdir, 0) == 1
  assert metrics.event_files(workdir) == []


def test_read_event_records_rejects_bad_checksum(tmp_path):
  _write_steps(str(tmp_path), (10,))
  (path,) = metrics.event_files(str(tmp_path))
  data = bytearray(open(path, 'rb').read())
  data[-6] ^= 0xFF
  with open(path, 'wb') as f:
    f.write(bytes(data))
  with pytest.raises(ValueError, match='bad data checksum'):
    metrics.drop_events_after(str(tmp_path), 0)


def test_writer_on_other_processes_writes_nothing(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path / 'run'), enabled=False)
  writer.write(1, {'epoch': 1})
  writer.close()
  assert not os.path.exists(tmp_path / 'run')


def test_write_config_stores_json(tmp_path):
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  metrics.write_config(str(tmp_path), config, enabled=True)
  with open(tmp_path / 'config.json', encoding='utf-8') as f:
    stored = json.load(f)
  assert stored['model'] == 'resnet50'
  assert stored['alpha'] is None
  assert stored['step_boundaries_epochs'] == [30, 60, 90]
  assert metrics.read_config(str(tmp_path)) == stored
  # Replaced in place, with no temporary file left behind.
  config.model = 'resnet18'
  metrics.write_config(str(tmp_path), config, enabled=True)
  assert metrics.read_config(str(tmp_path))['model'] == 'resnet18'
  assert os.listdir(tmp_path) == ['config.json']


def test_read_config_missing_or_invalid(tmp_path):
  assert metrics.read_config(str(tmp_path)) is None
  (tmp_path / 'config.json').write_text('{"model": ', encoding='utf-8')
  with pytest.raises(ValueError, match='config.json is not valid JSON'):
    metrics.read_config(str(tmp_path))
  (tmp_path / 'config.json').write_text('[1, 2]', encoding='utf-8')
  with pytest.raises(ValueError, match='does not contain a JSON object'):
    metrics.read_config(str(tmp_path))

