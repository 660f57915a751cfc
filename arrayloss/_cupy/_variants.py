"""Every kernel variant arrayloss can launch, and CuPy's exact CUDA source for each.

Used by the test suite to compile every variant with NVRTC on machines without a GPU.  It
leans on CuPy-private code generators (unchanged from CuPy 13.0 to 14.2); if they move,
:func:`source_generators_available` says so and the check is skipped with that reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cupy
import numpy as np

from . import _kernels

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
TARGET_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
ARCHITECTURES = ("80", "90")

# cupy._core._kernel._ArgKind values (a cdef enum): an array, an indexer, a scalar.
_NDARRAY, _INDEXER, _SCALAR = 1, 2, 3


@dataclass(frozen=True)
class Variant:
    """One compiled form of a kernel: its label and its complete CUDA source."""

    label: str
    source: str
    name_expressions: tuple[str, ...] = ()
    raw_module: bool = False


def source_generators_available() -> str | None:
    """None if CuPy's private code generators are importable, else the reason they are not."""
    try:
        from cupy._core import _kernel, core  # noqa: F401
        from cupy.cuda import compiler

        compiler._NVRTCProgram  # noqa: B018
        _kernel._get_elementwise_kernel_code  # noqa: B018
    except (ImportError, AttributeError) as error:
        return f"CuPy's private kernel code generators are not available: {error}"
    return None


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _elementwise_source(kernel: cupy.ElementwiseKernel, args: tuple[Any, ...], ndim: int,
                        index_32_bits: bool) -> str:
    """CuPy's source for ``kernel`` called with ``args``: dtypes for arrays, None for scalars.

    The last ``kernel.nout`` entries of ``args`` are the output dtypes.
    """
    from cupy._core import _kernel

    in_args, out_args = args[: kernel.nin], args[kernel.nin:]
    in_types, out_types, type_map = kernel._decide_params_type(
        tuple(None if a is None else _dtype(a).type for a in in_args),
        tuple(_dtype(a).type for a in out_args),
    )

    def info(kind: int, dtype: Any, dims: int) -> Any:
        kind_type = {_NDARRAY: cupy.ndarray, _SCALAR: cupy._core._scalar.CScalar,
                     _INDEXER: cupy._core._carray.Indexer}[kind]
        return _kernel._ArgInfo(kind, kind_type, None if dtype is None else np.dtype(dtype),
                                dims, True, index_32_bits)

    infos = []
    for param, arg, dtype in zip(kernel.in_params, in_args, in_types, strict=True):
        dims = 1 if param.raw else ndim
        infos.append(info(_SCALAR, dtype, 0) if arg is None else info(_NDARRAY, dtype, dims))
    for param, dtype in zip(kernel.out_params, out_types, strict=True):
        infos.append(info(_NDARRAY, dtype, 1 if param.raw else ndim))
    infos.append(info(_INDEXER, None, ndim))
    return _kernel._get_elementwise_kernel_code(
        tuple(infos), type_map, kernel.params, kernel.operation, kernel.name, kernel.preamble,
        **kernel.kwargs)


def _compute(*dtypes: str) -> str:
    return "float64" if "float64" in dtypes else "float32"


def _gaussian_variants() -> Iterator[tuple[str, cupy.ElementwiseKernel, tuple[Any, ...]]]:
    # (input, target, var) dtypes: each float dtype alone, plus mixed and integer arguments.
    combos = [(d, d, d) for d in FLOAT_DTYPES] + [
        ("float32", "float32", "float64"), ("float16", "float32", "float16"),
        ("float32", "int64", "float32"), ("bfloat16", "bfloat16", "int32"),
    ]
    for (x, t, v), scalar_var in itertools.product(combos, (False, True)):
        var = None if scalar_var else v
        floats = (x, t) if scalar_var else (x, t, v)
        result = np.result_type(*(_dtype(d) for d in floats if d in FLOAT_DTYPES)).name
        compute = _compute(*floats)
        tag = f"x={x},t={t},v={'scalar' if scalar_var else v}"
        yield (f"gaussian forward none {tag}", _kernels.gaussian_forward(scalar_var),
               (x, t, var, None, None, None, result, "uint64"))
        yield (f"gaussian forward partials {tag}", _kernels.gaussian_forward_partials(scalar_var),
               (x, t, var, None, None, None, compute, "uint64"))
        grads = tuple(g if g in FLOAT_DTYPES else compute
                      for g in ((x, t) if scalar_var else (x, t, v)))
        for upstream in (None, result):
            kind = "array" if upstream else "scalar"
            yield (f"gaussian backward {tag} upstream={kind}",
                   _kernels.gaussian_backward(scalar_var, upstream is not None),
                   (x, t, var, upstream, None, None, None, None, *grads, "uint64"))
        yield (f"gaussian loss_and_grad {tag}", _kernels.gaussian_loss_and_grad(scalar_var),
               (x, t, var, None, None, None, None, None, compute, *grads, "uint64"))


def _nll_variants() -> Iterator[tuple[str, cupy.ElementwiseKernel, tuple[Any, ...]]]:
    scalars = (None,) * 6
    for x, t in itertools.product(FLOAT_DTYPES, TARGET_DTYPES):
        compute = _compute(x)
        tag = f"input={x},target={t}"
        yield (f"nll forward none {tag}", _kernels.nll_forward(),
               (t, x, x, *scalars, x, "uint64"))
        yield (f"nll forward partials {tag}", _kernels.nll_forward_partials(),
               (t, x, x, *scalars, compute, compute, "uint64"))
        yield (f"nll backward {tag}", _kernels.nll_backward(),
               (t, x, x, compute, *(None,) * 9, x, "uint64"))


def variants() -> Iterator[Variant]:
    """Every variant, for each index width a launch may pick."""
    for label, kernel, args in itertools.chain(_gaussian_variants(), _nll_variants()):
        for ndim, index_32_bits in ((1, True), (2, True), (1, False)):
            yield Variant(f"{label} ndim={ndim} {'int32' if index_32_bits else 'int64'} index",
                          _elementwise_source(kernel, args, ndim, index_32_bits))
    yield Variant("reduce finish (float, double)", _kernels.finish_source(),
                  tuple(_kernels.FINISH_NAMES.values()), raw_module=True)


def compile_variant(variant: Variant, arch: str) -> bytes:
    """Compile ``variant`` for ``sm_<arch>`` with NVRTC, exactly as CuPy would.

    Raises ``cupy.cuda.compiler.CompileException`` with NVRTC's log on failure.
    """
    from cupy._core import core
    from cupy.cuda import compiler

    options = ("-arch=sm_" + arch, "--std=c++17")
    if variant.raw_module:
        source = variant.source
        options = (*core.assemble_cupy_compiler_options(("-ftz=true",)), *options)
    else:
        headers = "".join(f"#include <{h}>\n" for h in core._cupy_header_list)
        source = headers + variant.source
        options = (*core.assemble_cupy_compiler_options(("-ftz=true",)), *options,
                   "--device-as-default-execution-space")
    program = compiler._NVRTCProgram(source, "arrayloss_kernel.cu",
                                     name_expressions=variant.name_expressions or None,
                                     method="cubin")
    return program.compile(options)[0]
