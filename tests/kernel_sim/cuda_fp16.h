// CPU stand-in for <cuda_fp16.h> (tests/kernel_sim only): IEEE half via the compiler's _Float16.
#pragma once

#include "cuda_runtime.h"

struct __half {
  _Float16 value = 0;
};
struct __half2 {
  __half x, y;
};
static_assert(sizeof(__half2) == 4, "two halves pack into 32 bits");

inline float __half2float(__half h) { return static_cast<float>(h.value); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }
inline float2 __half22float2(__half2 pair) { return {__half2float(pair.x), __half2float(pair.y)}; }
