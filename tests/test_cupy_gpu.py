"""The fused CuPy kernels on a real GPU: the shared kernel cases, streams, PyTorch CUDA.

Skipped unless a CUDA device works (CuPy imports fine without one, so the probe launches a
kernel).  The cases of ``_kernel_cases.py`` run here and, on the CPU, through the host harness
(``test_hostcuda.py``); ``test_parity.py`` also runs every PyTorch parity case on the ``cupy``
backend.  This module adds what only a GPU can show.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")


def _gpu_works() -> bool:
    try:
        return int((cupy.arange(3) + 1).sum().get()) == 6
    except Exception:
        return False


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _gpu_works(), reason="no working CUDA device")]

import _kernel_cases as kc  # noqa: E402
import _kernel_cases_elementwise as kee  # noqa: E402

import arrayloss as al  # noqa: E402


def _assert_no_host_sync(call: Any) -> None:
    import cupyx

    cupy.cuda.get_current_stream().synchronize()
    with cupyx.allow_synchronize(False):
        call()


DEVICE = kc.Device(asarray=cupy.asarray, asnumpy=cupy.asnumpy,
                   assert_no_host_sync=_assert_no_host_sync)


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


@pytest.mark.parametrize(("case", "arguments"), kc.gpu_and_host_cases())
def test_kernel_case(case: Any, arguments: tuple[Any, ...]) -> None:
    """The cases the host harness runs too (``_kernel_cases.py``), here on the device."""
    case(DEVICE, *arguments)


def test_context_healthy_after_bad_targets() -> None:
    kc.case_bad_targets(DEVICE)
    # No device-side assert poisoned the CUDA context.
    assert int((cupy.arange(4) * 2).sum().get()) == 12


def test_launches_on_the_current_stream() -> None:
    rng = np.random.default_rng(7)
    x = DEVICE.put(rng.normal(size=(2048, 16)), "float32")
    v = DEVICE.put(rng.uniform(0.1, 2, (2048, 1)), "float32")
    expected = al.gaussian_nll_loss(x, x * 0.5, v)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        got = al.gaussian_nll_loss(x, x * 0.5, v, validate=False)
    stream.synchronize()
    assert cupy.asnumpy(got).tobytes() == cupy.asnumpy(expected).tobytes()


def test_fused_matches_torch_on_the_gpu() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    rng = np.random.default_rng(8)
    xs = rng.normal(size=(1024, 16))
    ts = rng.normal(size=(1024, 16))
    vs = rng.uniform(0.1, 2, (1024, 1))
    tx, tt, tv = (torch.tensor(a, device="cuda", requires_grad=True) for a in (xs, ts, vs))
    loss = torch.nn.functional.gaussian_nll_loss(tx, tt, tv, full=True)
    loss.backward()
    got, grads = al.gaussian_nll_loss_and_grad(*(cupy.asarray(a) for a in (xs, ts, vs)),
                                               full=True)
    np.testing.assert_allclose(float(got), loss.item(), rtol=1e-12)
    for mine, theirs in zip(grads, (tx.grad, tt.grad, tv.grad), strict=True):
        np.testing.assert_allclose(cupy.asnumpy(mine), theirs.cpu().numpy(), rtol=1e-10)
