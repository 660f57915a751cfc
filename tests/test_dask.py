"""Dask arrays: lazy at call time, fused per chunk, equal to the NumPy results, on a real
two-process cluster too.  Skipped where Dask is absent (``pip install 'arrayloss[dask]'``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import arrayloss as al

da = pytest.importorskip("dask.array", reason="Dask is not installed (pip install '.[dask]')")
dask = pytest.importorskip("dask")


def _forbid(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("arrayloss computed something at call time")


def _lazily(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``function`` under a scheduler that fails on any compute."""
    with dask.config.set(scheduler=_forbid):
        return function(*args, **kwargs)


def _dask(array: np.ndarray, chunks: Any) -> Any:
    return da.from_array(array, chunks=chunks)


def _compute(*results: Any) -> list[Any]:
    flat = [r for result in results for r in (result if isinstance(result, tuple) else (result,))]
    computed = dask.compute(*[r for r in flat if r is not None], scheduler="threads")
    iterator = iter(computed)
    return [None if r is None else next(iterator) for r in flat]


def _assert_equal(got: Any, want: Any, reduction: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if reduction == "none":
        np.testing.assert_array_equal(got, want)  # the same arrayloss call per chunk: bitwise
    else:
        np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


# ------------------------------------------------------------------ Gaussian NLL

GAUSSIAN_VARS = {"full": (60, 7), "rows": (60, 1), "one fewer": (60,), "columns": (1, 7)}


@pytest.mark.parametrize("var_kind", [*GAUSSIAN_VARS, "scalar"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("options", [{}, {"full": True, "log_var": True, "beta": 0.5}])
def test_gaussian_is_lazy_and_equals_numpy(var_kind: str, reduction: str,
                                           options: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(60, 7)), rng.normal(size=(60, 7))
    v: Any = 0.75 if var_kind == "scalar" else rng.uniform(0.2, 2, GAUSSIAN_VARS[var_kind])
    dx, dt = _dask(x, (25, 3)), _dask(t, (25, 3))
    dv = v if var_kind == "scalar" else _dask(v, 25 if v.ndim == 1 else (25, 3))
    upstream = 0.5 if reduction != "none" else rng.uniform(0.5, 1.5, (60, 7))
    dupstream = upstream if reduction != "none" else _dask(upstream, (20, 7))
    kwargs = {"reduction": reduction, **options}
    loss = _lazily(al.gaussian_nll_loss, dx, dt, dv, **kwargs)
    grads = _lazily(al.gaussian_nll_loss_backward, dupstream, dx, dt, dv, **kwargs)
    assert isinstance(loss, da.Array)
    got = _compute(loss, grads)
    _assert_equal(got[0], al.gaussian_nll_loss(x, t, v, **kwargs), reduction)
    want = al.gaussian_nll_loss_backward(upstream, x, t, v, **kwargs)
    for result, expected in zip(got[1:], want, strict=True):
        if expected is None:
            assert result is None
            continue
        np.testing.assert_allclose(result, expected, rtol=1e-12)
    # Gradients come back chunked like their arguments.
    assert grads[0].chunks == dx.chunks and grads[1].chunks == dt.chunks
    if var_kind != "scalar":
        assert grads[2].chunks == dv.chunks
    if reduction != "none":
        fused_loss, fused = _lazily(al.gaussian_nll_loss_and_grad, dx, dt, dv, **kwargs)
        got = _compute(fused_loss, fused)
        want_loss, want_grads = al.gaussian_nll_loss_and_grad(x, t, v, **kwargs)
        np.testing.assert_allclose(got[0], want_loss, rtol=1e-12)
        for result, expected in zip(got[1:], want_grads, strict=True):
            if expected is not None:
                np.testing.assert_allclose(result, expected, rtol=1e-12)


def test_float16_sums_in_float32_per_chunk() -> None:
    n = 200_000  # beyond 65504: a float16 running sum would overflow
    x = np.full(n, 1.0, np.float16)  # 0.5 per element: a sum of 100,000
    loss = al.gaussian_nll_loss(_dask(x, 50_000), _dask(np.zeros(n, np.float16), 50_000), 1.0,
                                reduction="sum").compute()
    assert loss.dtype == np.float16 and np.isinf(loss)  # the float16 result itself overflows
    mean = al.gaussian_nll_loss(_dask(x, 50_000), _dask(np.zeros(n, np.float16), 50_000), 1.0)
    np.testing.assert_allclose(mean.compute(), 0.5, rtol=1e-3)


def _f16_gap(got: np.ndarray, want: np.ndarray) -> float:
    """The largest difference in float16 ulps of ``want`` (``want``: rounded once)."""
    spacing = np.spacing(np.abs(want.astype(np.float16))).astype(np.float64)
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)) / spacing))


