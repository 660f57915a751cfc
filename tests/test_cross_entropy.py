"""Cross-entropy beyond the parity table: its errors, ``out``, finite differences, memory, the
blocked NumPy path and the module object.  (PyTorch parity over the backend matrix is in
``test_parity.py``, autograd in ``test_autograd.py``, the kernels in ``test_hostcuda.py``.)"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import numpy as np
import pytest
from _helpers import from_numpy, to_numpy

import arrayloss as al


def _logits(xp: Any, shape: tuple[int, ...] = (5, 4)) -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    return (from_numpy(xp, rng.normal(size=shape)),
            from_numpy(xp, rng.integers(0, n_classes, target_shape)))


# ------------------------------------------------------------------ errors


class TestErrors:
    @pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), float("inf")])
    def test_label_smoothing_outside_0_1(self, xp: Any, value: float) -> None:
        # PyTorch rejects values above 1 and silently ignores negative ones.
        with pytest.raises(ValueError, match=r"label_smoothing must be between 0.0 and 1.0"):
            al.cross_entropy(*_logits(xp), label_smoothing=value)

    @pytest.mark.parametrize("value", ["0.1", None, True, 1j])
    def test_label_smoothing_not_a_number(self, xp: Any, value: Any) -> None:
        with pytest.raises(TypeError, match="label_smoothing must be a real number"):
            al.cross_entropy(*_logits(xp), label_smoothing=value)

    def test_probability_target_of_another_shape(self, xp: Any) -> None:
        logits, _ = _logits(xp)
        with pytest.raises(ValueError, match=r"class probabilities and must have the input's"):
            al.cross_entropy(logits, from_numpy(xp, np.full((5, 3), 0.25)))

    def test_probability_target_with_a_class_ignore_index(self, xp: Any) -> None:
        logits, _ = _logits(xp)
        with pytest.raises(ValueError, match="ignore_index=0 is not supported"):
            al.cross_entropy(logits, from_numpy(xp, np.full((5, 4), 0.25)), ignore_index=0)
        # A negative ignore_index (the default among them) is accepted and unused.
        al.cross_entropy(logits, from_numpy(xp, np.full((5, 4), 0.25)), ignore_index=-1)

    def test_index_target_of_another_shape(self, xp: Any) -> None:
        logits, _ = _logits(xp)
        with pytest.raises(ValueError, match=r"target with shape \(4,\) does not match"):
            al.cross_entropy(logits, from_numpy(xp, np.zeros(4, np.int64)))

    def test_weight_shape_and_dtype(self, xp: Any) -> None:
        logits, target = _logits(xp)
        with pytest.raises(ValueError, match=r"weight must have shape \(C,\) = \(4,\)"):
            al.cross_entropy(logits, target, from_numpy(xp, np.ones(3)))
        with pytest.raises(TypeError, match="weight must have the input's dtype"):
            al.cross_entropy(logits, target, from_numpy(xp, np.ones(4, np.float32)))

    def test_target_out_of_range(self, xp: Any) -> None:
        logits, _ = _logits(xp)
        bad = from_numpy(xp, np.array([0, 1, 9, 2, 1]))
        for call in (lambda: al.cross_entropy(logits, bad),
                     lambda: al.cross_entropy_backward(1.0, logits, bad),
                     lambda: al.cross_entropy_and_grad(logits, bad, label_smoothing=0.1)):
            with pytest.raises(al.TargetOutOfRangeError, match=r"target contains 9.*\[0, 4\)"):
                call()

    def test_and_grad_needs_a_scalar_loss(self, xp: Any) -> None:
        with pytest.raises(ValueError, match="cross_entropy_and_grad needs reduction='mean'"):
            al.cross_entropy_and_grad(*_logits(xp), reduction="none")

    def test_grad_output_shape(self, xp: Any) -> None:
        with pytest.raises(ValueError, match=r"grad_output must have the loss's shape \(5,\)"):
            al.cross_entropy_backward(from_numpy(xp, np.ones(4)), *_logits(xp),
                                      reduction="none")


class TestOutErrors:
    def test_wrong_shape_dtype_or_library(self) -> None:
        logits, target = _logits(np)
        with pytest.raises(ValueError, match="out must have the input's shape"):
            al.cross_entropy_and_grad(logits, target, out=np.empty((5, 3)))
        with pytest.raises(TypeError, match="out must have the input's dtype"):
            al.cross_entropy_and_grad(logits, target, out=np.empty((5, 4), np.float32))
        with pytest.raises(TypeError, match="out must be an array"):
            al.cross_entropy_and_grad(logits, target, out=[0.0] * 20)

    def test_read_only_or_overlapping(self) -> None:
        logits, target = _logits(np)
        read_only = np.empty((5, 4))
        read_only.flags.writeable = False
        with pytest.raises(ValueError, match="out is read-only"):
            al.cross_entropy_and_grad(logits, target, out=read_only)
        wide = np.zeros((6, 4))
        wide[:5] = logits
        with pytest.raises(ValueError, match="out overlaps input"):
            al.cross_entropy_and_grad(wide[:5], target, out=wide[1:])
        probs = np.full((5, 4), 0.25)
        with pytest.raises(ValueError, match="out must not share memory with target"):
            al.cross_entropy_and_grad(logits, probs, out=probs)

    def test_jax_arrays_are_immutable(self) -> None:
        jnp = pytest.importorskip("jax.numpy")
        logits, target = jnp.zeros((3, 2)), jnp.array([0, 1, 0])
        with pytest.raises(TypeError, match="out is not supported for JAX arrays"):
            al.cross_entropy_and_grad(logits, target, out=logits)


# ------------------------------------------------------------------ out


@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 4), (2000, 300)])
@pytest.mark.parametrize("probabilities", [False, True])
def test_out_equals_the_returned_gradient(xp: Any, backend_name: str, shape: tuple[int, ...],
                                          probabilities: bool) -> None:
    if backend_name == "jax":
        pytest.skip("JAX arrays are immutable: no out")
    rng = np.random.default_rng(1)
    values = rng.normal(size=shape)
    if probabilities:
        target = from_numpy(xp, rng.dirichlet(np.ones(shape[1]), size=(shape[0], *shape[2:]))
                            .transpose(0, -1, *range(1, len(shape) - 1)).copy())
    else:
        target = from_numpy(xp, rng.integers(0, shape[1], (shape[0], *shape[2:])))
    options = {"label_smoothing": 0.1}
    want_loss, want_grad = al.cross_entropy_and_grad(from_numpy(xp, values), target, **options)
    fresh = from_numpy(xp, np.zeros(shape))
    loss, grad = al.cross_entropy_and_grad(from_numpy(xp, values), target, out=fresh, **options)
    assert grad is fresh
    np.testing.assert_array_equal(to_numpy(grad), to_numpy(want_grad))
    logits = from_numpy(xp, values)
    loss, grad = al.cross_entropy_and_grad(logits, target, out=logits, **options)
    assert grad is logits  # the logits are consumed
    np.testing.assert_array_equal(to_numpy(logits), to_numpy(want_grad))
    assert float(loss) == float(want_loss)


def test_out_with_a_strided_layout() -> None:
    rng = np.random.default_rng(2)
    logits, target = rng.normal(size=(40, 30)), rng.integers(0, 30, 40)
    want = al.cross_entropy_backward(1.0, logits, target)
    out = np.zeros((30, 40)).T
    _, grad = al.cross_entropy_and_grad(logits, target, out=out)
    assert grad is out
    np.testing.assert_array_equal(out, want)
    transposed = np.ascontiguousarray(logits.T).T  # input itself non-contiguous, consumed
    _, grad = al.cross_entropy_and_grad(transposed, target, out=transposed)
    np.testing.assert_allclose(transposed, want, rtol=1e-15)


# ------------------------------------------------------------------ finite differences


def _finite_difference(function: Any, x: np.ndarray, step: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        grad[index] = (float(function(up)) - float(function(down))) / (2 * step)
    return grad


@pytest.mark.parametrize("kind", ["index", "probabilities"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(4, 5), (5,), (2, 5, 3)])
def test_gradient_matches_finite_differences(kind: str, reduction: str,
                                             shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape)
    weight = rng.uniform(0.5, 2, 5)
    options: dict[str, Any] = {"reduction": reduction, "label_smoothing": 0.15}
    if kind == "index":
        target = rng.integers(0, 5, () if len(shape) == 1 else (shape[0], *shape[2:]))
        if target.ndim:
            target.reshape(-1)[0] = 2
            options["ignore_index"] = 2
    else:
        target = rng.uniform(0, 1, shape)
    grad = al.cross_entropy_backward(1.0, x, target, weight, **options)
    numeric = _finite_difference(lambda z: al.cross_entropy(z, target, weight, **options), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ the NumPy blocks


@pytest.mark.parametrize("shape", [(3000, 700), (3, 200_000), (2, 40, 30_000)])
def test_blocked_numpy_path_matches_the_single_block(shape: tuple[int, ...]) -> None:
    strict = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(4)
    x = rng.normal(size=shape).astype(np.float32)
    target = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    target.reshape(-1)[::7] = -100
    weight = rng.uniform(0.5, 2, shape[1]).astype(np.float32)
    options = {"label_smoothing": 0.1}
    loss, grad = al.cross_entropy_and_grad(x, target, weight, **options)
    whole_loss, whole_grad = al.cross_entropy_and_grad(
        strict.asarray(x), strict.asarray(target), strict.asarray(weight), **options)
    np.testing.assert_allclose(float(loss), float(whole_loss), rtol=1e-5)
    np.testing.assert_allclose(grad, np.asarray(whole_grad), rtol=1e-5, atol=1e-9)
    none = al.cross_entropy(x, target, weight, reduction="none", **options)
    np.testing.assert_allclose(none, np.asarray(al.cross_entropy(
        strict.asarray(x), strict.asarray(target), strict.asarray(weight), reduction="none",
        **options)), rtol=1e-5)


@pytest.mark.parametrize("samples", [1, 2, 7, 8192])
@pytest.mark.parametrize("n_classes", [2, 9, 16])
def test_reductions_over_few_classes_keep_one_order_in_either_layout(samples: int,
                                                                     n_classes: int) -> None:
    # Blocks of few classes compute class-major; a reduction over the classes must give
    # ((x0 op x1) op x2) ... bit for bit in either layout, so a sample's loss does not
    # depend on the block (or the number of workers) it falls in.
    from arrayloss._agnostic._cross_entropy_numpy import _over_classes

    rng = np.random.default_rng(samples * n_classes)
    x = (rng.standard_normal((samples, n_classes))
         * rng.choice([1e-3, 1.0, 1e4], (samples, n_classes))).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    for ufunc in (np.maximum, np.add):
        expected = x[:, 0].copy()
        for c in range(1, n_classes):
            expected = ufunc(expected, x[:, c])
        for block in (np.ascontiguousarray(x), np.ascontiguousarray(x.T).T):
            out = np.empty((samples, 1, 1), np.float32)
            result = _over_classes(ufunc, block[:, :, None], out)
            np.testing.assert_array_equal(result[:, 0, 0], expected)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_numpy_gradient_at_flat_target_positions_matches_pytorch(smoothing: float) -> None:
    # (N, C) blocks take and put the targets' entries at flat positions: ignored and (with
    # validate=False) out-of-range targets must leave their rows' other entries alone.
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(70_000, 6)).astype(np.float32)
    target = rng.integers(0, 6, 70_000)
    target[::5], target[1::11] = -100, 9  # ignored; out of range (inactive, no error)
    weight = rng.uniform(0.5, 2, 6).astype(np.float32)
    loss, grad = al.cross_entropy_and_grad(x, target, weight, label_smoothing=smoothing,
                                           validate=False)
    active = (target >= 0) & (target < 6)
    logits = torch.tensor(x[active], requires_grad=True)
    expected = torch.nn.functional.cross_entropy(
        logits, torch.tensor(target[active]), torch.tensor(weight), label_smoothing=smoothing)
    expected.backward()
    np.testing.assert_allclose(float(loss), expected.item(), rtol=1e-5)
    np.testing.assert_allclose(grad[active], logits.grad.numpy(), rtol=1e-4, atol=1e-10)
    np.testing.assert_array_equal(grad[~active], 0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_probability_targets_beyond_the_one_pass_sum_match_pytorch(xp: Any,
                                                                  smoothing: float) -> None:
    # sum(q) lse - sum(q z) is NaN for an infinite probability where lse is 0 (row 0) or at
    # the largest logit (row 3, inf * 0 in sum(q z)), and overflows for probabilities near
    # the largest float64 (row 1): such rows are summed term by term, as PyTorch does.
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    x = rng.normal(size=(40, 5))
    x[0] = [-50.0, 50.0, -60.0, 10.0, 0.0]
    x[1] = [1.0, 2.0, -30.0, -30.0, -30.0]
    x[3] = [2.0, 2.0, 0.0, 0.0, 0.0]
    q = rng.dirichlet(np.ones(5), 40)
    q[0, 0], q[2, 3] = np.inf, -np.inf
    q[1] = [1e308, 1e308, 0.0, 0.0, 0.0]
    q[3] = [np.inf, 0.0, 0.1, 0.0, 0.0]
    want = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(q),
                                             reduction="none", label_smoothing=smoothing)
    got = al.cross_entropy(from_numpy(xp, x), from_numpy(xp, q), reduction="none",
                           label_smoothing=smoothing)
    np.testing.assert_allclose(to_numpy(got), want.numpy(), rtol=1e-12)
    assert np.isfinite(want[1].item()) and np.isinf(want[[0, 2, 3]].numpy()).all()
    # out=input: the exponential overwrites the logits before the loss is known.
    for row in (0, 3):
        rows = [row, *range(4, 40)]
        logits = np.ascontiguousarray(x[rows])
        loss, _ = al.cross_entropy_and_grad(logits, q[rows], reduction="sum",
                                            label_smoothing=smoothing, out=logits)
        total = torch.nn.functional.cross_entropy(
            torch.tensor(x[rows]), torch.tensor(q[rows]), reduction="sum",
            label_smoothing=smoothing).item()
        assert float(loss) == total == np.inf


def test_class_weighted_probabilities_overflow_as_pytorchs(xp: Any) -> None:
    # PyTorch multiplies logp q, then w: a weight above 1 can keep a term finite that q w
    # alone would overflow, one below 1 cannot save a logp q that overflowed.
    torch = pytest.importorskip("torch")
    for logits, weight in (([0.0, -5.0], [10.0, 1.0]), ([0.0, 2.0], [0.5, 1.0])):
        x, q, w = np.array([logits]), np.array([[1e308, 0.0]]), np.array(weight)
        want = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(q),
                                                 torch.tensor(w), reduction="none")
        got = al.cross_entropy(from_numpy(xp, x), from_numpy(xp, q), from_numpy(xp, w),
                               reduction="none")
        np.testing.assert_allclose(to_numpy(got), want.numpy(), rtol=1e-12)


def test_numpy_forward_allocates_o_of_n_plus_blocks() -> None:
    """The forward with index targets keeps no N x C temporary: its peak is the per-sample
    arrays plus a few cache-sized blocks per worker thread (PyTorch's log-softmax alone
    allocates the input's size)."""
    rng = np.random.default_rng(5)
    n, n_classes = 2048, 4096
    x = rng.normal(size=(n, n_classes)).astype(np.float32)  # 32 MiB
    target = rng.integers(0, n_classes, n)
    for smoothing in (0.0, 0.1):
        al.cross_entropy(x, target, label_smoothing=smoothing)  # warm up the thread pool
        gc.collect()
        tracemalloc.start()
        al.cross_entropy(x, target, label_smoothing=smoothing)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB for a 32 MiB input"


def test_and_grad_allocates_the_gradient_once() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2048, 4096)).astype(np.float16)  # 16 MiB
    target = rng.integers(0, 4096, 2048)
    for out in (None, x.copy()):
        al.cross_entropy_and_grad(x, target)
        gc.collect()
        tracemalloc.start()
        al.cross_entropy_and_grad(x, target, out=out)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        gradient = 0 if out is not None else x.nbytes
        assert peak < gradient + 12 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_inputs_are_not_modified_without_out(xp: Any) -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(size=(6, 5))
    logits = from_numpy(xp, values)
    al.cross_entropy_and_grad(logits, from_numpy(xp, rng.integers(0, 5, 6)),
                              label_smoothing=0.3)
    np.testing.assert_array_equal(to_numpy(logits), values)


