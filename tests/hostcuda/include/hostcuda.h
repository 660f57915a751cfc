// hostcuda: just enough of CUDA to run CuPy's generated kernel source as host C++.
//
// The harness passes this file with `-include` ahead of CuPy's generated source, so the source is
// compiled exactly as CuPy generated it.  CuPy's own `cupy/carray.cuh` (CArray, CIndexer,
// CUPY_FOR) is used unchanged; `include/cupy/float16.cuh` and `bfloat16.cuh` beside this file
// replace CuPy's, which need the CUDA toolkit's fp16 headers.
//
// Execution model: the threads of a block are cooperative fibers (ucontext) run in one OS thread,
// in index order; __syncthreads() switches to the next fiber, so every thread of the block
// reaches the barrier before any passes it.  Blocks run one after another, which is why
// `__shared__` can be `static`: all threads of the running block see the same storage.
#pragma once

#define __CUDACC__ 1  // kernels.cuh compiles its device-only helpers (block_sum, record_invalid)
#define ARRAYLOSS_HOSTCUDA 1

#include <math.h>  // the float overloads of log, exp, ... in the global namespace, as in CUDA
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>
#include <xmmintrin.h>

#include <atomic>
#include <cassert>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __shared__ static
#define __launch_bounds__(...)

namespace hostcuda {

struct dim3 {
    unsigned int x = 0, y = 1, z = 1;
};

// The indices of the running fiber; the scheduler rewrites them at every switch.
inline thread_local dim3 thread_index, block_index, block_dim, grid_dim;

enum FiberState { RUNNING, AT_BARRIER, DONE };

// One block of fibers, reused between blocks and launches of the same OS thread.
struct Block {
    ucontext_t scheduler;
    std::vector<ucontext_t> contexts;
    std::vector<std::vector<char>> stacks;
    std::vector<int> state;
    unsigned int current = 0;
    void (*body)(void*) = nullptr;
    void* body_argument = nullptr;
    unsigned int mxcsr = 0;
};

inline thread_local Block* active = nullptr;

constexpr size_t STACK_BYTES = 256 * 1024;

inline void fiber_main() {
    Block& block = *active;
    _mm_setcsr(block.mxcsr);
    block.body(block.body_argument);
    block.state[block.current] = DONE;
    // Returning resumes uc_link, the scheduler.
}

inline void syncthreads() {
    Block& block = *active;
    block.state[block.current] = AT_BARRIER;
    swapcontext(&block.contexts[block.current], &block.scheduler);
}

// Runs every block of the grid; `body(argument)` is one CUDA thread.
inline void run_grid(unsigned int grid, unsigned int threads, bool flush_to_zero,
                     void (*body)(void*), void* argument) {
    static thread_local Block block;
    Block* previous_active = active;
    active = &block;
    const unsigned int saved_mxcsr = _mm_getcsr();
    // CuPy compiles with -ftz=true: float32 subnormals flush to zero on the device, inputs (DAZ)
    // and results (FTZ).  float64 is never flushed there, so double kernels run without it.
    block.mxcsr = flush_to_zero ? (saved_mxcsr | 0x8040u) : (saved_mxcsr & ~0x8040u);
    _mm_setcsr(block.mxcsr);
    block.body = body;
    block.body_argument = argument;
    if (block.contexts.size() < threads) {
        block.contexts.resize(threads);
        block.state.resize(threads);
        block.stacks.resize(threads);
    }
    for (unsigned int t = 0; t < threads; ++t) {
        if (block.stacks[t].empty()) block.stacks[t].resize(STACK_BYTES);
    }
    grid_dim = dim3{grid, 1, 1};
    block_dim = dim3{threads, 1, 1};
    for (unsigned int b = 0; b < grid; ++b) {
        block_index = dim3{b, 0, 0};
        for (unsigned int t = 0; t < threads; ++t) {
            ucontext_t& context = block.contexts[t];
            getcontext(&context);
            context.uc_stack.ss_sp = block.stacks[t].data();
            context.uc_stack.ss_size = STACK_BYTES;
            context.uc_link = &block.scheduler;
            makecontext(&context, fiber_main, 0);
            block.state[t] = RUNNING;
        }
        bool pending = true;
        while (pending) {
            pending = false;
            for (unsigned int t = 0; t < threads; ++t) {
                if (block.state[t] == DONE) continue;
                block.state[t] = RUNNING;
                block.current = t;
                thread_index = dim3{t, 0, 0};
                swapcontext(&block.scheduler, &block.contexts[t]);
                if (block.state[t] != DONE) pending = true;
            }
        }
    }
    _mm_setcsr(saved_mxcsr);
    active = previous_active;
}

// Calls `kernel` with its parameters read from the byte buffers the Python side marshalled.
template <typename... P>
struct Launch {
    void (*kernel)(P...);
    void** arguments;

