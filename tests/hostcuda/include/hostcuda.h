// hostcuda: just enough of CUDA to run CuPy's generated kernel source as host C++.
//
// The harness passes this file with `-include` ahead of CuPy's generated source, so the source is
// compiled exactly as CuPy generated it.  CuPy's own `cupy/carray.cuh` (CArray, CIndexer,
// CUPY_FOR) is used unchanged; `include/cupy/float16.cuh` and `bfloat16.cuh` beside this file
// replace CuPy's, which need the CUDA toolkit's fp16 headers.
//
// Execution model: the threads of a block are cooperative fibers run in one OS thread,
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

// Only what kernels use: what every kernel source includes is parsed once, into a precompiled
// header, but loaded again by every compile (<atomic> alone made that 0.2 s a kernel).
#include <cassert>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

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
extern thread_local dim3 thread_index, block_index, block_dim, grid_dim;

// The fiber scheduler (tests/hostcuda/runtime.cpp), compiled once into a library that every
// kernel's library links: here, only what a kernel calls.
void syncthreads();
// Runs every block of the grid; `body(argument)` is one CUDA thread.
void run_grid(unsigned int grid, unsigned int threads, bool flush_to_zero,
              void (*body)(void*), void* argument);

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

// Atomics with GCC's builtins (std::atomic_ref would bring in <atomic>).  Fibers switch only
// at barriers, so within a launch nothing interleaves; the builtins keep them atomic across
// OS threads too.
namespace hostcuda {
template <typename T, typename Update>
inline T atomic_update(T* address, Update update) {
    T old;
    __atomic_load(address, &old, __ATOMIC_SEQ_CST);
    T desired;
    do {
        if (!update(old, desired)) return old;
    } while (!__atomic_compare_exchange(address, &old, &desired, true, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST));
    return old;
}
}  // namespace hostcuda

template <typename T>
inline T atomicMin(T* address, T value) {
    return ::hostcuda::atomic_update(address, [value](T old, T& desired) {
        desired = value;
        return value < old;
    });
}

template <typename T>
inline T atomicMax(T* address, T value) {
    return ::hostcuda::atomic_update(address, [value](T old, T& desired) {
        desired = value;
        return value > old;
    });
}

template <typename T>
inline T atomicAdd(T* address, T value) {
    return ::hostcuda::atomic_update(address, [value](T old, T& desired) {
        desired = old + value;
        return true;
    });
}

template <typename T>
inline T atomicCAS(T* address, T expected, T desired) {
    __atomic_compare_exchange(address, &expected, &desired, false, __ATOMIC_SEQ_CST,
                              __ATOMIC_SEQ_CST);
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
