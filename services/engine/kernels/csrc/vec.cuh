// Register-level helpers shared by the kernels: 8-element vector loads, conversions to float,
// stores, the fast base-2 exponential and warp reductions.
//
// A "vector" is always 8 consecutive elements of one head: 16 bytes of fp16/bf16 (one uint4
// load) or 8 bytes of int8 (one uint2 load). int8 is turned into float without I2F (a quarter-rate
// instruction): each byte, biased to unsigned, is placed in the mantissa of 2^23 with one byte
// permute, and one subtraction removes 2^23 + 128. The result is exact.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace alise {

constexpr int kVecElems = 8;            // elements per vector
constexpr unsigned kFullWarpMask = 0xffffffffu;

__device__ __forceinline__ float negative_infinity() { return __int_as_float(0xff800000); }

// 2^x with the hardware approximation (2 ulp); 2^-inf = +0, which the online softmax relies on.
__device__ __forceinline__ float fast_exp2(float x) {
#ifdef __CUDA_ARCH__
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);  // host compilation (the CPU emulator); never runs on the GPU
#endif
}

// Storage of 8 elements of T in registers.
template <typename T> struct Vec8;
template <> struct Vec8<__half> { using Type = uint4; };
template <> struct Vec8<__nv_bfloat16> { using Type = uint4; };
template <> struct Vec8<int8_t> { using Type = uint2; };

template <typename T>
__device__ __forceinline__ typename Vec8<T>::Type load_vec8(const T* source) {
  return *reinterpret_cast<const typename Vec8<T>::Type*>(source);
}

template <typename T>
__device__ __forceinline__ typename Vec8<T>::Type zero_vec8() {
  typename Vec8<T>::Type zero;
  if constexpr (sizeof(zero) == 16) {
    zero = make_uint4(0u, 0u, 0u, 0u);
  } else {
    zero = make_uint2(0u, 0u);
  }
  return zero;
}

__device__ __forceinline__ void pair_to_float(__half, uint32_t bits, float* out) {
  __half2 pair;
  *reinterpret_cast<uint32_t*>(&pair) = bits;
  const float2 values = __half22float2(pair);
  out[0] = values.x;
  out[1] = values.y;
}

__device__ __forceinline__ void pair_to_float(__nv_bfloat16, uint32_t bits, float* out) {
  out[0] = __uint_as_float(bits << 16);           // low element
  out[1] = __uint_as_float(bits & 0xffff0000u);   // high element
}

__device__ __forceinline__ void int8x4_to_float(uint32_t bits, float* out) {
  const uint32_t biased = bits ^ 0x80808080u;  // each byte b -> b + 128, unsigned
  constexpr float kMagic = 8388736.0f;         // 2^23 + 128
  out[0] = __uint_as_float(__byte_perm(biased, 0x4b000000u, 0x7540)) - kMagic;
  out[1] = __uint_as_float(__byte_perm(biased, 0x4b000000u, 0x7541)) - kMagic;
  out[2] = __uint_as_float(__byte_perm(biased, 0x4b000000u, 0x7542)) - kMagic;
  out[3] = __uint_as_float(__byte_perm(biased, 0x4b000000u, 0x7543)) - kMagic;
}

template <typename T>
__device__ __forceinline__ void vec8_to_float(const uint4& bits, float* out) {
  pair_to_float(T(), bits.x, out + 0);
  pair_to_float(T(), bits.y, out + 2);
  pair_to_float(T(), bits.z, out + 4);
  pair_to_float(T(), bits.w, out + 6);
}

template <typename T>
__device__ __forceinline__ void vec8_to_float(const uint2& bits, float* out) {
  static_assert(sizeof(T) == 1, "uint2 vectors hold int8");
  int8x4_to_float(bits.x, out + 0);
  int8x4_to_float(bits.y, out + 4);
}

__device__ __forceinline__ float to_float(__half value) { return __half2float(value); }
__device__ __forceinline__ float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }

template <typename T> __device__ __forceinline__ T from_float(float value);
template <> __device__ __forceinline__ __half from_float<__half>(float value) { return __float2half_rn(value); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float value) {
  return __float2bfloat16_rn(value);
}

// Sum / max over lanes whose ids differ only in the bits FIRST, 2*FIRST, ..., LAST.
template <int FIRST, int LAST>
__device__ __forceinline__ float warp_sum_over(float value) {
#pragma unroll
  for (int offset = FIRST; offset <= LAST; offset *= 2) value += __shfl_xor_sync(kFullWarpMask, value, offset);
  return value;
}

template <int FIRST, int LAST>
__device__ __forceinline__ float warp_max_over(float value) {
#pragma unroll
  for (int offset = FIRST; offset <= LAST; offset *= 2) {
    value = fmaxf(value, __shfl_xor_sync(kFullWarpMask, value, offset));
  }
  return value;
}

}  // namespace alise
