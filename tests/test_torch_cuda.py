"""PyTorch CUDA tensors on the fused kernels (``arrayloss._torch_cuda``).

Without a GPU, the bridge runs with a stand-in device library (NumPy through DLPack, the generic
backend, a recording stream): the conversions, the zero-copy views both ways, ``out`` handed
back as itself, the device and stream arguments, and autograd through the bridge.  On a GPU,
the last test runs the real thing: CuPy kernels on PyTorch's current stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from array_api_compat import array_namespace

import arrayloss as al
from arrayloss import _dispatch, _registry, _torch_cpu, _torch_cuda

torch = pytest.importorskip("torch")


class StandIn:
    """A device library made of NumPy: records what the bridge hands it."""

    def __init__(self) -> None:
        self.streams: list[tuple[int, int]] = []
        self.calls: list[Any] = []
        self.converted: list[Any] = []  # the dtypes of the tensors handed to from_dlpack
        self.methods: list[str] = []  # the backend's methods, in call order
        self.active = False

    def device(self) -> _torch_cuda.Device:
        def backend(loss: str) -> Any:
            generic = _registry.backends(loss).generic()
            stand_in = self

            class Spy:
                def __getattr__(self, method: str) -> Any:
                    function = getattr(generic, method)  # the generic module's methods only

                    def run(call: Any, *args: Any) -> Any:
                        assert stand_in.active, "the kernels ran outside the stream context"
                        stand_in.calls.append(call)
                        stand_in.methods.append(method)
                        return function(call, *args)
                    return run

            return Spy()

        @contextlib.contextmanager
        def stream(index: int, pointer: int) -> Iterator[None]:
            self.streams.append((index, pointer))
            self.active = True
            try:
                yield
            finally:
                self.active = False

        def from_dlpack(tensor: Any) -> Any:
            assert self.active, "a tensor was converted outside the stream context"
            self.converted.append(tensor.dtype)
            return np.from_dlpack(tensor)

        return _torch_cuda.Device(
            from_dlpack=from_dlpack,
            namespace=lambda: array_namespace(np.empty(0)),
            backend=backend, stream=stream, current_stream=lambda device: 0xBEEF)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    """Route torch tensors through a bridge whose 'device' is the stand-in (CPU tensors count
    as on the device)."""
    recorder = StandIn()
    bridges = {loss: _torch_cuda.Bridge(loss, recorder.device(), on_device=lambda t: True)
               for loss in ("gaussian_nll", "nll", "cross_entropy", "mse_loss",
                            "binary_cross_entropy_with_logits")}
    monkeypatch.setattr(_torch_cuda, "cupy_available", lambda: True)
    monkeypatch.setattr(_dispatch, "_torch_bridge", lambda loss: bridges[loss])
    # CPU tensors count as on the device here, so the NumPy lane a CPU tensor's call takes
    # before validation (_torch_cpu.numpy_first) must not take them first.
    monkeypatch.setattr(_torch_cpu, "_numpy_views", lambda *arguments: None)
    return recorder


def _tensors(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"x": torch.tensor(rng.normal(size=(6, 5))),
            "t": torch.tensor(rng.normal(size=(6, 5))),
            "v": torch.tensor(rng.uniform(0.5, 2, (6, 1))),
            "labels": torch.tensor(rng.integers(0, 5, 6))}


def _generic(function: Any, *args: Any, **kwargs: Any) -> Any:
    with al.fused_kernels(False):
        return function(*args, **kwargs)


def test_every_entry_point_round_trips(stand_in: StandIn) -> None:
    a = _tensors()
    cases = [
        (al.gaussian_nll_loss, (a["x"], a["t"], a["v"]), {}),
        (al.gaussian_nll_loss_backward, (0.5, a["x"], a["t"], a["v"]), {}),
        (al.gaussian_nll_loss_and_grad, (a["x"], a["t"], a["v"]), {"beta": 0.5}),
        (al.nll_loss, (a["x"], a["labels"]), {"reduction": "none"}),
        (al.nll_loss_backward, (1.0, a["x"], a["labels"]), {}),
        (al.cross_entropy, (a["x"], a["labels"]), {"label_smoothing": 0.1}),
        (al.cross_entropy_and_grad, (a["x"], a["labels"]), {}),
    ]
    for function, args, kwargs in cases:
        got = function(*args, **kwargs)
        want = _generic(function, *args, **kwargs)
        for g, w in zip(_flat(got), _flat(want), strict=True):
            assert (g is None) == (w is None)
            if g is not None:
                assert isinstance(g, torch.Tensor)
                torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-15)
    assert len(stand_in.calls) == len(cases)
    # Every call ran on the tensors' device (index 0 for a CPU device) and PyTorch's stream.
    assert stand_in.streams == [(0, 0xBEEF)] * len(cases)


def _flat(value: Any) -> list[Any]:
    if isinstance(value, tuple):
        return [item for part in value for item in _flat(part)]
    return [value]


def test_elementwise_losses_cross_the_bridge(stand_in: StandIn) -> None:
    """An elementwise loss's call (its arrays in a dict) reaches the device backend as device
    arrays, and its results come back as tensors equal to the CPU path's."""
    rng = np.random.default_rng(4)
    x, t = (torch.tensor(rng.normal(size=(6, 5))) for _ in "xt")
    pos_weight = torch.tensor(rng.uniform(0.5, 2, 5))
    for function, keywords in ((al.mse_loss, {}),
                               (al.binary_cross_entropy_with_logits,
                                {"pos_weight": pos_weight})):
        name = function.__name__
        before = len(stand_in.calls)
        loss = function(x, t.sigmoid(), reduction="none", **keywords)
        grads = getattr(al, name + "_backward")(torch.ones(6, 5, dtype=torch.float64), x,
                                                t.sigmoid(), reduction="none", **keywords)
        both = getattr(al, name + "_and_grad")(x, t.sigmoid(), **keywords)
        assert len(stand_in.calls) == before + 3
        assert all(isinstance(array, np.ndarray)
                   for array in stand_in.calls[-1].arrays.values()), "not device arrays"
        with al.fused_kernels(False):
            want = function(x, t.sigmoid(), reduction="none", **keywords)
            want_both = getattr(al, name + "_and_grad")(x, t.sigmoid(), **keywords)
        assert isinstance(loss, torch.Tensor) and isinstance(grads[0], torch.Tensor)
        torch.testing.assert_close(loss, want)
        torch.testing.assert_close(both[0], want_both[0])
        torch.testing.assert_close(both[1][0], want_both[1][0])


