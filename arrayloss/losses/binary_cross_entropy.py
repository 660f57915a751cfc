"""Binary cross-entropy of probabilities, with PyTorch's log clamp at -100."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._elementwise import Argument, ElementwiseLoss, RangeCheck, define
from ._common import same_shape_target

#: PyTorch's floor for each log, so that a probability of exactly 0 or 1 costs 100, not inf.
LOG_FLOOR = -100.0
#: PyTorch's floor for ``x (1 - x)`` in the gradient's denominator: a C++ ``float`` 1e-12
#: (9.99999996e-13) whatever the dtype, so a float64 gradient divides by that value, not 1e-12.
EPSILON = float(np.float32(1e-12))


def forward(ops: Any, input: Any, target: Any, weight: Any = None) -> Any:
    loss = ((target - 1.0) * ops.maximum(ops.log1p(-input), LOG_FLOOR)
            - target * ops.maximum(ops.log(input), LOG_FLOOR))
    return loss if weight is None else loss * weight


def gradients(ops: Any, grad: Any, input: Any, target: Any, weight: Any = None
              ) -> dict[str, Any]:
    grad_input = grad * (input - target) / ops.maximum((1.0 - input) * input, EPSILON)

    def grad_target() -> Any:  # d/dt is -logit(x), unclamped (PyTorch's target backward)
        value = -ops.log(input / (1.0 - input)) * grad
        return value if weight is None else value * weight

    return {"input": grad_input if weight is None else grad_input * weight,
            "target": grad_target}


SPEC = ElementwiseLoss(
    family='Binary cross-entropy',
    name="binary_cross_entropy", module="BCELoss",
    arguments=(
        Argument("input", doc="Probabilities in [0, 1], any shape, real floating dtype."),
        same_shape_target("Target probabilities in [0, 1], the input's shape."),
        Argument("weight", shape="into", optional=True, differentiable=False, promotes=False,
                 doc="A rescaling weight per element, broadcast to the input's shape."),
    ),
    checks=(
        RangeCheck("input", 0.0, 1.0, "binary_cross_entropy takes probabilities; for "
                   "logits use binary_cross_entropy_with_logits, or apply a sigmoid first"),
        RangeCheck("target", 0.0, 1.0, "targets are probabilities"),
    ),
    forward=forward, gradients=gradients,
    summary="Binary cross-entropy between predicted and target probabilities.",
    formula=r"\ell = -w\,\big(t \max(\log x, -100) + (1 - t) \max(\log(1 - x), -100)\big)",
    gradient_formula=r"\frac{\partial \ell}{\partial x} = \frac{G\,w\,(x - t)}"
                     r"{\max(x (1 - x), 10^{-12})}, \qquad "
                     r"\frac{\partial \ell}{\partial t} = -G\,w \log\frac{x}{1 - x}",
    notes="Each log is clamped at -100, as in PyTorch, so a prediction of exactly 0 or 1 "
          "costs at most 100; the gradient's denominator is clamped at 1e-12.  The floating "
          "dtypes of ``input`` and ``target`` promote (PyTorch requires them equal).",
    pytorch="torch.nn.functional.binary_cross_entropy",
    example="""
    >>> import numpy as np
    >>> import arrayloss as al
    >>> al.binary_cross_entropy(np.array([0.9, 0.2, 1.0]), np.array([1.0, 0.0, 0.0]),
    ...                         reduction="none").round(4)
    array([  0.1054,   0.2231, 100.    ])
    """,
)

(binary_cross_entropy, binary_cross_entropy_backward, binary_cross_entropy_and_grad,
 BCELoss) = define(SPEC)

__all__ = ["BCELoss", "binary_cross_entropy", "binary_cross_entropy_and_grad",
           "binary_cross_entropy_backward"]
