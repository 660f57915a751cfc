"""Fused linear cross-entropy against PyTorch 2.13's ``F.linear_cross_entropy``, the unfused
composite ``cross_entropy(h @ W.T + b)``, float64 formulas and finite differences."""

from __future__ import annotations

import itertools
import tracemalloc
from typing import Any

import numpy as np
import pytest

import arrayloss as al
from arrayloss._agnostic import linear_cross_entropy as generic
from arrayloss._linear_calls import CHUNK_BYTES, default_chunk_size, linear_cross_entropy_call

N, D, V = 29, 6, 17
CHUNKS = (1, 7, 64)  # one token, uneven chunks, one chunk for every token


def _data(seed: int = 0, n: int = N, d: int = D, v: int = V) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.integers(0, v, n)
    target[::5] = -100
    probs = rng.dirichlet(np.ones(v), n)
    return {"h": rng.normal(size=(n, d)), "W": rng.normal(size=(v, d)) * 0.7,
            "b": rng.normal(size=v), "t": target, "w": rng.uniform(0.5, 2.0, v),
            "q": probs, "g": rng.uniform(0.5, 1.5, n)}


def _torch_reference(data: dict[str, np.ndarray], *, target: np.ndarray, bias: bool,
                     weight: bool, reduction: str, ignore_index: int = -100,
                     label_smoothing: float = 0.0, z_loss: float = 0.0,
                     softcap: float | None = None, upstream: Any = None,
                     fused: bool = False) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """(loss, lse, [grad_h, grad_W, grad_b]) from PyTorch's autograd of the composite in
    float64 (or of ``F.linear_cross_entropy`` with ``fused``)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    h = torch.tensor(data["h"], requires_grad=True)
    W = torch.tensor(data["W"], requires_grad=True)
    b = torch.tensor(data["b"], requires_grad=True) if bias else None
    w = torch.tensor(data["w"]) if weight else None
    t = torch.tensor(target)
    options = {"weight": w, "ignore_index": ignore_index, "label_smoothing": label_smoothing}
    if t.dtype.is_floating_point:
        options.pop("ignore_index")
    logits = h @ W.T + (b if b is not None else 0)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    lse = torch.logsumexp(logits, dim=1)
    if fused:
        loss = F.linear_cross_entropy(h, W, t, linear_bias=b, reduction=reduction, **options)
    else:
        per_token = F.cross_entropy(logits, t, reduction="none", **options)
        if t.dtype.is_floating_point:
            kept = torch.ones(len(t), dtype=torch.float64)
            divisor = torch.tensor(float(len(t)))
        else:
            kept = ((t != ignore_index) & (t >= 0)).double()
            picked = w[torch.where(t >= 0, t, 0)] if w is not None else torch.ones(len(t))
            divisor = (kept * picked).sum()
        per_token = per_token + z_loss * lse**2 * kept
        loss = {"none": per_token, "sum": per_token.sum(),
                "mean": per_token.sum() / divisor}[reduction]
    grad = (torch.tensor(upstream, dtype=torch.float64) if upstream is not None
            else torch.ones_like(loss))
    loss.backward(grad)
    grads = [h.grad.numpy(), W.grad.numpy(), None if b is None else b.grad.numpy()]
    return loss.detach().numpy(), lse.detach().numpy(), grads


def _assert_grads(got: tuple[Any, ...], want: list[Any], rtol: float = 1e-9,
                  atol: float = 1e-11) -> None:
    for name, mine, theirs in zip(("input", "linear_weight", "linear_bias"), got, want,
                                  strict=True):
        if theirs is None:
            assert mine is None, name
            continue
        np.testing.assert_allclose(np.asarray(mine), theirs, rtol=rtol, atol=atol, err_msg=name)


# --------------------------------------------------------------------------- PyTorch parity

OPTIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"weight": True}, id="weight"),
    pytest.param({"ignore_index": 3}, id="ignore-3"),
    pytest.param({"label_smoothing": 0.2}, id="smoothing"),
    pytest.param({"weight": True, "label_smoothing": 0.1}, id="weight-smoothing"),
    pytest.param({"probabilities": True}, id="probabilities"),
    pytest.param({"probabilities": True, "weight": True, "label_smoothing": 0.3},
                 id="probabilities-weight-smoothing"),
    pytest.param({"z_loss": 1e-2}, id="z-loss"),
    pytest.param({"softcap": 2.5}, id="softcap"),
    pytest.param({"z_loss": 0.05, "softcap": 1.5, "weight": True, "label_smoothing": 0.1},
                 id="everything"),
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_matches_the_composite_and_its_autograd(options: dict[str, Any], reduction: str,
                                                chunk_size: int) -> None:
    data = _data()
    options = dict(options)
    probabilities = options.pop("probabilities", False)
    weight = options.pop("weight", False)
    target = data["q"] if probabilities else data["t"]
    if options.get("ignore_index") == 3:  # the ignored tokens take the other index
        target = np.where(target == -100, 3, target)
    upstream = data["g"] if reduction == "none" else 1.7
    loss_want, lse_want, grads_want = _torch_reference(
        data, target=target, bias=True, weight=weight, reduction=reduction, upstream=upstream,
        **options)
    arguments = (data["h"], data["W"], target)
    kwargs = {"linear_bias": data["b"], "weight": data["w"] if weight else None,
              "reduction": reduction, "chunk_size": chunk_size, **options}
    loss, lse = al.linear_cross_entropy(*arguments, return_lse=True, **kwargs)
    np.testing.assert_allclose(loss, loss_want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, lse_want, rtol=1e-12)
    grads = al.linear_cross_entropy_backward(upstream, *arguments, **kwargs)
    _assert_grads(grads, grads_want)
    if reduction != "none":
        fused_loss, fused_grads = al.linear_cross_entropy_and_grad(*arguments, **kwargs)
        np.testing.assert_allclose(fused_loss, loss_want, rtol=1e-12, atol=1e-12)
        _assert_grads(tuple(g * upstream for g in fused_grads), grads_want)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_torch_linear_cross_entropy(reduction: str, bias: bool) -> None:
    torch = pytest.importorskip("torch")
    if not hasattr(torch.nn.functional, "linear_cross_entropy"):
        pytest.skip("this PyTorch has no F.linear_cross_entropy (new in 2.13)")
    data = _data(1)
    upstream = data["g"] if reduction == "none" else 1.0
    loss_want, _, grads_want = _torch_reference(data, target=data["t"], bias=bias,
                                                weight=True, reduction=reduction,
                                                upstream=upstream, fused=True)
    kwargs = {"linear_bias": data["b"] if bias else None, "weight": data["w"],
              "reduction": reduction, "chunk_size": 8}
    np.testing.assert_allclose(al.linear_cross_entropy(data["h"], data["W"], data["t"],
                                                       **kwargs), loss_want, rtol=1e-12)
    _assert_grads(al.linear_cross_entropy_backward(upstream, data["h"], data["W"], data["t"],
                                                   **kwargs), grads_want)


def test_input_of_any_leading_shape_and_one_token() -> None:
    data = _data(2)
    h3 = data["h"][:28].reshape(4, 7, D)
    t3 = data["t"][:28].reshape(4, 7)
    flat = al.linear_cross_entropy(h3.reshape(28, D), data["W"], t3.reshape(28),
                                   reduction="none")
    np.testing.assert_array_equal(al.linear_cross_entropy(h3, data["W"], t3, reduction="none"),
                                  flat.reshape(4, 7))
    grad_h, _, _ = al.linear_cross_entropy_backward(np.ones((4, 7)), h3, data["W"], t3,
                                                    reduction="none")
    assert grad_h.shape == (4, 7, D)
    one = al.linear_cross_entropy(data["h"][1], data["W"], np.asarray(data["t"][1]))
    np.testing.assert_allclose(one, al.cross_entropy(data["h"][1] @ data["W"].T,
                                                     np.asarray(data["t"][1])), rtol=1e-13)


def test_every_target_ignored_gives_nan_mean_and_zero_gradients() -> None:
    data = _data(3)
    ignored = np.full(N, -100)
    loss, (grad_h, grad_w, grad_b) = al.linear_cross_entropy_and_grad(
        data["h"], data["W"], ignored, linear_bias=data["b"])
    assert np.isnan(loss)
    for grad in (grad_h, grad_w, grad_b):  # as PyTorch's composite: zeros, not NaN
        np.testing.assert_array_equal(grad, 0)


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict", "torch generic",
                                     "torch autograd"])
@pytest.mark.parametrize("upstream", [float("inf"), float("nan")])
def test_a_non_finite_upstream_never_reaches_an_ignored_token(backend: str,
                                                               upstream: float) -> None:
    """PyTorch's gradient of an ignored token is 0 whatever the upstream gradient: an inf or
    NaN one there ('none') spoiled the weight's whole gradient, and a reduced loss's the
    token's own (0 * inf is NaN)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    data = _data(4)
    t = data["t"].copy()
    t[1] = -100
    per_token = np.ones(N)
    per_token[1] = upstream
    for reduction, grad_output in (("none", per_token), ("mean", upstream)):
        want_h = torch.tensor(data["h"], requires_grad=True)
        want_w = torch.tensor(data["W"], requires_grad=True)
        F.linear_cross_entropy(want_h, want_w, torch.tensor(t), reduction=reduction).backward(
            torch.tensor(grad_output))
        arrays = [data["h"], data["W"], t]
        if backend == "array_api_strict":
            xs = pytest.importorskip("array_api_strict")
            arrays, grad_output = [xs.asarray(a) for a in arrays], (
                xs.asarray(grad_output) if reduction == "none" else grad_output)
        if backend.startswith("torch"):
            h = torch.tensor(data["h"], requires_grad=backend == "torch autograd")
            w = torch.tensor(data["W"], requires_grad=backend == "torch autograd")
            arrays, grad_output = [h, w, torch.tensor(t)], torch.tensor(grad_output)
        if backend == "torch autograd":
            al.linear_cross_entropy(*arrays, reduction=reduction).backward(grad_output)
            got_h, got_w = arrays[0].grad.numpy(), arrays[1].grad.numpy()
        else:
            with al.fused_kernels(backend != "torch generic"):
                got_h, got_w, _ = al.linear_cross_entropy_backward(grad_output, *arrays,
                                                                   reduction=reduction)
            got_h, got_w = np.asarray(got_h), np.asarray(got_w)
        kept = t != -100
        np.testing.assert_array_equal(got_h[~kept], 0.0)
        if reduction == "none":  # every other token's gradient is finite, as PyTorch's
            np.testing.assert_allclose(got_h, want_h.grad.numpy(), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(got_w, want_w.grad.numpy(), rtol=1e-12, atol=1e-15)
        else:  # the kept ones' are not finite (which inf or NaN: the order of operations)
            assert not np.isfinite(got_h[kept]).any()


# --------------------------------------------------------------------------- formulas


def _formula(h: np.ndarray, W: np.ndarray, t: np.ndarray, z: float, c: float | None
             ) -> float:
    """The mean loss written out in float64: softcap, log-softmax, z * lse^2 per kept token."""
    logits = h @ W.T
    if c is not None:
        logits = c * np.tanh(logits / c)
    top = logits.max(axis=1, keepdims=True)
    lse = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
    kept = t != -100
    picked = logits[np.arange(len(t)), np.where(kept, t, 0)]
    return float(((lse - picked + z * lse**2) * kept).sum() / kept.sum())


@pytest.mark.parametrize(("z", "c"), [(1e-3, None), (0.0, 0.7), (0.2, 4.0)])
def test_z_loss_and_softcap_follow_their_formulas(z: float, c: float | None) -> None:
    data = _data(4)
    got = al.linear_cross_entropy(data["h"], data["W"], data["t"], z_loss=z, softcap=c,
                                  chunk_size=6)
    np.testing.assert_allclose(got, _formula(data["h"], data["W"], data["t"], z, c),
                               rtol=1e-12)


def test_gradients_match_float64_finite_differences() -> None:
    data = _data(5, n=9, d=4, v=7)
    kwargs = {"linear_bias": data["b"], "weight": data["w"], "label_smoothing": 0.1,
              "z_loss": 0.05, "softcap": 2.0, "chunk_size": 4}
    arrays = {"input": data["h"], "linear_weight": data["W"], "linear_bias": data["b"]}

    def loss(changed: dict[str, np.ndarray]) -> float:
        merged = {**arrays, **changed}
        return float(al.linear_cross_entropy(merged["input"], merged["linear_weight"],
                                             data["t"], **{**kwargs, "linear_bias":
                                                           merged["linear_bias"]}))

    _, grads = al.linear_cross_entropy_and_grad(data["h"], data["W"], data["t"], **kwargs)
    step = 1e-6
    for (name, array), grad in zip(arrays.items(), grads, strict=True):
        for index in itertools.islice(np.ndindex(array.shape), 0, None, 3):
            up, down = array.copy(), array.copy()
            up[index] += step
            down[index] -= step
            numeric = (loss({name: up}) - loss({name: down})) / (2 * step)
            np.testing.assert_allclose(grad[index], numeric, rtol=1e-6, atol=1e-9,
                                       err_msg=f"{name}{index}")


# --------------------------------------------------------------------------- chunks


def test_results_are_deterministic_for_a_chunk_size_and_close_across_sizes() -> None:
    data = _data(6, n=200, d=16, v=50)
    kwargs = {"linear_bias": data["b"], "z_loss": 1e-3, "softcap": 5.0}
    runs = [al.linear_cross_entropy_and_grad(data["h"], data["W"], data["t"], chunk_size=32,
                                             **kwargs) for _ in range(2)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for first, second in zip(runs[0][1], runs[1][1], strict=True):
        np.testing.assert_array_equal(first, second)
    other = al.linear_cross_entropy_and_grad(data["h"], data["W"], data["t"], chunk_size=77,
                                             **kwargs)
    np.testing.assert_allclose(other[0], runs[0][0], rtol=1e-13)
    for first, second in zip(runs[0][1], other[1], strict=True):
        np.testing.assert_allclose(first, second, rtol=1e-11, atol=1e-14)


def test_the_default_chunk_size_rule() -> None:
    assert default_chunk_size(10**6, 32000, 4) == (CHUNK_BYTES // (32000 * 4)) // 16 * 16
    assert default_chunk_size(10**6, 128256, 4, buffers=2) * 128256 * 4 * 2 <= CHUNK_BYTES
    assert default_chunk_size(100, 32000, 4) == 100  # never more than the tokens
    assert default_chunk_size(10**6, 10**9, 8) == 1
    h = np.zeros((5000, 2), np.float16)
    call = linear_cross_entropy_call(
        h, np.zeros((32000, 2), np.float16), np.zeros(5000, np.int64), linear_bias=None,
        weight=None, reduction="mean", ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
        softcap=None, return_lse=False, chunk_size=None, validate=True)
    assert call.chunk_size == default_chunk_size(5000, 32000, 4)  # float32 compute for fp16


def test_no_n_by_v_buffer_at_2048_by_32000() -> None:
    n, d, v = 2048, 64, 32000
    rng = np.random.default_rng(7)
    h = rng.standard_normal((n, d), dtype=np.float32)
    W = rng.standard_normal((v, d), dtype=np.float32) * 0.05
    t = rng.integers(0, v, n)
    al.linear_cross_entropy_and_grad(h[:16], W, t[:16], chunk_size=16)  # warm the buffers
    tracemalloc.start()
    try:
        loss, grads = al.linear_cross_entropy_and_grad(h, W, t, chunk_size=128)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    logits_bytes = n * v * 4
    outputs = sum(g.nbytes for g in grads if g is not None)
    # One (128, V) chunk and the gradients; the logits alone would be 262 MB.
    assert peak - outputs < logits_bytes / 8, peak
    reference = al.cross_entropy(h[:256] @ W.T, t[:256], reduction="sum")
    partial = al.linear_cross_entropy(h[:256], W, t[:256], reduction="sum", chunk_size=100)
    np.testing.assert_allclose(partial, reference, rtol=1e-5)
    assert np.isfinite(loss)


# --------------------------------------------------------------------------- 16-bit


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_error_no_larger_than_pytorchs_own_16_bit_composite(dtype: str) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    n, d, v = 256, 32, 1000
    h64 = rng.normal(size=(n, d))
    W64 = rng.normal(size=(v, d)) * 0.2
    t = rng.integers(0, v, n)
    torch_dtype = getattr(torch, dtype)
    h16, W16 = (torch.tensor(x).to(torch_dtype) for x in (h64, W64))
    # The float64 reference on the very 16-bit values both are given.
    h_ref, W_ref = (x.double().requires_grad_() for x in (h16, W16))
    reference = torch.nn.functional.cross_entropy(h_ref @ W_ref.T, torch.tensor(t))
    reference.backward()

    h_t, W_t = (x.clone().requires_grad_() for x in (h16, W16))
    theirs = torch.nn.functional.cross_entropy(h_t @ W_t.T, torch.tensor(t))
    theirs.backward()
    h_a, W_a = (x.clone().requires_grad_() for x in (h16, W16))
    ours = al.linear_cross_entropy(h_a, W_a, torch.tensor(t), chunk_size=64)
    ours.backward()
    assert ours.dtype == torch_dtype and h_a.grad.dtype == torch_dtype

    def error(value: Any, want: Any) -> float:
        return float((value.detach().double() - want.detach()).abs().max())

    assert error(ours, reference) <= error(theirs, reference)
    assert error(h_a.grad, h_ref.grad) <= error(h_t.grad, h_ref.grad)
    assert error(W_a.grad, W_ref.grad) <= error(W_t.grad, W_ref.grad)
    if dtype == "float16":  # NumPy's float16 takes the in-place path, in float32 too
        loss, (grad_h, grad_w, _) = al.linear_cross_entropy_and_grad(
            h16.numpy(), W16.numpy(), t, chunk_size=64)
        assert loss.dtype == np.float16 and grad_w.dtype == np.float16
        assert abs(float(loss) - float(reference.detach())) <= error(theirs, reference)
        assert np.abs(grad_h - h_ref.grad.numpy()).max() <= error(h_t.grad, h_ref.grad)


# --------------------------------------------------------------------------- backends


def test_array_api_strict_matches_numpy() -> None:
    xp = pytest.importorskip("array_api_strict")
    data = _data(9)
    kwargs = {"reduction": "mean", "z_loss": 0.01, "softcap": 3.0, "label_smoothing": 0.1,
              "chunk_size": 7}
    want_loss, want_grads = al.linear_cross_entropy_and_grad(
        data["h"], data["W"], data["t"], linear_bias=data["b"], weight=data["w"], **kwargs)
    loss, grads = al.linear_cross_entropy_and_grad(
        xp.asarray(data["h"]), xp.asarray(data["W"]), xp.asarray(data["t"]),
        linear_bias=xp.asarray(data["b"]), weight=xp.asarray(data["w"]), **kwargs)
    np.testing.assert_allclose(np.asarray(loss), want_loss, rtol=1e-13)
    for got, want in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_autograd_matches_the_composite(reduction: str) -> None:
    torch = pytest.importorskip("torch")
    data = _data(10)
    options = {"z_loss": 0.02, "softcap": 2.0}
    upstream = data["g"] if reduction == "none" else 0.5
    loss_want, lse_want, grads_want = _torch_reference(
        data, target=data["t"], bias=True, weight=True, reduction=reduction,
        upstream=upstream, **options)
    h, W, b = (torch.tensor(data[k], requires_grad=True) for k in ("h", "W", "b"))
    loss, lse = al.linear_cross_entropy(h, W, torch.tensor(data["t"]), linear_bias=b,
                                        weight=torch.tensor(data["w"]), reduction=reduction,
                                        return_lse=True, chunk_size=5, **options)
    assert loss.requires_grad and not lse.requires_grad
    loss.backward(torch.tensor(upstream, dtype=torch.float64), retain_graph=True)
    np.testing.assert_allclose(loss.detach().numpy(), loss_want, rtol=1e-12)
    np.testing.assert_allclose(lse.numpy(), lse_want, rtol=1e-12)
    _assert_grads((h.grad, W.grad, b.grad), grads_want)
    # A second backward through the retained graph: the gradients accumulate, twice.
    loss.backward(torch.tensor(upstream, dtype=torch.float64))
    _assert_grads((h.grad / 2, W.grad / 2, b.grad / 2), grads_want)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.2, "softcap": 2.0}], ids=str)
