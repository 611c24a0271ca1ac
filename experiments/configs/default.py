"""Shared base: the ImageNet recipe of Das et al., ResNet-50, cosine, no PGT.

Every recipe in this folder starts from `get_config()` here and overrides a
few fields. The recipe is SGD with Nesterov momentum 0.9 and weight decay
5e-4, at batch 1024 for 100 epochs. A 5-epoch linear warm-up goes from 4e-4
to a peak learning rate of 0.4 (scaled linearly with the batch size), and
cosine decay follows. Computation is in bfloat16 on float32 parameters.

Launch (ImageNet prepared by tensorflow-datasets under $TFDS_DATA_DIR):

  python -m experiments.main \
      --config experiments/configs/default.py \
      --workdir runs/resnet50_cosine_baseline

Any field can be overridden on the command line, for example
`--config.alpha=0.25 --config.batch_size=512`. The baseline is
`alpha` unset (None) or `--config.alpha=1.0`; both train with the ordinary
cross-entropy gradient.

Reference:
  Das et al., "Altering Backward Pass Gradients improves Convergence",
  arXiv:2111.12495.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  """Returns the base configuration shared by every recipe."""
  config = ml_collections.ConfigDict()

  # Model.
  # One of experiments.models.MODEL_NAMES.
  config.model = 'resnet50'
  # 'batch' for batch normalisation, 'none' to replace every normalisation
  # layer by the identity.
  config.norm = 'batch'
  # Start the last batch-normalisation scale of every residual block at zero.
  config.zero_init_residual = False
  # Compute in bfloat16 on float32 parameters (True) or fully in float32.
  config.half_precision = True

  # Data.
  # One of experiments.input_pipeline.DATASET_NAMES.
  config.dataset = 'imagenet2012'
  # tensorflow-datasets data directory; None uses tfds' default
  # ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  config.data_dir = config_dict.placeholder(str)
  # Side of the square input images in pixels; None uses the dataset's
  # default (224 for ImageNet, 32 for CIFAR, 28 for digits).
  config.image_size = config_dict.placeholder(int)
  # Training augmentation; None uses the dataset's default (random-resized
  # crop and flip for ImageNet, padded crop and flip for CIFAR, none for
  # digits).
  config.augment = config_dict.placeholder(bool)

  # Batch and length.
  # Global training batch size, summed over all devices of all processes.
  # Must be divisible by the total device count.
  config.batch_size = 1024
  # Global evaluation batch size; the last batch is padded and masked.
  config.eval_batch_size = 1024
  # Number of passes over the training set.
  config.num_epochs = 100
  # Optimiser steps per epoch; None uses num_train // batch_size. Set it to
  # shorten epochs for debugging (the schedule is measured in these epochs).
  config.steps_per_epoch = config_dict.placeholder(int)

  # PowerGrad Transform.
  # PGT exponent in [0, 1]. None or 1.0 trains the baseline with the
  # ordinary cross-entropy gradient.
  config.alpha = config_dict.placeholder(float)
  # How PGT enters the step: 'loss' differentiates
  # pgt_optax.power_grad_softmax_cross_entropy with jax.grad; 'transform'
  # puts pgt_optax.power_grad first in the optax chain and hands it the
  # model's pullback. Both give the same gradients to float32 rounding.
  config.pgt_door = 'loss'
  # Label smoothing of the one-hot targets (0.0 is off).
  config.label_smoothing = 0.0

  # Optimiser: SGD with Nesterov momentum.
  # Peak learning rate at a global batch of learning_rate_batch_size; the
  # peak used is learning_rate * batch_size / learning_rate_batch_size.
  config.learning_rate = 0.4
  # Batch size at which learning_rate applies unscaled.
  config.learning_rate_batch_size = 1024
  # Learning rate at step 0 of the linear warm-up (not scaled by batch).
  config.warmup_init_learning_rate = 4e-4
  # Length of the linear warm-up in epochs (may be fractional).
  config.warmup_epochs = 5.0
  # After the warm-up: 'cosine' decays to 0 at the last step; 'step' keeps
  # the peak and multiplies it by step_decay_factor at each boundary.
  config.schedule = 'cosine'
  # Epochs at which the 'step' schedule multiplies the rate by
  # step_decay_factor.
  config.step_boundaries_epochs = (30, 60, 90)
  # Factor applied at each boundary of the 'step' schedule.
  config.step_decay_factor = 0.1
  # Momentum coefficient of SGD.
  config.momentum = 0.9
  # Use Nesterov momentum.
  config.nesterov = True
  # Weight decay added to the gradient before momentum, as PyTorch's SGD
  # does (optax.add_decayed_weights).
  config.weight_decay = 5e-4
  # Which parameters weight decay applies to: 'all' (every parameter,
  # batch-normalisation scales and biases included, as the paper's PyTorch
  # code does) or 'kernels' (convolution and dense kernels only).
  config.weight_decay_mask = 'all'

  # Gradient clipping (a change to parameter gradients after
  # backpropagation, applied before weight decay and momentum).
  # 'none', 'global_norm' (optax.clip_by_global_norm) or 'agc'
  # (optax.adaptive_grad_clip).
  config.clipping = 'none'
  # Maximum global gradient norm for clipping='global_norm'.
  config.clip_norm = 1.0
  # Maximum ratio of gradient norm to parameter norm for clipping='agc'.
  config.agc_clipping = 0.01
  # Floor on the parameter norm for clipping='agc'.
  config.agc_eps = 1e-3

  # Parallelism.
  # 'pmap' runs the per-device step under jax.pmap; 'shard_map' runs the
  # same function under jax.shard_map over a one-axis device mesh.
  config.parallelism = 'pmap'
  # Use only the first num_devices local devices (single process only);
  # None uses all of them.
  config.num_devices = config_dict.placeholder(int)

  # Analyses.
  # A convolution filter whose L2 norm is below this counts as zeroed out.
  config.filter_norm_threshold = 1e-3
  # A pooled feature whose largest absolute value on the test set is below
  # this counts as dead.
  config.feature_threshold = 1e-6

  # Checkpoints, logging and run control.
  # Seed of parameter initialisation and of the training data order.
  config.seed = 0
  # Save a checkpoint every this many epochs (0 turns it off); the last step
  # is always saved.
  config.checkpoint_every_epochs = 1
  # Also save every this many steps (0 turns it off).
  config.checkpoint_every_steps = 0
  # Number of most recent checkpoints kept on disk.
  config.max_checkpoints_to_keep = 3
  # Evaluate on the test set every this many epochs; the last epoch is
  # always evaluated.
  config.eval_every_epochs = 1
  # End the run after this many steps in total, saving a checkpoint, without
  # changing the schedule (for time-limited jobs); None trains to the end.
  config.stop_at_step = config_dict.placeholder(int)
  # tqdm progress bar on process 0: None shows it only when stderr is a
  # terminal (piped logs get the per-epoch log line and no carriage-return
  # updates), True always, False never.
  config.progress_bar = config_dict.placeholder(bool)

  return config
