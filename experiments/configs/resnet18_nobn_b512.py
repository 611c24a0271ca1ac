"""ResNet-18 without normalisation on ImageNet, batch 512, PGT alpha 0.25.

The peak learning rate scales to 0.4 * 512 / 1024 = 0.2. Das et al.
(arXiv:2111.12495) report 66.552 -> 67.236 test top-1 (baseline -> PGT).

PGT:
  python -m experiments.main \
      --config experiments/configs/resnet18_nobn_b512.py \
      --workdir runs/resnet18_nobn_b512_pgt
Baseline:
  python -m experiments.main \
      --config experiments/configs/resnet18_nobn_b512.py \
      --config.alpha=1.0 --workdir runs/resnet18_nobn_b512_baseline
"""

from experiments.configs import resnet18_nobn_b256


def get_config():
  """Returns the normalisation-free ResNet-18 recipe at batch 512."""
  config = resnet18_nobn_b256.get_config()
  config.batch_size = 512
  config.eval_batch_size = 512
  config.alpha = 0.25
  return config
