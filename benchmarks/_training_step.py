"""Builds and compiles the training step of experiments/train.py for benchmarks.

The step benchmarks compare three variants of one set-up (model, input shape,
batch size), which differ only in how the gradient at the logits is formed:

* ``baseline``: alpha None, ``jax.grad`` of ``optax.softmax_cross_entropy``;
* ``pgt_loss``: the recipe's alpha through the loss door, ``jax.grad`` of
  ``pgt_optax.power_grad_softmax_cross_entropy``;
* ``pgt_transform``: the same alpha through the transform door, ``jax.vjp`` of
  the model and ``pgt_optax.power_grad`` first in the optax chain.

Each variant is ``experiments.train.train_step`` mapped by
``experiments.parallel.DataParallel`` with ``jax.pmap`` over one device and
donated state, as ``train_and_evaluate`` runs it, then lowered and compiled
ahead of time. Two kinds of step are built:

* ``full``: the step as the training program runs it, returning the new state
  and its metrics. With PGT it computes one more metric, ``pgt_loss_sum``
  (a cross-entropy of alpha times the logits), and its gradient needs
  ``exp(alpha * logits)`` besides the ``exp(logits)`` of the reported
  cross-entropy, which the baseline's gradient reuses.
* ``core``: the same function with the metrics dropped from its outputs, so
  XLA removes their computation. It leaves the gradient, the optax chain and
  the parameter update, which is what PGT itself changes. Without a reported
  loss, the baseline and PGT each need one exponential per logit.

All variants of a set-up start from the same parameters and batch
statistics, and every step reads the same synthetic batch (normal images,
uniform labels).
"""

import dataclasses
import functools
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from experiments import parallel
from experiments import train
from experiments.configs import cifar10_resnet20
from experiments.configs import local
from experiments.configs import resnet18_cosine
from experiments.configs import resnet50_cosine

VARIANTS = ("baseline", "pgt_loss", "pgt_transform")
STEP_KINDS = ("full", "core")
DTYPES = ("float32", "bfloat16")
# The PGT exponent for recipes that leave alpha unset. The step's cost does
# not depend on the value.
DEFAULT_PGT_ALPHA = 0.25
# Steps per epoch given to the learning-rate schedule. The schedule's shape
# does not change the cost of a step.
SCHEDULE_STEPS_PER_EPOCH = 1000
# XLA compiler options for every step compiled here. The benchmarks leave it
# empty. The smoke tests, which check that the scripts run and not what they
# measure, lower the backend optimisation level to compile faster.
COMPILER_OPTIONS: dict[str, Any] = {}


@dataclasses.dataclass(frozen=True)
class Setup:
  """A model, input shape and batch size at which the step is benchmarked.

  Attributes:
    name: key in `SETUPS`, used on the command line.
    title: short description for tables.
    get_config: the recipe in experiments/configs that the set-up starts from.
    image_shape: (height, width, channels) of the synthetic images.
    num_classes: number of logits.
    batch_size: examples per step, unless a benchmark overrides it.
  """

  name: str
  title: str
  get_config: Callable[[], ml_collections.ConfigDict]
  image_shape: tuple[int, int, int]
  num_classes: int
  batch_size: int


SETUPS = {
    setup.name: setup for setup in (
        Setup("resnet20", "ResNet-20, 32x32x3, 10 classes",
              cifar10_resnet20.get_config, (32, 32, 3), 10, 128),
        # At batch 16 a float32 step took 2.7 s on a busy 2-core AMD EPYC
        # machine, which left run_all over its 10-minute budget.
        Setup("resnet18_64", "ResNet-18, 64x64x3, 1000 classes",
              resnet18_cosine.get_config, (64, 64, 3), 1000, 8),
        Setup("resnet50_224", "ResNet-50, 224x224x3, 1000 classes",
              resnet50_cosine.get_config, (224, 224, 3), 1000, 256),
        # For tests: 4,934 parameters.
        Setup("tiny", "tiny ResNet, 32x32x1, 10 classes",
              local.get_config, (32, 32, 1), 10, 8),
    )
}


