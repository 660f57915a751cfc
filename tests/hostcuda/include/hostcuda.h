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

// A fiber's saved state.  On x86-64 it is one stack pointer, switched by `switch_stacks`
// below; glibc's swapcontext saves and restores the signal mask with a system call at every
// switch, which made that call most of the harness's run time (a barrier is two switches per
// thread, a warp shuffle two barriers).  HOSTCUDA_UCONTEXT, or another architecture, keeps
// ucontext.
#if defined(__x86_64__) && !defined(HOSTCUDA_UCONTEXT)
#define HOSTCUDA_STACK_SWITCH 1
struct Context {
    void* stack_pointer = nullptr;
};

// Saves the running code's resume point and frame pointer on its stack, stores its stack
// pointer in *save and resumes the context whose stack pointer is `load`.  Every other
// register is declared clobbered, so the compiler keeps nothing in one across the switch
// (the callee-saved ones it saves in the enclosing function's frame, which is on this
// fiber's stack).  The first 128 bytes below the stack pointer are skipped: leaf code may
// keep values there (the System V red zone).
inline void switch_stacks(void** save, void* load) {
    asm volatile(
        "leaq -128(%%rsp), %%rsp\n\t"
        "pushq %%rbp\n\t"
        "leaq 1f(%%rip), %%rax\n\t"
        "pushq %%rax\n\t"
        "movq %%rsp, (%%rdi)\n\t"
        "movq %%rsi, %%rsp\n\t"
        "popq %%rax\n\t"
        "popq %%rbp\n\t"
        "jmpq *%%rax\n"
        "1:\n\t"
        "leaq 128(%%rsp), %%rsp\n\t"
        : "+D"(save), "+S"(load)
        :
        : "rax", "rbx", "rcx", "rdx", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
          "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "st", "st(1)", "st(2)",
          "st(3)", "st(4)", "st(5)", "st(6)", "st(7)", "memory", "cc");
}
#else
struct Context {
    ucontext_t context;
};
#endif

// One block of fibers, reused between blocks and launches of the same OS thread.
struct Block {
    Context scheduler;
    std::vector<Context> contexts;
    std::vector<std::vector<char>> stacks;
    std::vector<int> state;
    unsigned int current = 0;
    void (*body)(void*) = nullptr;
    void* body_argument = nullptr;
    unsigned int mxcsr = 0;
};

inline thread_local Block* active = nullptr;

constexpr size_t STACK_BYTES = 256 * 1024;

// Resumes the scheduler from fiber `t`; returns when the scheduler resumes `t`.
inline void to_scheduler(Block& block, unsigned int t) {
#ifdef HOSTCUDA_STACK_SWITCH
    switch_stacks(&block.contexts[t].stack_pointer, block.scheduler.stack_pointer);
#else
    swapcontext(&block.contexts[t].context, &block.scheduler.context);
#endif
}

inline void fiber_main() {
    Block& block = *active;
    _mm_setcsr(block.mxcsr);
    block.body(block.body_argument);
    block.state[block.current] = DONE;
#ifdef HOSTCUDA_STACK_SWITCH
    to_scheduler(block, block.current);  // never resumed: a DONE fiber is skipped
    __builtin_unreachable();
#endif
    // With ucontext, returning resumes uc_link, the scheduler.
}

// Makes fiber `t` start at fiber_main on its own stack when next resumed.
inline void start_fiber(Block& block, unsigned int t) {
    char* stack = block.stacks[t].data();
#ifdef HOSTCUDA_STACK_SWITCH
    // The top, 16-byte aligned, less 8: fiber_main starts as if called (rsp = 8 mod 16),
    // after the switch pops its start address and a null frame pointer.
    auto top = (reinterpret_cast<uintptr_t>(stack + STACK_BYTES) & ~uintptr_t{15}) - 8;
    auto* slots = reinterpret_cast<void**>(top) - 2;
    slots[0] = reinterpret_cast<void*>(&fiber_main);
    slots[1] = nullptr;
    block.contexts[t].stack_pointer = slots;
#else
    ucontext_t& context = block.contexts[t].context;
    getcontext(&context);
    context.uc_stack.ss_sp = stack;
    context.uc_stack.ss_size = STACK_BYTES;
    context.uc_link = &block.scheduler.context;
    makecontext(&context, fiber_main, 0);
#endif
}

// Resumes fiber `t` from the scheduler; returns when it reaches a barrier or finishes.
inline void resume_fiber(Block& block, unsigned int t) {
#ifdef HOSTCUDA_STACK_SWITCH
    switch_stacks(&block.scheduler.stack_pointer, block.contexts[t].stack_pointer);
#else
    swapcontext(&block.scheduler.context, &block.contexts[t].context);
#endif
}

inline void syncthreads() {
    Block& block = *active;
    block.state[block.current] = AT_BARRIER;
    to_scheduler(block, block.current);
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
            start_fiber(block, t);
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
                resume_fiber(block, t);
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
