"""Pieces several loss declarations share: the usual arguments and their docs."""

from __future__ import annotations

from .._elementwise.spec import Argument

__all__ = ["INPUT", "TARGET", "integer_target", "same_shape_target"]

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
