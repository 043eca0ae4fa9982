// Launch and dispatch of the paged decode kernels: run-time shape -> compiled variant.
#pragma once

#include "launch.cuh"
#include "paged_decode.cuh"

namespace alise {

template <typename QueryT, typename CacheT, int HEAD_DIM, int BLOCK_SIZE, int GROUP_TILE>
int launch_decode_kernel(const PagedDecodeArgs& args, cudaStream_t stream) {
  const int group = args.num_heads / args.num_kv_heads;
  const dim3 grid(args.num_kv_heads * ((group + GROUP_TILE - 1) / GROUP_TILE), args.num_seqs, args.num_splits);
  launch_kernel(paged_decode_kernel<QueryT, CacheT, HEAD_DIM, BLOCK_SIZE, GROUP_TILE>, grid, dim3(kDecodeThreads), stream, args);
  return static_cast<int>(cudaGetLastError());
}

// Query heads per CTA: the smallest of 1, 2, 4, 8 that covers the GQA group (larger groups
// take several CTAs per kv head, 8 query heads each).
template <typename QueryT, typename CacheT, int HEAD_DIM, int BLOCK_SIZE>
int dispatch_group_tile(const PagedDecodeArgs& args, cudaStream_t stream) {
  const int group = args.num_heads / args.num_kv_heads;
  if (group <= 1) return launch_decode_kernel<QueryT, CacheT, HEAD_DIM, BLOCK_SIZE, 1>(args, stream);
  if (group <= 2) return launch_decode_kernel<QueryT, CacheT, HEAD_DIM, BLOCK_SIZE, 2>(args, stream);
  if (group <= 4) return launch_decode_kernel<QueryT, CacheT, HEAD_DIM, BLOCK_SIZE, 4>(args, stream);
  return launch_decode_kernel<QueryT, CacheT, HEAD_DIM, BLOCK_SIZE, 8>(args, stream);
}

template <typename QueryT, typename CacheT, int HEAD_DIM>
int dispatch_block_size(const PagedDecodeArgs& args, cudaStream_t stream) {
  switch (args.block_size) {
    case 16: return dispatch_group_tile<QueryT, CacheT, HEAD_DIM, 16>(args, stream);
    case 32: return dispatch_group_tile<QueryT, CacheT, HEAD_DIM, 32>(args, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

template <int HEAD_DIM>
int dispatch_types(const PagedDecodeArgs& args, cudaStream_t stream) {
  const bool int8_cache = args.cache_type == ElementType::kInt8;
  if (args.query_type == ElementType::kFloat16 && (int8_cache || args.cache_type == ElementType::kFloat16)) {
    return int8_cache ? dispatch_block_size<__half, int8_t, HEAD_DIM>(args, stream)
                      : dispatch_block_size<__half, __half, HEAD_DIM>(args, stream);
  }
  if (args.query_type == ElementType::kBFloat16 && (int8_cache || args.cache_type == ElementType::kBFloat16)) {
    return int8_cache ? dispatch_block_size<__nv_bfloat16, int8_t, HEAD_DIM>(args, stream)
                      : dispatch_block_size<__nv_bfloat16, __nv_bfloat16, HEAD_DIM>(args, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int launch_paged_decode_hd64(const PagedDecodeArgs& args, cudaStream_t stream);
int launch_paged_decode_hd128(const PagedDecodeArgs& args, cudaStream_t stream);

}  // namespace alise
