"""Cross-entropy of logits: the public functions.

Each function validates its arguments once (:mod:`arrayloss._class_calls`) and hands the
validated call to the backend for the arrays' library (:mod:`arrayloss._dispatch`).
"""

from __future__ import annotations

from typing import Any

from . import _autograd, _class_calls, _validation
from ._dispatch import backend
from ._torch_cpu import numpy_first

__all__ = ["cross_entropy", "cross_entropy_and_grad", "cross_entropy_backward"]

Array = Any


@numpy_first(records=True)
def cross_entropy(
    input: Array,
    target: Array,
    weight: Array | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    validate: bool = True,
) -> Array:
    r"""Cross-entropy between the softmax of logits and class targets.

    With :math:`\log p_{n,c} = z_{n,c} - \log\sum_k e^{z_{n,k}}` the log-softmax of the
    logits ``input`` over the class axis, class weights :math:`w_c` (1 without ``weight``)
    and label smoothing :math:`\varepsilon`:

    * **class-index targets** :math:`t_n` (an integer array):

      .. math::

          \ell_n = (1-\varepsilon)\,(-w_{t_n}\log p_{n,t_n})
                   + \frac{\varepsilon}{C}\sum_c (-w_c \log p_{n,c}), \qquad
          \text{'mean'} = \frac{\sum_n \ell_n}{\sum_n w_{t_n}}

      where a target equal to ``ignore_index`` gives :math:`\ell_n = 0` and no weight in the
      mean;

    * **class-probability targets** :math:`q_{n,c}` (a floating array of the input's shape),
      smoothed to :math:`q' = (1-\varepsilon)\,q + \varepsilon / C`:

      .. math::

          \ell_n = -\sum_c w_c\, q'_{n,c} \log p_{n,c}, \qquad
          \text{'mean'} = \frac{\sum_n \ell_n}{N \cdot d_1 \cdots d_K}

      (the mean over samples, not weighted).

    The semantics are PyTorch's :func:`torch.nn.functional.cross_entropy`, both means
    included.  No ``N x C`` temporary is kept: NumPy works through cache-sized blocks of rows
    (O(N) memory beyond the input for the forward), and CuPy arrays run one fused kernel that
    reads each row once.

    Parameters
    ----------
    input : array
        Logits (unnormalised scores), real floating dtype, of shape ``(C,)``, ``(N, C)``, or
        ``(N, C, d1, ..., dK)``.
    target : array
        Class indices of any integer dtype, shaped as for :func:`nll_loss` (``()`` or
        ``(1,)`` for ``(C,)`` input, ``(N,)``, ``(N, d1, ..., dK)``); or class probabilities,
        a real floating array of the input's shape.
    weight : array, optional
        Class weights of shape ``(C,)``, with ``input``'s dtype.  They are constants to
        autograd: a torch ``weight`` that requires grad gets no gradient (its ``.grad`` stays
        None; PyTorch raises instead).
    ignore_index : int, default -100
        Index targets equal to it are skipped (loss 0, gradient 0, no weight in the mean).
        Probability targets take no ``ignore_index`` (a value >= 0 is an error, as in
        PyTorch).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        ``'mean'`` as above (NaN when every target is ignored or there are no samples),
        ``'sum'`` the sum, ``'none'`` the per-sample losses.
    label_smoothing : float, default 0.0
        :math:`\varepsilon` in ``[0, 1]``: the target mixes ``1 - eps`` of the given class (or
        distribution) with ``eps`` of the uniform one.
    validate : bool, default True
        Check that every index target lies in ``[0, C)`` or equals ``ignore_index``, as
        :func:`nll_loss` does.

    Returns
    -------
    loss : array
        0-d for ``'mean'`` and ``'sum'`` (and unbatched input); ``(N, d1, ..., dK)`` for
        ``'none'``.  The input's dtype (promoted with a probability target's).

    Raises
    ------
    ValueError
        A bad ``reduction`` or ``label_smoothing``, shapes that do not fit, a bad ``weight``
        shape, or ``ignore_index >= 0`` with probability targets.
    TypeError
        A non-floating ``input``, a target that is neither integer nor floating, a ``weight``
        of another dtype, or arrays from different libraries.
    TargetOutOfRangeError
        An index target outside ``[0, C)`` that is not ``ignore_index``.

    See Also
    --------
    cross_entropy_backward : The gradient of this loss.
    cross_entropy_and_grad : The loss and its gradient in one pass, optionally in place.
    CrossEntropyLoss : The same loss with its options held by an object.
    nll_loss : The same loss on log-probabilities.

    Notes
    -----
    Negative ``label_smoothing`` is an error here; PyTorch ignores it silently for index
    targets.  float16 and bfloat16 inputs are computed in float32 and rounded once.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    >>> float(al.cross_entropy(logits, np.array([0, 2])).round(4))
    0.1681
    >>> al.cross_entropy(logits, np.array([0, 2]), reduction="none").round(4)
    array([0.2413, 0.0949])
    >>> float(al.cross_entropy(logits, np.array([0, 2]), label_smoothing=0.1).round(4))
    0.3431
    >>> probs = np.array([[0.8, 0.2, 0.0], [0.0, 0.5, 0.5]])
    >>> float(al.cross_entropy(logits, probs).round(4))
    1.0681
    """
    call = _class_calls.cross_entropy_call(input, target, weight, ignore_index=ignore_index,
                                           reduction=reduction, label_smoothing=label_smoothing,
                                           validate=validate)
    arrays = (input, target) if weight is None else (input, target, weight)
    if _autograd.recording(call.xp, arrays):
        options = {"ignore_index": ignore_index, "reduction": reduction,
                   "label_smoothing": label_smoothing, "validate": validate}
        return _autograd.loss(_differentiable(call, options), call)
    return backend(call.xp, "cross_entropy").forward(call)


