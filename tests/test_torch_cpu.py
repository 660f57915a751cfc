"""PyTorch CPU tensors on NumPy's fast paths (``arrayloss._torch_cpu``).

Every entry point on CPU tensors must give exactly NumPy's result on the same memory (bit for
bit: the same code ran), hand NumPy views of the tensors (no copy in) and come back as tensors
over the arrays NumPy returned (no copy out); autograd, float16, bfloat16 (which NumPy lacks),
strided tensors and ``out=`` included.  PyTorch's own functions are the independent check of
the values.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator
from typing import Any

import _elementwise_cases as ec
import numpy as np
import pytest
from array_api_compat import array_namespace

import arrayloss as al
from arrayloss import _dispatch, _registry
from arrayloss._validation import _numpy_namespace

torch = pytest.importorskip("torch")
F = torch.nn.functional


@dataclasses.dataclass
class Spy:
    """Wraps the generic backends (NumPy's): records each call on NumPy arrays, its
    arguments and its result."""

    calls: list[tuple[str, Any, tuple[Any, ...], Any]] = dataclasses.field(default_factory=list)

    def backend(self, loss: str, module: Any) -> Any:
        spy = self

        class Recording:
            def __getattr__(self, method: str) -> Any:
                if not hasattr(module, method):
                    raise AttributeError(method)

                def run(call: Any, *args: Any) -> Any:
                    result = getattr(module, method)(call, *args)
                    if call.xp is _numpy_namespace():  # the generic code on tensors: not NumPy
                        spy.calls.append((method, call, args, result))
                    return result
                return run

        return Recording()


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    """Wrap the NumPy backend of every loss, where the bridge looks it up (the registry)."""
    recorder = Spy()
    for loss, entry in list(_registry._BACKENDS.items()):
        wrapped = recorder.backend(loss, entry.generic())
        monkeypatch.setitem(_registry._BACKENDS, loss,
                            dataclasses.replace(entry, generic=lambda wrapped=wrapped: wrapped))
    yield recorder


def _arrays(dtype: str = "float32", seed: int = 0, shape: tuple[int, int] = (40, 7)
            ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=shape).astype(dtype),
            "t": rng.normal(size=shape).astype(dtype),
            "v": rng.uniform(0.5, 2, (shape[0], 1)).astype(dtype),
            "labels": rng.integers(0, shape[1], shape[0]),
            "weight": rng.uniform(0.5, 2, shape[1]).astype(dtype),
            "upstream": rng.normal(size=shape[0]).astype(dtype)}


def _entry_points(a: dict[str, Any], reduction: str) -> list[tuple[Any, tuple[Any, ...],
                                                                   dict[str, Any]]]:
    """(function, args, kwargs) of every public entry point, for ``reduction``."""
    upstream = a["upstream"] if reduction == "none" else 0.75
    cases = [
        (al.gaussian_nll_loss, (a["x"], a["t"], a["v"]), {"reduction": reduction}),
        (al.gaussian_nll_loss, (a["x"], a["t"], 0.5), {"reduction": reduction, "full": True}),
        (al.nll_loss, (a["x"], a["labels"], a["weight"]), {"reduction": reduction}),
        (al.cross_entropy, (a["x"], a["labels"]),
         {"reduction": reduction, "label_smoothing": 0.1}),
        (al.nll_loss_backward, (upstream, a["x"], a["labels"]), {"reduction": reduction}),
        (al.cross_entropy_backward, (upstream, a["x"], a["labels"], a["weight"]),
         {"reduction": reduction}),
    ]
    if reduction == "none":
        gaussian_upstream = np.broadcast_to(a["upstream"][:, None], a["x"].shape).copy()
        cases.append((al.gaussian_nll_loss_backward, (gaussian_upstream, a["x"], a["t"], a["v"]),
                      {"reduction": reduction}))
    else:
        cases += [
            (al.gaussian_nll_loss_backward, (upstream, a["x"], a["t"], a["v"]),
             {"reduction": reduction, "beta": 0.5}),
            (al.gaussian_nll_loss_and_grad, (a["x"], a["t"], a["v"]),
             {"reduction": reduction, "log_var": True}),
            (al.nll_loss_and_grad, (a["x"], a["labels"]), {"reduction": reduction}),
            (al.cross_entropy_and_grad, (a["x"], a["labels"], a["weight"]),
             {"reduction": reduction}),
        ]
    return cases


def _as_torch(value: Any) -> Any:
    return torch.from_numpy(value.copy()) if isinstance(value, np.ndarray) else value


def _flat(value: Any) -> list[Any]:
    if isinstance(value, tuple):
        return [item for part in value for item in _flat(part)]
    return [value]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_entry_point_is_numpys_result_on_shared_memory(spy: Spy, dtype: str,
                                                             reduction: str) -> None:
    for function, args, kwargs in _entry_points(_arrays(dtype), reduction):
        want = function(*args, **kwargs)
        tensors = tuple(_as_torch(arg) for arg in args)
        before = len(spy.calls)
        got = function(*tensors, **kwargs)
        assert len(spy.calls) == before + 1, f"{function.__name__} missed NumPy's backend"
        _, call, _, returned = spy.calls[-1]
        # What makes NumPy's fast paths run: exact ndarrays viewing the tensors, NumPy's xp.
        assert call.xp is _numpy_namespace()
        assert type(call.input) is np.ndarray
        input_tensor = tensors[1] if function.__name__.endswith("_backward") else tensors[0]
        assert np.shares_memory(call.input, input_tensor.numpy())
        for g, w, r in zip(_flat(got), _flat(want), _flat(returned), strict=True):
            assert (g is None) == (w is None) == (r is None)
            if g is None:
                continue
            assert isinstance(g, torch.Tensor), function.__name__
            assert g.dtype == getattr(torch, dtype) and g.shape == w.shape
            np.testing.assert_array_equal(g.numpy(), w, strict=True,
                                          err_msg=function.__name__)  # bit for bit
            assert g.data_ptr() == r.ctypes.data  # the very memory NumPy returned


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_values_match_pytorch(reduction: str) -> None:
    a = {k: torch.from_numpy(v) for k, v in _arrays("float64", seed=1).items()}
    pairs = [
        (al.cross_entropy(a["x"], a["labels"], a["weight"], reduction=reduction,
                          label_smoothing=0.2),
         F.cross_entropy(a["x"], a["labels"], a["weight"], reduction=reduction,
                         label_smoothing=0.2)),
        (al.nll_loss(a["x"], a["labels"], a["weight"], reduction=reduction),
         F.nll_loss(a["x"], a["labels"], a["weight"], reduction=reduction)),
        (al.gaussian_nll_loss(a["x"], a["t"], a["v"], reduction=reduction),
         F.gaussian_nll_loss(a["x"], a["t"], a["v"], reduction=reduction)),
    ]
    for got, want in pairs:
        assert got.shape == want.shape  # 0-d for the reductions, as PyTorch's
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_autograd_runs_numpys_forward_and_backward(spy: Spy) -> None:
    a = _arrays("float64", seed=2)
    x = torch.from_numpy(a["x"].copy()).requires_grad_()
    v = torch.from_numpy(a["v"].copy()).requires_grad_()
    t = torch.from_numpy(a["t"])
    loss = al.gaussian_nll_loss(x, t, v)
    assert loss.requires_grad and loss.ndim == 0
    loss.backward()
    reference_x = torch.from_numpy(a["x"].copy()).requires_grad_()
    reference_v = torch.from_numpy(a["v"].copy()).requires_grad_()
    F.gaussian_nll_loss(reference_x, t, reference_v).backward()
    torch.testing.assert_close(x.grad, reference_x.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(v.grad, reference_v.grad, rtol=1e-12, atol=1e-14)
    logits = torch.from_numpy(a["x"].copy()).requires_grad_()
    labels = torch.from_numpy(a["labels"])
    al.cross_entropy(logits, labels, label_smoothing=0.1).backward()
    want = al.cross_entropy_backward(1.0, a["x"], a["labels"], label_smoothing=0.1)
    np.testing.assert_array_equal(logits.grad.numpy(), want)
    methods = [method for method, *_ in spy.calls]
    # Each recorded forward computes its loss and gradients in one call, which the backward
    # (upstream gradient 1) hands out; then the NumPy reference's backward.
    assert methods == ["loss_and_grad", "loss_and_grad", "backward"]


@pytest.mark.parametrize("dtype", ["float64", "float16"])
@pytest.mark.parametrize("loss", ["gaussian_nll", "cross_entropy", "l1_loss"])
def test_gradients_of_the_forward_are_handed_out_once(loss: str, dtype: str, spy: Spy) -> None:
    """The recorded forward's gradients serve the backward: as they are for an upstream
    gradient of 1, scaled in place for another (bit for bit the backward's for a power of
    two, within a rounding otherwise), the backward itself for 16-bit gradients scaled and
    for a second backward through a retained graph (after an optimizer changed the first
    one's .grad in place)."""
    a = _arrays(dtype, seed=4)
    x = torch.from_numpy(a["x"].copy()).requires_grad_()

    def value() -> Any:
        if loss == "gaussian_nll":
            return al.gaussian_nll_loss(x, torch.from_numpy(a["t"]), 1.5)
        if loss == "cross_entropy":
            return al.cross_entropy(x, torch.from_numpy(a["labels"]))
        return al.l1_loss(x, torch.from_numpy(a["t"]))

    def reference(upstream: float) -> np.ndarray:
        if loss == "gaussian_nll":
            return al.gaussian_nll_loss_backward(upstream, a["x"], a["t"], 1.5)[0]
        if loss == "cross_entropy":
            return al.cross_entropy_backward(upstream, a["x"], a["labels"])
        return al.l1_loss_backward(upstream, a["x"], a["t"])[0]

    # (The upstream gradient that autograd hands the node: in the loss's dtype.)
    once, quarter = reference(1.0), reference(0.25)
    other = reference(float(np.dtype(dtype).type(0.3)))
    spy.calls.clear()
    retained = value()
    retained.backward(retain_graph=True)
    np.testing.assert_array_equal(x.grad.numpy(), once)
    x.grad.zero_()  # as optimizer.zero_grad(set_to_none=False) does
    retained.backward()
    np.testing.assert_array_equal(x.grad.numpy(), once)
    expected = ["loss_and_grad", "backward"]  # the retained graph's second pass: a backward
    for upstream, want in ((0.25, quarter), (0.3, other)):
        x.grad = None
        (value() * upstream).backward()
        expected += ["loss_and_grad"] + (["backward"] if dtype == "float16" else [])
        if upstream == 0.25 or dtype == "float16":
            np.testing.assert_array_equal(x.grad.numpy(), want)
        else:
            np.testing.assert_allclose(x.grad.numpy(), want, rtol=4e-16, atol=0)
    assert [method for method, *_ in spy.calls] == expected


# (logits dtype, targets, class weights, reduction, upstream gradient): where scaling the
# forward's gradients would differ from PyTorch's backward: an inf or NaN upstream (0 * inf
# at ignored rows), a scale that overflows, a gradient for 1 that overflowed where PyTorch's
# G / total_weight does not (weights of 1e-39).
_UNSCALABLE_UPSTREAMS = [
    ("float64", [0, -100], None, "mean", math.inf),
    ("float64", [0, -100], None, "mean", math.nan),
    ("float64", [0, 2], [1.0, 2.0, 1.0], "sum", -math.inf),
    ("float32", [0, 2], [1e-39, 1.0, 1e-39], "mean", 1e-3),
    ("float32", [0, 2], [10.0, 1.0, 1.0], "sum", 1e38),
]


@pytest.mark.parametrize(("dtype", "targets", "weight", "reduction", "upstream"),
                         _UNSCALABLE_UPSTREAMS)
def test_unscalable_upstream_gradients_run_the_backward(
        dtype: str, targets: list[int], weight: list[float] | None, reduction: str,
        upstream: float) -> None:
    """PyTorch's gradients, inf and NaN where PyTorch has them, under np.seterr(all='raise')
    too (the scaling overflows on purpose)."""
    x = torch.tensor([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]], dtype=getattr(torch, dtype))
    t = torch.tensor(targets)
    w = None if weight is None else torch.tensor(weight, dtype=x.dtype)
    g = torch.tensor(upstream, dtype=x.dtype)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    with np.errstate(all="raise"):
        al.cross_entropy(ours, t, w, reduction=reduction).backward(g)
    F.cross_entropy(theirs, t, w, reduction=reduction).backward(g)
    torch.testing.assert_close(ours.grad, theirs.grad, equal_nan=True, rtol=1e-5, atol=0)



def test_strided_tensors_are_viewed_not_copied(spy: Spy) -> None:
    rng = np.random.default_rng(3)
    base = torch.from_numpy(rng.normal(size=(9, 40)).astype(np.float32))
    logits = base.t()[::2]  # (20, 9), neither C- nor F-contiguous
    labels = torch.from_numpy(rng.integers(0, 9, 40)[::2].copy())
    target = torch.from_numpy(rng.normal(size=(40, 18)).astype(np.float32))[::2, ::2]
    for function, args in [(al.cross_entropy, (logits, labels)),
                           (al.nll_loss, (logits, labels)),
                           (al.gaussian_nll_loss, (logits, target, 2.0))]:
        got = function(*args, reduction="none")
        _, call, _, _ = spy.calls[-1]
        assert np.shares_memory(call.input, base.numpy())
        assert call.input.strides == tuple(s * logits.element_size() for s in logits.stride())
        want = function(*(arg.numpy() for arg in args if isinstance(arg, torch.Tensor)),
                        *(arg for arg in args if not isinstance(arg, torch.Tensor)),
                        reduction="none")
        np.testing.assert_array_equal(got.numpy(), want, strict=True)


def test_out_comes_back_as_the_callers_tensor(spy: Spy) -> None:
    a = _arrays("float32", seed=4)
    labels = torch.from_numpy(a["labels"])
    want_loss, want_grad = al.cross_entropy_and_grad(a["x"], a["labels"])
    logits = torch.from_numpy(a["x"].copy())
    loss, grad = al.cross_entropy_and_grad(logits, labels, out=logits)  # the logits consumed
    assert grad is logits and loss.ndim == 0
    np.testing.assert_array_equal(logits.numpy(), want_grad)
    np.testing.assert_array_equal(loss.numpy(), want_loss)
    buffer = torch.empty(a["x"].shape)
    _, grad = al.cross_entropy_and_grad(torch.from_numpy(a["x"]), labels, out=buffer)
    assert grad is buffer
    np.testing.assert_array_equal(buffer.numpy(), want_grad)
    assert len(spy.calls) == 3  # the NumPy reference and the two tensor calls


def test_bfloat16_travels_as_its_bits(spy: Spy) -> None:
    # NumPy has no bfloat16: the tensors go as int16 views, seen as ml_dtypes' bfloat16.
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = _arrays("float32", seed=5)
    numpy_arrays = {k: v.astype(ml_dtypes.bfloat16) if v.dtype.kind == "f" else v
                    for k, v in values.items()}
    tensors = {k: torch.from_numpy(v).bfloat16() if v.dtype.kind == "f" else torch.from_numpy(v)
               for k, v in values.items()}
    for function, names in [(al.cross_entropy, ("x", "labels")),
                            (al.gaussian_nll_loss, ("x", "t", "v")),
                            (al.nll_loss, ("x", "labels"))]:
        want = function(*(numpy_arrays[name] for name in names))
        got = function(*(tensors[name] for name in names))
        _, call, _, _ = spy.calls[-1]
        assert np.shares_memory(call.input.view(np.int16), tensors["x"].view(torch.int16).numpy())
        assert got.dtype == torch.bfloat16 and got.ndim == 0
        np.testing.assert_array_equal(got.view(torch.int16).numpy(), want.view(np.int16))
    reference = F.cross_entropy(tensors["x"].double(), tensors["labels"])
    torch.testing.assert_close(al.cross_entropy(tensors["x"], tensors["labels"]).double(),
                               reference, rtol=1e-2, atol=1e-2)


def test_fused_kernels_off_keeps_torch_on_the_generic_code(spy: Spy) -> None:
    a = {k: torch.from_numpy(v) for k, v in _arrays("float64", seed=6).items()}
    with al.fused_kernels(False):
        got = al.cross_entropy(a["x"], a["labels"])
    assert spy.calls == []
    torch.testing.assert_close(got, F.cross_entropy(a["x"], a["labels"]))


@pytest.mark.parametrize("variant", [pytest.param(v, id=v.id) for v in ec.VARIANTS])
def test_elementwise_losses_are_numpys_result(spy: Spy, variant: ec.Variant) -> None:
    # The losses of the registry beyond the first three: their calls hold arrays in a dict.
    values = ec.rounded(ec.make_arrays(variant, (6, 5), (6, 5)), "float32", variant)
    keywords = ec.arrayloss_keywords(variant, values)
    tensors = {name: torch.from_numpy(array) for name, array in values.items()}
    torch_keywords = ec.arrayloss_keywords(variant, tensors)
    for suffix, reduction in [("", "none"), ("", "mean"), ("_and_grad", "sum")]:
        want = variant.function(suffix)(values["input"], values["target"], reduction=reduction,
                                        **keywords)
        got = variant.function(suffix)(tensors["input"], tensors["target"],
                                       reduction=reduction, **torch_keywords)
        _, call, _, returned = spy.calls[-1]
        assert call.xp is _numpy_namespace() and type(call.input) is np.ndarray
        assert np.shares_memory(call.input, values["input"])
        for g, w, r in zip(_flat(got), _flat(want), _flat(returned), strict=True):
            assert (g is None) == (w is None)
            if g is not None:
                np.testing.assert_array_equal(g.numpy(), w, strict=True)
                assert g.data_ptr() == r.ctypes.data


def test_any_registered_loss_crosses_the_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    # The bridge converts a call's fields whatever they are: a loss it never heard of works.
    @dataclasses.dataclass
    class ToyCall:
        xp: Any
        input: Any
        scale: Any
        dtype: Any
        factor: float

    seen: list[ToyCall] = []

    class ToyBackend:
        @staticmethod
        def forward(call: ToyCall) -> Any:
            seen.append(call)
            return call.xp.asarray(call.xp.sum(call.input * call.scale, dtype=call.dtype)
                                   * call.factor)

    monkeypatch.setitem(_registry._BACKENDS, "toy", _registry.Backends(
        generic=lambda: ToyBackend, cupy=lambda: None, dask=lambda: None))
    _dispatch._torch_bridge.cache_clear()
    try:
        values = np.arange(6.0).reshape(2, 3)
        tensor, scale = torch.from_numpy(values), torch.tensor([1.0, 2.0, 3.0])
        result = _dispatch.backend(array_namespace(tensor), "toy").forward(
            ToyCall(array_namespace(tensor), tensor, scale, torch.float64, 0.5))
    finally:
        _dispatch._torch_bridge.cache_clear()
    (call,) = seen
    assert type(call.input) is np.ndarray and np.shares_memory(call.input, values)
    assert type(call.scale) is np.ndarray and call.dtype == np.float64
    assert call.xp is _numpy_namespace() and call.factor == 0.5
    assert isinstance(result, torch.Tensor) and result.ndim == 0
    assert result.item() == 0.5 * float((values * [1, 2, 3]).sum())


# ------------------------------------------------------------------ before validation


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The library of every call validation saw (``_validation._namespace``'s answer, or
    NumPy's plain-array shortcut, which never calls it)."""
    from arrayloss import _validation

    seen: list[str] = []
    original = _validation._namespace

    def recording(arrays: Any, *args: Any, **kwargs: Any) -> Any:
        xp = original(arrays, *args, **kwargs)
        seen.append(xp.__name__)
        return xp

    monkeypatch.setattr(_validation, "_namespace", recording)
    for module in ("_class_calls", "_calls", "_linear_calls"):
        owner = __import__(f"arrayloss.{module}", fromlist=["_namespace"])
        if hasattr(owner, "_namespace"):
            monkeypatch.setattr(owner, "_namespace", recording)
    from arrayloss._elementwise import call as elementwise_call

    if hasattr(elementwise_call, "_namespace"):
        monkeypatch.setattr(elementwise_call, "_namespace", recording)
    return seen


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_calls_without_autograd_are_validated_as_numpy_calls(
        spy: Spy, validations: list[str], reduction: str) -> None:
    """No tensor requires grad (or grad mode is off): the arguments are viewed as NumPy
    arrays before any check, so torch's namespace validates nothing (the results are
    NumPy's, on shared memory: test_every_entry_point_is_numpys_result_on_shared_memory)."""
    for function, args, kwargs in _entry_points(_arrays(), reduction):
        tensors = tuple(_as_torch(arg) for arg in args)
        spy.calls.clear()
        validations.clear()
        result = function(*tensors, **kwargs)
        assert not any("torch" in name for name in validations), (function.__name__,
                                                                   validations)
        assert len(spy.calls) == 1, function.__name__
        assert all(isinstance(r, torch.Tensor) for r in _flat(result) if r is not None)


def test_nll_and_cross_entropy_match_pytorch_on_the_lane() -> None:
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(size=(10_000, 10)))
    labels = torch.from_numpy(rng.integers(0, 10, 10_000))
    log_probs = torch.log_softmax(logits, 1)
    for ours, theirs in ((al.nll_loss(log_probs, labels), F.nll_loss(log_probs, labels)),
                         (al.cross_entropy(logits, labels, label_smoothing=0.1),
                          F.cross_entropy(logits, labels, label_smoothing=0.1))):
        assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float64
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_backward_functions_take_the_lane_with_tensors_that_require_grad(
        validations: list[str]) -> None:
    """A backward or and-grad call records nothing, so a tensor that requires grad is
    viewed (detached) too; ``out`` comes back as the caller's own tensor."""
    rng = np.random.default_rng(4)
    logits = torch.from_numpy(rng.normal(size=(30, 5))).requires_grad_()
    labels = torch.from_numpy(rng.integers(0, 5, 30))
    out = torch.empty(30, 5, dtype=torch.float64)
    loss, grad = al.cross_entropy_and_grad(logits, labels, out=out)
    assert grad is out and loss.grad_fn is None
    assert not any("torch" in name for name in validations)
    expected = logits.detach().clone().requires_grad_()
    F.cross_entropy(expected, labels).backward()
    torch.testing.assert_close(out, expected.grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("loss", ["cross_entropy", "nll_loss", "gaussian_nll_loss", "mse_loss",
                                  "soft cross_entropy", "linear_cross_entropy"])
def test_batched_gradients_through_the_node(loss: str, reduction: str) -> None:
    """A batch of upstream gradients (``is_grads_batched=True``, ``jacobian(vectorize=True)``:
    autograd's vmap over the backward, whose batched tensors NumPy cannot view) runs the
    loss's generic backward on the tensors: PyTorch's Jacobians."""
    rng = np.random.default_rng(21)
    logits = torch.from_numpy(rng.normal(size=(6, 4))).requires_grad_()
    labels = torch.from_numpy(rng.integers(0, 4, 6))
    labels[2] = -100
    weight = torch.from_numpy(rng.uniform(0.5, 2, 4))
    other = torch.from_numpy(rng.normal(size=(6, 4)))
    var = torch.from_numpy(rng.uniform(0.5, 2, (6, 1))).requires_grad_()
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(6, 4))), 1).requires_grad_()
    head = torch.from_numpy(rng.normal(size=(5, 4))).requires_grad_()
    cases = {
        "cross_entropy": ((logits,), lambda f, a: f(a, labels, weight, reduction=reduction,
                                                     label_smoothing=0.1)),
        "nll_loss": ((logits,), lambda f, a: f(a, labels, weight, reduction=reduction)),
        "gaussian_nll_loss": ((logits, var), lambda f, a, v: f(a, other, v,
                                                               reduction=reduction)),
        "mse_loss": ((logits,), lambda f, a: f(a, other, reduction=reduction)),
        "soft cross_entropy": ((logits, probs), lambda f, a, q: f(a, q, reduction=reduction)),
        # Two chunks of tokens (of 4 and 2): the batch runs them as one.
        "linear_cross_entropy": ((logits, head), lambda f, a, w: f(
            a, w, labels, reduction=reduction,
            **({"chunk_size": 4} if f is al.linear_cross_entropy else {}))),
    }
    inputs, apply = cases[loss]
    name = loss.split()[-1]
    ours, theirs = getattr(al, name), getattr(F, name)
    got = torch.autograd.functional.jacobian(lambda *a: apply(ours, *a), inputs, vectorize=True)
    want = torch.autograd.functional.jacobian(lambda *a: apply(theirs, *a), inputs,
                                              vectorize=True)
    for mine, reference in zip(got, want, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-14)
    value = apply(ours, *inputs)
    upstream = torch.from_numpy(rng.normal(size=(3, *value.shape)))
    batched = torch.autograd.grad(value, inputs, upstream, is_grads_batched=True)
    reference_value = apply(theirs, *inputs)
    expected = torch.autograd.grad(reference_value, inputs, upstream, is_grads_batched=True)
    for mine, reference in zip(batched, expected, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-14)


