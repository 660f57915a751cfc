"""The fused CUDA kernels, as CuPy kernel objects built by small memoized factories.

Each kernel's body is a few lines that call the per-element math of ``kernels.cuh``, which
every kernel includes through its preamble.  Building a kernel object needs no GPU (CuPy
compiles on the first call), so importing this module is safe on any machine with CuPy.

Conventions shared by all kernels:

* ``A`` is the compute type (float, or double when a floating argument is float64).
* ``invalid`` is a one-element uint64 array: the smallest flat index of an invalid element
  (negative variance, target outside ``[0, C)``), left at its initial ``2**64 - 1`` if none.
  It is written only when ``check`` is non-zero.
* Scalar reductions are two-pass and deterministic: each block sums its elements in a fixed
  tree order into ``partials[blockIdx.x]`` (``after_loop``), then :mod:`.reduce` adds the
  partials in a fixed order.  No atomics touch a loss or a weight.
"""

from __future__ import annotations

import functools
from importlib import resources

import cupy

#: Threads per block of the reduction kernels; the number of partials follows from it.
REDUCE_BLOCK = 256

#: The initial value of an ``invalid`` flag: no invalid element seen.
NO_INVALID = 2**64 - 1


@functools.cache
def header() -> str:
    """The text of ``kernels.cuh``, pasted into every preamble (NVRTC sees no file path)."""
    return resources.files("arrayloss._cupy").joinpath("kernels.cuh").read_text()


def _preamble(compute_type: str) -> str:
    return f"{header()}\ntypedef {compute_type} A;\n"


_BLOCK_PARTIAL = """
{
    const A block_total = al::block_sum(%(value)s);
    if (threadIdx.x == 0) %(partials)s[blockIdx.x] = block_total;
}
"""


def _block_partial(value: str, partials: str) -> str:
    return _BLOCK_PARTIAL % {"value": value, "partials": partials}


# ------------------------------------------------------------------ Gaussian NLL


def _gaussian_inputs(scalar_var: bool) -> str:
    return "X x, T t, " + ("float64 v" if scalar_var else "V v")


def _gaussian_compute(scalar_var: bool) -> str:
    # A Python-number variance is weak: it never widens the compute type.
    return "al::compute_of<X, T>::type" if scalar_var else "al::compute_of<X, T, V>::type"


# `term` is max(var, eps), or the log-variance itself with log_var; `weight` the beta-NLL
# weight, exactly 1 for beta = 0 (a uniform branch: no cost, the same bits as without it).
_GAUSSIAN_PROLOGUE = """
const A var_value = A(v);
if (check && al::gaussian_var_is_invalid(var_value)) al::record_invalid(&invalid[0], i);
const A term = al::gaussian_term(var_value, A(eps), log_var);
const A weight = beta == 0 ? A(1) : al::beta_weight(term, A(beta), log_var);
const A input_value = A(x);
const A target_value = A(t);
"""

_GAUSSIAN_OPTIONS = ", float64 eps, int32 log_var, float64 beta"
_GAUSSIAN_LOSS = ("weight * al::gaussian_element(input_value, target_value, term, A(constant), "
                  "log_var)")

_GAUSSIAN_GRADIENTS = """
if (want & 3) {
    const A grad_diff = al::gaussian_element_grad_input(input_value, target_value, term,
                                                        upstream, log_var);
    if (want & 1) grad_input[i] = J(grad_diff);
    if (want & 2) grad_target[i] = K(-grad_diff);
}
"""

_GAUSSIAN_GRAD_VAR = """
if (want & 4) {
    grad_var[i] = L(al::gaussian_element_grad_var(input_value, target_value, term, upstream,
                                                  log_var));
}
"""


def _gaussian_grad_outputs(scalar_var: bool) -> str:
    outputs = "raw J grad_input, raw K grad_target"
    return outputs if scalar_var else outputs + ", raw L grad_var"


def _gaussian_grad_code(scalar_var: bool) -> str:
    return _GAUSSIAN_GRADIENTS + ("" if scalar_var else _GAUSSIAN_GRAD_VAR)


@functools.cache
def gaussian_forward(scalar_var: bool) -> cupy.ElementwiseKernel:
    """Per-element loss (``reduction='none'``): one pass, one write."""
    return cupy.ElementwiseKernel(
        _gaussian_inputs(scalar_var) + _GAUSSIAN_OPTIONS + ", float64 constant, int32 check",
        "R loss, raw uint64 invalid",
        _GAUSSIAN_PROLOGUE + f"loss = R({_GAUSSIAN_LOSS});",
        name="arrayloss_gaussian_nll_forward" + ("_scalar_var" if scalar_var else ""),
        preamble=_preamble(_gaussian_compute(scalar_var)),
    )


