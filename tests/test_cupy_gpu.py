"""The fused CuPy kernels on a real GPU: against the generic path, PyTorch, and themselves.

Skipped unless a CUDA device works (CuPy imports fine without one, so the probe launches a
kernel).  ``test_parity.py`` also runs every PyTorch parity case on the ``cupy`` backend, which
takes the fused path; these tests add what only a GPU can show.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")


def _gpu_works() -> bool:
    try:
        return int((cupy.arange(3) + 1).sum().get()) == 6
    except Exception:
        return False


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _gpu_works(), reason="no working CUDA device")]

import arrayloss as al  # noqa: E402

DTYPES = ["float16", "bfloat16", "float32", "float64"]
TOLERANCE = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-6, "float64": 1e-12}


def _dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _device(array: np.ndarray, dtype: str | None = None) -> Any:
    return cupy.asarray(array.astype(_dtype(dtype)) if dtype else array)


def _host(array: Any) -> np.ndarray:
    return cupy.asnumpy(array).astype(np.float64) if array is not None else None


def _both_paths(function, *args, **kwargs) -> tuple[Any, Any]:
    fused = function(*args, **kwargs)
    with al.fused_kernels(False):
        generic = function(*args, **kwargs)
    return fused, generic


def _flatten(result: Any) -> list[Any]:
    if isinstance(result, tuple):
        return [item for part in result for item in _flatten(part)]
    return [result]


def _assert_paths_agree(fused: Any, generic: Any, dtype: str) -> None:
    rtol = TOLERANCE[dtype]
    for got, want in zip(_flatten(fused), _flatten(generic), strict=True):
        if want is None:
            assert got is None
            continue
        assert isinstance(got, cupy.ndarray) and got.shape == want.shape
        assert got.dtype == want.dtype
        want64 = _host(want)
        scale = np.abs(want64[np.isfinite(want64)]).max(initial=1.0)
        np.testing.assert_allclose(_host(got), want64, rtol=rtol, atol=rtol * scale,
                                   equal_nan=True)


GAUSSIAN_VARS = {"full": (4096, 33), "rows": (4096, 1), "one fewer": (4096,),
                 "columns": (1, 33), "scalar": None}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("var_kind", list(GAUSSIAN_VARS))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gaussian_fused_matches_generic(dtype: str, var_kind: str, reduction: str) -> None:
    rng = np.random.default_rng(0)
    x = _device(rng.normal(size=(4096, 33)), dtype)
    t = _device(rng.normal(size=(4096, 33)), dtype)
    shape = GAUSSIAN_VARS[var_kind]
    v: Any = 0.75 if shape is None else _device(rng.uniform(0, 2, shape), dtype)
    kwargs = {"reduction": reduction, "full": True, "eps": 1e-3}
    _assert_paths_agree(*_both_paths(al.gaussian_nll_loss, x, t, v, **kwargs), dtype)
    upstream: Any = 0.5
    if reduction == "none":
        upstream = _device(rng.uniform(size=(4096, 33)), dtype)
    _assert_paths_agree(
        *_both_paths(al.gaussian_nll_loss_backward, upstream, x, t, v, **kwargs), dtype)
    for wrt in (("input",), ("var",), ("target", "var")):
        _assert_paths_agree(*_both_paths(al.gaussian_nll_loss_backward, upstream, x, t, v,
                                         wrt=wrt, **kwargs), dtype)
    if reduction != "none":
        _assert_paths_agree(*_both_paths(al.gaussian_nll_loss_and_grad, x, t, v, **kwargs),
                            dtype)


def test_gaussian_broadcast_target_and_0d_upstream() -> None:
    rng = np.random.default_rng(1)
    x = _device(rng.normal(size=(64, 8)), "float32")
    t = _device(rng.normal(size=(3, 64, 8)), "float32")
    v = _device(rng.uniform(0.5, 2, (64, 1)), "float32")
    g = cupy.asarray(np.float32(0.25))
    _assert_paths_agree(*_both_paths(al.gaussian_nll_loss_backward, g, x, t, v), "float32")
    _assert_paths_agree(*_both_paths(al.gaussian_nll_loss, x, t, v, reduction="none"),
                        "float32")


NLL_SHAPES = [(5000, 10), (300, 1000), (8, 5, 17, 9), (4, 3, 2, 5, 6), (37,)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NLL_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_nll_fused_matches_generic(dtype: str, shape: tuple[int, ...], reduction: str) -> None:
    rng = np.random.default_rng(2)
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    x = _device(rng.normal(size=shape), dtype)
    targets = rng.integers(0, n_classes, target_shape)
    if targets.ndim:
        targets.reshape(-1)[::5] = 3  # ignored
    t = _device(targets)
    w = _device(rng.uniform(0.2, 2, n_classes), dtype)
    kwargs = {"reduction": reduction, "ignore_index": 3}
    for weight in (None, w):
        _assert_paths_agree(*_both_paths(al.nll_loss, x, t, weight, **kwargs), dtype)
        upstream: Any = 1.5
        if reduction == "none":
            upstream = _device(rng.uniform(size=target_shape), dtype)
        _assert_paths_agree(*_both_paths(al.nll_loss_backward, upstream, x, t, weight,
                                         **kwargs), dtype)
        if reduction != "none":
            _assert_paths_agree(*_both_paths(al.nll_loss_and_grad, x, t, weight, **kwargs),
                                dtype)


@pytest.mark.parametrize("target_dtype", ["int8", "int16", "int32", "int64", "uint8",
                                          "uint16", "uint32", "uint64"])
def test_nll_every_target_dtype(target_dtype: str) -> None:
    rng = np.random.default_rng(3)
    x = _device(rng.normal(size=(1000, 7)), "float32")
    targets = rng.integers(0, 7, 1000)
    targets[::4] = 100
    t = _device(targets.astype(target_dtype))
    for reduction in ("none", "mean", "sum"):
        _assert_paths_agree(*_both_paths(al.nll_loss, x, t, reduction=reduction,
                                         ignore_index=100), "float32")
        _assert_paths_agree(*_both_paths(al.nll_loss_and_grad if reduction != "none" else
                                         al.nll_loss, x, t, reduction=reduction,
                                         ignore_index=100), "float32")


def test_non_contiguous_inputs() -> None:
    rng = np.random.default_rng(4)
    x = _device(rng.normal(size=(64, 20)), "float32")[:, ::2]
    t = _device(rng.normal(size=(20, 64)), "float32").T[:, ::2]
    v = _device(rng.uniform(0.5, 2, (64, 10)), "float32")
    _assert_paths_agree(*_both_paths(al.gaussian_nll_loss_and_grad, x, t, v), "float32")
    logits = _device(rng.normal(size=(10, 64)), "float32").T
    labels = _device(rng.integers(0, 10, 128))[::2]
    _assert_paths_agree(*_both_paths(al.nll_loss_and_grad, logits, labels), "float32")


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_empty_inputs(reduction: str) -> None:
    for shape in [(0,), (0, 3), (2, 0)]:
        x = cupy.zeros(shape, dtype=cupy.float32)
        _assert_paths_agree(*_both_paths(al.gaussian_nll_loss, x, x, x + 1,
                                         reduction=reduction), "float32")
    for shape in [(0, 3), (2, 3, 0, 4), (2, 0)]:
        x = cupy.zeros(shape, dtype=cupy.float32)
        target_shape = (shape[0], *shape[2:])
        t = cupy.zeros(target_shape, dtype=cupy.int64)
        ignore = 0 if shape[1] == 0 else -100  # with C = 0 every target must be ignored
        _assert_paths_agree(*_both_paths(al.nll_loss, x, t, reduction=reduction,
                                         ignore_index=ignore), "float32")


def test_float16_beyond_65504_elements() -> None:
    n = 300_000
    x = cupy.full((n, 2), -1.0, dtype=cupy.float16)
    t = cupy.zeros(n, dtype=cupy.int64)
    assert float(al.nll_loss(x, t)) == 1.0
    grad = al.nll_loss_backward(1.0, x, t)
    assert bool((grad[:, 0] == cupy.float16(-1 / n)).all())
    mean = cupy.full(n, 0.5, dtype=cupy.float16)
    loss = al.gaussian_nll_loss(mean, cupy.zeros(n, cupy.float16), 1.0)
    assert abs(float(loss) - 0.125) < 1e-3


def test_bitwise_deterministic_over_reruns() -> None:
    rng = np.random.default_rng(5)
    x = _device(rng.normal(size=1 << 22), "float32")
    t = _device(rng.normal(size=1 << 22), "float32")
    v = _device(rng.uniform(0.1, 2, 1 << 22), "float32")
    logits = _device(rng.normal(size=(1 << 18, 16)), "float32")
    labels = _device(rng.integers(0, 16, 1 << 18))
    runs = []
    for _ in range(10):
        loss, grads = al.gaussian_nll_loss_and_grad(x, t, v)
        nll, grad = al.nll_loss_and_grad(logits, labels)
        runs.append([cupy.asnumpy(a).tobytes() for a in (loss, *grads, nll, grad)])
    assert all(run == runs[0] for run in runs)


def test_no_host_synchronisation_without_validation() -> None:
    import cupyx

    rng = np.random.default_rng(6)
    x = _device(rng.normal(size=(4096, 8)), "float32")
    v = _device(rng.uniform(0.1, 2, (4096, 1)), "float32")
    logits = _device(rng.normal(size=(4096, 10)), "float32")
    labels = _device(rng.integers(0, 10, 4096))
    g = cupy.asarray(np.float32(1.0))
    # Compile first: the first launch of a kernel may synchronise while loading it.
    calls = [
        lambda: al.gaussian_nll_loss(x, x, v, validate=False),
        lambda: al.gaussian_nll_loss(x, x, v, reduction="none", validate=False),
        lambda: al.gaussian_nll_loss_backward(1.0, x, x, v, validate=False),
        lambda: al.gaussian_nll_loss_backward(g, x, x, v, validate=False),
        lambda: al.gaussian_nll_loss_and_grad(x, x, v, validate=False),
        lambda: al.gaussian_nll_loss_and_grad(x, x, 0.5),
        lambda: al.nll_loss(logits, labels, validate=False),
        lambda: al.nll_loss(logits, labels, reduction="none", validate=False),
        lambda: al.nll_loss_backward(1.0, logits, labels, validate=False),
        lambda: al.nll_loss_and_grad(logits, labels, validate=False),
    ]
    for call in calls:
        call()
    cupy.cuda.get_current_stream().synchronize()
    with cupyx.allow_synchronize(False):
        for call in calls:
            call()


def test_bad_targets_raise_without_a_device_assert() -> None:
    logits = cupy.zeros((6, 3), dtype=cupy.float32)
    labels = cupy.asarray([0, 1, 7, 2, -5, 1])
    for call in (lambda: al.nll_loss(logits, labels),
                 lambda: al.nll_loss(logits, labels, reduction="none"),
                 lambda: al.nll_loss_backward(1.0, logits, labels, reduction="sum"),
                 lambda: al.nll_loss_and_grad(logits, labels)):
        with pytest.raises(al.TargetOutOfRangeError, match=r"target contains 7, .*\[0, 3\)"):
            call()
    # The CUDA context is still healthy: no device-side assert poisoned it.
    assert int((cupy.arange(4) * 2).sum().get()) == 12
    uint64_labels = cupy.asarray(np.array([0, 2**64 - 5], dtype=np.uint64))
    with pytest.raises(al.TargetOutOfRangeError, match=str(2**64 - 5)):
        al.nll_loss(logits[:2], uint64_labels)


def test_negative_variance_raises() -> None:
    x = cupy.zeros((5, 2), dtype=cupy.float32)
    v = cupy.asarray([[1.0], [0.5], [-1e-20], [2.0], [1.0]], dtype=cupy.float32)
    for reduction, function in itertools.product(
            ["none", "mean"], [al.gaussian_nll_loss, al.gaussian_nll_loss_and_grad]):
        if function is al.gaussian_nll_loss_and_grad and reduction == "none":
            continue
        with pytest.raises(ValueError, match="var has negative entries"):
            function(x, x, v, reduction=reduction)
    with pytest.raises(ValueError, match="var has negative entries"):
        al.gaussian_nll_loss_backward(1.0, x, x, v)


def test_launches_on_the_current_stream() -> None:
    rng = np.random.default_rng(7)
    x = _device(rng.normal(size=(2048, 16)), "float32")
    v = _device(rng.uniform(0.1, 2, (2048, 1)), "float32")
    expected = al.gaussian_nll_loss(x, x * 0.5, v)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        got = al.gaussian_nll_loss(x, x * 0.5, v, validate=False)
    stream.synchronize()
    assert cupy.asnumpy(got).tobytes() == cupy.asnumpy(expected).tobytes()


def test_fused_matches_torch_on_the_gpu() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    rng = np.random.default_rng(8)
    xs = rng.normal(size=(1024, 16))
    ts = rng.normal(size=(1024, 16))
    vs = rng.uniform(0.1, 2, (1024, 1))
    tx, tt, tv = (torch.tensor(a, device="cuda", requires_grad=True) for a in (xs, ts, vs))
    loss = torch.nn.functional.gaussian_nll_loss(tx, tt, tv, full=True)
    loss.backward()
    got, grads = al.gaussian_nll_loss_and_grad(*(cupy.asarray(a) for a in (xs, ts, vs)),
                                               full=True)
    np.testing.assert_allclose(float(got), loss.item(), rtol=1e-12)
    for mine, theirs in zip(grads, (tx.grad, tt.grad, tv.grad), strict=True):
        np.testing.assert_allclose(cupy.asnumpy(mine), theirs.cpu().numpy(), rtol=1e-10)
