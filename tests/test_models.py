"""Tests for the Flax ResNets in experiments/models.py.

Shapes and parameter counts come from `jax.eval_shape`, so no large network is
initialised. Forward passes use variables drawn with NumPy into the shapes
that `init` would create, and NumPy inputs. With jax 0.10.2 on a 2-core CPU,
each distinct shape drawn with JAX's default threefry generator costs seconds
of XLA compilation. Two small models are initialised for real to test the
initialisers.
"""

import functools
import math

import chex
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import models

IMAGENET_NAMES = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "seresnet18", "seresnet50",
)
CIFAR_NAMES = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")

# Trainable parameters for 1,000 classes (ImageNet family) or 10 classes
# (CIFAR family and resnet_tiny). The five plain ImageNet counts are
# torchvision's. The SE counts add two dense layers with bias
# (C -> C/16 -> C) to every block.
EXPECTED_PARAM_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "seresnet18": 11_778_592,
    "seresnet50": 28_088_024,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet_tiny": 5_006,
}
# The same with norm="none", every normalisation layer replaced by the
# identity.
NORM_FREE_PARAM_COUNTS = {
    "resnet18": 11_679_912,
    "seresnet50": 28_034_904,
    "resnet20": 268_346,
}
FEATURE_WIDTHS = {
    "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
    "resnet152": 2048, "seresnet18": 512, "seresnet50": 2048,
    "resnet_tiny": 16,
}

# PRNG implementation for the two real initialisations. Compiling and running
# the jitted `init` of both models took 9 s of CPU time with 'rbg' keys and
# 50 s with the default threefry keys (jax 0.10.2, shared 2-core CPU).
_INIT_KEY_IMPL = "rbg"


def _num_classes(name):
  return 1000 if name in IMAGENET_NAMES else 10


def _count(tree):
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


def _abstract_forward(model, batch_shape):
  """Returns the shapes of the variables and of an eval-mode forward pass.

  `init_with_output` traces the network once for both.

  Returns:
    `(variables, logits, features)` as `jax.ShapeDtypeStruct` trees.
  """

  def forward(images):
    (logits, features), variables = model.init_with_output(
        jax.random.key(0), images, train=False, return_features=True
    )
    return variables, logits, features

  images = jax.ShapeDtypeStruct(batch_shape, jnp.float32)
  return jax.eval_shape(forward, images)


def _numpy_variables(model, image_shape, seed=0):
  """Draws variables with NumPy in the shapes and dtypes `model.init` gives.

  Kernels are He-normal with fan-in, so activations keep their scale with or
  without normalisation. Scales, biases and running statistics are perturbed
  away from their initial values so that mistakes in using them show.
  """
  images = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  abstract = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), images
  )
  rng = np.random.default_rng(seed)
  filled = {}
  for path, leaf in traverse_util.flatten_dict(abstract).items():
    shape, name = leaf.shape, path[-1]
    if name == "kernel":
      fan_in = math.prod(shape[:-1])
      value = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    elif name == "scale":
      value = 1.0 + 0.1 * rng.normal(size=shape)
    elif name == "var":
      value = rng.uniform(0.5, 1.5, shape)
    else:  # bias and mean
      value = 0.1 * rng.normal(size=shape)
    filled[path] = jnp.asarray(value, leaf.dtype)
  return traverse_util.unflatten_dict(filled)


def _normal_images(shape, seed):
  """Returns a NumPy array of standard normal float32 values."""
  rng = np.random.default_rng(seed)
  return rng.standard_normal(shape).astype(np.float32)


def _tiny_bottleneck_se(**options):
  """Returns a one-block bottleneck ResNet with an SE gate and ImageNet stem."""
  return models.ResNet(
      stage_sizes=(1,), block_cls=models.BottleneckBlock,
      stage_widths=(4,), stem_width=8, se_reduction=4, num_classes=3,
      **options,
  )