def test_views_are_zero_copy_both_ways(stand_in: StandIn) -> None:
    a = _tensors(1)
    strided = a["x"].t().contiguous().t()  # a transposed layout: DLPack carries the strides
    al.cross_entropy(strided, a["labels"])
    call = stand_in.calls[-1]
    assert isinstance(call.input, np.ndarray)
    assert np.shares_memory(call.input, strided.numpy())
    assert call.input.strides == tuple(s * strided.element_size() for s in strided.stride())
    assert call.xp is array_namespace(np.empty(0))
    # out=input: the kernel writes through the view into the tensor, which comes back itself.
    logits = a["x"].clone()
    want = _generic(al.cross_entropy_backward, 1.0, logits, a["labels"])
    _, grad = al.cross_entropy_and_grad(logits, a["labels"], out=logits)
    assert grad is logits
    torch.testing.assert_close(logits, want, rtol=1e-12, atol=1e-15)


def test_autograd_goes_through_the_bridge(stand_in: StandIn) -> None:
    a = _tensors(2)
    x = a["x"].clone().requires_grad_()
    v = a["v"].clone().requires_grad_()
    al.gaussian_nll_loss(x, a["t"], v).backward()
    reference_x = a["x"].clone().requires_grad_()
    reference_v = a["v"].clone().requires_grad_()
    torch.nn.functional.gaussian_nll_loss(reference_x, a["t"], reference_v).backward()
    torch.testing.assert_close(x.grad, reference_x.grad)
    torch.testing.assert_close(v.grad, reference_v.grad)
    logits = a["x"].clone().requires_grad_()
    al.cross_entropy(logits, a["labels"], label_smoothing=0.2).backward()
    reference = a["x"].clone().requires_grad_()
    torch.nn.functional.cross_entropy(reference, a["labels"], label_smoothing=0.2).backward()
    torch.testing.assert_close(logits.grad, reference.grad)
    assert len(stand_in.calls) == 4  # two forwards and two backwards, all on the "device"


