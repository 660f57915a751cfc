"""Pieces several loss declarations share: the usual arguments and their docs."""

from __future__ import annotations

from typing import Any

from .._elementwise.spec import Argument

__all__ = ["ELEMENT_WEIGHT", "INPUT", "TARGET", "integer_target", "same_shape_target",
           "weighted"]

INPUT = Argument("input", doc="Predictions, any shape, real floating dtype.")


def integer_target(doc: str = "Targets; broadcast against ``input``.") -> Argument:
    """A target that broadcasts against the input and may have an integer dtype."""
    return Argument("target", integer=True,
                    doc=doc + "  An integer dtype is accepted (it has no gradient).")


TARGET = integer_target()


def same_shape_target(doc: str) -> Argument:
    """A floating target of exactly the input's shape (PyTorch's rule for the binary
    cross-entropies)."""
    return Argument("target", shape="input", doc=doc)


#: PyTorch 2.13's ``weight=`` of ``mse_loss``, ``l1_loss`` and ``huber_loss``: one weight per
#: element of the input, which promotes as an operand does (integers and bools too); not a
#: gradient's argument (as the binary cross-entropies' weights), and not held by the loss
#: objects (``MSELoss`` takes none).  Keyword-only: PyTorch's comes after ``reduction``.
ELEMENT_WEIGHT = Argument(
    "weight", shape="input", integer=True, boolean=True, optional=True, differentiable=False,
    held=False, keyword=True,
    doc="Weights, one per element of ``input`` (its shape); each element's loss is "
        "multiplied by its weight.  An integer or bool dtype is accepted (a bool mask "
        "weighs its True elements by 1, the others by 0).")


def weighted(value: Any, weight: Any) -> Any:
    """``value`` times ``weight``, or ``value`` where there is no weight."""
    return value if weight is None else value * weight
