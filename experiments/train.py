"""Data-parallel training and evaluation of ResNets, with or without PGT.

`train_and_evaluate(config, workdir)` runs one experiment end to end. It
checks the configuration and builds the model, the learning-rate schedule
and the optax chain. It restores the newest checkpoint in `workdir` if there
is one, trains with the per-device `train_step` under `jax.pmap` or
`jax.shard_map`, and evaluates on the whole test set. Every epoch it records
the analyses and writes metrics and checkpoints. `experiments/main.py` is its
command line.

PowerGrad Transform (PGT, Das et al., arXiv:2111.12495) keeps the forward
pass and replaces the cross-entropy gradient at the logits, softmax(z) - q,
with softmax(alpha * z) - q. It enters the step through one of the two doors
of pgt_optax, chosen by `config.pgt_door`:

* 'loss': `jax.grad` of the mean of
  `pgt_optax.power_grad_softmax_cross_entropy`, then `lax.pmean` over
  devices, then the optax chain;
* 'transform': `jax.vjp` of the model, then the chain with
  `pgt_optax.power_grad` as its first member, which forms the gradients from
  the logits, labels and pullback and averages them over devices.

With `alpha` None or 1.0 the step trains the baseline with
`optax.softmax_cross_entropy`, whatever the door. The chain is
[power_grad (transform door only)] -> record_gradient_norm -> clipping ->
add_decayed_weights -> sgd with Nesterov momentum.
"""

import collections
import functools
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from experiments import analysis
from experiments import checkpointing
from experiments import input_pipeline
from experiments import metrics as metrics_lib
from experiments import models
from experiments import parallel
from experiments import workdir as workdir_lib
import pgt_optax

AXIS_NAME = parallel.AXIS_NAME
PGT_DOORS = ('loss', 'transform')
SCHEDULES = ('cosine', 'step')
CLIPPINGS = ('none', 'global_norm', 'agc')
WEIGHT_DECAY_MASKS = ('all', 'kernels')
CHECKPOINT_DIRNAME = 'checkpoints'


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint needs to continue a run exactly.

  Attributes:
    step: number of optimiser steps taken, an int32 scalar.
    params: the model's 'params' collection.
    batch_stats: the model's 'batch_stats' collection ({} without batch
      normalisation).
    opt_state: state of the optax chain.
    rng: raw uint32 data of the run's random key. Each step folds in the step
      number and the device index and passes the result to the model as its
      'dropout' stream. The ResNets here draw nothing from it.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def pgt_enabled(alpha: Optional[float]) -> bool:
  """Returns whether `alpha` turns PGT on (None and 1.0 are the baseline)."""
  return alpha is not None and float(alpha) != 1.0


# ---------------------------------------------------------------------------
# Configuration checks.


class ConfigError(ValueError):
  """The configuration is invalid for these devices or this dataset."""


# Errors that mean the configuration, the work directory or the dataset must
# change. The first three are raised before training starts, and a bad label
# before the batch that contains it is trained on. The command lines print
# their message without a traceback.
USAGE_ERRORS = (ConfigError, checkpointing.ConfigMismatchError,
                workdir_lib.WorkdirError, input_pipeline.LabelError)


class TrainingInterrupted(Exception):
  """Exception for a run that SIGINT or SIGTERM stopped after a checkpoint.

  Attributes:
    signal_number: the signal that stopped the run.
  """

  def __init__(self, message: str, signal_number: int):
    super().__init__(message)
    self.signal_number = signal_number


