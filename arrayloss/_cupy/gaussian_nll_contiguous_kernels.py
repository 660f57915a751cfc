"""The generated CUDA of :mod:`.gaussian_nll_contiguous`'s kernels, and their factories.

How the kernels work is said there; here is how their text is put together.  Each kernel is
an ``ElementwiseKernel`` whose arguments are all ``raw`` and whose loop index is the thread
(``size=`` the thread count): the body is the thread's own grid-stride loop over chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cupy

from ._kernels import block_partial, header, kernel_factory

#: What a kernel does: the loss per element, its per-block partial sums, the gradients, or
#: partial sums and gradients together.
OPERATIONS = ("forward", "partials", "backward", "loss_and_grad")


_HELPERS = r"""
namespace al {
// `N` elements of `T` that one vector instruction loads or stores (N * sizeof(T) <= 16).
template <typename T, int N>
struct alignas(sizeof(T) * N) chunk_of {
    T v[N];
};

template <int N, typename T>
__device__ __forceinline__ void load_chunk(const T* from, T (&to)[N]) {
    const chunk_of<T, N> chunk = *reinterpret_cast<const chunk_of<T, N>*>(from);
#pragma unroll
    for (int k = 0; k < N; ++k) to[k] = chunk.v[k];
}

template <int N, typename T>
__device__ __forceinline__ void store_chunk(T* to, const T (&from)[N]) {
    chunk_of<T, N> chunk;
#pragma unroll
    for (int k = 0; k < N; ++k) chunk.v[k] = from[k];
    *reinterpret_cast<chunk_of<T, N>*>(to) = chunk;
}

// The sum of `value` over each segment of `width` lanes (a power of two up to 32), in the
// segment's first lane: lane i adds lane i + offset for offsets width / 2, ..., 1, a fixed
// order.  Every lane of the warp must call it.
template <typename A>
__device__ __forceinline__ A segment_sum(A value, int width) {
    for (int offset = width >> 1; offset > 0; offset >>= 1) {
        value += __shfl_down_sync(0xffffffffu, value, offset);
    }
    return value;
}

// The ordinary elements' math: no variance or eps the device would flush (the forms of
// kernels.cuh without their subnormal branches, which the rare elements keep).
template <typename A>
__device__ __forceinline__ A ordinary_term(A var, A eps, int log_var) {
    return log_var ? var : (var < eps ? eps : var);
}

template <typename A>
__device__ __forceinline__ A ordinary_weight(A term, A beta, int log_var) {
    return log_var ? exp(beta * term) : pow(term, beta);
}

template <typename A>
__device__ __forceinline__ A ordinary_loss(A input, A target, A term, A constant, int log_var) {
    return log_var ? gaussian_loss_log_var(input, target, term, constant)
                   : gaussian_loss_of<round_none>(input, target, term, constant);
}

template <typename A>
__device__ __forceinline__ A ordinary_grad_input(A input, A target, A term, A upstream,
                                                 int log_var) {
    return log_var ? gaussian_grad_input_log_var(input, target, term, upstream)
                   : gaussian_grad_input_of<round_none>(input, target, term, upstream);
}

template <typename A>
__device__ __forceinline__ A ordinary_grad_var(A input, A target, A term, A upstream,
                                               int log_var) {
    return log_var ? gaussian_grad_log_var(input, target, term, upstream)
                   : gaussian_grad_var_of<round_none>(input, target, term, upstream);
}

// The general forms of kernels.cuh (subnormal variances and eps included), called, not
// inlined: their double-precision branches would otherwise hold registers across the
// ordinary loop.  Only rare elements and partial chunks take them.
template <typename A>
__device__ __noinline__ A general_term(A var, A eps, int log_var) {
    return gaussian_term(var, eps, log_var);
}

template <typename A>
__device__ __noinline__ A general_weight(A term, A beta, int log_var) {
    return beta_weight(term, beta, log_var);
}

template <typename A>
__device__ __noinline__ A general_loss(A input, A target, A term, A constant, int log_var) {
    return gaussian_element(input, target, term, constant, log_var);
}

template <typename A>
__device__ __noinline__ A general_grad_input(A input, A target, A term, A upstream,
                                             int log_var) {
    return gaussian_element_grad_input(input, target, term, upstream, log_var);
}

template <typename A>
__device__ __noinline__ A general_grad_var(A input, A target, A term, A upstream,
                                           int log_var) {
    return gaussian_element_grad_var(input, target, term, upstream, log_var);
}

// Whether a chunk's variances (in the compute type A) all take the ordinary math: none
// flushed, none negative when checked (such a chunk goes element by element, recording it).
template <typename A, int N, typename V>
__device__ __forceinline__ bool chunk_is_ordinary(const V (&vs)[N], bool eps_ordinary,
                                                  int log_var, int check) {
    bool ordinary = eps_ordinary;
#pragma unroll
    for (int k = 0; k < N; ++k) {
        const A var = A(vs[k]);
        if (!log_var) ordinary = ordinary && !is_flushed(var);
        if (check) ordinary = ordinary && !gaussian_var_is_invalid(var);
    }
    return ordinary;
}
}  // namespace al
"""


def _preamble(compute_type: str | None) -> str:
    text = header() + _HELPERS
    return text if compute_type is None else f"{text}\ntypedef {compute_type} A;\n"


def has_partials(operation: str) -> bool:
    """Whether ``operation`` writes per-block partial sums of the loss."""
    return operation in ("partials", "loss_and_grad")


def has_gradients(operation: str) -> bool:
    """Whether ``operation`` writes gradients."""
    return operation in ("backward", "loss_and_grad")


def _parameters(operation: str, scalar_var: bool, upstream: str) -> tuple[str, str]:
    """(inputs, outputs) of a kernel; every kernel takes every option (unused ones cost
    nothing), so that one signature serves the four operations."""
    var = "float64 v" if scalar_var else "raw V v"
    upstream_parameter = {"none": "", "number": ", float64 g", "device": ", raw G g",
                          "array": ", raw G g"}[upstream]
    inputs = (f"raw X x, raw T t, {var}{upstream_parameter}, int64 n, int64 columns, "
              "int64 threads, int32 lanes, float64 eps, float64 beta, float64 constant, "
              "float64 divisor, int32 want, int32 check")
    outputs = []
    if operation == "forward":
        outputs.append("raw R loss")
    if has_partials(operation):
        outputs.append("raw A partials")
    if has_gradients(operation):
        outputs.append("raw J grad_input, raw K grad_target")
        if not scalar_var:
            outputs.append("raw L grad_var")
    outputs.append("raw uint64 invalid")
    return inputs, ", ".join(outputs)


@dataclass
class _Shape:
    """What the generated code of one kernel depends on."""

    operation: str
    kind: str  # "flat" or "rows"
    scalar_var: bool
    upstream: str  # "none", "number", "device", "array"
    vector: bool
    width: int
    #: Compile-time options: the log-variance form and beta == 0 (as arguments, the same for
    #: every thread, they held a dozen more registers in the flat loss-and-gradient kernel,
    #: above 64).  The validation check is an argument: it is read on the rare path only.
    log_var: bool
    plain: bool

    @property
    def chunk_stores(self) -> bool:
        """Whether results are written by chunks.  ``loss_and_grad`` writes each gradient
        element as it is computed instead: its three chunks of results would hold twelve
        more registers (above 64 on sm_90)."""
        return self.operation != "loss_and_grad"

    @property
    def chunked_var(self) -> bool:
        return self.kind == "flat" and not self.scalar_var

    @property
    def grad_var(self) -> bool:
        return has_gradients(self.operation) and not self.scalar_var


def _setup(shape: _Shape) -> str:
    lines = [
        f"constexpr int WIDTH = {shape.width};",
        # Constants, not arguments: a branch on them costs nothing, not even registers.
        f"constexpr int log_var = {int(shape.log_var)};",
        f"constexpr bool plain = {str(shape.plain).lower()};  // beta == 0: a weight of 1",
        "const A eps_value = A(eps);",
        "const A constant_value = A(constant);",
        "const A beta_value = A(beta);",
        # A flushed eps (below 2^-126 in float) makes every element a rare one.
        "const bool eps_ordinary = log_var || !al::is_flushed(eps_value);",
        "const X* __restrict__ x_data = &x[0];",
        "const T* __restrict__ t_data = &t[0];",
    ]
    if not shape.scalar_var:
        lines.append("const V* __restrict__ v_data = &v[0];")
    else:
        lines += ["const A scalar_var = A(v);",
                  "const A scalar_term = al::general_term(scalar_var, eps_value, log_var);",
                  "const A scalar_weight = plain ? A(1) : "
                  "al::general_weight(scalar_term, beta_value, log_var);",
                  "const bool scalar_ordinary = eps_ordinary && "
                  "(log_var || !al::is_flushed(scalar_var));"]
    if shape.upstream == "number":
        lines.append("const A upstream_base = A(g) / A(divisor);")
    elif shape.upstream == "device":
        lines.append("const A upstream_base = A(g[0]) / A(divisor);")
    elif shape.upstream == "array":
        lines += ["const A divisor_value = A(divisor);", "const G* __restrict__ g_data = &g[0];"]
    if shape.operation == "forward":
        lines.append("R* __restrict__ loss_data = &loss[0];")
    if has_gradients(shape.operation):
        lines += ["J* __restrict__ grad_input_data = &grad_input[0];",
                  "K* __restrict__ grad_target_data = &grad_target[0];"]
        if not shape.scalar_var:
            lines.append("L* __restrict__ grad_var_data = &grad_var[0];")
    return "\n".join(lines) + "\n"


def _chunked(shape: _Shape) -> list[tuple[str, str, str]]:
    """(local array, pointer, type) of every array read by chunks."""
    arrays = [("xs", "x_data", "X"), ("ts", "t_data", "T")]
    if shape.chunked_var:
        arrays.append(("vs", "v_data", "V"))
    if shape.upstream == "array":
        arrays.append(("gs", "g_data", "G"))
    return arrays


def _written(shape: _Shape) -> list[tuple[str, str, str, str]]:
    """(local array, pointer, type, want condition) of every array written by chunks."""
    if shape.operation == "forward":
        return [("losses", "loss_data", "R", "")]
    if not has_gradients(shape.operation):
        return []
    written = [("grad_inputs", "grad_input_data", "J", "want & 1"),
               ("grad_targets", "grad_target_data", "K", "want & 2")]
    if shape.chunked_var:
        written.append(("grad_vars", "grad_var_data", "L", "want & 4"))
    return written


def _upstream(shape: _Shape, given: str) -> str:
    if shape.upstream == "array":
        return f"const A upstream = A({given}) / divisor_value * weight;"
    if shape.kind == "rows":
        return "const A upstream = row_upstream;"
    return "const A upstream = upstream_base * weight;"


#: The element functions of the general forms (kernels.cuh) and of the ordinary ones.
_GENERAL = {"loss": "al::general_loss", "grad_input": "al::general_grad_input",
            "grad_var": "al::general_grad_var"}
_ORDINARY = {"loss": "al::ordinary_loss", "grad_input": "al::ordinary_grad_input",
             "grad_var": "al::ordinary_grad_var"}


def _results(shape: _Shape, functions: dict[str, str], out: dict[str, str]) -> list[str]:
    """The element's loss and gradients through ``functions``, written to ``out[name]`` (an
    lvalue), summed, or added to the row's ``grad_var``."""
    loss = (f"weight * {functions['loss']}(input_value, target_value, term, constant_value, "
            "log_var)")
    lines = []
    if shape.operation == "forward":
        lines.append(f"{out['loss']} = R({loss});")
    if has_partials(shape.operation):
        # Summed at once, or into the chunk's sum (``out["total"]``), added once committed.
        lines.append(f"{out['total']} += {loss};" if "total" in out else
                     f"thread_total += {loss};")
    if has_gradients(shape.operation):
        lines += [
            out["upstream"],
            "if (want & 3) {",
            f"    const A grad_diff = {functions['grad_input']}(input_value, target_value, term, "
            "upstream, log_var);",
            f"    if (want & 1) {out['grad_input']} = J(grad_diff);",
            f"    if (want & 2) {out['grad_target']} = K(-grad_diff);",
            "}",
        ]
        grad_var = (f"{functions['grad_var']}(input_value, target_value, term, upstream, "
                    "log_var)")
        if shape.chunked_var:
            lines.append(f"if (want & 4) {out['grad_var']} = L({grad_var});")
        elif shape.grad_var:
            lines.append(f"if (want & 4) row_grad += {grad_var};")
    return lines


