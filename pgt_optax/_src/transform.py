"""The PowerGrad Transform as the first member of an optax chain."""

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pgt_optax._src import losses

_USAGE = (
    "Call it as the first member of an optax chain, with updates=None and the "
    "model's logits, labels and pullback:\n"
    "  logits, pullback = jax.vjp(lambda p: model.apply(p, images), params)\n"
    "  updates, opt_state = tx.update(None, opt_state, params, logits=logits, "
    "labels=labels, pullback=pullback)")


def power_grad(
    alpha: jax.typing.ArrayLike,
    *,
    axis: int = -1,
    axis_name: Optional[str] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Forms parameter gradients with the PowerGrad Transform (PGT) at the logits.

  PGT changes the gradient at the logits in the backward pass, from
  ``softmax(z) - q`` to ``softmax(alpha * z) - q``, and lets the chain rule
  carry the change to every parameter. An optax transformation receives only
  parameter gradients, which is too late for that change, so this one starts
  from the model's forward pass instead: given the logits, the labels and the
  pullback from ``jax.vjp``, it builds the PGT gradient at the logits and pulls
  it back once (no second backward pass). The result is the gradient of the
  mean PGT cross-entropy over the unmasked examples,

  .. math::
    g = \frac{1}{N} \sum_{n:\ \mathrm{where}_n}
        J_n^\top \left(\mathrm{softmax}(\alpha z_n) - q_n\right),

  which the rest of the chain (clipping, momentum, weight decay) turns into
  updates. It gives the same gradients, to float32 rounding, as
  ``jax.grad`` of the mean of :func:`power_grad_softmax_cross_entropy`.

  With ``axis_name`` the mean is over the unmasked examples on every device
  of that named axis (a ``psum`` of the counts and of the gradients), which
  is the cross-device average ``lax.pmean`` gives when every device holds the
  same number of unmasked examples. Use it inside ``pmap`` or ``shard_map``.
  Under ``shard_map`` with ``check_vma=True`` (the default), the pullback of
  a replicated parameter already sums its gradient over the devices, and
  this transformation then leaves that gradient as it is instead of summing
  it again.

  ``tx.update`` takes these keyword arguments:

  - ``logits``: the model output, shape ``[..., C]`` with classes on ``axis``.
  - ``labels``: integer class indices (the logits' shape without ``axis``) or
    probabilities (the logits' shape).
  - ``pullback``: the function returned by ``jax.vjp(fn, params)`` with
    ``params`` as the only primal, or by ``jax.vjp(fn, params, has_aux=True)``.
  - ``where`` (optional): a boolean mask with one flag per example.

  .. note::
    ``power_grad`` must be the first member of the chain. It raises when it
    receives gradients, but a member placed before it that maps ``None`` to
    ``None`` (such as :func:`optax.sgd` or :func:`optax.clip_by_global_norm`)
    cannot tell, so it is skipped without an error.

  .. note::
    ``flax.training.train_state.TrainState.apply_gradients`` calls
    ``tx.update`` without these keywords, so drive the chain with
    ``tx.update``, :func:`optax.apply_updates` and ``state.replace``. To
    schedule alpha, wrap the factory:
    ``optax.inject_hyperparams(power_grad, static_args=("axis", "axis_name"))``
    ``(alpha=schedule)``.

  Args:
    alpha: The PGT exponent in ``[0, 1]``; 1 gives ordinary cross-entropy
      gradients.
    axis: The class axis of the logits.
    axis_name: Optional name of a mapped device axis to average gradients over.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with an empty state.

  Raises:
    ValueError: when updates are not ``None`` or a keyword is missing, or for
      invalid ``alpha``, labels or ``where``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import pgt_optax
    >>> params = {"w": jnp.ones((4, 3)) * 0.1}
    >>> images, labels = jnp.ones((2, 4)), jnp.array([0, 2])
    >>> tx = optax.chain(pgt_optax.power_grad(0.25), optax.sgd(0.1))
    >>> opt_state = tx.init(params)
    >>> logits, pullback = jax.vjp(lambda p: images @ p["w"], params)
    >>> updates, opt_state = tx.update(None, opt_state, params, logits=logits,
    ...                                labels=labels, pullback=pullback)
    >>> params = optax.apply_updates(params, updates)

  References:
    Das et al., `Altering Backward Pass Gradients improves Convergence
    <https://arxiv.org/abs/2111.12495>`_, 2021
  """
  # Validate a concrete alpha and the axis now, where the mistake is made.
  losses.check_alpha(alpha)
  if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
    raise ValueError(
        f"axis must be a single int, got {axis!r}. Under "
        "optax.inject_hyperparams, pass static_args=('axis', 'axis_name').")

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(
      updates,
      state,
      params=None,
      *,
      logits: Optional[jax.Array] = None,
      labels: Optional[jax.Array] = None,
      pullback: Optional[Callable[[jax.Array], Any]] = None,
      where: Optional[jax.Array] = None,
      **extra_args,
  ):
    del params, extra_args
    if updates is not None:
      raise ValueError(
          "power_grad computes the gradients itself, so it must come first in "
          "the chain and receive updates=None; got updates of type "
          f"{type(updates).__name__}. " + _USAGE)
    missing = [
        name for name, value in
        (("logits", logits), ("labels", labels), ("pullback", pullback))
        if value is None
    ]
    if missing:
      raise ValueError(
          f"power_grad needs the keyword arguments {', '.join(missing)}. "
          + _USAGE)
    if not callable(pullback):
      raise ValueError(
          f"pullback must be the function returned by jax.vjp, got "
          f"{type(pullback).__name__}. " + _USAGE)

    logit_cotangent = _logit_cotangent(
        logits, labels, alpha, axis=axis, axis_name=axis_name, where=where)
    cotangents = pullback(logit_cotangent)
    if not isinstance(cotangents, tuple) or len(cotangents) != 1:
      count = len(cotangents) if isinstance(cotangents, tuple) else "no tuple of"
      raise ValueError(
          f"pullback returned {count} cotangents, but power_grad needs it "
          "built over the parameters alone, as in jax.vjp(fn, params); close "
          "over the other inputs of fn.")
    grads = cotangents[0]
    if axis_name is not None:
      grads = _sum_over_devices(grads, logits, axis_name)
    return grads, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _varying_axes(value) -> frozenset:
  """Returns the mapped axes over which ``value`` may differ between devices.

  Only ``shard_map`` with ``check_vma=True`` tracks this; elsewhere the set is
  empty.
  """
  aval = jax.typeof(value)
  manual_axis_type = getattr(aval, "manual_axis_type", None)
  if manual_axis_type is not None:
    return frozenset(manual_axis_type.varying)
  return frozenset(getattr(aval, "vma", ()))


def _sum_over_devices(grads, logits, axis_name):
  """Sums per-device gradients over ``axis_name``, once.

  Where JAX tracks which values vary across devices, logits vary with the
  data, and a parameter gradient that does not vary has already been summed
  by the pullback (the transpose of the implicit broadcast of a replicated
  parameter), so it is left alone.
  """
  if axis_name not in _varying_axes(logits):
    return jax.lax.psum(grads, axis_name)

  def sum_if_varying(grad):
    if axis_name in _varying_axes(grad):
      return jax.lax.psum(grad, axis_name)
    return grad

  return jax.tree.map(sum_if_varying, grads)


def _logit_cotangent(logits, labels, alpha, *, axis, axis_name, where):
  """Returns the PGT gradient at the logits of the mean loss over examples."""
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if jnp.issubdtype(labels.dtype, jnp.integer):
    loss_fn = losses.power_grad_softmax_cross_entropy_with_integer_labels
  else:
    loss_fn = losses.power_grad_softmax_cross_entropy
  # The losses' own check, so both doors accept and reject the same axes.
  class_axis = losses._canonical_axis(  # pylint: disable=protected-access
      axis, logits.ndim)
  example_shape = logits.shape[:class_axis] + logits.shape[class_axis + 1:]
  if where is None:
    count = jnp.asarray(math.prod(example_shape), jnp.float32)
  else:
    where = jnp.asarray(where)
    if where.shape != example_shape:
      raise ValueError(
          f"where has shape {where.shape}, but power_grad needs one flag per "
          f"example, shape {example_shape}; to leave classes out, set their "
          "logits to -inf instead.")
    count = jnp.sum(where, dtype=jnp.float32)
  if axis_name is not None:
    count = jax.lax.psum(count, axis_name)
  # An all-masked batch gives zero gradients instead of 0 / 0.
  count = jnp.maximum(count, 1.0)

  def mean_loss(z):
    per_example = loss_fn(z, labels, alpha, axis=axis, where=where)
    return jnp.sum(per_example.astype(jnp.float32)) / count

  return jax.grad(mean_loss)(logits)
