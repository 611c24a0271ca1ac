"""Flax ResNets: the ImageNet, squeeze-and-excitation and CIFAR families.

Every network is one `ResNet` module configured by a `functools.partial`, and
`create_model(name, num_classes, ...)` is the entry point for the training
program and for users. All variants share these conventions:

* Images are NHWC. Call `model.apply(variables, images, train=...)`, where
  `train` is a required keyword, with `mutable=['batch_stats']` when
  `train=True` and batch normalisation is on.
* Convolutions have no bias and use He (Kaiming) normal initialisation with
  fan-out, as torchvision does. Batch normalisation uses momentum 0.9 and
  epsilon 1e-5, the PyTorch defaults (PyTorch writes the momentum as 0.1).
  Unlike PyTorch, flax.linen.BatchNorm keeps a running average of the biased
  batch variance.
* The logits are always float32. With `dtype=jnp.bfloat16` the whole network
  computes in bfloat16 on float32 parameters, and only the logits are cast up.
* The pooled features in front of the classifier are sown as
  `intermediates/features` and are also returned by `return_features=True`.
* Parameter names are stable paths: `stem_conv/kernel`,
  `stage1_block0/conv1/kernel`, `stage2_block0/shortcut_conv/kernel`,
  `stage1_block0/se/reduce/kernel`, `classifier/kernel`. `conv_kernels`
  collects every convolution kernel by path.

Trainable parameter counts for 1,000 classes (10 for the CIFAR family),
measured with `jax.eval_shape` and checked in tests/test_models.py. With
`norm='none'` the scale and bias of every normalisation layer are gone and
nothing else changes:

===========  ==========  ===========  ===================================
name         batch       none         notes
===========  ==========  ===========  ===================================
resnet18     11,689,512  11,679,912   torchvision's count
resnet34     21,797,672  21,780,648   torchvision's count
resnet50     25,557,032  25,503,912   torchvision's count
resnet101    44,549,160  44,443,816   torchvision's count
resnet152    60,192,808  60,041,384   torchvision's count
seresnet18   11,778,592  11,768,992   resnet18 + 89,080 in SE gates
seresnet50   28,088,024  28,034,904   resnet50 + 2,530,992 in SE gates
resnet20        269,722     268,346   option A; 272,474 with option B
resnet32        464,154     461,882   option A
resnet44        658,586     655,418   option A
resnet56        853,018     848,954   option A
resnet110     1,727,962   1,719,866   option A
===========  ==========  ===========  ===================================

The SE gate (reduction 16) multiplies the residual branch after its last
normalisation, before the addition, as in Hu et al. The CIFAR family follows
He et al. (2016): a 3x3 stem with 16 channels, then three stages of 16, 32
and 64 channels with (depth - 2) / 6 basic blocks each, and by default the
parameter-free option A shortcut (stride-2 subsampling plus zero channels).

References:
  He et al., `Deep Residual Learning for Image Recognition
  <https://arxiv.org/abs/1512.03385>`_, 2016.

  Hu et al., `Squeeze-and-Excitation Networks
  <https://arxiv.org/abs/1709.01507>`_, 2018.
"""

import functools
import numbers
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp

ModuleDef = Any

NORMS = ("batch", "none")
SHORTCUTS = ("projection", "zero_pad")
STEMS = ("imagenet", "cifar")

_BATCH_NORM_MOMENTUM = 0.9
_BATCH_NORM_EPSILON = 1e-5

# torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu'): an
# untruncated normal with variance 2 / (kernel height * width * out channels).
_conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _torch_linear_init(fan_in: int) -> tuple[Callable, Callable]:
  """Returns kernel and bias initialisers of PyTorch's default `nn.Linear`.

  Both draw from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  """
  bound = 1.0 / fan_in**0.5

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
  return kernel_init, bias_init


