"""Smooth L1: quadratic below ``beta``, absolute above (Girshick, Fast R-CNN, 2015)."""

from __future__ import annotations

from typing import Any

from .._elementwise import ElementwiseLoss, Option, define
from ._common import INPUT, TARGET


def forward(ops: Any, input: Any, target: Any, beta: Any) -> Any:
    distance = ops.abs(input - target)
    # beta = 0 never takes the quadratic branch: the L1 loss, as PyTorch gives it.
    return ops.where(distance < beta, 0.5 * distance * distance / beta, distance - 0.5 * beta)


def gradients(ops: Any, grad: Any, input: Any, target: Any, beta: Any) -> dict[str, Any]:
    diff = input - target
    # PyTorch's branches: sign(d) from beta on, d / beta inside, where a NaN difference
    # lands (NaN), but for beta = 0, which is its L1 loss, whose sign(NaN) is 0.  One formula
    # (one kernel) for every beta; abs(beta) makes the test an array, as ops.where takes.
    inside = ops.where(ops.abs(beta) > 0.0, diff / beta, 0.0)
    grad_input = ops.where(ops.abs(diff) >= beta, ops.sign(diff), inside) * grad
    return {"input": grad_input, "target": lambda: -grad_input}


SPEC = ElementwiseLoss(
    family='Regression: MSE, L1, smooth L1, Huber',
    name="smooth_l1_loss", module="SmoothL1Loss", arguments=(INPUT, TARGET),
    warns_on_broadcast=True,
    options=(Option("beta", 1.0, minimum=0.0, hint="0 gives the L1 loss",
                    doc="Where the loss turns from quadratic to linear; 0 is the L1 loss."),),
    forward=forward, gradients=gradients,
    summary="Smooth L1 loss between ``input`` and ``target``.",
    formula=r"\ell = \begin{cases} 0.5\, d^2 / \beta & |d| < \beta \\ "
            r"|d| - 0.5\, \beta & \text{otherwise} \end{cases}, \qquad "
            r"d = \mathrm{input} - \mathrm{target}",
    gradient_formula=r"\frac{\partial \ell}{\partial \mathrm{input}} = "
                     r"G \begin{cases} d / \beta & |d| < \beta \\ \operatorname{sign}(d) & "
                     r"\text{otherwise}\end{cases} = "
                     r"-\frac{\partial \ell}{\partial \mathrm{target}}",
    pytorch="torch.nn.functional.smooth_l1_loss",
    example="""
    >>> import numpy as np
    >>> import arrayloss as al
    >>> al.smooth_l1_loss(np.array([0.5, 3.0]), np.zeros(2), reduction="none")
    array([0.125, 2.5  ])
    """,
)

smooth_l1_loss, smooth_l1_loss_backward, smooth_l1_loss_and_grad, SmoothL1Loss = define(SPEC)

__all__ = ["SmoothL1Loss", "smooth_l1_loss", "smooth_l1_loss_and_grad", "smooth_l1_loss_backward"]
