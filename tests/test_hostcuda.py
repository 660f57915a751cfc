"""arrayloss's CUDA kernels, run on the CPU through the host harness (``tests/hostcuda``).

The real CuPy backend runs unchanged on CuPy-typed host arrays; every launch compiles CuPy's
exact generated source as host C++ and runs it with CuPy's grid, block and index width.  The
cases are those of the GPU run (``_kernel_cases.py``) plus every PyTorch parity case
(``_cases.py``), and what only the harness can show: the 64-bit index path at small sizes, a
second device, uninitialised inputs, and that every kernel factory ran.
"""

from __future__ import annotations

import contextlib
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


@pytest.mark.parametrize("variant_id", kee.special_cases())
def test_elementwise_special_values(variant_id: str) -> None:
    kee.case_elementwise_special(DEVICE, variant_id)


def test_elementwise_range_checks() -> None:
    kee.case_elementwise_invalid(DEVICE)


def test_elementwise_bool_mask_weight() -> None:
    kee.case_elementwise_mask(DEVICE)


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
    pytest.param(kce.case_cross_entropy, ("float32", (40, 200), "mean"),
                 id="cross-entropy-fused-rows"),
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
        kce.case_cross_entropy(DEVICE, "float32", (30, 10), reduction)  # the fused kernels
    kce.case_cross_entropy(DEVICE, "float32", (3, 4, 2), "mean")  # spatial: the unfused ones
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
             "ce_rows_partials", "ce_grad", "ce_targets", "ce_fused", "ce_finish",
             "elementwise_kernel"}
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
                   "arrayloss_cross_entropy_targets", "arrayloss_cross_entropy_fused",
                   "arrayloss_cross_entropy_finish",
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
def test_precompiled_headers_change_no_bit_of_the_device_code(tmp_path, monkeypatch) -> None:
    # NVRTC starts each compile from a precompiled header of CuPy's headers (built by the first
    # source, read by the others): the cubins are those of a compile that parses them.
    from hostcuda import _nvrtc

    reason = _nvrtc.unavailable()
    if reason:
        pytest.skip(reason)
    with hostcuda.recording_only(), contextlib.suppress(AssertionError):
        kc.case_gaussian(DEVICE, "float16", "rows", "mean")  # launched, not run: no values
    launched = [hostcuda.COUNTERS.sources[launch["digest"]] for launch in hostcuda.COUNTERS.trace
                if launch["name"].startswith("arrayloss_gaussian_nll")]
    assert launched
    monkeypatch.setenv("ARRAYLOSS_HOSTCUDA_CACHE", str(tmp_path))  # no header built yet
    monkeypatch.setattr(_nvrtc, "_pch_directory", _nvrtc._pch_directory.__wrapped__)
    for source in launched[:2]:  # ElementwiseKernels: CuPy's headers first
        built, read, parsed = (_nvrtc.device_binary(source, (), (), "90", precompiled)[0]
                               for precompiled in (True, True, False))
        assert built == read == parsed
    if _nvrtc._pch_directory() is not None:
        assert list(tmp_path.glob("nvrtc-pch-*/*.pch")), "no precompiled header was built"


@pytest.mark.nvrtc
def test_every_architecture_compiles_each_source(tmp_path, monkeypatch) -> None:
    # A source that only sm_90 accepts fails, with NVRTC's log, for compute_80: both
    # architectures' front ends see every source; its machine code is built where asked.
    from hostcuda import _nvrtc

    reason = _nvrtc.unavailable()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("ARRAYLOSS_HOSTCUDA_CACHE", str(tmp_path))
    kernel = 'extern "C" __global__ void probe(float* x) {{ x[threadIdx.x] = {}; }}\n'
    only_sm_90 = "#if __CUDA_ARCH__ < 900\n#error needs sm_90\n#endif\n" + kernel.format(1)
    with pytest.raises(Exception, match="needs sm_90"):
        _nvrtc.compile_for_device(only_sm_90, ("probe",))
    source = kernel.format(2)
    _nvrtc.compile_for_device(source, ("probe",))
    assert list(tmp_path.glob("*.ptx")) and not list(tmp_path.glob("*.nvrtc"))
    found = _nvrtc.machine_resources(source)
    assert set(found) == {"80", "90"}
    assert all(kernels["probe"]["registers"] > 0 for kernels in found.values())


