"""Negative log-likelihood: the public functions.

Each function validates its arguments once (:mod:`arrayloss._calls`) and hands the
validated call to the backend for the arrays' library (:mod:`arrayloss._dispatch`).
"""

from __future__ import annotations

from typing import Any

from . import _autograd, _class_calls, _validation
from ._dispatch import backend
from ._torch_cpu import numpy_first

__all__ = ["nll_loss", "nll_loss_and_grad", "nll_loss_backward"]

Array = Any


@numpy_first(records=True)
def nll_loss(
    input: Array,
    target: Array,
    weight: Array | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    validate: bool = True,
) -> Array:
    r"""Negative log-likelihood of class targets given log-probabilities.

    For each element :math:`n` with target :math:`t_n` and class weight :math:`w_c`
    (1 without ``weight``):

    .. math::

        \ell_n = -w_{t_n}\,\mathrm{input}[n, t_n], \qquad
        \text{'mean'} = \frac{\sum_n \ell_n}{\sum_n w_{t_n}}, \qquad
        \text{'sum'} = \sum_n \ell_n

    where elements whose target equals ``ignore_index`` contribute 0 to both sums.  The
    semantics are PyTorch's :func:`torch.nn.functional.nll_loss`.

    Parameters
    ----------
    input : array
        Log-probabilities, real floating dtype, of shape ``(C,)`` (one unbatched sample),
        ``(N, C)``, or ``(N, C, d1, ..., dK)`` for K-dimensional targets (e.g. images).
    target : array
        Class indices of any integer dtype: shape ``()`` or ``(1,)`` for ``(C,)`` input,
        ``(N,)``, or ``(N, d1, ..., dK)``.  Values lie in ``[0, C)`` or equal
        ``ignore_index``.
    weight : array, optional
        Class weights of shape ``(C,)``, with ``input``'s dtype.  They are constants to
        autograd: a torch ``weight`` that requires grad gets no gradient (its ``.grad`` stays
        None; PyTorch raises instead).
    ignore_index : int, default -100
        Targets equal to it are skipped: loss 0, gradient 0, no weight in the mean.  It may
        be any int, inside ``[0, C)`` too; it is compared by value (a uint8 255 matches 255).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        ``'mean'`` is the weighted mean above (NaN when every target is ignored, as in
        PyTorch), ``'sum'`` the sum, ``'none'`` the per-element losses.
    validate : bool, default True
        Check that every target lies in ``[0, C)`` or equals ``ignore_index``.  On CuPy the
        check is fused into the kernel and costs one small device-to-host read;
        ``validate=False`` skips it (then an out-of-range target is never read out of
        bounds, but its result is unspecified) and makes the call free of host
        synchronisation.

    Returns
    -------
    loss : array
        0-d for ``'mean'`` and ``'sum'`` (and for unbatched input); ``(N, d1, ..., dK)`` for
        ``'none'``.  Same library, device and dtype as ``input``.

    Raises
    ------
    ValueError
        A bad ``reduction``, shapes that do not fit, or a bad ``weight`` shape.
    TypeError
        A non-floating ``input``, a non-integer ``target``, a ``weight`` of another dtype, a
        non-int ``ignore_index``, or arrays from different libraries.
    TargetOutOfRangeError
        A target outside ``[0, C)`` that is not ``ignore_index`` (also an ``IndexError`` and
        a ``ValueError``); the message names the value and ``C``.

    See Also
    --------
    nll_loss_backward : The gradient of this loss.
    nll_loss_and_grad : The loss and its gradient in one pass.
    NLLLoss : The same loss with its options held by an object.

    Notes
    -----
    float16 and bfloat16 inputs accumulate the sum and the total weight in float32, so
    batches beyond 65504 elements stay finite.  For unbatched ``(C,)`` input ``'mean'`` is
    :math:`(-w_t x_t) / w_t` on every backend (PyTorch's CPU rule), NaN if ``t`` is ignored.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> log_probs = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    >>> target = np.array([0, 2])
    >>> float(al.nll_loss(log_probs, target).round(4))
    0.2899
    >>> al.nll_loss(log_probs, np.array([0, -100]), reduction="none").round(4)
    array([0.3567, 0.    ])
    >>> weight = np.array([1.0, 1.0, 3.0])
    >>> float(al.nll_loss(log_probs, target, weight).round(4))
    0.2565
    """
    call = _class_calls.nll_call(input, target, weight, ignore_index=ignore_index,
                                 reduction=reduction, validate=validate)
    arrays = (input, target) if weight is None else (input, target, weight)
    if _autograd.recording(call.xp, arrays):
        options = {"ignore_index": ignore_index, "reduction": reduction, "validate": validate}
        return _autograd.loss(_differentiable(call, options), call)
    return backend(call.xp, "nll").forward(call)


