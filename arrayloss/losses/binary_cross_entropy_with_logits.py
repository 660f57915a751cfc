"""Binary cross-entropy of logits: a sigmoid and binary cross-entropy, stable at any logit."""

from __future__ import annotations

from typing import Any

from .._elementwise import Argument, ElementwiseLoss, define
from ._common import same_shape_target


def log_sigmoid(ops: Any, x: Any) -> Any:
    """``log(sigmoid(x))`` without overflow: ``min(x, 0) - log1p(exp(-|x|))``."""
    return ops.minimum(x, 0.0) - ops.log1p(ops.exp(-ops.abs(x)))


def forward(ops: Any, input: Any, target: Any, weight: Any = None, pos_weight: Any = None
            ) -> Any:
    log_p = log_sigmoid(ops, input)
    if pos_weight is not None:
        log_p = log_p * ((pos_weight - 1.0) * target + 1.0)
    loss = (1.0 - target) * input - log_p
    return loss if weight is None else loss * weight


def gradients(ops: Any, grad: Any, input: Any, target: Any, weight: Any = None,
              pos_weight: Any = None) -> dict[str, Any]:
    sigmoid = 1.0 / (1.0 + ops.exp(-input))
    if pos_weight is None:
        grad_input = (sigmoid - target) * grad
    else:
        weighted = pos_weight * target
        grad_input = ((weighted + 1.0 - target) * sigmoid - weighted) * grad

    def grad_target() -> Any:
        if pos_weight is None:
            value = -input * grad
        else:
            value = (log_sigmoid(ops, -input) - log_sigmoid(ops, input) * pos_weight) * grad
        return value if weight is None else value * weight

    return {"input": grad_input if weight is None else grad_input * weight,
            "target": grad_target}


SPEC = ElementwiseLoss(
    family='Binary cross-entropy',
    name="binary_cross_entropy_with_logits", module="BCEWithLogitsLoss",
    arguments=(
        Argument("input", doc="Logits, any shape, real floating dtype."),
        same_shape_target("Target probabilities, the input's shape."),
        Argument("weight", shape="into", optional=True, differentiable=False, promotes=False,
                 doc="A rescaling weight per element, broadcast to the input's shape."),
        Argument("pos_weight", shape="into", optional=True, differentiable=False,
                 promotes=False, keyword=True,
                 doc="The weight of positive examples, broadcast along the last (class) "
                     "axis: ``(C,)`` for ``C`` classes."),
    ),
    forward=forward, gradients=gradients,
    summary="Binary cross-entropy of logits and target probabilities.",
    formula=r"\ell = w\,\big((1 - t)\,x - (1 + (p - 1)\,t) \log\sigma(x)\big), \qquad "
            r"\log\sigma(x) = \min(x, 0) - \log(1 + e^{-|x|})",
    gradient_formula=r"\frac{\partial \ell}{\partial x} = G\,w\,\big((p t + 1 - t)\,"
                     r"\sigma(x) - p t\big), \qquad "
                     r"\frac{\partial \ell}{\partial t} = G\,w\,\big(\log\sigma(-x) - "
                     r"p \log\sigma(x)\big)",
    notes="With :math:`p` the ``pos_weight`` (1 without it).  The log-sigmoid form is exact "
          "and finite for logits of any size (at 1000 and -1000 too).",
    pytorch="torch.nn.functional.binary_cross_entropy_with_logits",
    example="""
    >>> import numpy as np
    >>> import arrayloss as al
    >>> al.binary_cross_entropy_with_logits(np.array([1000.0, -1000.0, 0.0]),
    ...                                     np.array([0.0, 1.0, 1.0]), reduction="none")
    array([1.00000000e+03, 1.00000000e+03, 6.93147181e-01])
    """,
)

(binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_backward,
 binary_cross_entropy_with_logits_and_grad, BCEWithLogitsLoss) = define(SPEC)

__all__ = ["BCEWithLogitsLoss", "binary_cross_entropy_with_logits",
           "binary_cross_entropy_with_logits_and_grad",
           "binary_cross_entropy_with_logits_backward"]
