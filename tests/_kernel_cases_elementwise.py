"""The elementwise losses' fused CUDA kernels: cases shared by the GPU run
(``test_cupy_gpu.py``) and the CPU harness (``test_hostcuda.py``), from the one case table
(``_elementwise_cases.py``).

Each case runs forward, backward and loss-and-grad on the device and checks them against
PyTorch (float64 or float32, on the exact values the device saw), or, where PyTorch is not
installed, against the float64 generic path of arrayloss on NumPy.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import _elementwise_cases as ec
import numpy as np
import pytest
from _kernel_cases import Device

import arrayloss as al

__all__ = ["case_elementwise", "case_elementwise_invalid", "case_elementwise_mask",
           "case_elementwise_special",
           "elementwise_cases", "special_cases"]


def _want(variant: ec.Variant, values: dict[str, np.ndarray], reduction: str,
          upstream: Any) -> dict[str, np.ndarray]:
    if importlib.util.find_spec("torch") is not None:
        return ec.oracle(variant, values, reduction, upstream)
    exact = {name: v.astype(np.float64) if v.dtype.kind == "f" else v
             for name, v in values.items()}
    keywords = ec.arrayloss_keywords(variant, exact)
    loss = variant.function()(exact["input"], exact["target"], reduction=reduction, **keywords)
    grads = variant.function("_backward")(upstream, exact["input"], exact["target"],
                                          reduction=reduction, **keywords)
    result = {"loss": np.asarray(loss), "grad_input": grads[0]}
    if grads[1] is not None:
        result["grad_target"] = grads[1]
    return result


def case_elementwise(device: Device, variant_id: str, dtype: str, reduction: str,
                     input_shape: tuple[int, ...] = (37, 29),
                     target_shape: tuple[int, ...] = (37, 29)) -> None:
    variant = next(v for v in ec.VARIANTS if v.id == variant_id)
    values = ec.rounded(ec.make_arrays(variant, input_shape, target_shape), dtype, variant)
    arrays = {name: device.put(v) for name, v in values.items()}
    keywords = ec.arrayloss_keywords(variant, arrays)
    what = f"kernels {variant_id} {dtype} {reduction} {input_shape} {target_shape}"
    loss_shape = np.broadcast_shapes(input_shape, target_shape)
    upstream: Any = 0.5
    if reduction == "none":
        upstream = np.random.default_rng(1).uniform(0.5, 1.5, loss_shape).astype(
            values["input"].dtype)
    want = _want(variant, values, reduction, upstream)
    loss = variant.function()(arrays["input"], arrays["target"], reduction=reduction,
                              **keywords)
    ec.assert_close(device.asnumpy(loss), want["loss"], dtype, what + " loss")
    device_upstream = device.put(upstream) if reduction == "none" else upstream
    grads = variant.function("_backward")(device_upstream, arrays["input"], arrays["target"],
                                          reduction=reduction, **keywords)
    ec.assert_close(device.asnumpy(grads[0]), want["grad_input"], dtype, what + " grad_input")
    if "grad_target" in want:
        ec.assert_close(device.asnumpy(grads[1]), want["grad_target"], dtype,
                        what + " grad_target")
    if reduction != "none":
        want_one = _want(variant, values, reduction, 1.0)
        unchecked = dict(keywords, validate=False)
        # No pass reads the device with validate=False: the forward, the backward of a
        # device upstream (a 0-d array) and the loss with its gradients.
        device.assert_no_host_sync(lambda: variant.function()(
            arrays["input"], arrays["target"], reduction=reduction, **unchecked))
        device_scalar = device.put(np.asarray(0.5, dtype=values["input"].dtype))
        device.assert_no_host_sync(lambda: variant.function("_backward")(
            device_scalar, arrays["input"], arrays["target"], reduction=reduction,
            **unchecked))
        device.assert_no_host_sync(lambda: variant.function("_and_grad")(
            arrays["input"], arrays["target"], reduction=reduction, **unchecked))
        loss, grads = variant.function("_and_grad")(arrays["input"], arrays["target"],
                                                    reduction=reduction, **keywords)
        ec.assert_close(device.asnumpy(loss), want_one["loss"], dtype, what + " and_grad")
        ec.assert_close(device.asnumpy(grads[0]), want_one["grad_input"], dtype,
                        what + " and_grad grad_input")


def case_elementwise_special(device: Device, variant_id: str, dtype: str = "float32") -> None:
    """The regression losses at NaN and infinite differences and at their kinks (the case
    table's special values): loss and gradients, NaN and inf where PyTorch has them."""
    variant = next(v for v in ec.SPECIAL_VARIANTS if v.id == variant_id)
    values = ec.special_arrays(dtype)
    arrays = {name: device.put(v) for name, v in values.items()}
    keywords = ec.arrayloss_keywords(variant, arrays)
    for reduction in ("none", "sum"):
        upstream: Any = 0.5
        if reduction == "none":
            upstream = np.linspace(-1.5, 1.5, values["input"].size).astype(values["input"].dtype)
        want = _want(variant, values, reduction, upstream)
        what = f"special values {variant_id} {dtype} {reduction}"
        loss = variant.function()(arrays["input"], arrays["target"], reduction=reduction,
                                  **keywords)
        ec.assert_close(device.asnumpy(loss), want["loss"], dtype, what + " loss")
        grads = variant.function("_backward")(
            device.put(upstream) if reduction == "none" else upstream, arrays["input"],
            arrays["target"], reduction=reduction, **keywords)
        ec.assert_close(device.asnumpy(grads[0]), want["grad_input"], dtype,
                        what + " grad_input")
        if "grad_target" in want:
            ec.assert_close(device.asnumpy(grads[1]), want["grad_target"], dtype,
                            what + " grad_target")


def special_cases() -> list[Any]:
    """One case per regression variant (their kernels compile for the other cases too)."""
    return [pytest.param(variant.id, id=variant.id) for variant in ec.SPECIAL_VARIANTS]


def case_elementwise_invalid(device: Device) -> None:
    """The range checks fused into the kernels raise the generic path's error."""
    good = device.put(np.array([0.2, 0.5, 0.9], dtype=np.float32))
    bad = device.put(np.array([0.2, 1.5, 0.9], dtype=np.float32))
    for function in (al.binary_cross_entropy, al.binary_cross_entropy_and_grad):
        with pytest.raises(ValueError, match=r"^input has entries outside \[0, 1\]"):
            function(bad, good)
        with pytest.raises(ValueError, match=r"^target has entries outside \[0, 1\]"):
            function(good, bad)
    unchecked = al.binary_cross_entropy(bad, good, validate=False)
    assert np.isnan(device.asnumpy(unchecked)) or np.isfinite(device.asnumpy(unchecked))


def case_elementwise_mask(device: Device) -> None:
    """A bool mask as the per-element weight: the kernels read it as 0 and 1, and MSE's
    'mean' is the mean over its True elements (against the float64 loss of those alone)."""
    rng = np.random.default_rng(3)
    x, t = rng.normal(size=(37, 29)), rng.normal(size=(37, 29))
    mask = rng.uniform(size=x.shape) < 0.4
    kept = x[mask] - t[mask]
    arrays = [device.put(v) for v in (x.astype(np.float32), t.astype(np.float32), mask)]
    loss, (grad_input, _) = al.mse_loss_and_grad(arrays[0], arrays[1], weight=arrays[2])
    np.testing.assert_allclose(device.asnumpy(loss), np.mean(kept ** 2), rtol=1e-5)
    want = np.where(mask, 2 * (x - t), 0.0) / mask.sum()
    np.testing.assert_allclose(device.asnumpy(grad_input), want, rtol=1e-5, atol=1e-7)
    l1 = al.l1_loss(arrays[0], arrays[1], weight=arrays[2], reduction="sum")
    np.testing.assert_allclose(device.asnumpy(l1), np.abs(kept).sum(), rtol=1e-5)


def elementwise_cases() -> list[Any]:
    """Every variant's reduced passes (forward partials, backward, loss and gradient) in
    float32; ``'none'`` (its forward and array-upstream backward) on the first variant of
    each loss; float16 and float64 and a broadcast shape on a few.  Each distinct kernel
    source compiles once (about 80 here), which bounds the harness's cost in CI."""
    cases = []
    seen: set[str] = set()
    for variant in ec.VARIANTS:
        cases.append(pytest.param((variant.id, "float32", "mean"),
                                  id=f"{variant.id}-float32-mean"))
        if variant.loss in seen:
            continue
        seen.add(variant.loss)
        cases.append(pytest.param((variant.id, "float32", "none"),
                                  id=f"{variant.id}-float32-none"))
    for variant_id in ("mse_loss", "binary_cross_entropy_with_logits"):
        for dtype in ("float16", "float64"):
            cases.append(pytest.param((variant_id, dtype, "sum"), id=f"{variant_id}-{dtype}-sum"))
    for variant_id in ("huber_loss", "kl_div"):
        cases.append(pytest.param((variant_id, "float32", "sum", (6, 1, 7), (5, 1)),
                                  id=f"{variant_id}-broadcast-sum"))
    cases.append(pytest.param(("kl_div", "float32", "batchmean"), id="kl_div-batchmean"))
    # Per-element weights: PyTorch's weighted mean (the weights' sum divides) in float16,
    # rounded once after the division, and over a broadcast target; a weighted 'none'.
    cases.append(pytest.param(("mse_loss-weight", "float16", "mean"),
                              id="mse_loss-weight-float16-mean"))
    cases.append(pytest.param(("l1_loss-weight", "float32", "mean", (6, 1, 7), (5, 1)),
                              id="l1_loss-weight-broadcast-mean"))
    cases.append(pytest.param(("huber_loss-delta=0.3-weight", "float32", "none"),
                              id="huber_loss-delta=0.3-weight-float32-none"))
    return cases