class _StopRequest:
  """Turns SIGINT (Ctrl-C) and SIGTERM into a stop after the current step.

  The training loop reads `signal_number`, saves a checkpoint and returns,
  so the run resumes from where it stopped. A second signal acts at once
  with the handler that was there before (SIGINT raises KeyboardInterrupt).

  NOTE: handlers are installed only in a single-process run, from the main
  thread. On several hosts every process would have to stop at the same
  step, which this does not coordinate, so there the signals keep their
  usual effect and a run resumes from its last scheduled checkpoint.
  """

  def __init__(self):
    self.signal_number: Optional[int] = None
    self._previous = {}

  def __enter__(self) -> '_StopRequest':
    if (jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      for number in (signal.SIGINT, signal.SIGTERM):
        self._previous[number] = signal.signal(number, self._handle)
    return self

  def _handle(self, number: int, frame: Any) -> None:
    del frame  # Unused.
    self.signal_number = number
    self._restore()
    logging.warning(
        'Received %s: stopping after the current step with a checkpoint. '
        'Send it again to stop at once without one.',
        signal.Signals(number).name)

  def _restore(self) -> None:
    for number, previous in self._previous.items():
      signal.signal(number, previous)
    self._previous = {}

  def __exit__(self, *exc_info) -> None:
    self._restore()


class RunPlan(NamedTuple):
  """Sizes that `plan_run` derives from a valid configuration.

  Attributes:
    devices: the local devices named by `num_devices`, or None for all.
    num_devices: devices of all processes that share the batch.
    dataset_info: class count, input shape and split sizes of the dataset.
    steps_per_epoch: optimiser steps per epoch.
  """

  devices: Optional[list[Any]]
  num_devices: int
  dataset_info: input_pipeline.DatasetInfo
  steps_per_epoch: int


def _check_choice(config, name: str, choices) -> None:
  value = config[name]
  if value not in choices:
    raise ConfigError(
        f'Unknown {name} {value!r}. Valid values: '
        f'{", ".join(map(str, choices))}. Set it with --config.{name}=VALUE.'
    )


def _check_divisible(name: str, value: int, num_devices: int,
                     process_count: int) -> None:
  if value <= 0 or value % num_devices:
    lower = max(num_devices, value // num_devices * num_devices)
    raise ConfigError(
        f'{name} {value} is not a positive multiple of the {num_devices} '
        f'devices ({num_devices // process_count} per process x '
        f'{process_count} processes), so it cannot be split evenly. Use a '
        f'multiple of {num_devices}, such as {lower} or '
        f'{lower + num_devices}.'
    )


def validate_config(
    config: ml_collections.ConfigDict, *, num_devices: int, process_count: int
) -> None:
  """Raises ConfigError, naming the field and the fix, for an invalid config.

  Args:
    config: the run's configuration.
    num_devices: devices of all processes that share the batch.
    process_count: number of processes in the run.
  """
  _check_choice(config, 'model', models.MODEL_NAMES)
  _check_choice(config, 'dataset', input_pipeline.DATASET_NAMES)
  _check_choice(config, 'norm', models.NORMS)
  _check_choice(config, 'pgt_door', PGT_DOORS)
  _check_choice(config, 'parallelism', parallel.PARALLELISMS)
  _check_choice(config, 'schedule', SCHEDULES)
  _check_choice(config, 'clipping', CLIPPINGS)
  _check_choice(config, 'weight_decay_mask', WEIGHT_DECAY_MASKS)

  alpha = config.alpha
  if alpha is not None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
      raise ConfigError(
          f'alpha must be a number in [0, 1] or None, got {alpha!r}.')
    if not 0.0 <= alpha <= 1.0:
      raise ConfigError(
          f'alpha must lie in [0, 1], got {alpha}. Use a value such as 0.25 '
          'for PGT, or 1.0 for the baseline.'
      )

  if config.num_devices is not None and process_count > 1:
    raise ConfigError(
        f'num_devices={config.num_devices} selects devices of a single '
        f'process, but this run has {process_count} processes. Leave '
        'num_devices unset on several hosts.'
    )
  _check_divisible('batch_size', config.batch_size, num_devices, process_count)
  _check_divisible('eval_batch_size', config.eval_batch_size, num_devices,
                   process_count)

  if config.num_epochs < 1:
    raise ConfigError(
        f'num_epochs must be at least 1, got {config.num_epochs}.')
  if config.steps_per_epoch is not None and config.steps_per_epoch < 1:
    raise ConfigError(
        f'steps_per_epoch must be at least 1 or None, got '
        f'{config.steps_per_epoch}.'
    )
  if not 0 <= config.warmup_epochs < config.num_epochs:
    raise ConfigError(
        f'warmup_epochs must lie in [0, num_epochs={config.num_epochs}), got '
        f'{config.warmup_epochs}.'
    )
  if config.schedule == 'step':
    boundaries = list(config.step_boundaries_epochs)
    if boundaries != sorted(boundaries) or any(
        b <= config.warmup_epochs for b in boundaries):
      raise ConfigError(
          'step_boundaries_epochs must increase and lie after the warm-up of '
          f'{config.warmup_epochs} epochs, got {tuple(boundaries)}.'
      )
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ConfigError(
        f'label_smoothing must lie in [0, 1), got {config.label_smoothing}.')
  if config.weight_decay < 0:
    raise ConfigError(
        f'weight_decay must be non-negative, got {config.weight_decay}.')
  if config.clipping == 'global_norm' and not config.clip_norm > 0:
    raise ConfigError(
        f'clip_norm must be positive for clipping=global_norm, got '
        f'{config.clip_norm}.'
    )
  if config.clipping == 'agc' and not config.agc_clipping > 0:
    raise ConfigError(
        f'agc_clipping must be positive for clipping=agc, got '
        f'{config.agc_clipping}.'
    )
  if config.stop_at_step is not None and config.stop_at_step < 1:
    raise ConfigError(
        f'stop_at_step must be at least 1 or None, got {config.stop_at_step}.')
  if not config.learning_rate > 0:
    raise ConfigError(
        f'learning_rate must be positive, got {config.learning_rate}. It is '
        'the peak rate at learning_rate_batch_size examples per batch.')
  if config.learning_rate_batch_size <= 0:
    raise ConfigError(
        'learning_rate_batch_size must be positive, got '
        f'{config.learning_rate_batch_size}.')
  if not isinstance(config.seed, int) or config.seed < 0:
    raise ConfigError(
        f'seed must be a non-negative integer, got {config.seed!r}.')
  # Checked here, because the loop would otherwise fail or misbehave only at
  # the end of the first epoch.
  if config.eval_every_epochs < 1:
    raise ConfigError(
        'eval_every_epochs must be at least 1 (the last epoch is always '
        f'evaluated), got {config.eval_every_epochs}.')
  for name in ('checkpoint_every_epochs', 'checkpoint_every_steps'):
    if config[name] < 0:
      raise ConfigError(
          f'{name} must be 0 (off) or positive, got {config[name]}.')
  if config.max_checkpoints_to_keep < 1:
    raise ConfigError(
        'max_checkpoints_to_keep must be at least 1, got '
        f'{config.max_checkpoints_to_keep}.')


def select_devices(config: ml_collections.ConfigDict) -> Optional[list[Any]]:
  """Returns the devices named by `config.num_devices`, or None for all."""
  if config.num_devices is None:
    return None
  available = jax.local_devices()
  if not 1 <= config.num_devices <= len(available):
    raise ConfigError(
        f'num_devices={config.num_devices}, but this process has '
        f'{len(available)} devices. Use a value from 1 to {len(available)}, '
        'or leave it unset to use all.'
    )
  return available[:config.num_devices]


def compute_steps_per_epoch(
    config: ml_collections.ConfigDict, num_train: int
) -> int:
  """Returns the optimiser steps per epoch (whole batches of training data)."""
  # Also with steps_per_epoch set, because every batch comes from one pass
  # over the training set.
  if config.batch_size > num_train:
    raise ConfigError(
        f'batch_size {config.batch_size} is larger than the training set of '
        f'{num_train} examples. Use a smaller batch_size.'
    )
  if config.steps_per_epoch is not None:
    return config.steps_per_epoch
  return num_train // config.batch_size


def plan_run(config: ml_collections.ConfigDict) -> RunPlan:
  """Checks a configuration completely, before anything is built or written.

  Runs every check that `train_and_evaluate` makes before training: the
  fields (`validate_config`), the devices, the dataset and its image size,
  and the steps per epoch.

  Args:
    config: the run's configuration.

  Returns:
    The devices, dataset information and steps per epoch of the run.

  Raises:
    ConfigError: naming the field and the fix, also for a dataset that is
      not prepared in `data_dir`.
  """
  devices = select_devices(config)
  num_devices = len(devices) if devices is not None else jax.device_count()
  validate_config(config, num_devices=num_devices,
                  process_count=jax.process_count())
  try:
    dataset_info = input_pipeline.get_dataset_info(
        config.dataset, data_dir=config.data_dir,
        image_size=config.image_size)
  except (ValueError, FileNotFoundError) as error:
    raise ConfigError(str(error)) from error
  steps_per_epoch = compute_steps_per_epoch(config, dataset_info.num_train)
  return RunPlan(devices, num_devices, dataset_info, steps_per_epoch)


def progress_bar_enabled(
    setting: Optional[bool], *, is_main_process: bool, stream: Any = None
) -> bool:
  """Returns whether to show the tqdm progress bar.

  Args:
    setting: `config.progress_bar`: True shows the bar, False hides it, and
      None shows it only when `stream` is a terminal, so that logs piped to
      a file get no carriage-return updates.
    is_main_process: whether this is process 0. Other processes never show
      it.
    stream: where the bar is drawn, or None for `sys.stderr` (tqdm's
      default).
  """
  if not is_main_process or setting is False:
    return False
  if setting:
    return True
  stream = sys.stderr if stream is None else stream
  isatty = getattr(stream, 'isatty', None)
  return bool(isatty is not None and isatty())


# ---------------------------------------------------------------------------
# Model, schedule and optimiser.


def create_model(
    config: ml_collections.ConfigDict, num_classes: int
) -> models.ResNet:
  """Creates the configured ResNet with batch statistics synced over devices."""
  return models.create_model(
      config.model,
      num_classes,
      norm=config.norm,
      axis_name=AXIS_NAME,
      zero_init_residual=config.zero_init_residual,
      dtype=jnp.bfloat16 if config.half_precision else jnp.float32,
  )


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """Returns the peak rate, scaled linearly with the global batch size."""
  return (config.learning_rate * config.batch_size
          / config.learning_rate_batch_size)


def create_learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """Creates the linear warm-up followed by cosine decay or steps.

  Args:
    config: the run's configuration.
    steps_per_epoch: optimiser steps per epoch.

  Returns:
    A schedule from step to learning rate: linear from
    `warmup_init_learning_rate` to the peak over `warmup_epochs`, then
    cosine decay to 0 at the last step, or the peak multiplied by
    `step_decay_factor` at each of `step_boundaries_epochs`.
  """
  peak = peak_learning_rate(config)
  warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
  total_steps = config.num_epochs * steps_per_epoch
  if config.schedule == 'cosine':
    after_warmup = optax.cosine_decay_schedule(
        peak, decay_steps=max(total_steps - warmup_steps, 1))
  else:
    # join_schedules counts steps from the end of the warm-up.
    boundaries = {
        int(round(epoch * steps_per_epoch)) - warmup_steps:
            config.step_decay_factor
        for epoch in config.step_boundaries_epochs
    }
    after_warmup = optax.piecewise_constant_schedule(peak, boundaries)
  if warmup_steps == 0:
    return after_warmup
  warmup = optax.linear_schedule(
      config.warmup_init_learning_rate, peak, transition_steps=warmup_steps)
  return optax.join_schedules([warmup, after_warmup], [warmup_steps])


class RecordGradientNormState(NamedTuple):
  """State of `record_gradient_norm`: the last global norm it saw."""

  gradient_norm: jax.Array


def record_gradient_norm() -> optax.GradientTransformation:
  """Stores the global norm of the incoming gradients, which pass unchanged.

  Placed after the member that forms the gradients (power_grad, or the start
  of the chain), it exposes the norm of the gradients before clipping for
  both PGT doors: read it with
  `optax.tree.get(opt_state, 'gradient_norm')`.
  """

  def init_fn(params):
    del params
    return RecordGradientNormState(jnp.zeros([], jnp.float32))

  def update_fn(updates, state, params=None):
    del state, params
    norm = optax.tree.norm(updates).astype(jnp.float32)
    return updates, RecordGradientNormState(norm)

  return optax.GradientTransformation(init_fn, update_fn)


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformationExtraArgs:
  """Creates the optax chain of the paper's recipe.

  Args:
    config: the run's configuration.
    learning_rate_fn: schedule from step to learning rate.

  Returns:
    `optax.chain` of, in order: `pgt_optax.power_grad(alpha, axis_name)` when
    PGT uses the transform door; `record_gradient_norm()`; the configured
    clipping; `optax.add_decayed_weights` (masked to kernels with
    weight_decay_mask='kernels'); and `optax.sgd` with Nesterov momentum.
    With the transform door, call its `update` with `updates=None` and the
    keywords `logits`, `labels` and `pullback`.
  """
  members = []
  if pgt_enabled(config.alpha) and config.pgt_door == 'transform':
    members.append(pgt_optax.power_grad(config.alpha, axis_name=AXIS_NAME))
  members.append(record_gradient_norm())
  if config.clipping == 'global_norm':
    members.append(optax.clip_by_global_norm(config.clip_norm))
  elif config.clipping == 'agc':
    members.append(
        optax.adaptive_grad_clip(config.agc_clipping, eps=config.agc_eps))
  if config.weight_decay_mask == 'kernels':
    # Convolution and dense kernels are the only parameters of rank > 1.
    mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  else:
    mask = None
  members.append(optax.add_decayed_weights(config.weight_decay, mask=mask))
  members.append(
      optax.sgd(
          learning_rate_fn,
          momentum=config.momentum,
          nesterov=config.nesterov,
      ))
  return optax.chain(*members)


def create_train_state(
    config: ml_collections.ConfigDict,
    model: models.ResNet,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, int, int],
) -> TrainState:
  """Initialises parameters, batch statistics and optimiser state on the host.

  Returns:
    A `TrainState` of NumPy arrays, the same on every process for the same
    `config.seed`.
  """
  images = jnp.zeros((1,) + tuple(image_shape), jnp.float32)

  def init(key):
    init_key, run_key = jax.random.split(key)
    variables = model.init(init_key, images, train=False)
    params = variables['params']
    return TrainState(
        step=jnp.zeros([], jnp.int32),
        params=params,
        batch_stats=variables.get('batch_stats', {}),
        opt_state=tx.init(params),
        rng=jax.random.key_data(run_key),
    )

  # With JAX 0.10's default, partitionable threefry, XLA's CPU compiler
  # took seconds for every random initialiser: 60 s for the tiny test ResNet
  # on a busy 2-core machine, against 10 s with the classic form. Threefry's
  # output does not depend on the platform in either form, but the two forms
  # give different parameters for the same seed.
  with jax.threefry_partitionable(False):
    state = jax.jit(init)(jax.random.key(config.seed))
  return jax.device_get(state)


# ---------------------------------------------------------------------------
# Per-device steps. Each receives one device's slice of the batch and reduces
# across devices only with collectives over AXIS_NAME.


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: models.ResNet,
    tx: optax.GradientTransformationExtraArgs,
    learning_rate_fn: optax.Schedule,
    num_classes: int,
    alpha: Optional[float],
    pgt_door: str,
    label_smoothing: float,
    top5: bool,
) -> tuple[TrainState, dict[str, dict[str, jax.Array]]]:
  """Takes one optimiser step on one device's slice of the global batch.

  Args:
    state: the replicated training state.
    batch: 'image' float32 [per-device batch, H, W, C] and 'label' int32
      [per-device batch].
    model: the ResNet, with batch statistics averaged over AXIS_NAME.
    tx: the chain from `create_optimizer` for the same alpha and door.
    learning_rate_fn: the chain's schedule, for the metrics.
    num_classes: number of classes.
    alpha: PGT exponent, or None for the baseline.
    pgt_door: 'loss' or 'transform'.
    label_smoothing: smoothing of the one-hot targets.
    top5: also count top-5 correct predictions.

  Returns:
    The new state and `{'sums': ..., 'norms': ...}`: sums over the global
    batch (see `metrics.prediction_sums`, plus 'cross_entropy_sum' against the
    labels, 'loss_sum' against the smoothed targets and, with PGT at
    alpha > 0, 'pgt_loss_sum' of (1 / alpha) * CE(alpha * logits, targets))
    and the global norms of gradients, parameters and updates with the
    learning rate.
  """
  images, labels = batch['image'], batch['label']
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)

  # Different random streams on every device and at every step.
  step_key = jax.random.fold_in(
      jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step),
      jax.lax.axis_index(AXIS_NAME))

  def forward(params):
    logits, model_updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats},
        images,
        train=True,
        mutable=['batch_stats'],
        rngs={'dropout': step_key},
    )
    return logits.astype(jnp.float32), model_updates

  if pgt_enabled(alpha) and pgt_door == 'transform':
    logits, pullback, model_updates = jax.vjp(
        forward, state.params, has_aux=True)
    updates, opt_state = tx.update(
        None, state.opt_state, state.params,
        logits=logits, labels=targets, pullback=pullback)
  else:
    if pgt_enabled(alpha):
      loss_fn = functools.partial(
          pgt_optax.power_grad_softmax_cross_entropy, alpha=alpha)
    else:
      loss_fn = optax.softmax_cross_entropy

    def mean_loss(params):
      logits, model_updates = forward(params)
      return jnp.mean(loss_fn(logits, targets)), (logits, model_updates)

    grads, (logits, model_updates) = jax.grad(mean_loss, has_aux=True)(
        state.params)
    grads = jax.lax.pmean(grads, AXIS_NAME)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)

  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=model_updates.get('batch_stats', state.batch_stats),
      opt_state=opt_state,
  )

  mask = jnp.ones(labels.shape, bool)
  sums = metrics_lib.prediction_sums(logits, labels, mask, top5=top5)
  sums['cross_entropy_sum'] = jnp.sum(
      optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  sums['loss_sum'] = jnp.sum(optax.softmax_cross_entropy(logits, targets))
  if pgt_enabled(alpha) and alpha > 0:
    # The objective whose exact gradient PGT follows: a temperature-scaled
    # cross-entropy, (1 / alpha) * CE(alpha * logits, targets).
    sums['pgt_loss_sum'] = jnp.sum(
        optax.softmax_cross_entropy(alpha * logits, targets)) / alpha
  norms = {
      'gradient_norm': optax.tree.get(opt_state, 'gradient_norm'),
      'param_norm': optax.tree.norm(params),
      'update_norm': optax.tree.norm(updates),
      'learning_rate': jnp.asarray(learning_rate_fn(state.step), jnp.float32),
  }
  return new_state, {
      'sums': metrics_lib.reduce_across_devices(sums, AXIS_NAME),
      'norms': norms,
  }


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: models.ResNet,
    top5: bool,
) -> dict[str, jax.Array]:
  """Sums test metrics over the unmasked examples of the global batch.

  Args:
    state: the replicated training state.
    batch: 'image', 'label' and 'mask' (False for padding) of one device.
    model: the ResNet.
    top5: also count top-5 correct predictions.

  Returns:
    Sums over the global batch (see `metrics.prediction_sums`, plus
    'cross_entropy_sum'), and 'feature_abs_max': the largest absolute value
    of each pooled feature over the unmasked examples.
  """
  images, labels, mask = batch['image'], batch['label'], batch['mask']
  logits, features = model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats},
      images, train=False, return_features=True)
  logits = logits.astype(jnp.float32)
  sums = metrics_lib.prediction_sums(logits, labels, mask, top5=top5)
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
      logits, labels)
  sums['cross_entropy_sum'] = jnp.sum(jnp.where(mask, cross_entropy, 0.0))
  sums['feature_abs_max'] = jnp.max(
      jnp.where(mask[:, None], jnp.abs(features.astype(jnp.float32)), 0.0),
      axis=0)
  return metrics_lib.reduce_across_devices(sums, AXIS_NAME)