def test_results_come_back_inside_the_stream_context(stand_in: StandIn,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    returned: list[bool] = []
    original = torch.from_dlpack

    def from_dlpack(array: Any) -> Any:
        returned.append(stand_in.active)
        return original(array)

    monkeypatch.setattr(torch, "from_dlpack", from_dlpack)
    a = _tensors(5)
    al.cross_entropy_and_grad(a["x"], a["labels"])
    al.gaussian_nll_loss(a["x"], a["t"], a["v"], reduction="none")
    assert returned and all(returned), "a result was converted outside the stream context"
    assert stand_in.converted  # and the inputs inside it (the stand-in asserts that)


def test_bfloat16_runs_the_device_backend_through_its_bits(stand_in: StandIn) -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(6)
    logits = torch.tensor(rng.normal(size=(7, 11)), dtype=torch.bfloat16)
    labels = torch.tensor(rng.integers(0, 11, 7))
    reference = logits.float().requires_grad_()
    want_loss = torch.nn.functional.cross_entropy(reference, labels)
    want_loss.backward()
    consumed = logits.clone()
    loss, grad = al.cross_entropy_and_grad(consumed, labels, out=consumed)
    assert grad is consumed and loss.dtype == torch.bfloat16
    # bfloat16's 8 bits of mantissa: within two of its units of the float32 reference.
    torch.testing.assert_close(loss.float(), want_loss.detach(), rtol=2 ** -7, atol=0)
    torch.testing.assert_close(grad.float(), reference.grad, rtol=2 ** -7, atol=2 ** -10)
    variance = torch.tensor(rng.uniform(0.5, 2, (7, 1)), dtype=torch.bfloat16)
    gaussian = al.gaussian_nll_loss(logits, logits * 0.5, variance, reduction="none")
    assert gaussian.dtype == torch.bfloat16 and gaussian.shape == logits.shape
    torch.testing.assert_close(gaussian.float(), torch.nn.functional.gaussian_nll_loss(
        logits.float(), (logits * 0.5).float(), variance.float(), reduction="none"),
        rtol=2 ** -6, atol=2 ** -8)
    # The device backend ran on ml_dtypes' bfloat16 arrays; no tensor went as bfloat16.
    assert len(stand_in.calls) == 2
    for call in stand_in.calls:
        assert call.input.dtype == np.dtype(ml_dtypes.bfloat16)
        assert call.dtype == np.dtype(ml_dtypes.bfloat16)
    assert torch.bfloat16 not in stand_in.converted and torch.int16 in stand_in.converted


def test_a_call_the_kernels_cannot_take_warns_and_runs_the_generic_code(
        stand_in: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "ml_dtypes" else find_spec(name,
                                                                                       *args))
    logits = torch.tensor(np.linspace(-2, 2, 12).reshape(3, 4), dtype=torch.bfloat16)
    labels = torch.tensor([0, 3, 1])
    with pytest.warns(RuntimeWarning, match="bfloat16 tensors need ml_dtypes"):
        loss = al.cross_entropy(logits, labels)
    assert not stand_in.calls, "the device backend ran"
    torch.testing.assert_close(loss, _generic(al.cross_entropy, logits, labels))


def test_autograd_hands_the_forwards_saved_rows_to_its_backward(
        stand_in: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    # A device backend with a saving forward (as the fused cross-entropy has): its backward
    # gets the very object its forward saved, which stays a device-side object, untouched.
    from arrayloss._agnostic import cross_entropy as generic

    saved: list[Any] = []

    def forward_saving(call: Any) -> Any:
        saved.append(object())
        return generic.forward(call), saved[-1]

    def backward_saved(call: Any, grad_output: Any, rows: Any) -> Any:
        assert rows is saved[-1]
        saved.append("used")
        return generic.backward(call, grad_output)

    monkeypatch.setattr(generic, "forward_saving", forward_saving, raising=False)
    monkeypatch.setattr(generic, "backward_saved", backward_saved, raising=False)
    a = _tensors(7)
    logits = a["x"].clone().requires_grad_()
    al.cross_entropy(logits, a["labels"], label_smoothing=0.1).backward()
    reference = a["x"].clone().requires_grad_()
    torch.nn.functional.cross_entropy(reference, a["labels"], label_smoothing=0.1).backward()
    torch.testing.assert_close(logits.grad, reference.grad)
    assert stand_in.methods == ["forward_saving", "backward_saved"]
    assert saved[-1] == "used"
    # A backend without them (the generic one, for JAX or NumPy) is called as before.
    monkeypatch.delattr(generic, "forward_saving")
    monkeypatch.delattr(generic, "backward_saved")
    al.cross_entropy(logits, a["labels"]).backward()
    assert stand_in.methods[2:] == ["forward", "backward"]


def test_cpu_tensors_never_touch_the_device_library() -> None:
    def refuse(tensor: Any) -> Any:
        raise AssertionError("a CPU tensor was converted")

    device = _torch_cuda.Device(refuse, lambda: None, lambda loss: None,  # type: ignore
                                contextlib.nullcontext, lambda device: 0)
    bridge = _torch_cuda.Bridge("nll", device)
    a = _tensors(3)
    from arrayloss._class_calls import nll_call

    call = nll_call(a["x"], a["labels"], None, ignore_index=-100, reduction="mean",
                    validate=True)
    torch.testing.assert_close(bridge.forward(call), _generic(al.nll_loss, a["x"], a["labels"]))


def _cuda_and_cupy() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import cupy

        return int((cupy.arange(2) + 1).sum().get()) == 3
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_and_cupy(), reason="needs a CUDA device with CuPy and torch")
def test_cuda_tensors_run_the_fused_kernels_on_torchs_stream() -> None:
    rng = np.random.default_rng(4)
    logits = torch.tensor(rng.normal(size=(512, 1000)), dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, 1000, 512))
    want_loss, want_grad = al.cross_entropy_and_grad(logits, labels)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        device_logits, device_labels = logits.cuda(), labels.cuda()
        loss, grad = al.cross_entropy_and_grad(device_logits, device_labels)
        # Queued on `stream` after the copies above, without any synchronisation.
        gaussian = al.gaussian_nll_loss(device_logits, device_logits * 0.5,
                                        torch.ones_like(device_logits))
    stream.synchronize()
    assert grad.is_cuda and grad.data_ptr() != device_logits.data_ptr()
    torch.testing.assert_close(loss.cpu(), want_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.cpu(), want_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gaussian.cpu(), al.gaussian_nll_loss(
        logits, logits * 0.5, torch.ones_like(logits)), rtol=1e-5, atol=1e-6)
    x = logits.cuda().requires_grad_()
    al.cross_entropy(x, labels.cuda()).backward()  # the saved rows' backward
    torch.testing.assert_close(x.grad.cpu(), want_grad, rtol=1e-5, atol=1e-7)
    # bfloat16 on the fused kernels (a fallback would warn, and warnings are errors here),
    # out=input, against float32 PyTorch on the same bfloat16 values.
    bf16 = logits.to(torch.bfloat16)
    reference = bf16.float().requires_grad_()
    torch.nn.functional.cross_entropy(reference, labels).backward()
    device_bf16 = bf16.cuda()
    bf16_loss, bf16_grad = al.cross_entropy_and_grad(device_bf16, labels.cuda(), out=device_bf16)
    assert bf16_grad is device_bf16 and bf16_loss.dtype == torch.bfloat16
    scale = float(reference.grad.abs().max())
    torch.testing.assert_close(bf16_grad.cpu().float(), reference.grad, rtol=2 ** -6,
                               atol=2 ** -8 * scale)
