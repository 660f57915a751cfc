"""Mean squared error: ``(input - target)**2`` per element."""

from __future__ import annotations

from typing import Any

from .._elementwise import ElementwiseLoss, define
from ._common import ELEMENT_WEIGHT, INPUT, TARGET, weighted


def forward(ops: Any, input: Any, target: Any, weight: Any = None) -> Any:
    diff = input - target
    return weighted(diff * diff, weight)


def gradients(ops: Any, grad: Any, input: Any, target: Any, weight: Any = None
              ) -> dict[str, Any]:
    grad_input = weighted(2.0 * (input - target) * grad, weight)
    return {"input": grad_input, "target": lambda: -grad_input}


SPEC = ElementwiseLoss(
    family='Regression: MSE, L1, smooth L1, Huber',
    name="mse_loss", module="MSELoss", arguments=(INPUT, TARGET, ELEMENT_WEIGHT),
    warns_on_broadcast=True, mean_over="weight",
    forward=forward, gradients=gradients,
    summary="Mean squared error between ``input`` and ``target``.",
    formula=r"\ell = w\,(\mathrm{input} - \mathrm{target})^2",
    gradient_formula=r"\frac{\partial \ell}{\partial \mathrm{input}} = "
                     r"2 w\,(\mathrm{input} - \mathrm{target})\, G = "
                     r"-\frac{\partial \ell}{\partial \mathrm{target}}",
    notes="With ``weight`` (:math:`w`; 1 without it), ``'mean'`` divides the sum by the "
          "weights' sum, :math:`\\sum w`, as PyTorch's weighted mean does, not by the "
          "element count.  The weight has no gradient.",
    pytorch="torch.nn.functional.mse_loss",
    example="""
    >>> import numpy as np
    >>> import arrayloss as al
    >>> float(al.mse_loss(np.array([1.0, 2.0, 4.0]), np.array([1.0, 0.0, 1.0])))
    4.333333333333333
    >>> al.mse_loss_backward(1.0, np.array([1.0, 2.0]), np.array([0.0, 0.0]), reduction="sum")
    (array([2., 4.]), array([-2., -4.]))
    """,
)

mse_loss, mse_loss_backward, mse_loss_and_grad, MSELoss = define(SPEC)

__all__ = ["MSELoss", "mse_loss", "mse_loss_and_grad", "mse_loss_backward"]
