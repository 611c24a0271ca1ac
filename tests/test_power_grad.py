"""Tests for power_grad, the PGT door that sits first in an optax chain."""

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pgt_optax

NUM_CLASSES = 5
NUM_DEVICES = 8


def _init_params(seed=0, num_inputs=6, num_hidden=16):
  rng = np.random.default_rng(seed)
  return {
      "hidden": {
          "kernel": jnp.asarray(rng.normal(size=(num_inputs, num_hidden)) / 2,
                                jnp.float32),
          "bias": jnp.zeros((num_hidden,), jnp.float32),
      },
      "output": {
          "kernel": jnp.asarray(rng.normal(size=(num_hidden, NUM_CLASSES)),
                                jnp.float32),
          "bias": jnp.asarray(rng.normal(size=(NUM_CLASSES,)) * 0.1,
                              jnp.float32),
      },
  }


def _apply(params, inputs):
  hidden = jnp.tanh(inputs @ params["hidden"]["kernel"] +
                    params["hidden"]["bias"])
  return hidden @ params["output"]["kernel"] + params["output"]["bias"]


def _batch(seed, batch_size=16, num_inputs=6):
  rng = np.random.default_rng(100 + seed)
  inputs = jnp.asarray(rng.normal(size=(batch_size, num_inputs)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, size=(batch_size,)))
  return inputs, labels


def _optimizer():
  return optax.chain(
      optax.adaptive_grad_clip(0.01),
      optax.sgd(0.1, momentum=0.9, nesterov=True),
  )


def _loss_door_grads(params, inputs, labels, alpha, where=None):
  """Gradients of the mean PGT loss over unmasked examples: the loss door."""
  if jnp.issubdtype(labels.dtype, jnp.integer):
    loss_fn = pgt_optax.power_grad_softmax_cross_entropy_with_integer_labels
  else:
    loss_fn = pgt_optax.power_grad_softmax_cross_entropy

  def mean_loss(p):
    losses = loss_fn(_apply(p, inputs), labels, alpha, where=where)
    count = labels.shape[0] if where is None else jnp.sum(where)
    return jnp.sum(losses) / count

  return jax.grad(mean_loss)(params)


def _oracle_grads(params, inputs, labels, alpha, where=None):
  """float64 gradients of the mean temperature-scaled cross-entropy."""
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)),
                            params)
    inputs64 = jnp.asarray(np.asarray(inputs, np.float64))
    if jnp.issubdtype(labels.dtype, jnp.integer):
      probabilities = jax.nn.one_hot(labels, NUM_CLASSES, dtype=jnp.float64)
    else:
      probabilities = jnp.asarray(np.asarray(labels, np.float64))
    weights = (jnp.ones(labels.shape[0]) if where is None else
               jnp.asarray(np.asarray(where, np.float64)))

    def scaled_loss(p):
      ce = optax.softmax_cross_entropy(alpha * _apply(p, inputs64),
                                       probabilities)
      return jnp.sum(ce * weights) / (alpha * jnp.sum(weights))

    grads = jax.jit(jax.grad(scaled_loss))(params64)
    return jax.tree.map(np.asarray, grads)


class PowerGradTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
      ("integer", None), ("probability", None), ("integer", "mask"),
      ("smoothed", None))
  def test_chain_updates_equal_loss_door(self, label_kind, mask):
    alpha = 0.25
    params = _init_params()
    inputs, labels = _batch(0)
    if label_kind == "probability":
      labels = jax.nn.one_hot(labels, NUM_CLASSES)
    elif label_kind == "smoothed":
      labels = optax.smooth_labels(jax.nn.one_hot(labels, NUM_CLASSES), 0.1)
    where = None
    if mask:
      where = jnp.arange(labels.shape[0]) % 3 != 0

    transform_chain = optax.chain(pgt_optax.power_grad(alpha), _optimizer())
    loss_chain = _optimizer()

    @self.variant
    def transform_step(params, opt_state, inputs, labels, where):
      logits, pullback = jax.vjp(lambda p: _apply(p, inputs), params)
      updates, opt_state = transform_chain.update(
          None, opt_state, params, logits=logits, labels=labels,
          pullback=pullback, where=where)
      return optax.apply_updates(params, updates), opt_state

    @self.variant
    def loss_step(params, opt_state, inputs, labels, where):
      grads = _loss_door_grads(params, inputs, labels, alpha, where)
      updates, opt_state = loss_chain.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    transform_params, loss_params = params, params
    transform_state = transform_chain.init(params)
    loss_state = loss_chain.init(params)
    for step in range(3):
      step_inputs, _ = _batch(step)
      transform_params, transform_state = transform_step(
          transform_params, transform_state, step_inputs, labels, where)
      loss_params, loss_state = loss_step(
          loss_params, loss_state, step_inputs, labels, where)

    chex.assert_trees_all_equal_shapes_and_dtypes(transform_params, params)
    chex.assert_trees_all_close(transform_params, loss_params, atol=1e-6,
                                rtol=1e-5)
    # The parameters moved, so the comparison is not between two no-ops.
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                         transform_params, params)
    self.assertGreater(max(jax.tree.leaves(moved)), 1e-3)

  @parameterized.parameters(1.0, 0.92, 0.3, 0.05)
  def test_gradients_equal_float64_oracle(self, alpha):
    params = _init_params(seed=1)
    inputs, labels = _batch(1)
    where = jnp.arange(16) < 11
    tx = pgt_optax.power_grad(alpha)

    @jax.jit
    def grads_fn(params, inputs, labels, where):
      logits, pullback = jax.vjp(lambda p: _apply(p, inputs), params)
      grads, _ = tx.update(None, tx.init(params), params, logits=logits,
                           labels=labels, pullback=pullback, where=where)
      return grads

    grads = grads_fn(params, inputs, labels, where)
    expected = _oracle_grads(params, inputs, labels, alpha, where)
    chex.assert_trees_all_close(grads, expected, atol=2e-6, rtol=2e-5)

  def test_alpha_one_equals_optax_cross_entropy_gradients(self):
    params = _init_params()
    inputs, labels = _batch(2)
    logits, pullback = jax.vjp(lambda p: _apply(p, inputs), params)
    tx = pgt_optax.power_grad(1.0)
    grads, _ = tx.update(None, tx.init(params), params, logits=logits,
                         labels=labels, pullback=pullback)
    expected = jax.grad(lambda p: jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(
            _apply(p, inputs), labels)))(params)
    chex.assert_trees_all_close(grads, expected, atol=1e-7, rtol=1e-6)

  def test_is_not_an_identity(self):
    params = _init_params()
    inputs, labels = _batch(3)
    logits, pullback = jax.vjp(lambda p: _apply(p, inputs), params)
    tx = pgt_optax.power_grad(0.05)
    grads, _ = tx.update(None, tx.init(params), params, logits=logits,
                         labels=labels, pullback=pullback)
    ordinary = jax.grad(lambda p: jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(
            _apply(p, inputs), labels)))(params)
    difference = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                              grads, ordinary)
    self.assertGreater(max(jax.tree.leaves(difference)), 1e-2)

  def test_pullback_with_aux_state(self):
    params = _init_params()
    inputs, labels = _batch(4)

    def apply_with_state(p):
      logits = _apply(p, inputs)
      return logits, {"mean_logit": jnp.mean(logits)}

    logits, pullback, aux = jax.vjp(apply_with_state, params, has_aux=True)
    tx = pgt_optax.power_grad(0.3)
    grads, _ = tx.update(None, tx.init(params), params, logits=logits,
                         labels=labels, pullback=pullback)
    chex.assert_trees_all_close(
        grads, _loss_door_grads(params, inputs, labels, 0.3), atol=1e-6)
    self.assertIn("mean_logit", aux)

  def test_bfloat16_model_gives_float32_parameter_gradients(self):
    params = _init_params()
    inputs, labels = _batch(5)

    def apply_bf16(p):
      return _apply(jax.tree.map(lambda x: x.astype(jnp.bfloat16), p),
                    inputs.astype(jnp.bfloat16))

    logits, pullback = jax.vjp(apply_bf16, params)
    chex.assert_type(logits, jnp.bfloat16)
    tx = pgt_optax.power_grad(0.25)
    grads, _ = tx.update(None, tx.init(params), params, logits=logits,
                         labels=labels, pullback=pullback)
    chex.assert_trees_all_equal_dtypes(grads, params)
    chex.assert_tree_all_finite(grads)
    chex.assert_trees_all_close(
        grads, _oracle_grads(params, inputs, labels, 0.25), atol=3e-2)

  def test_no_retracing_across_steps(self):
    tx = optax.chain(pgt_optax.power_grad(0.25), _optimizer())
    params = _init_params()
    opt_state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, opt_state, inputs, labels):
      logits, pullback = jax.vjp(lambda p: _apply(p, inputs), params)
      updates, opt_state = tx.update(None, opt_state, params, logits=logits,
                                     labels=labels, pullback=pullback)
      return optax.apply_updates(params, updates), opt_state

    for seed in range(4):
      inputs, labels = _batch(seed)
      params, opt_state = step(params, opt_state, inputs, labels)
    chex.assert_tree_all_finite(params)

  def test_traced_alpha_grid_by_vmap(self):
    params = _init_params()
    inputs, labels = _batch(6)

    def grads_for(alpha):
      tx = pgt_optax.power_grad(alpha)
      logits, pullback = jax.vjp(lambda p: _apply(p, inputs), params)
      grads, _ = tx.update(None, tx.init(params), params, logits=logits,
                           labels=labels, pullback=pullback)
      return grads

    alphas = (1.0, 0.25, 0.05)
    grads = jax.jit(jax.vmap(grads_for))(jnp.asarray(alphas))
    for index, alpha in enumerate(alphas):
      chex.assert_trees_all_close(
          jax.tree.map(lambda g, i=index: g[i], grads),
          _oracle_grads(params, inputs, labels, alpha), atol=2e-6, rtol=2e-5)


