"""Who is measured: each provider turns a case into a ready-to-time call.

GPU: arrayloss's fused kernels on CuPy, arrayloss's generic array-API path on CuPy, PyTorch
eager on CUDA, and a device-to-device copy of the case's model bytes (the roofline).  CPU:
arrayloss on NumPy, PyTorch on the CPU, and arrayloss on torch CPU tensors.  A provider whose
library is missing is skipped.

PyTorch's ``backward`` is timed as forward plus autograd backward (the only way PyTorch users
get it); ``loss_and_grad`` is the same pair.  arrayloss's are its explicit functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cases import BETA, GAUSSIAN_VARIANTS, Case, is_overhead_case, model_bytes

Call = Callable[[], Any]


@dataclass(frozen=True)
class Provider:
    """A named implementation on a device kind ("gpu" or "cpu")."""

    name: str
    device: str
    library: str  # "cupy", "torch" or "numpy": selects the timer and memory tracker

    def available(self) -> bool:
        try:
            if self.library == "cupy":
                import cupy

                return int((cupy.arange(2) + 1).sum().get()) == 3
            if self.library == "torch":
                import torch

                return self.device == "cpu" or torch.cuda.is_available()
        except Exception:
            return False
        return True


FUSED = Provider("arrayloss fused", "gpu", "cupy")
#: arrayloss called with torch CUDA tensors: the fused kernels through DLPack, as a PyTorch
#: user gets them (Liger-Kernel's use case): forward, and forward plus ``backward()``.
VIA_TORCH = Provider("arrayloss via torch", "gpu", "torch")
GENERIC = Provider("arrayloss generic", "gpu", "cupy")
TORCH_CUDA = Provider("torch eager", "gpu", "torch")
COPY = Provider("d2d copy", "gpu", "cupy")
NUMPY = Provider("arrayloss numpy", "cpu", "numpy")
#: The same with ``validate=True`` (the default): the overhead cases only.
VALIDATED = Provider("arrayloss numpy validated", "cpu", "numpy")
#: The bare NumPy expression a user would write, the floor of issue 16's overhead target:
#: ``-x[arange(N), t].mean()`` for NLL and clamp-log-divide-mean for GNLL (overhead cases).
BARE = Provider("numpy bare", "cpu", "numpy")
TORCH_CPU = Provider("torch cpu", "cpu", "torch")
#: PyTorch 2.13's chunked ``F.linear_cross_entropy`` (``options=LinearCrossEntropyOptions()``;
#: the default ``options=None`` is the unfused composite, which "torch cpu"/"torch eager" run):
#: the linear cross-entropy cases only.
TORCH_CHUNKED_CPU = Provider("torch chunked cpu", "cpu", "torch")
TORCH_CHUNKED = Provider("torch chunked", "gpu", "torch")
#: arrayloss called with torch CPU tensors, as a PyTorch user calls it (the loss, then
#: ``backward()`` through arrayloss's autograd): NumPy's fast paths on zero-copy views of the
#: tensors, timed beside "torch cpu" (F.cross_entropy, F.nll_loss, F.gaussian_nll_loss).
VIA_TORCH_CPU = Provider("arrayloss torch-cpu", "cpu", "torch")
#: The losses PyTorch has a CPU function of, which "arrayloss torch-cpu" is compared with.
TORCH_CPU_LOSSES = ("gaussian_nll", "nll", "cross_entropy")
#: Plain Gaussian NLL (one variance per row) on a log_var or beta case's arrays, timed in
#: the same interleaved rounds: the baseline of issue 14's "within 1.1x of plain" target.
PLAIN_GAUSSIAN = Provider("numpy plain GNLL", "cpu", "numpy")

PROVIDERS = {"gpu": [FUSED, VIA_TORCH, GENERIC, TORCH_CUDA, TORCH_CHUNKED, COPY],
             "cpu": [NUMPY, VALIDATED, BARE, TORCH_CPU, VIA_TORCH_CPU, TORCH_CHUNKED_CPU,
                     PLAIN_GAUSSIAN]}


def _torch_has_chunked_head() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return hasattr(torch.nn, "LinearCrossEntropyOptions")


def _ml_bfloat16() -> Any:
    import ml_dtypes

    return ml_dtypes.bfloat16


def _bare_numpy_call(case: Case, arrays: dict[str, Any]) -> Call:
    """The expression a NumPy user writes for the case's forward mean, without arrayloss."""
    x, t = arrays["input"], arrays["target"]
    if case.loss == "gaussian_nll":
        var = arrays["var"]

        def gaussian() -> Any:
            clamped = np.maximum(var, 1e-6)
            return (0.5 * (np.log(clamped) + (x - t) ** 2 / clamped)).mean()

        return gaussian
    rows = np.arange(x.shape[0])
    return lambda: -x[rows, t].mean()