@pytest.mark.nvrtc
def test_every_launched_source_compiles_with_nvrtc() -> None:
    # Runs last in its process: by now every kernel source launched above went through NVRTC
    # for compute_80 and compute_90 (tests/hostcuda/_nvrtc.py) before it ran, so what CI
    # compiles is what runs.  Under pytest-xdist this process may have run none of them: then
    # one case first.
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
    # launch only the gradient kernel and give the bits of the unfused backward that
    # recomputes the rows.  (The fused backward reduces a row in another order, lane groups
    # here: the same values to rounding.)
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
    want = _unfused(call, upstream)[1]
    loss, saved = fused.forward_saving(call)
    np.testing.assert_array_equal(hostcuda.asnumpy(loss), hostcuda.asnumpy(fused.forward(call)))
    hostcuda.COUNTERS.launches.clear()
    got = hostcuda.asnumpy(fused.backward_saved(call, upstream, saved))
    assert set(hostcuda.COUNTERS.launches) == {"arrayloss_cross_entropy_grad"}
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, hostcuda.asnumpy(fused.backward(call, upstream)),
                               rtol=1e-5, atol=1e-8)
    reference = al.cross_entropy_backward(
        upstream_values.astype(np.float64) if reduction == "none" else 0.75,
        values.astype(np.float64), targets, reduction=reduction, label_smoothing=0.1)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ the fused cross-entropy


