// CPU stand-in for the parts of <cuda_runtime.h> the alise kernels use (tests/kernel_sim only).
//
// Kernels compiled with g++ -DALISE_SIMT against this header run on CPU fibers (simt_launch.h):
// one fiber per CUDA thread, __syncthreads and warp shuffles as real barriers between them. It
// checks indexing, warp reductions, softmax merging and quantization logic; it cannot check timing,
// the memory model or anything the hardware does differently (inline PTX has a host fallback).
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint2 { unsigned x, y; };
struct uint4 { unsigned x, y, z, w; };
struct float2 { float x, y; };
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorName(cudaError_t code) {
  return code == cudaSuccess ? "cudaSuccess" : "cudaErrorInvalidValue";
}

namespace simt {
inline uint3 thread_index, block_index;  // set by the fiber scheduler before each switch
inline dim3 block_dim, grid_dim;
void sync_block();
float shuffle_xor(float value, int lane_mask);
}  // namespace simt

#define threadIdx (::simt::thread_index)
#define blockIdx (::simt::block_index)
#define blockDim (::simt::block_dim)
#define gridDim (::simt::grid_dim)

inline void __syncthreads() { simt::sync_block(); }
inline float __shfl_xor_sync(unsigned, float value, int lane_mask) { return simt::shuffle_xor(value, lane_mask); }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

inline float __uint_as_float(unsigned bits) { float value; std::memcpy(&value, &bits, 4); return value; }
inline float __int_as_float(int bits) { float value; std::memcpy(&value, &bits, 4); return value; }

inline int __float2int_rn(float value) {  // round half to even, NaN -> 0, saturating like the hardware
  if (isnan(value)) return 0;
  const float rounded = nearbyintf(value);
  if (rounded >= 2147483647.0f) return 2147483647;
  if (rounded <= -2147483648.0f) return -2147483647 - 1;
  return static_cast<int>(rounded);
}

inline unsigned __byte_perm(unsigned x, unsigned y, unsigned selector) {
  const uint64_t bytes = (static_cast<uint64_t>(y) << 32) | x;
  unsigned result = 0;
  for (int i = 0; i < 4; ++i) {
    const unsigned source = (selector >> (4 * i)) & 0x7u;
    result |= static_cast<unsigned>((bytes >> (8 * source)) & 0xffu) << (8 * i);
  }
  return result;
}