def _arrayloss_call(case: Case, arrays: dict[str, Any], validate: bool = False) -> Call:
    import arrayloss as al

    if case.loss == "linear_cross_entropy":
        head = (arrays["input"], arrays["linear_weight"], arrays["target"])
        if case.op == "forward":
            return lambda: al.linear_cross_entropy(*head, validate=validate)
        return lambda: al.linear_cross_entropy_and_grad(*head, validate=validate)
    if case.loss == "gaussian_nll":
        args = (arrays["input"], arrays["target"], arrays["var"])
        options: dict[str, Any] = {"reduction": case.reduction, "validate": validate,
                                   "log_var": case.variant == "log_var",
                                   "beta": BETA if case.variant == "beta" else 0.0}
        if case.op == "forward":
            return lambda: al.gaussian_nll_loss(*args, **options)
        if case.op == "backward":
            upstream = arrays.get("grad_output", 1.0)
            wrt = ("input", "var")
            return lambda: al.gaussian_nll_loss_backward(upstream, *args, wrt=wrt, **options)
        return lambda: al.gaussian_nll_loss_and_grad(*args, wrt=("input", "var"), **options)
    args = (arrays["input"], arrays["target"], arrays["weight"])
    options = {"reduction": case.reduction, "ignore_index": arrays["ignore_index"],
               "validate": validate}
    if case.loss == "cross_entropy":
        return _arrayloss_cross_entropy(case, arrays, args, options)
    if case.op == "forward":
        return lambda: al.nll_loss(*args, **options)
    if case.op == "backward":
        upstream = arrays.get("grad_output", 1.0)
        return lambda: al.nll_loss_backward(upstream, *args, **options)
    return lambda: al.nll_loss_and_grad(*args, **options)


def _plain_gaussian_call(case: Case, arrays: dict[str, Any]) -> Call:
    """Plain Gaussian NLL on a variant case's arrays: the variances a log_var case's
    log-variances stand for, a beta case's variances as they are."""
    var = arrays["var"]
    if case.variant == "log_var":
        var = np.exp(var).astype(var.dtype)
    return _arrayloss_call(dataclasses.replace(case, variant="rows"), {**arrays, "var": var})


def _arrayloss_cross_entropy(case: Case, arrays: dict[str, Any], args: tuple[Any, ...],
                             options: dict[str, Any]) -> Call:
    import arrayloss as al

    if case.op == "forward":
        return lambda: al.cross_entropy(*args, **options)
    if case.op == "backward":
        upstream = arrays.get("grad_output", 1.0)
        return lambda: al.cross_entropy_backward(upstream, *args, **options)
    if case.variant == "in-place":
        # Each call consumes its logits, as a training step does: time it on a scratch copy
        # refreshed outside the timed call would hide nothing (the values do not matter for
        # the time), so the same buffer is overwritten call after call.
        logits = arrays["input"]
        return lambda: al.cross_entropy_and_grad(logits, *args[1:], out=logits, **options)
    return lambda: al.cross_entropy_and_grad(*args, **options)


