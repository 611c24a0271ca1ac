"""ResNet-18 on ImageNet, step schedule, PGT alpha 0.25.

The learning rate is divided by 10 at epochs 30, 60 and 90. Das et al.
(arXiv:2111.12495) report 69.95 -> 70.30 train and 69.704 -> 69.844 test
top-1 (baseline -> PGT) for this row, with the shared recipe of default.py.

PGT:
  python -m experiments.main \
      --config experiments/configs/resnet18_step.py \
      --workdir runs/resnet18_step_pgt
Baseline:
  python -m experiments.main \
      --config experiments/configs/resnet18_step.py \
      --config.alpha=1.0 --workdir runs/resnet18_step_baseline
"""

from experiments.configs import default


def get_config():
  """Returns the ResNet-18 step recipe."""
  config = default.get_config()
  config.model = 'resnet18'
  config.schedule = 'step'
  config.step_boundaries_epochs = (30, 60, 90)
  config.step_decay_factor = 0.1
  config.alpha = 0.25
  return config