def test_class_probabilities_get_pytorchs_gradient(reduction: str,
                                                   options: dict[str, Any]) -> None:
    """F.linear_cross_entropy differentiates class probabilities (-G (1 - eps) w logp); so
    do torch autograd and jax.grad through arrayloss (it gave them none)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    data = _data(16)
    upstream = data["g"] if reduction == "none" else 0.7
    q = torch.tensor(data["q"], requires_grad=True)
    logits = torch.tensor(data["h"]) @ torch.tensor(data["W"]).T + torch.tensor(data["b"])
    if "softcap" in options:
        logits = options["softcap"] * torch.tanh(logits / options["softcap"])
    F.cross_entropy(logits, q, torch.tensor(data["w"]), reduction=reduction,
                    label_smoothing=options.get("label_smoothing", 0.0)).backward(
        torch.tensor(upstream, dtype=torch.float64))
    ours = torch.tensor(data["q"], requires_grad=True)
    h = torch.tensor(data["h"], requires_grad=True)
    al.linear_cross_entropy(h, torch.tensor(data["W"]), ours, linear_bias=torch.tensor(data["b"]),
                            weight=torch.tensor(data["w"]), reduction=reduction, chunk_size=7,
                            **options).backward(torch.tensor(upstream, dtype=torch.float64))
    np.testing.assert_allclose(ours.grad.numpy(), q.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert h.grad is not None
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)  # float64, as the backend matrix runs JAX
    jnp = jax.numpy

    def scalar(target: Any) -> Any:
        loss = al.linear_cross_entropy(jnp.asarray(data["h"]), jnp.asarray(data["W"]), target,
                                       linear_bias=jnp.asarray(data["b"]),
                                       weight=jnp.asarray(data["w"]), reduction=reduction,
                                       **options)
        return jnp.sum(loss * jnp.asarray(upstream))

    got = jax.jit(jax.grad(scalar))(jnp.asarray(data["q"]))
    np.testing.assert_allclose(np.asarray(got), q.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_jax_grad_under_jit() -> None:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)  # float64, as the backend matrix runs JAX
    jnp = jax.numpy
    data = _data(11)
    options = {"z_loss": 0.01, "softcap": 3.0, "label_smoothing": 0.05, "chunk_size": 15}
    _, lse_want, grads_want = _torch_reference(
        data, target=data["t"], bias=True, weight=False, reduction="mean",
        **{k: v for k, v in options.items() if k != "chunk_size"})

    @jax.jit
    def loss_and_lse(h: Any, W: Any, b: Any) -> Any:
        return al.linear_cross_entropy(h, W, jnp.asarray(data["t"]), linear_bias=b,
                                       return_lse=True, **options)

    def loss(h: Any, W: Any, b: Any) -> Any:
        return loss_and_lse(h, W, b)[0]

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
        *(jnp.asarray(data[k]) for k in ("h", "W", "b")))
    _assert_grads(tuple(np.asarray(g) for g in grads), grads_want)
    want_loss = al.linear_cross_entropy(data["h"], data["W"], data["t"],
                                        linear_bias=data["b"], **options)
    got_loss, lse = loss_and_lse(*(jnp.asarray(data[k]) for k in ("h", "W", "b")))
    np.testing.assert_allclose(np.asarray(got_loss), want_loss, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(lse), lse_want, rtol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_dask_chunks_over_tokens_match_numpy(reduction: str) -> None:
    da = pytest.importorskip("dask.array")
    data = _data(12)
    kwargs = {"label_smoothing": 0.1, "z_loss": 0.01, "softcap": 4.0, "reduction": reduction}
    upstream = data["g"] if reduction == "none" else 2.0
    loss, lse = al.linear_cross_entropy(data["h"], data["W"], data["t"],
                                        linear_bias=data["b"], weight=data["w"],
                                        return_lse=True, **kwargs)
    grads = al.linear_cross_entropy_backward(upstream, data["h"], data["W"], data["t"],
                                             linear_bias=data["b"], weight=data["w"], **kwargs)
    lazy = {"h": da.from_array(data["h"], chunks=(8, 3)), "W": da.from_array(data["W"],
                                                                            chunks=(5, 6)),
            "t": da.from_array(data["t"], chunks=6), "b": da.from_array(data["b"]),
            "w": da.from_array(data["w"])}
    lazy_loss, lazy_lse = al.linear_cross_entropy(lazy["h"], lazy["W"], lazy["t"],
                                                  linear_bias=lazy["b"], weight=lazy["w"],
                                                  return_lse=True, **kwargs)
    assert isinstance(lazy_loss, da.Array)
    np.testing.assert_allclose(lazy_loss.compute(), loss, rtol=1e-12)
    np.testing.assert_allclose(lazy_lse.compute(), lse, rtol=1e-13)
    lazy_upstream = da.from_array(upstream, chunks=10) if reduction == "none" else upstream
    lazy_grads = al.linear_cross_entropy_backward(lazy_upstream, lazy["h"], lazy["W"],
                                                  lazy["t"], linear_bias=lazy["b"],
                                                  weight=lazy["w"], **kwargs)
    assert lazy_grads[0].chunks[0] == (8, 8, 8, 5)
    _assert_grads(tuple(g.compute() for g in lazy_grads), list(grads), rtol=1e-11,
                  atol=1e-13)
    if reduction != "none":
        fused_loss, fused_grads = al.linear_cross_entropy_and_grad(
            lazy["h"], lazy["W"], lazy["t"], linear_bias=lazy["b"], weight=lazy["w"],
            **kwargs)
        np.testing.assert_allclose(fused_loss.compute(), loss, rtol=1e-12)
        _assert_grads(tuple(g.compute() * upstream for g in fused_grads), list(grads),
                      rtol=1e-11, atol=1e-13)


def test_in_place_chunk_path_matches_the_copying_one() -> None:
    # The CuPy backend runs the generic chunk loop with in_place=True (the cross-entropy
    # kernels write the gradient over the logits); the same loop on NumPy's cross-entropy.
    from arrayloss._agnostic import cross_entropy

    data = _data(13)
    call = linear_cross_entropy_call(
        data["h"], data["W"], data["t"], linear_bias=data["b"], weight=data["w"],
        reduction="mean", ignore_index=-100, label_smoothing=0.1, z_loss=0.01, softcap=3.0,
        return_lse=True, chunk_size=6, validate=True)
    copying = generic.run_chunks(call, True, 1.0, cross_entropy)
    in_place = generic.run_chunks(call, True, 1.0, cross_entropy, in_place=True)
    numpy_path = generic.loss_and_grad(call)
    for first, second, third in zip((*copying[:2], *copying[2]), (*in_place[:2], *in_place[2]),
                                    (*numpy_path[:2], *numpy_path[2]), strict=True):
        np.testing.assert_array_equal(first, second)
        np.testing.assert_allclose(first, third, rtol=1e-12, atol=1e-14)


def test_ignore_index_none_is_pytorchs_default() -> None:
    """PyTorch's F.linear_cross_entropy defaults ignore_index to None: -100 for index targets,
    and with class probabilities any value given (-100 included) is refused."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    data = _data(15)
    h, W = torch.tensor(data["h"]), torch.tensor(data["W"])
    for target in (data["t"], data["q"]):
        want = F.linear_cross_entropy(h, W, torch.tensor(target), ignore_index=None)
        for got in (al.linear_cross_entropy(data["h"], data["W"], target),
                    al.linear_cross_entropy(data["h"], data["W"], target, ignore_index=None),
                    al.LinearCrossEntropyLoss()(data["h"], data["W"], target)):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)
    for ignore_index in (-100, 3):
        with pytest.raises(RuntimeError, match="ignore_index cannot be specified"):
            F.linear_cross_entropy(h, W, torch.tensor(data["q"]), ignore_index=ignore_index)
        with pytest.raises(ValueError, match=f"ignore_index={ignore_index} cannot be given "
                                             "with class-probability"):
            al.linear_cross_entropy(data["h"], data["W"], data["q"], ignore_index=ignore_index)
        with pytest.raises(ValueError, match="cannot be given with class-probability"):
            al.LinearCrossEntropyLoss(ignore_index=ignore_index)(data["h"], data["W"],
                                                                 data["q"])
    assert al.LinearCrossEntropyLoss().ignore_index is None