def _dense(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
  kernel_init, bias_init = _torch_linear_init(fan_in)
  return nn.Dense(
      features,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=kernel_init,
      bias_init=bias_init,
      name=name,
  )


def _normalization(
    norm: Optional[ModuleDef], name: str, zero_scale: bool = False
) -> Callable[[jax.Array], jax.Array]:
  """Returns the normalisation layer `name`, or the identity for no `norm`."""
  if norm is None:
    return lambda x: x
  if zero_scale:
    return norm(name=name, scale_init=nn.initializers.zeros)
  return norm(name=name)


class SqueezeExcitation(nn.Module):
  """Squeeze-and-excitation gate of Hu et al. (2018).

  Global average pool, dense layer to `channels // reduction` units (at least
  1), ReLU, dense layer back to `channels`, sigmoid, then a channel-wise
  product with the input. Both dense layers have a bias.

  Attributes:
    reduction: ratio of channels to hidden units.
    dtype: computation dtype.
  """

  reduction: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    hidden = max(1, channels // self.reduction)
    squeezed = jnp.mean(x, axis=(1, 2), dtype=jnp.float32).astype(self.dtype)
    gate = _dense(hidden, channels, self.dtype, "reduce")(squeezed)
    gate = nn.relu(gate)
    gate = _dense(channels, hidden, self.dtype, "expand")(gate)
    gate = nn.sigmoid(gate)
    return x * gate[:, None, None, :]


class _ResidualBlock(nn.Module):
  """Fields and the shortcut shared by the basic and bottleneck blocks.

  Attributes:
    filters: width of the block's 3x3 convolution(s).
    strides: stride of the block (1 or 2), applied on its 3x3 convolution.
    conv: partial of `nn.Conv` with the shared dtype and initialisation.
    norm: partial of `nn.BatchNorm`, or None for no normalisation.
    shortcut: 'projection' (1x1 convolution and normalisation) or
      'zero_pad' (strided subsampling and zero channels), used only where the
      shape changes.
    se_reduction: squeeze-and-excitation ratio, or None for no SE gate.
    zero_init_residual: start the block's last normalisation scale at zero.
    dtype: computation dtype.
  """

  filters: int
  strides: int
  conv: ModuleDef
  norm: Optional[ModuleDef]
  shortcut: str = "projection"
  se_reduction: Optional[int] = None
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  def _residual_output(self, residual: jax.Array) -> jax.Array:
    """Applies the SE gate, when there is one, to the residual branch."""
    if self.se_reduction is None:
      return residual
    return SqueezeExcitation(self.se_reduction, dtype=self.dtype, name="se")(
        residual
    )

  def _shortcut(self, x: jax.Array, out_channels: int) -> jax.Array:
    if self.strides == 1 and x.shape[-1] == out_channels:
      return x
    if self.shortcut == "projection":
      x = self.conv(
          out_channels,
          (1, 1),
          strides=(self.strides, self.strides),
          padding="VALID",
          name="shortcut_conv",
      )(x)
      return _normalization(self.norm, "shortcut_norm")(x)
    # Option A of He et al.: subsample by the stride, then append zero
    # channels after the existing ones. Nothing here is trained.
    x = x[:, :: self.strides, :: self.strides, :]
    extra_channels = out_channels - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra_channels)))


