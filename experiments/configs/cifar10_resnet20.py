"""ResNet-20 on CIFAR-10 for 360 epochs, PGT alpha 0.25.

Das et al. (arXiv:2111.12495) saw no effect of PGT here, because training
accuracy reaches 100%. The run keeps the shared optimiser (SGD with Nesterov
momentum 0.9, weight decay 5e-4, linear warm-up, cosine decay).

NOTE: apart from the model, the dataset and the 360 epochs, the CIFAR-10
settings are not given with the reported result. Batch 128, a peak learning
rate of 0.1 (He et al.'s CIFAR value), 5 warm-up epochs and alpha 0.25 are
this project's choices.

PGT:
  python -m experiments.main \
      --config experiments/configs/cifar10_resnet20.py \
      --workdir runs/cifar10_resnet20_pgt
Baseline:
  python -m experiments.main \
      --config experiments/configs/cifar10_resnet20.py \
      --config.alpha=1.0 --workdir runs/cifar10_resnet20_baseline
"""

from experiments.configs import default


def get_config():
  """Returns the CIFAR-10 ResNet-20 recipe."""
  config = default.get_config()
  config.model = 'resnet20'
  config.dataset = 'cifar10'
  config.num_epochs = 360
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.learning_rate = 0.1
  config.learning_rate_batch_size = 128
  config.alpha = 0.25
  # Epochs are short (390 steps); save every 10 to keep disk writes low.
  config.checkpoint_every_epochs = 10
  return config