# ---------------------------------------------------------------------------
# Loops.


def _prefetch(iterable: Iterable[Any], size: int) -> Iterator[Any]:
  """Keeps `size` items ahead, so host-to-device copies overlap the steps."""
  queue = collections.deque()
  iterator = iter(iterable)
  for item in iterator:
    queue.append(item)
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _checked_batches(
    batches: Iterable[dict[str, np.ndarray]],
    *,
    num_classes: int,
    batch_size: int,
    image_shape: tuple[int, ...],
) -> Iterator[dict[str, np.ndarray]]:
  """Checks the labels and shapes of every host batch before it is used."""
  for batch in batches:
    labels = np.asarray(batch['label'])
    if 'mask' in batch:
      labels = labels[np.asarray(batch['mask'], bool)]
    input_pipeline.check_labels(labels, num_classes)
    expected = (batch_size,) + tuple(image_shape)
    if tuple(batch['image'].shape) != expected:
      raise ValueError(
          f'The input pipeline produced images of shape '
          f'{tuple(batch["image"].shape)}, but the run expects {expected} '
          '(per-process batch, height, width, channels).'
      )
    yield batch


def evaluate(
    p_eval_step: Callable[[Any, Any], Any],
    device_state: Any,
    data_parallel: parallel.DataParallel,
    config: ml_collections.ConfigDict,
    dataset_info: input_pipeline.DatasetInfo,
) -> dict[str, np.ndarray]:
  """Runs one pass over the test set and returns the summed metrics.

  Every process reads its own share in padded, masked batches; the sums are
  reduced over all devices, so each test example counts exactly once.

  Returns:
    Host totals of `eval_step`'s outputs; 'count' is the number of test
    examples.
  """
  per_process_batch = config.eval_batch_size // jax.process_count()
  batches = input_pipeline.eval_batches(
      config.dataset,
      batch_size=per_process_batch,
      data_dir=config.data_dir,
      image_size=config.image_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )
  batches = _checked_batches(
      batches,
      num_classes=dataset_info.num_classes,
      batch_size=per_process_batch,
      image_shape=dataset_info.image_shape,
  )
  outputs = [
      p_eval_step(device_state, data_parallel.shard_batch(batch))
      for batch in _prefetch(batches, 2)
  ]
  totals = None
  for output in outputs:
    totals = metrics_lib.accumulate(totals, data_parallel.unreplicate(output))
  if totals is None:
    raise ValueError(f'The test set of {config.dataset} produced no batches.')
  return totals