def test_forward_with_autograd_records_one_node_over_numpys_views(
        spy: Spy, validations: list[str]) -> None:
    """A forward that autograd records runs as a NumPy call too (NumPy's checks, its fast
    paths): the loss's NumPy loss-and-gradient on the same views, whose gradient the
    backward hands out."""
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 4, dtype=torch.float64)
    loss = al.mse_loss(x, t)
    assert type(loss.grad_fn).__name__ == "NumpyViewsLossBackward"
    assert not any("torch" in name for name in validations)
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * (x - t).detach() / x.numel(), rtol=1e-12, atol=0)
    assert [method for method, *_ in spy.calls] == ["loss_and_grad"]
    assert all(np.shares_memory(call.input, x.detach().numpy()) for _, call, *_ in spy.calls)
    with torch.no_grad():
        assert al.mse_loss(x, t).grad_fn is None


def _recorded_cases() -> list[Any]:
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(12, 5))
    labels = rng.integers(0, 5, 12)
    labels[3] = -100
    weight = rng.uniform(0.5, 2, 5)
    mean, target = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    var = rng.uniform(0.5, 2, (12, 1))
    # (loss, its arrays, how many of them lead to autograd, options, PyTorch's loss)
    cases = [
        ("nll_loss", (logits, labels, weight), 1, {}, F.nll_loss),
        ("cross_entropy", (logits, labels, weight), 1, {"label_smoothing": 0.1},
         F.cross_entropy),
        ("gaussian_nll_loss", (mean, target, var), 3, {"full": True}, F.gaussian_nll_loss),
    ]
    for variant in ec.VARIANTS:
        values = ec.rounded(ec.make_arrays(variant, (6, 5), (6, 5)), "float64", variant)
        arrays = (values["input"], values["target"])
        keywords = ec.arrayloss_keywords(variant, values)

        def oracle(x: Any, t: Any, reduction: str, variant: ec.Variant = variant,
                   values: Any = values, **options: Any) -> Any:
            extra = {name: torch.from_numpy(values[name]) for name in variant.weights}
            return ec.torch_loss(variant, {"input": x, "target": t, **extra}, reduction)

        cases.append((variant.loss, arrays, 2, keywords, oracle))
    return [pytest.param(*case, id=f"{case[0]}-{k}") for k, case in enumerate(cases)]


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize(("name", "arrays", "leading", "keywords", "oracle"),
                         _recorded_cases())