class PmapTest(chex.TestCase):

  @chex.variants(with_pmap=True)
  def test_update_under_pmap_variant(self):
    params = _init_params()
    inputs, labels = _batch(7)
    tx = pgt_optax.power_grad(0.3)

    @self.variant
    def grads_fn(params, inputs, labels):
      logits, pullback = jax.vjp(lambda p: _apply(p, inputs), params)
      grads, _ = tx.update(None, tx.init(params), params, logits=logits,
                           labels=labels, pullback=pullback)
      return grads

    chex.assert_trees_all_close(
        grads_fn(params, inputs, labels),
        _oracle_grads(params, inputs, labels, 0.3), atol=2e-6, rtol=2e-5)

  @parameterized.parameters(False, True)
  def test_doors_agree_across_devices(self, with_mask):
    alpha = 0.25
    params = _init_params()
    per_device = 4
    inputs, labels = _batch(8, batch_size=NUM_DEVICES * per_device)
    where = jnp.ones(labels.shape, bool)
    if with_mask:
      # Unequal counts per device: the mean must still be over all examples.
      where = jnp.arange(labels.shape[0]) % 5 != 1
    transform_chain = optax.chain(
        pgt_optax.power_grad(alpha, axis_name="batch"), _optimizer())
    loss_chain = _optimizer()

    def transform_step(params, opt_state, inputs, labels, where):
      logits, pullback = jax.vjp(lambda p: _apply(p, inputs), params)
      updates, opt_state = transform_chain.update(
          None, opt_state, params, logits=logits, labels=labels,
          pullback=pullback, where=where)
      return optax.apply_updates(params, updates), opt_state

    def loss_step(params, opt_state, inputs, labels, where):
      local_count = jnp.sum(where)
      global_count = jax.lax.psum(local_count, "batch")
      grads = _loss_door_grads(params, inputs, labels, alpha, where)
      # The loss door divides by the local count; rescale to the global mean.
      grads = jax.tree.map(lambda g: g * local_count / global_count, grads)
      grads = jax.lax.psum(grads, "batch")
      updates, opt_state = loss_chain.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    def shard(x):
      return x.reshape((NUM_DEVICES, per_device) + x.shape[1:])

    def replicate(tree):
      return jax.tree.map(lambda x: jnp.stack([x] * NUM_DEVICES), tree)

    devices = jax.devices()[:NUM_DEVICES]
    sharded = (shard(inputs), shard(labels), shard(where))
    results = []
    for step_fn, chain in ((transform_step, transform_chain),
                           (loss_step, loss_chain)):
      pmapped = jax.pmap(step_fn, axis_name="batch", devices=devices)
      new_params, _ = pmapped(replicate(params), replicate(chain.init(params)),
                              *sharded)
      results.append(new_params)

    chex.assert_trees_all_close(results[0], results[1], atol=1e-6, rtol=1e-5)
    # Every replica holds the same parameters.
    for leaf in jax.tree.leaves(results[0]):
      np.testing.assert_array_equal(leaf[0], leaf[-1])
    # And they equal one full-batch step on a single device.
    single_chain = optax.chain(pgt_optax.power_grad(alpha), _optimizer())
    logits, pullback = jax.vjp(lambda p: _apply(p, inputs), params)
    updates, _ = single_chain.update(
        None, single_chain.init(params), params, logits=logits, labels=labels,
        pullback=pullback, where=where)
    chex.assert_trees_all_close(
        jax.tree.map(lambda x: x[0], results[0]),
        optax.apply_updates(params, updates), atol=1e-6, rtol=1e-5)