def _rare_elements(shape: _Shape, count: str) -> str:
    """Elements ``first .. first + count`` one at a time, from memory, through the general
    forms of ``kernels.cuh`` (subnormal variances, eps, validation, a partial chunk)."""
    lines = ["const long long index = first + k;",
             "const A input_value = A(x_data[index]);",
             "const A target_value = A(t_data[index]);"]
    if shape.chunked_var:
        lines += [
            "const A var_value = A(v_data[index]);",
            "if (check && al::gaussian_var_is_invalid(var_value)) "
            "al::record_invalid(&invalid[0], index);",
            "const A term = al::general_term(var_value, eps_value, log_var);",
            "const A weight = plain ? A(1) : al::general_weight(term, beta_value, log_var);",
        ]
    elif shape.scalar_var:
        lines += ["const A term = scalar_term;", "const A weight = scalar_weight;"]
    out = {"loss": "loss_data[index]", "grad_input": "grad_input_data[index]",
           "grad_target": "grad_target_data[index]", "grad_var": "grad_var_data[index]",
           "upstream": _upstream(shape, "g_data[index]")}
    lines += _results(shape, _GENERAL, out)
    body = "\n".join("    " + line for line in lines)
    return f"#pragma unroll 1\nfor (int k = 0; k < {count}; ++k) {{\n{body}\n}}\n"


