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
  """Validates ``alpha`` and returns it as a float32 scalar array.

  A concrete value outside ``[0, 1]`` or NaN raises ``ValueError``. A traced
  value (under ``jit`` or ``vmap``) cannot be inspected, so a traced value
  outside ``[0, 1]`` is replaced by NaN, which makes every gradient computed
  with it NaN instead of silently wrong.
  """
  if isinstance(alpha, jax.core.Tracer):
    alpha = jnp.asarray(alpha, jnp.float32)
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
  if not np.issubdtype(value.dtype, np.number) or np.iscomplexobj(value):
    raise ValueError(f"alpha must be a real number in [0, 1], got {alpha!r}.")
  if not 0.0 <= float(value) <= 1.0:  # Also False for NaN.
    raise ValueError(
        f"alpha must lie in [0, 1], got {float(value)}. alpha = 1 gives the "
        "ordinary cross-entropy gradient; smaller values flatten the "
        "transformed probabilities towards uniform.")
  return jnp.asarray(value, jnp.float32)


def _compute_dtype(dtype) -> jnp.dtype:
  """Returns float32 for half-precision inputs and the input dtype otherwise."""
  return jnp.dtype(jnp.float32) if dtype in _LOW_PRECISION else jnp.dtype(dtype)


def _normalizers(logits: Array, alpha: Array, axis: int):
  """Returns the shared max and both log-normalisers of a row of logits.

  ``max(alpha * z) == alpha * max(z)`` for ``alpha >= 0``, so one max pass
  serves both softmaxes, and the two sums of exponentials read the same shifted
  logits. Entries equal to ``-inf`` stay ``-inf`` after scaling, also at
  ``alpha = 0``, where ``0 * -inf`` would otherwise be NaN.
  """
  row_max = jnp.max(logits, axis=axis, keepdims=True)
  # A row of only -inf logits has no finite max; shifting by 0 keeps it -inf.
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  shifted = logits - row_max
  scaled = jnp.where(shifted == -jnp.inf, -jnp.inf, alpha * shifted)
  log_normalizer = jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))
  log_normalizer_alpha = jnp.log(
      jnp.sum(jnp.exp(scaled), axis=axis, keepdims=True))
  return shifted, scaled, log_normalizer, log_normalizer_alpha


def _transformed_probabilities(logits, alpha, axis):
  """Returns ``softmax(alpha * logits)`` and the ordinary log-normaliser."""
  shifted, scaled, log_normalizer, log_normalizer_alpha = _normalizers(
      logits, alpha, axis)
  return shifted, log_normalizer, jnp.exp(scaled - log_normalizer_alpha)


# Integer labels. The core works on a compute-dtype copy of the logits and
# labels already checked for range; the public wrapper handles masks.


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _integer_core(logits, labels, alpha, axis):
  del alpha  # The value is the ordinary cross-entropy.
  compute_logits = logits.astype(_compute_dtype(logits.dtype))
  row_max = jnp.max(compute_logits, axis=axis, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  shifted = compute_logits - row_max
  log_normalizer = jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))
  valid = _valid_labels(labels, logits.shape[axis])
  label_shifted = jnp.take_along_axis(
      shifted, jnp.expand_dims(jnp.where(valid, labels, 0), axis), axis=axis)
  loss = jnp.squeeze(log_normalizer - label_shifted, axis)
  return jnp.where(valid, loss, jnp.nan).astype(logits.dtype)