def _device_train_batches(
    config: ml_collections.ConfigDict,
    dataset_info: input_pipeline.DatasetInfo,
    data_parallel: parallel.DataParallel,
    start_step: int,
) -> Iterator[Any]:
  """Yields this process's checked training batches, placed on its devices."""
  per_process_batch = config.batch_size // jax.process_count()
  batches = input_pipeline.train_batches(
      config.dataset,
      batch_size=per_process_batch,
      seed=config.seed,
      start_step=start_step,
      data_dir=config.data_dir,
      image_size=config.image_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      augment=config.augment,
  )
  batches = _checked_batches(
      batches,
      num_classes=dataset_info.num_classes,
      batch_size=per_process_batch,
      image_shape=dataset_info.image_shape,
  )
  return _prefetch(map(data_parallel.shard_batch, batches), 2)


def _summarize_train_steps(
    host_outputs: list[dict[str, dict[str, np.ndarray]]], num_classes: int
) -> dict[str, float]:
  """Turns the host outputs of an epoch's `train_step` calls into scalars.

  Prediction sums become accuracies, cross-entropies and logit statistics;
  norms are averaged over the steps; the learning rate is the last step's.
  """
  totals = norm_totals = None
  for output in host_outputs:
    totals = metrics_lib.accumulate(totals, output['sums'])
    norm_totals = metrics_lib.accumulate(norm_totals, output['norms'])
  scalars = metrics_lib.summarize_predictions(totals, num_classes, 'train')
  scalars.update({
      name: float(value) / len(host_outputs)
      for name, value in norm_totals.items()
  })
  scalars['learning_rate'] = float(
      host_outputs[-1]['norms']['learning_rate'])
  return scalars