def test_float16_broadcast_gradients_are_summed_before_rounding() -> None:
    # A target, variance or linear weight shared by rows in other chunks: its gradient is the
    # chunks' float32 partial sums, rounded to float16 once, as NumPy's (not a float16 sum of
    # pieces rounded each: 0 where the terms cancel, 15 ulps off elsewhere).
    rng = np.random.default_rng(4)
    x = np.array([[1.1], [-1.0]], np.float16)
    upstream = np.array([[0.7], [0.77]], np.float16)
    args = (x, np.zeros((1, 1), np.float16))
    want = al.mse_loss_backward(upstream, *args, reduction="none")[1]
    got = al.mse_loss_backward(_dask(upstream, 1), *(_dask(a, 1) for a in args),
                               reduction="none")[1].compute()
    assert float(want[0, 0]) != 0.0
    np.testing.assert_array_equal(got, want)
    x = np.array([[1.1025390625], [0.5068359375]], np.float16)  # a shared variance's terms
    upstream = np.array([[-0.81689453125], [-0.23828125]], np.float16)
    args = (x, np.zeros((2, 1), np.float16), np.ones((1, 1), np.float16))
    exact = np.sum(upstream.astype(np.float64) / 2 * (1 - x.astype(np.float64) ** 2))
    got = al.gaussian_nll_loss_backward(_dask(upstream, 1), *(_dask(a, 1) for a in args),
                                        reduction="none")[2].compute()
    assert float(got[0, 0]) == float(np.float16(exact))

    x, t = (rng.normal(size=(64, 6)).astype(np.float16) for _ in range(2))
    var = rng.uniform(0.5, 2, (64, 1)).astype(np.float16)
    upstream = rng.uniform(-1, 1, (64, 6)).astype(np.float16)
    shared = (x, t[:1], var[:1])
    cases = [
        (al.mse_loss_backward, (upstream, x, t[:1]), {"reduction": "none"}, 1),
        (al.gaussian_nll_loss_backward, (upstream, *shared), {"reduction": "none"}, 2),
        (al.gaussian_nll_loss_backward, (1.0, *shared), {"reduction": "sum"}, 1),
    ]
    for function, arrays, keywords, position in cases:
        want = function(*arrays, **keywords)[position]
        exact = function(*(a.astype(np.float64) if isinstance(a, np.ndarray) else a
                           for a in arrays), **keywords)[position]
        got = function(*(_dask(a, 8) if isinstance(a, np.ndarray) else a for a in arrays),
                       **keywords)[position].compute()
        assert got.dtype == want.dtype == np.float16
        assert _f16_gap(got, exact) <= 1.0 and _f16_gap(want, exact) <= 1.0, function

    h = rng.normal(size=(64, 4)).astype(np.float16)
    w = rng.normal(size=(8, 4)).astype(np.float16)
    b = rng.normal(size=8).astype(np.float16)
    target = rng.integers(0, 8, 64)
    exact = al.linear_cross_entropy_backward(1.0, h.astype(np.float64), w.astype(np.float64),
                                             target, linear_bias=b.astype(np.float64),
                                             reduction="sum")
    for function in (al.linear_cross_entropy_backward, al.linear_cross_entropy_and_grad):
        arguments = (_dask(h, 1), _dask(w, -1), _dask(target, 1))
        if function is al.linear_cross_entropy_backward:
            grads = function(1.0, *arguments, linear_bias=_dask(b, -1), reduction="sum")
        else:
            grads = function(*arguments, linear_bias=_dask(b, -1), reduction="sum")[1]
        for got, want in zip(_compute(*grads), exact, strict=True):
            assert got.dtype == np.float16 and _f16_gap(got, want) <= 1.0


