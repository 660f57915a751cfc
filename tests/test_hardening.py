"""What real programs do to a loss library: fork, atexit, np.seterr, masked arrays, huge
Python numbers, meta tensors, odd dtypes, 0-d results, threads.  Each test failed before its
fix (issue "No hang, no crash, no silently wrong answer")."""

from __future__ import annotations

import contextvars
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import arrayloss as al

LARGE = 1 << 21  # above _blocked.MIN_ELEMENTS: the NumPy thread pool runs


def _run_script(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_no_hang_in_a_forked_child() -> None:
    out = _run_script(f"""
        import os, multiprocessing as mp, numpy as np, arrayloss as al
        x = np.linspace(-1, 1, {LARGE})
        print("parent", float(al.gaussian_nll_loss(x, x * 0.5, 1.0)))
        pid = os.fork()
        if pid == 0:
            print("child", float(al.gaussian_nll_loss(x, x * 0.5, 1.0)), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        ctx = mp.get_context("fork")
        with ctx.Pool(2) as pool:
            print("pool", pool.apply(al.gaussian_nll_loss_and_grad, (x, x * 0.5, 2.0))[0])
    """)
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    x = np.linspace(-1, 1, LARGE)
    expected = float(np.mean(0.5 * (x * 0.5) ** 2))
    assert float(lines["parent"]) == pytest.approx(expected, rel=1e-12)
    assert float(lines["child"]) == float(lines["parent"])
    assert float(lines["pool"]) == pytest.approx(expected / 2 + 0.5 * np.log(2.0), rel=1e-12)


def test_computes_in_an_atexit_handler() -> None:
    out = _run_script(f"""
        import atexit, numpy as np, arrayloss as al
        x = np.full({LARGE}, 2.0)
        al.gaussian_nll_loss(x, x, 1.0)  # the pool exists before shutdown
        atexit.register(lambda: print("atexit", float(al.gaussian_nll_loss(x, x * 0, 1.0))))
    """)
    assert out.strip() == "atexit 2.0"


@pytest.mark.parametrize("size", [7, LARGE])
def test_caller_error_state_does_not_break_correct_answers(size: int) -> None:
    x = np.full(size, 1e-30, dtype=np.float32)  # x**2 underflows: a correct answer all the same
    t = np.zeros(size, dtype=np.float32)
    v = np.full(size, 1e30, dtype=np.float32)
    logits = np.zeros((4, 3))
    with np.errstate(all="raise"):
        loss = al.gaussian_nll_loss(x, t, v)
        _, grads = al.gaussian_nll_loss_and_grad(x, t, v)
        nll = al.nll_loss(logits, np.full(4, -100))  # all ignored: 0/0 = NaN, as in PyTorch
    assert float(loss) == pytest.approx(0.5 * np.log(1e30), rel=1e-6)
    assert np.all(grads[0] == 0) and np.isnan(float(nll))


@pytest.mark.parametrize("shape", [(3, 0), (0, 0), (2, 0, 3)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_zero_classes_forward_and_backward_agree(xp: Any, shape: tuple[int, ...],
                                                 reduction: str) -> None:
    from _helpers import to_numpy

    x = xp.zeros(shape, dtype=xp.float64)
    t = xp.full((shape[0], *shape[2:]), -100, dtype=xp.int64)
    loss = al.nll_loss(x, t, reduction=reduction)
    upstream: Any = 1.0 if reduction != "none" else xp.ones(tuple(loss.shape), dtype=xp.float64)
    grad = al.nll_loss_backward(upstream, x, t, reduction=reduction)
    assert tuple(grad.shape) == shape
    if reduction != "none":
        fused_loss, fused_grad = al.nll_loss_and_grad(x, t, reduction=reduction)
        np.testing.assert_array_equal(to_numpy(fused_loss), to_numpy(loss))
        assert tuple(fused_grad.shape) == shape
    # PyTorch: 'mean' of nothing is NaN, 'sum' 0, 'none' zeros of the target's shape.
    expected = {"mean": np.nan, "sum": 0.0}.get(reduction, np.zeros(tuple(t.shape)))
    np.testing.assert_array_equal(to_numpy(loss), expected)


def test_masked_arrays_are_rejected() -> None:
    masked = np.ma.array([1.0, 2.0, 3.0], mask=[0, 1, 0])
    plain = np.zeros(3)
    for call in (lambda: al.gaussian_nll_loss(masked, plain, 1.0),
                 lambda: al.gaussian_nll_loss(plain, plain, masked),
                 lambda: al.nll_loss(np.ma.zeros((3, 2)), np.zeros(3, np.int64)),
                 lambda: al.gaussian_nll_loss_backward(masked, plain, plain, 1.0,
                                                       reduction="none")):
        with pytest.raises(TypeError, match=r"numpy\.ma\.MaskedArray.*does not apply masks"):
            call()


@pytest.mark.parametrize("name", ["var", "eps", "grad_output"])
def test_python_ints_beyond_float_range_name_the_argument(name: str) -> None:
    huge = 10**400
    x = np.zeros(3)
    arguments: dict[str, Any] = {"var": 1.0, "eps": 1e-6, "grad_output": 1.0, name: huge}
    with pytest.raises(ValueError, match=rf"^{name} is too large for a float"):
        al.gaussian_nll_loss_backward(arguments["grad_output"], x, x, arguments["var"],
                                      eps=arguments["eps"])


def test_meta_tensors_check_shapes_and_say_values_cannot_be() -> None:
    torch = pytest.importorskip("torch")
    meta = torch.zeros(4, 3, device="meta")
    with pytest.raises(ValueError, match=r"meta device, which has no values.*validate=False"):
        al.gaussian_nll_loss(meta, meta, meta)
    with pytest.raises(ValueError, match="meta device"):
        al.nll_loss(meta, torch.zeros(4, dtype=torch.int64, device="meta"))
    loss = al.gaussian_nll_loss(meta, meta, meta[:, :1], validate=False, reduction="none")
    assert loss.is_meta and tuple(loss.shape) == (4, 3)
    with pytest.raises(ValueError, match="does not fit input"):  # shapes still checked
        al.gaussian_nll_loss(meta, meta, meta[:2], validate=False)


def test_jax_tracers_skip_value_checks_only() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x = jnp.asarray([0.5, 1.5])
    loss = jax.jit(lambda x, v: al.gaussian_nll_loss(x, x * 0, v))(x, jnp.asarray([1.0, 2.0]))
    expected = np.mean(0.5 * (np.log([1.0, 2.0]) + np.array([0.25, 2.25]) / [1.0, 2.0]))
    assert float(loss) == pytest.approx(expected)
    with pytest.raises(TypeError, match="real floating dtype"):
        jax.jit(lambda x: al.gaussian_nll_loss(x, x, 1.0))(jnp.asarray([1, 2]))


def test_unclear_errors_made_clear() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes comes with the kernels extra")

    x = np.zeros(2)
    with pytest.raises(TypeError, match="input bfloat16, target float16 have no common type"):
        al.gaussian_nll_loss(np.zeros(2, ml_dtypes.bfloat16), np.zeros(2, np.float16), 1.0)
    with pytest.raises(TypeError, match="another byte order"):
        al.nll_loss(np.zeros((2, 3)), np.zeros(2, np.int64), np.ones(3, ">f8"))
    with al.fused_kernels(np.False_):  # a NumPy bool is a bool
        pass
    with pytest.raises(TypeError, match=r"enabled must be a bool \(True or False\), got int"):
        al.fused_kernels(0).__enter__()
    with pytest.raises(TypeError, match=r"wrt must be .* got bytes"):
        al.gaussian_nll_loss_backward(1.0, x, x, np.ones(2), wrt=b"input")
    with pytest.raises(TypeError, match="contains 1"):
        al.gaussian_nll_loss_backward(1.0, x, x, np.ones(2), wrt=("input", 1))


def test_zero_d_results_are_arrays(xp: Any) -> None:
    x, t, v = (xp.asarray(value, dtype=xp.float64) for value in (1.0, 0.0, 2.0))
    loss = al.gaussian_nll_loss(x, t, v, reduction="none")
    grads = al.gaussian_nll_loss_backward(xp.asarray(1.0, dtype=xp.float64), x, t, v,
                                          reduction="none")
    unbatched = al.nll_loss_backward(xp.asarray(1.0, dtype=xp.float64),
                                     xp.zeros(3, dtype=xp.float32), xp.asarray(1),
                                     reduction="none")
    for result in (loss, *grads):
        assert type(result) is type(x) and result.shape == () and result.dtype == xp.float64
    assert type(unbatched) is type(x) and unbatched.dtype == xp.float32
    assert float(loss) == pytest.approx(0.5 * (np.log(2.0) + 0.5))


def test_fused_kernels_setting_and_threads() -> None:
    # A ContextVar: worker threads start from the default unless handed the context.
    from arrayloss._dispatch import _use_fused

    with al.fused_kernels(False):
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(_use_fused.get).result() is True
            context = contextvars.copy_context()
            assert pool.submit(context.run, _use_fused.get).result() is False


@pytest.mark.parametrize(("x", "t", "v"), [
    (1.7e308, -1.7e308, 1.0),   # 2 d overflows in PyTorch's order: inf gradients
    (1.7e308, 0.0, 1.0),        # (0.5 g / v) (2 d): 2 d overflows
    (1.0, 0.0, 5e-324),         # 0.5 g / v overflows: inf, and NaN for d = 0 below
    (0.0, 0.0, 5e-324),
    (0.0, 1.0, 0.0),            # var = 0 with eps = 0: inf - inf in d var
])
def test_extreme_values_match_pytorch(x: float, t: float, v: float) -> None:
    torch = pytest.importorskip("torch")
    leaves = [torch.tensor([value], dtype=torch.float64, requires_grad=True)
              for value in (x, t, v)]
    loss = torch.nn.functional.gaussian_nll_loss(*leaves, eps=0.0, reduction="sum")
    loss.backward()
    arrays = [np.array([value]) for value in (x, t, v)]
    got_loss, grads = al.gaussian_nll_loss_and_grad(*arrays, eps=0.0, reduction="sum")
    np.testing.assert_array_equal(got_loss, loss.item())
    for got, leaf in zip(grads, leaves, strict=True):
        assert leaf.grad is not None
        np.testing.assert_allclose(got, leaf.grad.numpy(), rtol=1e-15, equal_nan=True)
