"""The cross-entropy kernels' cases, part of the table of ``_kernel_cases.py`` (GPU and host
harness alike), checked against a float64 formula written here independently of arrayloss."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from _kernel_cases import DTYPES, REDUCTIONS, Checks, Device, _default_upstream, assert_close

import arrayloss as al


def cross_entropy_reference(x: np.ndarray, t: np.ndarray, w: np.ndarray | None, *,
                            ignore_index: int = -100, reduction: str = "mean",
                            label_smoothing: float = 0.0,
                            upstream: Any = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(loss, grad_input) in float64: log-softmax, then PyTorch's rules for each target kind."""
    unbatched = x.ndim == 1
    z = x.reshape(1, -1, 1) if unbatched else x.reshape(
        x.shape[0], x.shape[1], math.prod(x.shape[2:]))
    n, c, s = z.shape
    eps = label_smoothing
    weight = np.ones(c) if w is None else w.astype(np.float64)
    with np.errstate(all="ignore"):
        shifted = z - z.max(axis=1, keepdims=True, initial=-np.inf)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        p = np.exp(logp)
        g = np.asarray(upstream, np.float64)
        if t.dtype.kind == "f":  # probabilities
            q = t.astype(np.float64).reshape(z.shape) * (1 - eps) + eps / max(c, 1)
            wq = q * weight[None, :, None]
            losses = -(wq * logp).sum(axis=1)
            divisor = float(n * s) if c else 0.0  # PyTorch: NaN for an input without elements
            grad_rows = p * wq.sum(axis=1, keepdims=True) - wq
            active = np.ones((n, s), bool)
        else:
            targets = t.reshape(n, s).astype(np.int64)
            active = targets != ignore_index
            index = np.where(active, targets, 0)
            w_t = np.where(active, weight[index], 0.0) if c else np.zeros((n, s))
            picked = (np.take_along_axis(logp, index[:, None, :], axis=1)[:, 0, :] if c
                      else np.zeros((n, s)))
            smooth = -(logp * weight[None, :, None]).sum(axis=1)
            losses = np.where(active, (1 - eps) * -(w_t * picked) + eps / max(c, 1) * smooth,
                              0.0)
            divisor = w_t.sum()
            one_hot = np.zeros(z.shape)
            if c:
                np.put_along_axis(one_hot, index[:, None, :], 1.0, axis=1)
            grad_rows = ((1 - eps) * w_t[:, None, :] * (p - one_hot)
                         + eps / max(c, 1) * (p * weight.sum() - weight[None, :, None]))
        if reduction == "none":
            loss = losses.reshape(() if unbatched else (x.shape[0], *x.shape[2:]))
            per_row = g.reshape(n, s) if g.ndim else np.broadcast_to(g, (n, s))
        else:
            loss = losses.sum() if reduction == "sum" else losses.sum() / divisor
            per_row = np.broadcast_to(g / divisor if reduction == "mean" else g, (n, s))
        per_row = np.where(active, per_row, 0.0)
        grad = grad_rows * per_row[:, None, :]
    return np.asarray(loss), grad.reshape(x.shape)


def check_cross_entropy(device: Device, dtype: str, x: Any, t: Any, w: Any = None, *,
                        reduction: str, ignore_index: int = -100,
                        label_smoothing: float = 0.0, upstream: Any = None) -> None:
    """Forward, backward and, for a scalar loss, loss-and-grad (also into a fresh ``out``)."""
    options = {"reduction": reduction, "ignore_index": ignore_index,
               "label_smoothing": label_smoothing}
    host_x, host_w = device.exact(x), None if w is None else device.exact(w)
    host_t = device.asnumpy(t)
    if host_t.dtype.kind not in "iu":  # probabilities (bfloat16 is an ml_dtypes kind "V")
        host_t = host_t.astype(np.float64)
    want = cross_entropy_reference(host_x, host_t, host_w, **options)
    assert_close(al.cross_entropy(x, t, w, **options), want[0], dtype, device, "loss")
    if upstream is None:
        upstream = _default_upstream(device, dtype, reduction, want[0].shape, 0.75)
    g = upstream if isinstance(upstream, float) else device.exact(upstream)
    want = cross_entropy_reference(host_x, host_t, host_w, upstream=g, **options)
    assert_close(al.cross_entropy_backward(upstream, x, t, w, **options), want[1], dtype,
                 device, "grad_input")
    if reduction != "none":
        want = cross_entropy_reference(host_x, host_t, host_w, **options)
        loss, grad = al.cross_entropy_and_grad(x, t, w, **options)
        assert_close(loss, want[0], dtype, device, "and_grad loss")
        assert_close(grad, want[1], dtype, device, "and_grad grad_input")


