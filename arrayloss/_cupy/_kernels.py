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
    per-element array ``g[n * S + s]``.  ``narrow`` says the gradient has fewer than 2^32
    entries, so that the (N, C) case finds its row and column with 32-bit arithmetic.
    ``total_weight[0]`` is read for ``'mean'`` only, so other reductions may pass any
    initialised array there.
    """
    return cupy.ElementwiseKernel(
        "raw I t, raw W w, raw G g, raw T total_weight, float64 g_scalar, int64 n_classes, "
        "int64 spatial, int64 ignore_index, int32 ignore_matches, int32 has_weight, "
        "int32 check, int32 upstream_mode, int32 reduction, int32 narrow",
        "R grad, raw uint64 invalid",
        """
long long column;
long long element;
if (spatial == 1 && narrow) {
    // (N, C) below 2^32 entries: one 32-bit division instead of four 64-bit ones.
    const unsigned int position = static_cast<unsigned int>(i);
    const unsigned int classes = static_cast<unsigned int>(n_classes);
    element = position / classes;
    column = position - static_cast<unsigned int>(element) * classes;
} else if (spatial == 1) {
    const long long position = static_cast<long long>(i);
    element = position / n_classes;
    column = position - element * n_classes;
} else {
    const long long position = static_cast<long long>(i);
    const long long offset = position % spatial;
    column = (position / spatial) % n_classes;
    element = (position / spatial / n_classes) * spatial + offset;
}
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


# ------------------------------------------------------------------ cross-entropy
#
# Rows are the (n, s) samples of an (N, C, S) input: row r reads x[base + c * S] with
# base = (r / S) * C * S + r % S.  The two row-mapped kernels launch exactly `splits` blocks
# per row (size = rows * splits * threads, block_size = threads, so each thread runs its body
# once and the block's threads may synchronise); block b covers the columns
# [part * chunk, part * chunk + chunk) of row b / splits, part = b % splits.

_CE_ROW_MAP = """
const long long block = blockIdx.x;
const long long row = block / splits;
const long long part = block % splits;
const long long base = (row / spatial) * n_classes * spatial + row % spatial;
const long long begin = part * chunk;
const long long end = begin + chunk < n_classes ? begin + chunk : n_classes;
"""

#: 0: index targets; 1: index targets with label smoothing; 2: probability targets.
CE_MODE_INDEX, CE_MODE_SMOOTHED_INDEX, CE_MODE_PROBABILITIES = 0, 1, 2


@functools.cache
def ce_row_stats() -> cupy.ElementwiseKernel:
    """One pass over each row part: its (max, sum of exp) and the linear sums of ``mode``,
    written as four doubles per block to ``stats``."""
    return cupy.ElementwiseKernel(
        "raw X x, raw Q q, raw W w, int64 n_classes, int64 spatial, int64 chunk, "
        "int64 splits, float64 smoothing, int32 mode, int32 has_weight",
        "raw float64 stats",
        _CE_ROW_MAP + """
A top = al::minus_infinity(A(0));
A sum = 0;
double linear = 0;
double mass = 0;
for (long long c = begin + threadIdx.x; c < end; c += blockDim.x) {
    const long long at = base + c * spatial;
    const A value = A(x[at]);
    al::lse_push(top, sum, value);
    if (mode != 0) {
        double share = has_weight ? static_cast<double>(A(w[c])) : 1.0;
        if (mode == 2) share *= static_cast<double>(al::ce_smoothed(A(q[at]), smoothing,
                                                                     n_classes));
        linear += share * static_cast<double>(value);
        mass += share;
    }
}
const A block_top = al::block_max(top);
sum = al::block_sum(top == block_top ? sum : sum * exp(top - block_top));
if (mode != 0) {
    linear = al::block_sum(linear);
    mass = al::block_sum(mass);
}
if (threadIdx.x == 0) {
    stats[block * 4] = block_top;
    stats[block * 4 + 1] = sum;
    stats[block * 4 + 2] = linear;
    stats[block * 4 + 3] = mass;
}
""",
        name="arrayloss_cross_entropy_row_stats",
        preamble=_preamble("al::compute_of<X>::type"),
    )


