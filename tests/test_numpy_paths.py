"""NumPy's fast paths against the generic array-API code they stand in for.

The parity suite checks every path against PyTorch within its tolerances; here the fast
paths must give the generic code's elementwise results *bitwise* (losses with
``reduction='none'``, gradients of arguments that are not broadcast), and its reductions
to rounding, over the shapes and options that select blocks, threads and broadcasts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

import arrayloss as al
from arrayloss._agnostic import _gaussian_numpy, _nll_blocks, _nll_numpy

SHAPES = [  # (input shape, var shape or None for a number)
    ((100,), (100,)),
    ((1000, 100), (1000, 100)),  # 1e5 elements: blocks in threads
    ((3000, 70), (3000, 1)),  # one variance per row
    ((3000, 70), (1, 70)),  # one per column: broadcast along the row blocks
    ((2, 200000), (2, 1)),  # a few very wide rows: blocks along the last axis
    ((2, 200000), (1, 200000)),
    ((40, 50, 60), (40, 1, 60)),
    ((7,), None),
]
OPTIONS = [{}, {"full": True}, {"log_var": True}, {"beta": 0.5},
           {"log_var": True, "beta": 0.7, "full": True}, {"eps": 0.05}]


@contextmanager
def _switched_off(module: Any, gate: str, answer: Any) -> Iterator[None]:
    """The fast path of ``module`` refused: its ``gate`` function answers ``answer``."""
    saved = getattr(module, gate)
    setattr(module, gate, lambda *args: answer)
    try:
        yield
    finally:
        setattr(module, gate, saved)


def _generic() -> Any:
    return _switched_off(_gaussian_numpy, "applies", False)


def _both(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    fast = function(*args, **kwargs)
    with _generic():
        return fast, function(*args, **kwargs)


def _assert_same(fast: Any, generic: Any, bitwise: bool) -> None:
    assert type(fast) is type(generic)
    assert fast.shape == generic.shape and fast.dtype == generic.dtype
    if bitwise:
        np.testing.assert_array_equal(fast, generic)
    else:
        np.testing.assert_allclose(fast, generic, rtol=2e-5, atol=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda options: "-".join(options) or "plain")
@pytest.mark.parametrize(("shape", "var_shape"), SHAPES, ids=str)
def test_gaussian_fast_path_matches_the_generic_code(
        shape: tuple[int, ...], var_shape: tuple[int, ...] | None, options: dict[str, Any],
        dtype: str) -> None:
    rng = np.random.default_rng(len(shape) * 31 + shape[0])
    x = rng.standard_normal(shape).astype(dtype)
    t = rng.standard_normal(shape).astype(dtype)
    var: Any = 0.3
    wrt: tuple[str, ...] = ("input", "target")
    if var_shape is not None:
        var = rng.uniform(-1.0 if options.get("log_var") else 0.0, 2.0, var_shape).astype(dtype)
        var.reshape(-1)[::17] = 0.0  # zero variances: clamped (or log(0) = -inf with eps 0)
        wrt = ("input", "target", "var")
    x.reshape(-1)[::29] = np.inf  # inf and NaN land where the generic code puts them
    x.reshape(-1)[::31] = np.nan
    with np.errstate(all="ignore"):
        _assert_same(*_both(al.gaussian_nll_loss, x, t, var, reduction="none", **options),
                     bitwise=True)
    upstream = rng.uniform(0.5, 1.5, shape).astype(dtype)
    upstream.reshape(-1)[::13] = 0.0
    backward, backward_generic = _both(al.gaussian_nll_loss_backward, upstream, x, t, var,
                                       reduction="none", wrt=wrt, **options)
    for fast_grad, generic_grad in zip(backward, backward_generic, strict=True):
        if generic_grad is None:
            assert fast_grad is None
            continue
        _assert_same(fast_grad, generic_grad, bitwise=fast_grad.shape == shape)
    for reduction in ("mean", "sum"):
        fast, generic = _both(al.gaussian_nll_loss, x, t, var, reduction=reduction, **options)
        _assert_same(fast, generic, bitwise=False)
        (loss, grads), (loss_generic, grads_generic) = _both(
            al.gaussian_nll_loss_and_grad, x, t, var, reduction=reduction, wrt=wrt, **options)
        _assert_same(loss, loss_generic, bitwise=False)
        backward, backward_generic = _both(al.gaussian_nll_loss_backward, 0.75, x, t, var,
                                           reduction=reduction, wrt=wrt, **options)
        for fast_grad, generic_grad in [*zip(grads, grads_generic, strict=True),
                                        *zip(backward, backward_generic, strict=True)]:
            if generic_grad is None:
                assert fast_grad is None
                continue
            # A gradient summed over a broadcast is a reduction: equal to rounding.
            _assert_same(fast_grad, generic_grad, bitwise=fast_grad.shape == shape)


@pytest.mark.parametrize("options", [{}, {"log_var": True}, {"beta": 0.5}], ids=str)
def test_gaussian_rows_past_the_range_of_their_sum_of_squares(options: dict[str, Any]
                                                               ) -> None:
    """One variance per row: a row's sum of d**2 (1e40 in float32) overflows where every
    d**2 / v is small, so the row takes the elementwise quotients: finite, as the float64
    formula."""
    x = np.full((4, 100), 1e19, dtype=np.float32)
    t = np.zeros_like(x)
    var = np.full((4, 1), 69.0 if options.get("log_var") else 1e30, dtype=np.float32)
    loss, (_, _, grad_var) = al.gaussian_nll_loss_and_grad(x, t, var, wrt=("var",), **options)
    v = np.exp(69.0) if options.get("log_var") else 1e30
    weight = v ** options.get("beta", 0.0)
    want = 0.5 * (np.log(v) + 1e38 / v) * weight  # the float64 formula, every element alike
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert np.isfinite(grad_var).all()
    np.testing.assert_allclose(float(al.gaussian_nll_loss(x, t, var, **options)), want,
                               rtol=1e-5)


def test_gaussian_fast_path_takes_what_it_should() -> None:
    """The fast path runs for same-dtype NumPy arrays that need no summed input gradient, and
    leaves the rest (casts, a broadcast input or target) to the generic code."""
    from arrayloss._calls import gaussian_nll_call

    def call(x: Any, t: Any, var: Any) -> Any:
        return gaussian_nll_call(x, t, var, full=False, eps=1e-6, reduction="mean",
                                 validate=True)

    x = np.ones((4, 3), dtype=np.float32)
    assert _gaussian_numpy.applies(call(x, x, x))
    assert _gaussian_numpy.applies(call(x, x, 1.0))
    assert _gaussian_numpy.applies(call(x, x, np.ones((4, 1), dtype=np.float32)))
    assert not _gaussian_numpy.applies(call(x, x, np.ones((4, 3))))  # float64 var: a cast
    assert not _gaussian_numpy.applies(call(x, x[:1], x))  # target broadcast
    assert not _gaussian_numpy.applies(call(x.astype(np.float16), x.astype(np.float16), 1.0))
    assert not _gaussian_numpy.applies(call(x[:0], x[:0], 1.0))  # empty


def test_gaussian_fast_path_leaves_inputs_alone_and_reuses_its_buffers() -> None:
    import tracemalloc

    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((2, 2, 1 << 20), dtype=np.float32)
    var = rng.uniform(0.5, 1.5, (2, 1 << 20)).astype(np.float32)
    copies = [a.copy() for a in (x, t, var)]
    al.gaussian_nll_loss_and_grad(x, t, var, wrt=("input", "var"))  # warm the scratch
    tracemalloc.start()
    al.gaussian_nll_loss_and_grad(x, t, var, wrt=("input", "var"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    for array, copy in zip((x, t, var), copies, strict=True):
        np.testing.assert_array_equal(array, copy)
    # The two gradients (16 MiB) and nothing input-sized besides.
    assert peak < 16 * 2**20 + 2**20


def _generic_nll() -> Any:
    return _switched_off(_nll_numpy, "route", None)


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("target_dtype", ["int64", "int32", "uint8", "uint64"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("shape", [(1, 1), (32, 10), (300, 200), (70000, 3), (3, 5, 7, 11),
                                   (4, 3, 200, 100), (2, 40, 300),
                                   # several blocks, the last one shorter
                                   (300_000, 2), (20, 2, 100, 100)], ids=str)
def test_nll_fast_path_matches_the_generic_code(shape: tuple[int, ...], dtype: str,
                                                target_dtype: str, layout: str) -> None:
    """Batches with every target a class, (N, C) and spatial, blocked and threaded."""
    rng = np.random.default_rng(math.prod(shape))
    n_classes = shape[1]
    x = np.asarray(rng.standard_normal(shape).astype(dtype), order=layout)
    x.reshape(-1)[::7] = np.inf  # picked infinities stay where the generic code puts them
    target = rng.integers(0, n_classes, (shape[0], *shape[2:])).astype(target_dtype)
    for weight in (None, rng.uniform(0.5, 2.0, n_classes).astype(dtype)):
        _assert_nll_as_generic(x, target, weight)


def _assert_nll_as_generic(x: Any, target: Any, weight: Any, **options: Any) -> None:
    """Forward (every reduction), loss-and-gradient and backward: the fast path against the
    generic code, bitwise where elementwise."""
    for reduction in ("none", "mean", "sum"):
        fast = al.nll_loss(x, target, weight, reduction=reduction, **options)
        with _generic_nll():
            generic = al.nll_loss(x, target, weight, reduction=reduction, **options)
        _assert_same(fast, generic, bitwise=reduction == "none")
        if reduction == "none":
            continue
        loss, grad = al.nll_loss_and_grad(x, target, weight, reduction=reduction, **options)
        with _generic_nll():
            loss_generic, grad_generic = al.nll_loss_and_grad(x, target, weight,
                                                              reduction=reduction, **options)
        _assert_same(loss, loss_generic, bitwise=False)
        # A weighted mean's gradient divides by the total weight, a sum (to rounding).
        exact = reduction == "sum" or weight is None
        _assert_same(grad, grad_generic, bitwise=exact)
        backward = al.nll_loss_backward(0.75, x, target, weight, reduction=reduction,
                                        **options)
        with _generic_nll():
            backward_generic = al.nll_loss_backward(0.75, x, target, weight,
                                                    reduction=reduction, **options)
        _assert_same(backward, backward_generic, bitwise=exact)


@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("shape", [(70000, 5), (300_000, 2), (3, 4, 50, 40)], ids=str)
def test_nll_gradient_scattered_by_threads_matches_the_generic_code(
        shape: tuple[int, ...], ignore_index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large gradient's scatter runs in parts in the worker threads (every gradient here,
    the threshold lowered): the same gradient as the generic code, bit for bit, weighted,
    masked, in one block and in several."""
    monkeypatch.setattr(_nll_blocks, "THREADED_SCATTER_BYTES", 0)
    rng = np.random.default_rng(shape[0])
    n_classes = shape[1]
    x = rng.standard_normal(shape).astype(np.float32)
    target = rng.integers(0, n_classes, (shape[0], *shape[2:]))
    for masked in (False, True):
        if masked:
            target.reshape(-1)[::5] = ignore_index
        for weight in (None, rng.uniform(0.5, 2.0, n_classes).astype(np.float32)):
            _assert_nll_as_generic(x, target, weight, ignore_index=ignore_index)