CROSS_ENTROPY_SHAPES = ((300, 33), (7,), (4, 6, 5, 3))


def case_cross_entropy(device: Device, dtype: str, shape: tuple[int, ...],
                       reduction: str) -> None:
    rng = np.random.default_rng(20)
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    x = device.put(rng.normal(scale=2, size=shape), dtype)
    targets = rng.integers(0, n_classes, target_shape)
    if targets.ndim:
        targets.reshape(-1)[::5] = 3  # ignored
    t = device.put(targets)
    w = device.put(rng.uniform(0.2, 2, n_classes), dtype)
    for weight, smoothing in ((None, 0.0), (w, 0.0), (None, 0.2), (w, 0.3)):
        check_cross_entropy(device, dtype, x, t, weight, reduction=reduction, ignore_index=3,
                            label_smoothing=smoothing)
    probabilities = rng.dirichlet(np.ones(n_classes), size=math.prod(target_shape) or 1)
    axis_last = probabilities.reshape(*(target_shape or (1,)), n_classes)
    q = device.put(np.moveaxis(axis_last, -1, 1 if len(shape) > 1 else 0).reshape(shape), dtype)
    for weight, smoothing in ((None, 0.0), (w, 0.25)):
        check_cross_entropy(device, dtype, x, q, weight, reduction=reduction,
                            label_smoothing=smoothing)


