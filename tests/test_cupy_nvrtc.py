"""Every CUDA kernel variant compiles with NVRTC for sm_80 and sm_90, without a GPU.

The source is CuPy's own generated code for each kernel, argument dtypes and index width,
compiled with CuPy's headers and flags (CuPy and the ``nvidia-cuda-nvrtc`` wheel, the
``kernels`` extra).  It proves the kernels compile; their numbers are checked on a GPU by
``test_cupy_gpu.py`` and their per-element math on the CPU by ``test_kernel_math_host.py``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("cupy", reason="CuPy is not installed (pip install '.[kernels]')")

from arrayloss._cupy import _kernels, _variants

pytestmark = pytest.mark.nvrtc

_UNAVAILABLE = _variants.source_generators_available()
VARIANTS = [] if _UNAVAILABLE else list(_variants.variants())


def _nvrtc_missing() -> str | None:
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as error:  # the library is loaded lazily and may be absent
        return f"NVRTC is not available: {error}"
    return None


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    reason = _UNAVAILABLE or _nvrtc_missing()
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("arch", _variants.ARCHITECTURES)
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.label for v in VARIANTS])
def test_variant_compiles(variant: _variants.Variant, arch: str) -> None:
    cubin = _variants.compile_variant(variant, arch)
    assert cubin[:4] == b"\x7fELF"  # a real device binary came back


def test_every_kernel_has_variants() -> None:
    factories = [name for name in dir(_kernels)
                 if name.startswith(("gaussian_", "nll_")) and callable(getattr(_kernels, name))]
    compiled = " ".join(v.source for v in VARIANTS)
    for factory in factories:
        kernel = getattr(_kernels, factory)
        arguments = [(False,), (True,)] if factory != "gaussian_backward" else [
            (s, u) for s in (False, True) for u in (False, True)]
        for args in ([()] if factory.startswith("nll_") else arguments):
            assert kernel(*args).name in compiled, f"{factory}{args} is never compiled"
    assert any(v.raw_module for v in VARIANTS)


def test_every_dtype_is_covered() -> None:
    labels = " ".join(v.label for v in VARIANTS)
    for dtype in _variants.FLOAT_DTYPES:
        assert f"x={dtype}" in labels and f"input={dtype}" in labels
    for dtype in _variants.TARGET_DTYPES:
        assert f"target={dtype}" in labels
    assert "int64 index" in labels