@pytest.mark.parametrize("target_dtype", ["int64", "int16", "uint8", "uint64"])
@pytest.mark.parametrize("ignore_index", [-100, 0, 3])
@pytest.mark.parametrize("shape", [(32, 10), (300, 7), (70000, 5), (4, 6, 50, 40)], ids=str)
def test_nll_with_ignored_targets_matches_the_generic_code(shape: tuple[int, ...],
                                                           ignore_index: int,
                                                           target_dtype: str) -> None:
    """The masked blocks: ignored targets among the classes (a uint8 target is never -100),
    NaN and inf at the inputs an ignored target's safe index reads."""
    rng = np.random.default_rng(shape[0] + abs(ignore_index))
    n_classes = shape[1]
    x = rng.standard_normal(shape).astype(np.float32)
    x[:, 0] = np.nan  # class 0: where an ignored target reads; it must not leak
    x[:, 1] = -np.inf
    target = rng.integers(0, n_classes, (shape[0], *shape[2:]))
    if np.iinfo(target_dtype).min <= ignore_index:
        target.reshape(-1)[::3] = ignore_index
    target = target.astype(target_dtype)
    assert _nll_numpy.route(_nll_call(x, target, None, ignore_index)) is not None
    for weight in (None, rng.uniform(0.5, 2.0, n_classes).astype(np.float32)):
        _assert_nll_as_generic(x, target, weight, ignore_index=ignore_index)