    template <size_t... I>
    void call(std::index_sequence<I...>) const {
        kernel(*static_cast<std::remove_cv_t<P>*>(arguments[I])...);
    }
    static void thread(void* self) {
        static_cast<Launch*>(self)->call(std::index_sequence_for<P...>{});
    }
};

template <typename... P>
int launch(void (*kernel)(P...), unsigned int grid, unsigned int threads, void** arguments,
           int flush_to_zero) {
    Launch<P...> launch{kernel, arguments};
    run_grid(grid, threads, flush_to_zero != 0, &Launch<P...>::thread, &launch);
    return 0;
}

template <typename... P>
long long parameter_size(void (*)(P...), int index) {
    const long long sizes[] = {static_cast<long long>(sizeof(std::remove_cv_t<P>))..., 0};
    return index < static_cast<int>(sizeof...(P)) ? sizes[index] : -1;
}

}  // namespace hostcuda

#define threadIdx (::hostcuda::thread_index)
#define blockIdx (::hostcuda::block_index)
#define blockDim (::hostcuda::block_dim)
#define gridDim (::hostcuda::grid_dim)

inline void __syncthreads() { ::hostcuda::syncthreads(); }

inline unsigned int __popc(unsigned int x) { return __builtin_popcount(x); }

// Warp shuffles, for code that calls them in every thread of the block at the same point (as
// al::block_sum and al::block_max do): each thread posts its value, a block barrier, each
// reads its source lane's, a barrier before the slots are reused.  A source lane outside the
// warp (lane + delta >= 32) or the block gives the thread's own value, as in CUDA; the mask
// is not checked.
namespace hostcuda {
template <typename T>
inline T shuffle_from(T value, unsigned int source_lane) {
    static thread_local T slots[1024];
    const unsigned int tid = ::hostcuda::thread_index.x;
    const unsigned int source = (tid & ~31u) + source_lane;
    slots[tid] = value;
    ::hostcuda::syncthreads();
    const T result = source_lane < 32u && source < ::hostcuda::block_dim.x ? slots[source] : value;
    ::hostcuda::syncthreads();
    return result;
}
}  // namespace hostcuda

// `width` (a power of two up to 32) splits the warp into segments, as in CUDA: a source lane
// past the end of the thread's own segment gives the thread's own value.
template <typename T>
inline T __shfl_down_sync(unsigned int /*mask*/, T value, unsigned int delta, int width = 32) {
    const unsigned int lane = ::hostcuda::thread_index.x & 31u;
    const unsigned int in_segment = lane & static_cast<unsigned int>(width - 1);
    return ::hostcuda::shuffle_from(value, in_segment + delta < static_cast<unsigned int>(width)
                                               ? lane + delta : lane);
}

template <typename T>
inline T __shfl_xor_sync(unsigned int /*mask*/, T value, int lane_mask, int width = 32) {
    const unsigned int lane = ::hostcuda::thread_index.x & 31u;
    const unsigned int source = lane ^ static_cast<unsigned int>(lane_mask);
    const unsigned int segment_end = (lane & ~static_cast<unsigned int>(width - 1)) + width;
    return ::hostcuda::shuffle_from(value, source < segment_end ? source : lane);
}

// A warp barrier, as a block barrier: like the shuffles, for code that calls it in every
// thread of the block at the same point (which orders memory at least as strongly).
inline void __syncwarp(unsigned int /*mask*/ = 0xffffffffu) { ::hostcuda::syncthreads(); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }

template <typename T>
inline T atomicMin(T* address, T value) {
    std::atomic_ref<T> target(*address);
    T old = target.load();
    while (value < old && !target.compare_exchange_weak(old, value)) {
    }
    return old;
}

template <typename T>
inline T atomicMax(T* address, T value) {
    std::atomic_ref<T> target(*address);
    T old = target.load();
    while (value > old && !target.compare_exchange_weak(old, value)) {
    }
    return old;
}

template <typename T>
inline T atomicAdd(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value);
}

template <typename T>
inline T atomicCAS(T* address, T expected, T desired) {
    std::atomic_ref<T>(*address).compare_exchange_strong(expected, desired);
    return expected;
}

// The entry points the harness calls through ctypes, one per kernel of a compiled source.
#define HOSTCUDA_ENTRY(INDEX, ...)                                                          \
    extern "C" int hostcuda_launch_##INDEX(unsigned int grid, unsigned int threads,        \
                                           void** arguments, int flush_to_zero) {          \
        return ::hostcuda::launch(&__VA_ARGS__, grid, threads, arguments, flush_to_zero);  \
    }                                                                                       \
    extern "C" long long hostcuda_parameter_size_##INDEX(int index) {                       \
        return ::hostcuda::parameter_size(&__VA_ARGS__, index);                             \
    }
