"""The second adversarial pass (issue "No crash and no silently wrong answer, second pass")
and NumPy's float16 fast paths (issue 34).  One test or class per item, named after it; each
failed before its fix.  PyTorch 2.13 is the reference wherever it can give one."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from _helpers import load_lazy_modules

import arrayloss as al

torch = pytest.importorskip("torch", reason="PyTorch is the reference for these items")
F = torch.nn.functional

#: Long enough for every NumPy loss to split its rows into blocks.
BLOCKED_ROWS = 1 << 20


def _torch_value(value: Any) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _same(ours: Any, reference: Any) -> None:
    """Equal as IEEE values: inf for inf, NaN for NaN, else to float rounding."""
    ours, reference = float(np.asarray(ours)), _torch_value(reference)
    if math.isnan(reference) or math.isinf(reference):
        assert ours == reference or (math.isnan(ours) and math.isnan(reference)), (
            ours, reference)
    else:
        assert ours == pytest.approx(reference, rel=1e-12, abs=1e-300)


# --------------------------------------------------------------------------- item 1


class TestItem1BlockedSumsFollowIEEE:
    """Blocked NumPy sums added partials by ``math.fsum``, which raises on inf and on an
    overflowing total: PyTorch gives inf and NaN."""

    @staticmethod
    def _class_case(values: dict[tuple[int, int], float], weight: Any = None,
                    target_of: dict[int, int] | None = None) -> tuple[Any, ...]:
        x = np.zeros((BLOCKED_ROWS, 2))
        for position, value in values.items():
            x[position] = value
        target = np.zeros(BLOCKED_ROWS, dtype=np.int64)
        for row, klass in (target_of or {}).items():
            target[row] = klass
        return x, target, weight

    def test_cross_entropy_overflow_is_inf(self) -> None:
        x = np.zeros((2, 2**19))
        x[:, 1] = 1e308
        target = np.zeros(2, dtype=np.int64)
        _same(al.cross_entropy(x, target, reduction="sum"),
              F.cross_entropy(torch.tensor(x), torch.tensor(target), reduction="sum"))

    @pytest.mark.parametrize("reduction", ["sum", "mean"])
    def test_cross_entropy_rows_overflow_and_inf_minus_inf(self, reduction: str) -> None:
        for values in ({(r, 1): 1e308 for r in range(0, BLOCKED_ROWS, 2**15)},):
            x, target, _ = self._class_case(values)
            _same(al.cross_entropy(x, target, reduction=reduction),
                  F.cross_entropy(torch.tensor(x), torch.tensor(target), reduction=reduction))
        # Negative probability targets: -inf in one block, +inf in another.
        x = np.zeros((BLOCKED_ROWS, 2))
        x[0, 1] = x[-1, 1] = 1e308
        q = np.zeros((BLOCKED_ROWS, 2))
        q[:, 0] = 1.0
        q[0] = (-1.0, 2.0)
        q[-1] = (2.0, -1.0)
        _same(al.cross_entropy(x, q, reduction=reduction),
              F.cross_entropy(torch.tensor(x), torch.tensor(q), reduction=reduction))

    @pytest.mark.parametrize("weighted", [False, True])
    @pytest.mark.parametrize("reduction", ["sum", "mean"])
    def test_nll(self, weighted: bool, reduction: str) -> None:
        weight = np.array([1.0, -1.0]) if weighted else None
        cases = [
            self._class_case({(r, 0): -1e308 for r in range(0, BLOCKED_ROWS, 2**17)},
                             weight),  # finite blocks, overflowing total
            self._class_case({(0, 0): np.inf, (BLOCKED_ROWS - 1, 0): -np.inf}, weight),
            # A negative weight: +inf in one block, -inf in another.
            self._class_case({(0, 0): -np.inf, (BLOCKED_ROWS - 1, 1): -np.inf}, weight,
                             {BLOCKED_ROWS - 1: 1}),
        ]
        for x, target, w in cases:
            reference = F.nll_loss(torch.tensor(x), torch.tensor(target),
                                   weight=None if w is None else torch.tensor(w),
                                   reduction=reduction)
            _same(al.nll_loss(x, target, w, reduction=reduction), reference)
            _same(al.nll_loss_and_grad(x, target, w, reduction=reduction)[0], reference)
            ignored = target.copy()
            ignored[5] = -100  # the masked path
            _same(al.nll_loss(x, ignored, w, reduction=reduction),
                  F.nll_loss(torch.tensor(x), torch.tensor(ignored),
                             weight=None if w is None else torch.tensor(w),
                             reduction=reduction))

    def test_nll_spatial_and_strided(self) -> None:
        x = np.zeros((2**8, 2, 2**13))
        x[::16, 0, 0] = -1e308
        target = np.zeros((2**8, 2**13), dtype=np.int64)
        for xs, ts in ((x, target), (x[:, :, ::2], target[:, ::2])):
            _same(al.nll_loss(xs, ts, reduction="sum"),
                  F.nll_loss(torch.tensor(xs), torch.tensor(ts), reduction="sum"))

    @pytest.mark.parametrize("reduction", ["sum", "mean"])
    def test_gaussian_nll(self, reduction: str) -> None:
        size = 1 << 22
        x, target = np.zeros(size), np.zeros(size)
        x[:: 2**16] = 1.3e154  # each block's sum is finite, their total is not
        inf_minus_inf = np.zeros(size)
        inf_minus_inf[0], inf_minus_inf[-1] = np.inf, 1.0
        var_inf = np.ones(size)
        var_inf[-1] = np.inf  # log(inf) = inf in one block
        var_inf[0] = 0.0  # and with eps=0 log(0) = -inf in another
        for args, eps in (((x, target, np.ones(size)), 1e-6), ((x, target, 1.0), 1e-6),
                          ((x[::2], target[::2], np.ones(size)[::2]), 1e-6),
                          ((np.zeros(size), np.zeros(size), var_inf), 0.0)):
            reference = F.gaussian_nll_loss(*(torch.tensor(a) if isinstance(a, np.ndarray)
                                              else a for a in args), eps=eps,
                                            reduction=reduction)
            _same(al.gaussian_nll_loss(*args, eps=eps, reduction=reduction), reference)
            _same(al.gaussian_nll_loss_and_grad(*args, eps=eps, reduction=reduction)[0],
                  reference)
        del inf_minus_inf

    def test_ordered_sum_keeps_fsum_accuracy(self) -> None:
        from arrayloss._agnostic._blocked import ordered_sum

        partials = [1e16, 1.0, -1e16, 1.0]  # fsum: 2.0, plain addition: 1.0
        assert ordered_sum(partials) == math.fsum(partials) == 2.0
        assert ordered_sum([1e308, 1e308, -1e308]) == math.inf  # fsum raises
        assert math.isnan(ordered_sum([math.inf, 1.0, -math.inf]))
        assert ordered_sum([math.inf, 1.0]) == math.inf
        assert ordered_sum([]) == 0.0


# --------------------------------------------------------------------------- item 2


class TestItem2Uint64TargetsDoNotWrap:
    """``2**64 - 1`` read as -1 by NLL's small-batch fancy index: the loss of the last class,
    and a backward written into it."""

    def setup_method(self) -> None:
        self.x = np.arange(12, dtype=np.float64).reshape(3, 4)
        self.target = np.array([0, 1, 2**64 - 1], dtype=np.uint64)

    @pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
    def test_out_of_range(self, reduction: str) -> None:
        with pytest.raises(al.TargetOutOfRangeError, match="18446744073709551615"):
            al.nll_loss(self.x, self.target, reduction=reduction)
        with pytest.raises(al.TargetOutOfRangeError, match="18446744073709551615"):
            al.nll_loss_backward(1.0 if reduction != "none" else np.ones(3), self.x,
                                 self.target, reduction=reduction)
        if reduction != "none":
            with pytest.raises(al.TargetOutOfRangeError):
                al.nll_loss_and_grad(self.x, self.target, reduction=reduction)
        with pytest.raises(al.TargetOutOfRangeError):
            al.cross_entropy(self.x, self.target, reduction=reduction)

    def test_unchecked_it_is_inactive(self) -> None:
        # validate=False: out of range counts as ignored (the generic rule), never class C-1.
        loss, grad = al.nll_loss_and_grad(self.x, self.target, reduction="sum", validate=False)
        assert float(loss) == -(0.0 + 5.0)
        assert np.array_equal(grad[2], np.zeros(4))

    def test_suggestion_is_accepted_or_absent(self) -> None:
        # The error suggested ignore_index=18446744073709551615, which is itself rejected.
        with pytest.raises(al.TargetOutOfRangeError) as caught:
            al.nll_loss(self.x, self.target)
        assert "pass ignore_index=18446744073709551615" not in str(caught.value)

    def test_in_range_uint64_still_fast_and_right(self) -> None:
        target = np.array([0, 3, 2], dtype=np.uint64)
        expected = F.nll_loss(torch.tensor(self.x), torch.tensor(target.astype(np.int64)))
        _same(al.nll_loss(self.x, target), expected)


# --------------------------------------------------------------------------- item 3


class TestItem3ByteSwappedInput:
    """``'>f4'`` input crashed NLL's blocked and masked paths in NumPy's ufunc ``dtype=``."""

    @pytest.mark.parametrize("rows", [10, 5000])
    @pytest.mark.parametrize("ignored", [False, True])
    @pytest.mark.parametrize("weighted", [False, True])
    def test_nll(self, rows: int, ignored: bool, weighted: bool) -> None:
        rng = np.random.default_rng(3)
        x = rng.standard_normal((rows, 3)).astype(">f4")
        target = rng.integers(0, 3, rows)
        if ignored:
            target[0] = -100
        weight = np.array([0.5, 1.0, 2.0], dtype=">f4") if weighted else None
        tw = None if weight is None else torch.tensor(weight.astype("<f4"))
        for reduction in ("none", "mean", "sum"):
            expected = F.nll_loss(torch.tensor(x.astype("<f4")), torch.tensor(target),
                                  weight=tw, reduction=reduction).numpy()
            got = al.nll_loss(x, target, weight, reduction=reduction)
            np.testing.assert_allclose(np.asarray(got, dtype="<f4"), expected, rtol=1e-5)
        _, grad = al.nll_loss_and_grad(x, target, weight)
        tx = torch.tensor(x.astype("<f4"), requires_grad=True)
        F.nll_loss(tx, torch.tensor(target), weight=tw).backward()
        np.testing.assert_allclose(np.asarray(grad, dtype="<f4"), tx.grad.numpy(), rtol=1e-5)

    def test_other_losses(self) -> None:
        x = np.linspace(-2, 2, 6000, dtype=">f8").reshape(2000, 3)
        target = np.arange(2000) % 3
        expected = F.cross_entropy(torch.tensor(x.astype("<f8")), torch.tensor(target))
        _same(al.cross_entropy(x, target), expected)
        var = np.abs(x) + 0.5
        expected = F.gaussian_nll_loss(torch.tensor(x.astype("<f8")),
                                       torch.zeros(2000, 3, dtype=torch.float64),
                                       torch.tensor(var.astype("<f8")))
        _same(al.gaussian_nll_loss(x, np.zeros_like(x), var), expected)


# --------------------------------------------------------------------------- items 5 and 6


class TestItem5SmoothedWeightedMeanOfZeroWeight:
    """Label smoothing, class weights, ``'mean'``, every counted target of weight 0: PyTorch
    gives NaN (its NLL part is 0/0), arrayloss gave +inf."""

    @pytest.mark.parametrize("library", ["numpy", "torch", "array_api_strict", "dask"])
    @pytest.mark.parametrize("label_smoothing", [0.1, 1.0])
    def test_nan(self, library: str, label_smoothing: float) -> None:
        x = np.random.default_rng(5).standard_normal((4, 3))
        target = np.array([0, 1, 0, 1])
        weight = np.array([0.0, 0.0, 1.0])
        expected = F.cross_entropy(torch.tensor(x), torch.tensor(target),
                                   weight=torch.tensor(weight), label_smoothing=label_smoothing)
        assert math.isnan(float(expected))
        xp_args = _in_library(library, x, target, weight)
        loss = al.cross_entropy(*xp_args, label_smoothing=label_smoothing)
        assert math.isnan(float(np.asarray(_computed(loss))))
        both = al.cross_entropy_and_grad(*xp_args, label_smoothing=label_smoothing)
        assert math.isnan(float(np.asarray(_computed(both[0]))))

    def test_nonzero_total_weight_unchanged(self) -> None:
        x = np.random.default_rng(6).standard_normal((4, 3))
        target = np.array([0, 1, 2, 1])
        weight = np.array([0.0, 0.0, 1.0])
        _same(al.cross_entropy(x, target, weight, label_smoothing=0.2),
              F.cross_entropy(torch.tensor(x), torch.tensor(target),
                              weight=torch.tensor(weight), label_smoothing=0.2))


@pytest.mark.hostcuda
def test_item5_smoothed_weighted_mean_of_zero_weight_cuda_kernels() -> None:
    """Item 5 on the fused CUDA kernels (their second pass), through the CPU harness."""
    pytest.importorskip("cupy", reason="CuPy is not installed")
    import hostcuda

    if hostcuda.unavailable():
        pytest.skip(hostcuda.unavailable())
    x = np.random.default_rng(5).standard_normal((4, 3))
    target = np.array([0, 1, 0, 1])
    with hostcuda.activated():
        for weight in (np.array([0.0, 0.0, 1.0]), np.array([1.0, 2.0, 0.5])):
            args = [hostcuda.asarray(a) for a in (x, target, weight)]
            expected = F.cross_entropy(torch.tensor(x), torch.tensor(target),
                                       weight=torch.tensor(weight), label_smoothing=0.1)
            _same(hostcuda.asnumpy(al.cross_entropy(*args, label_smoothing=0.1)), expected)
            loss, _ = al.cross_entropy_and_grad(*args, label_smoothing=0.1)
            _same(hostcuda.asnumpy(loss), expected)


class TestItem6SmoothingWithInfiniteClassWeight:
    """NumPy's blocks summed ``w[c] (z[c] - max)``: 0 * inf = NaN where PyTorch gives inf."""

    @pytest.mark.parametrize("reduction", ["none", "sum"])
    @pytest.mark.parametrize("probabilities", [False, True])
    def test_inf(self, reduction: str, probabilities: bool) -> None:
        x = np.random.default_rng(7).standard_normal((4, 3))
        x[::2, 0] += 5.0  # the largest logit where the weight is inf: 0 * inf in the blocks
        target: Any = np.array([0, 1, 0, 1])
        if probabilities:
            target = np.full((4, 3), 1 / 3)
        weight = np.array([np.inf, 1.0, 1.0])
        expected = F.cross_entropy(torch.tensor(x), torch.tensor(target),
                                   weight=torch.tensor(weight), label_smoothing=0.1,
                                   reduction=reduction).numpy()
        got = al.cross_entropy(x, target, weight, label_smoothing=0.1, reduction=reduction)
        np.testing.assert_array_equal(np.asarray(got), expected)
        generic = al.cross_entropy(torch.tensor(x), torch.tensor(target),
                                   torch.tensor(weight), label_smoothing=0.1,
                                   reduction=reduction).numpy()
        np.testing.assert_array_equal(np.asarray(got), generic)