@functools.cache
def gaussian_forward_partials(scalar_var: bool) -> cupy.ElementwiseKernel:
    """Per-block sums of the loss (``'mean'`` / ``'sum'``); :mod:`.reduce` finishes them."""
    return cupy.ElementwiseKernel(
        _gaussian_inputs(scalar_var) + _GAUSSIAN_OPTIONS + ", float64 constant, int32 check",
        "raw A partials, raw uint64 invalid",
        _GAUSSIAN_PROLOGUE + f"thread_total += {_GAUSSIAN_LOSS};",
        name="arrayloss_gaussian_nll_forward_partials" + ("_scalar_var" if scalar_var else ""),
        preamble=header(),
        loop_prep="A thread_total = 0;",
        after_loop=_block_partial("thread_total", "partials"),
    )


@functools.cache
def gaussian_backward(scalar_var: bool, upstream_array: bool) -> cupy.ElementwiseKernel:
    """The requested gradients (bits of ``want``: 1 input, 2 target, 4 var) in one pass.

    ``g`` is a Python number or a 0-d array (``'mean'``/``'sum'``) or an array of the loss's
    shape (``'none'``); ``divisor`` is the number of loss elements for ``'mean'``, else 1.
    Outputs are C-contiguous arrays of the loss's shape, indexed by the flat position ``i``.
    """
    upstream = "G g" if upstream_array else "float64 g"
    return cupy.ElementwiseKernel(
        _gaussian_inputs(scalar_var)
        + f", {upstream}{_GAUSSIAN_OPTIONS}, float64 divisor, int32 want, int32 check",
        _gaussian_grad_outputs(scalar_var) + ", raw uint64 invalid",
        _GAUSSIAN_PROLOGUE + "const A upstream = A(g) / A(divisor) * weight;\n"
        + _gaussian_grad_code(scalar_var),
        name="arrayloss_gaussian_nll_backward" + ("_scalar_var" if scalar_var else ""),
        preamble=_preamble(_gaussian_compute(scalar_var)),
    )


@functools.cache
def gaussian_loss_and_grad(scalar_var: bool) -> cupy.ElementwiseKernel:
    """Loss partials and the requested gradients in one pass over memory."""
    return cupy.ElementwiseKernel(
        _gaussian_inputs(scalar_var)
        + f"{_GAUSSIAN_OPTIONS}, float64 constant, float64 g, int32 want, int32 check",
        "raw A partials, " + _gaussian_grad_outputs(scalar_var) + ", raw uint64 invalid",
        _GAUSSIAN_PROLOGUE + "const A upstream = A(g) * weight;\n"
        + f"thread_total += {_GAUSSIAN_LOSS};\n"
        + _gaussian_grad_code(scalar_var),
        name="arrayloss_gaussian_nll_loss_and_grad" + ("_scalar_var" if scalar_var else ""),
        preamble=header(),
        loop_prep="A thread_total = 0;",
        after_loop=_block_partial("thread_total", "partials"),
    )


# ------------------------------------------------------------------ NLL

# Each thread of the forward kernels handles one target (n, s) of the (N, C, S) input.
_NLL_TARGET = """
const long long cls = al::nll_class(static_cast<long long>(t), n_classes, ignore_index,
                                    ignore_matches);
if (check && cls == al::NLL_OUT_OF_RANGE) al::record_invalid(&invalid[0], i);
A picked = 0;
A class_weight = 1;
if (cls >= 0) {
    const long long row = static_cast<long long>(i) / spatial;
    const long long offset = static_cast<long long>(i) % spatial;
    picked = A(x[(row * n_classes + cls) * spatial + offset]);
    if (has_weight) class_weight = A(w[cls]);
}
"""

_NLL_FORWARD_INPUTS = ("I t, raw X x, raw W w, int64 n_classes, int64 spatial, "
                       "int64 ignore_index, int32 ignore_matches, int32 has_weight, int32 check")


@functools.cache
def nll_forward() -> cupy.ElementwiseKernel:
    """Per-element loss (``reduction='none'``)."""
    return cupy.ElementwiseKernel(
        _NLL_FORWARD_INPUTS,
        "R loss, raw uint64 invalid",
        _NLL_TARGET + "loss = R(al::nll_loss(cls, picked, class_weight));",
        name="arrayloss_nll_forward",
        preamble=_preamble("al::compute_of<X>::type"),
    )