@pytest.fixture(scope="module")
def initialized_tiny():
  """Returns the variables of resnet_tiny and of `_tiny_bottleneck_se()`.

  Both come from a real `init` with zero_init_residual=True.
  """
  basic = models.create_model("resnet_tiny", 10, zero_init_residual=True)
  bottleneck = _tiny_bottleneck_se(zero_init_residual=True)
  images = jnp.zeros((1, 16, 16, 3))

  @jax.jit
  def init_both(key):
    basic_key, bottleneck_key = jax.random.split(key)
    return (
        basic.init(basic_key, images, train=False),
        bottleneck.init(bottleneck_key, images, train=False),
    )

  return init_both(jax.random.key(0, impl=_INIT_KEY_IMPL))


def test_model_names_cover_registry():
  assert isinstance(models.MODEL_NAMES, tuple)
  assert set(models.MODEL_NAMES) == set(EXPECTED_PARAM_COUNTS)


@pytest.mark.parametrize("name", list(EXPECTED_PARAM_COUNTS))
def test_param_count_and_output_shape(name):
  num_classes = _num_classes(name)
  model = models.create_model(name, num_classes)
  variables, logits, features = _abstract_forward(model, (3, 32, 32, 3))
  assert _count(variables["params"]) == EXPECTED_PARAM_COUNTS[name]
  chex.assert_shape(logits, (3, num_classes))
  chex.assert_type(logits, jnp.float32)
  chex.assert_shape(features, (3, FEATURE_WIDTHS.get(name, 64)))
  for leaf in jax.tree.leaves(variables):
    chex.assert_type(leaf, jnp.float32)


def test_param_count_cifar_projection_shortcut():
  # Option B adds a 1x1 convolution and its normalisation in the two blocks
  # that change shape: (16*32 + 2*32) + (32*64 + 2*64) = 2,752 parameters.
  model = models.create_model("resnet20", 10, shortcut="projection")
  variables, _, _ = _abstract_forward(model, (1, 32, 32, 3))
  assert _count(variables["params"]) == 269_722 + 2_752


def test_param_count_ten_classes():
  model = models.create_model("resnet50", 10)
  variables, _, _ = _abstract_forward(model, (1, 32, 32, 3))
  assert _count(variables["params"]) == 25_557_032 - 990 * (2048 + 1)


@pytest.mark.parametrize("name", ["resnet18", "seresnet50"])
def test_output_shape_224(name):
  model = models.create_model(name, 1000)
  _, logits, features = _abstract_forward(model, (2, 224, 224, 3))
  chex.assert_shape(logits, (2, 1000))
  chex.assert_type(logits, jnp.float32)
  chex.assert_shape(features, (2, FEATURE_WIDTHS[name]))


def test_bottleneck_stride_on_3x3_conv():
  model = models.create_model("resnet50", 1000)

  def capture(images):
    variables = model.init(jax.random.key(0), images, train=False)
    _, state = model.apply(
        variables, images, train=False, capture_intermediates=True,
        mutable=["intermediates"],
    )
    return state["intermediates"]

  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  captured = jax.eval_shape(capture, images)
  block = captured["stage2_block0"]
  chex.assert_shape(captured["stem_conv"]["__call__"], (1, 112, 112, 64))
  chex.assert_shape(
      captured["stage1_block0"]["conv1"]["__call__"], (1, 56, 56, 64)
  )
  chex.assert_shape(block["conv1"]["__call__"], (1, 56, 56, 128))
  chex.assert_shape(block["conv2"]["__call__"], (1, 28, 28, 128))
  chex.assert_shape(block["shortcut_conv"]["__call__"], (1, 28, 28, 512))