def test_bfloat16_chunks_as_numpys() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(8)
    x, t = (rng.normal(size=(6, 5)).astype(ml_dtypes.bfloat16) for _ in range(2))
    var = rng.uniform(0.5, 2, (6, 1)).astype(ml_dtypes.bfloat16)
    target = rng.integers(0, 5, 6)
    calls = [(al.mse_loss, (x, t)), (al.gaussian_nll_loss, (x, t, var)),
             (al.cross_entropy, (x, target)), (al.binary_cross_entropy_with_logits, (x, t))]
    for function, arrays in calls:
        want = function(*arrays)
        got = function(*(_dask(a, 2) for a in arrays)).compute()
        assert got.dtype == want.dtype and got.dtype.name == "bfloat16"
        np.testing.assert_array_equal(got, want)


def test_negative_variance_raises_when_computed() -> None:
    x = np.zeros((8, 2))
    v = np.ones((8, 1))
    v[5] = -1.0
    with pytest.raises(ValueError) as numpy_error:
        al.gaussian_nll_loss(x, x, v)
    loss = _lazily(al.gaussian_nll_loss, _dask(x, 4), _dask(x, 4), _dask(v, 4))
    with pytest.raises(ValueError) as dask_error:
        loss.compute()
    assert str(dask_error.value) == str(numpy_error.value)
    # A number is checked at once, as everywhere (it costs nothing).
    with pytest.raises(ValueError, match=r"var is -1\.0, which is negative"):
        al.gaussian_nll_loss(_dask(x, 4), _dask(x, 4), -1.0)


# ------------------------------------------------------------------ NLL and cross-entropy

CLASS_LAYOUTS = [
    ((30, 7), (8, 3)),  # the class axis split over chunks
    ((30, 7), (10, 7)),
    ((6, 5, 4, 3), (4, 2, 2, 2)),
    ((7,), (3,)),  # unbatched
]
CLASS_LOSSES = {
    "nll": (al.nll_loss, al.nll_loss_backward, al.nll_loss_and_grad, {}),
    "cross_entropy": (al.cross_entropy, al.cross_entropy_backward, al.cross_entropy_and_grad,
                      {"label_smoothing": 0.1}),
}


