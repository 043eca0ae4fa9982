// Writes a step's new keys and values into the paged cache.
//
// fp16/bf16 cache: a copy; one CTA per token, one 16-byte vector per thread and step.
//
// int8 cache, quantize on write: one float32 scale per (block, kv head), symmetric,
// scale = max|x| / 127 over the positions the block holds. Decoding fills a block one position per
// step, so the scale cannot be known when the block's first position is written: it grows.
// One CTA per (run, kv head), a run being the step's consecutive tokens that land in one block
// (a decode is a run of one; a prefill chunk fills whole runs):
//
//   block b, offsets:  [ 0 .. first-1 | first .. first+n-1 | ... ]
//                        written by      this run (n tokens)
//                        earlier steps
//   1. m = max|x| over the run's new values
//   2. old = scale[b] if first > 0, else 0 (a fresh block: its stored scale is stale)
//   3. new = max(old, m / 127); if new > old, requantize offsets [0, first): q = rint(q * old/new)
//   4. q = clamp(rint(x * (1/new)), -127, 127) for the run; scale[b] = new
//
// Invariants relied on: within a step, the tokens of one block are consecutive in the batch and
// fill consecutive offsets; offsets [0, first) hold the same request's earlier positions (true for
// per-request blocks written in position order, recompute included). Each requantization adds at
// most half a quantization step of the new scale to the earlier positions; services/engine/kv_quant.py
// holds the torch reference that mirrors this kernel operation for operation.
#include "launch.cuh"
#include "launchers.h"
#include "vec.cuh"