@pytest.mark.parametrize("special", ["finite", "nan at a safe index", "infinite weight",
                                     "zero weight", "every target ignored"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(70000, 5), (3, 4, 50, 40)], ids=str)
def test_nll_masked_sums_are_those_of_the_written_over_losses(
        shape: tuple[int, ...], dtype: str, weighted: bool, special: str) -> None:
    """The masked blocks' sums multiply the terms of ignored targets by 0 instead of writing
    0 over them: bit for bit the sum of the written-over losses (one block: NumPy's own
    pairwise sum of the same values in the same order, summed in the compute dtype from the
    input's as NumPy sums a cast, in buffered chunks), the NaN of a non-finite value at an
    ignored target's safe index and the sign of a zero (+0 for a total of zero, as
    PyTorch's) included."""
    rng = np.random.default_rng(shape[0])
    n_classes = shape[1]
    compute = np.dtype(np.float32)
    x = rng.standard_normal(shape).astype(dtype)
    target = rng.integers(0, n_classes, (shape[0], *shape[2:]))
    target.reshape(-1)[::4] = -100
    weight = rng.uniform(0.5, 2.0, n_classes).astype(dtype) if weighted else None
    if special == "nan at a safe index":
        x[:, 0] = np.nan
        target[target == 0] = 1  # class 0 is read by ignored targets alone
    elif special == "infinite weight" and weight is not None:
        weight[0] = np.inf
        target[target == 0] = 1
    elif special == "zero weight" and weight is not None:
        weight[2] = 0.0
    elif special == "every target ignored":
        target[...] = -100
    call = _nll_call(x, target, weight, -100, validate=False)
    assert _nll_numpy.route(call) == "masked"
    active = target != -100
    safe = np.where(active, target, 0)
    picked = np.take_along_axis(x, safe[:, None], axis=1)[:, 0]
    with np.errstate(all="ignore"):
        # Unweighted: the picked values in the input's dtype; weighted: -(x w) in the
        # compute dtype (w[t] looked up in the input's dtype, then cast).
        losses = picked.copy() if weight is None else -(
            picked.astype(compute) * weight[safe].astype(compute))
        losses[~active] = 0
        total = np.add.reduce(losses, None, compute)
        # + 0.0: PyTorch's sum is accumulated from +0, so a total of zero is +0.
        expected_sum = (-total if weight is None else total) + 0.0
        count = (active.astype(compute) if weight is None
                 else np.where(active, weight[safe].astype(compute), compute.type(0)))
        total_weight = np.add.reduce(count, None, compute)
        expected_mean = compute.type(expected_sum) / compute.type(total_weight)
    got_sum = al.nll_loss(x, target, weight, reduction="sum", validate=False)
    got_mean = al.nll_loss(x, target, weight, validate=False)
    out = np.dtype(dtype)
    assert np.asarray(got_sum).tobytes() == np.asarray(expected_sum).astype(out).tobytes()
    assert np.asarray(got_mean).tobytes() == np.asarray(expected_mean).astype(out).tobytes()