class BasicBlock(_ResidualBlock):
  """Two 3x3 convolutions, the first one strided (ResNet-18/34 and CIFAR)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    strides = (self.strides, self.strides)
    y = self.conv(self.filters, (3, 3), strides, padding=1, name="conv1")(x)
    y = _normalization(self.norm, "norm1")(y)
    y = nn.relu(y)
    y = self.conv(self.filters, (3, 3), padding=1, name="conv2")(y)
    y = _normalization(self.norm, "norm2", self.zero_init_residual)(y)
    y = self._residual_output(y)
    return nn.relu(y + self._shortcut(x, self.filters))


class BottleneckBlock(_ResidualBlock):
  """1x1, strided 3x3 and 1x1 convolutions with 4x expansion.

  The block of ResNet-50, 101 and 152. The stride sits on the 3x3
  convolution, as in torchvision and timm (sometimes called ResNet v1.5).
  """

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_channels = self.filters * self.expansion
    strides = (self.strides, self.strides)
    y = self.conv(self.filters, (1, 1), padding="VALID", name="conv1")(x)
    y = _normalization(self.norm, "norm1")(y)
    y = nn.relu(y)
    y = self.conv(self.filters, (3, 3), strides, padding=1, name="conv2")(y)
    y = _normalization(self.norm, "norm2")(y)
    y = nn.relu(y)
    y = self.conv(out_channels, (1, 1), padding="VALID", name="conv3")(y)
    y = _normalization(self.norm, "norm3", self.zero_init_residual)(y)
    y = self._residual_output(y)
    return nn.relu(y + self._shortcut(x, out_channels))


class ResNet(nn.Module):
  """Residual network for NHWC images, returning float32 logits.

  The 'imagenet' stem is a 7x7 stride-2 convolution, normalisation, ReLU and a
  3x3 stride-2 max pool. The 'cifar' stem is a 3x3 stride-1 convolution,
  normalisation and ReLU. Each stage after the first halves the resolution in
  its first block. A global average pool gives the features, and a dense
  layer with bias gives the logits. Paddings are symmetric, as in torchvision.

  With `norm='none'` every normalisation layer (stem, blocks and projection
  shortcuts) is the identity and nothing else changes: the convolutions still
  have no bias, so the network has no bias before the classifier.

  Attributes:
    stage_sizes: number of blocks in each stage.
    block_cls: `BasicBlock` or `BottleneckBlock`.
    num_classes: number of logits, at least 1.
    stage_widths: `filters` of the blocks in each stage.
    stem: 'imagenet' or 'cifar'.
    stem_width: output channels of the stem convolution.
    shortcut: 'projection' (1x1 convolution and normalisation, option B of He
      et al.) or 'zero_pad' (parameter-free, option A) where a block changes
      shape. Blocks that keep the shape always use the identity.
    se_reduction: squeeze-and-excitation ratio, or None for no SE gates. The
      gate multiplies the residual branch after its last normalisation, before
      the addition.
    norm: 'batch' for batch normalisation, or 'none' for the identity.
    axis_name: named axis over which batch statistics are averaged, for use
      under `jax.pmap` or `jax.shard_map`. Leave None outside of them.
    zero_init_residual: start the last normalisation scale of every block at
      zero, so each block begins as its shortcut. Requires `norm='batch'`.
    dtype: computation dtype, such as jnp.float32 or jnp.bfloat16. Parameters
      are always float32.
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  stage_widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"
  stem_width: int = 64
  shortcut: str = "projection"
  se_reduction: Optional[int] = None
  norm: str = "batch"
  axis_name: Optional[str] = None
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  def __post_init__(self):
    _validate_resnet_fields(self)
    super().__post_init__()

  @nn.compact
  def __call__(
      self, images: jax.Array, *, train: bool, return_features: bool = False
  ):
    """Computes the logits of a batch of images.

    Args:
      images: array of shape [batch, height, width, channels].
      train: use batch statistics and update the running averages (True), or
        use the running averages (False).
      return_features: also return the pooled features.

    Returns:
      float32 logits of shape [batch, num_classes] or, with `return_features`,
      `(logits, features)`. The features are the classifier's input: pooled
      values of shape [batch, channels] in the computation dtype.
    """
    if images.ndim != 4:
      raise ValueError(
          "ResNet expects NHWC images of rank 4, got shape "
          f"{tuple(images.shape)}. Add a batch axis or move channels last."
      )
    x = jnp.asarray(images, self.dtype)

    conv = functools.partial(
        nn.Conv,
        use_bias=False,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=_conv_kernel_init,
    )
    norm = None
    if self.norm == "batch":
      norm = functools.partial(
          nn.BatchNorm,
          use_running_average=not train,
          momentum=_BATCH_NORM_MOMENTUM,
          epsilon=_BATCH_NORM_EPSILON,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          axis_name=self.axis_name,
      )

    if self.stem == "imagenet":
      x = conv(self.stem_width, (7, 7), (2, 2), padding=3, name="stem_conv")(x)
      x = _normalization(norm, "stem_norm")(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(self.stem_width, (3, 3), padding=1, name="stem_conv")(x)
      x = _normalization(norm, "stem_norm")(x)
      x = nn.relu(x)

    for stage, (num_blocks, width) in enumerate(
        zip(self.stage_sizes, self.stage_widths)
    ):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(
            filters=width,
            strides=strides,
            conv=conv,
            norm=norm,
            shortcut=self.shortcut,
            se_reduction=self.se_reduction,
            zero_init_residual=self.zero_init_residual,
            dtype=self.dtype,
            name=f"stage{stage + 1}_block{block}",
        )(x)

    # Average in float32, then hand the classifier exactly what is sown.
    features = jnp.mean(x, axis=(1, 2), dtype=jnp.float32).astype(self.dtype)
    self.sow("intermediates", "features", features)
    logits = _dense(self.num_classes, features.shape[-1], self.dtype,
                    "classifier")(features)
    # float32 logits keep half-precision values out of the caller's loss.
    logits = logits.astype(jnp.float32)
    if return_features:
      return logits, features
    return logits


def _check_choice(field: str, value: Any, choices: Sequence[str]) -> None:
  if value not in choices:
    valid = ", ".join(choices)
    raise ValueError(f"Unknown {field} {value!r}. Valid values: {valid}.")


def _validate_resnet_fields(module: ResNet) -> None:
  """Raises ValueError for a ResNet configuration that cannot be built."""
  num_classes = module.num_classes
  if (
      isinstance(num_classes, bool)
      or not isinstance(num_classes, numbers.Integral)
      or num_classes < 1
  ):
    raise ValueError(
        f"num_classes must be a positive integer, got {num_classes!r}."
    )
  _check_choice("norm", module.norm, NORMS)
  _check_choice("shortcut", module.shortcut, SHORTCUTS)
  _check_choice("stem", module.stem, STEMS)
  if len(module.stage_sizes) != len(module.stage_widths):
    raise ValueError(
        f"stage_sizes {tuple(module.stage_sizes)} and stage_widths "
        f"{tuple(module.stage_widths)} must have the same length."
    )
  if module.se_reduction is not None and module.se_reduction < 1:
    raise ValueError(
        "se_reduction must be a positive integer or None, got "
        f"{module.se_reduction!r}."
    )
  if module.zero_init_residual and module.norm == "none":
    raise ValueError(
        "zero_init_residual=True needs norm='batch': with norm='none' there "
        "is no normalisation scale to start at zero."
    )
  try:
    dtype = jnp.dtype(module.dtype)
  except TypeError as error:
    raise ValueError(
        f"dtype {module.dtype!r} is not a JAX dtype. Use jnp.float32 or "
        "jnp.bfloat16."
    ) from error
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"dtype must be a floating-point type such as jnp.float32 or "
        f"jnp.bfloat16, got {dtype}."
    )


