"""arrayloss's CUDA kernels, run on the CPU through the host harness (``tests/hostcuda``).

The real CuPy backend runs unchanged on CuPy-typed host arrays; every launch compiles CuPy's
exact generated source as host C++ and runs it with CuPy's grid, block and index width.  The
cases are those of the GPU run (``_kernel_cases.py``) plus every PyTorch parity case
(``_cases.py``), and what only the harness can show: the 64-bit index path at small sizes, a
second device, uninitialised inputs, and that every kernel factory ran.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("cupy", reason="CuPy is not installed (pip install '.[kernels]')")

import _kernel_cases as kc
import _kernel_cases_cross_entropy as kce
import _kernel_cases_elementwise as kee
import hostcuda
from _cases import all_cases
from test_parity import _stored_case, assert_matches, run_arrayloss

import arrayloss as al

pytestmark = pytest.mark.hostcuda

_REASON = hostcuda.unavailable()
CASES = all_cases()


@pytest.fixture(scope="module", autouse=True)
def _harness() -> Iterator[None]:
    if _REASON:
        pytest.skip(_REASON)
    with hostcuda.activated():
        yield


def _assert_no_host_sync(call: Callable[[], Any]) -> None:
    before = hostcuda.COUNTERS.host_reads
    call()
    assert hostcuda.COUNTERS.host_reads == before, "the call read a device value on the host"


DEVICE = kc.Device(asarray=hostcuda.asarray, asnumpy=hostcuda.asnumpy,
                   assert_no_host_sync=_assert_no_host_sync)


@pytest.mark.parametrize(("case", "arguments"), kc.gpu_and_host_cases())
def test_kernel_case(case: Callable[..., None], arguments: tuple[Any, ...]) -> None:
    case(DEVICE, *arguments)


# PyTorch's own warnings as the oracle runs (test_elementwise.py ignores them the same way);
# under pytest-xdist this test's worker may not have run that module's filter first.
@pytest.mark.filterwarnings("ignore:Using a target size:UserWarning",
                            "ignore:reduction. 'mean' divides:UserWarning")
@pytest.mark.parametrize("arguments", kee.elementwise_cases())
def test_elementwise_kernels(arguments: Any) -> None:
    kee.case_elementwise(DEVICE, *arguments)


def test_elementwise_range_checks() -> None:
    kee.case_elementwise_invalid(DEVICE)


# ------------------------------------------------------------------ the PyTorch parity cases

HOST_NAMESPACE = types.SimpleNamespace(
    asarray=lambda values, dtype=None: hostcuda.asarray(np.asarray(values), dtype=dtype),
    **{name: np.dtype(name) for name in ("float16", "float32", "float64", *kc.TARGET_DTYPES)},
)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_parity_case_on_the_kernels(case: Any) -> None:
    inputs, outputs = _stored_case(case)
    got = run_arrayloss(HOST_NAMESPACE, case, inputs)
    assert_matches(case, got, outputs)


# ------------------------------------------------------------------ what only the harness shows


@pytest.mark.parametrize(("function", "arguments"), [
    pytest.param(kc.case_gaussian, ("float32", "rows", "mean"), id="gaussian-rows"),
    pytest.param(kc.case_gaussian, ("float64", "columns", "none"), id="gaussian-columns"),
    pytest.param(kc.case_nll, ("float32", (8, 5, 17, 9), "mean"), id="nll-spatial"),
    pytest.param(kc.case_nll, ("float16", (500, 10), "sum"), id="nll-sum"),
    pytest.param(kc.case_strided_inputs, (), id="strided"),
    pytest.param(kc.case_size, (1025,), id="size-1025"),
    pytest.param(kce.case_cross_entropy, ("float32", (4, 6, 5, 3), "mean"),
                 id="cross-entropy-spatial"),
    pytest.param(kce.case_cross_entropy_long_rows, (5000,), id="cross-entropy-long-rows"),
])
def test_64_bit_index_path(function: Callable[..., None], arguments: tuple[Any, ...]) -> None:
    before = dict(hostcuda.COUNTERS.launches)
    with hostcuda.index_32_bits_limit(64):  # every array above 64 bytes indexes in 64 bits
        function(DEVICE, *arguments)
    assert hostcuda.COUNTERS.launches != before
    sources = list(hostcuda.COUNTERS.sources.values())
    assert any("CIndexer<1, 0>" in s or "CIndexer<2, 0>" in s for s in sources)


def test_every_kernel_factory_runs() -> None:
    import arrayloss._cupy as cupy_backends
    from arrayloss._cupy import _kernels

    hostcuda.COUNTERS.launches.clear()
    # A (1, D) variance takes the general kernels, a broadcast target too (scalar var).
    for reduction in ("none", "mean"):
        kc.case_gaussian(DEVICE, "float32", "columns", reduction)
    kc.case_gaussian_broadcast_target_0d_upstream(DEVICE)
    many_rows = hostcuda.asarray(np.ones((2, 3, 8), np.float32))
    for reduction in ("none", "mean"):
        al.gaussian_nll_loss(many_rows, many_rows[0], 0.5, reduction=reduction)
    al.gaussian_nll_loss_backward(1.0, many_rows, many_rows[0], 0.5)
    al.gaussian_nll_loss_and_grad(many_rows, many_rows[0], 0.5)
    # The contiguous kernels: flat and rows, vector and scalar loads.
    for var_kind in ("full", "rows", "scalar"):
        for aligned in (True, False):
            kc.case_gaussian_contiguous(DEVICE, "float32", "whole", var_kind, aligned)
    for reduction in kc.REDUCTIONS:
        kc.case_nll(DEVICE, "float32", (30, 100), reduction)
        kce.case_cross_entropy(DEVICE, "float32", (30, 10), reduction)
    kee.case_elementwise(DEVICE, "mse_loss", "float32", "none")
    kee.case_elementwise(DEVICE, "mse_loss", "float32", "mean")
    # Beyond FOLD_ABOVE partials: the fold runs before the second pass (the general kernels:
    # the contiguous ones launch at most FOLD_ABOVE blocks).
    many = hostcuda.asarray(np.linspace(-1, 1, 300_001).astype(np.float32))
    al.gaussian_nll_loss(many[None], many, 1.0)
    for module in pkgutil.iter_modules(cupy_backends.__path__):  # every factory registered
        importlib.import_module(f"{cupy_backends.__name__}.{module.name}")
    factories = {factory.__name__ for factory in _kernels.FACTORIES}
    names = {"gaussian_forward", "gaussian_forward_partials", "gaussian_backward",
             "gaussian_loss_and_grad", "gaussian_flat", "gaussian_rows", "nll_forward",
             "nll_forward_partials", "nll_backward",
             "finish_module", "finish_function", "fold_function", "ce_row_stats", "ce_rows",
             "ce_rows_partials", "ce_grad", "elementwise_kernel"}
    assert factories == names, "a new kernel factory needs a case here"
    launched = set(hostcuda.COUNTERS.launches)
    for kernel in ("arrayloss_gaussian_nll_forward", "arrayloss_gaussian_nll_forward_scalar_var",
                   "arrayloss_gaussian_nll_forward_partials",
                   "arrayloss_gaussian_nll_forward_partials_scalar_var",
                   "arrayloss_gaussian_nll_backward", "arrayloss_gaussian_nll_backward_scalar_var",
                   "arrayloss_gaussian_nll_loss_and_grad",
                   "arrayloss_gaussian_nll_loss_and_grad_scalar_var",
                   *(f"arrayloss_gaussian_nll_{family}_{operation}{var}{loads}"
                     for family, var in (("flat", ""), ("flat", "_scalar_var"), ("rows", ""))
                     for operation in ("forward", "partials", "backward", "loss_and_grad")
                     for loads in ("", "_scalar_loads")),
                   "arrayloss_nll_forward",
                   "arrayloss_nll_forward_partials", "arrayloss_nll_backward",
                   "arrayloss_fold<float>",
                   "arrayloss_cross_entropy_row_stats", "arrayloss_cross_entropy_rows",
                   "arrayloss_cross_entropy_rows_partials", "arrayloss_cross_entropy_grad",
                   "arrayloss_finish<float>", "arrayloss_mse_loss_none",
                   "arrayloss_mse_loss_partials", "arrayloss_mse_loss_backward",
                   "arrayloss_mse_loss_loss_and_grad"):
        assert kernel in launched, f"{kernel} never ran"


@pytest.mark.parametrize(("var_kind", "shape_kind", "aligned", "kernel"), [
    ("full", "whole", True, "flat_loss_and_grad"),
    ("full", "whole", False, "flat_loss_and_grad_scalar_loads"),
    ("full", "odd", True, "flat_loss_and_grad"),  # a partial last chunk: still vector loads
    ("scalar", "whole", True, "flat_loss_and_grad_scalar_var"),
    ("scalar", "odd", False, "flat_loss_and_grad_scalar_var_scalar_loads"),
    ("rows", "whole", True, "rows_loss_and_grad"),
    ("one fewer", "whole", False, "rows_loss_and_grad_scalar_loads"),
    ("rows", "odd", True, "rows_loss_and_grad_scalar_loads"),  # rows of partial chunks
])
def test_vector_loads_only_where_every_chunk_is_aligned(var_kind: str, shape_kind: str,
                                                        aligned: bool, kernel: str) -> None:
    x, t, v = kc._contiguous_arrays(DEVICE, "float32", shape_kind, var_kind, aligned)
    hostcuda.COUNTERS.launches.clear()
    al.gaussian_nll_loss_and_grad(x, t, v)
    # One pass and the second one: the partials need no fold.
    assert set(hostcuda.COUNTERS.launches) == {f"arrayloss_gaussian_nll_{kernel}",
                                               "arrayloss_finish<float>"}


def test_a_row_variance_gradient_is_reduced_in_the_backward(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # What a backward allocates, counted at the harness's allocator: the three gradients and
    # the flag, no scratch of the loss's shape for grad_var (peak memory is at most this).
    from hostcuda._arrays import HostArray

    rows, columns = 4096, 64
    rng = np.random.default_rng(12)
    x, t = (hostcuda.asarray(rng.normal(size=(rows, columns)).astype(np.float32)) for _ in "xt")
    v = hostcuda.asarray(rng.uniform(0.5, 2, (rows, 1)).astype(np.float32))
    allocated: list[int] = []
    allocate = HostArray.allocate.__func__  # type: ignore[attr-defined]

    def counting(cls: type, array: np.ndarray, written: bool) -> HostArray:
        allocated.append(array.nbytes)
        return allocate(cls, array, written)

    monkeypatch.setattr(HostArray, "allocate", classmethod(counting))
    grads = al.gaussian_nll_loss_backward(1.0, x, t, v, validate=False)
    monkeypatch.undo()
    assert sum(allocated) == 2 * x.nbytes + v.nbytes + 8, allocated
    want = kc.gaussian_reference(hostcuda.asnumpy(x).astype(np.float64),
                                 hostcuda.asnumpy(t).astype(np.float64),
                                 hostcuda.asnumpy(v).astype(np.float64), full=False, eps=1e-6,
                                 reduction="mean")
    for got, expected in zip(grads, want[1:], strict=True):
        kc.assert_close(got, expected, "float32", DEVICE, "grad")


def test_nll_reads_a_strided_input_without_copying_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import cupy

    copied: list[int] = []
    original = cupy.ascontiguousarray

    def recording(value: Any, dtype: Any = None) -> Any:
        copied.append(value.size)
        return original(value, dtype)

    monkeypatch.setattr(cupy, "ascontiguousarray", recording)
    rng = np.random.default_rng(10)
    logits = hostcuda.asarray(rng.normal(size=(7, 40)).astype(np.float32)).T  # (40, 7)
    labels = hostcuda.asarray(rng.integers(0, 7, 40))
    for reduction in kc.REDUCTIONS:
        loss = al.nll_loss(logits, labels, reduction=reduction)
        want = al.nll_loss(hostcuda.asnumpy(logits), hostcuda.asnumpy(labels),
                           reduction=reduction)
        np.testing.assert_allclose(hostcuda.asnumpy(loss), want, rtol=1e-6)
    assert logits.size not in copied, "the whole input was copied"


def test_arrays_on_a_second_device_stay_there() -> None:
    rng = np.random.default_rng(8)
    with hostcuda.HostDevice(1):
        x, t = (hostcuda.asarray(rng.normal(size=(40, 3)).astype(np.float32)) for _ in "xt")
        v = hostcuda.asarray(rng.uniform(0.5, 2, (40, 1)).astype(np.float32))
        logits = hostcuda.asarray(rng.normal(size=(40, 3)).astype(np.float32))
        labels = hostcuda.asarray(rng.integers(0, 3, 40))
    # The current device is 0: every allocation and launch must follow the inputs to device 1.
    loss = al.gaussian_nll_loss(x, t, v)
    _, grads = al.gaussian_nll_loss_and_grad(x, t, v)
    grad = al.nll_loss_backward(1.0, logits, labels, reduction="sum")
    nll = al.nll_loss(logits, labels)
    for result in (loss, *grads, grad, nll):
        assert result.device.id == 1


def test_no_kernel_reads_an_uninitialised_buffer() -> None:
    # The harness raises UninitialisedInputError when a kernel input was never written; the
    # cases above would fail with it.  Here, the NLL backward of each reduction explicitly.
    rng = np.random.default_rng(9)
    logits = hostcuda.asarray(rng.normal(size=(20, 4)).astype(np.float16))
    labels = hostcuda.asarray(rng.integers(0, 4, 20))
    for reduction in kc.REDUCTIONS:
        upstream: Any = 1.0 if reduction != "none" else hostcuda.asarray(
            np.ones(20, np.float16))
        al.nll_loss_backward(upstream, logits, labels, reduction=reduction)
    with pytest.raises(hostcuda.UninitialisedInputError):  # the check itself works
        from arrayloss._cupy import gaussian_nll

        flag = hostcuda.asarray(np.zeros(1, np.uint64))
        gaussian_nll.gaussian_forward(False)(hostcuda._arrays.empty(3, np.float32),
                                             logits[0, :3], logits[0, :3], 1e-6, 0, 0.0, 0.0,
                                             0, hostcuda._arrays.empty(3, np.float16), flag)


@pytest.mark.nvrtc
def test_every_launched_source_compiles_with_nvrtc() -> None:
    # Runs last in its process: by now every kernel source launched above went through NVRTC
    # for sm_80 and sm_90 (tests/hostcuda/_nvrtc.py) before it ran, so what CI compiles is what
    # runs.  Under pytest-xdist this process may have run none of them: then one case first.
    from hostcuda import _nvrtc

    reason = _nvrtc.unavailable()
    if reason:
        pytest.skip(reason)
    if not hostcuda.COUNTERS.sources:
        kc.case_gaussian(DEVICE, "float32", "rows", "mean")
    launched = {hashlib.sha256(source.encode()).hexdigest()[:32]
                for source in hostcuda.COUNTERS.sources.values()}
    assert launched, "no kernel was launched"
    assert launched <= _nvrtc.compiled


@pytest.mark.parametrize("reduction", kc.REDUCTIONS)
def test_cross_entropy_backward_from_the_saved_rows_is_the_gradient_pass_alone(
        reduction: str) -> None:
    # What the torch autograd bridge does: forward_saving, then backward_saved, which must
    # launch only the gradient kernel and give the bits of a backward that recomputes.
    from arrayloss._class_calls import cross_entropy_call
    from arrayloss._cupy import cross_entropy as fused

    rng = np.random.default_rng(11)
    values = rng.normal(size=(33, 70)).astype(np.float32)
    targets = rng.integers(0, 70, 33)
    targets[3] = -100
    logits, labels = hostcuda.asarray(values), hostcuda.asarray(targets)
    call = cross_entropy_call(logits, labels, None, ignore_index=-100, reduction=reduction,
                              label_smoothing=0.1, validate=True)
    upstream_values = rng.uniform(0.5, 1.5, 33).astype(np.float32)
    upstream: Any = hostcuda.asarray(upstream_values) if reduction == "none" else 0.75
    want = hostcuda.asnumpy(fused.backward(call, upstream))
    loss, saved = fused.forward_saving(call)
    np.testing.assert_array_equal(hostcuda.asnumpy(loss), hostcuda.asnumpy(fused.forward(call)))
    hostcuda.COUNTERS.launches.clear()
    got = hostcuda.asnumpy(fused.backward_saved(call, upstream, saved))
    assert set(hostcuda.COUNTERS.launches) == {"arrayloss_cross_entropy_grad"}
    np.testing.assert_array_equal(got, want)
    reference = al.cross_entropy_backward(
        upstream_values.astype(np.float64) if reduction == "none" else 0.75,
        values.astype(np.float64), targets, reduction=reduction, label_smoothing=0.1)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-7)
