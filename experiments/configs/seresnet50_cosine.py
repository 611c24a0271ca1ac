"""SE-ResNet-50 on ImageNet, cosine schedule, PGT alpha 0.3.

Das et al. (arXiv:2111.12495) report 81.50 -> 82.47 train and 77.218 ->
77.952 test top-1 (baseline -> PGT) for this row, with the shared recipe of
default.py (batch 1024 on 4 V100s, 100 epochs).

PGT:
  python -m experiments.main \
      --config experiments/configs/seresnet50_cosine.py \
      --workdir runs/seresnet50_cosine_pgt
Baseline:
  python -m experiments.main \
      --config experiments/configs/seresnet50_cosine.py \
      --config.alpha=1.0 --workdir runs/seresnet50_cosine_baseline
"""

from experiments.configs import default


def get_config():
  """Returns the SE-ResNet-50 cosine recipe."""
  config = default.get_config()
  config.model = 'seresnet50'
  config.schedule = 'cosine'
  config.alpha = 0.3
  return config