@numpy_first(records=False)
def cross_entropy_backward(
    grad_output: Array | float,
    input: Array,
    target: Array,
    weight: Array | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    validate: bool = True,
) -> Array:
    r"""Gradient of :func:`cross_entropy` with respect to ``input`` (the logits).

    With :math:`p` the softmax and :math:`G_n` the upstream gradient of sample :math:`n`
    (``grad_output[n]`` for ``'none'``, ``grad_output`` for ``'sum'``, ``grad_output``
    divided by the mean's divisor for ``'mean'``):

    .. math::

        \text{index targets:}\quad
        \frac{\partial \ell}{\partial z_{n,c}} = G_n \Big(p_{n,c}\big((1-\varepsilon) w_{t_n}
        + \tfrac{\varepsilon}{C}\textstyle\sum_k w_k\big) - (1-\varepsilon) w_{t_n}[c = t_n]
        - \tfrac{\varepsilon}{C} w_c\Big)

        \text{probability targets:}\quad
        \frac{\partial \ell}{\partial z_{n,c}} = G_n \Big(p_{n,c} \textstyle\sum_k w_k q'_{n,k}
        - w_c q'_{n,c}\Big)

    and 0 for ignored targets.  The gradient is written once, on one new array.

    Parameters
    ----------
    grad_output : array or real number
        A number or a 0-d array for ``'mean'`` and ``'sum'``, an array of the loss's shape
        for ``'none'``.
    input, target, weight, ignore_index, reduction, label_smoothing, validate
        As in :func:`cross_entropy`.

    Returns
    -------
    grad_input : array
        ``input``'s shape and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> logits = np.log(np.array([[0.5, 0.25, 0.25]]))
    >>> al.cross_entropy_backward(1.0, logits, np.array([0]))
    array([[-0.5 ,  0.25,  0.25]])
    """
    call = _class_calls.cross_entropy_call(
        input, target, weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, validate=validate)
    upstream = _validation.check_grad_output(
        grad_output, call.input, call.xp, call.loss_shape, reduction
    )
    with _autograd.not_recorded(call.xp):
        return backend(call.xp, "cross_entropy").backward(call, upstream)


