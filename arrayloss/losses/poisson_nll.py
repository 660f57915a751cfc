"""Poisson negative log-likelihood of counts, with the optional Stirling term."""

from __future__ import annotations

import math
from typing import Any

from .._elementwise import ElementwiseLoss, Option, define
from ._common import INPUT, integer_target

TWO_PI = 2.0 * math.pi


def _stirling(ops: Any, target: Any) -> Any:
    """``t log t - t + 0.5 log(2 pi t)``, counted only for ``t > 1`` (PyTorch's rule)."""
    term = target * ops.log(target) - target + 0.5 * ops.log(TWO_PI * target)
    return ops.where(target <= 1.0, 0.0, term)


def forward(ops: Any, input: Any, target: Any, log_input: bool, full: bool, eps: Any) -> Any:
    if log_input:
        loss = ops.exp(input) - target * input
    else:
        loss = input - target * ops.log(input + eps)
    return loss + _stirling(ops, target) if full else loss


def gradients(ops: Any, grad: Any, input: Any, target: Any, log_input: bool, full: bool,
              eps: Any) -> dict[str, Any]:
    if log_input:
        grad_input = (ops.exp(input) - target) * grad
    else:
        grad_input = grad - grad * target / (input + eps)

    def grad_target() -> Any:
        value = -input * grad if log_input else -ops.log(input + eps) * grad
        if not full:
            return value
        # PyTorch's autograd through the masked Stirling term: its derivative times a zero
        # upstream where t <= 1 (NaN at t = 0, where the derivative is infinite).
        kept = ops.where(target <= 1.0, 0.0, grad)
        return value + (kept * ops.log(target) + kept * target / target - kept
                        + 0.5 * kept / (TWO_PI * target) * TWO_PI)

    return {"input": grad_input, "target": grad_target}


SPEC = ElementwiseLoss(
    family='Distributions: KL divergence, Poisson NLL',
    name="poisson_nll_loss", module="PoissonNLLLoss",
    arguments=(INPUT, integer_target("Observed counts; broadcast against ``input``.")),
    options=(
        Option("log_input", True, doc="``input`` is the log of the rate (else the rate)."),
        Option("full", False, doc="Add the Stirling approximation of ``log(target!)`` for "
                                  "targets above 1."),
        Option("eps", 1e-8, minimum=0.0, doc="Added to the rate before its log when "
                                             "``log_input=False``; >= 0."),
    ),
    forward=forward, gradients=gradients,
    summary="Poisson negative log-likelihood of ``target`` counts under predicted rates.",
    formula=r"\ell = e^{x} - t\,x \;\; (\text{log\_input}), \qquad "
            r"\ell = x - t \log(x + \epsilon) \;\; (\text{otherwise}), \qquad "
            r"[+\; t \log t - t + \tfrac12 \log(2\pi t) \text{ for } t > 1 \text{ if full}]",
    gradient_formula=r"\frac{\partial \ell}{\partial x} = (e^{x} - t)\,G \;\; "
                     r"\text{or} \;\; \Big(1 - \frac{t}{x + \epsilon}\Big) G, \qquad "
                     r"\frac{\partial \ell}{\partial t} = -x\,G \;\; \text{or} \;\; "
                     r"-\log(x + \epsilon)\,G \;\; [+ (\log t + \tfrac{1}{2t})\,G]",
    notes="A negative ``eps`` is an error (PyTorch accepts it).",
    pytorch="torch.nn.functional.poisson_nll_loss",
    example="""
    >>> import numpy as np
    >>> import arrayloss as al
    >>> al.poisson_nll_loss(np.log(np.array([1.0, 2.0])), np.array([1, 4]),
    ...                     reduction="none").round(4)
    array([ 1.    , -0.7726])
    """,
)

(poisson_nll_loss, poisson_nll_loss_backward, poisson_nll_loss_and_grad,
 PoissonNLLLoss) = define(SPEC)

__all__ = ["PoissonNLLLoss", "poisson_nll_loss", "poisson_nll_loss_and_grad",
           "poisson_nll_loss_backward"]
