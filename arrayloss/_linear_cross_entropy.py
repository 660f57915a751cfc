"""Fused linear cross-entropy (a language model's head and its loss): the public functions.

Each function validates its arguments once (:mod:`arrayloss._linear_calls`) and hands the
validated call to the backend for the arrays' library (:mod:`arrayloss._dispatch`), which
computes the head's logits a chunk of tokens at a time and never holds all of them.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

from . import _autograd, _registry, _validation
from ._agnostic import linear_cross_entropy as _generic
from ._agnostic._helpers import torch_compiling
from ._dispatch import backend
from ._linear_calls import LinearCrossEntropyCall, linear_cross_entropy_call
from ._torch_cpu import numpy_first

__all__ = ["linear_cross_entropy", "linear_cross_entropy_and_grad",
           "linear_cross_entropy_backward"]

Array = Any
Gradients = tuple[Array, Array, Array | None]

_LOSS = "linear_cross_entropy"


def _dask_backend() -> Any:
    from ._dask_linear import LinearCrossEntropy

    return LinearCrossEntropy


# The backends: CuPy's and Dask's looked up on first use (imported only by their users).
_registry.register(_LOSS, _registry.Backends(
    generic=lambda: _generic,
    cupy=lambda: importlib.import_module("arrayloss._cupy.linear_cross_entropy"),
    dask=_dask_backend))


@numpy_first(records=True)
def linear_cross_entropy(
    input: Array,
    linear_weight: Array,
    target: Array,
    *,
    linear_bias: Array | None = None,
    weight: Array | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
    chunk_size: int | None = None,
    validate: bool = True,
) -> Array | tuple[Array, Array]:
    r"""Cross-entropy of a linear layer's output, without its ``N x V`` logits.

    The loss of ``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)``
    (PyTorch's :func:`torch.nn.functional.linear_cross_entropy`), computed a chunk of
    ``chunk_size`` tokens at a time: each chunk's logits :math:`z = h W^T + b` (after the
    optional softcap :math:`z \leftarrow c \tanh(z / c)`), then :func:`cross_entropy`'s loss
    of them, with every option it has.  With :math:`\mathrm{lse}_n = \log\sum_v e^{z_{n,v}}`,
    the z-loss adds :math:`\zeta\, \mathrm{lse}_n^2` to the loss of every kept token (PaLM's
    auxiliary loss); ``'mean'`` divides the total by cross-entropy's divisor (the kept
    tokens' class weights' sum, or the number of tokens for probability targets).

    Parameters
    ----------
    input : array
        The hidden states, real floating, of shape ``(d,)`` (one token) or ``(..., d)``.
    linear_weight : array
        The head's weight, ``(V, d)``, input's dtype.
    target : array
        Class indices of any integer dtype, of shape ``input.shape[:-1]``; or class
        probabilities of shape ``(..., V)``, input's dtype.
    linear_bias : array, optional
        The head's bias, ``(V,)``, input's dtype.
    weight : array, optional
        Class weights, ``(V,)``, input's dtype.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        As in :func:`cross_entropy`; ``'none'`` gives the per-token losses, of shape
        ``input.shape[:-1]``.
    ignore_index : int, optional
        Index targets equal to it are skipped (loss 0, no gradient, no z-loss); None (the
        default, as PyTorch's) is -100 for index targets.  Class probabilities take no
        ``ignore_index`` (a ``ValueError``, as PyTorch refuses it).
    label_smoothing : float, default 0.0
        As in :func:`cross_entropy`.
    z_loss : float, default 0.0
        :math:`\zeta \ge 0`, the weight of :math:`\mathrm{lse}^2` per kept token.
    softcap : float, optional
        :math:`c > 0`: the logits become :math:`c \tanh(z / c)` before the softmax (Gemma 2).
    return_lse : bool, default False
        Also return the per-token log-sum-exp of the (softcapped) logits, of shape
        ``input.shape[:-1]``, in the input's dtype (for every token, ignored ones too).  It
        carries no gradient.
    chunk_size : int, optional
        Tokens per chunk.  By default the chunk's logits take about 64 MiB in the compute
        dtype (float32 for 16-bit inputs): ``64 MiB // (V * itemsize * buffers)`` tokens
        (``buffers`` is 1, plus 1 for softcap and 1 for z-loss or ``return_lse``), a
        multiple of 16, at most the number of tokens.  Results are deterministic for a
        fixed chunk size; another size sums in another order (float rounding).
    validate : bool, default True
        Check that every index target lies in ``[0, V)`` or equals ``ignore_index``.

    Returns
    -------
    loss : array
        0-d for ``'mean'`` and ``'sum'``, ``input.shape[:-1]`` for ``'none'``; input's dtype.
    lse : array
        Only with ``return_lse=True``: ``(loss, lse)``.

    Raises
    ------
    ValueError
        Shapes that do not fit, bad option values.
    TypeError
        A non-floating ``input``, arrays of other dtypes or libraries.
    TargetOutOfRangeError
        An index target outside ``[0, V)`` that is not ``ignore_index``.

    See Also
    --------
    linear_cross_entropy_and_grad : The loss and the three gradients in one pass.
    linear_cross_entropy_backward : The gradients for an upstream gradient.
    LinearCrossEntropyLoss : The same loss with its options held by an object.

    Notes
    -----
    Memory beyond the arguments and the results is O(``chunk_size`` x V): one chunk of
    logits (and one more for softcap, one for z-loss), reused.  16-bit inputs are computed
    and accumulated in float32 and rounded once.  With torch tensors that require grad the
    loss is differentiable by autograd; for ``'mean'`` and ``'sum'`` the gradients are
    computed in the forward pass (one pass over the chunks, as PyTorch's chunked head does)
    and scaled by the upstream gradient in the backward.  JAX arrays are differentiable
    under ``jax.grad`` and ``jax.jit``.  Class probabilities that require grad get theirs, as
    in PyTorch (computed in the backward, on the ``N x V`` logits made whole: the gradient
    is ``N x V`` itself); the class weights receive none.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> rng = np.random.default_rng(0)
    >>> h, W = rng.normal(size=(6, 4)), rng.normal(size=(10, 4))
    >>> tokens = np.array([1, 5, 9, 0, 2, 2])
    >>> loss = al.linear_cross_entropy(h, W, tokens, chunk_size=4)
    >>> bool(np.isclose(loss, al.cross_entropy(h @ W.T, tokens)))
    True
    """
    call = linear_cross_entropy_call(
        input, linear_weight, target, linear_bias=linear_bias, weight=weight,
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, return_lse=return_lse, chunk_size=chunk_size,
        validate=validate)
    arrays = _arrays(call, input, linear_weight, target, linear_bias, weight)
    if _autograd.recording(call.xp, tuple(arrays.values())):
        spec, saved = _differentiable(call, arrays)
        loss = _autograd.loss(spec, call)
        if not call.return_lse:
            return loss
        # torch's forward kept the lse (computed without grad); JAX's runs traced inside
        # custom_vjp, so the lse takes a forward of its own.
        lse = saved["lse"] if not _is_jax(call) else backend(call.xp, _LOSS).forward(call)[1]
        return loss, lse
    loss, lse = backend(call.xp, _LOSS).forward(call)
    return (loss, lse) if call.return_lse else loss


@numpy_first(records=False)
def linear_cross_entropy_backward(
    grad_output: Array | float,
    input: Array,
    linear_weight: Array,
    target: Array,
    *,
    linear_bias: Array | None = None,
    weight: Array | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    validate: bool = True,
) -> Gradients:
    r"""Gradients of :func:`linear_cross_entropy` with respect to the head's three arrays.

    With :math:`\delta_{n,v}` the gradient of token :math:`n`'s loss with respect to its
    logit :math:`v` (cross-entropy's, plus :math:`2\zeta\,\mathrm{lse}_n\,p_{n,v}` for the
    z-loss, times :math:`1 - \tanh^2(z_{n,v}/c)` under a softcap) and :math:`G_n` the
    upstream gradient (divided by the mean's divisor for ``'mean'``):

    .. math::

        \nabla_h = (G \odot \delta) W, \qquad \nabla_W = (G \odot \delta)^T h, \qquad
        \nabla_b = \textstyle\sum_n G_n \delta_n

    computed chunk by chunk (the logits are recomputed; no ``N x V`` array).

    Parameters
    ----------
    grad_output : array or real number
        A number or a 0-d array for ``'mean'`` and ``'sum'``; an array of the loss's shape
        (``input.shape[:-1]``) for ``'none'``.
    input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
    label_smoothing, z_loss, softcap, chunk_size, validate
        As in :func:`linear_cross_entropy`.

    Returns
    -------
    grad_input : array
        ``input``'s shape and dtype.
    grad_linear_weight : array
        ``(V, d)``.
    grad_linear_bias : array or None
        ``(V,)``; None without ``linear_bias``.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> h, W = np.ones((2, 3)), np.zeros((4, 3))
    >>> grad_h, grad_W, grad_b = al.linear_cross_entropy_backward(1.0, h, W, np.array([0, 1]))
    >>> grad_W
    array([[-0.25, -0.25, -0.25],
           [-0.25, -0.25, -0.25],
           [ 0.25,  0.25,  0.25],
           [ 0.25,  0.25,  0.25]])
    >>> grad_b is None
    True
    """
    call = linear_cross_entropy_call(
        input, linear_weight, target, linear_bias=linear_bias, weight=weight,
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, return_lse=False, chunk_size=chunk_size,
        validate=validate)
    upstream = _validation.check_grad_output(grad_output, call.input, call.xp, call.loss_shape,
                                             call.reduction)
    with _autograd.not_recorded(call.xp):
        return backend(call.xp, _LOSS).backward(call, upstream)


@numpy_first(records=False)
def linear_cross_entropy_and_grad(
    input: Array,
    linear_weight: Array,
    target: Array,
    *,
    linear_bias: Array | None = None,
    weight: Array | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
    chunk_size: int | None = None,
    validate: bool = True,
) -> tuple[Array, Gradients]:
    """The reduced loss and its three gradients, in one pass over the chunks.

    Each chunk's logits are computed once and turned into their gradient in place; this is
    the training step's call (one forward matmul and two backward ones per chunk).

    Parameters
    ----------
    input, linear_weight, target, linear_bias, weight, ignore_index, label_smoothing,
    z_loss, softcap, return_lse, chunk_size, validate
        As in :func:`linear_cross_entropy`.
    reduction : {'mean', 'sum'}, default 'mean'
        The loss must be a scalar to have a gradient without an upstream one.

    Returns
    -------
    loss : array
        0-d; ``(loss, lse)`` with ``return_lse=True``.
    grads : tuple
        ``(grad_input, grad_linear_weight, grad_linear_bias)``, as
        :func:`linear_cross_entropy_backward` returns them.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> h, W = np.ones((2, 3)), np.zeros((4, 3))
    >>> loss, (grad_h, grad_W, grad_b) = al.linear_cross_entropy_and_grad(h, W, np.array([0, 1]))
    >>> float(loss.round(4)), grad_h.shape, grad_W.shape
    (1.3863, (2, 3), (4, 3))
    """
    _validation.require_scalar_loss(reduction, "linear_cross_entropy_and_grad",
                                    "linear_cross_entropy")
    call = linear_cross_entropy_call(
        input, linear_weight, target, linear_bias=linear_bias, weight=weight,
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, return_lse=return_lse, chunk_size=chunk_size,
        validate=validate)
    with _autograd.not_recorded(call.xp):
        loss, lse, grads = backend(call.xp, _LOSS).loss_and_grad(call)
    return ((loss, lse) if call.return_lse else loss), grads


# --------------------------------------------------------------------------- autograd


def _arrays(call: LinearCrossEntropyCall, input: Array, linear_weight: Array, target: Array,
            linear_bias: Array | None, weight: Array | None) -> dict[str, Array]:
    named = {"input": input, "linear_weight": linear_weight, "target": target}
    if linear_bias is not None:
        named["linear_bias"] = linear_bias
    if weight is not None:
        named["weight"] = weight
    return named


def _options(call: LinearCrossEntropyCall) -> dict[str, Any]:
    return {"reduction": call.reduction, "ignore_index": call.ignore_option,
            "label_smoothing": call.label_smoothing, "z_loss": call.z_loss,
            "softcap": call.softcap, "return_lse": call.return_lse,
            "chunk_size": call.chunk_size, "validate": call.validate}


def _differentiable(call: LinearCrossEntropyCall, arrays: dict[str, Array]
                    ) -> tuple[_autograd.Differentiable, dict[str, Any]]:
    """This loss for the autograd bridges.  ``input``, ``linear_weight`` and ``linear_bias``
    have gradients, and so do class probabilities (in the backward alone); index targets and
    the class weights are constants here.

    With torch, the forward of a scalar reduction computes the gradients too (one pass over
    the chunks, as PyTorch's own chunked head does) and keeps them (and the lse) for the
    backward, which scales them by the upstream gradient; ``'none'`` recomputes the chunks in
    the backward.  With JAX the backward recomputes (its forward runs traced).  Returns the
    spec and what its forward keeps (``"lse"``, ``"grads"``)."""
    options = _options(call)
    saved: dict[str, Any] = {}
    torch_like = not _is_jax(call)

    def make_call(named: dict[str, Array]) -> LinearCrossEntropyCall:
        return linear_cross_entropy_call(
            named["input"], named["linear_weight"], named["target"],
            linear_bias=named.get("linear_bias"), weight=named.get("weight"), **options)

    def forward(call: LinearCrossEntropyCall) -> Array:
        module = backend(call.xp, _LOSS)
        # (Not under TorchDynamo: a tensor handed from the traced forward to the backward
        # outside their arguments is an error there.)
        if torch_like and call.reduction != "none" and not torch_compiling():
            loss, lse, grads = module.loss_and_grad(call)
            saved["grads"] = grads
        else:
            loss, lse = module.forward(call)
        saved["lse"] = lse
        return loss

    def backward(call: LinearCrossEntropyCall, grad_output: Array,
                 wanted: frozenset[str]) -> dict[str, Array | None]:
        upstream = _validation.check_grad_output(grad_output, call.input, call.xp,
                                                 call.loss_shape, call.reduction)
        batched = _validation.batch_of_upstreams(grad_output)
        if batched:
            # The loss's own backward on the tensors, in one chunk: autograd's batching has
            # no rule for joining the chunks' gradients.
            call = dataclasses.replace(call, chunk_size=max(call.n_tokens, 1))
        grads = saved.get("grads")
        if grads is None or batched:
            grads = backend(call.xp, _LOSS).backward(call, upstream)
        else:
            grads = _scaled(call, grads, upstream)
        named = dict(zip(("input", "linear_weight", "linear_bias"), grads, strict=True))
        if "target" in wanted and call.probabilities:  # rare: the N x V logits, made whole
            named["target"] = _generic.target_backward(call, upstream)
        return {name: grad for name, grad in named.items() if name in wanted}

    spec = _autograd.Differentiable(arrays=arrays, make_call=make_call, forward=forward,
                                    backward=backward)
    return spec, saved


def _scaled(call: LinearCrossEntropyCall, grads: Gradients, upstream: Array | float
            ) -> Gradients:
    """The forward's gradients (for an upstream gradient of 1) times a reduced loss's
    upstream gradient, an ignored token's row 0 whatever it is (see
    :func:`~arrayloss._agnostic.linear_cross_entropy.tokens_scaled`)."""
    grad_input, grad_weight, grad_bias = grads
    kept = None
    if not (isinstance(upstream, float) and math.isfinite(upstream)):
        kept = _generic.prepare(dataclasses.replace(call, validate=False)).kept
    return (_generic.tokens_scaled(call, kept, grad_input, upstream), grad_weight * upstream,
            None if grad_bias is None else grad_bias * upstream)


def _is_jax(call: LinearCrossEntropyCall) -> bool:
    from array_api_compat import is_jax_namespace

    return bool(is_jax_namespace(call.xp))
