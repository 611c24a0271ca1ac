"""Tests for the PGT cross-entropy losses.

The reference for every gradient is the temperature-scaled cross-entropy
``(1/alpha) * CE(alpha * z, q)``, differentiated by ``jax.grad`` in float64,
whose exact gradient is ``softmax(alpha * z) * sum(q) - q``.
"""

import functools

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pgt_optax

int_loss = pgt_optax.power_grad_softmax_cross_entropy_with_integer_labels
prob_loss = pgt_optax.power_grad_softmax_cross_entropy

PAPER_ALPHAS = (1.0, 0.92, 0.3, 0.25, 0.05)
# Tolerances for results returned in each dtype, against a float64 reference
# computed on the same (already rounded) inputs. They cover one rounding of the
# output: float32 eps 1.2e-7, float16 eps 9.8e-4, bfloat16 eps 7.8e-3.
ATOL = {jnp.float32: 2e-6, jnp.float16: 2e-3, jnp.bfloat16: 1.6e-2}
RTOL = {jnp.float32: 2e-5, jnp.float16: 2e-3, jnp.bfloat16: 1.6e-2}


def _random_problem(shape, dtype=jnp.float32, scale=3.0, seed=0, axis=-1):
  """Returns logits, integer labels and their one-hot probabilities."""
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=shape) * scale, dtype)
  num_classes = shape[axis]
  example_shape = tuple(np.delete(shape, axis % len(shape)))
  labels = jnp.asarray(rng.integers(0, num_classes, size=example_shape))
  one_hot = jnp.moveaxis(jax.nn.one_hot(labels, num_classes), -1, axis)
  return logits, labels, one_hot


def _oracle_logit_gradient(logits, probabilities, alpha, axis=-1):
  """Returns d/dz of sum((1/alpha) * CE(alpha * z, q)) in float64, as numpy.

  The logits are rounded to their own dtype first, so the reference sees the
  same inputs as the code under test.
  """
  logits64 = np.asarray(jnp.asarray(logits, jnp.float32), np.float64)
  probabilities64 = np.asarray(
      jnp.asarray(probabilities, jnp.float32), np.float64)
  with jax.enable_x64(True):
    return np.asarray(_scaled_loss_grad(
        jnp.asarray(logits64), jnp.asarray(probabilities64), alpha, axis))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _scaled_loss_grad(logits, probabilities, alpha, axis):
  def scaled_loss(z):
    ce = optax.softmax_cross_entropy(
        alpha * jnp.moveaxis(z, axis, -1), jnp.moveaxis(probabilities, axis, -1))
    return jnp.sum(ce) / alpha

  return jax.grad(scaled_loss)(logits)


def _oracle_loss(logits, probabilities, axis=-1):
  """Returns the ordinary cross-entropy in float64, with 0 * log 0 = 0."""
  z = np.moveaxis(np.asarray(jnp.asarray(logits, jnp.float32), np.float64),
                  axis, -1)
  q = np.moveaxis(
      np.asarray(jnp.asarray(probabilities, jnp.float32), np.float64), axis, -1)
  finite = np.isfinite(z)
  row_max = np.max(np.where(finite, z, -np.inf), axis=-1, keepdims=True)
  shifted = z - row_max
  log_normalizer = np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
  with np.errstate(invalid="ignore"):  # 0 * inf, replaced by 0 below.
    terms = np.where(q == 0, 0.0, q * (log_normalizer - shifted))
  return terms.sum(axis=-1)


@functools.partial(jax.jit, static_argnames=("loss_fn", "alpha", "axis"))
def _mean_grad(loss_fn, logits, labels, alpha, axis=-1, where=None):
  """Returns the gradient of the summed loss; jitted to keep the suite fast."""
  return jax.grad(lambda z: jnp.sum(
      loss_fn(z, labels, alpha, axis=axis, where=where)))(logits)


@functools.partial(jax.jit, static_argnames=("loss_fn", "alpha", "axis"))
def _value(loss_fn, logits, labels, alpha, axis=-1, where=None):
  """Returns the per-example loss; jitted to keep the suite fast."""
  return loss_fn(logits, labels, alpha, axis=axis, where=where)