def test_resnet18_forward_small_images():
  model = models.create_model("resnet18", 1000)
  variables = _numpy_variables(model, (32, 32, 3))
  # A stem kernel of ones makes each stem output the sum of its input window,
  # which shows the padding.
  stem_kernel = variables["params"]["stem_conv"]["kernel"]
  variables["params"]["stem_conv"]["kernel"] = np.ones_like(stem_kernel)
  images = _normal_images((2, 32, 32, 3), seed=1)

  @jax.jit
  def forward(v, x):
    train_logits, state = model.apply(
        v, x, train=True, mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda module, _: module.name == "stem_conv",
    )
    eval_logits = model.apply(v, x, train=False)
    return train_logits, state, eval_logits

  train_logits, state, eval_logits = forward(variables, images)
  chex.assert_shape([train_logits, eval_logits], (2, 1000))
  chex.assert_type([train_logits, eval_logits], jnp.float32)
  chex.assert_tree_all_finite((train_logits, eval_logits, state))
  chex.assert_trees_all_equal_shapes(
      state["batch_stats"], variables["batch_stats"]
  )
  # The running averages moved towards the batch statistics.
  stem_mean = state["batch_stats"]["stem_norm"]["mean"]
  initial_mean = variables["batch_stats"]["stem_norm"]["mean"]
  assert not np.allclose(stem_mean, initial_mean)

  # torchvision pads the 7x7 stride-2 stem by 3 on every side, so output
  # (i, j) sums input rows and columns 2i-3 .. 2i+3 that exist. 'SAME'
  # padding would pad 2 before and 3 after instead.
  (stem,) = state["intermediates"]["stem_conv"]["__call__"]
  chex.assert_shape(stem, (2, 16, 16, 64))
  for i, j in [(0, 0), (1, 2), (15, 15)]:
    rows = slice(max(2 * i - 3, 0), 2 * i + 4)
    columns = slice(max(2 * j - 3, 0), 2 * j + 4)
    window_sums = images[:, rows, columns, :].sum(axis=(1, 2, 3))
    np.testing.assert_allclose(
        stem[:, i, j, 0], window_sums, rtol=1e-5, atol=1e-4
    )


def test_bfloat16_forward_resnet20():
  model = models.create_model("resnet20", 10, dtype=jnp.bfloat16)
  variables = _numpy_variables(model, (32, 32, 3))
  images = _normal_images((4, 32, 32, 3), seed=2)
  forward = jax.jit(
      functools.partial(
          model.apply, train=True, return_features=True,
          mutable=["batch_stats"],
      )
  )
  (logits, features), updates = forward(variables, images)
  chex.assert_shape(logits, (4, 10))
  chex.assert_type(logits, jnp.float32)
  chex.assert_type(features, jnp.bfloat16)
  chex.assert_tree_all_finite((logits, features, updates))
  for leaf in jax.tree.leaves(updates):
    chex.assert_type(leaf, jnp.float32)


def test_bfloat16_close_to_float32():
  half_model = _tiny_bottleneck_se(dtype=jnp.bfloat16)
  full_model = _tiny_bottleneck_se()
  variables = _numpy_variables(full_model, (32, 32, 3))
  images = _normal_images((4, 32, 32, 3), seed=2)

  @jax.jit
  def forward(v, x):
    return half_model.apply(v, x, train=False), full_model.apply(
        v, x, train=False
    )

  eval_half, eval_full = forward(variables, images)
  chex.assert_type(eval_half, jnp.float32)
  chex.assert_tree_all_finite(eval_half)
  # bfloat16 keeps 8 significant bits. Normalising with the running averages
  # avoids the ill-conditioning of batch statistics over a few values, so the
  # eval logits must stay close to the float32 ones.
  scale = float(np.max(np.abs(eval_full)))
  chex.assert_trees_all_close(eval_half, eval_full, atol=0.05 * scale)