@functools.partial(_integer_core.defjvp, symbolic_zeros=True)
def _integer_core_jvp(axis, primals, tangents):
  logits, labels, alpha = primals
  logits_dot = tangents[0]

  compute_logits = logits.astype(_compute_dtype(logits.dtype))
  shifted, log_normalizer, transformed = _transformed_probabilities(
      compute_logits, alpha, axis)
  valid = _valid_labels(labels, logits.shape[axis])
  label_mask = _one_hot_mask(labels, logits.shape, axis)
  label_shifted = jnp.sum(
      jnp.where(label_mask, shifted, 0.0), axis=axis, keepdims=True)
  loss = jnp.squeeze(log_normalizer - label_shifted, axis)
  loss = jnp.where(valid, loss, jnp.nan).astype(logits.dtype)

  if type(logits_dot) is _SymbolicZero:
    return loss, jnp.zeros_like(loss)
  logit_gradient = transformed - label_mask.astype(transformed.dtype)
  logit_gradient = jnp.where(
      jnp.expand_dims(valid, axis), logit_gradient, jnp.nan)
  loss_dot = jnp.sum(
      logit_gradient * logits_dot.astype(transformed.dtype), axis=axis)
  return loss, loss_dot.astype(logits.dtype)


def _valid_labels(labels, num_classes):
  """Returns True where a label lies in ``[0, num_classes)``."""
  return (labels >= 0) & (labels < num_classes)


def _one_hot_mask(labels, shape, axis):
  """Returns a boolean array of ``shape`` that is True at each label's class."""
  classes = jax.lax.broadcasted_iota(jnp.int32, shape, axis)
  return classes == jnp.expand_dims(labels, axis).astype(jnp.int32)


# Probability labels.


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _probability_core(logits, labels, alpha, axis):
  del alpha  # The value is the ordinary cross-entropy.
  compute_dtype = _compute_dtype(logits.dtype)
  compute_logits = logits.astype(compute_dtype)
  labels = labels.astype(compute_dtype)
  row_max = jnp.max(compute_logits, axis=axis, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  shifted = compute_logits - row_max
  log_normalizer = jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))
  return _probability_loss(shifted, log_normalizer, labels, axis).astype(
      logits.dtype)


def _probability_loss(shifted, log_normalizer, labels, axis):
  # 0 * log(0) counts as 0, so a -inf logit with zero label mass adds nothing.
  negative_log_probs = log_normalizer - shifted
  terms = jnp.where(labels == 0, 0.0, labels * negative_log_probs)
  return jnp.sum(terms, axis=axis)


@functools.partial(_probability_core.defjvp, symbolic_zeros=True)
def _probability_core_jvp(axis, primals, tangents):
  logits, labels, alpha = primals
  logits_dot, labels_dot, _ = tangents

  compute_dtype = _compute_dtype(logits.dtype)
  compute_logits = logits.astype(compute_dtype)
  compute_labels = labels.astype(compute_dtype)
  shifted, log_normalizer, transformed = _transformed_probabilities(
      compute_logits, alpha, axis)
  loss = _probability_loss(shifted, log_normalizer, compute_labels, axis)

  loss_dot = jnp.zeros_like(loss)
  if type(logits_dot) is not _SymbolicZero:
    # The derivative of (1/alpha) * CE(alpha * z, q) for labels of any total
    # mass; for labels that sum to one this is softmax(alpha * z) - q.
    label_mass = jnp.sum(compute_labels, axis=axis, keepdims=True)
    logit_gradient = transformed * label_mass - compute_labels
    loss_dot += jnp.sum(
        logit_gradient * logits_dot.astype(compute_dtype), axis=axis)
  if type(labels_dot) is not _SymbolicZero:
    # The ordinary derivative -log_softmax(z). NOTE: it is +inf at -inf logits,
    # as the true derivative is, so differentiate with respect to labels only
    # where every logit is finite.
    loss_dot += jnp.sum(
        (log_normalizer - shifted) * labels_dot.astype(compute_dtype),
        axis=axis)
  return loss.astype(logits.dtype), loss_dot.astype(logits.dtype)


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
    where: Optional boolean mask, as in optax: either one flag per example
      (the logits' shape without ``axis``), where masked examples give a loss
      and gradient of 0, or one flag per class (the logits' shape), where
      masked classes are left out of both softmaxes.

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