@pytest.mark.parametrize("target_dtype", [">i8", "<i4", "int8"])
def test_nll_targets_of_any_byte_order_and_width(target_dtype: str) -> None:
    """The bounds of many targets come from one pass over them read as unsigned integers
    (a negative one is then the largest): the same for byte-swapped and narrow ones."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((70000, 5)).astype(np.float32)
    plain = rng.integers(0, 5, 70000)
    ignored = plain.copy()
    ignored[::9] = -100
    for target in (plain, ignored):
        target = target.astype(target_dtype)
        assert _nll_numpy.route(_nll_call(x, target, None, -100)) == (
            "blocks" if target.min() >= 0 else "masked")
        _assert_nll_as_generic(x, target, None)


@pytest.mark.parametrize("target_dtype", ["int64", ">i8", "int32", "uint8", "uint64"])
def test_every_target_a_class_agrees_with_the_masks(target_dtype: str) -> None:
    """The one-argmax decision (negative targets read as the largest unsigned values)
    against the rule written out, for targets and ignore_index values around every bound."""
    from arrayloss._agnostic._targets import every_target_a_class

    n_classes = 7
    limits = np.iinfo(target_dtype)
    rng = np.random.default_rng(5)
    specials = [v for v in (-100, -1, 0, 3, 6, 7, 255, 2**63 + 5) if limits.min <= v <= limits.max]
    for low, high in ((0, 7), (2, 7), (0, 3), (1, 2)):
        for extra in [None, *specials]:
            target = rng.integers(low, high, 50).astype(target_dtype)
            if extra is not None:
                target[17] = extra
            as_int = target.astype(object)
            for ignore_index in (-100, 0, 1, 2, 6, 7, 300):
                # Every target a class, and ignore_index outside their range (inside it,
                # the masks decide whether one equals it).
                expected = all(0 <= v < n_classes for v in as_int) and not (
                    min(as_int) <= ignore_index <= max(as_int))
                assert every_target_a_class(target, n_classes, ignore_index) == expected, (
                    low, high, extra, ignore_index)


def _nll_call(x: Any, target: Any, weight: Any, ignore_index: int, validate: bool = True
              ) -> Any:
    from arrayloss._class_calls import nll_call

    return nll_call(x, target, weight, ignore_index=ignore_index, reduction="mean",
                    validate=validate)


@pytest.mark.parametrize("shape", [(50, 4), (70000, 4), (3, 4, 30, 20)], ids=str)
def test_nll_bad_targets_on_the_masked_path(shape: tuple[int, ...]) -> None:
    """Validated: the generic path's error, naming the first bad target.  Not validated:
    inactive, as ignored ones (no loss, no gradient), as in the generic code."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    target = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    flat = target.reshape(-1)
    flat[::5], flat[7], flat[-2] = -100, 9, -3
    with pytest.raises(IndexError, match=r"target contains 9, which is outside"):
        al.nll_loss(x, target)
    with pytest.raises(IndexError, match=r"target contains 9, which is outside"):
        al.nll_loss_and_grad(x, target)
    for weight in (None, rng.uniform(0.5, 2.0, shape[1])):
        _assert_nll_as_generic(x, target, weight, validate=False)


