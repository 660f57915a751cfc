"""Mean absolute error: ``|input - target|`` per element."""

from __future__ import annotations

from typing import Any

from .._elementwise import ElementwiseLoss, define
from ._common import ELEMENT_WEIGHT, INPUT, TARGET, weighted


def forward(ops: Any, input: Any, target: Any, weight: Any = None) -> Any:
    return weighted(ops.abs(input - target), weight)


def gradients(ops: Any, grad: Any, input: Any, target: Any, weight: Any = None
              ) -> dict[str, Any]:
    # sign(0) = 0: no gradient where the prediction is exact, as in PyTorch.
    grad_input = weighted(ops.sign(input - target) * grad, weight)
    return {"input": grad_input, "target": lambda: -grad_input}


SPEC = ElementwiseLoss(
    family='Regression: MSE, L1, smooth L1, Huber',
    name="l1_loss", module="L1Loss", arguments=(INPUT, TARGET, ELEMENT_WEIGHT),
    warns_on_broadcast=True, mean_over="weight",
    forward=forward, gradients=gradients,
    summary="Mean absolute error between ``input`` and ``target``.",
    formula=r"\ell = w\,|\mathrm{input} - \mathrm{target}|",
    gradient_formula=r"\frac{\partial \ell}{\partial \mathrm{input}} = "
                     r"w \operatorname{sign}(\mathrm{input} - \mathrm{target})\, G = "
                     r"-\frac{\partial \ell}{\partial \mathrm{target}}",
    notes="With ``weight`` (:math:`w`; 1 without it), ``'mean'`` divides the sum by the "
          "weights' sum, :math:`\\sum w`, as PyTorch's weighted mean does, not by the "
          "element count.  The weight has no gradient.",
    pytorch="torch.nn.functional.l1_loss",
    example="""
    >>> import numpy as np
    >>> import arrayloss as al
    >>> float(al.l1_loss(np.array([1.0, 2.0, 4.0]), np.array([1.0, 0.0, 1.0])))
    1.6666666666666667
    """,
)

l1_loss, l1_loss_backward, l1_loss_and_grad, L1Loss = define(SPEC)

__all__ = ["L1Loss", "l1_loss", "l1_loss_and_grad", "l1_loss_backward"]
