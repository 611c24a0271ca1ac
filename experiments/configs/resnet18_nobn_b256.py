"""ResNet-18 without batch normalisation on ImageNet, batch 256, PGT alpha 0.25.

Every normalisation layer is the identity (norm='none'); the schedule is
cosine over 100 epochs and the peak learning rate scales to
0.4 * 256 / 1024 = 0.1. Das et al. (arXiv:2111.12495) report 66.796 test
top-1 for the baseline and 67.814 with PGT. They also track the L2 norm of
every convolution filter and count filters and pooled features that zero
out. This program records both every epoch: filters_near_zero,
filters_zeroed_out and dead_features in metrics.jsonl, and per-filter norms
in filter_norms/.

The clipping rows of the same table have their own files:
resnet18_nobn_b256_gc.py and resnet18_nobn_b256_agc.py.

PGT:
  python -m experiments.main \
      --config experiments/configs/resnet18_nobn_b256.py \
      --workdir runs/resnet18_nobn_b256_pgt
Baseline:
  python -m experiments.main \
      --config experiments/configs/resnet18_nobn_b256.py \
      --config.alpha=1.0 --workdir runs/resnet18_nobn_b256_baseline
"""

from experiments.configs import default


def get_config():
  """Returns the normalisation-free ResNet-18 recipe at batch 256."""
  config = default.get_config()
  config.model = 'resnet18'
  config.norm = 'none'
  config.schedule = 'cosine'
  config.batch_size = 256
  config.eval_batch_size = 256
  config.alpha = 0.25
  return config
