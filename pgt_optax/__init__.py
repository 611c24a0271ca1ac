"""PowerGrad Transform (PGT) for JAX and Optax.

PGT replaces the gradient at the logits, ``softmax(z) - q``, with
``softmax(alpha * z) - q`` and leaves the forward pass unchanged. Two doors
lead to the same computation: the losses, for any training loop, and
``power_grad``, the first member of an optax chain.
"""

from pgt_optax._src.losses import power_grad_softmax_cross_entropy
from pgt_optax._src.losses import power_grad_softmax_cross_entropy_with_integer_labels
from pgt_optax._src.transform import power_grad

__version__ = "0.1.0"

__all__ = (
    "power_grad",
    "power_grad_softmax_cross_entropy",
    "power_grad_softmax_cross_entropy_with_integer_labels",
)
