"""ResNet-101 on ImageNet, cosine schedule, PGT alpha 0.3.

Das et al. (arXiv:2111.12495) report 82.29 -> 83.10 train and 77.896 ->
78.258 test top-1 (baseline -> PGT) for this row, with the shared recipe of
default.py.

PGT:
  python -m experiments.main \
      --config experiments/configs/resnet101_cosine.py \
      --workdir runs/resnet101_cosine_pgt
Baseline:
  python -m experiments.main \
      --config experiments/configs/resnet101_cosine.py \
      --config.alpha=1.0 --workdir runs/resnet101_cosine_baseline
"""

from experiments.configs import default


def get_config():
  """Returns the ResNet-101 cosine recipe."""
  config = default.get_config()
  config.model = 'resnet101'
  config.schedule = 'cosine'
  config.alpha = 0.3
  return config
