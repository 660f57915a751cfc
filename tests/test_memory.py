"""NumPy memory: the peak of temporaries (tracemalloc, after a warm-up call) stays bounded by
cache-sized blocks, never a multiple of the input.  Issue "NumPy speed", memory targets."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import arrayloss as al

MiB = 2**20


def peak_bytes(call: Callable[[], Any]) -> int:
    call()  # warm up: the thread pool, per-thread scratch buffers
    gc.collect()
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def spatial() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    logits = rng.random((16, 64, 256, 256), dtype=np.float32)  # 256 MiB
    return logits, rng.integers(0, 64, (16, 256, 256))


def test_nll_spatial_forward_is_blocked(spatial: tuple[np.ndarray, np.ndarray]) -> None:
    logits, target = spatial
    # Seven target-sized buffers (about 29 MiB) before; a few blocks per thread now.
    assert peak_bytes(lambda: al.nll_loss(logits, target)) < 6 * MiB
    output = target.size * 4
    assert peak_bytes(lambda: al.nll_loss(logits, target, reduction="none")) < output + 10 * MiB


def test_nll_reads_a_strided_input_where_it_lies() -> None:
    rng = np.random.default_rng(1)
    logits = np.ascontiguousarray(rng.random((4096, 2048), dtype=np.float32)).T  # 32 MiB
    target = rng.integers(0, 4096, 2048)
    assert not logits.flags.c_contiguous
    assert peak_bytes(lambda: al.nll_loss(logits, target)) < MiB
    np.testing.assert_allclose(al.nll_loss(logits, target),
                               al.nll_loss(np.ascontiguousarray(logits), target), rtol=1e-6)


def test_float16_nll_gradient_is_never_float32() -> None:
    rng = np.random.default_rng(2)
    logits = rng.random((2048, 8192), dtype=np.float32).astype(np.float16)  # 32 MiB
    target = rng.integers(0, 8192, 2048)
    # The gradient itself (the input's size) plus small temporaries, not 3x the input.
    assert peak_bytes(lambda: al.nll_loss_and_grad(logits, target)) < 1.25 * logits.nbytes


def test_gaussian_wide_rows_are_blocked_along_the_row() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((2, 1 << 23), dtype=np.float32)  # 64 MiB, two very wide rows
    t = rng.random((2, 1 << 23), dtype=np.float32)
    var = rng.uniform(0.5, 2, (2, 1)).astype(np.float32)
    assert peak_bytes(lambda: al.gaussian_nll_loss(x, t, var)) < 8 * MiB
    outputs = x.nbytes + t.nbytes  # grad_input and grad_target
    assert peak_bytes(lambda: al.gaussian_nll_loss_and_grad(x, t, var)) < outputs + 8 * MiB
    blocked = al.gaussian_nll_loss_and_grad(x, t, var)
    strict = pytest.importorskip("array_api_strict")

    whole = al.gaussian_nll_loss_and_grad(strict.asarray(x), strict.asarray(t),
                                          strict.asarray(var))
    np.testing.assert_allclose(float(blocked[0]), float(whole[0]), rtol=1e-5)
    for got, want in zip(blocked[1], whole[1], strict=True):
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-7)
