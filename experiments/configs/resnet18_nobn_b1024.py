"""ResNet-18 without normalisation on ImageNet, batch 1024, PGT alpha 0.92.

The peak learning rate is the unscaled 0.4. Das et al. (arXiv:2111.12495)
report 64.816 -> 65.498 test top-1 (baseline -> PGT); at this batch size the
best alpha they found is 0.92.

PGT:
  python -m experiments.main \
      --config experiments/configs/resnet18_nobn_b1024.py \
      --workdir runs/resnet18_nobn_b1024_pgt
Baseline:
  python -m experiments.main \
      --config experiments/configs/resnet18_nobn_b1024.py \
      --config.alpha=1.0 --workdir runs/resnet18_nobn_b1024_baseline
"""

from experiments.configs import resnet18_nobn_b256


def get_config():
  """Returns the normalisation-free ResNet-18 recipe at batch 1024."""
  config = resnet18_nobn_b256.get_config()
  config.batch_size = 1024
  config.eval_batch_size = 1024
  config.alpha = 0.92
  return config
