"""SE-ResNet-18 on ImageNet, cosine schedule, PGT alpha 0.25.

Das et al. (arXiv:2111.12495) report 71.42 -> 71.60 train and 71.09 ->
71.436 test top-1 (baseline -> PGT) for this row, with the shared recipe of
default.py.

PGT:
  python -m experiments.main \
      --config experiments/configs/seresnet18_cosine.py \
      --workdir runs/seresnet18_cosine_pgt
Baseline:
  python -m experiments.main \
      --config experiments/configs/seresnet18_cosine.py \
      --config.alpha=1.0 --workdir runs/seresnet18_cosine_baseline
"""

from experiments.configs import default


def get_config():
  """Returns the SE-ResNet-18 cosine recipe."""
  config = default.get_config()
  config.model = 'seresnet18'
  config.schedule = 'cosine'
  config.alpha = 0.25
  return config
