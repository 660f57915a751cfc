// arrayloss: the per-element math of every fused kernel, written once.
//
// Every CuPy kernel of arrayloss includes this file in its preamble, and the test suite
// compiles the same file with the host C++ compiler to check the math on the CPU against a
// float64 NumPy reference.  So everything outside the __CUDACC__ block must be plain C++.
//
// Types: `A` is the compute (accumulation) type, float for float16/bfloat16/float32 results
// and double for float64 results; inputs are converted to A once and outputs rounded once.
#ifndef ARRAYLOSS_KERNELS_CUH
#define ARRAYLOSS_KERNELS_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define AL_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#include <cstring>
#define AL_HD inline
#endif

namespace al {

#if !(defined(__CUDACC__) || defined(__CUDACC_RTC__))
using std::exp;
using std::log;
#endif

// The compute type of a kernel: double if any floating argument is double, else float
// (float16, bfloat16 and float32 compute in float; integer arguments do not take part).
template <typename T>
struct is_double {
    enum { value = 0 };
};
template <>
struct is_double<double> {
    enum { value = 1 };
};
template <bool Double>
struct compute_type {
    typedef float type;
};
template <>
struct compute_type<true> {
    typedef double type;
};
template <typename T1, typename T2 = float, typename T3 = float>
struct compute_of {
    typedef typename compute_type<is_double<T1>::value || is_double<T2>::value ||
                                  is_double<T3>::value>::type type;
};

// ------------------------------------------------------------------ bits
//
// CuPy compiles with -ftz=true: every float32 instruction, conversions to double included,
// reads a subnormal operand as zero.  What must see a subnormal float as it is goes through its
// bits, with integer and double instructions, which are never flushed.

AL_HD unsigned int float_bits(float value) {
    unsigned int bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

// x < 0 decided on the bits: a negative subnormal float is negative; -0 and NaN are not.
AL_HD bool is_negative(float value) {
    const unsigned int bits = float_bits(value);
    return (bits >> 31) && (bits & 0x7fffffffu) != 0 && (bits & 0x7fffffffu) <= 0x7f800000u;
}

AL_HD bool is_negative(double value) { return value < 0.0; }  // doubles are never flushed

// A float the device would flush: nonzero with a zero exponent.  Doubles are never flushed.
AL_HD bool is_flushed(float value) {
    const unsigned int magnitude = float_bits(value) & 0x7fffffffu;
    return magnitude != 0 && magnitude < 0x00800000u;
}

AL_HD bool is_flushed(double) { return false; }

// The exact double value of a float, subnormals included (m * 2^-149 for a subnormal).
AL_HD double widen_exact(float value) {
    if (!is_flushed(value)) return static_cast<double>(value);
    const unsigned int bits = float_bits(value);
    const double magnitude = static_cast<double>(bits & 0x7fffffu) * 0x1p-149;
    return (bits >> 31) ? -magnitude : magnitude;
}

AL_HD double widen_exact(double value) { return value; }

// ------------------------------------------------------------------ Gaussian NLL

// max(var, eps), keeping NaN: `var < eps` is false for NaN, as in PyTorch's clamp.  A
// subnormal float operand is compared by its exact value (a flushed compare or max would
// read it as 0) and returned with its bits intact.
template <typename A>
AL_HD A clamp_var(A var, A eps) {
    if (is_flushed(var) || is_flushed(eps)) return widen_exact(var) < widen_exact(eps) ? eps : var;
    return var < eps ? eps : var;
}

// How each operation's result is rounded: not at all (the compute type's own operations), or
// to float, for float math carried out in double (see the public forms below).
struct round_none {
    template <typename T>
    AL_HD static T r(T value) { return value; }
};
struct round_to_float {
    AL_HD static double r(double value) {
        // A result in float's subnormal range is rounded on the double itself (to a multiple
        // of 2^-149): a conversion to float would flush it under -ftz, PyTorch's CPU keeps it.
        if (fabs(value) < 0x1p-126) return rint(value * 0x1p149) * 0x1p-149;
        return static_cast<double>(static_cast<float>(value));
    }
};

// 0.5 * (log(v) + (x - t)^2 / v) + constant, with v already clamped; PyTorch's order.
template <typename R, typename A>
AL_HD A gaussian_loss_of(A input, A target, A clamped_var, A constant) {
    const A diff = R::r(input - target);
    const A ratio = R::r(R::r(diff * diff) / clamped_var);
    return R::r(R::r(A(0.5) * R::r(R::r(log(clamped_var)) + ratio)) + constant);
}

// The gradients in PyTorch's operation order, so that overflow, inf and NaN appear where
// PyTorch's autograd gives them.  d loss / d input = ((0.5 g) / v) (2 (x - t)); d loss /
// d target is its negation.
template <typename R, typename A>
AL_HD A gaussian_grad_input_of(A input, A target, A clamped_var, A upstream) {
    const A half_over_var = R::r(R::r(A(0.5) * upstream) / clamped_var);
    return R::r(half_over_var * R::r(A(2) * R::r(input - target)));
}

// d loss / d var = (0.5 g) / v - (0.5 g) ((d^2 / v) / v), at the clamped v (the clamp is
// invisible to the gradient, as in PyTorch).
template <typename R, typename A>
AL_HD A gaussian_grad_var_of(A input, A target, A clamped_var, A upstream) {
    const A half = R::r(A(0.5) * upstream);
    const A diff = R::r(input - target);
    const A ratio = R::r(R::r(R::r(diff * diff) / clamped_var) / clamped_var);
    return R::r(R::r(half / clamped_var) + R::r(-half * ratio));
}

// The public forms.  A subnormal float variance (reachable with eps below 2^-126) would read
// as 0 under -ftz and give inf or NaN where PyTorch does not; that element runs the same
// float operations in double from the variance's exact value, each result rounded to float,
// which is PyTorch's float32 arithmetic (a subnormal intermediate still flushes).
#define AL_GAUSSIAN_ELEMENT(NAME)                                                          \
    template <typename A>                                                                  \
    AL_HD A NAME(A input, A target, A clamped_var, A other) {                              \
        if (is_flushed(clamped_var)) {                                                     \
            return A(NAME##_of<round_to_float>(widen_exact(input), widen_exact(target),    \
                                               widen_exact(clamped_var),                   \
                                               widen_exact(other)));                       \
        }                                                                                  \
        return NAME##_of<round_none>(input, target, clamped_var, other);                   \
    }
AL_GAUSSIAN_ELEMENT(gaussian_loss)
AL_GAUSSIAN_ELEMENT(gaussian_grad_input)
AL_GAUSSIAN_ELEMENT(gaussian_grad_var)
#undef AL_GAUSSIAN_ELEMENT

// ------------------------------------------------------------------ the log-variance form
// The third argument is s = log(var): 0.5 (s + d^2 exp(-s)) + constant, no eps.  exp(-s), never
// 1 / exp(s), so that a large |s| gives 0 or inf where it should, not NaN.

template <typename A>
AL_HD A gaussian_loss_log_var(A input, A target, A log_var, A constant) {
    const A diff = input - target;
    return A(0.5) * (log_var + diff * diff * exp(-log_var)) + constant;
}

// d loss / d input = g d exp(-s); d loss / d target is its negation.
template <typename A>
AL_HD A gaussian_grad_input_log_var(A input, A target, A log_var, A upstream) {
    return upstream * (input - target) * exp(-log_var);
}

// d loss / d s = 0.5 g (1 - d^2 exp(-s)).
template <typename A>
AL_HD A gaussian_grad_log_var(A input, A target, A log_var, A upstream) {
    const A diff = input - target;
    return A(0.5) * upstream * (A(1) - diff * diff * exp(-log_var));
}

// ------------------------------------------------------------------ either form, and beta-NLL
// `term` is max(var, eps) in the variance form and s in the log-variance form.

template <typename A>
AL_HD A gaussian_term(A var, A eps, int log_var) {
    return log_var ? var : clamp_var(var, eps);
}

template <typename A>
AL_HD A gaussian_element(A input, A target, A term, A constant, int log_var) {
    return log_var ? gaussian_loss_log_var(input, target, term, constant)
                   : gaussian_loss(input, target, term, constant);
}

template <typename A>
AL_HD A gaussian_element_grad_input(A input, A target, A term, A upstream, int log_var) {
    return log_var ? gaussian_grad_input_log_var(input, target, term, upstream)
                   : gaussian_grad_input(input, target, term, upstream);
}

template <typename A>
AL_HD A gaussian_element_grad_var(A input, A target, A term, A upstream, int log_var) {
    return log_var ? gaussian_grad_log_var(input, target, term, upstream)
                   : gaussian_grad_var(input, target, term, upstream);
}

// The beta-NLL weight var^beta (Seitzer et al., 2022), var after the clamp or exp(s); the
// gradients treat it as a constant.  A subnormal float variance is raised from its exact value.
template <typename A>
AL_HD A beta_weight(A term, A beta, int log_var) {
    if (log_var) return exp(beta * term);
    if (is_flushed(term)) return A(pow(widen_exact(term), widen_exact(beta)));
    return pow(term, beta);
}

// NaN and -0.0 pass, as in PyTorch's any(var < 0); a negative subnormal is caught.
template <typename A>
AL_HD bool gaussian_var_is_invalid(A var) {
    return is_negative(var);
}

// ------------------------------------------------------------------ NLL

// What a target means: its class in [0, C), or one of these.
enum { NLL_IGNORED = -1, NLL_OUT_OF_RANGE = -2 };

// `target` arrives as long long (a uint64 beyond the int64 range turns negative, which reads
// as out of range); `ignore_matches` is 0 when ignore_index cannot be held by the target's
// dtype (a uint8 target never equals -100).
AL_HD long long nll_class(long long target, long long n_classes, long long ignore_index,
                          int ignore_matches) {
    if (ignore_matches && target == ignore_index) return NLL_IGNORED;
    if (target < 0 || target >= n_classes) return NLL_OUT_OF_RANGE;
    return target;
}

// The element's loss -w[t] * x[t], or 0 unless it has a class (ignored or invalid).
template <typename A>
AL_HD A nll_loss(long long cls, A picked_input, A class_weight) {
    return cls >= 0 ? -(picked_input * class_weight) : A(0);
}

// The element's weight in the 'mean' denominator.
template <typename A>
AL_HD A nll_weight(long long cls, A class_weight) {
    return cls >= 0 ? class_weight : A(0);
}

enum { REDUCE_NONE = 0, REDUCE_MEAN = 1, REDUCE_SUM = 2 };

// The gradient at an element's target column, in PyTorch's operation order:
// 'none' -w * g,  'sum' w * (-g),  'mean' w * (-(g / total_weight)).
template <typename A>
AL_HD A nll_grad_coefficient(int reduction, A class_weight, A upstream, A total_weight) {
    if (reduction == REDUCE_NONE) return -class_weight * upstream;
    if (reduction == REDUCE_SUM) return class_weight * (-upstream);
    return class_weight * (-(upstream / total_weight));
}


// ------------------------------------------------------------------ cross-entropy
//
// A row is the C logits of one sample (and spatial position).  Its log-sum-exp is kept online
// as (max, sum of exp(x - max)); the linear sums that label smoothing and probability targets
// need (sum w_c x_c, sum w_c q'_c x_c and their weights) are kept in double, so that
// W * lse - sum w x loses nothing to cancellation at large vocabularies.

AL_HD float minus_infinity(float) {
    const unsigned int bits = 0xff800000u;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

AL_HD double minus_infinity(double) {
    const unsigned long long bits = 0xfff0000000000000ull;
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

// Fold one logit into (max, sum).  -inf adds nothing; NaN makes the sum NaN.
template <typename A>
AL_HD void lse_push(A& top, A& sum, A x) {
    if (x > top) {
        sum = sum * exp(top - x) + A(1);
        top = x;
    } else if (!(x == minus_infinity(A(0)))) {
        sum += exp(x - top);
    }
}

// Merge another (max, sum) into (top, sum).
template <typename A>
AL_HD void lse_merge(A& top, A& sum, A other_top, A other_sum) {
    const A merged = other_top > top ? other_top : top;
    if (merged == minus_infinity(A(0))) return;  // both empty (or all -inf)
    sum = sum * exp(top - merged) + other_sum * exp(other_top - merged);
    top = merged;
}

// A class probability after label smoothing: (1 - eps) q + eps / C.
template <typename A>
AL_HD A ce_smoothed(A q, double smoothing, long long n_classes) {
    if (smoothing == 0) return q;
    return q * A(1 - smoothing) + A(smoothing / static_cast<double>(n_classes));
}

// The loss of a row with an (active) class-index target:
// (1 - eps) * -w_t * logp_t + eps / C * (W * lse - sum_c w_c x_c).
template <typename A>
AL_HD A ce_index_loss(A target_logit, A top, A log_sum, A target_weight, double smoothing,
                      long long n_classes, double weight_total, double weighted_logits) {
    const A nll = -(target_weight * ((target_logit - top) - log_sum));
    if (smoothing == 0) return nll;
    const double lse = static_cast<double>(top) + static_cast<double>(log_sum);
    const A smooth = A(weight_total * lse - weighted_logits);
    return A(1 - smoothing) * nll + A(smoothing / static_cast<double>(n_classes)) * smooth;
}

// The loss of a row with probability targets: sum_c w_c q'_c (lse - x_c) = mass * lse - sum.
template <typename A>
AL_HD A ce_probability_loss(A top, A log_sum, double mass, double weighted_logits) {
    const double lse = static_cast<double>(top) + static_cast<double>(log_sum);
    return A(mass * lse - weighted_logits);
}

// The gradient at one logit, before the upstream factor: p * scale - target_part - spread,
// with p = exp((x - max) - log(sum)), the softmax, as PyTorch's exp(log_softmax).
template <typename A>
AL_HD A ce_grad_element(A x, A top, A log_sum, A scale, A target_part, A spread) {
    const A p = exp((x - top) - log_sum);
    return p * scale - target_part - spread;
}

// ------------------------------------------------------------------ device-only helpers
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)

// The bits of this thread's warp that are threads of the block (the last warp of a block
// may be partial).
__device__ __forceinline__ unsigned int warp_lanes() {
    const unsigned int first = threadIdx.x & ~31u;
    const unsigned int lanes = blockDim.x - first < 32u ? blockDim.x - first : 32u;
    return lanes == 32u ? 0xffffffffu : (1u << lanes) - 1u;
}

// The sum of `value` over this warp's threads, in lane 0 (the other lanes hold partial
// sums): lane i adds lane i + offset for offsets 16, 8, 4, 2, 1, a fixed order.  Every
// thread of the warp must call it.
template <typename A>
__device__ __forceinline__ A warp_sum(A value) {
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int present = warp_lanes();
    const unsigned int count = __popc(present);
    for (unsigned int offset = 16; offset > 0; offset >>= 1) {
        const A other = __shfl_down_sync(present, value, offset);
        if (lane + offset < count) value += other;
    }
    return value;
}

// The maximum of `value` (NaN-free) over this warp's threads, in lane 0, as warp_sum.
template <typename A>
__device__ __forceinline__ A warp_max(A value) {
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int present = warp_lanes();
    const unsigned int count = __popc(present);
    for (unsigned int offset = 16; offset > 0; offset >>= 1) {
        const A other = __shfl_down_sync(present, value, offset);
        if (lane + offset < count && other > value) value = other;
    }
    return value;
}

// The sum of `value` over the thread block, returned to every thread.  Warp shuffles add
// within each warp; after one barrier every thread adds the (at most 32) warp totals in
// warp order, so every thread holds the same bits and a given launch shape always gives the
// same result.  blockDim.x may be any size up to 1024 (CuPy shrinks the block for small
// inputs); every thread of the block must call it.
template <typename A>
__device__ __forceinline__ A block_sum(A value) {
    __shared__ A warp_totals[32];
    const unsigned int warps = (blockDim.x + 31u) >> 5;
    value = warp_sum(value);
    __syncthreads();  // a previous call's readers of warp_totals are done
    if ((threadIdx.x & 31u) == 0) warp_totals[threadIdx.x >> 5] = value;
    __syncthreads();
    A total = warp_totals[0];
    for (unsigned int warp = 1; warp < warps; ++warp) total += warp_totals[warp];
    return total;
}

// The maximum of `value` (NaN-free inputs) over the thread block, returned to every thread,
// as block_sum.
template <typename A>
__device__ __forceinline__ A block_max(A value) {
    __shared__ A warp_maxima[32];
    const unsigned int warps = (blockDim.x + 31u) >> 5;
    value = warp_max(value);
    __syncthreads();
    if ((threadIdx.x & 31u) == 0) warp_maxima[threadIdx.x >> 5] = value;
    __syncthreads();
    A top = warp_maxima[0];
    for (unsigned int warp = 1; warp < warps; ++warp) {
        if (warp_maxima[warp] > top) top = warp_maxima[warp];
    }
    return top;
}

// Record the smallest flat index of an invalid element (validation flags, not loss sums:
// the smallest index is the same whatever order the threads run in).
__device__ __forceinline__ void record_invalid(unsigned long long* flag, long long index) {
    atomicMin(flag, static_cast<unsigned long long>(index));
}

#endif

}  // namespace al

#endif  // ARRAYLOSS_KERNELS_CUH