@pytest.mark.parametrize(("shape", "chunks"), CLASS_LAYOUTS)
@pytest.mark.parametrize("loss", list(CLASS_LOSSES))
@pytest.mark.parametrize("weighted", [False, True])
def test_class_losses_are_lazy_and_equal_numpy(shape: tuple[int, ...], chunks: tuple[int, ...],
                                                loss: str, weighted: bool) -> None:
    forward, backward, fused, options = CLASS_LOSSES[loss]
    rng = np.random.default_rng(1)
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    x = rng.normal(size=shape)
    t = rng.integers(0, n_classes, target_shape)
    if t.ndim:
        t.reshape(-1)[::4] = -100
    w = rng.uniform(0.5, 2, n_classes) if weighted else None
    dx = _dask(x, chunks)
    dt = _dask(t, () if t.ndim == 0 else (chunks[0], *chunks[2:]))
    dw = None if w is None else _dask(w, 2)
    for reduction in ("none", "mean", "sum"):
        kwargs = {"reduction": reduction, **options}
        upstream: Any = 1.5 if reduction != "none" else rng.uniform(0.5, 1.5, target_shape)
        dupstream = upstream if reduction != "none" else _dask(upstream, upstream.shape or ())
        lazy_loss = _lazily(forward, dx, dt, dw, **kwargs)
        lazy_grad = _lazily(backward, dupstream, dx, dt, dw, **kwargs)
        got_loss, got_grad = _compute(lazy_loss, lazy_grad)
        _assert_equal(got_loss, forward(x, t, w, **kwargs), reduction)
        np.testing.assert_allclose(got_grad, backward(upstream, x, t, w, **kwargs), rtol=1e-12)
        assert lazy_grad.chunks == dx.chunks
        if reduction != "none":
            lazy = _lazily(fused, dx, dt, dw, **kwargs)
            got = _compute(*lazy)
            want = fused(x, t, w, **kwargs)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
            np.testing.assert_allclose(got[1], want[1], rtol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_probabilities_over_class_chunks(reduction: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 9, 3))
    q = np.moveaxis(rng.dirichlet(np.ones(9), size=(20, 3)), -1, 1).copy()
    dx, dq = _dask(x, (7, 4, 2)), _dask(q, (7, 4, 2))
    kwargs = {"reduction": reduction, "label_smoothing": 0.2}
    loss = _lazily(al.cross_entropy, dx, dq, **kwargs)
    # Row sums over a strided class axis follow the chunk's layout: equal to rounding.
    np.testing.assert_allclose(loss.compute(), al.cross_entropy(x, q, **kwargs), rtol=1e-14)
    if reduction != "none":
        lazy_loss, lazy_grad = _lazily(al.cross_entropy_and_grad, dx, dq, **kwargs)
        want_loss, want_grad = al.cross_entropy_and_grad(x, q, **kwargs)
        np.testing.assert_allclose(lazy_loss.compute(), want_loss, rtol=1e-12)
        np.testing.assert_allclose(lazy_grad.compute(), want_grad, rtol=1e-12)
        assert lazy_grad.chunks == dx.chunks


@pytest.mark.parametrize("loss", list(CLASS_LOSSES))
def test_bad_target_raises_when_computed(loss: str) -> None:
    forward, _, fused, _ = CLASS_LOSSES[loss]
    x = np.zeros((8, 3))
    t = np.array([0, 1, 2, 0, 7, 1, 0, 2])
    with pytest.raises(al.TargetOutOfRangeError) as numpy_error:
        forward(x, t)
    lazy = _lazily(forward, _dask(x, 4), _dask(t, 4))
    with pytest.raises(al.TargetOutOfRangeError) as dask_error:
        lazy.compute()
    assert str(dask_error.value) == str(numpy_error.value)
    loss_value, grad = _lazily(fused, _dask(x, 4), _dask(t, 4))
    with pytest.raises(al.TargetOutOfRangeError):
        dask.compute(loss_value, grad)


def test_all_ignored_mean_is_nan_lazily() -> None:
    x, t = np.ones((6, 3)), np.full(6, -100)
    loss = _lazily(al.nll_loss, _dask(x, 2), _dask(t, 2))
    assert np.isnan(loss.compute())
    grad = al.cross_entropy_backward(1.0, _dask(x, 2), _dask(t, 2)).compute()
    np.testing.assert_array_equal(grad, np.zeros((6, 3)))


def test_out_is_rejected() -> None:
    logits = _dask(np.zeros((4, 3)), 2)
    with pytest.raises(TypeError, match="out is not supported for Dask arrays"):
        al.cross_entropy_and_grad(logits, _dask(np.zeros(4, np.int64), 2), out=logits)


# ------------------------------------------------------------------ one read per chunk