def _in_library(library: str, *arrays: np.ndarray) -> tuple[Any, ...]:
    if library == "numpy":
        return arrays
    if library == "torch":
        return tuple(torch.tensor(a) for a in arrays)
    if library == "array_api_strict":
        xps = pytest.importorskip("array_api_strict")
        return tuple(xps.asarray(a) for a in arrays)
    dask_array = pytest.importorskip("dask.array")
    return tuple(dask_array.from_array(a, chunks=2) for a in arrays)


def _computed(value: Any) -> Any:
    if hasattr(value, "compute"):
        return value.compute()
    if isinstance(value, torch.Tensor):
        return value.detach().numpy()
    return np.from_dlpack(value) if not isinstance(value, np.ndarray) else value


# --------------------------------------------------------------------------- item 12 and "Also"


class TestItem12OutDtypeIsTypeError:
    """``out=`` of the wrong dtype raised ValueError; the README promises TypeError."""

    def test_numpy_and_torch(self) -> None:
        x = np.random.default_rng(12).standard_normal((3, 4))
        target = np.array([0, 1, 2])
        with pytest.raises(TypeError, match="out must have the input's dtype float64"):
            al.cross_entropy_and_grad(x, target, out=np.empty((3, 4), np.float32))
        with pytest.raises(TypeError, match="dtype"):
            al.CrossEntropyLoss().loss_and_grad(torch.tensor(x), torch.tensor(target),
                                                out=torch.empty(3, 4))
        with pytest.raises(ValueError, match=r"shape \(3, 4\), got \(3, 5\)"):
            al.cross_entropy_and_grad(x, target, out=np.empty((3, 5)))