def test_nll_forward_with_ignored_targets_reuses_its_buffers() -> None:
    import tracemalloc

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 21, 64, 64)).astype(np.float32)
    target = rng.integers(0, 21, (8, 64, 64))
    target[:, :8] = -100
    weight = rng.uniform(0.5, 2.0, 21).astype(np.float32)
    al.nll_loss(x, target, weight)  # warm the scratch
    tracemalloc.start()
    al.nll_loss(x, target, weight)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 1024  # the generic path's masks: several MiB


# ------------------------------------------------- the validated calls of plain NumPy arguments


def _fields(call: Any) -> dict[str, Any]:
    return {name: getattr(call, name) for name in type(call).__slots__}


def _same_call(shortcut: Any, ruled: Any) -> None:
    """Two validated calls with the same fields, the arrays the same objects."""
    assert type(shortcut) is type(ruled)
    for name, value in _fields(ruled).items():
        other = _fields(shortcut)[name]
        if isinstance(value, np.ndarray):
            assert other is value, name
        else:
            assert type(other) is type(value) and other == value, name


PLAIN_GAUSSIAN = [  # (shape, var: "array" or a number, dtype, options)
    ((100,), "array", "float32", {}),
    ((4, 5), "array", "float64", {"full": True, "eps": 0.5, "reduction": "sum"}),
    ((3, 2, 2), 0.25, "float16", {"reduction": "none", "validate": False}),
    ((), "array", "float64", {"log_var": True, "beta": 0.5}),
    ((6,), -1.5, "float32", {"log_var": True}),  # a negative log-variance is a value
    ((0, 3), "array", "float32", {}),
]