def test_every_loss_records_on_the_lane_as_pytorch_differentiates(
        name: str, arrays: tuple[Any, ...], leading: int, keywords: dict[str, Any],
        oracle: Any, reduction: str) -> None:
    """The lane's autograd node gives PyTorch's gradient of ``input`` for every loss, and
    every gradient of the tensor path (the bridge over the generic code)."""
    function = getattr(al, name)
    keywords = {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
                for key, value in keywords.items()}

    def leaves() -> list[Any]:
        tensors = [torch.from_numpy(array.copy()) for array in arrays]
        for tensor in tensors[:leading]:
            if tensor.is_floating_point():
                tensor.requires_grad_()
        return tensors

    ours, tensor_path, theirs = leaves(), leaves(), leaves()
    loss = function(*ours, reduction=reduction, **keywords)
    assert type(loss.grad_fn).__name__ == "NumpyViewsLossBackward"
    upstream = torch.from_numpy(np.random.default_rng(5).normal(size=tuple(loss.shape)))
    loss.backward(upstream)
    with al.fused_kernels(False):  # the tensor path: validated on tensors, the generic code
        expected = function(*tensor_path, reduction=reduction, **keywords)
    assert type(expected.grad_fn).__name__ == "ArraylossLossBackward"
    expected.backward(upstream)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-14)
    for got, want in zip(ours, tensor_path, strict=True):
        assert (got.grad is None) == (want.grad is None), name
        if got.grad is not None:
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-12, atol=1e-14,
                                       equal_nan=True)  # full poisson_nll_loss at t = 0
    pytorchs = keywords if oracle in (F.nll_loss, F.cross_entropy, F.gaussian_nll_loss) else {}
    if leading == 2 and not theirs[1].is_floating_point():  # PyTorch's backward needs a
        theirs[1] = theirs[1].to(theirs[0].dtype)           # target of input's dtype
    oracle(*theirs, reduction=reduction, **pytorchs).backward(upstream)
    for got, want in zip(ours, theirs, strict=True):
        if want.grad is not None:
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-12,
                                       equal_nan=True)