class TestAlsoTorchOutAliasingTargetRejected:
    """A torch ``out=`` sharing memory with the target overwrote it; NumPy rejects that."""

    def test_rejected_unchanged(self) -> None:
        x = torch.randn(3, 4, dtype=torch.float64)
        q = torch.softmax(torch.randn(3, 4, dtype=torch.float64), dim=1)
        before = q.clone()
        for out in (q, q[:, :], q.view(12).view(3, 4)):
            with pytest.raises(ValueError, match="out must not share memory with target"):
                al.cross_entropy_and_grad(x, q, out=out)
        assert torch.equal(q, before)
        q_numpy = q.numpy()
        with pytest.raises(ValueError, match="out must not share memory with target"):
            al.cross_entropy_and_grad(x.numpy(), q_numpy, out=q_numpy)

    def test_out_input_and_fresh_out_still_work(self) -> None:
        x = torch.randn(3, 4, dtype=torch.float64)
        q = torch.softmax(torch.randn(3, 4, dtype=torch.float64), dim=1)
        tx = x.clone().requires_grad_(True)
        expected = F.cross_entropy(tx, q)
        expected.backward()
        fresh = torch.empty(3, 4, dtype=torch.float64)
        loss, grad = al.cross_entropy_and_grad(x, q, out=fresh)
        assert grad is fresh and torch.allclose(grad, tx.grad)
        in_place = x.clone()
        loss, grad = al.cross_entropy_and_grad(in_place, q, out=in_place)
        assert float(loss) == pytest.approx(float(expected.detach()))
        assert torch.allclose(in_place, tx.grad)
        storage = torch.randn(2, 3, 4, dtype=torch.float64)  # one storage, disjoint halves
        al.cross_entropy_and_grad(storage[0], q, out=storage[1])
        assert torch.allclose(storage[1], (F.softmax(storage[0], 1) - q) / 3)  # the mean
        with pytest.raises(ValueError, match="overlaps input"):
            al.cross_entropy_and_grad(storage.view(-1)[:12].view(3, 4), q,
                                      out=storage.view(-1)[1:13].view(3, 4))


