"""arrayloss: loss functions with explicit backward passes for the Python array API.

One generic implementation runs on every array library that array-api-compat knows (NumPy,
CuPy, PyTorch, JAX, array-api-strict); CuPy arrays go to fused CUDA kernels that do the forward
and the backward pass in one trip over memory.  The semantics are PyTorch's.
"""

from . import losses as _losses
from ._cross_entropy import cross_entropy, cross_entropy_and_grad, cross_entropy_backward
from ._dispatch import fused_kernels
from ._gaussian_nll import gaussian_nll_loss, gaussian_nll_loss_and_grad, gaussian_nll_loss_backward
from ._linear_cross_entropy import (
    linear_cross_entropy,
    linear_cross_entropy_and_grad,
    linear_cross_entropy_backward,
)
from ._modules import CrossEntropyLoss, GaussianNLLLoss, LinearCrossEntropyLoss, NLLLoss
from ._nll import nll_loss, nll_loss_and_grad, nll_loss_backward
from ._validation import TargetOutOfRangeError

__version__ = "0.1.0"

# The elementwise losses, found in arrayloss.losses (one module each; see its docstring).
globals().update({name: getattr(_losses, name) for name in _losses.__all__})

# Shown as arrayloss.TargetOutOfRangeError in tracebacks, where users catch it from.
TargetOutOfRangeError.__module__ = __name__

__all__ = [
    "CrossEntropyLoss",
    "GaussianNLLLoss",
    "LinearCrossEntropyLoss",
    "NLLLoss",
    "TargetOutOfRangeError",
    "__version__",
    "cross_entropy",
    "cross_entropy_and_grad",
    "cross_entropy_backward",
    "fused_kernels",
    "gaussian_nll_loss",
    "gaussian_nll_loss_and_grad",
    "gaussian_nll_loss_backward",
    "linear_cross_entropy",
    "linear_cross_entropy_and_grad",
    "linear_cross_entropy_backward",
    "nll_loss",
    "nll_loss_and_grad",
    "nll_loss_backward",
    *_losses.__all__,
]