def _summed_grad_traced_alpha(logits, labels, alpha):
  return jax.grad(lambda z: jnp.sum(int_loss(z, labels, alpha)))(logits)


class ValueTest(parameterized.TestCase):

  @parameterized.product(
      shape_and_axis=[((8, 10), -1), ((4, 5, 33), -1), ((6, 7, 3), 1),
                      ((1, 1000), -1)],
      dtype=[jnp.float32, jnp.bfloat16, jnp.float16],
  )
  def test_value_equals_optax(self, shape_and_axis, dtype):
    shape, axis = shape_and_axis
    logits, labels, one_hot = _random_problem(shape, dtype, axis=axis)
    # optax keeps half precision inside; its float32 result on the same
    # rounded logits is the value to match.
    expected = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels, axis=axis)

    integer_value = _value(int_loss, logits, labels, 0.25, axis=axis)
    probability_value = _value(prob_loss, logits, one_hot.astype(dtype), 0.25,
                               axis=axis)

    expected_shape = expected.shape
    chex.assert_shape([integer_value, probability_value], expected_shape)
    chex.assert_type([integer_value, probability_value], dtype)
    chex.assert_trees_all_close(
        integer_value.astype(jnp.float32), expected,
        atol=ATOL[dtype], rtol=RTOL[dtype])
    chex.assert_trees_all_close(
        probability_value.astype(jnp.float32), expected,
        atol=ATOL[dtype], rtol=RTOL[dtype])

  def test_value_ignores_alpha(self):
    logits, labels, _ = _random_problem((16, 12))
    values = [_value(int_loss, logits, labels, alpha)
              for alpha in (0.0, 0.3, 1.0)]
    chex.assert_trees_all_equal(values[0], values[1])
    chex.assert_trees_all_equal(values[0], values[2])

  def test_soft_labels_value_equals_optax(self):
    logits, _, _ = _random_problem((8, 6))
    soft = jax.nn.softmax(jnp.asarray(np.random.default_rng(1).normal(
        size=(8, 6)), jnp.float32))
    chex.assert_trees_all_close(
        _value(prob_loss, logits, soft, 0.3),
        optax.softmax_cross_entropy(logits, soft), rtol=1e-6, atol=1e-6)


