"""ResNet-18 without normalisation, batch 256, norm clipping, PGT alpha 0.25.

Gradients are clipped to a global norm of `clip_norm` after PGT and before
weight decay and momentum. Das et al. (arXiv:2111.12495) report 67.064 test
top-1 with gradient clipping alone and 67.088 with clipping and PGT.

NOTE: the clipping threshold is not given with the reported numbers;
clip_norm = 1.0 here is this project's choice.

Clipping and PGT:
  python -m experiments.main \
      --config experiments/configs/resnet18_nobn_b256_gc.py \
      --workdir runs/resnet18_nobn_b256_gc_pgt
Clipping alone:
  python -m experiments.main \
      --config experiments/configs/resnet18_nobn_b256_gc.py \
      --config.alpha=1.0 --workdir runs/resnet18_nobn_b256_gc
"""

from experiments.configs import resnet18_nobn_b256


def get_config():
  """Returns the normalisation-free ResNet-18 recipe with norm clipping."""
  config = resnet18_nobn_b256.get_config()
  config.clipping = 'global_norm'
  config.clip_norm = 1.0
  return config
