"""ResNet-50 on ImageNet, cosine schedule, label smoothing 0.1 (ablation).

The label-smoothing ablation of Das et al. (arXiv:2111.12495), test top-1:
smoothing 0.1 alone 76.698; PGT 0.3 alone 76.886; both 76.968; PGT 0.05
alone 77.216; PGT 0.05 with smoothing 76.39. The rows without smoothing are
resnet50_cosine.py (alpha 0.05, or --config.alpha=0.3).

Smoothing alone (this file as it is):
  python -m experiments.main \
      --config experiments/configs/resnet50_cosine_label_smoothing.py \
      --workdir runs/resnet50_cosine_ls
Smoothing and PGT 0.3:
  python -m experiments.main \
      --config experiments/configs/resnet50_cosine_label_smoothing.py \
      --config.alpha=0.3 --workdir runs/resnet50_cosine_ls_pgt03
Smoothing and PGT 0.05:
  python -m experiments.main \
      --config experiments/configs/resnet50_cosine_label_smoothing.py \
      --config.alpha=0.05 --workdir runs/resnet50_cosine_ls_pgt005
"""

from experiments.configs import resnet50_cosine


def get_config():
  """Returns the ResNet-50 cosine recipe with label smoothing 0.1."""
  config = resnet50_cosine.get_config()
  config.label_smoothing = 0.1
  config.alpha = None
  return config