def get_setup(name: str) -> Setup:
  """Returns the set-up `name`, or raises ValueError listing the valid ones."""
  if name not in SETUPS:
    raise ValueError(
        f"Unknown set-up {name!r}. Valid set-ups: {', '.join(SETUPS)}.")
  return SETUPS[name]


def make_config(
    setup: Setup, variant: str, *, dtype: str, batch_size: int
) -> ml_collections.ConfigDict:
  """Returns the recipe of `setup`, changed to train `variant` on one device.

  Args:
    setup: the set-up.
    variant: one of `VARIANTS`.
    dtype: 'float32', or 'bfloat16' for bfloat16 computation on float32
      parameters (the config's `half_precision`).
    batch_size: examples per step.

  Raises:
    ValueError: for an unknown variant or dtype, or a config that
      `experiments.train.validate_config` rejects.
  """
  if variant not in VARIANTS:
    raise ValueError(
        f"Unknown variant {variant!r}. Valid variants: {', '.join(VARIANTS)}.")
  if dtype not in DTYPES:
    raise ValueError(
        f"Unknown dtype {dtype!r}. Valid dtypes: {', '.join(DTYPES)}.")
  config = setup.get_config()
  pgt_alpha = config.alpha
  if not train.pgt_enabled(pgt_alpha):
    pgt_alpha = DEFAULT_PGT_ALPHA
  config.alpha = None if variant == "baseline" else pgt_alpha
  config.pgt_door = "transform" if variant == "pgt_transform" else "loss"
  config.image_size = setup.image_shape[0]
  config.batch_size = batch_size
  config.num_devices = 1
  config.parallelism = "pmap"
  config.half_precision = dtype == "bfloat16"
  train.validate_config(config, num_devices=1, process_count=1)
  return config


def _synthetic_batch(setup: Setup, batch_size: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
      "image": rng.standard_normal(
          (batch_size,) + setup.image_shape, np.float32),
      "label": rng.integers(0, setup.num_classes, batch_size, np.int32),
  }


@functools.lru_cache(maxsize=None)
def _initial_parameters(setup_name: str) -> tuple[Any, Any]:
  """Returns the host (params, batch_stats) shared by every variant.

  Parameters and batch statistics are float32 whatever the computation
  dtype, and their initial values do not depend on it.
  """
  setup = get_setup(setup_name)
  config = make_config(setup, "baseline", dtype="float32",
                       batch_size=setup.batch_size)
  model = train.create_model(config, setup.num_classes)
  learning_rate_fn = train.create_learning_rate_schedule(
      config, SCHEDULE_STEPS_PER_EPOCH)
  state = train.create_train_state(
      config, model, train.create_optimizer(config, learning_rate_fn),
      setup.image_shape)
  return state.params, state.batch_stats