def _arrayloss_autograd_call(case: Case, arrays: dict[str, Any]) -> Call:
    """arrayloss on torch tensors as a PyTorch user calls it: the loss, then ``backward()``
    (the backward and loss-and-gradient cases), through arrayloss's autograd bridge."""
    import arrayloss as al

    if case.op == "forward":
        return _arrayloss_call(case, arrays)
    upstream = arrays.get("grad_output")
    if case.loss == "linear_cross_entropy":
        h, W = (arrays[k].detach().requires_grad_() for k in ("input", "linear_weight"))
        leaves = [h, W]

        def loss() -> Any:
            return al.linear_cross_entropy(h, W, arrays["target"], validate=False)
    elif case.loss == "gaussian_nll":
        x = arrays["input"].detach().requires_grad_()
        var = arrays["var"]
        if not isinstance(var, float):
            var = var.detach().requires_grad_()
        options: dict[str, Any] = {"reduction": case.reduction, "validate": False,
                                   "log_var": case.variant == "log_var",
                                   "beta": BETA if case.variant == "beta" else 0.0}
        leaves = [x] if isinstance(var, float) else [x, var]

        def loss() -> Any:
            return al.gaussian_nll_loss(x, arrays["target"], var, **options)
    else:
        logits = arrays["input"].detach().requires_grad_()
        leaves = [logits]
        function = al.cross_entropy if case.loss == "cross_entropy" else al.nll_loss
        class_options = {"reduction": case.reduction, "ignore_index": arrays["ignore_index"],
                         "validate": False}

        def loss() -> Any:
            return function(logits, arrays["target"], arrays["weight"], **class_options)

    def forward_backward() -> Any:
        value = loss()
        value.backward(upstream if case.reduction == "none" else None)
        for leaf in leaves:
            leaf.grad = None
        return value

    return forward_backward


def _torch_linear_call(case: Case, arrays: dict[str, Any], chunked: bool) -> Call:
    """PyTorch's head: ``F.linear_cross_entropy``, unfused (``options=None``, the composite
    ``cross_entropy(input @ W.T)``) or chunked; forward, or forward and ``backward()``."""
    import torch
    import torch.nn.functional as F

    options = torch.nn.LinearCrossEntropyOptions() if chunked else None
    h, W, target = arrays["input"], arrays["linear_weight"], arrays["target"]
    if case.op == "forward":
        return lambda: F.linear_cross_entropy(h, W, target, options=options)
    h, W = h.detach().requires_grad_(), W.detach().requires_grad_()

    def forward_backward() -> Any:
        loss = F.linear_cross_entropy(h, W, target, options=options)
        loss.backward()
        h.grad = W.grad = None
        return loss.detach()

    return forward_backward


def _torch_call(case: Case, arrays: dict[str, Any]) -> Call:
    import torch
    import torch.nn.functional as F

    if case.loss == "linear_cross_entropy":
        return _torch_linear_call(case, arrays, chunked=False)
    if case.loss == "gaussian_nll":
        x, t, var = arrays["input"], arrays["target"], arrays["var"]

        def gaussian(x: Any, t: Any, var: Any) -> Any:
            # PyTorch has neither variant: its composites, as users write them.
            if case.variant == "log_var":
                return F.gaussian_nll_loss(x, t, var.exp(), eps=0.0, reduction=case.reduction)
            if case.variant == "beta":
                elementwise = F.gaussian_nll_loss(x, t, var, reduction="none")
                weighted = elementwise * var.detach().clamp(min=1e-6) ** BETA
                return weighted.mean() if case.reduction == "mean" else weighted.sum()
            return F.gaussian_nll_loss(x, t, var, reduction=case.reduction)

        if case.op == "forward":
            return lambda: gaussian(x, t, var)
        x = x.detach().requires_grad_()
        if not isinstance(var, float):
            var = var.detach().requires_grad_()
        upstream = arrays.get("grad_output")

        def forward_backward() -> Any:
            loss = gaussian(x, t, var)
            loss.backward(upstream if case.reduction == "none" else None)
            x.grad = None
            if isinstance(var, torch.Tensor):
                var.grad = None
            return loss

        return forward_backward
    logits, target, weight = arrays["input"], arrays["target"], arrays["weight"]
    ignore_index = arrays["ignore_index"]
    function = F.cross_entropy if case.loss == "cross_entropy" else F.nll_loss
    if case.op == "forward":
        return lambda: function(logits, target, weight, ignore_index=ignore_index,
                                reduction=case.reduction)
    logits = logits.detach().requires_grad_()
    upstream = arrays.get("grad_output")

    def nll_forward_backward() -> Any:
        loss = function(logits, target, weight, ignore_index=ignore_index,
                        reduction=case.reduction)
        loss.backward(upstream if case.reduction == "none" else None)
        logits.grad = None
        return loss

    return nll_forward_backward