@functools.cache
def nll_forward_partials() -> cupy.ElementwiseKernel:
    """Per-block sums of the loss and of the weights (the 'mean' denominator), one pass."""
    return cupy.ElementwiseKernel(
        _NLL_FORWARD_INPUTS,
        "raw A loss_partials, raw A weight_partials, raw uint64 invalid",
        _NLL_TARGET
        + "thread_loss += al::nll_loss(cls, picked, class_weight);\n"
        + "thread_weight += al::nll_weight(cls, class_weight);",
        name="arrayloss_nll_forward_partials",
        preamble=header(),
        loop_prep="A thread_loss = 0;\nA thread_weight = 0;",
        after_loop=_block_partial("thread_loss", "loss_partials")
        + _block_partial("thread_weight", "weight_partials"),
    )


@functools.cache
def nll_backward() -> cupy.ElementwiseKernel:
    """The dense gradient, each entry written once: the coefficient at the target, else 0.

    ``upstream_mode`` 0 reads the Python number ``g_scalar``, 1 the 0-d array ``g[0]``, 2 the
    per-element array ``g[n * S + s]``.  ``total_weight[0]`` is read for ``'mean'`` only, so
    other reductions may pass any initialised array there.
    """
    return cupy.ElementwiseKernel(
        "raw I t, raw W w, raw G g, raw T total_weight, float64 g_scalar, int64 n_classes, "
        "int64 spatial, int64 ignore_index, int32 ignore_matches, int32 has_weight, "
        "int32 check, int32 upstream_mode, int32 reduction",
        "R grad, raw uint64 invalid",
        """
const long long position = static_cast<long long>(i);
const long long offset = position % spatial;
const long long column = (position / spatial) % n_classes;
const long long element = (position / spatial / n_classes) * spatial + offset;
const long long cls = al::nll_class(static_cast<long long>(t[element]), n_classes,
                                    ignore_index, ignore_matches);
if (check && column == 0 && cls == al::NLL_OUT_OF_RANGE) {
    al::record_invalid(&invalid[0], element);
}
A value = 0;
if (cls == column) {
    const A class_weight = has_weight ? A(w[cls]) : A(1);
    const A upstream = upstream_mode == 0 ? A(g_scalar)
                       : upstream_mode == 1 ? A(g[0]) : A(g[element]);
    const A total = reduction == al::REDUCE_MEAN ? A(total_weight[0]) : A(1);
    value = al::nll_grad_coefficient(reduction, class_weight, upstream, total);
}
grad = R(value);
""",
        name="arrayloss_nll_backward",
        preamble=_preamble("al::compute_of<R>::type"),
    )


# ------------------------------------------------------------------ the second pass

_FINISH_SOURCE = r"""
// Adds the per-block partials in a fixed order (one block) and finishes the reduction:
// mode 0 sum, 1 mean over `divisor` elements, 2 weighted mean (NLL).  out[0] is the loss,
// out[1] the total weight.  With no partials the sum is 0 and a mean is 0/0 = NaN.
template <typename A>
__global__ void arrayloss_finish(const A* loss_partials, const A* weight_partials,
                                 long long count, double divisor, int mode, int has_weight,
                                 A* out) {
    A loss = 0;
    A weight = 0;
    for (long long k = threadIdx.x; k < count; k += blockDim.x) {
        loss += loss_partials[k];
        if (has_weight) weight += weight_partials[k];
    }
    loss = al::block_sum(loss);
    weight = al::block_sum(weight);
    if (threadIdx.x == 0) {
        out[1] = weight;
        out[0] = mode == 0 ? loss : mode == 1 ? loss / A(divisor) : loss / weight;
    }
}
"""

FINISH_NAMES = {"float32": "arrayloss_finish<float>", "float64": "arrayloss_finish<double>"}
FINISH_THREADS = 1024


def finish_source() -> str:
    """The complete source of the second-pass module (for the NVRTC compile check too)."""
    return header() + _FINISH_SOURCE


@functools.cache
def finish_module() -> cupy.RawModule:
    """The second pass, compiled on first use for float and double."""
    return cupy.RawModule(code=finish_source(), name_expressions=tuple(FINISH_NAMES.values()))


@functools.cache
def finish_function(dtype_name: str) -> cupy.RawKernel:
    """The second pass for ``'float32'`` or ``'float64'`` partials, looked up once."""
    return finish_module().get_function(FINISH_NAMES[dtype_name])