# ------------------------------------------------------------------ the module


def test_module_holds_and_checks_its_options() -> None:
    with pytest.raises(ValueError, match="label_smoothing"):
        al.CrossEntropyLoss(label_smoothing=2.0)
    with pytest.raises(TypeError, match="weight must be an array or None"):
        al.CrossEntropyLoss(weight=[1.0, 2.0])
    weight = np.array([1.0, 2.0, 0.5])
    loss_fn = al.CrossEntropyLoss(weight, ignore_index=1, reduction="sum", label_smoothing=0.2)
    assert repr(loss_fn) == ("CrossEntropyLoss(weight=<array of shape (3,)>, ignore_index=1, "
                             "reduction='sum', label_smoothing=0.2, validate=True)")
    rng = np.random.default_rng(8)
    x, t = rng.normal(size=(4, 3)), np.array([0, 1, 2, 2])
    options = {"ignore_index": 1, "reduction": "sum", "label_smoothing": 0.2}
    assert float(loss_fn(x, t)) == float(al.cross_entropy(x, t, weight, **options))
    np.testing.assert_array_equal(loss_fn.backward(1.0, x, t),
                                  al.cross_entropy_backward(1.0, x, t, weight, **options))
    _, grad = loss_fn.loss_and_grad(x, t, out=x)
    assert grad is x
