"""Loss objects in the style of ``torch.nn``: the options are held once, checked at construction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from array_api_compat import is_array_api_obj

from . import _validation
from ._cross_entropy import cross_entropy, cross_entropy_and_grad, cross_entropy_backward
from ._gaussian_nll import (
    ALL_GRADIENTS,
    gaussian_nll_loss,
    gaussian_nll_loss_and_grad,
    gaussian_nll_loss_backward,
)
from ._linear_cross_entropy import (
    linear_cross_entropy,
    linear_cross_entropy_and_grad,
    linear_cross_entropy_backward,
)
from ._nll import nll_loss, nll_loss_and_grad, nll_loss_backward

__all__ = ["CrossEntropyLoss", "GaussianNLLLoss", "LinearCrossEntropyLoss", "NLLLoss"]

Array = Any
Gradients = tuple[Array | None, Array | None, Array | None]


class GaussianNLLLoss:
    """Gaussian negative log-likelihood with its options held by the object.

    ``loss(input, target, var)`` is :func:`gaussian_nll_loss`,
    ``loss.backward(grad_output, input, target, var)`` is
    :func:`gaussian_nll_loss_backward` and ``loss.loss_and_grad(input, target, var)`` is
    :func:`gaussian_nll_loss_and_grad`, all with the options given here.  Unlike PyTorch,
    the options are checked when the object is built.

    Parameters
    ----------
    full : bool, default False
        Add the constant ``0.5 * log(2 * pi)`` to every element.
    eps : float, default 1e-6
        Lower clamp for the variance.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        How the per-element losses are combined.
    validate : bool, default True
        Check that array variances are non-negative.
    log_var : bool, default False
        The third argument is the log-variance (see :func:`gaussian_nll_loss`).
    beta : float, default 0.0
        The β-NLL exponent (see :func:`gaussian_nll_loss`).

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> loss_fn = al.GaussianNLLLoss(reduction="sum")
    >>> input, target, var = np.array([1.0, 2.0]), np.zeros(2), np.array([1.0, 4.0])
    >>> float(loss_fn(input, target, var).round(4))
    1.6931
    >>> loss_fn.backward(1.0, input, target, var, wrt="input")[0]
    array([1. , 0.5])
    """

    def __init__(
        self,
        *,
        full: bool = False,
        eps: float = 1e-6,
        reduction: str = "mean",
        validate: bool = True,
        log_var: bool = False,
        beta: float = 0.0,
    ) -> None:
        self.full = _validation.check_flag("full", full)
        self.eps = _validation.check_eps(eps)
        self.reduction = _validation.check_reduction(reduction)
        self.validate = _validation.check_flag("validate", validate)
        self.log_var = _validation.check_flag("log_var", log_var)
        self.beta = _validation.check_beta(beta)

    def _options(self) -> dict[str, Any]:
        return {"full": self.full, "eps": self.eps, "reduction": self.reduction,
                "validate": self.validate, "log_var": self.log_var, "beta": self.beta}

    def __call__(self, input: Array, target: Array, var: Array | float) -> Array:
        """The loss; see :func:`gaussian_nll_loss`."""
        return gaussian_nll_loss(input, target, var, **self._options())

    def backward(
        self,
        grad_output: Array | float,
        input: Array,
        target: Array,
        var: Array | float,
        *,
        wrt: str | Sequence[str] = ALL_GRADIENTS,
    ) -> Gradients:
        """``(grad_input, grad_target, grad_var)``; see :func:`gaussian_nll_loss_backward`."""
        return gaussian_nll_loss_backward(
            grad_output, input, target, var, wrt=wrt, **self._options()
        )

    def loss_and_grad(
        self,
        input: Array,
        target: Array,
        var: Array | float,
        *,
        wrt: str | Sequence[str] = ALL_GRADIENTS,
    ) -> tuple[Array, Gradients]:
        """``(loss, (grad_input, grad_target, grad_var))``.

        See :func:`gaussian_nll_loss_and_grad`.
        """
        return gaussian_nll_loss_and_grad(input, target, var, wrt=wrt, **self._options())

    def __repr__(self) -> str:
        return (f"GaussianNLLLoss(full={self.full}, eps={self.eps}, "
                f"reduction={self.reduction!r}, validate={self.validate}, "
                f"log_var={self.log_var}, beta={self.beta})")


def _set_class_options(loss: Any, weight: Array | None, ignore_index: object,
                       reduction: object, validate: object) -> None:
    """The options every loss object over classes holds, checked once."""
    if weight is not None and not is_array_api_obj(weight):
        raise TypeError(f"weight must be an array or None, got {type(weight).__name__}")
    loss.weight = weight
    loss.ignore_index = _validation.check_ignore_index(ignore_index)
    loss.reduction = _validation.check_reduction(reduction)
    loss.validate = _validation.check_flag("validate", validate)


class NLLLoss:
    """Negative log-likelihood with its options held by the object.

    ``loss(input, target)`` is :func:`nll_loss`, ``loss.backward(grad_output, input,
    target)`` is :func:`nll_loss_backward` and ``loss.loss_and_grad(input, target)`` is
    :func:`nll_loss_and_grad`, all with the options given here.  Unlike PyTorch, the options
    are checked when the object is built (``weight``'s fit to the input when it is used).

    Parameters
    ----------
    weight : array, optional
        Class weights of shape ``(C,)``, held by reference (not copied).
    ignore_index : int, default -100
        Targets equal to it are skipped.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        How the per-element losses are combined.
    validate : bool, default True
        Check that targets lie in ``[0, C)`` or equal ``ignore_index``.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> loss_fn = al.NLLLoss(weight=np.array([1.0, 2.0]), ignore_index=-1)
    >>> log_probs = np.log(np.array([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]))
    >>> float(loss_fn(log_probs, np.array([0, 1, -1])).round(4))
    0.4228
    """

    weight: Array | None
    ignore_index: int
    reduction: str
    validate: bool

    def __init__(
        self,
        weight: Array | None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        validate: bool = True,
    ) -> None:
        _set_class_options(self, weight, ignore_index, reduction, validate)

    def _options(self) -> dict[str, Any]:
        return {"ignore_index": self.ignore_index, "reduction": self.reduction,
                "validate": self.validate}

    def __call__(self, input: Array, target: Array) -> Array:
        """The loss; see :func:`nll_loss`."""
        return nll_loss(input, target, self.weight, **self._options())

    def backward(self, grad_output: Array | float, input: Array, target: Array) -> Array:
        """``grad_input``; see :func:`nll_loss_backward`."""
        return nll_loss_backward(grad_output, input, target, self.weight, **self._options())

    def loss_and_grad(self, input: Array, target: Array) -> tuple[Array, Array]:
        """``(loss, grad_input)``; see :func:`nll_loss_and_grad`."""
        return nll_loss_and_grad(input, target, self.weight, **self._options())

    def __repr__(self) -> str:
        weight = "None" if self.weight is None else f"<array of shape {tuple(self.weight.shape)}>"
        return (f"NLLLoss(weight={weight}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}, validate={self.validate})")


class CrossEntropyLoss:
    """Cross-entropy of logits with its options held by the object.

    ``loss(input, target)`` is :func:`cross_entropy`, ``loss.backward(grad_output, input,
    target)`` is :func:`cross_entropy_backward` and ``loss.loss_and_grad(input, target)`` is
    :func:`cross_entropy_and_grad`, all with the options given here.  Unlike PyTorch, the
    options are checked when the object is built (``weight``'s fit to the input when it is
    used).

    Parameters
    ----------
    weight : array, optional
        Class weights of shape ``(C,)``, held by reference (not copied).
    ignore_index : int, default -100
        Index targets equal to it are skipped.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        How the per-sample losses are combined.
    label_smoothing : float, default 0.0
        The share of the uniform distribution in the target, in ``[0, 1]``.
    validate : bool, default True
        Check that index targets lie in ``[0, C)`` or equal ``ignore_index``.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> loss_fn = al.CrossEntropyLoss(label_smoothing=0.1)
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    >>> float(loss_fn(logits, np.array([0, 2])).round(4))
    0.3431
    """

    weight: Array | None
    ignore_index: int
    reduction: str
    validate: bool

    def __init__(
        self,
        weight: Array | None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        validate: bool = True,
    ) -> None:
        _set_class_options(self, weight, ignore_index, reduction, validate)
        self.label_smoothing = _validation.check_label_smoothing(label_smoothing)

    def _options(self) -> dict[str, Any]:
        return {"ignore_index": self.ignore_index, "reduction": self.reduction,
                "label_smoothing": self.label_smoothing, "validate": self.validate}

    def __call__(self, input: Array, target: Array) -> Array:
        """The loss; see :func:`cross_entropy`."""
        return cross_entropy(input, target, self.weight, **self._options())

    def backward(self, grad_output: Array | float, input: Array, target: Array) -> Array:
        """``grad_input``; see :func:`cross_entropy_backward`."""
        return cross_entropy_backward(grad_output, input, target, self.weight,
                                      **self._options())

    def loss_and_grad(self, input: Array, target: Array, *,
                      out: Array | None = None) -> tuple[Array, Array]:
        """``(loss, grad_input)``; see :func:`cross_entropy_and_grad` (``out`` included)."""
        return cross_entropy_and_grad(input, target, self.weight, out=out, **self._options())

    def __repr__(self) -> str:
        weight = "None" if self.weight is None else f"<array of shape {tuple(self.weight.shape)}>"
        return (f"CrossEntropyLoss(weight={weight}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, "
                f"validate={self.validate})")


class LinearCrossEntropyLoss:
    """Fused linear cross-entropy (a language model's head and its loss) with its options
    held by the object.

    ``loss(input, linear_weight, target, linear_bias=None)`` is :func:`linear_cross_entropy`,
    ``loss.backward(grad_output, input, linear_weight, target, linear_bias=None)`` is
    :func:`linear_cross_entropy_backward` and ``loss.loss_and_grad(...)`` is
    :func:`linear_cross_entropy_and_grad`, all with the options given here (checked when the
    object is built; ``weight``'s fit when it is used).

    Parameters
    ----------
    weight : array, optional
        Class weights of shape ``(V,)``, held by reference (not copied).
    ignore_index : int, optional
        Index targets equal to it are skipped; None (the default, as PyTorch's) is -100 for
        index targets, and the only value class probabilities take.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        How the per-token losses are combined.
    label_smoothing : float, default 0.0
        The share of the uniform distribution in the target, in ``[0, 1]``.
    z_loss : float, default 0.0
        The weight of ``lse**2`` per kept token.
    softcap : float, optional
        Logits become ``softcap * tanh(logits / softcap)``.
    return_lse : bool, default False
        The call also returns the per-token log-sum-exp.
    chunk_size : int, optional
        Tokens per chunk (see :func:`linear_cross_entropy` for the default).
    validate : bool, default True
        Check that index targets lie in ``[0, V)`` or equal ``ignore_index``.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> loss_fn = al.LinearCrossEntropyLoss(z_loss=1e-4)
    >>> h, W = np.ones((2, 3)), np.zeros((4, 3))
    >>> float(loss_fn(h, W, np.array([0, 1])).round(4))
    1.3865
    """

    weight: Array | None
    ignore_index: int | None
    reduction: str
    validate: bool

    def __init__(
        self,
        weight: Array | None = None,
        *,
        ignore_index: int | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        return_lse: bool = False,
        chunk_size: int | None = None,
        validate: bool = True,
    ) -> None:
        from ._linear_calls import _check_options, check_linear_ignore_index

        _set_class_options(self, weight, check_linear_ignore_index(ignore_index), reduction,
                           validate)
        if ignore_index is None:  # kept as given: a call with probabilities refuses -100
            self.ignore_index = None
        self.label_smoothing = _validation.check_label_smoothing(label_smoothing)
        self.z_loss, self.softcap, self.chunk_size = _check_options(z_loss, softcap,
                                                                    chunk_size)
        self.return_lse = _validation.check_flag("return_lse", return_lse)

    def _options(self) -> dict[str, Any]:
        return {"weight": self.weight, "ignore_index": self.ignore_index,
                "reduction": self.reduction, "label_smoothing": self.label_smoothing,
                "z_loss": self.z_loss, "softcap": self.softcap, "chunk_size": self.chunk_size,
                "validate": self.validate}

    def __call__(self, input: Array, linear_weight: Array, target: Array,
                 linear_bias: Array | None = None) -> Array:
        """The loss (and the lse with ``return_lse``); see :func:`linear_cross_entropy`."""
        return linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                    return_lse=self.return_lse, **self._options())

    def backward(self, grad_output: Array | float, input: Array, linear_weight: Array,
                 target: Array, linear_bias: Array | None = None) -> Gradients:
        """``(grad_input, grad_linear_weight, grad_linear_bias)``; see
        :func:`linear_cross_entropy_backward`."""
        return linear_cross_entropy_backward(grad_output, input, linear_weight, target,
                                             linear_bias=linear_bias, **self._options())

    def loss_and_grad(self, input: Array, linear_weight: Array, target: Array,
                      linear_bias: Array | None = None) -> tuple[Array, Gradients]:
        """``(loss, (grad_input, grad_linear_weight, grad_linear_bias))``; see
        :func:`linear_cross_entropy_and_grad`."""
        return linear_cross_entropy_and_grad(input, linear_weight, target,
                                             linear_bias=linear_bias,
                                             return_lse=self.return_lse, **self._options())

    def __repr__(self) -> str:
        weight = "None" if self.weight is None else f"<array of shape {tuple(self.weight.shape)}>"
        return (f"LinearCrossEntropyLoss(weight={weight}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, "
                f"z_loss={self.z_loss}, softcap={self.softcap}, return_lse={self.return_lse}, "
                f"chunk_size={self.chunk_size}, validate={self.validate})")