def _discard_later_records(
    workdir: str, start_step: int, steps_per_epoch: int
) -> None:
  """Removes the records of steps after `start_step` and logs what went."""
  removed = workdir_lib.discard_records_after(
      workdir, start_step, steps_per_epoch)
  if any(removed.values()):
    logging.info(
        'Removed the records written after step %d in %s, which this run '
        'writes again: %d lines of %s, %d TensorBoard events, %d filter-norm '
        'files.', start_step, workdir, removed['metrics'],
        metrics_lib.METRICS_FILENAME, removed['events'],
        removed['filter_norms'])


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> TrainState:
  """Trains and evaluates one configuration, resuming from `workdir`.

  Writes `workdir/config.json`, `workdir/metrics.jsonl` and TensorBoard
  events (process 0), per-epoch filter norms in `workdir/filter_norms/` and
  orbax checkpoints in `workdir/checkpoints/`. Each epoch's records are
  written before its checkpoint, and a resumed run first removes the
  records of steps after its checkpoint, so every epoch is recorded once
  (see experiments/workdir.py).

  Args:
    config: the configuration, as in experiments/configs/default.py.
    workdir: directory of this run. An existing checkpoint there is resumed
      when it was written under the same configuration. Without a
      checkpoint, records of the same configuration are replaced and those
      of another configuration are rejected.

  Returns:
    The final training state, as host NumPy arrays.

  Raises:
    ConfigError: for an invalid configuration.
    checkpointing.ConfigMismatchError: for a checkpoint or records in
      `workdir` written under a different configuration.
    workdir_lib.WorkdirError: when `workdir` is a file or another run is
      training in it.
    input_pipeline.LabelError: for labels outside the class range.
    TrainingInterrupted: when SIGINT or SIGTERM stopped the run, after a
      checkpoint of the step it reached.
  """
  workdir = os.path.abspath(workdir)
  # Check the configuration before anything is built or written.
  plan = plan_run(config)
  with workdir_lib.exclusive_use(
      workdir, enabled=jax.process_index() == 0), _StopRequest() as stop:
    return _train_and_evaluate(config, workdir, plan, stop)