def _ordinary_chunk(shape: _Shape, vector: bool, guard: str | None = None) -> str:
    """A whole chunk already in the local arrays, through the ordinary math, its results
    written by chunks.

    The math is written once, in a loop that is not unrolled: each step takes element 0 of
    the local arrays and shifts them down by one, and shifts its results in at the top.  An
    unrolled loop would interleave ``WIDTH`` elements' divisions and logarithms, and hold
    about twice the registers for it.

    With a ``guard`` (a C++ condition on the loaded values), the chunk is computed first and
    committed (summed, stored) only if the guard holds, else the loop is left: a branch before
    the math would let the compiler defer the loads it does not need until after the branch,
    two dependent memory round trips per chunk instead of one.
    """
    written = _written(shape) if shape.chunk_stores else []
    kept = [(local, kind) for local, _, kind, _ in written]
    lines = [f"{kind} {local}[WIDTH];" for local, kind in kept]
    if guard is not None and has_partials(shape.operation):
        lines.append("A chunk_total = 0;")
    element = ["const A input_value = A(xs[0]);", "const A target_value = A(ts[0]);"]
    if shape.chunked_var:
        element += ["const A term = al::ordinary_term(A(vs[0]), eps_value, log_var);",
                    "const A weight = plain ? A(1) : al::ordinary_weight(term, beta_value, "
                    "log_var);"]
    elif shape.scalar_var:
        element += ["const A term = scalar_term;", "const A weight = scalar_weight;"]
    if kept:
        element += ["#pragma unroll", "for (int k = 0; k + 1 < WIDTH; ++k) {"]
        element += [f"    {local}[k] = {local}[k + 1];" for local, _ in kept]
        element += ["}"]
    out = {"loss": "losses[WIDTH - 1]", "grad_input": "grad_inputs[WIDTH - 1]",
           "grad_target": "grad_targets[WIDTH - 1]", "grad_var": "grad_vars[WIDTH - 1]",
           "upstream": _upstream(shape, "gs[0]")}
    if not shape.chunk_stores:
        # Written before the guard: a chunk that is not ordinary is written again, right
        # after, by the element-by-element loop of the same thread.
        out.update(grad_input="grad_input_data[first + step]",
                   grad_target="grad_target_data[first + step]",
                   grad_var="grad_var_data[first + step]")
    if guard is not None:
        out["total"] = "chunk_total"
    element += _results(shape, _ORDINARY, out)
    element += ["#pragma unroll", "for (int k = 0; k + 1 < WIDTH; ++k) {"]
    element += [f"    {local}[k] = {local}[k + 1];" for local, _, _ in _chunked(shape)]
    element += ["}"]
    lines += ["#pragma unroll 1", "for (int step = 0; step < WIDTH; ++step) {"]
    lines += ["    " + line for line in element] + ["}"]
    if guard is not None:
        lines.append(f"if (!({guard})) break;")
        if has_partials(shape.operation):
            lines.append("thread_total += chunk_total;")
    for local, pointer, _, condition in written:
        store = (f"al::store_chunk<WIDTH>({pointer} + first, {local});" if vector else
                 f"for (int k = 0; k < WIDTH; ++k) {pointer}[first + k] = {local}[k];")
        lines.append(f"if ({condition}) {store}" if condition else store)
    return "\n".join(lines) + "\n"


