"""Kullback-Leibler divergence of a target distribution from log-probabilities."""

from __future__ import annotations

import math
from typing import Any

from .._elementwise import Argument, ElementwiseLoss, Option, define


def _batch_size(input_shape: tuple[int, ...]) -> int:
    # PyTorch divides by input.size(0); a 0-d input is one sample.
    return input_shape[0] if input_shape else 1


def forward(ops: Any, input: Any, target: Any, log_target: bool) -> Any:
    if log_target:
        return ops.exp(target) * (target - input)
    # xlogy(t, t): 0 where t is 0, as PyTorch's xlogy gives it.
    return ops.where(target == 0.0, 0.0, target * ops.log(target)) - target * input


def gradients(ops: Any, grad: Any, input: Any, target: Any, log_target: bool
              ) -> dict[str, Any]:
    if log_target:
        probability = ops.exp(target)
        # PyTorch's autograd through exp(t) * (t - x), term by term (the same bits, and the
        # same NaN where G (t - x) overflows against exp(t) = 0).
        return {"input": -probability * grad,
                "target": lambda: grad * (target - input) * probability + grad * probability}

    def grad_target() -> Any:  # PyTorch's autograd through xlogy(t, t): log t + t / t
        log_term = ops.where(target == 0.0, 0.0, ops.log(target))
        # ... where its xlogy(G, t) is 0 for G = 0, log t NaN (t < 0, a masked slot) included.
        unreached = grad == 0.0
        if isinstance(unreached, bool):  # one number reaches every element
            if unreached:
                log_term = 0.0
        else:
            log_term = ops.where(unreached, 0.0, log_term)
        return (log_term + target / target - input) * grad

    return {"input": -target * grad, "target": grad_target}


SPEC = ElementwiseLoss(
    family='Distributions: KL divergence, Poisson NLL',
    name="kl_div", module="KLDivLoss",
    arguments=(
        Argument("input", doc="Log-probabilities, any shape, real floating dtype."),
        Argument("target", doc="Probabilities (log-probabilities with ``log_target``); "
                               "broadcast against ``input``."),
    ),
    options=(Option("log_target", False, doc="``target`` holds log-probabilities."),),
    extra_reductions={"batchmean": _batch_size},
    forward=forward, gradients=gradients,
    summary="Kullback-Leibler divergence between ``target`` and the distribution whose "
            "log-probabilities are ``input``.",
    formula=r"\ell = t \log t - t\,x \quad (0 \text{ where } t = 0), \qquad "
            r"\ell = e^{t}\,(t - x) \text{ with log\_target}",
    gradient_formula=r"\frac{\partial \ell}{\partial x} = -t\,G, \qquad "
                     r"\frac{\partial \ell}{\partial t} = (\log t + 1 - x)\,G \quad "
                     r"(e^{t} \text{ for } t \text{ and } e^{t}(t - x + 1) \text{ with "
                     r"log\_target})",
    notes="``'batchmean'`` is the divergence's definition, the sum over the batch size; "
          "``'mean'`` divides by every element, as in PyTorch (which warns about it; arrayloss "
          "does not).  A target below 0 gives NaN, as in PyTorch.",
    pytorch="torch.nn.functional.kl_div",
    example="""
    >>> import numpy as np
    >>> import arrayloss as al
    >>> log_q = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    >>> p = np.array([[0.5, 0.5], [0.5, 0.5]])
    >>> float(al.kl_div(log_q, p, reduction="batchmean").round(6))
    0.255413
    """,
)
del math

kl_div, kl_div_backward, kl_div_and_grad, KLDivLoss = define(SPEC)

__all__ = ["KLDivLoss", "kl_div", "kl_div_and_grad", "kl_div_backward"]