def test_loss_and_grad_reads_each_input_chunk_once() -> None:
    reads: list[tuple[int, ...]] = []
    lock = threading.Lock()
    rng = np.random.default_rng(3)
    values = rng.normal(size=(40, 6))

    def load(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        location = tuple(start for start, _ in block_info[None]["array-location"])
        with lock:
            reads.append(location)
        rows, cols = block_info[None]["array-location"]
        return values[rows[0]:rows[1], cols[0]:cols[1]]

    source = da.zeros((40, 6), chunks=(10, 3)).map_blocks(load, dtype=np.float64)
    labels = _dask(rng.integers(0, 6, 40), 10)
    loss, grad = al.cross_entropy_and_grad(source, labels)
    dask.compute(loss, grad, scheduler="threads")
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 8  # 4 x 2 chunks, once each
    reads.clear()
    x = source
    loss, (grad_input, _, grad_var) = al.gaussian_nll_loss_and_grad(
        x, _dask(values, (10, 3)), _dask(np.ones((40, 1)), (10, 1)))
    dask.compute(loss, grad_input, grad_var, scheduler="threads")
    assert len(reads) == 8


# ------------------------------------------------------------------ a real cluster


@pytest.fixture(scope="module")
def cluster_client() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


def test_on_a_local_cluster_with_two_worker_processes(cluster_client: Any) -> None:
    rng = np.random.default_rng(4)
    x, t, v = rng.normal(size=(400, 8)), rng.normal(size=(400, 8)), rng.uniform(0.5, 2, (400, 1))
    logits, labels = rng.normal(size=(300, 10)), rng.integers(0, 10, 300)
    labels[::9] = -100
    dx, dt, dv = _dask(x, (100, 4)), _dask(t, (100, 4)), _dask(v, (100, 1))
    dlogits, dlabels = _dask(logits, (75, 5)), _dask(labels, 75)
    for reduction in ("none", "mean"):
        gaussian = al.gaussian_nll_loss(dx, dt, dv, reduction=reduction)
        nll = al.nll_loss(dlogits, dlabels, reduction=reduction)
        ce = al.cross_entropy(dlogits, dlabels, reduction=reduction, label_smoothing=0.1)
        got = cluster_client.compute([gaussian, nll, ce], sync=True)
        _assert_equal(got[0], al.gaussian_nll_loss(x, t, v, reduction=reduction), reduction)
        _assert_equal(got[1], al.nll_loss(logits, labels, reduction=reduction), reduction)
        _assert_equal(got[2], al.cross_entropy(logits, labels, reduction=reduction,
                                               label_smoothing=0.1), reduction)
    loss, grads = al.gaussian_nll_loss_and_grad(dx, dt, dv)
    ce_loss, ce_grad = al.cross_entropy_and_grad(dlogits, dlabels)
    nll_grad = al.nll_loss_backward(2.0, dlogits, dlabels, reduction="sum")
    got = cluster_client.compute([loss, *grads, ce_loss, ce_grad, nll_grad], sync=True)
    want_loss, want_grads = al.gaussian_nll_loss_and_grad(x, t, v)
    np.testing.assert_allclose(got[0], want_loss, rtol=1e-12)
    for result, expected in zip(got[1:4], want_grads, strict=True):
        np.testing.assert_allclose(result, expected, rtol=1e-12)
    want_ce = al.cross_entropy_and_grad(logits, labels)
    np.testing.assert_allclose(got[4], want_ce[0], rtol=1e-12)
    np.testing.assert_allclose(got[5], want_ce[1], rtol=1e-12)
    np.testing.assert_array_equal(got[6], al.nll_loss_backward(2.0, logits, labels,
                                                                reduction="sum"))
    # An error inside a worker reaches the caller with its type and message.
    bad = al.nll_loss(dlogits, _dask(np.full(300, 50), 75))
    with pytest.raises(al.TargetOutOfRangeError, match="target contains 50"):
        cluster_client.compute(bad, sync=True)
