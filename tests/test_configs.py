"""Tests that every recipe file loads, passes the checks and launches itself."""

import glob
import importlib
import os

import pytest

from experiments import train

_CONFIG_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'experiments', 'configs')
_CONFIG_NAMES = sorted(
    os.path.splitext(os.path.basename(path))[0]
    for path in glob.glob(os.path.join(_CONFIG_DIR, '*.py'))
    if not path.endswith('__init__.py'))

# The reported rows: config name -> fields that define the row.
_PAPER_ROWS = {
    'seresnet50_cosine': dict(model='seresnet50', schedule='cosine',
                              alpha=0.3),
    'resnet50_cosine': dict(model='resnet50', schedule='cosine', alpha=0.05),
    'resnet50_step': dict(model='resnet50', schedule='step', alpha=0.05),
    'resnet101_cosine': dict(model='resnet101', schedule='cosine', alpha=0.3),
    'seresnet18_cosine': dict(model='seresnet18', schedule='cosine',
                              alpha=0.25),
    'resnet18_step': dict(model='resnet18', schedule='step', alpha=0.25),
    'resnet18_cosine': dict(model='resnet18', schedule='cosine', alpha=0.25),
    'resnet18_nobn_b256': dict(model='resnet18', norm='none', batch_size=256,
                               clipping='none', alpha=0.25),
    'resnet18_nobn_b256_gc': dict(model='resnet18', norm='none',
                                  batch_size=256, clipping='global_norm',
                                  alpha=0.25),
    'resnet18_nobn_b256_agc': dict(model='resnet18', norm='none',
                                   batch_size=256, clipping='agc',
                                   alpha=0.25),
    'resnet18_nobn_b512': dict(model='resnet18', norm='none', batch_size=512,
                               alpha=0.25),
    'resnet18_nobn_b1024': dict(model='resnet18', norm='none',
                                batch_size=1024, alpha=0.92),
    'resnet50_cosine_label_smoothing': dict(model='resnet50',
                                            label_smoothing=0.1, alpha=None),
    'cifar10_resnet20': dict(model='resnet20', dataset='cifar10',
                             num_epochs=360),
}

_SHARED_RECIPE = dict(
    momentum=0.9, nesterov=True, weight_decay=5e-4,
    warmup_init_learning_rate=4e-4, learning_rate=0.4,
    learning_rate_batch_size=1024, num_epochs=100, warmup_epochs=5.0,
    dataset='imagenet2012', half_precision=True)


def _load(name):
  return importlib.import_module(f'experiments.configs.{name}')


@pytest.mark.parametrize('name', _CONFIG_NAMES)
def test_config_passes_checks(name):
  config = _load(name).get_config()
  train.validate_config(config, num_devices=8, process_count=1)


@pytest.mark.parametrize('name', _CONFIG_NAMES)
def test_docstring_launches_its_own_file(name):
  docstring = _load(name).__doc__
  assert f'experiments/configs/{name}.py' in docstring or (
      name == 'digits_resnet20' and 'experiments.compare' in docstring)
  assert 'python -m experiments.' in docstring


@pytest.mark.parametrize('name', sorted(_PAPER_ROWS))
def test_paper_row_fields(name):
  config = _load(name).get_config()
  for field, value in _PAPER_ROWS[name].items():
    assert config[field] == value, field
  if name != 'cifar10_resnet20':
    for field, value in _SHARED_RECIPE.items():
      assert config[field] == value, field


def test_every_paper_row_has_a_file():
  assert set(_PAPER_ROWS) <= set(_CONFIG_NAMES)