# --------------------------------------------------------------------------- the object


def test_module_holds_the_options() -> None:
    data = _data(14)
    loss_fn = al.LinearCrossEntropyLoss(weight=data["w"], label_smoothing=0.1, z_loss=1e-3,
                                        softcap=3.0, chunk_size=5)
    kwargs = {"weight": data["w"], "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 3.0,
              "chunk_size": 5, "linear_bias": data["b"]}
    args = (data["h"], data["W"], data["t"])
    assert loss_fn(*args, data["b"]) == al.linear_cross_entropy(*args, **kwargs)
    for got, want in zip(loss_fn.backward(1.0, *args, data["b"]),
                         al.linear_cross_entropy_backward(1.0, *args, **kwargs), strict=True):
        np.testing.assert_array_equal(got, want)
    assert "z_loss=0.001" in repr(loss_fn)
    with pytest.raises(ValueError, match="softcap"):
        al.LinearCrossEntropyLoss(softcap=0.0)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("change", "error", "match"), [
    ({"input": np.zeros((3, 5))}, ValueError, "last dimension"),
    ({"linear_weight": np.zeros((V, D, 1))}, ValueError, r"shape \(V, d\)"),
    ({"linear_weight": np.zeros((V, D), np.float32)}, TypeError, "linear_weight"),
    ({"linear_bias": np.zeros(V + 1)}, ValueError, "linear_bias"),
    ({"target": np.zeros(N + 1, np.int64)}, ValueError, "target"),
    ({"target": np.zeros((N, V + 1))}, ValueError, "probabilities"),
    ({"input": np.zeros((N, D), np.int64)}, TypeError, "floating"),
    ({"weight": np.ones(V - 1)}, ValueError, "weight"),
    ({"z_loss": -1.0}, ValueError, "z_loss"),
    ({"z_loss": "0.1"}, TypeError, "z_loss"),
    ({"softcap": -2.0}, ValueError, "softcap"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"chunk_size": 2.0}, TypeError, "chunk_size"),
    ({"reduction": "avg"}, ValueError, "reduction"),
    ({"return_lse": 1}, TypeError, "return_lse"),
])
def test_bad_arguments_are_named(change: dict[str, Any], error: type, match: str) -> None:
    data = _data(15)
    arguments = {"input": data["h"], "linear_weight": data["W"], "target": data["t"],
                 **change}
    with pytest.raises(error, match=match):
        al.linear_cross_entropy(arguments.pop("input"), arguments.pop("linear_weight"),
                                arguments.pop("target"), **arguments)