class GradientTest(parameterized.TestCase):

  @parameterized.product(
      alpha=PAPER_ALPHAS,
      shape_and_axis=[((8, 10), -1), ((3, 4, 17), -1), ((5, 9, 2), 1)],
  )
  def test_gradient_equals_float64_oracle(self, alpha, shape_and_axis):
    shape, axis = shape_and_axis
    logits, labels, one_hot = _random_problem(shape, axis=axis)
    expected = _oracle_logit_gradient(logits, one_hot, alpha, axis=axis)

    integer_grad = _mean_grad(int_loss, logits, labels, alpha, axis=axis)
    probability_grad = _mean_grad(prob_loss, logits, one_hot, alpha, axis=axis)

    chex.assert_shape([integer_grad, probability_grad], shape)
    chex.assert_type([integer_grad, probability_grad], jnp.float32)
    np.testing.assert_allclose(integer_grad, expected, atol=2e-6, rtol=2e-5)
    np.testing.assert_allclose(probability_grad, expected, atol=2e-6,
                               rtol=2e-5)

  def test_gradient_changes_with_alpha(self):
    logits, labels, _ = _random_problem((8, 10))
    ordinary = _mean_grad(int_loss, logits, labels, 1.0)
    transformed = _mean_grad(int_loss, logits, labels, 0.25)
    self.assertGreater(float(jnp.max(jnp.abs(ordinary - transformed))), 1e-2)

  @parameterized.parameters(jnp.float32, jnp.bfloat16)
  def test_alpha_zero_is_uniform_minus_labels(self, dtype):
    logits, labels, one_hot = _random_problem((6, 7), dtype)
    expected = 1.0 / 7.0 - np.asarray(one_hot)
    for loss_fn, targets in ((int_loss, labels),
                             (prob_loss, one_hot.astype(dtype))):
      grad = _mean_grad(loss_fn, logits, targets, 0.0)
      chex.assert_type(grad, dtype)
      np.testing.assert_allclose(
          np.asarray(grad, np.float32), expected, atol=ATOL[dtype])

  def test_alpha_one_equals_optax_gradient(self):
    logits, labels, one_hot = _random_problem((32, 100), scale=5.0)
    optax_int = jax.jit(jax.grad(lambda z: jnp.sum(
        optax.softmax_cross_entropy_with_integer_labels(z, labels))))(logits)
    optax_prob = jax.jit(jax.grad(lambda z: jnp.sum(
        optax.softmax_cross_entropy(z, one_hot))))(logits)

    integer_grad = _mean_grad(int_loss, logits, labels, 1.0)
    probability_grad = _mean_grad(prob_loss, logits, one_hot, 1.0)

    np.testing.assert_allclose(integer_grad, optax_int, atol=1e-7, rtol=1e-6)
    np.testing.assert_allclose(probability_grad, optax_prob, atol=1e-7,
                               rtol=1e-6)

  @parameterized.parameters(0.1, 0.0)
  def test_smoothed_labels_match_oracle(self, smoothing):
    logits, _, one_hot = _random_problem((8, 10))
    smoothed = optax.smooth_labels(one_hot, smoothing)
    for alpha in (1.0, 0.3, 0.05):
      grad = _mean_grad(prob_loss, logits, smoothed, alpha)
      np.testing.assert_allclose(
          grad, _oracle_logit_gradient(logits, smoothed, alpha),
          atol=2e-6, rtol=2e-5)

  def test_soft_labels_match_oracle(self):
    logits, _, _ = _random_problem((8, 6))
    soft = jax.nn.softmax(jnp.asarray(np.random.default_rng(3).normal(
        size=(8, 6)) * 2, jnp.float32))
    grad = _mean_grad(prob_loss, logits, soft, 0.25)
    np.testing.assert_allclose(
        grad, _oracle_logit_gradient(logits, soft, 0.25), atol=2e-6,
        rtol=2e-5)

  def test_unnormalised_labels_match_oracle(self):
    logits, _, one_hot = _random_problem((5, 4))
    weighted = one_hot * jnp.arange(1.0, 6.0)[:, None]
    grad = _mean_grad(prob_loss, logits, weighted, 0.3)
    np.testing.assert_allclose(
        grad, _oracle_logit_gradient(logits, weighted, 0.3), atol=1e-5,
        rtol=2e-5)

  def test_label_gradient_is_negative_log_softmax(self):
    logits, _, one_hot = _random_problem((4, 6))
    label_grad = jax.jit(jax.grad(
        lambda q: jnp.sum(prob_loss(logits, q, 0.25))))(one_hot)
    np.testing.assert_allclose(
        label_grad, -jax.nn.log_softmax(logits), atol=1e-6, rtol=1e-6)


