// hostcuda's fiber scheduler: the threads of a block as cooperative fibers in one OS thread.
//
// Compiled once per kernel cache into a shared library that every kernel's library links
// (tests/hostcuda/_compiler.py), so a kernel's compile does not generate it again.  The
// execution model is described in include/hostcuda.h.
#include "hostcuda.h"

#include <ucontext.h>
#include <xmmintrin.h>

#include <vector>

namespace hostcuda {

thread_local dim3 thread_index, block_index, block_dim, grid_dim;

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

thread_local Block* active = nullptr;

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

void syncthreads() {
    Block& block = *active;
    block.state[block.current] = AT_BARRIER;
    to_scheduler(block, block.current);
}

void run_grid(unsigned int grid, unsigned int threads, bool flush_to_zero,
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

}  // namespace hostcuda
