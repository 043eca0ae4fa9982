// Runs kernels on CPU fibers: a CTA at a time, one ucontext fiber per CUDA thread, scheduled
// round-robin on one OS thread. __syncthreads is a barrier of the CTA's fibers; a warp shuffle is
// a barrier of the warp's fibers around an exchange slot. A pass in which no fiber makes progress
// is a deadlock (a barrier some threads never reach) and aborts: the same kernel would hang a GPU.
#pragma once

#include <ucontext.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "cuda_runtime.h"

namespace simt {

constexpr size_t kStackBytes = 256 * 1024;

struct Barrier {
  int size = 0;            // participants
  int arrived = 0;         // participants waiting in this generation
  long generation = 0;     // bumped when the last participant arrives
};

struct Fiber {
  ucontext_t context;      // saved registers of this CUDA thread
  std::vector<char> stack; // its stack
  bool done = false;       // returned from the kernel
};

struct BlockState {
  std::vector<Fiber> fibers;                    // one per thread of the CTA
  std::vector<Barrier> warp_barriers;           // one per warp
  std::vector<std::array<float, 32>> slots;     // shuffle exchange, one per warp
  Barrier block_barrier;                        // __syncthreads
  ucontext_t scheduler;                         // where fibers yield to
  int current = 0;                              // running fiber
  long progress = 0;                            // barrier releases + finished fibers
  const std::function<void()>* body = nullptr;  // the kernel call of this launch
};

inline BlockState state;

inline void yield() { swapcontext(&state.fibers[state.current].context, &state.scheduler); }

inline void arrive_and_wait(Barrier& barrier) {
  const long generation = barrier.generation;
  if (++barrier.arrived == barrier.size) {
    barrier.arrived = 0;
    ++barrier.generation;
    ++state.progress;
    return;
  }
  while (barrier.generation == generation) yield();
}

inline void sync_block() { arrive_and_wait(state.block_barrier); }

inline float shuffle_xor(float value, int lane_mask) {
  const int warp = state.current / 32, lane = state.current % 32;
  state.slots[warp][lane] = value;
  arrive_and_wait(state.warp_barriers[warp]);
  const float result = state.slots[warp][lane ^ lane_mask];
  arrive_and_wait(state.warp_barriers[warp]);  // nobody overwrites a slot before all have read
  return result;
}

inline void fiber_entry() {
  (*state.body)();
  state.fibers[state.current].done = true;
  ++state.progress;
  swapcontext(&state.fibers[state.current].context, &state.scheduler);
}

inline void run_block(int num_threads) {
  state.fibers.resize(num_threads);
  const int num_warps = (num_threads + 31) / 32;
  state.warp_barriers.assign(num_warps, Barrier{});
  for (int w = 0; w < num_warps; ++w) state.warp_barriers[w].size = w + 1 < num_warps ? 32 : num_threads - 32 * w;
  state.slots.resize(num_warps);
  state.block_barrier = Barrier{num_threads};
  for (Fiber& fiber : state.fibers) {
    fiber.stack.resize(kStackBytes);
    fiber.done = false;
    getcontext(&fiber.context);
    fiber.context.uc_stack.ss_sp = fiber.stack.data();
    fiber.context.uc_stack.ss_size = fiber.stack.size();
    fiber.context.uc_link = nullptr;
    makecontext(&fiber.context, fiber_entry, 0);
  }
  for (int remaining = num_threads; remaining > 0;) {
    const long progress_before = state.progress;
    remaining = 0;
    for (int t = 0; t < num_threads; ++t) {
      if (state.fibers[t].done) continue;
      state.current = t;
      thread_index = uint3{static_cast<unsigned>(t), 0u, 0u};
      swapcontext(&state.scheduler, &state.fibers[t].context);
      remaining += state.fibers[t].done ? 0 : 1;
    }
    if (remaining > 0 && state.progress == progress_before) {
      std::fprintf(stderr, "simt: deadlock, %d threads wait at a barrier others never reach\n", remaining);
      std::abort();
    }
  }
}

}  // namespace simt

namespace alise {

template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t, Args... args) {
  const std::function<void()> body = [&] { kernel(args...); };
  simt::state.body = &body;
  simt::block_dim = block;
  simt::grid_dim = grid;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        simt::block_index = uint3{x, y, z};
        simt::run_block(static_cast<int>(block.x * block.y * block.z));
      }
    }
  }
}

}  // namespace alise