def _loads(shape: _Shape, vector: bool) -> str:
    """A whole chunk's loads into the local arrays, all before any branch on them."""
    lines = [f"{kind} {local}[WIDTH];" for local, _, kind in _chunked(shape)]
    for local, pointer, _ in _chunked(shape):
        if vector:
            lines.append(f"al::load_chunk<WIDTH>({pointer} + first, {local});")
        else:
            lines.append("#pragma unroll")
            lines.append(f"for (int k = 0; k < WIDTH; ++k) {local}[k] = {pointer}[first + k];")
    return "\n".join(lines) + "\n"


def _flat_ordinary(shape: _Shape) -> str:
    if shape.scalar_var:
        return "scalar_ordinary"
    # A negative (checked) or flushed variance sends the chunk through the general forms.
    return "al::chunk_is_ordinary<A>(vs, eps_ordinary, log_var, check)"


# The loops of ordinary chunks and of the others are siblings, never nested: the general
# forms' registers (their double-precision branches) do not add to the ordinary loop's.
def _flat_body(shape: _Shape) -> str:
    return _setup(shape) + (
        "const long long full_chunks = n / WIDTH;\n"
        "long long chunk = i;\n"
        "for (; chunk < full_chunks; chunk += threads) {\n"
        "const long long first = chunk * WIDTH;\n"
        + _loads(shape, shape.vector)
        + f"const bool ordinary = {_flat_ordinary(shape)};\n"
        + _ordinary_chunk(shape, shape.vector, guard="ordinary")
        + "}\n"
        "// From a chunk that is not ordinary on, and the last partial chunk (its owner's next,\n"
        "// so last in that thread's order): element by element, in the same order.\n"
        "for (; chunk * WIDTH < n; chunk += threads) {\n"
        "const long long first = chunk * WIDTH;\n"
        "const long long left = n - first;\n"
        "const int count = left < WIDTH ? static_cast<int>(left) : WIDTH;\n"
        + _rare_elements(shape, "count")
        + "}\n")