@numpy_first(records=False)
def nll_loss_backward(
    grad_output: Array | float,
    input: Array,
    target: Array,
    weight: Array | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    validate: bool = True,
) -> Array:
    r"""Gradient of :func:`nll_loss` with respect to ``input``.

    .. math::

        \frac{\partial \ell}{\partial \mathrm{input}[n, c]} =
        \begin{cases} -w_{t_n}\,G_n & c = t_n,\ t_n \ne \text{ignore\_index} \\
        0 & \text{otherwise} \end{cases}

    with :math:`G_n` the upstream gradient of element :math:`n`: ``grad_output[n]`` for
    ``'none'``, ``grad_output`` for ``'sum'``, ``grad_output / total_weight`` for ``'mean'``.
    Every entry is written once; there is no zero-fill followed by a scatter.  As in PyTorch,
    an all-ignored ``'mean'`` gives an all-zero gradient (not NaN), while non-ignored targets
    whose weights sum to 0 give NaN at the target positions.

    Parameters
    ----------
    grad_output : array or real number
        The gradient of the objective with respect to the loss: a number or a 0-d array for
        ``'mean'`` and ``'sum'``, an array of the loss's shape for ``'none'``.
    input, target, weight, ignore_index, reduction, validate
        As in :func:`nll_loss`.

    Returns
    -------
    grad_input : array
        ``input``'s shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> log_probs = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    >>> al.nll_loss_backward(1.0, log_probs, np.array([0, 2]))
    array([[-0.5,  0. ,  0. ],
           [ 0. ,  0. , -0.5]])
    """
    call = _class_calls.nll_call(
        input, target, weight, ignore_index=ignore_index, reduction=reduction, validate=validate
    )
    upstream = _validation.check_grad_output(
        grad_output, call.input, call.xp, call.loss_shape, reduction
    )
    with _autograd.not_recorded(call.xp):
        return backend(call.xp, "nll").backward(call, upstream)


@numpy_first(records=False)
def nll_loss_and_grad(
    input: Array,
    target: Array,
    weight: Array | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    validate: bool = True,
) -> tuple[Array, Array]:
    """The reduced NLL and its gradient with respect to ``input``, computed together.

    Equivalent to :func:`nll_loss` followed by :func:`nll_loss_backward` with
    ``grad_output=1``, sharing the target gather; on CuPy the total weight never leaves the
    device.

    Parameters
    ----------
    input, target, weight, ignore_index, validate
        As in :func:`nll_loss`.
    reduction : {'mean', 'sum'}, default 'mean'
        The loss must be a scalar to have a gradient without an upstream one.

    Returns
    -------
    loss : array
        0-d.
    grad_input : array
        ``input``'s shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> log_probs = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    >>> loss, grad = al.nll_loss_and_grad(log_probs, np.array([1, 1]), reduction="sum")
    >>> float(loss.round(4)), grad[:, 1]
    (3.912, array([-1., -1.]))
    """
    _validation.require_scalar_loss(reduction, "nll_loss_and_grad", "nll_loss")
    call = _class_calls.nll_call(
        input, target, weight, ignore_index=ignore_index, reduction=reduction, validate=validate
    )
    with _autograd.not_recorded(call.xp):
        return backend(call.xp, "nll").loss_and_grad(call)


def _differentiable(call: _class_calls.NLLCall,
                    options: dict[str, Any]) -> _autograd.Differentiable:
    """This loss for the autograd bridges (see ``_autograd``).  Only ``input`` has a gradient:
    targets are class indices, and the class weights are constants (PyTorch refuses a
    ``weight`` that requires grad; here it gets no gradient: None)."""
    named = {"input": call.input, "target": call.target}
    if call.weight is not None:
        named["weight"] = call.weight

    def make_call(arrays: dict[str, Array]) -> _class_calls.NLLCall:
        return _class_calls.nll_call(arrays["input"], arrays["target"], arrays.get("weight"),
                                    **options)

    def backward(call: _class_calls.NLLCall, grad_output: Array,
                 wanted: frozenset[str]) -> dict[str, Array | None]:
        if "input" not in wanted:
            return {}
        upstream = _validation.check_grad_output(grad_output, call.input, call.xp,
                                                 call.loss_shape, call.reduction)
        return {"input": backend(call.xp, "nll").backward(call, upstream)}

    return _autograd.Differentiable(
        arrays=named, make_call=make_call,
        forward=lambda call: backend(call.xp, "nll").forward(call), backward=backward)