class TestAlsoWeightRequiringGradIsAConstant:
    """PyTorch raises for a class weight that requires grad; arrayloss documents it as a
    constant: the input's gradient is PyTorch's and the weight's stays None."""

    @pytest.mark.parametrize("loss", ["nll_loss", "cross_entropy"])
    def test_documented_and_none(self, loss: str) -> None:
        x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        weight = torch.rand(4, dtype=torch.float64, requires_grad=True)
        target = torch.tensor([0, 1, 2])
        getattr(al, loss)(x, target, weight).backward()
        assert weight.grad is None
        reference_x = x.detach().clone().requires_grad_(True)
        getattr(F, loss)(reference_x, target, weight=weight.detach()).backward()
        assert torch.allclose(x.grad, reference_x.grad)
        assert "requires grad gets no gradient" in " ".join(getattr(al, loss).__doc__.split())


# --------------------------------------------------------------------------- item 4


class TestItem4DaskUnknownChunkSizes:
    """After boolean indexing a Dask array's chunk sizes are NaN: cross-entropy's error
    quoted ``(nan,)`` shapes, and Gaussian NLL's mean divided by a NaN count."""

    @staticmethod
    def _masked(values: np.ndarray, chunks: int = 3) -> Any:
        dask_array = pytest.importorskip("dask.array")
        keep = np.ones(values.shape[0], dtype=bool)
        keep[2] = False
        return dask_array.from_array(values, chunks=chunks)[dask_array.from_array(keep,
                                                                                  chunks=chunks)]

    def test_gaussian_nll_mean_is_not_nan(self) -> None:
        dask_array = pytest.importorskip("dask.array")
        x = self._masked(np.ones(6))
        with pytest.raises(ValueError, match=r"input has unknown chunk sizes.*"
                                             r"input\.compute_chunk_sizes\(\)"):
            al.gaussian_nll_loss(x, dask_array.asarray(1.0), 2.0)
        # The suggestion works, and gives PyTorch's answer.
        loss = al.gaussian_nll_loss(x.compute_chunk_sizes(), dask_array.asarray(1.0), 2.0)
        expected = F.gaussian_nll_loss(torch.ones(5, dtype=torch.float64),
                                       torch.tensor(1.0, dtype=torch.float64), 2.0)
        _same(loss.compute(), expected)

    @pytest.mark.parametrize("loss", ["cross_entropy", "nll_loss"])
    def test_class_losses_name_the_problem(self, loss: str) -> None:
        x = self._masked(np.random.default_rng(4).standard_normal((8, 3)), chunks=4)
        target = self._masked(np.arange(8) % 3, chunks=4)
        with pytest.raises(ValueError, match="input has unknown chunk sizes") as caught:
            getattr(al, loss)(x, target)
        assert "nan" not in str(caught.value)
        with pytest.raises(ValueError, match="unknown chunk sizes"):
            getattr(al, f"{loss}_backward" if loss == "cross_entropy" else "nll_loss_backward")(
                1.0, x, target)

    def test_grad_output(self) -> None:
        dask_array = pytest.importorskip("dask.array")
        x = dask_array.from_array(np.ones(5), chunks=2)
        with pytest.raises(ValueError, match="grad_output has unknown chunk sizes"):
            al.gaussian_nll_loss_backward(self._masked(np.ones(6)), x, x, x, reduction="none")