@pytest.mark.parametrize(("shape", "var", "dtype", "options"), PLAIN_GAUSSIAN, ids=str)
def test_plain_gaussian_arguments_give_the_rules_call(shape: tuple[int, ...], var: Any,
                                                      dtype: str, options: dict[str, Any]
                                                      ) -> None:
    from arrayloss import _calls

    rng = np.random.default_rng(0)
    x, t = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    v = rng.uniform(0.5, 2.0, shape).astype(dtype) if var == "array" else var
    arguments = {"full": False, "eps": 1e-6, "reduction": "mean", "validate": True,
                 "log_var": False, "beta": 0.0, **options}
    shortcut = _calls._plain_numpy_call(x, t, v, **arguments)
    assert shortcut is not None
    with _switched_off(_calls, "_plain_numpy_call", None):
        _same_call(shortcut, _calls.gaussian_nll_call(x, t, v, **arguments))


def _not_plain_gaussian() -> Iterator[tuple[str, Any, Any, Any]]:
    x = np.ones((4, 3), dtype=np.float32)
    yield "subclass", x.view(np.matrix), x, 1.0
    yield "masked", np.ma.asarray(x), x, 1.0
    yield "two dtypes", x, x.astype(np.float64), 1.0
    yield "byte order", x, x.astype(">f4"), 1.0
    yield "broadcast target", x, x[:1], 1.0
    yield "var per row", x, x, x[:, 0]
    yield "var of another dtype", x, x, x.astype(np.float64)
    yield "numpy scalar var", x, x, np.float32(1.0)
    yield "negative var", x, x, -1.0
    yield "integer input", x.astype(np.int64), x, 1.0
    yield "torch-like", [[1.0]], x, 1.0


@pytest.mark.parametrize("case", list(_not_plain_gaussian()), ids=lambda case: case[0])
def test_other_gaussian_arguments_go_through_the_rules(case: tuple[str, Any, Any, Any]
                                                       ) -> None:
    from arrayloss import _calls

    _, x, t, v = case
    assert _calls._plain_numpy_call(x, t, v, False, 1e-6, "mean", True, False, 0.0) is None


PLAIN_CLASSES = [  # (input shape, dtype, target dtype, weighted)
    ((32, 10), "float32", "int64", False),
    ((5, 3, 4, 2), "float64", "uint8", True),
    ((1, 1), "float16", "int32", True),
    ((0, 4), "float32", "int64", False),
]


@pytest.mark.parametrize("loss", ["nll", "cross_entropy"])
@pytest.mark.parametrize(("shape", "dtype", "target_dtype", "weighted"), PLAIN_CLASSES, ids=str)
def test_plain_class_arguments_give_the_rules_call(loss: str, shape: tuple[int, ...],
                                                   dtype: str, target_dtype: str,
                                                   weighted: bool) -> None:
    from arrayloss import _class_calls

    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    target = rng.integers(0, shape[1], (shape[0], *shape[2:])).astype(target_dtype)
    weight = rng.uniform(0.5, 2.0, shape[1]).astype(dtype) if weighted else None
    options: dict[str, Any] = {"ignore_index": 2, "reduction": "sum", "validate": False}
    if loss == "cross_entropy":
        options["label_smoothing"] = 0.1
    make = getattr(_class_calls, f"{loss}_call")
    assert _class_calls._plain_numpy_layout(x, target, weight) is not None
    shortcut = make(x, target, weight, **options)
    with _switched_off(_class_calls, "_plain_numpy_layout", None):
        _same_call(shortcut, make(x, target, weight, **options))