def case_cross_entropy_long_rows(device: Device, n_classes: int) -> None:
    """Few rows of many classes: each row split over several blocks, merged in order."""
    rng = np.random.default_rng(n_classes)
    rows = 3
    x = device.put(rng.normal(scale=4, size=(rows, n_classes)), "float32")
    t = device.put(np.array([0, n_classes - 1, n_classes // 2]))
    w = device.put(rng.uniform(0.5, 2, n_classes), "float32")
    for reduction in REDUCTIONS:
        check_cross_entropy(device, "float32", x, t, w, reduction=reduction,
                            label_smoothing=0.1)
    q = device.put(rng.dirichlet(np.ones(n_classes), size=rows), "float32")
    check_cross_entropy(device, "float32", x, q, reduction="mean")


def case_cross_entropy_out(device: Device) -> None:
    """``out=input`` consumes the logits; any ``out`` receives the gradient and is returned."""
    rng = np.random.default_rng(21)
    values = rng.normal(size=(50, 40))
    labels = device.put(rng.integers(0, 40, 50))
    want_loss, want_grad = cross_entropy_reference(
        values.astype(np.float32).astype(np.float64), device.asnumpy(labels), None,
        label_smoothing=0.1)
    for target in ("input", "fresh", "strided"):
        logits = device.put(values, "float32")
        out = {"input": logits, "fresh": device.put(np.zeros((50, 40)), "float32"),
               "strided": device.put(np.zeros((40, 50)), "float32").T}[target]
        loss, grad = al.cross_entropy_and_grad(logits, labels, label_smoothing=0.1, out=out)
        assert grad is out
        assert_close(loss, want_loss, "float32", device, f"out={target} loss")
        assert_close(grad, want_grad, "float32", device, f"out={target} grad")


def case_cross_entropy_strided(device: Device) -> None:
    rng = np.random.default_rng(22)
    logits = device.put(rng.normal(size=(10, 64)), "float32").T
    labels = device.put(rng.integers(0, 10, 128))[::2]
    spatial = device.put(rng.normal(size=(3, 5, 4, 6)), "float64").transpose(0, 1, 3, 2)
    spatial_labels = device.put(rng.integers(0, 5, (3, 6, 4)))
    soft = device.put(rng.dirichlet(np.ones(10), size=64), "float32")[:, ::-1]
    for reduction in REDUCTIONS:
        check_cross_entropy(device, "float32", logits, labels, reduction=reduction)
        check_cross_entropy(device, "float64", spatial, spatial_labels, reduction=reduction,
                            label_smoothing=0.05)
        check_cross_entropy(device, "float32", logits, soft, reduction=reduction)


def case_cross_entropy_empty(device: Device, reduction: str) -> None:
    rng = np.random.default_rng(23)
    for shape in [(0, 3), (2, 3, 0), (4, 0)]:
        x = device.put(rng.normal(size=shape), "float32")
        t = device.put(np.full((shape[0], *shape[2:]), -100, np.int64))
        check_cross_entropy(device, "float32", x, t, reduction=reduction)
        check_cross_entropy(device, "float32", x, device.put(np.zeros(shape), "float32"),
                            reduction=reduction)


def case_cross_entropy_bad_targets(device: Device) -> None:
    values = np.array([0, 1, 7, 2, -5, 1])
    logits = np.zeros((6, 3), np.float32)
    for function, options in ((al.cross_entropy, {}),
                              (al.cross_entropy, {"reduction": "none"}),
                              (al.cross_entropy_and_grad, {"label_smoothing": 0.1})):
        with pytest.raises(Exception) as numpy_error:
            function(logits, values, **options)
        with pytest.raises(type(numpy_error.value), match=r"target contains 7") as got:
            function(device.put(logits), device.put(values), **options)
        assert str(got.value) == str(numpy_error.value)
        Checks.count += 1
    consumed = device.put(logits)
    with pytest.raises(al.TargetOutOfRangeError):
        al.cross_entropy_and_grad(consumed, device.put(values), out=consumed)
    # The check comes before the gradient pass: the logits are untouched.
    np.testing.assert_array_equal(device.asnumpy(consumed), logits)
    Checks.count += 1


def no_sync_calls(device: Device) -> list[Any]:
    rng = np.random.default_rng(24)
    logits = device.put(rng.normal(size=(256, 12)), "float32")
    labels = device.put(rng.integers(0, 12, 256))
    soft = device.put(rng.dirichlet(np.ones(12), size=256), "float32")
    return [
        lambda: al.cross_entropy(logits, labels, validate=False),
        lambda: al.cross_entropy(logits, labels, reduction="none", validate=False),
        lambda: al.cross_entropy(logits, soft, label_smoothing=0.1),
        lambda: al.cross_entropy_backward(1.0, logits, labels, validate=False),
        lambda: al.cross_entropy_and_grad(logits, labels, label_smoothing=0.1, validate=False),
        lambda: al.cross_entropy_and_grad(logits, soft),
    ]


def repeatable_results(device: Device) -> list[Any]:
    """Every output of one loss-and-grad call of each kind, for the bitwise repeatability
    case (a long row split over blocks included)."""
    rng = np.random.default_rng(25)
    logits = device.put(rng.normal(size=(3000, 24)), "float32")
    labels = device.put(rng.integers(0, 24, 3000))
    long_rows = device.put(rng.normal(size=(2, 9000)), "float32")
    long_labels = device.put(np.array([5, 8000]))
    return [*al.cross_entropy_and_grad(logits, labels, label_smoothing=0.1),
            *al.cross_entropy_and_grad(long_rows, long_labels)]


def params() -> list[Any]:
    cases = []
    for dtype, shape, reduction in itertools.product(DTYPES, CROSS_ENTROPY_SHAPES, REDUCTIONS):
        cases.append(pytest.param(case_cross_entropy, (dtype, shape, reduction),
                                  id=f"cross-entropy-{dtype}-{shape}-{reduction}"))
    for dtype in ("float32", "bfloat16"):  # the fused kernel's block per row (C > 128)
        cases.append(pytest.param(case_cross_entropy, (dtype, (64, 300), "mean"),
                                  id=f"cross-entropy-{dtype}-block-rows"))
    for n_classes in (5000, 70_000):
        cases.append(pytest.param(case_cross_entropy_long_rows, (n_classes,),
                                  id=f"cross-entropy-long-rows-{n_classes}"))
    cases.append(pytest.param(case_cross_entropy_out, (), id="cross-entropy-out"))
    cases.append(pytest.param(case_cross_entropy_strided, (), id="cross-entropy-strided"))
    for reduction in REDUCTIONS:
        cases.append(pytest.param(case_cross_entropy_empty, (reduction,),
                                  id=f"cross-entropy-empty-{reduction}"))
    cases.append(pytest.param(case_cross_entropy_bad_targets, (),
                              id="cross-entropy-bad-targets"))
    return cases