def _rows_body(shape: _Shape) -> str:
    upstream_row = ""
    if has_gradients(shape.operation) and shape.upstream != "array":
        upstream_row = "const A row_upstream = upstream_base * weight;\n"
    grad_var = ""
    if shape.grad_var:
        grad_var = (
            "if (want & 4) {  // uniform: every lane of the warp shuffles\n"
            "    const A total = al::segment_sum(row_grad, lanes);\n"
            "    if (active && lane == 0) grad_var_data[row] = L(total);\n"
            "}\n")
    return _setup(shape) + (
        "const long long rows = n / columns;\n"
        "// Chunk counts in 32 bits (the host sends rows of fewer than 2^30 elements here).\n"
        "const int chunks_per_row = static_cast<int>((columns + WIDTH - 1) / WIDTH);\n"
        "const int whole_chunks = static_cast<int>(columns / WIDTH);\n"
        "const int lane = static_cast<int>(threadIdx.x) & (lanes - 1);\n"
        "const int rows_per_block = static_cast<int>(blockDim.x) / lanes;\n"
        "for (long long base = static_cast<long long>(blockIdx.x) * rows_per_block; "
        "base < rows; base += static_cast<long long>(gridDim.x) * rows_per_block) {\n"
        "const long long row = base + threadIdx.x / lanes;\n"
        "const bool active = row < rows;\n"
        "A row_grad = 0;\n"
        "if (active) {\n"
        "const A var_value = A(v_data[row]);\n"
        "const bool invalid_row = check && al::gaussian_var_is_invalid(var_value);\n"
        "const bool row_ordinary = eps_ordinary && (log_var || !al::is_flushed(var_value));\n"
        "// The row's clamp and weight: the plain forms for an ordinary row, called ones else.\n"
        "const A term = row_ordinary ? al::ordinary_term(var_value, eps_value, log_var)\n"
        "                            : al::general_term(var_value, eps_value, log_var);\n"
        "const A weight = plain ? A(1) : row_ordinary\n"
        "    ? al::ordinary_weight(term, beta_value, log_var)\n"
        "    : al::general_weight(term, beta_value, log_var);\n"
        + upstream_row
        + "int chunk = lane;\n"
        "if (row_ordinary) {\n"
        "for (; chunk < whole_chunks; chunk += lanes) {\n"
        "const long long first = row * columns + chunk * WIDTH;\n"
        + _loads(shape, shape.vector)
        + _ordinary_chunk(shape, shape.vector)
        + "}\n}\n"
        "// A row whose variance is flushed, and a partial last chunk: element by element.\n"
        "for (; chunk < chunks_per_row; chunk += lanes) {\n"
        "const long long first = row * columns + chunk * WIDTH;\n"
        "const long long left = columns - chunk * WIDTH;\n"
        "const int count = left < WIDTH ? static_cast<int>(left) : WIDTH;\n"
        + _rare_elements(shape, "count")
        + "}\n"
        "// Recorded after the row's loads, which an atomic before them would hold back.\n"
        "if (invalid_row) al::record_invalid(&invalid[0], row * columns);\n"
        "}\n"
        + grad_var
        + "}\n")