class ShardMapTest(parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_shard_map_gradients_equal_single_device(self, check_vma):
    num_devices = 4
    mesh = jax.make_mesh((num_devices,), ("batch",),
                         axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:num_devices])
    params = _init_params()
    inputs, labels = _batch(10, batch_size=4 * num_devices)
    where = jnp.arange(labels.shape[0]) % 3 != 2
    tx = pgt_optax.power_grad(0.25, axis_name="batch")

    def grads_fn(params, inputs, labels, where):
      logits, pullback = jax.vjp(lambda p: _apply(p, inputs), params)
      grads, _ = tx.update(None, tx.init(params), params, logits=logits,
                           labels=labels, pullback=pullback, where=where)
      return grads

    batch_spec = jax.sharding.PartitionSpec("batch")
    sharded = jax.jit(jax.shard_map(
        grads_fn, mesh=mesh,
        in_specs=(jax.sharding.PartitionSpec(), batch_spec, batch_spec,
                  batch_spec),
        out_specs=jax.sharding.PartitionSpec(), check_vma=check_vma))
    grads = sharded(params, inputs, labels, where)

    single = pgt_optax.power_grad(0.25)
    logits, pullback = jax.vjp(lambda p: _apply(p, inputs), params)
    expected, _ = single.update(None, single.init(params), params,
                                logits=logits, labels=labels,
                                pullback=pullback, where=where)
    chex.assert_trees_all_close(grads, expected, atol=1e-6, rtol=1e-5)