# Each thread of the row kernels finishes one row r = i: merges its parts in order, checks
# and reads its target, and leaves (max, log sum, scale, on_target) in row_info for the
# gradient kernel.
_CE_ROW = """
const long long row = i;
A top = al::minus_infinity(A(0));
A sum = 0;
double linear = 0;
double mass = 0;
for (long long part = 0; part < splits; ++part) {
    const long long at = (row * splits + part) * 4;
    al::lse_merge(top, sum, A(stats[at]), A(stats[at + 1]));
    linear += stats[at + 2];
    mass += stats[at + 3];
}
const A log_sum = log(sum);
A value = 0;
A weight = 0;
A scale = 0;
A on_target = 0;
if (probabilities) {
    value = al::ce_probability_loss(top, log_sum, mass, linear);
    weight = 1;
    scale = A(mass);
} else {
    const long long cls = al::nll_class(static_cast<long long>(t[row]), n_classes,
                                        ignore_index, ignore_matches);
    if (check && cls == al::NLL_OUT_OF_RANGE) al::record_invalid(&invalid[0], row);
    if (cls >= 0) {
        const A target_logit =
            A(x[((row / spatial) * n_classes + cls) * spatial + row % spatial]);
        weight = has_weight ? A(w[cls]) : A(1);
        value = al::ce_index_loss(target_logit, top, log_sum, weight, smoothing, n_classes,
                                  mass, linear);
        on_target = A(1 - smoothing) * weight;
        scale = on_target + A(smoothing / static_cast<double>(n_classes) * mass);
    }
}
row_info[row * 4] = top;
row_info[row * 4 + 1] = log_sum;
row_info[row * 4 + 2] = scale;
row_info[row * 4 + 3] = on_target;
"""

_CE_ROW_INPUTS = ("raw float64 stats, raw X x, raw I t, raw W w, int64 n_classes, "
                  "int64 spatial, int64 splits, float64 smoothing, int64 ignore_index, "
                  "int32 ignore_matches, int32 has_weight, int32 probabilities, int32 check")


@functools.cache
def ce_rows() -> cupy.ElementwiseKernel:
    """Per-row loss (``reduction='none'``) and the rows' gradient factors."""
    return cupy.ElementwiseKernel(
        _CE_ROW_INPUTS,
        "R loss, raw A row_info, raw uint64 invalid",
        _CE_ROW + "loss = R(value);",
        name="arrayloss_cross_entropy_rows",
        preamble=header(),
    )


@functools.cache
def ce_rows_partials() -> cupy.ElementwiseKernel:
    """Per-block sums of the rows' losses and target weights, and the rows' gradient factors."""
    return cupy.ElementwiseKernel(
        _CE_ROW_INPUTS,
        "raw A loss_partials, raw A weight_partials, raw A row_info, raw uint64 invalid",
        _CE_ROW + "thread_loss += value;\nthread_weight += weight;",
        name="arrayloss_cross_entropy_rows_partials",
        preamble=header(),
        loop_prep="A thread_loss = 0;\nA thread_weight = 0;",
        after_loop=_block_partial("thread_loss", "loss_partials")
        + _block_partial("thread_weight", "weight_partials"),
    )