def test_pmap_batch_stats_match_single_device():
  devices = jax.devices()[:4]
  assert len(devices) == 4
  per_device = 4
  images = _normal_images((4, per_device, 8, 8, 3), seed=3)
  # A different mean on every device makes per-device statistics differ
  # clearly from whole-batch ones, so unsynchronised statistics fail below.
  images = images + np.arange(4.0, dtype=np.float32)[:, None, None, None, None]
  whole_batch = images.reshape((4 * per_device, 8, 8, 3))

  single_model = models.create_model("resnet_tiny", 10)
  variables = _numpy_variables(single_model, (8, 8, 3))
  expected_logits, expected_updates = jax.jit(
      functools.partial(single_model.apply, train=True, mutable=["batch_stats"])
  )(variables, whole_batch)

  synced_model = models.create_model("resnet_tiny", 10, axis_name="batch")

  def forward(v, x):
    return synced_model.apply(v, x, train=True, mutable=["batch_stats"])

  logits, updates = jax.pmap(
      forward, axis_name="batch", in_axes=(None, 0), devices=devices
  )(variables, images)
  chex.assert_trees_all_close(
      np.asarray(logits).reshape(expected_logits.shape), expected_logits,
      atol=1e-4, rtol=1e-4,
  )
  for replica in range(4):
    chex.assert_trees_all_close(
        jax.tree.map(lambda leaf, r=replica: leaf[r], updates),
        expected_updates, atol=1e-5, rtol=1e-5,
    )


@pytest.mark.parametrize("name", ["resnet18", "seresnet50", "resnet20"])
def test_norm_free_same_convolutions(name):
  num_classes = _num_classes(name)
  with_norm, _, _ = _abstract_forward(
      models.create_model(name, num_classes), (1, 32, 32, 3)
  )
  norm_free, _, _ = _abstract_forward(
      models.create_model(name, num_classes, norm="none"), (1, 32, 32, 3)
  )
  assert set(norm_free) == {"params"}

  kernels = models.conv_kernels(with_norm["params"])
  free_kernels = models.conv_kernels(norm_free["params"])
  assert list(free_kernels) == list(kernels)
  chex.assert_trees_all_equal_shapes(free_kernels, kernels)

  paths = traverse_util.flatten_dict(norm_free["params"], sep="/")
  assert not [path for path in paths if "norm" in path]
  assert not [path for path in free_kernels if path.replace("kernel", "bias")
              in paths]
  # Every normalised channel has a scale and a bias as parameters, and a mean
  # and a variance as batch statistics.
  removed = _count(with_norm["params"]) - _count(norm_free["params"])
  assert removed == _count(with_norm["batch_stats"])
  assert _count(norm_free["params"]) == NORM_FREE_PARAM_COUNTS[name]


def test_norm_free_forward_needs_no_mutable():
  model = models.create_model("resnet_tiny", 10, norm="none")
  variables = _numpy_variables(model, (8, 8, 3))
  images = _normal_images((2, 8, 8, 3), seed=4)

  @jax.jit
  def forward(v, x):
    return model.apply(v, x, train=True), model.apply(v, x, train=False)

  train_logits, eval_logits = forward(variables, images)
  chex.assert_shape(train_logits, (2, 10))
  chex.assert_tree_all_finite(train_logits)
  chex.assert_trees_all_equal(train_logits, eval_logits)


def test_conv_kernel_names():
  variables, _, _ = _abstract_forward(
      models.create_model("resnet50", 1000), (1, 32, 32, 3)
  )
  kernels = models.conv_kernels(variables["params"])
  # Stem, 3 convolutions in each of 16 blocks and 4 projection shortcuts.
  assert len(kernels) == 1 + 3 * 16 + 4
  chex.assert_shape(kernels["stem_conv/kernel"], (7, 7, 3, 64))
  chex.assert_shape(kernels["stage1_block0/conv1/kernel"], (1, 1, 64, 64))
  chex.assert_shape(kernels["stage4_block2/conv3/kernel"], (1, 1, 512, 2048))
  chex.assert_shape(
      kernels["stage2_block0/shortcut_conv/kernel"], (1, 1, 256, 512)
  )
  assert "classifier/kernel" not in kernels