namespace alise {
namespace {

constexpr int kWriteThreads = 128;
constexpr int kWriteWarps = kWriteThreads / 32;
constexpr float kInt8Max = 127.0f;

__global__ void __launch_bounds__(kWriteThreads) cache_write_copy_kernel(const CacheWriteArgs args) {
  const int token = blockIdx.x;
  const int64_t slot = args.slot_mapping[token];
  if (slot < 0) return;
  const int64_t block = slot / args.block_size, offset = slot % args.block_size;
  const int vecs_per_head = args.head_dim / kVecElems;
  const uint16_t* key = static_cast<const uint16_t*>(args.key);
  const uint16_t* value = static_cast<const uint16_t*>(args.value);
  uint16_t* key_cache = static_cast<uint16_t*>(args.key_cache);
  uint16_t* value_cache = static_cast<uint16_t*>(args.value_cache);
  for (int i = threadIdx.x; i < args.num_kv_heads * vecs_per_head; i += blockDim.x) {
    const int head = i / vecs_per_head, dim = (i % vecs_per_head) * kVecElems;
    const int64_t source = token * args.source_token_stride + head * args.source_head_stride + dim;
    const int64_t target = block * args.cache_block_stride + offset * args.cache_token_stride +
                           head * args.cache_head_stride + dim;
    *reinterpret_cast<uint4*>(key_cache + target) = *reinterpret_cast<const uint4*>(key + source);
    *reinterpret_cast<uint4*>(value_cache + target) = *reinterpret_cast<const uint4*>(value + source);
  }
}

// Tokens in the run that starts at `token` (same block); 0 when `token` does not start a run.
__device__ int run_length(const CacheWriteArgs& args, int token, int64_t block) {
  if (token > 0) {
    const int64_t previous = args.slot_mapping[token - 1];
    if (previous >= 0 && previous / args.block_size == block) return 0;
  }
  int length = 1;
  while (token + length < args.num_tokens && length < args.block_size) {
    const int64_t next = args.slot_mapping[token + length];
    if (next < 0 || next / args.block_size != block) break;
    ++length;
  }
  return length;
}

// max over the CTA of two values; every thread gets the result.
__device__ float2 cta_max(float first, float second) {
  __shared__ float shared[2][kWriteWarps];
  first = warp_max_over<1, 16>(first);
  second = warp_max_over<1, 16>(second);
  if (threadIdx.x % 32 == 0) {
    shared[0][threadIdx.x / 32] = first;
    shared[1][threadIdx.x / 32] = second;
  }
  __syncthreads();
  float2 result = make_float2(0.0f, 0.0f);
#pragma unroll
  for (int w = 0; w < kWriteWarps; ++w) {
    result.x = fmaxf(result.x, shared[0][w]);
    result.y = fmaxf(result.y, shared[1][w]);
  }
  return result;
}

template <typename SourceT>
__device__ float run_abs_max(const SourceT* source, const CacheWriteArgs& args, int token, int head, int length) {
  float result = 0.0f;  // fmaxf ignores NaN inputs
  for (int i = threadIdx.x; i < length * args.head_dim; i += blockDim.x) {
    const int64_t index =
        (token + i / args.head_dim) * args.source_token_stride + head * args.source_head_stride + i % args.head_dim;
    result = fmaxf(result, fabsf(to_float(source[index])));
  }
  return result;
}

// q <- rint(q * ratio) at offsets [0, num_offsets) of one (block, head); ratio < 1, no clamp needed.
__device__ void requantize(int8_t* head_block, const CacheWriteArgs& args, int num_offsets, float ratio) {
  for (int i = threadIdx.x; i < num_offsets * args.head_dim; i += blockDim.x) {
    int8_t& q = head_block[(i / args.head_dim) * args.cache_token_stride + i % args.head_dim];
    q = static_cast<int8_t>(__float2int_rn(static_cast<float>(q) * ratio));
  }
}

template <typename SourceT>
__device__ void quantize_run(const SourceT* source, int8_t* head_block, const CacheWriteArgs& args, int token,
                             int head, int length, float scale) {
  const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
  for (int i = threadIdx.x; i < length * args.head_dim; i += blockDim.x) {
    const int t = token + i / args.head_dim, dim = i % args.head_dim;
    const float x = to_float(source[t * args.source_token_stride + head * args.source_head_stride + dim]);
    const int q = max(-127, min(127, __float2int_rn(x * inverse)));
    const int64_t offset = args.slot_mapping[t] % args.block_size;
    head_block[offset * args.cache_token_stride + dim] = static_cast<int8_t>(q);
  }
}

template <typename SourceT>
__global__ void __launch_bounds__(kWriteThreads) cache_write_int8_kernel(const CacheWriteArgs args) {
  const int token = blockIdx.x, head = blockIdx.y;
  const int64_t slot = args.slot_mapping[token];
  if (slot < 0) return;
  const int64_t block = slot / args.block_size;
  const int length = run_length(args, token, block);
  if (length == 0) return;  // another CTA writes this token's run
  const int first_offset = static_cast<int>(slot % args.block_size);
  const SourceT* key = static_cast<const SourceT*>(args.key);
  const SourceT* value = static_cast<const SourceT*>(args.value);
  const float2 maxima =
      cta_max(run_abs_max(key, args, token, head, length), run_abs_max(value, args, token, head, length));
  const int64_t scale_index = block * args.scale_block_stride + head;
  const float old_key_scale = first_offset > 0 ? args.key_scales[scale_index] : 0.0f;
  const float old_value_scale = first_offset > 0 ? args.value_scales[scale_index] : 0.0f;
  const float key_scale = fmaxf(old_key_scale, maxima.x / kInt8Max);
  const float value_scale = fmaxf(old_value_scale, maxima.y / kInt8Max);
  const int64_t head_base = block * args.cache_block_stride + head * args.cache_head_stride;
  int8_t* key_block = static_cast<int8_t*>(args.key_cache) + head_base;
  int8_t* value_block = static_cast<int8_t*>(args.value_cache) + head_base;
  if (key_scale > old_key_scale) requantize(key_block, args, first_offset, old_key_scale / key_scale);
  if (value_scale > old_value_scale) requantize(value_block, args, first_offset, old_value_scale / value_scale);
  quantize_run(key, key_block, args, token, head, length, key_scale);
  quantize_run(value, value_block, args, token, head, length, value_scale);
  __syncthreads();  // every thread has read the old scales
  if (threadIdx.x == 0) {
    args.key_scales[scale_index] = key_scale;
    args.value_scales[scale_index] = value_scale;
  }
}

}  // namespace

int launch_cache_write(const CacheWriteArgs& args, void* stream_handle) {
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  if (args.num_tokens == 0) return 0;
  const bool half_source = args.source_type == ElementType::kFloat16;
  if (!half_source && args.source_type != ElementType::kBFloat16) return static_cast<int>(cudaErrorInvalidValue);
  if (args.cache_type == args.source_type) {
    launch_kernel(cache_write_copy_kernel, dim3(args.num_tokens), dim3(kWriteThreads), stream, args);
  } else if (args.cache_type == ElementType::kInt8) {
    const dim3 grid(args.num_tokens, args.num_kv_heads);
    if (half_source) {
      launch_kernel(cache_write_int8_kernel<__half>, grid, dim3(kWriteThreads), stream, args);
    } else {
      launch_kernel(cache_write_int8_kernel<__nv_bfloat16>, grid, dim3(kWriteThreads), stream, args);
    }
  } else {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace alise