def _unfused(call: Any, grad_output: Any = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(the row passes' losses or totals, the gradient) of the unfused kernels."""
    from arrayloss._cupy import cross_entropy as fused_backend

    layout, result, row_info = fused_backend._checked_rows(call)
    totals = result if call.reduction == "mean" else None
    grad = fused_backend._grad(call, layout, row_info, grad_output, totals, None)
    return hostcuda.asnumpy(result), hostcuda.asnumpy(grad)


@pytest.mark.parametrize("reduction", kc.REDUCTIONS)
@pytest.mark.parametrize("targets", ["index", "weighted-smoothed", "probabilities"])
def test_fused_cross_entropy_has_the_bits_of_the_unfused_kernels(reduction: str,
                                                                 targets: str) -> None:
    # C = 200: 256 threads per row on both paths, so every sum runs in the same order.
    from arrayloss._class_calls import cross_entropy_call
    from arrayloss._cupy import cross_entropy as backend
    from arrayloss._cupy import cross_entropy_fused

    rng = np.random.default_rng(12)
    values = rng.normal(scale=3, size=(300, 200)).astype(np.float32)
    labels = rng.integers(0, 200, 300)
    labels[::7] = -100
    weight = hostcuda.asarray(rng.uniform(0.2, 2, 200).astype(np.float32))
    soft = hostcuda.asarray(rng.dirichlet(np.ones(200), 300).astype(np.float32))
    target, options = {
        "index": (hostcuda.asarray(labels), {"weight": None, "label_smoothing": 0.0}),
        "weighted-smoothed": (hostcuda.asarray(labels),
                              {"weight": weight, "label_smoothing": 0.2}),
        "probabilities": (soft, {"weight": weight, "label_smoothing": 0.1}),
    }[targets]
    logits = hostcuda.asarray(values)
    call = cross_entropy_call(logits, target, options["weight"], ignore_index=-100,
                              reduction=reduction, label_smoothing=options["label_smoothing"],
                              validate=True)
    layout = backend._layout(call)
    assert backend._fusable(call, layout)
    upstream: Any = 0.75
    if reduction == "none":
        upstream = hostcuda.asarray(rng.uniform(0.5, 1.5, 300).astype(np.float32))
    want_rows, want_grad = _unfused(call, upstream)
    hostcuda.COUNTERS.launches.clear()
    got = hostcuda.asnumpy(backend.backward(call, upstream))
    assert "arrayloss_cross_entropy_fused" in hostcuda.COUNTERS.launches
    np.testing.assert_array_equal(got, want_grad)
    if reduction == "none":  # the per-row losses, bit for bit
        rows, grad = cross_entropy_fused.run(call, layout, upstream, None, want_loss=True)
        np.testing.assert_array_equal(hostcuda.asnumpy(rows), want_rows)
        np.testing.assert_array_equal(hostcuda.asnumpy(grad), want_grad)
        return
    # The loss: the same rows summed in another fixed order (rows, not per-block partials).
    loss, grad = backend.loss_and_grad(call)
    _, want_grad_one = _unfused(call, 1.0)
    np.testing.assert_array_equal(hostcuda.asnumpy(grad), want_grad_one)
    np.testing.assert_allclose(hostcuda.asnumpy(loss), want_rows[0], rtol=2e-6)
    # out=input: the gradient over the logits, the same bits.
    consumed = hostcuda.asarray(values)
    in_place_call = cross_entropy_call(
        consumed, target, options["weight"], ignore_index=-100, reduction=reduction,
        label_smoothing=options["label_smoothing"], validate=True)
    in_place_loss, in_place = backend.loss_and_grad(in_place_call, out=consumed)
    assert in_place is consumed
    np.testing.assert_array_equal(hostcuda.asnumpy(in_place), want_grad_one)
    np.testing.assert_array_equal(hostcuda.asnumpy(in_place_loss), hostcuda.asnumpy(loss))


def _fused_source(trace: list[dict[str, Any]]) -> str:
    launch = next(t for t in trace if t["name"] == "arrayloss_cross_entropy_fused")
    return hostcuda.COUNTERS.sources[launch["digest"]]


@pytest.mark.parametrize(("dtype", "classes", "vec"), [
    ("float32", 4500, 4), ("bfloat16", 4504, 8), ("bfloat16", 4500, 1), ("float16", 4504, 8),
    ("float64", 4500, 2)])
def test_fused_cross_entropy_rows_beyond_the_grid(monkeypatch: pytest.MonkeyPatch,
                                                  dtype: str, classes: int, vec: int) -> None:
    # A tiny L2 caps the grid at 2 blocks: each block then takes 9 of the 17 rows in turn
    # (1024 threads: 16-byte accesses, two batches of 2 and a tail per thread, where the
    # rows are whole vectors; else a batch of 4 and a tail of single loads; few rows are
    # split over blocks unless the row kernels aim for fewer blocks).  Same bits as the full
    # grid, and the float64 reference's values, with out=input too.
    from arrayloss._cupy import cross_entropy as backend
    from arrayloss._cupy import cross_entropy_fused

    monkeypatch.setattr(backend, "_TARGET_BLOCKS", 1)
    rng = np.random.default_rng(13)
    values = rng.normal(scale=2, size=(17, classes))
    labels = rng.integers(0, classes, 17)
    labels[4] = -100
    logits = DEVICE.put(values, dtype)
    exact = DEVICE.exact(logits)
    target = hostcuda.asarray(labels)
    hostcuda.COUNTERS.trace.clear()
    full = [hostcuda.asnumpy(a) for a in al.cross_entropy_and_grad(logits, target,
                                                                   label_smoothing=0.1)]
    assert f"constexpr int vec = {vec};" in _fused_source(hostcuda.COUNTERS.trace)
    row_bytes = classes * logits.itemsize
    monkeypatch.setattr(cross_entropy_fused, "_device_limits",
                        lambda device: (int(4 * row_bytes / cross_entropy_fused.L2_SHARE), 132))
    hostcuda.COUNTERS.trace.clear()
    small = [hostcuda.asnumpy(a) for a in al.cross_entropy_and_grad(logits, target,
                                                                    label_smoothing=0.1)]
    fused_launch = next(t for t in hostcuda.COUNTERS.trace
                        if t["name"] == "arrayloss_cross_entropy_fused")
    assert (fused_launch["grid"], fused_launch["block"]) == (2, 1024)
    for got, want in zip(small, full, strict=True):
        np.testing.assert_array_equal(got, want)
    want_loss, want_grad = kce.cross_entropy_reference(exact, labels, None,
                                                       label_smoothing=0.1)
    kc.assert_close(small[0], want_loss, dtype, DEVICE, "loss")
    kc.assert_close(small[1], want_grad, dtype, DEVICE, "grad")
    consumed = hostcuda.asarray(hostcuda.asnumpy(logits))
    _, in_place = al.cross_entropy_and_grad(consumed, target, label_smoothing=0.1, out=consumed)
    assert in_place is consumed
    np.testing.assert_array_equal(hostcuda.asnumpy(in_place), full[1])
    if vec > 1:  # logits 4 bytes off a 16-byte boundary: one element at a time
        flat = hostcuda.asarray(np.concatenate([[0.0], hostcuda.asnumpy(logits).ravel()]))
        shifted = DEVICE.put(hostcuda.asnumpy(flat), dtype)[1:].reshape(17, classes)
        assert shifted.data.ptr % 16 != 0
        hostcuda.COUNTERS.trace.clear()
        loss, grad = al.cross_entropy_and_grad(shifted, target, label_smoothing=0.1)
        assert "constexpr int vec = 1;" in _fused_source(hostcuda.COUNTERS.trace)
        kc.assert_close(loss, want_loss, dtype, DEVICE, "misaligned loss")
        kc.assert_close(grad, want_grad, dtype, DEVICE, "misaligned grad")


def test_fused_cross_entropy_launches() -> None:
    # 'mean': the targets pass, the row kernel, the finish; fewer where nothing needs them;
    # a bfloat16 loss written by the finish itself (no cast).
    import ml_dtypes

    rng = np.random.default_rng(14)
    labels = hostcuda.asarray(rng.integers(0, 40, 64))
    for dtype in (np.float32, ml_dtypes.bfloat16):
        logits = hostcuda.asarray(rng.normal(size=(64, 40)).astype(dtype))
        soft = hostcuda.asarray(rng.dirichlet(np.ones(40), 64).astype(dtype))
        quiet = {"validate": False}
        for function, arguments, options, want in [
            (al.cross_entropy_and_grad, (logits, labels), quiet, ["targets", "fused", "finish"]),
            (al.cross_entropy_and_grad, (logits, labels), {**quiet, "reduction": "sum"},
             ["fused", "finish"]),
            (al.cross_entropy_and_grad, (logits, soft), {}, ["fused", "finish"]),
            (al.cross_entropy_backward, (1.0, logits, labels), quiet, ["targets", "fused"]),
            (al.cross_entropy_backward, (1.0, logits, labels), {**quiet, "reduction": "sum"},
             ["fused"]),
        ]:
            start = len(hostcuda.COUNTERS.trace)
            result = function(*arguments, **options)
            names = [t["name"] for t in hostcuda.COUNTERS.trace[start:]]
            assert names == [f"arrayloss_cross_entropy_{name}" for name in want]
            if isinstance(result, tuple):
                assert result[0].dtype == logits.dtype and result[0].shape == ()


@pytest.mark.parametrize("classes", [1, 3, 10, 33, 128])
def test_fused_cross_entropy_small_rows_go_several_to_a_warp(
        monkeypatch: pytest.MonkeyPatch, classes: int) -> None:
    # Lane groups of 1 to 32 lanes, 8 to 256 rows to a block, the last block part idle (203
    # rows); against the float64 reference for every target kind, with out=input; and the
    # same bits from a grid of one block, which takes every row group in turn.
    from arrayloss._cupy import cross_entropy_fused

    rng = np.random.default_rng(classes)
    values = rng.normal(scale=3, size=(203, classes))
    labels = rng.integers(0, classes, 203)
    labels[::9] = -100
    logits = DEVICE.put(values, "float32")
    exact = DEVICE.exact(logits)
    weight = DEVICE.put(rng.uniform(0.2, 2, classes), "float32")
    soft = DEVICE.put(rng.dirichlet(np.ones(classes), 203), "float32")
    target = hostcuda.asarray(labels)
    calls = [((target, None), {}), ((target, weight), {"label_smoothing": 0.2}),
             ((soft, weight), {"label_smoothing": 0.1})]
    results = []
    for (t, w), options in calls:
        hostcuda.COUNTERS.trace.clear()
        loss, grad = al.cross_entropy_and_grad(logits, t, w, **options)
        launch = next(t for t in hostcuda.COUNTERS.trace
                      if t["name"] == "arrayloss_cross_entropy_fused")
        assert launch["block"] == cross_entropy_fused.GROUP_THREADS
        host_t = labels if t is target else hostcuda.asnumpy(soft).astype(np.float64)
        want_loss, want_grad = kce.cross_entropy_reference(
            exact, host_t, None if w is None else DEVICE.exact(w), **options)
        kc.assert_close(loss, want_loss, "float32", DEVICE, "loss")
        kc.assert_close(grad, want_grad, "float32", DEVICE, "grad")
        results.append((hostcuda.asnumpy(loss), hostcuda.asnumpy(grad)))
    consumed = hostcuda.asarray(hostcuda.asnumpy(logits))
    _, in_place = al.cross_entropy_and_grad(consumed, target, out=consumed)
    np.testing.assert_array_equal(hostcuda.asnumpy(in_place), results[0][1])
    monkeypatch.setattr(cross_entropy_fused, "_device_limits", lambda device: (1, 132))
    for ((t, w), options), (want_loss, want_grad) in zip(calls, results, strict=True):
        hostcuda.COUNTERS.trace.clear()
        loss, grad = al.cross_entropy_and_grad(logits, t, w, **options)
        assert [t["grid"] for t in hostcuda.COUNTERS.trace
                if t["name"] == "arrayloss_cross_entropy_fused"] == [1]
        np.testing.assert_array_equal(hostcuda.asnumpy(loss), want_loss)
        np.testing.assert_array_equal(hostcuda.asnumpy(grad), want_grad)


def test_the_shuffle_shims_keep_cuda_widths() -> None:
    # CUDA's rule for width < 32: a source lane beyond the thread's own segment gives its own
    # value; __shfl_xor_sync may read an earlier segment.  Two warps of 32, segments of 8.
    code = r"""
extern "C" __global__ void shuffles(const float* values, float* down, float* within,
                                    float* across) {
    const unsigned int t = threadIdx.x;
    down[t] = __shfl_down_sync(0xffffffffu, values[t], 3, 8);
    within[t] = __shfl_xor_sync(0xffffffffu, values[t], 5, 8);
    across[t] = __shfl_xor_sync(0xffffffffu, values[t], 8, 8);
}
"""
    import cupy

    values = np.arange(64, dtype=np.float32) * 1.5
    outputs = [hostcuda._arrays.empty(64, np.float32) for _ in range(3)]
    function = cupy.RawModule(code=code, name_expressions=("shuffles",)).get_function(
        "shuffles")
    function((1,), (64,), (hostcuda.asarray(values), *outputs))
    lanes = np.arange(64)
    in_warp = lanes % 32
    down = np.where(in_warp % 8 + 3 < 8, lanes + 3, lanes)
    across = lanes ^ 8
    across = np.where(across % 32 >= (in_warp & ~7) + 8, lanes, across)
    for got, sources in zip(outputs, (down, lanes ^ 5, across), strict=True):
        np.testing.assert_array_equal(hostcuda.asnumpy(got), values[sources])