def test_se_layer_shapes():
  variables, _, _ = _abstract_forward(
      models.create_model("seresnet50", 1000), (1, 32, 32, 3)
  )
  se = variables["params"]["stage1_block0"]["se"]
  chex.assert_shape(se["reduce"]["kernel"], (256, 16))
  chex.assert_shape(se["reduce"]["bias"], (16,))
  chex.assert_shape(se["expand"]["kernel"], (16, 256))
  chex.assert_shape(se["expand"]["bias"], (256,))


def _zero_block_params(block, images):
  abstract = jax.eval_shape(
      lambda x: block.init(jax.random.key(0), x), images
  )["params"]
  return jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), abstract)


def test_se_gate_on_residual_branch():
  # A closed gate zeroes the residual branch, so the block returns
  # relu(shortcut). A gate after the addition would return zeros instead.
  conv = functools.partial(nn.Conv, use_bias=False)
  block = models.BasicBlock(
      filters=8, strides=1, conv=conv, norm=None, se_reduction=4
  )
  images = _normal_images((2, 4, 4, 8), seed=5)
  params = _zero_block_params(block, images)
  params["conv1"]["kernel"] = np.ones_like(params["conv1"]["kernel"])
  params["conv2"]["kernel"] = np.ones_like(params["conv2"]["kernel"])
  params["se"]["expand"]["bias"] = np.full((8,), -100.0, np.float32)
  apply_block = jax.jit(block.apply)
  outputs = apply_block({"params": params}, images)
  chex.assert_trees_all_close(outputs, np.maximum(images, 0.0), atol=1e-6)

  # An open gate (bias +100) passes the residual branch unchanged.
  params["se"]["expand"]["bias"] = np.full((8,), 100.0, np.float32)
  no_se_block = models.BasicBlock(filters=8, strides=1, conv=conv, norm=None)
  no_se_params = {key: params[key] for key in ("conv1", "conv2")}
  chex.assert_trees_all_close(
      apply_block({"params": params}, images),
      jax.jit(no_se_block.apply)({"params": no_se_params}, images),
      rtol=1e-6,
  )


def test_zero_pad_shortcut_subsamples_and_pads():
  conv = functools.partial(nn.Conv, use_bias=False)
  block = models.BasicBlock(
      filters=6, strides=2, conv=conv, norm=None, shortcut="zero_pad"
  )
  images = _normal_images((2, 5, 5, 3), seed=6)
  params = _zero_block_params(block, images)
  assert set(params) == {"conv1", "conv2"}
  outputs = jax.jit(block.apply)({"params": params}, images)
  chex.assert_shape(outputs, (2, 3, 3, 6))
  subsampled = np.maximum(np.asarray(images)[:, ::2, ::2, :], 0.0)
  expected = np.concatenate([subsampled, np.zeros((2, 3, 3, 3))], axis=-1)
  chex.assert_trees_all_equal(outputs, expected)


def test_zero_init_residual(initialized_tiny):
  for variables, last_norm in zip(initialized_tiny, ("norm2", "norm3")):
    params = variables["params"]
    blocks = [name for name in params if name.startswith("stage")]
    assert blocks
    for block in blocks:
      last_scale = params[block][last_norm]["scale"]
      first_scale = params[block]["norm1"]["scale"]
      chex.assert_trees_all_equal(last_scale, np.zeros_like(last_scale))
      chex.assert_trees_all_equal(first_scale, np.ones_like(first_scale))
    stem_scale = params["stem_norm"]["scale"]
    chex.assert_trees_all_equal(stem_scale, np.ones_like(stem_scale))