class CompiledStep:
  """One variant of the training step, compiled, with its state and batch.

  Attributes:
    setup: the set-up.
    variant: one of `VARIANTS`.
    kind: one of `STEP_KINDS`.
    dtype: 'float32' or 'bfloat16'.
    batch_size: examples per step.
    config: the configuration the step was built from.
    compiled: the `jax.stages.Compiled` step.
    compile_seconds: wall-clock seconds of lowering and compiling.
  """

  def __init__(self, setup: Setup, variant: str, kind: str, dtype: str,
               batch_size: int):
    if kind not in STEP_KINDS:
      raise ValueError(
          f"Unknown step kind {kind!r}. Valid kinds: {', '.join(STEP_KINDS)}.")
    self.setup = setup
    self.variant = variant
    self.kind = kind
    self.dtype = dtype
    self.batch_size = batch_size
    self.config = make_config(setup, variant, dtype=dtype,
                              batch_size=batch_size)

    # The model, chain and step exactly as train_and_evaluate builds them.
    model = train.create_model(self.config, setup.num_classes)
    learning_rate_fn = train.create_learning_rate_schedule(
        self.config, SCHEDULE_STEPS_PER_EPOCH)
    tx = train.create_optimizer(self.config, learning_rate_fn)
    step_fn = functools.partial(
        train.train_step,
        model=model,
        tx=tx,
        learning_rate_fn=learning_rate_fn,
        num_classes=setup.num_classes,
        alpha=self.config.alpha,
        pgt_door=self.config.pgt_door,
        label_smoothing=self.config.label_smoothing,
        top5=setup.num_classes >= 100,
    )
    if kind == "core":
      full_step_fn = step_fn
      step_fn = lambda state, batch: full_step_fn(state, batch)[0]

    # Same parameters for every variant; the chain's state is the variant's.
    params, batch_stats = _initial_parameters(setup.name)
    host_state = train.TrainState(
        step=np.zeros([], np.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=jax.device_get(tx.init(params)),
        rng=np.asarray(jax.random.key_data(jax.random.key(self.config.seed))),
    )

    self._data_parallel = parallel.DataParallel(
        "pmap", jax.local_devices()[:1])
    self._state = self._data_parallel.replicate(host_state)
    self._batch = self._data_parallel.shard_batch(
        _synthetic_batch(setup, batch_size))
    mapped = self._data_parallel.map(step_fn, donate_state=True)
    start = time.perf_counter()
    self.compiled = mapped.lower(self._state, self._batch).compile(
        compiler_options=dict(COMPILER_OPTIONS) or None)
    self.compile_seconds = time.perf_counter() - start

  def __call__(self) -> Any:
    """Takes one step from the current state and returns the step's output.

    The state is donated to the step and replaced by the new state, as in
    the training loop. Time the call up to `jax.block_until_ready` of the
    result.
    """
    output = self.compiled(self._state, self._batch)
    if self.kind == "full":
      self._state, metrics = output
      return metrics
    self._state = output
    return output

  def memory_analysis(self) -> dict[str, Optional[int]]:
    """Returns XLA's memory analysis of the compiled step, in bytes.

    Keys: 'argument', 'output', 'alias' (output bytes that reuse donated
    argument buffers), 'temp' (XLA's temporary buffers), 'generated_code'
    (None where the backend reports nothing), and 'total': argument + output
    - alias + temp, the memory the step's buffers occupy while it runs.
    """
    stats = self.compiled.memory_analysis()
    sizes = {
        "argument": stats.argument_size_in_bytes,
        "output": stats.output_size_in_bytes,
        "alias": stats.alias_size_in_bytes,
        "temp": stats.temp_size_in_bytes,
    }
    sizes["total"] = (sizes["argument"] + sizes["output"] - sizes["alias"]
                      + sizes["temp"])
    sizes["generated_code"] = getattr(
        stats, "generated_code_size_in_bytes", None)
    return sizes

  def cost_analysis(self) -> dict[str, Optional[float]]:
    """Returns XLA's static cost estimate of the compiled step.

    Keys: 'flops', 'transcendentals' and 'bytes_accessed', each None where
    the backend does not estimate it.
    """
    costs = self.compiled.cost_analysis()
    # Some JAX versions return one dictionary per device program.
    if isinstance(costs, (list, tuple)):
      costs = costs[0] if costs else None
    costs = costs or {}
    return {
        "flops": costs.get("flops"),
        "transcendentals": costs.get("transcendentals"),
        "bytes_accessed": costs.get("bytes accessed"),
    }


def get_step(setup_name: str, variant: str, kind: str, dtype: str,
             batch_size: Optional[int] = None) -> CompiledStep:
  """Returns the compiled step, built once per process for each argument set.

  The benchmark scripts share these steps, so `python -m benchmarks.run_all`
  compiles each one once for the speed, memory and pipeline benchmarks.

  Args:
    setup_name: a key of `SETUPS`.
    variant: one of `VARIANTS`.
    kind: one of `STEP_KINDS`.
    dtype: one of `DTYPES`.
    batch_size: examples per step; None for the set-up's batch size.
  """
  if batch_size is None:
    batch_size = get_setup(setup_name).batch_size
  return _cached_step(setup_name, variant, kind, dtype, batch_size)


@functools.lru_cache(maxsize=None)
def _cached_step(setup_name, variant, kind, dtype, batch_size):
  return CompiledStep(get_setup(setup_name), variant, kind, dtype, batch_size)