class TransformationTest(parameterized.TestCase):

  def test_jacfwd_equals_jacrev(self):
    logits, labels, one_hot = _random_problem((3, 5))
    for loss_fn, targets in ((int_loss, labels), (prob_loss, one_hot)):
      fn = lambda z, f=loss_fn, t=targets: f(z, t, 0.3)
      chex.assert_trees_all_close(
          jax.jit(jax.jacfwd(fn))(logits), jax.jit(jax.jacrev(fn))(logits),
          atol=1e-6)

  def test_jvp_equals_oracle_directional_derivative(self):
    logits, labels, one_hot = _random_problem((4, 6))
    direction = jnp.asarray(np.random.default_rng(5).normal(size=(4, 6)),
                            jnp.float32)
    _, tangent = jax.jit(lambda z, dz: jax.jvp(
        lambda z: int_loss(z, labels, 0.25), (z,), (dz,)))(logits, direction)
    oracle = _oracle_logit_gradient(logits, one_hot, 0.25)
    expected = np.sum(oracle * np.asarray(direction), axis=-1)
    np.testing.assert_allclose(tangent, expected, atol=1e-5, rtol=1e-5)

  def test_hessian_equals_scaled_loss_hessian(self):
    logits, labels, one_hot = _random_problem((2, 4))
    alpha = 0.3
    hessian = jax.jit(jax.hessian(
        lambda z: jnp.sum(int_loss(z, labels, alpha))))(logits)
    with jax.enable_x64(True):
      z64 = jnp.asarray(np.asarray(logits, np.float64))
      q64 = jnp.asarray(np.asarray(one_hot, np.float64))
      expected = jax.jit(jax.hessian(lambda z: jnp.sum(
          optax.softmax_cross_entropy(alpha * z, q64)) / alpha))(z64)
    np.testing.assert_allclose(hessian, np.asarray(expected), atol=1e-6)

  def test_vmap_over_alpha_grid(self):
    logits, labels, one_hot = _random_problem((6, 8))
    alphas = jnp.asarray(PAPER_ALPHAS)
    grads = jax.jit(jax.vmap(
        lambda a: _summed_grad_traced_alpha(logits, labels, a)))(alphas)
    chex.assert_shape(grads, (len(PAPER_ALPHAS), 6, 8))
    for index, alpha in enumerate(PAPER_ALPHAS):
      np.testing.assert_allclose(
          grads[index], _oracle_logit_gradient(logits, one_hot, alpha),
          atol=2e-6, rtol=2e-5)

  def test_traced_alpha_out_of_range_gives_nan_gradient(self):
    logits, labels, _ = _random_problem((3, 4))
    grads = jax.jit(jax.vmap(
        lambda a: _summed_grad_traced_alpha(logits, labels, a)))(
            jnp.asarray([0.5, 1.5, -0.1, jnp.nan]))
    self.assertTrue(bool(jnp.all(jnp.isfinite(grads[0]))))
    for index in (1, 2, 3):
      self.assertTrue(bool(jnp.all(jnp.isnan(grads[index]))), msg=index)

  def test_per_example_gradients_by_vmap_equal_loop(self):
    logits, labels, one_hot = _random_problem((6, 5))

    def example_grad(z, label):
      return jax.grad(lambda z: int_loss(z, label, 0.25))(z)

    batched = jax.jit(jax.vmap(example_grad))(logits, labels)
    jitted_example_grad = jax.jit(example_grad)
    looped = jnp.stack(
        [jitted_example_grad(logits[i], labels[i]) for i in range(6)])
    chex.assert_trees_all_close(batched, looped, atol=1e-7)
    np.testing.assert_allclose(
        batched, _oracle_logit_gradient(logits, one_hot, 0.25), atol=2e-6)

  def test_per_parameter_example_gradients_by_vmap_equal_loop(self):
    rng = np.random.default_rng(2)
    weights = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    inputs = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, size=5))

    def example_grad(x, label):
      return jax.grad(lambda w: int_loss(x @ w, label, 0.3))(weights)

    batched = jax.jit(jax.vmap(example_grad))(inputs, labels)
    jitted_example_grad = jax.jit(example_grad)
    looped = jnp.stack(
        [jitted_example_grad(inputs[i], labels[i]) for i in range(5)])
    chex.assert_trees_all_close(batched, looped, atol=1e-6)

  def test_no_retracing_across_steps(self):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(logits, labels):
      return jax.value_and_grad(
          lambda z: jnp.mean(int_loss(z, labels, 0.25)))(logits)

    for seed in range(4):
      logits, labels, _ = _random_problem((8, 10), seed=seed)
      step(logits, labels)


class VariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  @parameterized.parameters("integer", "probability")
  def test_value_and_grad_under_variant(self, label_kind):
    logits, labels, one_hot = _random_problem((8, 10))
    targets = labels if label_kind == "integer" else one_hot
    loss_fn = int_loss if label_kind == "integer" else prob_loss

    @self.variant
    def value_and_grad(z, t):
      return jax.value_and_grad(lambda z: jnp.mean(loss_fn(z, t, 0.25)))(z)

    value, grad = value_and_grad(logits, targets)
    chex.assert_shape(grad, (8, 10))
    chex.assert_type(grad, jnp.float32)
    np.testing.assert_allclose(
        value, jnp.mean(optax.softmax_cross_entropy(logits, one_hot)),
        rtol=1e-6)
    np.testing.assert_allclose(
        grad, _oracle_logit_gradient(logits, one_hot, 0.25) / 8, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_traced_alpha_under_variant(self):
    logits, labels, one_hot = _random_problem((4, 6))

    @self.variant
    def grad_fn(z, t, alpha):
      return jax.grad(lambda z: jnp.sum(int_loss(z, t, alpha)))(z)

    grad = grad_fn(logits, labels, jnp.float32(0.3))
    np.testing.assert_allclose(
        grad, _oracle_logit_gradient(logits, one_hot, 0.3), atol=2e-6)


class RobustnessTest(parameterized.TestCase):

  @parameterized.product(
      dtype=[jnp.float32, jnp.bfloat16, jnp.float16],
      alpha=[1.0, 0.25, 0.05, 0.0],
  )
  def test_extreme_margins_are_finite_and_exact(self, dtype, alpha):
    # Margins of 100 to 6e4 between classes: softmax(z) underflows to exact
    # zeros and ones, and exp(z) would overflow without the max shift.
    logits = jnp.asarray(
        [[100.0, 0.0, -100.0, 50.0],
         [0.0, 150.0, -150.0, 0.0],
         [-60000.0, 0.0, 60000.0, 10.0]], dtype)
    labels = jnp.asarray([0, 2, 1])
    one_hot = jax.nn.one_hot(labels, 4)
    for loss_fn, targets in ((int_loss, labels),
                             (prob_loss, one_hot.astype(dtype))):
      value = _value(loss_fn, logits, targets, alpha)
      grad = _mean_grad(loss_fn, logits, targets, alpha)
      chex.assert_tree_all_finite((value, grad))
      chex.assert_type(grad, dtype)
      np.testing.assert_allclose(
          np.asarray(value, np.float64), _oracle_loss(logits, one_hot),
          rtol=RTOL[dtype], atol=ATOL[dtype])
      if alpha > 0:
        expected = _oracle_logit_gradient(logits, one_hot, alpha)
      else:
        expected = 0.25 - np.asarray(one_hot)
      np.testing.assert_allclose(
          np.asarray(grad, np.float64), expected, atol=ATOL[dtype])

  @parameterized.product(
      dtype=[jnp.float32, jnp.bfloat16, jnp.float16],
      alpha=PAPER_ALPHAS,
  )
  def test_low_precision_matches_float64_oracle(self, dtype, alpha):
    logits, labels, one_hot = _random_problem((16, 50), dtype, scale=4.0)
    grad = _mean_grad(int_loss, logits, labels, alpha)
    chex.assert_type(grad, dtype)
    np.testing.assert_allclose(
        np.asarray(grad, np.float64),
        _oracle_logit_gradient(logits, one_hot, alpha),
        atol=ATOL[dtype], rtol=RTOL[dtype])

  def test_large_vocabulary_bfloat16_is_more_exact_than_optax(self):
    # Computing in float32 inside keeps per-example losses within bfloat16
    # output rounding even at 32k classes.
    logits, labels, one_hot = _random_problem((8, 32000), jnp.bfloat16)
    value = _value(int_loss, logits, labels, 0.25)
    np.testing.assert_allclose(
        np.asarray(value, np.float64), _oracle_loss(logits, one_hot),
        rtol=RTOL[jnp.bfloat16])

  @parameterized.parameters(1.0, 0.25, 0.0)
  def test_negative_infinity_logits_on_other_classes(self, alpha):
    # A masked vocabulary: -inf on classes that are never the label.
    logits = jnp.asarray([[2.0, -jnp.inf, 0.5, -jnp.inf],
                          [-jnp.inf, 1.0, -1.0, 3.0]])
    labels = jnp.asarray([0, 3])
    one_hot = jax.nn.one_hot(labels, 4)
    finite = np.isfinite(np.asarray(logits))
    if alpha > 0:
      safe_logits = np.where(finite, np.asarray(logits), -1e30)
      expected = _oracle_logit_gradient(safe_logits, one_hot, alpha)
    else:
      expected = finite / finite.sum(axis=-1, keepdims=True) - np.asarray(
          one_hot)
    for loss_fn, targets in ((int_loss, labels), (prob_loss, one_hot)):
      value = _value(loss_fn, logits, targets, alpha)
      grad = _mean_grad(loss_fn, logits, targets, alpha)
      chex.assert_tree_all_finite((value, grad))
      np.testing.assert_allclose(value, _oracle_loss(logits, one_hot),
                                 rtol=1e-6)
      np.testing.assert_allclose(grad, expected, atol=1e-6)

  def test_out_of_range_label_gives_nan_for_that_example_only(self):
    logits, _, _ = _random_problem((4, 5))
    for bad_label in (-1, 5, 99):
      labels = jnp.asarray([0, bad_label, 4, 2])
      value = _value(int_loss, logits, labels, 0.25)
      grad = _mean_grad(int_loss, logits, labels, 0.25)
      self.assertTrue(bool(jnp.isnan(value[1])), msg=bad_label)
      self.assertTrue(bool(jnp.all(jnp.isnan(grad[1]))), msg=bad_label)
      chex.assert_tree_all_finite((value[jnp.asarray([0, 2, 3])],
                                   grad[jnp.asarray([0, 2, 3])]))

  @parameterized.parameters(jnp.uint8, jnp.int8, jnp.int16, jnp.uint32)
  def test_narrow_label_dtypes_match_int32(self, label_dtype):
    # 250 classes exceed int8, and 300 would wrap around in uint8.
    for num_classes in (250, 300):
      logits, labels, one_hot = _random_problem((6, num_classes), seed=4)
      largest = min(num_classes - 1, int(jnp.iinfo(label_dtype).max))
      labels = jnp.minimum(labels, largest).at[0].set(largest)
      one_hot = jax.nn.one_hot(labels, num_classes)
      narrow = labels.astype(label_dtype)
      np.testing.assert_allclose(
          _value(int_loss, logits, narrow, 0.25),
          _value(int_loss, logits, labels, 0.25), rtol=1e-6)
      np.testing.assert_allclose(
          _mean_grad(int_loss, logits, narrow, 0.25),
          _oracle_logit_gradient(logits, one_hot, 0.25), atol=2e-6)

  def test_float64_alpha_keeps_precision_under_x64(self):
    logits, labels, one_hot = _random_problem((4, 7))
    with jax.enable_x64(True):
      logits64 = jnp.asarray(np.asarray(logits, np.float64))
      grad = _mean_grad(int_loss, logits64, labels, 0.3)
      chex.assert_type(grad, jnp.float64)
    np.testing.assert_allclose(
        grad, _oracle_logit_gradient(logits, one_hot, 0.3), atol=1e-12)

  def test_out_of_range_label_poisons_mean_gradient(self):
    logits, _, _ = _random_problem((4, 5))
    labels = jnp.asarray([0, 7, 4, 2])
    weights = jnp.ones((5, 5))
    grad = jax.jit(jax.grad(
        lambda w: jnp.mean(int_loss(logits @ w, labels, 0.3))))(weights)
    self.assertTrue(bool(jnp.all(jnp.isnan(grad))))


class WhereTest(parameterized.TestCase):

  def test_example_mask_matches_optax_and_zeroes_gradient(self):
    logits, labels, one_hot = _random_problem((6, 5))
    where = jnp.asarray([True, False, True, True, False, True])
    expected_value = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels, where=where)
    expected_grad = _oracle_logit_gradient(logits, one_hot, 0.3) * np.asarray(
        where)[:, None]
    for loss_fn, targets in ((int_loss, labels), (prob_loss, one_hot)):
      value = _value(loss_fn, logits, targets, 0.3, where=where)
      grad = _mean_grad(loss_fn, logits, targets, 0.3, where=where)
      np.testing.assert_allclose(value, expected_value, rtol=1e-6)
      np.testing.assert_allclose(grad, expected_grad, atol=2e-6)

  def test_masked_padding_with_bad_labels_and_nan_logits_is_ignored(self):
    logits, labels, _ = _random_problem((4, 5))
    logits = logits.at[3].set(jnp.nan)
    labels = labels.at[3].set(-1)
    where = jnp.asarray([True, True, True, False])
    value = _value(int_loss, logits, labels, 0.25, where=where)
    grad = _mean_grad(int_loss, logits, labels, 0.25, where=where)
    chex.assert_tree_all_finite((value, grad))
    self.assertEqual(float(value[3]), 0.0)
    np.testing.assert_array_equal(grad[3], np.zeros(5))

  def test_class_mask_matches_optax_value_and_oracle(self):
    logits, labels, one_hot = _random_problem((4, 6))
    class_mask = jnp.ones((4, 6), bool).at[:, 5].set(False).at[0, 4].set(False)
    labels = jnp.minimum(labels, 3)
    one_hot = jax.nn.one_hot(labels, 6)
    expected_value = optax.softmax_cross_entropy(logits, one_hot,
                                                 where=class_mask)
    masked_logits = np.where(np.asarray(class_mask), np.asarray(logits), -1e30)
    expected_grad = _oracle_logit_gradient(masked_logits, one_hot, 0.25)
    for loss_fn, targets in ((int_loss, labels), (prob_loss, one_hot)):
      value = _value(loss_fn, logits, targets, 0.25, where=class_mask)
      grad = _mean_grad(loss_fn, logits, targets, 0.25, where=class_mask)
      np.testing.assert_allclose(value, expected_value, rtol=1e-6)
      np.testing.assert_allclose(grad, expected_grad, atol=2e-6)