@functools.cache
def ce_grad() -> cupy.ElementwiseKernel:
    """The gradient, each entry written once (over ``x`` itself when ``grad`` is ``x``: each
    thread reads an entry before it writes it).

    ``upstream_mode`` as in :func:`nll_backward`; a ``'mean'`` divides by ``total[1]`` (the
    total target weight) for index targets and by ``divisor`` for probability targets.
    """
    return cupy.ElementwiseKernel(
        "raw X x, raw Q q, raw W w, raw I t, raw A row_info, raw G g, raw T total, "
        "float64 g_scalar, float64 divisor, int64 n_classes, int64 spatial, int64 chunk, "
        "int64 splits, float64 smoothing, int64 ignore_index, int32 ignore_matches, "
        "int32 has_weight, int32 probabilities, int32 upstream_mode, int32 reduction",
        "raw R grad",
        _CE_ROW_MAP + """
const A top = row_info[row * 4];
const A log_sum = row_info[row * 4 + 1];
const A scale = row_info[row * 4 + 2];
const A on_target = row_info[row * 4 + 3];
A upstream = upstream_mode == 0 ? A(g_scalar) : upstream_mode == 1 ? A(g[0]) : A(g[row]);
long long cls = -1;
if (!probabilities) {
    cls = al::nll_class(static_cast<long long>(t[row]), n_classes, ignore_index,
                        ignore_matches);
    if (reduction == al::REDUCE_MEAN) upstream = upstream / A(total[1]);
    if (cls < 0) upstream = 0;  // ignored (or invalid): no gradient, even where G is inf
} else if (reduction == al::REDUCE_MEAN) {
    upstream = upstream / A(divisor);
}
const A spread_share = A(smoothing / static_cast<double>(n_classes));
for (long long c = begin + threadIdx.x; c < end; c += blockDim.x) {
    const long long at = base + c * spatial;
    const A class_weight = has_weight ? A(w[c]) : A(1);
    A target_part = 0;
    A spread = 0;
    if (probabilities) {
        target_part = class_weight * al::ce_smoothed(A(q[at]), smoothing, n_classes);
    } else {
        target_part = c == cls ? on_target : A(0);
        spread = spread_share * class_weight;
    }
    grad[at] = R(upstream * al::ce_grad_element(A(x[at]), top, log_sum, scale, target_part,
                                                spread));
}
""",
        name="arrayloss_cross_entropy_grad",
        preamble=header(),
    )


# ------------------------------------------------------------------ the second pass

_FINISH_SOURCE = r"""
// Folds `count` partials into one sum per block, each over a contiguous segment of `segment`
// partials in a fixed order: many blocks share the work that one block would do in sequence.
template <typename A>
__global__ void arrayloss_fold(const A* loss_partials, const A* weight_partials,
                               long long count, long long segment, int has_weight,
                               A* loss_out, A* weight_out) {
    const long long begin = static_cast<long long>(blockIdx.x) * segment;
    const long long end = begin + segment < count ? begin + segment : count;
    A loss = 0;
    A weight = 0;
    for (long long k = begin + threadIdx.x; k < end; k += blockDim.x) {
        loss += loss_partials[k];
        if (has_weight) weight += weight_partials[k];
    }
    loss = al::block_sum(loss);
    weight = al::block_sum(weight);
    if (threadIdx.x == 0) {
        loss_out[blockIdx.x] = loss;
        weight_out[blockIdx.x] = weight;
    }
}

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
FOLD_NAMES = {"float32": "arrayloss_fold<float>", "float64": "arrayloss_fold<double>"}
FINISH_THREADS = 1024
#: More partials than this are folded first (``arrayloss_fold``), by up to ``FOLD_BLOCKS``
#: blocks of ``FOLD_THREADS``: one block adding 262,144 partials (2^26 elements) one after
#: another is latency-bound.
FOLD_ABOVE = FINISH_THREADS
FOLD_BLOCKS = 256
FOLD_THREADS = 256


def finish_source() -> str:
    """The complete source of the second-pass module (for the NVRTC compile check too)."""
    return header() + _FINISH_SOURCE


@functools.cache
def finish_module() -> cupy.RawModule:
    """The second pass, compiled on first use for float and double."""
    return cupy.RawModule(code=finish_source(),
                          name_expressions=(*FINISH_NAMES.values(), *FOLD_NAMES.values()))


@functools.cache
def finish_function(dtype_name: str) -> cupy.RawKernel:
    """The second pass for ``'float32'`` or ``'float64'`` partials, looked up once."""
    return finish_module().get_function(FINISH_NAMES[dtype_name])


@functools.cache
def fold_function(dtype_name: str) -> cupy.RawKernel:
    """The fold of many partials into a few (before the second pass), looked up once."""
    return finish_module().get_function(FOLD_NAMES[dtype_name])
