// CPU stand-in for <cuda_bf16.h> (tests/kernel_sim only): bfloat16 as the high half of a float.
#pragma once

#include "cuda_runtime.h"

struct __nv_bfloat16 {
  uint16_t bits = 0;
};

inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float(static_cast<unsigned>(b.bits) << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {  // round to nearest even; NaN stays NaN
  unsigned bits;
  std::memcpy(&bits, &f, 4);
  if (isnan(f)) return __nv_bfloat16{static_cast<uint16_t>((bits >> 16) | 0x40u)};
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return __nv_bfloat16{static_cast<uint16_t>(bits >> 16)};
}
