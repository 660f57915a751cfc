"""Every source the harness launches is also compiled for the device with NVRTC.

So what CI compiles is exactly what runs: the same generated text, with CuPy's headers and
flags (``-ftz=true``, ``--std=c++17``), for sm_80 and sm_90.  Results are remembered per
content hash in the cache directory, with each kernel's registers and stack frame read from
the cubins (:mod:`._cubin`) for the performance proxy.  NVRTC comes from the
``nvidia-cuda-nvrtc`` wheel (the ``kernels`` extra); without it the compile is skipped and
:func:`unavailable` says why.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json

from . import _compiler, _cubin

ARCHITECTURES = ("80", "90")

compiled: set[str] = set()  # digests of the sources compiled (or found compiled) this run
#: digest -> architecture -> kernel name (as launched) -> {"registers", "frame_bytes"}.
resources: dict[str, dict[str, dict[str, dict[str, int]]]] = {}


@functools.cache
def unavailable() -> str | None:
    try:
        from cupy._core import core  # noqa: F401
        from cupy.cuda import compiler, nvrtc

        compiler._NVRTCProgram  # noqa: B018
        nvrtc.getVersion()
    except Exception as error:  # a missing library is found only when first called
        return f"NVRTC is not available: {error}"
    return None


def compile_for_device(source: str, name_expressions: tuple[str, ...] = (),
                       kernel_options: tuple[str, ...] = ()) -> None:
    """Compile ``source`` as CuPy would for each architecture, with the kernel's own NVRTC
    ``kernel_options`` (``ElementwiseKernel(options=...)``); raises with NVRTC's log."""
    from cupy._core import core
    from cupy.cuda import compiler

    digest = hashlib.sha256(source.encode()).hexdigest()[:32]
    # The options are part of what is compiled (a kernel's are fixed by its factory).
    suffix = hashlib.sha256(" ".join(kernel_options).encode()).hexdigest()[:8] \
        if kernel_options else ""
    marker = _compiler.cache_dir() / f"{digest}{suffix}.nvrtc"
    if digest in compiled:
        return
    with contextlib.suppress(OSError, ValueError):  # an empty marker: compiled before
        resources[digest] = json.loads(marker.read_text())  # resources were recorded
        compiled.add(digest)
        return
    options = (*core.assemble_cupy_compiler_options(("-ftz=true",)), *kernel_options)
    if name_expressions:  # a RawModule: its code as written
        text = source
    else:  # an ElementwiseKernel: CuPy prepends its headers
        text = "".join(f"#include <{h}>\n" for h in core._cupy_header_list) + source
        options = (*options, "--device-as-default-execution-space")
    found: dict[str, dict[str, dict[str, int]]] = {}
    for arch in ARCHITECTURES:
        program = compiler._NVRTCProgram(text, "arrayloss_kernel.cu",
                                         name_expressions=name_expressions or None,
                                         method="cubin")
        cubin, lowered = program.compile((*options, f"-arch=sm_{arch}", "--std=c++17"))
        if cubin[:4] != b"\x7fELF":
            raise RuntimeError(f"NVRTC returned no device binary for sm_{arch}")
        by_symbol = _cubin.resources(cubin)
        # A RawModule's kernels by their name expressions, an ElementwiseKernel's by name.
        names = {symbol: symbol for symbol in by_symbol}
        names.update({symbol: expression for expression, symbol in (lowered or {}).items()})
        found[arch] = {names[symbol]: usage for symbol, usage in by_symbol.items()}
    marker.write_text(json.dumps(found))
    resources[digest] = found
    compiled.add(digest)