@numpy_first(records=False)
def cross_entropy_and_grad(
    input: Array,
    target: Array,
    weight: Array | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    validate: bool = True,
    out: Array | None = None,
) -> tuple[Array, Array]:
    """The reduced cross-entropy and its gradient with respect to ``input``, in one pass.

    Equivalent to :func:`cross_entropy` followed by :func:`cross_entropy_backward` with
    ``grad_output=1``, sharing the softmax: each row of logits is read once on NumPy (per
    cache-sized block) and at most twice by the CuPy kernel, and the gradient is written once.

    Parameters
    ----------
    input, target, weight, ignore_index, label_smoothing, validate
        As in :func:`cross_entropy`.
    reduction : {'mean', 'sum'}, default 'mean'
        The loss must be a scalar to have a gradient without an upstream one.
    out : array, optional
        Where to write the gradient: an array of the input's library, device, shape and
        dtype.  It may be ``input`` itself, so that large-vocabulary training needs no second
        ``N x C`` buffer: **with** ``out=input`` **the logits are consumed**, overwritten by
        their gradient.  Any other ``out`` must not share memory with the arguments.  Not for
        JAX arrays, which are immutable.

    Returns
    -------
    loss : array
        0-d.
    grad_input : array
        ``input``'s shape and dtype; ``out`` itself when given.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> logits = np.log(np.array([[0.5, 0.25, 0.25]]))
    >>> loss, grad = al.cross_entropy_and_grad(logits, np.array([0]), out=logits)
    >>> float(loss.round(4)), grad is logits
    (0.6931, True)
    >>> logits
    array([[-0.5 ,  0.25,  0.25]])
    """
    _validation.require_scalar_loss(reduction, "cross_entropy_and_grad", "cross_entropy")
    call = _class_calls.cross_entropy_call(
        input, target, weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, validate=validate)
    if out is not None:
        _class_calls.check_gradient_out(out, call)
    with _autograd.not_recorded(call.xp):
        return backend(call.xp, "cross_entropy").loss_and_grad(call, out)


def _differentiable(call: _class_calls.CrossEntropyCall,
                    options: dict[str, Any]) -> _autograd.Differentiable:
    """This loss for the autograd bridges (see ``_autograd``).  ``input`` has a gradient, and
    so has a class-probability ``target`` (as in PyTorch); index targets and the class weights
    are constants (PyTorch refuses a ``weight`` that requires grad; here it gets no
    gradient: None)."""
    named = {"input": call.input, "target": call.target}
    if call.weight is not None:
        named["weight"] = call.weight

    def make_call(arrays: dict[str, Array]) -> _class_calls.CrossEntropyCall:
        return _class_calls.cross_entropy_call(arrays["input"], arrays["target"],
                                               arrays.get("weight"), **options)

    # A backend that can (the fused kernels) hands its forward's row statistics to the
    # backward of the same call (PyTorch's autograd); a JAX backward validates a new call,
    # and every other backend recomputes.
    saved: dict[str, Any] = {}

    def forward(call: _class_calls.CrossEntropyCall) -> Array:
        module = backend(call.xp, "cross_entropy")
        if not hasattr(module, "forward_saving"):
            return module.forward(call)
        loss, saved["rows"] = module.forward_saving(call)
        saved["call"] = call
        return loss

    def backward(call: _class_calls.CrossEntropyCall, grad_output: Array,
                 wanted: frozenset[str]) -> dict[str, Array | None]:
        upstream = _validation.check_grad_output(grad_output, call.input, call.xp,
                                                 call.loss_shape, call.reduction)
        grads: dict[str, Array | None] = {}
        module = backend(call.xp, "cross_entropy")
        if "input" in wanted and saved.get("call") is call:
            grads["input"] = module.backward_saved(call, upstream, saved.pop("rows"))
            del saved["call"]
        elif "input" in wanted:
            grads["input"] = module.backward(call, upstream)
        if "target" in wanted and call.probabilities:
            # The generic code: a soft target's gradient is rare and needs log-softmax only.
            from ._agnostic import cross_entropy as generic

            grads["target"] = generic.target_backward(call, upstream)
        return grads

    def loss_and_grad(call: _class_calls.CrossEntropyCall, wanted: frozenset[str]
                      ) -> tuple[Array, dict[str, Array | None]] | None:
        # One softmax for both (NumPy: 1000 x 1000 float32 forward and backward 2.5 -> 1.5
        # ms); a soft target's gradient is the backward's to compute.
        if "input" not in wanted or ("target" in wanted and call.probabilities):
            return None
        loss, grad = backend(call.xp, "cross_entropy").loss_and_grad(call)
        return loss, _autograd.wanted_gradients(("input",), (grad,), wanted)

    return _autograd.Differentiable(
        arrays=named, make_call=make_call,
        forward=forward, backward=backward, loss_and_grad=loss_and_grad)