# --------------------------------------------------------------------------- items 7 to 9

_X = np.random.default_rng(8).standard_normal((4, 3))
_T = np.array([0, 1, 2, 0])
_TORCH_LOSSES = {
    "cross_entropy": (lambda x, **o: al.cross_entropy(x, torch.tensor(_T), **o),
                      lambda x: F.cross_entropy(x, torch.tensor(_T))),
    "cross_entropy_smoothed": (
        lambda x, **o: al.cross_entropy(x, torch.tensor(_T), torch.tensor([1.0, 2.0, 0.5],
                                        dtype=x.dtype), label_smoothing=0.1, **o),
        lambda x: F.cross_entropy(x, torch.tensor(_T), torch.tensor([1.0, 2.0, 0.5],
                                  dtype=x.dtype), label_smoothing=0.1)),
    "nll_loss": (lambda x, **o: al.nll_loss(x, torch.tensor(_T), **o),
                 lambda x: F.nll_loss(x, torch.tensor(_T))),
    "gaussian_nll_loss": (lambda x, **o: al.gaussian_nll_loss(x, x * 0 + 0.5, x * x + 1, **o),
                          lambda x: F.gaussian_nll_loss(x, x * 0 + 0.5, x * x + 1)),
    # A target of another shape: the broadcast warning under Dynamo (it traces no frames).
    "mse_loss_broadcast": (lambda x, **o: al.mse_loss(x[:, :1], x[0] * 0 + 0.5, **o),
                           lambda x: F.mse_loss(x[:, :1], x[0] * 0 + 0.5)),
    # The head: its forward's gradients, kept for the backward, stay out of Dynamo's trace.
    "linear_cross_entropy": (
        lambda x, **o: al.linear_cross_entropy(x, x[:3] * 0.5, torch.tensor(_T), **o),
        lambda x: F.linear_cross_entropy(x, x[:3] * 0.5, torch.tensor(_T))),
    "linear_cross_entropy_none": (
        lambda x, **o: al.linear_cross_entropy(x, x[:3] * 0.5, torch.tensor(_T),
                                               reduction="none", **o).sum(),
        lambda x: F.linear_cross_entropy(x, x[:3] * 0.5, torch.tensor(_T),
                                         reduction="none").sum()),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Dynamo's notes on functools caches
# Dynamo's own tracing of any autograd.Function warns so (torch 2.13), not arrayloss's code.
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
class TestItem7TorchCompileFullGraph:
    """``torch.compile(fullgraph=True)`` failed even with ``validate=False``: Dynamo read an
    uninitialised cell at a ``:=``, then NumPy's namespace, a ContextVar, a dtype query."""

    @pytest.mark.parametrize("name", sorted(_TORCH_LOSSES))
    def test_forward_and_training_step(self, name: str) -> None:
        ours, reference = _TORCH_LOSSES[name]
        torch._dynamo.reset()
        load_lazy_modules()
        x = torch.tensor(_X)
        compiled = torch.compile(lambda x: ours(x, validate=False), fullgraph=True,
                                 backend="eager")
        assert torch.allclose(compiled(x), reference(x))
        leaf = x.clone().requires_grad_(True)
        compiled(leaf).backward()
        expected = x.clone().requires_grad_(True)
        reference(expected).backward()
        assert torch.allclose(leaf.grad, expected.grad)


class TestItem8TorchFunc:
    """``torch.func.grad``, ``jacrev`` and ``functional_call`` + ``grad`` failed: the
    ``autograd.Function`` had no ``setup_context``."""

    @pytest.mark.parametrize("name", sorted(_TORCH_LOSSES))
    def test_grad_and_jacrev(self, name: str) -> None:
        ours, reference = _TORCH_LOSSES[name]
        x = torch.tensor(_X)
        assert torch.allclose(torch.func.grad(ours)(x), torch.func.grad(reference)(x))
        assert torch.allclose(torch.func.jacrev(ours)(x), torch.func.jacrev(reference)(x))

    def test_functional_call(self) -> None:
        model = torch.nn.Linear(3, 3).double()
        params = dict(model.named_parameters())
        target = torch.tensor(_T)

        def loss_of(loss: Any) -> Any:
            return lambda p: loss(torch.func.functional_call(model, p, (torch.tensor(_X),)),
                                  target)

        ours = torch.func.grad(loss_of(al.cross_entropy))(params)
        expected = torch.func.grad(loss_of(F.cross_entropy))(params)
        for key in params:
            assert torch.allclose(ours[key], expected[key])

    def test_vmap_of_grad_per_sample(self) -> None:
        batch = torch.tensor(np.random.default_rng(9).standard_normal((5, 4, 3)))
        target = torch.tensor(_T)
        ours = torch.func.vmap(torch.func.grad(
            lambda x: al.cross_entropy(x, target, validate=False)))(batch)
        expected = torch.func.vmap(torch.func.grad(
            lambda x: F.cross_entropy(x, target)))(batch)
        assert torch.allclose(ours, expected)

    def test_vjp(self) -> None:
        x = torch.tensor(_X)
        one = torch.tensor(1.0, dtype=torch.float64)
        _, ours = torch.func.vjp(lambda x: al.cross_entropy(x, torch.tensor(_T)), x)
        _, expected = torch.func.vjp(lambda x: F.cross_entropy(x, torch.tensor(_T)), x)
        assert torch.allclose(ours(one)[0], expected(one)[0])

    def test_second_derivative_refused(self) -> None:
        x = torch.tensor(_X)
        target = torch.tensor(_T)

        def loss(x: Any) -> Any:
            return al.cross_entropy(x, target, validate=False)

        def through_vjp(x: Any) -> Any:
            _, pullback = torch.func.vjp(loss, x)
            return pullback(torch.tensor(1.0, dtype=torch.float64))[0].sum()

        inner = torch.func.grad(loss)
        for second in (lambda: torch.func.grad(lambda x: inner(x).sum())(x),
                       lambda: torch.func.jacrev(torch.func.jacrev(loss))(x),
                       lambda: torch.func.grad(through_vjp)(x),
                       lambda: torch.func.grad(lambda y: torch.func.vmap(inner)(y).sum())(
                           torch.stack([x, x]))):
            with pytest.raises(RuntimeError, match="differentiable once"):
                second()
        leaf = x.clone().requires_grad_(True)
        with pytest.raises(RuntimeError, match="differentiable once"):
            torch.autograd.grad(al.cross_entropy(leaf, torch.tensor(_T)), leaf,
                                create_graph=True)


class TestItem9VmapWithValidateSaysWhy:
    """``vmap`` over a value-checked argument failed with vmap's generic data-dependence
    message; now the error names the value check and ``validate=False``."""

    def test_message(self) -> None:
        x = torch.tensor(_X)
        var = torch.rand(2, 4, 3, dtype=torch.float64) + 1
        with pytest.raises(ValueError, match=r"var is batched by torch.func.vmap.*"
                                             r"validate=False"):
            torch.func.vmap(lambda v: al.gaussian_nll_loss(x, x, v))(var)
        targets = torch.tensor([[0, 1, 2, 0], [1, 1, 1, 1]])
        with pytest.raises(ValueError, match=r"target is batched.*validate=False"):
            torch.func.vmap(lambda t: al.nll_loss(x, t))(targets)
        ours = torch.func.vmap(lambda t: al.nll_loss(x, t, validate=False))(targets)
        expected = torch.stack([F.nll_loss(x, t) for t in targets])
        assert torch.allclose(ours, expected)


class TestItem8VmapOfGaussianVariants:
    """vmap over a Gaussian NLL whose variance alone is batched wrote a batched operand into
    an unbatched array in place (found while fixing item 8): every variant, per sample."""

    @pytest.mark.parametrize("options", [{}, {"log_var": True}, {"beta": 0.5}, {"full": True}])
    def test_per_sample(self, options: dict[str, Any]) -> None:
        x = torch.tensor(_X)
        batch = torch.rand(3, 4, 3, dtype=torch.float64) + 0.5

        def ours(v: Any) -> Any:
            return al.gaussian_nll_loss(x, x * 0.5, v, validate=False, **options)

        expected = torch.stack([ours(v) for v in batch])
        assert torch.allclose(torch.func.vmap(ours)(batch), expected)
        per_sample = torch.func.vmap(torch.func.grad(ours))(batch)
        assert torch.allclose(per_sample, torch.stack([torch.func.grad(ours)(v)
                                                       for v in batch]))
        if not options:
            reference = torch.stack([torch.func.grad(
                lambda v: F.gaussian_nll_loss(x, x * 0.5, v))(v) for v in batch])
            assert torch.allclose(per_sample, reference)


# --------------------------------------------------------------------------- items 10 and 11


def _run_python(code: str) -> str:
    import subprocess
    import sys
    import textwrap

    result = subprocess.run([sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


class TestItem10JaxWithoutX64Uint32Targets:
    """JAX with x64 off: ``ignore_index=2**32 - 100`` raised JAX's OverflowError, a bad
    uint32 target printed as 18446744073709551516 and the suggested ignore_index failed."""

    def test_in_a_fresh_process(self) -> None:
        pytest.importorskip("jax")
        out = _run_python("""
            import jax, jax.numpy as jnp, numpy as np, arrayloss as al
            assert not jax.config.jax_enable_x64
            x = np.random.default_rng(10).standard_normal((3, 4)).astype(np.float32)
            t = np.array([0, 1, 2**32 - 100], dtype=np.uint32)
            jx, jt = jnp.asarray(x), jnp.asarray(t)
            for loss in (al.nll_loss, al.cross_entropy):
                print(loss.__name__, float(loss(jx, jt, ignore_index=2**32 - 100)),
                      float(loss(x, t, ignore_index=2**32 - 100)))
            grad = jax.grad(lambda z: al.nll_loss(z, jt, ignore_index=2**32 - 100))(jx)
            print("grad", np.asarray(grad).ravel().tolist())
            try:
                al.nll_loss(jx, jt)
            except al.TargetOutOfRangeError as error:
                print("error", error)
        """)
        lines = out.splitlines()
        for line in lines[:2]:  # JAX as NumPy (int64 arithmetic, the reference here)
            _, on_jax, on_numpy = line.split()
            assert float(on_jax) == pytest.approx(float(on_numpy), rel=1e-6)
        x = np.random.default_rng(10).standard_normal((3, 4)).astype(np.float32)
        expected = F.nll_loss(torch.tensor(x), torch.tensor([0, 1, -100])).item()
        assert float(lines[0].split()[1]) == pytest.approx(expected, rel=1e-6)
        grad = np.array([float(v) for v in lines[2].split(" ", 1)[1].strip("[]").split(",")])
        assert np.allclose(grad.reshape(3, 4)[2], 0) and grad.reshape(3, 4)[0, 0] == -0.5
        assert "target contains 4294967196" in lines[3]
        assert "pass ignore_index=4294967196" in lines[3]


class TestItem11JaxSecondDerivativesRefused:
    """JAX differentiated the explicit backward for a second derivative: a Hessian with
    respect to a variance below eps was 0 (PyTorch 1.1e16), the beta-NLL curvature wrong.
    Refused clearly now, as the torch bridge refuses ``create_graph=True``."""

    def test_refused_and_first_derivative_kept(self) -> None:
        jax = pytest.importorskip("jax")
        jnp = pytest.importorskip("jax.numpy")
        jax.config.update("jax_enable_x64", True)  # as the backend matrix sets it
        x, t = jnp.asarray([0.5, 1.0]), jnp.zeros(2)
        var = jnp.asarray([1e-8, 2.0])
        for options in ({}, {"beta": 0.5}):
            def f(v: Any, options: dict[str, Any] = options) -> Any:
                return al.gaussian_nll_loss(x, t, v, **options)

            for second in (jax.hessian, lambda g: jax.grad(lambda v: jax.grad(g)(v).sum()),
                           lambda g: jax.jit(jax.jacrev(jax.jacrev(g)))):
                with pytest.raises(RuntimeError, match="differentiable once"):
                    second(f)(var)
        with pytest.raises(RuntimeError, match="differentiable once"):
            jax.hessian(lambda z: al.cross_entropy(z, jnp.asarray([0, 1])))(jnp.ones((2, 3)))
        # The first derivative is PyTorch's.
        tv = torch.tensor(np.asarray(var), requires_grad=True)
        F.gaussian_nll_loss(torch.tensor(np.asarray(x)), torch.zeros(2, dtype=torch.float64),
                            tv).backward()
        ours = jax.jit(jax.grad(lambda v: al.gaussian_nll_loss(x, t, v)))(var)
        np.testing.assert_allclose(np.asarray(ours), tv.grad.numpy(), rtol=1e-12)


# --------------------------------------------------------------------------- issue 34


def _loss_grad_both(loss: Any, backward: Any, both: Any, args: tuple[Any, ...],
                    options: dict[str, Any]) -> list[Any]:
    """The loss, its backward and the fused pair (for a reduced loss), as NumPy arrays."""
    value = loss(*args, **options)
    upstream = (np.linspace(0.5, 2.0, value.size).astype(value.dtype).reshape(value.shape)
                if options.get("reduction") == "none" else 0.75)
    results = [value, backward(upstream, *args, **options)]
    if options.get("reduction") != "none":
        results += list(both(*args, **options))
    return [np.asarray(r) for r in results]


def _flatten(results: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for result in results:
        flat.extend(result if isinstance(result, tuple) else [result])
    return flat


class TestIssue34Float16FastPathsMatchGeneric:
    """Every NumPy fast path in float16 against the generic code on the same data, bit for
    bit after the one rounding: cross-entropy rounded ``q (1 - eps)`` to float16 (probability
    targets with label smoothing), and its fused factors rounded differently in float32."""

    @staticmethod
    def _generic(monkeypatch: pytest.MonkeyPatch) -> None:
        from arrayloss._agnostic import _gaussian_numpy, _nll_numpy, gaussian_nll, nll
        from arrayloss._agnostic import cross_entropy as cross_entropy_module

        monkeypatch.setattr(cross_entropy_module, "numpy_route", lambda call: None)
        monkeypatch.setattr(_nll_numpy, "route", lambda call: None)
        monkeypatch.setattr(nll, "_sample_blocks", lambda call: None)
        monkeypatch.setattr(_gaussian_numpy, "applies", lambda call: False)
        monkeypatch.setattr(gaussian_nll, "row_blocks", lambda xp, shape: None)

    @staticmethod
    def _compare(monkeypatch: pytest.MonkeyPatch, loss: str, args: tuple[Any, ...],
                 options: dict[str, Any]) -> None:
        functions = (getattr(al, loss), getattr(al, f"{loss}_backward"),
                     getattr(al, f"{loss}_and_grad"))
        fast = _flatten(_loss_grad_both(*functions, args, options))
        with monkeypatch.context() as patch:
            TestIssue34Float16FastPathsMatchGeneric._generic(patch)
            generic = _flatten(_loss_grad_both(*functions, args, options))
        for ours, reference in zip(fast, generic, strict=True):
            assert ours.dtype == reference.dtype
            np.testing.assert_array_equal(ours, reference, strict=True)

    def test_the_issue_example(self) -> None:
        x = np.array([[0.5, 0.3, 1.7]], np.float16)
        q = np.array([[0.17, 0.01, 0.82]], np.float16)
        grad = al.cross_entropy_backward(1.0, x, q, label_smoothing=0.15, reduction="sum")
        on_torch = al.cross_entropy_backward(1.0, torch.tensor(x), torch.tensor(q),
                                             label_smoothing=0.15, reduction="sum")
        np.testing.assert_array_equal(grad, on_torch.numpy())
        reference = torch.tensor(x, dtype=torch.float32, requires_grad=True)
        F.cross_entropy(reference, torch.tensor(q, dtype=torch.float32), label_smoothing=0.15,
                        reduction="sum").backward()
        # float32 math rounded once: within a float16 ulp of PyTorch's float32 gradient.
        np.testing.assert_allclose(grad.astype(np.float32), reference.grad.numpy(),
                                   rtol=1e-3, atol=6e-8)

    @pytest.mark.parametrize("shape", [(7, 5), (5000, 40), (300, 3), (4, 6, 9), (2, 3, 40000)])
    @pytest.mark.parametrize("probabilities", [False, True])
    @pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
    @pytest.mark.parametrize("weighted", [False, True])
    @pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
    def test_cross_entropy(self, monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...],
                           probabilities: bool, label_smoothing: float, weighted: bool,
                           reduction: str) -> None:
        rng = np.random.default_rng(34)
        n_classes = shape[1]
        x = (rng.standard_normal(shape) * 3).astype(np.float16)
        sample_shape = (shape[0], *shape[2:])
        target: Any
        if probabilities:
            q = rng.random(shape)
            target = (q / q.sum(axis=1, keepdims=True)).astype(np.float16)
        else:
            target = rng.integers(0, n_classes, sample_shape)
            target.reshape(-1)[::7] = -100
        weight = (rng.random(n_classes) + 0.5).astype(np.float16) if weighted else None
        self._compare(monkeypatch, "cross_entropy", (x, target, weight),
                      {"label_smoothing": label_smoothing, "reduction": reduction})

    @pytest.mark.parametrize("shape", [(7, 5), (5000, 40), (4, 6, 9), (300, 3, 5000)])
    @pytest.mark.parametrize("ignored", [False, True])
    @pytest.mark.parametrize("weighted", [False, True])
    @pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
    def test_nll(self, monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], ignored: bool,
                 weighted: bool, reduction: str) -> None:
        rng = np.random.default_rng(35)
        x = (rng.standard_normal(shape) * 3).astype(np.float16)
        target = rng.integers(0, shape[1], (shape[0], *shape[2:]))
        if ignored:
            target.reshape(-1)[::5] = -100
        weight = (rng.random(shape[1]) + 0.5).astype(np.float16) if weighted else None
        self._compare(monkeypatch, "nll_loss", (x, target, weight), {"reduction": reduction})

    @pytest.mark.parametrize("options", [{}, {"full": True}, {"log_var": True},
                                         {"beta": 0.5}])
    @pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
    def test_gaussian_nll(self, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any],
                          reduction: str) -> None:
        rng = np.random.default_rng(36)
        for shape in ((9, 4), (1 << 11, 1 << 10)):  # one block, and the blocked path
            x = rng.standard_normal(shape).astype(np.float16)
            target = rng.standard_normal(shape).astype(np.float16)
            var = (rng.random(shape) + 0.1).astype(np.float16)
            self._compare(monkeypatch, "gaussian_nll_loss", (x, target, var),
                          {**options, "reduction": reduction})