def kernel_name(shape: _Shape) -> str:
    """``arrayloss_gaussian_nll_{flat|rows}_{operation}[_scalar_var][_scalar_loads]``."""
    return (f"arrayloss_gaussian_nll_{shape.kind}_{shape.operation}"
            + ("_scalar_var" if shape.scalar_var else "")
            + ("" if shape.vector else "_scalar_loads"))


def _build(shape: _Shape) -> cupy.ElementwiseKernel:
    inputs, outputs = _parameters(shape.operation, shape.scalar_var, shape.upstream)
    body = _flat_body(shape) if shape.kind == "flat" else _rows_body(shape)
    partials = has_partials(shape.operation)
    compute = "al::compute_of<X, T>::type" if shape.scalar_var else \
        "al::compute_of<X, T, V>::type"
    return cupy.ElementwiseKernel(
        inputs, outputs, body, name=kernel_name(shape),
        preamble=_preamble(None if partials else compute),
        loop_prep="A thread_total = 0;" if partials else "",
        after_loop=block_partial("thread_total", "partials") if partials else "",
    )


@kernel_factory
def gaussian_flat(operation: str, scalar_var: bool, upstream: str, vector: bool, width: int,
                  flags: tuple[bool, bool]) -> cupy.ElementwiseKernel:
    """A flat kernel (scalar or full variance): ``operation`` is one of :data:`OPERATIONS`,
    ``upstream`` ``"none"`` (forward), ``"number"``, ``"device"`` (0-d) or ``"array"``,
    ``flags`` ``(log_var, beta == 0)``."""
    return _build(_Shape(operation, "flat", scalar_var, upstream, vector, width, *flags))


@kernel_factory
def gaussian_rows(operation: str, upstream: str, vector: bool, width: int,
                  flags: tuple[bool, bool]) -> cupy.ElementwiseKernel:
    """A row kernel (one variance per row of the loss's last axis), as :func:`gaussian_flat`."""
    return _build(_Shape(operation, "rows", False, upstream, vector, width, *flags))