# ImageNet family, 224x224 inputs.
ResNet18 = functools.partial(
    ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock
)
ResNet34 = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock
)
ResNet50 = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock
)
ResNet101 = functools.partial(
    ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock
)
ResNet152 = functools.partial(
    ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock
)
SEResNet18 = functools.partial(ResNet18, se_reduction=16)
SEResNet50 = functools.partial(ResNet50, se_reduction=16)


def _cifar_resnet(depth: int) -> functools.partial:
  """Returns the CIFAR ResNet of He et al. with (depth - 2) / 6 blocks a stage.

  Args:
    depth: total number of weighted layers, 6n + 2.
  """
  return functools.partial(
      ResNet,
      stage_sizes=((depth - 2) // 6,) * 3,
      block_cls=BasicBlock,
      stage_widths=(16, 32, 64),
      stem="cifar",
      stem_width=16,
      shortcut="zero_pad",
  )


# CIFAR family, 32x32 inputs.
ResNet20 = _cifar_resnet(20)
ResNet32 = _cifar_resnet(32)
ResNet44 = _cifar_resnet(44)
ResNet56 = _cifar_resnet(56)
ResNet110 = _cifar_resnet(110)

# A CIFAR-style network with one block a stage and stage widths of 4, 8 and
# 16 (5,006 parameters for 10 classes), for tests of code that needs a model.
ResNetTiny = functools.partial(
    ResNet,
    stage_sizes=(1, 1, 1),
    block_cls=BasicBlock,
    stage_widths=(4, 8, 16),
    stem="cifar",
    stem_width=4,
    shortcut="zero_pad",
)

_MODELS = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet152": ResNet152,
    "seresnet18": SEResNet18,
    "seresnet50": SEResNet50,
    "resnet20": ResNet20,
    "resnet32": ResNet32,
    "resnet44": ResNet44,
    "resnet56": ResNet56,
    "resnet110": ResNet110,
    "resnet_tiny": ResNetTiny,
}
MODEL_NAMES = tuple(_MODELS)


