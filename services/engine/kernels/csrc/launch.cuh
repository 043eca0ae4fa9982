// Kernel launch in one place: `launch_kernel(kernel, grid, block, stream, args...)`.
//
// ALISE_SIMT is defined only by the CPU emulator under tests/kernel_sim, which runs the same
// kernels and launchers on CPU fibers so the CI can execute them without a GPU.
#pragma once

#ifdef ALISE_SIMT
#include "simt_launch.h"
#else
#include <cuda_runtime.h>

namespace alise {

template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args... args) {
  kernel<<<grid, block, 0, stream>>>(args...);
}

}  // namespace alise
#endif
