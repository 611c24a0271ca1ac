"""Cross-entropy losses whose logit gradient is the PowerGrad Transform.

The forward value of every loss here is the ordinary softmax cross-entropy.
Only the derivative with respect to the logits changes: where plain
cross-entropy has ``softmax(z) - q``, these losses have
``softmax(alpha * z) - q``. Because ``p**alpha / sum(p**alpha)`` equals
``softmax(alpha * z)`` exactly, the transformed probabilities are computed from
the logits, never from ``p``.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_SymbolicZero = jax.custom_derivatives.SymbolicZero
_LOW_PRECISION = (jnp.bfloat16, jnp.float16)


def check_alpha(alpha) -> Array:
  """Validates ``alpha`` and returns it as a floating scalar array.

  A concrete value outside ``[0, 1]`` or NaN raises ``ValueError``. A traced
  value (under ``jit`` or ``vmap``) cannot be inspected, so a traced value
  outside ``[0, 1]`` is replaced by NaN, which makes every gradient computed
  with it NaN instead of silently wrong.
  """
  if isinstance(alpha, jax.core.Tracer):
    alpha = jnp.asarray(alpha)
    if not jnp.issubdtype(alpha.dtype, jnp.floating):
      alpha = alpha.astype(jnp.float32)
    if alpha.ndim != 0:
      raise ValueError(
          f"alpha must be a scalar, got an array of shape {alpha.shape}; "
          "use jax.vmap over the loss to evaluate several values of alpha.")
    in_range = (alpha >= 0.0) & (alpha <= 1.0)
    return jnp.where(in_range, alpha, jnp.nan)

  value = np.asarray(alpha)
  if value.ndim != 0:
    raise ValueError(
        f"alpha must be a scalar, got an array of shape {value.shape}; use "
        "jax.vmap over the loss to evaluate several values of alpha.")
  # jnp.issubdtype also counts bfloat16, which NumPy does not see as a number.
  if not jnp.issubdtype(value.dtype, jnp.number) or np.iscomplexobj(value):
    raise ValueError(f"alpha must be a real number in [0, 1], got {alpha!r}.")
  if not 0.0 <= float(value) <= 1.0:  # Also False for NaN.
    raise ValueError(
        f"alpha must lie in [0, 1], got {float(value)}. alpha = 1 gives the "
        "ordinary cross-entropy gradient; smaller values flatten the "
        "transformed probabilities towards uniform.")
  # A Python float keeps float64 precision when jax_enable_x64 is on.
  return jnp.asarray(float(value))


def _compute_dtype(dtype) -> jnp.dtype:
  """Returns float32 for half-precision inputs and the input dtype otherwise."""
  return jnp.dtype(jnp.float32) if dtype in _LOW_PRECISION else jnp.dtype(dtype)


# Both cores make five passes over the logits for value and gradient:
# 1. the row max;
# 2. the value's sum of exp(z - max), one fused reduction that writes nothing;
# 3. the weights exp(alpha * (z - max)), written once;
# 4. the weights' sum;
# 5. the gradient, cotangent * (weights / sum - labels), which float32 logits
#    get written over the weights.
# Plain cross-entropy makes the same passes except the second, because its
# value and gradient share exp(z - max). Probability labels add a pass for the
# label-weighted logits and read the labels three times.
# benchmarks/loss_speed.py times the passes against optax.


def _row_max(logits, axis):
  """Returns the max over ``axis``, kept as a size-1 axis, in the compute dtype.

  The max is taken in the logits' own dtype, where it is exact, so that
  low-precision logits are converted only inside the passes that read them.
  A row without a finite max (all -inf, or holding inf or NaN) is shifted by
  0, which keeps its -inf entries -inf and its NaN entries NaN.
  """
  row_max = jnp.max(logits, axis=axis, keepdims=True)
  row_max = row_max.astype(_compute_dtype(logits.dtype))
  return jnp.where(jnp.isfinite(row_max), row_max, 0.0)


def _unshared(*arrays):
  """Returns ``arrays`` as values whose users XLA does not merge with others'.

  XLA:CPU (jax 0.10) fuses a reduction with the elementwise ops that feed it
  only if nothing else uses those ops, and otherwise first writes them to
  memory. Common-subexpression elimination would share a pass's conversion or
  shift with another pass's. An optimization barrier gives the pass its own.
  """
  return jax.lax.optimization_barrier(arrays)


def _log_normalizer(logits, row_max, axis):
  """Returns ``log(sum(exp(logits - row_max)))`` over ``axis``."""
  logits, row_max = _unshared(logits, row_max)
  shifted = logits.astype(row_max.dtype) - row_max
  return jnp.log(jnp.sum(jnp.exp(shifted), axis=axis))


def _scaled_exp(logits, row_max, alpha):
  """Returns ``exp(alpha * (logits - row_max))``, the unnormalised PGT weights.

  ``max(alpha * z) == alpha * max(z)`` for ``alpha >= 0``, so the shared row
  max also shifts the scaled logits. -inf logits get weight 0, also at
  ``alpha = 0``.
  """
  # 0 * -inf is NaN, so alpha is raised to at least the smallest normal float,
  # which keeps -inf logits at weight 0. For a smaller alpha (0 included) this
  # changes a weight only where the logits span more than 2**101 (float32).
  # A select at -inf would do the same, but made this pass 30 to 50% slower on
  # XLA:CPU (jax 0.10).
  dtype = row_max.dtype
  alpha = jnp.maximum(alpha.astype(dtype), jnp.finfo(dtype).tiny)
  return jnp.exp(alpha * (logits.astype(dtype) - row_max))


# Integer labels. The public wrapper handles masks; out-of-range labels reach
# the core and give NaN rows.


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _integer_core(logits, labels, alpha, axis):
  del alpha  # The value is the ordinary cross-entropy.
  return _integer_loss(logits, labels, axis)[0]


def _integer_loss(logits, labels, axis):
  """Returns the loss in the logits' dtype and what the jvp rule reuses.

  Returns:
    ``(loss, row_max, valid, label_index)``: ``valid`` is True where a label
    lies in ``[0, C)`` and ``label_index`` contains the labels, with 0 in
    place of invalid ones, as a size-1 ``axis``.
  """
  row_max = _row_max(logits, axis)
  log_normalizer = _log_normalizer(logits, row_max, axis)
  valid = _valid_labels(labels, logits.shape[axis])
  label_index = jnp.expand_dims(jnp.where(valid, labels, 0), axis)
  label_logit = jnp.take_along_axis(logits, label_index, axis=axis)
  label_shifted = jnp.squeeze(label_logit.astype(row_max.dtype) - row_max, axis)
  loss = jnp.where(valid, log_normalizer - label_shifted, jnp.nan)
  return loss.astype(logits.dtype), row_max, valid, label_index


@functools.partial(_integer_core.defjvp, symbolic_zeros=True)
def _integer_core_jvp(axis, primals, tangents):
  logits, labels, alpha = primals
  logits_dot = tangents[0]
  loss, row_max, valid, label_index = _integer_loss(logits, labels, axis)
  if type(logits_dot) is _SymbolicZero:
    return loss, jnp.zeros_like(loss)

  weights = _scaled_exp(logits, row_max, alpha)
  # A NaN scale makes the whole row NaN for an out-of-range label.
  weight_scale = jnp.where(valid, 1.0 / jnp.sum(weights, axis=axis), jnp.nan)
  logits_dot = logits_dot.astype(weights.dtype)
  label_mask = _one_hot_mask(label_index, logits.shape, axis)
  # The derivative is softmax(alpha * z) - one_hot(label), applied to
  # logits_dot as two sums. Reverse mode turns them into one pass that reads
  # the weights and writes cotangent * (weights * scale - one_hot) over them.
  loss_dot = (jnp.sum(weights * logits_dot, axis=axis) * weight_scale
              - jnp.sum(jnp.where(label_mask, logits_dot, 0.0), axis=axis))
  return loss, loss_dot.astype(logits.dtype)


def _valid_labels(labels, num_classes):
  """Returns True where a label lies in ``[0, num_classes)``."""
  if jnp.dtype(labels.dtype).itemsize < 4:
    # uint8 or int8 labels would wrap num_classes around in their own dtype.
    labels = labels.astype(jnp.int32)
  return (labels >= 0) & (labels < num_classes)


def _one_hot_mask(label_index, shape, axis):
  """Returns a boolean array of ``shape`` that is True at each label's class.

  ``label_index`` contains labels in ``[0, C)``, with a size-1 ``axis``.
  """
  classes = jax.lax.broadcasted_iota(jnp.int32, shape, axis)
  return classes == label_index.astype(jnp.int32)


# Probability labels.


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _probability_core(logits, labels, alpha, axis):
  del alpha  # The value is the ordinary cross-entropy.
  return _probability_loss(logits, labels, axis)[0]


def _probability_loss(logits, labels, axis):
  """Returns the loss in the logits' dtype and what the jvp rule reuses.

  Returns:
    ``(loss, row_max, log_normalizer, label_mass)``, with ``label_mass`` the
    labels' sum over ``axis`` in the compute dtype.
  """
  row_max = _row_max(logits, axis)
  log_normalizer = _log_normalizer(logits, row_max, axis)
  (mass_labels,) = _unshared(labels)
  label_mass = jnp.sum(mass_labels.astype(row_max.dtype), axis=axis)
  # sum(q * (log_normalizer - shifted)), split in two sums that are both
  # non-negative for probability labels (shifted <= 0), so nothing cancels.
  # Without label mass the first is 0, also when every logit is -inf and
  # log_normalizer is -inf (0 * log 0 = 0).
  normalizer_part = jnp.where(label_mass == 0, 0.0, log_normalizer * label_mass)
  loss = normalizer_part - _label_weighted_sum(logits, row_max, labels, axis)
  return loss.astype(logits.dtype), row_max, log_normalizer, label_mass


def _label_weighted_sum(logits, row_max, labels, axis):
  """Returns ``sum(labels * (logits - row_max))``, counting ``0 * inf`` as 0."""
  # Where a label is 0, the shifted logits are clipped to finite floats, so an
  # infinite logit adds 0 * finite = 0. Where it is positive, the bounds are
  # infinite (lowest / 0), so label mass on an infinite logit still gives an
  # infinite or NaN loss. This is arithmetic, not jnp.where, because XLA:CPU
  # cannot fuse a select into the reduction.
  logits, row_max, labels = _unshared(logits, row_max, labels)
  labels = labels.astype(row_max.dtype)
  shifted = logits.astype(row_max.dtype) - row_max
  bound = jnp.finfo(row_max.dtype).min / (1.0 - jnp.sign(labels))
  return jnp.sum(labels * jnp.clip(shifted, bound, -bound), axis=axis)


@functools.partial(_probability_core.defjvp, symbolic_zeros=True)
def _probability_core_jvp(axis, primals, tangents):
  logits, labels, alpha = primals
  logits_dot, labels_dot, _ = tangents
  loss, row_max, log_normalizer, label_mass = _probability_loss(
      logits, labels, axis)

  loss_dot = jnp.zeros(loss.shape, row_max.dtype)
  if type(logits_dot) is not _SymbolicZero:
    # The derivative of (1/alpha) * CE(alpha * z, q) for labels of any total
    # mass: softmax(alpha * z) * sum(q) - q, applied as two sums, as in the
    # integer rule. A row without label mass has loss 0 whatever its logits,
    # so its derivative is 0, also when every logit is -inf and the weights
    # sum to 0. The select also ends XLA:CPU's fusion of the weights' sum
    # there, so the gradient stays an elementwise pass of its own.
    weights = _scaled_exp(logits, row_max, alpha)
    weight_scale = jnp.where(
        label_mass == 0, 0.0, label_mass / jnp.sum(weights, axis=axis))
    logits_dot = logits_dot.astype(row_max.dtype)
    compute_labels = labels.astype(row_max.dtype)
    loss_dot += (jnp.sum(weights * logits_dot, axis=axis) * weight_scale
                 - jnp.sum(compute_labels * logits_dot, axis=axis))
  if type(labels_dot) is not _SymbolicZero:
    # The ordinary derivative -log_softmax(z). NOTE: it is +inf at -inf logits,
    # as the true derivative is, so differentiate with respect to labels only
    # where every logit is finite.
    shifted = logits.astype(row_max.dtype) - row_max
    negative_log_probs = jnp.expand_dims(log_normalizer, axis) - shifted
    loss_dot += jnp.sum(
        negative_log_probs * labels_dot.astype(row_max.dtype), axis=axis)
  return loss, loss_dot.astype(logits.dtype)


# Public losses.


def _canonical_axis(axis, ndim: int) -> int:
  if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
    raise ValueError(
        f"axis must be a single int, got {axis!r}; move or reshape the logits "
        "so that the classes lie along one axis.")
  if not -ndim <= axis < ndim:
    raise ValueError(
        f"axis {axis} is out of range for logits with {ndim} dimensions.")
  return int(axis) % ndim


def _check_logits(logits) -> Array:
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(
        f"logits must have a floating dtype, got {logits.dtype}; cast them "
        "with logits.astype(jnp.float32).")
  if logits.ndim == 0:
    raise ValueError("logits must have a class axis, got a scalar.")
  return logits


def _split_where(where, logits_shape, axis):
  """Returns ``(example_mask, class_mask)`` from an optax-style ``where``.

  ``where`` may have the logits' shape without ``axis`` (one flag per example)
  or the logits' shape (one flag per class of each example).
  """
  if where is None:
    return None, None
  where = jnp.asarray(where)
  if where.dtype != jnp.bool_:
    raise ValueError(
        f"where must be a boolean mask, got dtype {where.dtype}; pass "
        "where=mask.astype(bool).")
  example_shape = logits_shape[:axis] + logits_shape[axis + 1:]
  if where.shape == tuple(example_shape):
    return where, None
  if where.shape == tuple(logits_shape):
    return jnp.any(where, axis=axis), where
  raise ValueError(
      f"where has shape {where.shape}, but it must be {tuple(example_shape)} "
      f"(one flag per example) or {tuple(logits_shape)} (one flag per class).")


def _mask_classes(logits, class_mask):
  """Excludes masked classes from both softmaxes by setting them to -inf."""
  return jnp.where(class_mask, logits, -jnp.inf)


def power_grad_softmax_cross_entropy_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    alpha: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
) -> Array:
  r"""Computes softmax cross-entropy with the PowerGrad logit gradient.

  The value is the ordinary cross-entropy between ``softmax(logits)`` and the
  class ``labels``, equal to
  :func:`optax.losses.softmax_cross_entropy_with_integer_labels`. The
  derivative with respect to the logits is replaced by the PowerGrad Transform
  (PGT):

  .. math::
    \frac{\partial L}{\partial z} := \mathrm{softmax}(\alpha z) - e_y
    = \frac{p^\alpha}{\sum_j p_j^\alpha} - e_y ,

  which is the exact gradient of the temperature-scaled loss
  :math:`\frac{1}{\alpha}\mathrm{CE}(\alpha z, y)`. ``alpha = 1`` gives the
  ordinary gradient; smaller values flatten the transformed probabilities
  towards uniform, and ``alpha = 0`` gives ``1/C - e_y`` over the ``C``
  classes with finite logits. Everything upstream of the logits receives the
  changed gradient through the chain rule.

  The derivative is a ``jax.custom_jvp`` rule, so the loss works under
  ``jit``, ``vmap`` (including per-example gradients), ``pmap``,
  ``shard_map``, ``grad``, ``jvp``, ``jacfwd``, ``jacrev`` and ``hessian``.
  bfloat16 and float16 logits are computed in float32 inside; the loss and
  its gradient come back in the logits' dtype.

  Args:
    logits: Unnormalised log-probabilities of shape ``[..., C, ...]``, with the
      classes along ``axis``. ``-inf`` entries (masked classes) are allowed on
      classes other than the label.
    labels: Integer class indices with the logits' shape without ``axis``.
      A label outside ``[0, C)`` makes the loss and the gradient of that
      example NaN (unless ``where`` masks it out), so a bad label can never
      train on a wrong class.
    alpha: The PGT exponent in ``[0, 1]``: a Python float or a JAX scalar,
      traced values included. A concrete value outside ``[0, 1]`` raises
      ``ValueError``; a traced one makes the gradient NaN.
    axis: The class axis.
    where: Optional boolean mask, as in optax. With one flag per example (the
      logits' shape without ``axis``), masked examples give a loss and a
      gradient of 0. With one flag per class (the logits' shape), masked
      classes are left out of both softmaxes.

  Returns:
    The per-example cross-entropy, with the logits' shape without ``axis`` and
    the logits' dtype.

  Raises:
    ValueError: for invalid ``alpha``, non-integer labels, mismatched shapes or
      an invalid ``where``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import pgt_optax
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[2.0, 0.5, -1.0]])
    >>> labels = jnp.array([0])
    >>> loss_fn = lambda z: pgt_optax.power_grad_softmax_cross_entropy_with_integer_labels(
    ...     z, labels, alpha=0.25).mean()
    >>> print(f"{loss_fn(logits):.4f}")
    0.2413
    >>> print(jax.grad(loss_fn)(logits))
    [[-0.537   0.3182  0.2187]]

  References:
    Das et al., `Altering Backward Pass Gradients improves Convergence
    <https://arxiv.org/abs/2111.12495>`_, 2021
  """
  logits = _check_logits(logits)
  labels = jnp.asarray(labels)
  axis = _canonical_axis(axis, logits.ndim)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
        f"labels must be integer class indices, got dtype {labels.dtype}; for "
        "one-hot, smoothed or soft labels use "
        "power_grad_softmax_cross_entropy.")
  example_shape = logits.shape[:axis] + logits.shape[axis + 1:]
  if labels.shape != example_shape:
    raise ValueError(
        f"labels have shape {labels.shape}, but logits of shape {logits.shape} "
        f"with class axis {axis} need labels of shape {example_shape}.")
  alpha = check_alpha(alpha)
  example_mask, class_mask = _split_where(where, logits.shape, axis)

  core_logits, core_labels = logits, labels
  if class_mask is not None:
    core_logits = _mask_classes(core_logits, class_mask)
  if example_mask is not None:
    # Masked examples may hold anything (padding, label -1); give them finite
    # logits and a valid label so that their zero cotangent meets finite values.
    keep = jnp.expand_dims(example_mask, axis)
    core_logits = jnp.where(keep, core_logits, jnp.zeros((), logits.dtype))
    core_labels = jnp.where(example_mask, labels, 0)

  loss = _integer_core(core_logits, core_labels, alpha, axis)
  if example_mask is not None:
    loss = jnp.where(example_mask, loss, jnp.zeros((), loss.dtype))
  return loss


def power_grad_softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    alpha: ArrayLike,
    *,
    axis: int = -1,
    where: Optional[ArrayLike] = None,
) -> Array:
  r"""Computes softmax cross-entropy with the PowerGrad logit gradient.

  The value is the ordinary cross-entropy between ``softmax(logits)`` and the
  probability ``labels``, equal to :func:`optax.losses.softmax_cross_entropy`.
  The derivative with respect to the logits is replaced by the PowerGrad
  Transform (PGT):

  .. math::
    \frac{\partial L}{\partial z} := \mathrm{softmax}(\alpha z) - q ,

  the exact gradient of :math:`\frac{1}{\alpha}\mathrm{CE}(\alpha z, q)`.
  (For labels whose total mass ``s`` is not 1, it is
  ``s * softmax(alpha * z) - q``, as that oracle gives.) ``alpha = 1`` is the
  ordinary gradient, smaller values flatten ``softmax(alpha * z)`` towards
  uniform, and ``alpha = 0`` gives ``1/C - q``. The derivative with respect to
  ``labels`` stays the ordinary one, ``-log_softmax(logits)``, so
  distillation against learned targets keeps working.

  Supported transformations, dtypes and ``where`` are as in
  :func:`power_grad_softmax_cross_entropy_with_integer_labels`. One-hot,
  smoothed (:func:`optax.smooth_labels`) and soft labels all work.

  Args:
    logits: Unnormalised log-probabilities of shape ``[..., C, ...]``, with the
      classes along ``axis``. ``-inf`` entries are allowed where the label is 0.
    labels: Probabilities with the logits' shape.
    alpha: The PGT exponent in ``[0, 1]``: a Python float or a JAX scalar,
      traced values included.
    axis: The class axis.
    where: Optional boolean mask: one flag per example or one per class.

  Returns:
    The per-example cross-entropy, with the logits' shape without ``axis`` and
    the logits' dtype.

  Raises:
    ValueError: for invalid ``alpha``, integer labels, mismatched shapes or an
      invalid ``where``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import pgt_optax
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[2.0, 0.5, -1.0]])
    >>> labels = optax.smooth_labels(jnp.array([[1.0, 0.0, 0.0]]), 0.1)
    >>> grad = jax.grad(lambda z: pgt_optax.power_grad_softmax_cross_entropy(
    ...     z, labels, alpha=0.25).mean())(logits)
    >>> print(grad)
    [[-0.4703  0.2849  0.1854]]

  References:
    Das et al., `Altering Backward Pass Gradients improves Convergence
    <https://arxiv.org/abs/2111.12495>`_, 2021
  """
  logits = _check_logits(logits)
  labels = jnp.asarray(labels)
  axis = _canonical_axis(axis, logits.ndim)
  if not jnp.issubdtype(labels.dtype, jnp.floating):
    raise ValueError(
        f"labels must be probabilities with a floating dtype, got dtype "
        f"{labels.dtype}; for integer class indices use "
        "power_grad_softmax_cross_entropy_with_integer_labels, or one-hot "
        "encode them with jax.nn.one_hot.")
  if labels.shape != logits.shape:
    raise ValueError(
        f"labels have shape {labels.shape}, but they must be probabilities with "
        f"the logits' shape {logits.shape}.")
  alpha = check_alpha(alpha)
  example_mask, class_mask = _split_where(where, logits.shape, axis)

  core_logits = logits
  if class_mask is not None:
    core_logits = _mask_classes(core_logits, class_mask)
    labels = jnp.where(class_mask, labels, jnp.zeros((), labels.dtype))
  if example_mask is not None:
    # Masked examples may hold anything (padding); clean them so that the
    # zero cotangent below meets finite values.
    keep = jnp.expand_dims(example_mask, axis)
    core_logits = jnp.where(keep, core_logits, jnp.zeros((), logits.dtype))
    labels = jnp.where(keep, labels, jnp.zeros((), labels.dtype))

  loss = _probability_core(core_logits, labels, alpha, axis)
  if example_mask is not None:
    loss = jnp.where(example_mask, loss, jnp.zeros((), loss.dtype))
  return loss