def convert(provider: Provider, case: Case, inputs: dict[str, Any]) -> dict[str, Any]:
    """The case's NumPy inputs as the provider's arrays, in the case's dtype."""
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if not hasattr(value, "dtype"):
            out[key] = value
            continue
        floating = value.dtype.kind == "f"
        if provider.library == "torch":
            import torch

            # NumPy inputs are copied in; CuPy inputs are shared through DLPack, then cast.
            tensor = torch.from_numpy(value) if isinstance(value, np.ndarray) else (
                torch.from_dlpack(value))
            if floating:
                tensor = tensor.to(getattr(torch, case.dtype))
            out[key] = tensor.to("cuda" if provider.device == "gpu" else "cpu")
            continue
        if floating and case.dtype != value.dtype.name:
            value = value.astype(_ml_bfloat16() if case.dtype == "bfloat16" else case.dtype)
        if provider.library == "cupy":
            import cupy

            value = cupy.asarray(value)
        out[key] = value
    return out


def make_call(provider: Provider, case: Case, arrays: dict[str, Any]) -> Call:
    """The call to time for ``provider`` on ``case`` with its converted ``arrays``."""
    if provider is COPY:
        import cupy

        # A copy reads and writes half of the model bytes each: the same traffic.
        half = max(model_bytes(case) // 2, 1)
        source = cupy.empty(half, dtype=cupy.uint8)
        destination = cupy.empty_like(source)
        return lambda: destination.__setitem__(Ellipsis, source)
    if provider is VIA_TORCH or provider is VIA_TORCH_CPU:
        return _arrayloss_autograd_call(case, arrays)
    if provider is BARE:
        return _bare_numpy_call(case, arrays)
    if provider is VALIDATED:
        return _arrayloss_call(case, arrays, validate=True)
    if provider is PLAIN_GAUSSIAN:
        return _plain_gaussian_call(case, arrays)
    if provider in (TORCH_CHUNKED, TORCH_CHUNKED_CPU):
        return _torch_linear_call(case, arrays, chunked=True)
    if provider.library == "torch":
        return _torch_call(case, arrays)
    if provider is GENERIC:
        import arrayloss as al

        call = _arrayloss_call(case, arrays)

        def generic() -> Any:
            with al.fused_kernels(False):
                return call()

        return generic
    return _arrayloss_call(case, arrays)


def supports(provider: Provider, case: Case) -> bool:
    """Whether ``provider`` can run ``case`` (bfloat16 needs ml_dtypes outside PyTorch; the
    bare expression and the validated call only where issue 16 measures the overhead, plain
    Gaussian NLL only beside its variants)."""
    if provider in (BARE, VALIDATED):
        return is_overhead_case(case)
    if provider is PLAIN_GAUSSIAN:
        return case.loss == "gaussian_nll" and case.variant in GAUSSIAN_VARIANTS
    if provider is VIA_TORCH_CPU:
        return case.loss in TORCH_CPU_LOSSES
    if provider in (TORCH_CHUNKED, TORCH_CHUNKED_CPU):
        return case.loss == "linear_cross_entropy" and _torch_has_chunked_head()
    if provider is COPY and case.loss == "linear_cross_entropy":
        return False  # compute-bound: three matmuls, no bandwidth roofline to compare with
    if case.dtype != "bfloat16" or provider.library == "torch" or provider is COPY:
        return True
    try:
        _ml_bfloat16()
    except ImportError:
        return False
    return True
