"""Tests of the metric sums, their summaries and the writers."""

import json
import os

import chex
import jax
import numpy as np
import pytest

from experiments import metrics


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
  # A resumed run appends epoch 2 again; the later record wins.
  writer = metrics.MetricWriter(str(tmp_path), enabled=True)
  writer.write(20, {'epoch': 2, 'train_top1': 0.8})
  writer.close()
  epochs = metrics.epoch_records(str(tmp_path))
  assert [r['epoch'] for r in epochs] == [1, 2]
  assert epochs[1]['train_top1'] == 0.8


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
