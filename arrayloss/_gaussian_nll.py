"""Gaussian negative log-likelihood: the public functions.

Each function validates its arguments once (:mod:`arrayloss._calls`) and hands the
validated call to the backend for the arrays' library (:mod:`arrayloss._dispatch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import _autograd, _calls, _validation
from ._dispatch import backend
from ._torch_cpu import numpy_first

__all__ = ["gaussian_nll_loss", "gaussian_nll_loss_and_grad", "gaussian_nll_loss_backward"]

Array = Any
Gradients = tuple[Array | None, Array | None, Array | None]
ALL_GRADIENTS = _calls.GAUSSIAN_GRADIENTS


@numpy_first(records=True)
def gaussian_nll_loss(
    input: Array,
    target: Array,
    var: Array | float,
    *,
    full: bool = False,
    eps: float = 1e-6,
    reduction: str = "mean",
    validate: bool = True,
    log_var: bool = False,
    beta: float = 0.0,
) -> Array:
    r"""Gaussian negative log-likelihood of ``target`` under ``N(input, var)``.

    For each element, with :math:`v = \max(\mathrm{var}, \epsilon)`,

    .. math::

        \ell = \frac{1}{2}\left(\log v + \frac{(\mathrm{input} - \mathrm{target})^2}{v}\right)
               \;\left[+ \tfrac{1}{2}\log 2\pi \text{ if } \mathrm{full}\right]

    then reduced by ``reduction``.  The semantics are PyTorch's
    :func:`torch.nn.functional.gaussian_nll_loss`.

    Parameters
    ----------
    input : array
        Predicted means, any shape, real floating dtype.
    target : array
        Observations; broadcasts against ``input`` (it may even have more dimensions).
    var : array or real number
        Predicted variances, >= 0.  An array has ``input``'s shape, ``input``'s shape without
        its last dimension (one variance per row), or ``input``'s shape with some dimensions
        set to 1 (shared along those dimensions).  A Python or NumPy number (an int too) is one
        variance for every element; it is never expanded to a full array.
    full : bool, default False
        Add the constant :math:`\tfrac{1}{2}\log 2\pi` to every element.
    eps : float, default 1e-6
        Variances are clamped from below to ``eps`` for stability.  The clamp is invisible to
        the gradients (they are evaluated at the clamped value as if it were the input).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        ``'mean'`` averages over all elements of the broadcast loss, ``'sum'`` adds them,
        ``'none'`` returns them.
    validate : bool, default True
        Check that ``var`` has no negative entries.  On CuPy the check is fused into the
        kernel and costs one small device-to-host read; ``validate=False`` skips it and makes
        the call free of host synchronisation.  A negative scalar ``var`` is always rejected.
    log_var : bool, default False
        The third argument holds :math:`s = \log \mathrm{var}` (what networks usually
        predict: no positivity constraint, no clamp).  The loss is then
        :math:`\tfrac12 (s + d^2 e^{-s})`, ``eps`` does not apply, ``s`` may be negative, and
        the gradient is taken with respect to ``s``.  Same broadcasting rules as ``var``.
        Not in PyTorch.
    beta : float, default 0.0
        β-NLL (Seitzer et al., "On the Pitfalls of Heteroscedastic Uncertainty Estimation
        with Probabilistic Neural Networks", ICLR 2022): each element's loss is multiplied by
        :math:`v^\beta`, with :math:`v` the clamped variance (or :math:`e^s`), treated as a
        constant by the gradients; the reduction comes after the weighting.  ``beta=0.5`` is
        the paper's recommendation; 0 is plain Gaussian NLL, bit for bit and at no extra
        cost.  Finite and >= 0.  Not in PyTorch.

    Returns
    -------
    loss : array
        A 0-d array for ``'mean'`` and ``'sum'``; the broadcast shape of ``input``,
        ``target`` and ``var`` for ``'none'``.  Same library and device as ``input``; dtype
        the floating result type of the inputs (integer arrays do not take part).

    Raises
    ------
    ValueError
        A bad ``reduction`` or ``eps``, shapes that do not fit, or a negative variance.
    TypeError
        A non-floating ``input``, a non-real ``var`` scalar, or arrays from different libraries.

    See Also
    --------
    gaussian_nll_loss_backward : The gradients of this loss.
    gaussian_nll_loss_and_grad : The loss and its gradients in one pass.
    GaussianNLLLoss : The same loss with its options held by an object.

    Notes
    -----
    float16 and bfloat16 inputs are computed and accumulated in float32 and rounded once at
    the end, so large batches neither overflow nor lose precision; float64 stays float64.
    An empty input gives NaN for ``'mean'`` and 0 for ``'sum'``.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> input = np.array([[0.5, 1.5], [2.0, 4.0]])
    >>> target = np.array([[1.0, 2.0], [1.0, 2.0]])
    >>> var = np.array([[0.5], [1.5]])      # one variance per row
    >>> al.gaussian_nll_loss(input, target, var, reduction="none").round(4)
    array([[-0.0966, -0.0966],
           [ 0.5361,  1.5361]])
    >>> float(al.gaussian_nll_loss(input, target, 1.0, full=True).round(4))
    1.6064
    """
    call = _calls.gaussian_nll_call(input, target, var, full=full, eps=eps, reduction=reduction,
                                    validate=validate, log_var=log_var, beta=beta)
    arrays = (input, target) if call.var_shape is None else (input, target, var)
    if _autograd.recording(call.xp, arrays):
        options = {"full": full, "eps": eps, "reduction": reduction, "validate": validate,
                   "log_var": log_var, "beta": beta}
        return _autograd.loss(_differentiable(call, var, options), call)
    return backend(call.xp, "gaussian_nll").forward(call)


@numpy_first(records=False)
def gaussian_nll_loss_backward(
    grad_output: Array | float,
    input: Array,
    target: Array,
    var: Array | float,
    *,
    full: bool = False,
    eps: float = 1e-6,
    reduction: str = "mean",
    wrt: str | Sequence[str] = ALL_GRADIENTS,
    validate: bool = True,
    log_var: bool = False,
    beta: float = 0.0,
) -> Gradients:
    r"""Gradients of :func:`gaussian_nll_loss` with respect to ``input``, ``target`` and ``var``.

    With :math:`d = \mathrm{input} - \mathrm{target}`, :math:`v = \max(\mathrm{var}, \epsilon)`
    and :math:`G` the upstream gradient reaching each loss element (``grad_output`` for
    ``'none'`` and ``'sum'``, ``grad_output / numel`` for ``'mean'``):

    .. math::

        \frac{\partial \ell}{\partial \mathrm{input}} = \frac{G\,d}{v}, \qquad
        \frac{\partial \ell}{\partial \mathrm{target}} = -\frac{G\,d}{v}, \qquad
        \frac{\partial \ell}{\partial \mathrm{var}} = \frac{G}{2}
            \left(\frac{1}{v} - \frac{d^2}{v^2}\right)

    each summed back over the dimensions its argument was broadcast along.  As in PyTorch
    the clamp by ``eps`` is ignored: the gradients flow to ``var`` even where it was clamped.

    Parameters
    ----------
    grad_output : array or real number
        The gradient of the objective with respect to the loss: a number or a 0-d array for
        ``'mean'`` and ``'sum'``, an array of the loss's shape for ``'none'``.
    input, target, var, full, eps, reduction, validate, log_var, beta
        As in :func:`gaussian_nll_loss`.  ``full`` does not change any gradient.  With
        ``log_var`` the third gradient is with respect to the log-variance,
        :math:`\tfrac{G}{2}(1 - d^2 e^{-s})`, and the input's is :math:`G\,d\,e^{-s}`; with
        ``beta`` every gradient is multiplied by the element's weight :math:`v^\beta`.
    wrt : str or sequence of str, default ('input', 'target', 'var')
        The gradients to compute; the others come back as ``None`` and cost nothing.

    Returns
    -------
    grad_input, grad_target, grad_var : array or None
        Each with its argument's shape and dtype.  ``grad_target`` is ``None`` for an integer
        ``target`` and ``grad_var`` for a scalar or integer ``var``, which have no gradient.

    Raises
    ------
    ValueError, TypeError
        As :func:`gaussian_nll_loss`, plus a ``grad_output`` of the wrong shape or kind and
        unknown names in ``wrt``.

    See Also
    --------
    gaussian_nll_loss_and_grad : Loss and gradients together, for training loops.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> input, target, var = np.array([1.0, 2.0]), np.array([0.0, 0.0]), np.array([1.0, 4.0])
    >>> grad_input, grad_target, grad_var = al.gaussian_nll_loss_backward(
    ...     1.0, input, target, var, reduction="sum")
    >>> grad_input
    array([1. , 0.5])
    >>> grad_var
    array([0., 0.])
    >>> al.gaussian_nll_loss_backward(1.0, input, target, var, wrt="var")[:2]
    (None, None)
    """
    call = _calls.gaussian_nll_call(
        input, target, var, full=full, eps=eps, reduction=reduction, validate=validate,
        log_var=log_var, beta=beta,
    )
    wanted = _calls.check_wrt(wrt, call)
    upstream = _validation.check_grad_output(
        grad_output, call.input, call.xp, call.loss_shape, reduction
    )
    with _autograd.not_recorded(call.xp):
        return backend(call.xp, "gaussian_nll").backward(call, upstream, wanted)


@numpy_first(records=False)
def gaussian_nll_loss_and_grad(
    input: Array,
    target: Array,
    var: Array | float,
    *,
    full: bool = False,
    eps: float = 1e-6,
    reduction: str = "mean",
    wrt: str | Sequence[str] = ALL_GRADIENTS,
    validate: bool = True,
    log_var: bool = False,
    beta: float = 0.0,
) -> tuple[Array, Gradients]:
    """The reduced Gaussian NLL and its gradients, computed together.

    Equivalent to :func:`gaussian_nll_loss` followed by :func:`gaussian_nll_loss_backward`
    with ``grad_output=1``, but on CuPy it is one fused pass over memory, the cheapest way to
    run a training step.

    Parameters
    ----------
    input, target, var, full, eps, validate, log_var, beta
        As in :func:`gaussian_nll_loss`.
    reduction : {'mean', 'sum'}, default 'mean'
        The loss must be a scalar to have a gradient without an upstream one.
    wrt : str or sequence of str, default ('input', 'target', 'var')
        As in :func:`gaussian_nll_loss_backward`.

    Returns
    -------
    loss : array
        0-d, as :func:`gaussian_nll_loss` returns it.
    grads : tuple of (array or None)
        ``(grad_input, grad_target, grad_var)``, as :func:`gaussian_nll_loss_backward`
        returns them.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> loss, (grad_input, _, grad_var) = al.gaussian_nll_loss_and_grad(
    ...     np.array([1.0, 2.0]), np.zeros(2), np.array([1.0, 4.0]))
    >>> float(loss.round(4)), grad_input
    (0.8466, array([0.5 , 0.25]))
    """
    _validation.require_scalar_loss(reduction, "gaussian_nll_loss_and_grad", "gaussian_nll_loss")
    call = _calls.gaussian_nll_call(
        input, target, var, full=full, eps=eps, reduction=reduction, validate=validate,
        log_var=log_var, beta=beta,
    )
    wanted = _calls.check_wrt(wrt, call)
    with _autograd.not_recorded(call.xp):
        return backend(call.xp, "gaussian_nll").loss_and_grad(call, wanted)


def _differentiable(call: _calls.GaussianNLLCall, var: Array | float,
                    options: dict[str, Any]) -> _autograd.Differentiable:
    """This loss for the autograd bridges: torch tensors or JAX tracers, see ``_autograd``."""
    named = {"input": call.input, "target": call.target}
    if call.var_shape is not None:
        named["var"] = var

    def make_call(arrays: dict[str, Array]) -> _calls.GaussianNLLCall:
        return _calls.gaussian_nll_call(arrays["input"], arrays["target"],
                                             arrays.get("var", var), **options)

    def backward(call: _calls.GaussianNLLCall, grad_output: Array,
                 wanted: frozenset[str]) -> dict[str, Array | None]:
        upstream = _validation.check_grad_output(grad_output, call.input, call.xp,
                                                 call.loss_shape, call.reduction)
        grads = backend(call.xp, "gaussian_nll").backward(
            call, upstream, _calls.check_wrt(tuple(wanted), call))
        return dict(zip(ALL_GRADIENTS, grads, strict=True))

    def loss_and_grad(call: _calls.GaussianNLLCall, wanted: frozenset[str]
                      ) -> tuple[Array, dict[str, Array | None]]:
        loss, grads = backend(call.xp, "gaussian_nll").loss_and_grad(
            call, _calls.check_wrt(tuple(wanted), call))
        return loss, _autograd.wanted_gradients(ALL_GRADIENTS, grads, wanted)

    return _autograd.Differentiable(
        arrays=named, make_call=make_call,
        forward=lambda call: backend(call.xp, "gaussian_nll").forward(call), backward=backward,
        loss_and_grad=loss_and_grad)