class ScheduleTest(parameterized.TestCase):

  def test_alpha_schedule_with_inject_hyperparams(self):
    schedule = optax.linear_schedule(1.0, 0.25, transition_steps=2)
    tx = optax.inject_hyperparams(
        pgt_optax.power_grad, static_args=("axis", "axis_name"))(
            alpha=schedule)
    params = _init_params()
    opt_state = tx.init(params)

    @jax.jit
    def grads_fn(opt_state, inputs, labels):
      logits, pullback = jax.vjp(lambda p: _apply(p, inputs), params)
      return tx.update(None, opt_state, params, logits=logits, labels=labels,
                       pullback=pullback)

    for step, alpha in enumerate((1.0, 0.625, 0.25)):
      inputs, labels = _batch(step)
      grads, opt_state = grads_fn(opt_state, inputs, labels)
      chex.assert_trees_all_close(
          grads, _oracle_grads(params, inputs, labels, alpha), atol=2e-6,
          rtol=2e-5)


class MisuseTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.params = _init_params()
    inputs, self.labels = _batch(9)
    self.logits, self.pullback = jax.vjp(lambda p: _apply(p, inputs),
                                         self.params)
    self.tx = optax.chain(pgt_optax.power_grad(0.25), _optimizer())
    self.opt_state = self.tx.init(self.params)

  def test_gradients_as_updates_raise(self):
    grads = jax.tree.map(jnp.zeros_like, self.params)
    with pytest.raises(ValueError, match="must come first in the chain"):
      self.tx.update(grads, self.opt_state, self.params, logits=self.logits,
                     labels=self.labels, pullback=self.pullback)

  def test_placed_after_another_transformation_raises(self):
    tx = optax.chain(optax.scale(1.0), pgt_optax.power_grad(0.25))
    grads = jax.tree.map(jnp.zeros_like, self.params)
    with pytest.raises(ValueError, match="updates=None"):
      tx.update(grads, tx.init(self.params), self.params, logits=self.logits,
                labels=self.labels, pullback=self.pullback)

  @parameterized.parameters("logits", "labels", "pullback")
  def test_missing_keyword_raises(self, missing):
    keywords = dict(logits=self.logits, labels=self.labels,
                    pullback=self.pullback)
    del keywords[missing]
    with pytest.raises(ValueError, match=f"keyword arguments {missing}"):
      self.tx.update(None, self.opt_state, self.params, **keywords)

  def test_plain_update_without_keywords_raises(self):
    with pytest.raises(ValueError, match="logits, labels, pullback"):
      self.tx.update(None, self.opt_state, self.params)

  def test_pullback_not_callable_raises(self):
    with pytest.raises(ValueError, match="pullback must be the function"):
      self.tx.update(None, self.opt_state, self.params, logits=self.logits,
                     labels=self.labels, pullback=self.params)

  def test_pullback_over_two_primals_raises(self):
    inputs, _ = _batch(9)
    logits, pullback = jax.vjp(_apply, self.params, inputs)
    with pytest.raises(ValueError, match="returned 2 cotangents"):
      self.tx.update(None, self.opt_state, self.params, logits=logits,
                     labels=self.labels, pullback=pullback)

  def test_class_mask_as_where_raises(self):
    with pytest.raises(ValueError, match="one flag per example"):
      self.tx.update(None, self.opt_state, self.params, logits=self.logits,
                     labels=self.labels, pullback=self.pullback,
                     where=jnp.ones(self.logits.shape, bool))

  def test_label_shape_mismatch_raises(self):
    with pytest.raises(ValueError, match="labels have shape"):
      self.tx.update(None, self.opt_state, self.params, logits=self.logits,
                     labels=self.labels[:-1], pullback=self.pullback)

  @parameterized.parameters(((0, 1),), (1.0,), ("-1",))
  def test_invalid_axis_raises_at_construction(self, axis):
    with pytest.raises(ValueError, match="axis must be a single int"):
      pgt_optax.power_grad(0.25, axis=axis)

  @parameterized.parameters(-0.1, 1.5, float("nan"))
  def test_invalid_alpha_raises_at_construction(self, alpha):
    with pytest.raises(ValueError, match=str(alpha)):
      pgt_optax.power_grad(alpha)