def test_out_of_range_target_raises_and_inputs_are_not_modified() -> None:
    data = _data(16)
    copies = {k: v.copy() for k, v in data.items()}
    bad = data["t"].copy()
    bad[4] = V
    with pytest.raises(al.TargetOutOfRangeError):
        al.linear_cross_entropy_and_grad(data["h"], data["W"], bad)
    al.linear_cross_entropy_and_grad(data["h"], data["W"], data["t"], linear_bias=data["b"],
                                     z_loss=0.1, softcap=1.0, chunk_size=4)
    for key, value in copies.items():
        np.testing.assert_array_equal(data[key], value)
    with pytest.raises(ValueError, match="reduction='mean' or 'sum'"):
        al.linear_cross_entropy_and_grad(data["h"], data["W"], data["t"], reduction="none")
    with pytest.raises(ValueError, match="grad_output"):
        al.linear_cross_entropy_backward(np.ones(3), data["h"], data["W"], data["t"],
                                         reduction="none")


def test_torch_cuda_tensors_reach_the_device_backend_through_the_bridge(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The DLPack bridge of torch CUDA tensors, with test_torch_cuda's NumPy stand-in for the
    # device library: every field of the call crosses, and the nested results come back.
    torch = pytest.importorskip("torch")
    from test_torch_cuda import StandIn

    from arrayloss import _dispatch, _torch_cpu, _torch_cuda

    recorder = StandIn()
    bridge = _torch_cuda.Bridge("linear_cross_entropy", recorder.device(),
                                on_device=lambda tensor: True)
    monkeypatch.setattr(_torch_cuda, "cupy_available", lambda: True)
    monkeypatch.setattr(_dispatch, "_torch_bridge", lambda loss: bridge)
    # The stand-in's "device" tensors are CPU tensors: keep them off the NumPy lane.
    monkeypatch.setattr(_torch_cpu, "_numpy_views", lambda *arguments: None)
    data = _data(17)
    h, W, b, t = (torch.tensor(data[k]) for k in ("h", "W", "b", "t"))
    kwargs = {"linear_bias": b, "z_loss": 0.01, "chunk_size": 8}
    (loss, lse), grads = al.linear_cross_entropy_and_grad(h, W, t, return_lse=True, **kwargs)
    assert isinstance(loss, torch.Tensor) and isinstance(grads[1], torch.Tensor)
    assert isinstance(recorder.calls[-1].input, np.ndarray)  # the device library's arrays
    want_loss, want_grads = al.linear_cross_entropy_and_grad(
        data["h"], data["W"], data["t"], linear_bias=data["b"], z_loss=0.01, chunk_size=8)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-13)
    _assert_grads(tuple(g.numpy() for g in grads), list(want_grads), rtol=1e-12, atol=1e-15)
    assert lse.shape == (N,)


