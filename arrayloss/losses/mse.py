"""Mean squared error: ``(input - target)**2`` per element."""

from __future__ import annotations

from typing import Any

from .._elementwise import ElementwiseLoss, define
from ._common import INPUT, TARGET


def forward(ops: Any, input: Any, target: Any) -> Any:
    diff = input - target
    return diff * diff


def gradients(ops: Any, grad: Any, input: Any, target: Any) -> dict[str, Any]:
    grad_input = 2.0 * (input - target) * grad
    return {"input": grad_input, "target": lambda: -grad_input}


SPEC = ElementwiseLoss(
    family='Regression: MSE, L1, smooth L1, Huber',
    name="mse_loss", module="MSELoss", arguments=(INPUT, TARGET),
    warns_on_broadcast=True,
    forward=forward, gradients=gradients,
    summary="Mean squared error between ``input`` and ``target``.",
    formula=r"\ell = (\mathrm{input} - \mathrm{target})^2",
    gradient_formula=r"\frac{\partial \ell}{\partial \mathrm{input}} = "
                     r"2 (\mathrm{input} - \mathrm{target})\, G = "
                     r"-\frac{\partial \ell}{\partial \mathrm{target}}",
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