def test_what_a_recorded_call_returns_beside_its_loss_comes_back_as_tensors() -> None:
    """``return_lse=True``: the loss records the lane's node, the log-sum-exp beside it is a
    tensor without one, and the gradients are the tensor path's."""
    rng = np.random.default_rng(8)
    h = torch.from_numpy(rng.normal(size=(16, 8))).requires_grad_()
    w = torch.from_numpy(rng.normal(size=(12, 8))).requires_grad_()
    tokens = torch.from_numpy(rng.integers(0, 12, 16))
    loss, lse = al.linear_cross_entropy(h, w, tokens, return_lse=True)
    assert type(loss.grad_fn).__name__ == "NumpyViewsLossBackward"
    assert isinstance(lse, torch.Tensor) and not lse.requires_grad and lse.shape == (16,)
    torch.testing.assert_close(lse, torch.logsumexp(h.detach() @ w.detach().T, dim=1),
                               rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(loss, (h, w))
    expected = torch.autograd.grad(F.cross_entropy(h @ w.T, tokens), (h, w))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_forward_mode_tangents_are_carried() -> None:
    """Inside a forward-AD level the tensors keep the generic code, whose torch operations
    carry the tangent (a NumPy view would see the primal alone): the directional derivative
    of the mean squared error, mean(2 (x - t) u)."""
    import torch.autograd.forward_ad as forward_ad

    rng = np.random.default_rng(9)
    x, t, direction = (rng.normal(size=(5, 3)) for _ in range(3))
    with forward_ad.dual_level():
        with warnings.catch_warnings():  # PyTorch's first make_dual scripts its decompositions
            warnings.simplefilter("ignore", DeprecationWarning)  # with torch.jit.script
            dual = forward_ad.make_dual(torch.from_numpy(x), torch.from_numpy(direction))
        tangent = forward_ad.unpack_dual(al.mse_loss(dual, torch.from_numpy(t))).tangent
    assert tangent is not None
    np.testing.assert_allclose(tangent.numpy(), np.mean(2 * (x - t) * direction), rtol=1e-12)


def test_the_lanes_node_refuses_what_the_bridge_refuses() -> None:
    """A second derivative, and an input changed in place before backward, raise as they do
    through the tensor path; a class weight that requires grad gets none."""
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    weight = torch.rand(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(al.nll_loss(x, labels), x, create_graph=True)
    loss = al.cross_entropy(x, labels)
    with torch.no_grad():
        x.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    al.nll_loss(x, labels, weight).backward()
    assert weight.grad is None and x.grad is not None


def test_errors_are_the_tensor_calls_own() -> None:
    """A call the NumPy view rejects raises as the tensor call does (torch's dtype names)."""
    x = torch.randn(4, 3)
    with pytest.raises(TypeError, match=r"got torch\.float32"):
        al.nll_loss(x, torch.zeros(4))
    with pytest.raises(TypeError, match="librar"):  # a tensor and a NumPy array
        al.nll_loss(x, np.zeros(4, dtype=np.int64))
    with pytest.raises(al.TargetOutOfRangeError):
        al.nll_loss(x, torch.tensor([0, 1, 7, 2]))


def test_torch_func_transforms_keep_their_tensors() -> None:
    x = torch.randn(5, 3, dtype=torch.float64)
    t = torch.randn(5, 3, dtype=torch.float64)
    grad = torch.func.grad(lambda z: al.huber_loss(z, t, delta=0.5))(x)
    z = x.clone().requires_grad_()
    F.huber_loss(z, t, delta=0.5).backward()
    torch.testing.assert_close(grad, z.grad)


def test_numpy_users_see_no_change() -> None:
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    assert type(al.mse_loss(x, x * 2)) is np.ndarray