class BadInputTest(parameterized.TestCase):

  @parameterized.parameters(-0.1, 1.5, float("nan"), float("inf"))
  def test_invalid_alpha_raises(self, alpha):
    logits, labels, one_hot = _random_problem((2, 3))
    with pytest.raises(ValueError, match="alpha must lie in"):
      int_loss(logits, labels, alpha)
    with pytest.raises(ValueError, match="alpha must lie in"):
      prob_loss(logits, one_hot, jnp.asarray(alpha))
    with pytest.raises(ValueError, match="alpha must lie in"):
      pgt_optax.power_grad(alpha)

  @parameterized.parameters(jnp.bfloat16, jnp.float16, np.float32)
  def test_concrete_low_precision_alpha_accepted(self, alpha_dtype):
    logits, labels, _ = _random_problem((4, 5))
    alpha = jnp.asarray(0.25, alpha_dtype)  # 0.25 is exact in every dtype.
    # Not through the jitted helpers, so that alpha stays a concrete value.
    grad_fn = lambda a: jax.grad(lambda z: int_loss(z, labels, a).sum())
    expected = grad_fn(0.25)(logits)
    grad = grad_fn(alpha)(logits)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    pgt_optax.power_grad(alpha)
    with pytest.raises(ValueError, match="alpha must lie in"):
      int_loss(logits, labels, jnp.asarray(1.5, alpha_dtype))

  def test_non_scalar_alpha_raises(self):
    logits, labels, _ = _random_problem((2, 3))
    with pytest.raises(ValueError, match="scalar"):
      int_loss(logits, labels, jnp.asarray([0.1, 0.2]))

  def test_integer_labels_to_probability_loss_raise(self):
    logits, labels, _ = _random_problem((2, 3))
    with pytest.raises(ValueError, match="with_integer_labels"):
      prob_loss(logits, jax.nn.one_hot(labels, 3).astype(jnp.int32), 0.5)

  def test_probability_labels_to_integer_loss_raise(self):
    logits, _, one_hot = _random_problem((2, 3))
    with pytest.raises(ValueError, match="power_grad_softmax_cross_entropy"):
      int_loss(logits, one_hot, 0.5)

  def test_label_shape_mismatch_raises(self):
    logits, labels, one_hot = _random_problem((4, 3))
    with pytest.raises(ValueError, match=r"labels have shape \(3,\)"):
      int_loss(logits, labels[:3], 0.5)
    with pytest.raises(ValueError, match=r"labels have shape \(4, 2\)"):
      prob_loss(logits, one_hot[:, :2], 0.5)

  def test_bad_where_raises(self):
    logits, labels, _ = _random_problem((4, 3))
    with pytest.raises(ValueError, match="where has shape"):
      int_loss(logits, labels, 0.5, where=jnp.ones((3,), bool))
    with pytest.raises(ValueError, match="boolean"):
      int_loss(logits, labels, 0.5, where=jnp.ones((4,)))

  def test_bad_axis_and_logits_raise(self):
    logits, labels, _ = _random_problem((4, 3))
    with pytest.raises(ValueError, match="out of range"):
      int_loss(logits, labels, 0.5, axis=2)
    with pytest.raises(ValueError, match="single int"):
      int_loss(logits, labels, 0.5, axis=(0, 1))
    with pytest.raises(ValueError, match="floating dtype"):
      int_loss(logits.astype(jnp.int32), labels, 0.5)