def _train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    plan: RunPlan,
    stop: _StopRequest,
) -> TrainState:
  """Runs `train_and_evaluate` once the work directory is locked for it."""
  is_main_process = jax.process_index() == 0
  devices, num_devices, dataset_info, steps_per_epoch = plan

  # Check that the work directory contains no records of another run.
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, CHECKPOINT_DIRNAME), config,
      max_to_keep=config.max_checkpoints_to_keep)
  if checkpointer.latest_step() is None and workdir_lib.check_fresh_start(
      workdir, config):
    logging.info(
        '%s contains records of this configuration but no checkpoint: the '
        'run restarts from step 0 and replaces them.', workdir)
  total_steps = config.num_epochs * steps_per_epoch
  num_classes = dataset_info.num_classes
  top5 = num_classes >= 100
  logging.info(
      'Training %s on %s (%d classes, %d training examples) for %d epochs of '
      '%d steps, global batch %d on %d devices with %s, alpha=%s (%s door).',
      config.model, config.dataset, num_classes, dataset_info.num_train,
      config.num_epochs, steps_per_epoch, config.batch_size, num_devices,
      config.parallelism, config.alpha, config.pgt_door)
  # Build the model, the optimiser and the initial state.
  model = create_model(config, num_classes)
  learning_rate_fn = create_learning_rate_schedule(config, steps_per_epoch)
  tx = create_optimizer(config, learning_rate_fn)
  state = create_train_state(config, model, tx, dataset_info.image_shape)
  num_params = sum(int(np.size(p)) for p in jax.tree.leaves(state.params))
  logging.info('The model has %d parameters.', num_params)

  # Resume from the newest checkpoint, if any, and remove the records of
  # later steps, which this run writes again.
  restored = checkpointer.restore_latest(state)
  if restored is not None:
    state = restored
  start_step = int(state.step)
  last_saved_step = start_step if restored is not None else None
  if is_main_process:
    _discard_later_records(workdir, start_step, steps_per_epoch)
  filter_history = analysis.load_filter_norm_history(
      workdir, up_to_epoch=start_step // steps_per_epoch)
  # Written only now, so a rejected resume leaves the earlier run's copy.
  metrics_lib.write_config(workdir, config, enabled=is_main_process)

  # Map the per-device steps over the devices.
  data_parallel = parallel.DataParallel(config.parallelism, devices)
  p_train_step = data_parallel.map(
      functools.partial(
          train_step,
          model=model,
          tx=tx,
          learning_rate_fn=learning_rate_fn,
          num_classes=num_classes,
          alpha=config.alpha,
          pgt_door=config.pgt_door,
          label_smoothing=config.label_smoothing,
          top5=top5,
      ),
      donate_state=True,
  )
  p_eval_step = data_parallel.map(
      functools.partial(eval_step, model=model, top5=top5))
  device_state = data_parallel.replicate(state)

  train_iterator = _device_train_batches(
      config, dataset_info, data_parallel, start_step)

  writer = metrics_lib.MetricWriter(workdir, enabled=is_main_process)
  show_progress = progress_bar_enabled(
      config.progress_bar, is_main_process=is_main_process)
  stop_step = total_steps
  if config.stop_at_step is not None:
    stop_step = min(stop_step, config.stop_at_step)
  if start_step >= stop_step:
    logging.info('Nothing to train: the run is at step %d of %d.',
                 start_step, stop_step)

  def save_checkpoint(step: int) -> None:
    nonlocal last_saved_step
    if step != last_saved_step:
      checkpointer.save(step, data_parallel.unreplicate(device_state))
      last_saved_step = step

  step = start_step
  while step < stop_step:
    epoch = step // steps_per_epoch + 1
    epoch_end = min(epoch * steps_per_epoch, stop_step)

    # Train until the end of the epoch (or stop_at_step).
    progress = tqdm.tqdm(
        total=epoch_end - step,
        desc=f'epoch {epoch}/{config.num_epochs}',
        unit='step',
        disable=not show_progress,
        leave=False,
    )
    step_outputs = []
    epoch_start = time.perf_counter()
    timed_from, timed_steps = epoch_start, 0
    while step < epoch_end:
      device_state, output = p_train_step(device_state, next(train_iterator))
      step_outputs.append(output)
      step += 1
      progress.update()
      if len(step_outputs) == 1:
        # Leave compilation out of the throughput.
        jax.block_until_ready(output)
        timed_from = time.perf_counter()
      else:
        timed_steps += 1
      # At the end of an epoch the checkpoint waits for the epoch's records.
      if (config.checkpoint_every_steps
          and step % config.checkpoint_every_steps == 0
          and step % steps_per_epoch):
        save_checkpoint(step)
      if stop.signal_number is not None:
        break
    jax.block_until_ready(step_outputs[-1])
    train_end = time.perf_counter()
    train_seconds = train_end - epoch_start
    progress.close()

    if step % steps_per_epoch:
      # stop_at_step or a signal ended the run inside an epoch: keep only the
      # checkpoint.
      break

    # Summarise the epoch. NOTE: after a resume inside an epoch, its training
    # metrics cover only the steps run since the resume.
    scalars = {'epoch': epoch}
    scalars.update(_summarize_train_steps(
        [data_parallel.unreplicate(output) for output in step_outputs],
        num_classes))
    scalars['train_seconds'] = train_seconds
    if timed_steps:
      scalars['images_per_second'] = (
          timed_steps * config.batch_size / (train_end - timed_from))
    if not math.isfinite(scalars['train_cross_entropy']):
      writer.write(step, scalars)
      raise FloatingPointError(
          f'The training cross-entropy of epoch {epoch} is '
          f'{scalars["train_cross_entropy"]}. Lower learning_rate, or turn '
          'on clipping.'
      )

    # Evaluate on the whole test set.
    if epoch % config.eval_every_epochs == 0 or step == total_steps:
      eval_totals = evaluate(p_eval_step, device_state, data_parallel, config,
                             dataset_info)
      scalars.update(
          metrics_lib.summarize_predictions(eval_totals, num_classes, 'test'))
      scalars['dead_features'] = analysis.count_dead_features(
          eval_totals['feature_abs_max'], config.feature_threshold)

    # Record filter norms and the zeroed-out filters.
    norms = analysis.filter_norms(
        data_parallel.unreplicate(device_state.params))
    filter_history.append(norms)
    if is_main_process:
      analysis.save_filter_norms(workdir, epoch, norms)
    scalars.update(
        analysis.filter_summary(filter_history, config.filter_norm_threshold))

    writer.write(step, scalars)
    logging.info('Epoch %d: %s', epoch, metrics_lib.format_summary(scalars, (
        'train_cross_entropy', 'train_top1', 'test_cross_entropy',
        'test_top1', 'test_top5', 'train_logit_norm', 'learning_rate',
        'images_per_second')))

    # Saved after the epoch's records: a crash in between leaves records
    # ahead of the newest checkpoint, which the resume removes, never a
    # checkpoint whose epoch has no record.
    if (config.checkpoint_every_epochs
        and epoch % config.checkpoint_every_epochs == 0) or (
            config.checkpoint_every_steps
            and step % config.checkpoint_every_steps == 0):
      save_checkpoint(step)
    if stop.signal_number is not None:
      break

  if step > start_step:
    save_checkpoint(step)
  checkpointer.close()
  writer.close()
  if stop.signal_number is not None and step < stop_step:
    raise TrainingInterrupted(
        f'Stopped by {signal.Signals(stop.signal_number).name} at step {step} '
        f'of {stop_step}, with a checkpoint of that step in '
        f'{checkpointer.directory}.', stop.signal_number)
  return data_parallel.unreplicate(device_state)
