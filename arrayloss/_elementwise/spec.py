"""The declaration of an elementwise loss: what a loss module writes, and nothing else.

An elementwise loss is a per-element forward :math:`\\ell(x, t, \\ldots)`, its per-element
gradients, a broadcast rule and a reduction.  :class:`ElementwiseLoss` holds exactly that:

* its **arguments** (:class:`Argument`): which take part in the loss's broadcast shape, which
  must have the input's shape, which are weights that broadcast into it; which may be
  integers; which have gradients;
* its **options** (:class:`Option`): flags, which choose the formula, and numbers, which are
  operands of it;
* its **value checks** (:class:`RangeCheck`): ranges an argument's entries must lie in;
* its **math**, written once against an ``ops`` object (:mod:`.trace`): the same two
  functions become the generic array-API code, the NumPy blocks and the CUDA kernel's body;
* its **docs**: the pieces the public functions' docstrings are made of.

The shared layers (:mod:`.call`, :mod:`.generic`, :mod:`.public`, :mod:`arrayloss._cupy
.elementwise`, :mod:`.dask`) turn one declaration into everything a loss has.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Argument", "ElementwiseLoss", "Option", "RangeCheck"]

#: ``"broadcast"``: broadcasts with the others into the loss's shape; ``"input"``: must have
#: the input's shape (PyTorch's rule for binary cross-entropy's target); ``"into"``: a weight
#: that broadcasts into the loss's shape without growing it.
ShapeRule = Literal["broadcast", "input", "into"]


@dataclass(frozen=True)
class Argument:
    """One array argument of an elementwise loss."""

    name: str
    #: How its shape relates to the loss's (see :data:`ShapeRule`).
    shape: ShapeRule = "broadcast"
    #: Whether an integer dtype is accepted (it has no gradient then).
    integer: bool = False
    #: Whether a bool dtype is accepted too (a mask as a weight: True is 1, as PyTorch
    #: multiplies it).
    boolean: bool = False
    #: Whether the loss has a gradient with respect to it (``wrt`` may name it).
    differentiable: bool = True
    #: Whether ``None`` may be passed (a weight that is absent: the loss is unweighted).
    optional: bool = False
    #: Whether its floating dtype takes part in the result's dtype (weights do not: they are
    #: cast to the compute dtype, as PyTorch multiplies them into the loss in place).
    promotes: bool = True
    #: Whether it is keyword-only in the public functions (PyTorch's ``pos_weight``).
    keyword: bool = False
    #: Whether the loss object takes it when built (an optional argument): PyTorch's
    #: ``BCELoss(weight)`` holds its weight, ``MSELoss`` none (``mse_loss``'s per-element
    #: weight comes with each call, so the object does not take it).
    held: bool = True
    #: Its docstring entry: the type line's description.
    doc: str = ""


@dataclass(frozen=True)
class Option:
    """A keyword option of an elementwise loss.

    A ``bool`` option chooses between formulas and is a Python bool inside the math (a CUDA
    kernel is built for each value); a ``float`` option is an operand of the math (a Python
    float in the array code, a kernel argument in CUDA).
    """

    name: str
    default: bool | float
    #: For a number: the smallest value allowed, and whether it is allowed itself.
    minimum: float = -math.inf
    inclusive: bool = True
    #: The explanation added to the error for a value below ``minimum``.
    hint: str = ""
    doc: str = ""

    @property
    def is_flag(self) -> bool:
        return isinstance(self.default, bool)


@dataclass(frozen=True)
class RangeCheck:
    """Entries of ``argument`` must lie in ``[low, high]`` (NaN fails), checked when
    ``validate=True``; else the error says ``message``."""

    argument: str
    low: float
    high: float
    message: str


#: ``forward(ops, **arrays, **options)``: the per-element loss.
Forward = Callable[..., Any]
#: ``gradients(ops, grad, **arrays, **options)``: per-element gradients by argument name,
#: ``grad`` being the upstream gradient reaching each element.  A gradient may be given as a
#: function of no arguments that computes it: the array code calls it only when ``wrt`` asks
#: for that gradient (a training step's ``wrt="input"`` skips the target's passes).
Gradients = Callable[..., Mapping[str, Any]]


# eq=False: a declaration is itself (hashed by identity), the key of its kernels and backends.
@dataclass(frozen=True, eq=False)
class ElementwiseLoss:
    """The declaration of one elementwise loss (see the module docstring)."""

    #: The public function's name (``mse_loss``); the others add ``_backward``, ``_and_grad``.
    name: str
    #: The loss object's class name (``MSELoss``).
    module: str
    arguments: tuple[Argument, ...]
    forward: Forward
    gradients: Gradients
    options: tuple[Option, ...] = ()
    checks: tuple[RangeCheck, ...] = ()
    #: Reductions beyond ``'none'``, ``'mean'`` and ``'sum'``, each with its divisor from the
    #: input's shape (``'batchmean'``: the batch size).
    extra_reductions: Mapping[str, Callable[[tuple[int, ...]], int]] = field(
        default_factory=dict)
    #: An optional argument whose sum ``'mean'`` divides by when it is given, instead of the
    #: element count: PyTorch's weighted mean, ``sum(w * loss) / sum(w)``, of ``mse_loss``
    #: and ``l1_loss`` (:mod:`.weighted_mean`); ``""`` for none.
    mean_over: str = ""
    #: Whether a target of another shape than the input's warns, as PyTorch's regression
    #: losses do (a ``(N,)`` target against an ``(N, 1)`` input broadcasts to ``(N, N)``).
    warns_on_broadcast: bool = False
    #: A one-line summary, the formula (reStructuredText math) and further notes, for the
    #: docstrings; ``pytorch`` names the function whose semantics it has.
    summary: str = ""
    #: The title of its section in the API reference (losses of one family share one).
    family: str = ""
    formula: str = ""
    gradient_formula: str = ""
    notes: str = ""
    pytorch: str = ""
    example: str = ""

    def __post_init__(self) -> None:
        names = [argument.name for argument in self.arguments]
        if self.mean_over and (
                self.mean_over not in names or not self.argument(self.mean_over).optional
                or self.argument(self.mean_over).differentiable):
            # Differentiable, it would need the quotient rule's term, which the adapter
            # (a 'sum' over the weights' sum) does not add.
            raise ValueError(f"{self.name}: mean_over must name an optional argument "
                             f"without a gradient (a weight), got {self.mean_over!r}")

    @property
    def reductions(self) -> tuple[str, ...]:
        return ("none", "mean", "sum", *self.extra_reductions)

    @property
    def gradient_names(self) -> tuple[str, ...]:
        """The names ``wrt`` may hold, in the order the gradients are returned."""
        return tuple(a.name for a in self.arguments if a.differentiable)

    def argument(self, name: str) -> Argument:
        for argument in self.arguments:
            if argument.name == name:
                return argument
        raise KeyError(name)
