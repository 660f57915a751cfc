"""The elementwise losses: one declaration each (see :mod:`arrayloss._elementwise`)."""

from .binary_cross_entropy import (
    BCELoss,
    binary_cross_entropy,
    binary_cross_entropy_and_grad,
    binary_cross_entropy_backward,
)
from .binary_cross_entropy_with_logits import (
    BCEWithLogitsLoss,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_and_grad,
    binary_cross_entropy_with_logits_backward,
)
from .huber import HuberLoss, huber_loss, huber_loss_and_grad, huber_loss_backward
from .kl_div import KLDivLoss, kl_div, kl_div_and_grad, kl_div_backward
from .l1 import L1Loss, l1_loss, l1_loss_and_grad, l1_loss_backward
from .mse import MSELoss, mse_loss, mse_loss_and_grad, mse_loss_backward
from .poisson_nll import (
    PoissonNLLLoss,
    poisson_nll_loss,
    poisson_nll_loss_and_grad,
    poisson_nll_loss_backward,
)
from .smooth_l1 import (
    SmoothL1Loss,
    smooth_l1_loss,
    smooth_l1_loss_and_grad,
    smooth_l1_loss_backward,
)

__all__ = [
    "BCELoss", "BCEWithLogitsLoss", "HuberLoss", "KLDivLoss", "L1Loss", "MSELoss",
    "PoissonNLLLoss", "SmoothL1Loss",
    "binary_cross_entropy", "binary_cross_entropy_and_grad", "binary_cross_entropy_backward",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_and_grad",
    "binary_cross_entropy_with_logits_backward",
    "huber_loss", "huber_loss_and_grad", "huber_loss_backward",
    "kl_div", "kl_div_and_grad", "kl_div_backward",
    "l1_loss", "l1_loss_and_grad", "l1_loss_backward",
    "mse_loss", "mse_loss_and_grad", "mse_loss_backward",
    "poisson_nll_loss", "poisson_nll_loss_and_grad", "poisson_nll_loss_backward",
    "smooth_l1_loss", "smooth_l1_loss_and_grad", "smooth_l1_loss_backward",
]
