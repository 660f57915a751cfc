"""Huber loss: quadratic below ``delta``, linear with slope ``delta`` above (Huber, 1964)."""

from __future__ import annotations

from typing import Any

from .._elementwise import ElementwiseLoss, Option, define
from ._common import ELEMENT_WEIGHT, INPUT, TARGET, weighted


def forward(ops: Any, input: Any, target: Any, delta: Any, weight: Any = None) -> Any:
    diff = input - target
    distance = ops.abs(diff)
    linear = delta * (distance - 0.5 * delta)
    loss = ops.where(distance < delta, 0.5 * diff * diff, linear)
    return weighted(loss, weight)


def gradients(ops: Any, grad: Any, input: Any, target: Any, delta: Any, weight: Any = None
              ) -> dict[str, Any]:
    # d within [-delta, delta]: d inside, delta sign(d) outside, in one pass.
    grad_input = ops.clip(input - target, -delta, delta) * grad
    grad_input = weighted(grad_input, weight)
    # A function: computed only when wrt asks for the target's gradient.
    return {"input": grad_input, "target": lambda: -grad_input}


SPEC = ElementwiseLoss(
    family='Regression: MSE, L1, smooth L1, Huber',
    name="huber_loss", module="HuberLoss", arguments=(INPUT, TARGET, ELEMENT_WEIGHT),
    warns_on_broadcast=True,
    options=(Option("delta", 1.0, minimum=0.0, inclusive=False,
                    doc="Where the loss turns from quadratic to linear; > 0."),),
    forward=forward, gradients=gradients,
    summary="Huber loss between ``input`` and ``target``.",
    formula=r"\ell = w \begin{cases} 0.5\, d^2 & |d| < \delta \\ "
            r"\delta\,(|d| - 0.5\, \delta) & \text{otherwise} \end{cases}, \qquad "
            r"d = \mathrm{input} - \mathrm{target}",
    gradient_formula=r"\frac{\partial \ell}{\partial \mathrm{input}} = "
                     r"G\,w \begin{cases} d & |d| < \delta \\ \delta \operatorname{sign}(d) & "
                     r"\text{otherwise}\end{cases} = "
                     r"-\frac{\partial \ell}{\partial \mathrm{target}}",
    notes="With ``weight`` (:math:`w`; 1 without it), each element's loss is multiplied "
          "by its weight; ``'mean'`` still divides by the element count, as PyTorch's does.  "
          "The weight has no gradient.",
    pytorch="torch.nn.functional.huber_loss",
    example="""
    >>> import numpy as np
    >>> import arrayloss as al
    >>> al.huber_loss(np.array([0.5, 3.0]), np.zeros(2), delta=2.0, reduction="none")
    array([0.125, 4.   ])
    """,
)

huber_loss, huber_loss_backward, huber_loss_and_grad, HuberLoss = define(SPEC)

__all__ = ["HuberLoss", "huber_loss", "huber_loss_and_grad", "huber_loss_backward"]
