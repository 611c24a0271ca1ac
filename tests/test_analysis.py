"""Tests of the filter-norm and dead-feature analyses."""

import os

import numpy as np
import pytest

from experiments import analysis
from experiments import models


def test_filter_norms_match_numpy():
  rng = np.random.default_rng(0)
  params = {
      'stem_conv': {'kernel': rng.normal(size=(3, 3, 1, 4))},
      'stage1_block0': {'conv1': {'kernel': rng.normal(size=(3, 3, 4, 8))}},
      'classifier': {'kernel': rng.normal(size=(8, 10)),
                     'bias': rng.normal(size=(10,))},
  }
  params['stem_conv']['kernel'][..., 2] = 0.0
  norms = analysis.filter_norms(params)
  # Dense kernels and biases are not convolution filters.
  assert set(norms) == {'stem_conv/kernel', 'stage1_block0/conv1/kernel'}
  for path, kernel in models.conv_kernels(params).items():
    expected = np.sqrt(np.sum(kernel**2, axis=(0, 1, 2)))
    assert norms[path].shape == (kernel.shape[-1],)
    np.testing.assert_allclose(norms[path], expected, rtol=1e-5)
  assert norms['stem_conv/kernel'][2] == 0.0


def test_zeroed_out_requires_staying_below():
  threshold = 1e-3
  # Filters: 0 never falls; 1 falls at epoch 1 and stays; 2 falls at epoch 0
  # and recovers at epoch 2; 3 falls only at the last epoch; 4 falls, comes
  # back, falls again at the last epoch.
  history = [
      {'conv': np.array([1.0, 1.0, 1e-5, 1.0, 1e-5])},
      {'conv': np.array([1.0, 1e-4, 1e-5, 1.0, 1.0])},
      {'conv': np.array([1.0, 1e-6, 0.5, 1.0, 1.0])},
      {'conv': np.array([1.0, 0.0, 0.5, 1e-4, 1e-4])},
  ]
  masks = analysis.zeroed_out_masks(history, threshold)
  np.testing.assert_array_equal(
      masks['conv'], [False, True, False, True, False])

  summary = analysis.filter_summary(history, threshold)
  assert summary['filters_near_zero'] == 3
  assert summary['filters_near_zero/conv'] == 3
  assert summary['filters_zeroed_out'] == 2
  assert summary['filters_recovered'] == 1
  assert summary['filter_norm_min'] == 0.0


def test_filter_history_round_trips(tmp_path):
  workdir = str(tmp_path)
  for epoch in (1, 2, 3):
    analysis.save_filter_norms(
        workdir, epoch, {'stage1_block0/conv1/kernel': np.full(4, epoch)})
  history = analysis.load_filter_norm_history(workdir, up_to_epoch=2)
  assert len(history) == 2
  np.testing.assert_array_equal(
      history[1]['stage1_block0/conv1/kernel'], np.full(4, 2))
  assert analysis.load_filter_norm_history(
      str(tmp_path / 'absent'), up_to_epoch=5) == []


def test_remove_filter_norms_after_epoch(tmp_path):
  workdir = str(tmp_path)
  for epoch in (1, 2, 3, 12):
    analysis.save_filter_norms(workdir, epoch, {'conv': np.full(2, epoch)})
  directory = tmp_path / analysis.FILTER_NORMS_DIRNAME
  # Written under temporary names and renamed: none is left behind.
  assert sorted(os.listdir(directory)) == [
      'epoch_0001.npz', 'epoch_0002.npz', 'epoch_0003.npz', 'epoch_0012.npz']

  assert analysis.remove_filter_norms_after(workdir, 2) == 2
  assert sorted(os.listdir(directory)) == ['epoch_0001.npz', 'epoch_0002.npz']
  assert analysis.remove_filter_norms_after(workdir, 2) == 0
  assert analysis.remove_filter_norms_after(workdir, 0) == 2
  assert analysis.load_filter_norm_history(workdir, up_to_epoch=5) == []
  assert analysis.remove_filter_norms_after(
      str(tmp_path / 'absent'), 0) == 0


@pytest.mark.parametrize('threshold, expected', [(1e-6, 2), (0.5, 3)])
def test_count_dead_features(threshold, expected):
  feature_max = np.array([0.0, 1e-8, 0.2, 3.0])
  assert analysis.count_dead_features(feature_max, threshold) == expected