def create_model(
    name: str,
    num_classes: int,
    *,
    norm: str = "batch",
    axis_name: Optional[str] = None,
    zero_init_residual: bool = False,
    dtype: Any = jnp.float32,
    shortcut: Optional[str] = None,
) -> ResNet:
  """Creates one of the named ResNets.

  Args:
    name: one of `MODEL_NAMES`.
    num_classes: number of logits, at least 1.
    norm: 'batch' for batch normalisation, or 'none' to replace every
      normalisation layer by the identity.
    axis_name: named axis for cross-device batch statistics under `jax.pmap`
      or `jax.shard_map`, or None.
    zero_init_residual: start the last normalisation scale of every block at
      zero. Requires `norm='batch'`.
    dtype: computation dtype. Parameters stay float32 and logits are float32.
    shortcut: 'projection' or 'zero_pad' for blocks that change shape, or None
      for the family's default ('projection' for the ImageNet family,
      'zero_pad' for the CIFAR family and 'resnet_tiny').

  Returns:
    An unbound `ResNet`, called as `model.apply(variables, images, train=...)`.

  Raises:
    ValueError: for an unknown name or an invalid option.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = create_model("resnet20", num_classes=10)
    >>> images = jnp.zeros((2, 32, 32, 3))
    >>> variables = model.init(jax.random.key(0), images, train=False)
    >>> logits, updates = model.apply(
    ...     variables, images, train=True, mutable=["batch_stats"])
    >>> logits.shape
    (2, 10)
  """
  if name not in _MODELS:
    valid = ", ".join(MODEL_NAMES)
    raise ValueError(f"Unknown model name {name!r}. Valid names: {valid}.")
  options = dict(
      num_classes=num_classes,
      norm=norm,
      axis_name=axis_name,
      zero_init_residual=zero_init_residual,
      dtype=dtype,
  )
  if shortcut is not None:
    options["shortcut"] = shortcut
  return _MODELS[name](**options)


def conv_kernels(params: Any) -> dict[str, jax.Array]:
  """Collects every convolution kernel of a ResNet's parameters by path.

  Args:
    params: the 'params' collection, as in `variables['params']`.

  Returns:
    A dict from paths such as 'stage1_block0/conv1/kernel' to kernels of shape
    [height, width, in_channels, out_channels], in the order of
    `flax.traverse_util.flatten_dict`. Dense kernels (classifier and SE gates)
    are rank 2 and are left out.
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  return {
      path: kernel
      for path, kernel in flat.items()
      if path.endswith("/kernel") and kernel.ndim == 4
  }