def test_other_class_arguments_go_through_the_rules() -> None:
    from arrayloss import _class_calls

    x, target = np.zeros((4, 3), dtype=np.float32), np.zeros(4, dtype=np.int64)
    for args in ((x[0], target[:1], None),  # unbatched (C,) input
                 (x, target.astype(np.float32), None),  # class probabilities
                 (x, target[:3], None),
                 (x, target.astype(bool), None),
                 (x, target, np.ones(3)),  # a float64 weight for float32 input
                 (x, target, np.ones(4, dtype=np.float32)),
                 (x.view(np.matrix), target, None)):
        assert _class_calls._plain_numpy_layout(*args) is None


def test_quiet_floating_point_restores_the_callers_state() -> None:
    from arrayloss._agnostic._helpers import quiet_floating_point

    with np.errstate(all="raise", under="warn"):
        before = np.geterr()
        with pytest.raises(KeyError), quiet_floating_point():
            assert set(np.geterr().values()) == {"ignore"}
            np.log(np.zeros(1))  # no FloatingPointError inside
            raise KeyError
        assert np.geterr() == before


def test_per_thread_buffers_and_constants() -> None:
    from arrayloss._agnostic._blocked import filled, scratch

    small = scratch((2, 3), np.float32, slot=7)
    assert small.shape == (2, 3) and small.dtype == np.float32
    assert scratch((2, 3), np.float32, slot=7) is small  # the same view, no new one
    other = scratch((2, 3), np.float32, slot=8)
    assert not np.shares_memory(small, other)  # slots never alias
    grown = scratch((50, 50), np.float32, slot=7)  # outgrows the buffer
    assert grown.shape == (50, 50) and not np.shares_memory(grown, other)
    again = scratch((2, 3), np.float32, slot=7)
    assert np.shares_memory(again, grown)  # the grown buffer serves the small shape now

    eps = filled((3, 4), np.dtype(np.float32), 1e-6)
    assert eps.shape == (3, 4) and not eps.flags.writeable
    np.testing.assert_array_equal(eps, np.full((3, 4), 1e-6, dtype=np.float32))
    positive, negative = (filled((5,), np.dtype(np.float64), zero) for zero in (0.0, -0.0))
    assert not np.signbit(positive).any() and np.signbit(negative).all()


def test_per_thread_buffers_stay_bounded_when_eps_sweeps() -> None:
    from arrayloss._agnostic import _blocked

    x, t, var = np.zeros(10), np.ones(10), np.full(10, 0.5)
    for k in range(200):  # a new constant (eps) per call
        eps = 1e-6 * (k + 1)
        loss = al.gaussian_nll_loss(x, t, var, eps=eps)
        np.testing.assert_allclose(float(loss), 0.5 * (np.log(0.5) + 1 / 0.5))
    assert len(_blocked._local.buffers) <= _blocked._MOST_BUFFERS
    assert len(_blocked._local.views) <= _blocked._MOST_VIEWS


def test_clamp_against_a_constant_array_matches_the_generic_code_at_signed_zero() -> None:
    # The NumPy path clamps with an array of eps; -0.0 and 0.0 must stay apart (d**2 / v).
    x, t = np.array([1.0, 2.0, 0.0]), np.array([0.0, 0.0, 0.0])
    var = np.array([0.0, -0.0, 0.5])
    for eps in (0.0, -0.0):
        fast = al.gaussian_nll_loss(x, t, var, eps=eps, reduction="none")
        with _generic():
            generic = al.gaussian_nll_loss(x, t, var, eps=eps, reduction="none")
        np.testing.assert_array_equal(fast, generic)