def test_init_matches_torchvision(initialized_tiny):
  basic_params = initialized_tiny[0]["params"]
  # Kaiming normal with fan-out: std = sqrt(2 / (3 * 3 * 16)). The estimate
  # from 2,304 draws has a relative standard error of about 1.5%.
  kernel = basic_params["stage3_block0"]["conv2"]["kernel"]
  np.testing.assert_allclose(
      float(np.std(kernel)), math.sqrt(2.0 / (9 * 16)), rtol=0.06
  )
  # PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for the
  # classifier (fan-in 16) and for both SE layers.
  bottleneck_params = initialized_tiny[1]["params"]
  se = bottleneck_params["stage1_block0"]["se"]
  layers = [
      (basic_params["classifier"], 16),
      (se["reduce"], 16),
      (se["expand"], 4),
  ]
  for layer, fan_in in layers:
    bound = 1.0 / math.sqrt(fan_in)
    for name in ("kernel", "bias"):
      values = np.asarray(layer[name])
      assert np.max(np.abs(values)) <= bound
      assert np.max(np.abs(values)) > 0.1 * bound
    # A uniform distribution on [-bound, bound] has std bound / sqrt(3).
    assert np.std(layer["kernel"]) > 0.5 * bound / math.sqrt(3.0)
  norm = basic_params["stage1_block0"]["norm1"]
  chex.assert_trees_all_equal(norm["bias"], np.zeros_like(norm["bias"]))
  batch_stats = initialized_tiny[0]["batch_stats"]["stem_norm"]
  chex.assert_trees_all_equal(batch_stats["mean"], np.zeros(4, np.float32))
  chex.assert_trees_all_equal(batch_stats["var"], np.ones(4, np.float32))


class FeaturesTest(chex.TestCase):

  @chex.variants(with_jit=True)
  def test_features_feed_classifier(self):
    model = models.create_model("resnet_tiny", 7)
    variables = _numpy_variables(model, (8, 8, 3))
    images = _normal_images((3, 8, 8, 3), seed=7)

    @self.variant
    def forward(v, x):
      outputs, state = model.apply(
          v, x, train=False, return_features=True, mutable=["intermediates"]
      )
      return outputs, state, model.apply(v, x, train=False)

    (logits, features), state, plain_logits = forward(variables, images)
    chex.assert_shape(features, (3, 16))
    (sown,) = state["intermediates"]["features"]
    chex.assert_trees_all_equal(sown, features)

    classifier = variables["params"]["classifier"]
    expected = features @ classifier["kernel"] + classifier["bias"]
    chex.assert_trees_all_close(logits, expected, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_equal(plain_logits, logits)


def test_unknown_model_name():
  with pytest.raises(ValueError, match="'resnet19'.*resnet18, resnet34"):
    models.create_model("resnet19", 10)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"norm": "layer"}, "Unknown norm 'layer'"),
        ({"shortcut": "identity"}, "Unknown shortcut 'identity'"),
        ({"dtype": jnp.int32}, "floating-point"),
        ({"dtype": "not_a_dtype"}, "not a JAX dtype"),
        ({"norm": "none", "zero_init_residual": True}, "needs norm='batch'"),
    ],
)
def test_invalid_option(options, message):
  with pytest.raises(ValueError, match=message):
    models.create_model("resnet18", 10, **options)


@pytest.mark.parametrize("num_classes", [0, -3, 2.0, True])
def test_invalid_num_classes(num_classes):
  with pytest.raises(ValueError, match="num_classes must be a positive"):
    models.create_model("resnet20", num_classes)


def test_numpy_integer_num_classes():
  model = models.create_model("resnet_tiny", np.int64(5))
  _, logits, _ = _abstract_forward(model, (2, 8, 8, 3))
  chex.assert_shape(logits, (2, 5))


def test_unknown_keyword_option():
  with pytest.raises(TypeError, match="width"):
    models.create_model("resnet20", 10, width=2)


def test_images_must_be_nhwc():
  model = models.create_model("resnet_tiny", 10)
  with pytest.raises(ValueError, match="rank 4"):
    model.apply(_numpy_variables(model, (8, 8, 3)), jnp.zeros((8, 8, 3)),
                train=False)