@pytest.mark.hostcuda
def test_cupy_chunks_run_the_cross_entropy_kernels_in_place_on_the_host_harness() -> None:
    # The CuPy backend is the chunk loop of the generic code with CuPy's namespace: cuBLAS
    # matmuls around the fused cross-entropy kernels, which write each chunk's gradient over
    # its logits.  The host harness runs those kernels on the CPU but has no cuBLAS (nor
    # array arithmetic), so here the matmuls run on the host and the kernels on the harness,
    # each chunk's call built by the very `chunk_call` the backend uses.
    pytest.importorskip("cupy", reason="CuPy is not installed (pip install '.[kernels]')")
    import dataclasses

    import array_api_compat.cupy as cupy_namespace
    import hostcuda

    from arrayloss._cupy import cross_entropy as kernels

    reason = hostcuda.unavailable()
    if reason:
        pytest.skip(reason)
    data = _data(18)
    h, W, b, t, w = data["h"], data["W"], data["b"], data["t"], data["w"]
    options = {"linear_bias": b, "weight": w, "label_smoothing": 0.1, "reduction": "mean",
               "chunk_size": 8}
    want_loss, want_grads = al.linear_cross_entropy_and_grad(h, W, t, **options)
    call = linear_cross_entropy_call(h, W, t, ignore_index=-100, z_loss=0.0, softcap=None,
                                     return_lse=False, validate=True, **options)
    prep = generic.prepare(call)  # the divisor and the compute dtype, from NumPy
    with hostcuda.activated():
        device_call = dataclasses.replace(call, xp=cupy_namespace, target=hostcuda.asarray(t))
        device_prep = dataclasses.replace(prep, weight=hostcuda.asarray(w))
        total, grad_h, grad_w, grad_b = 0.0, np.empty_like(h), np.zeros_like(W), np.zeros_like(b)
        for rows in generic.chunks(call.n_tokens, call.chunk_size):
            logits = hostcuda.asarray(h[rows] @ W.T + b)
            chunk = generic.chunk_call(device_call, device_prep, logits, rows, "sum")
            loss, dz_device = kernels.loss_and_grad(chunk, logits)
            assert dz_device is logits  # written over the logits
            dz = hostcuda.asnumpy(dz_device)
            total += float(hostcuda.asnumpy(loss))
            grad_h[rows] = dz @ W
            grad_w += dz.T @ h[rows]
            grad_b += dz.sum(axis=0)
    scale = 1 / float(prep.divisor)
    np.testing.assert_allclose(total * scale, want_loss, rtol=1e-12)
    _assert_grads((grad_h * scale, grad_w * scale, grad_b * scale), list(want_grads),
                  rtol=1e-11, atol=1e-14)
