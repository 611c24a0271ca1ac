"""ResNet-18 on ImageNet, cosine schedule, PGT alpha 0.25.

Das et al. (arXiv:2111.12495) report 70.38 -> 70.53 train and 70.208 ->
70.298 test top-1 (baseline -> PGT) for this row, with the shared recipe of
default.py.

PGT:
  python -m experiments.main \
      --config experiments/configs/resnet18_cosine.py \
      --workdir runs/resnet18_cosine_pgt
Baseline:
  python -m experiments.main \
      --config experiments/configs/resnet18_cosine.py \
      --config.alpha=1.0 --workdir runs/resnet18_cosine_baseline
"""

from experiments.configs import default


def get_config():
  """Returns the ResNet-18 cosine recipe."""
  config = default.get_config()
  config.model = 'resnet18'
  config.schedule = 'cosine'
  config.alpha = 0.25
  return config
