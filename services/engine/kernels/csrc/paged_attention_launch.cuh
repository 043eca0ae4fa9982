// Launch and dispatch of the paged attention kernels: run-time shape -> compiled variant.
#pragma once

#include "launch.cuh"
#include "paged_attention.cuh"

namespace alise {

template <typename QueryT, typename CacheT, int HEAD_DIM, int BLOCK_SIZE, int ROW_TILE>
int launch_attention_kernel(const PagedAttentionArgs& args, cudaStream_t stream) {
  const dim3 grid(args.num_work_items, args.num_kv_heads, args.num_splits);
  launch_kernel(paged_attention_kernel<QueryT, CacheT, HEAD_DIM, BLOCK_SIZE, ROW_TILE>, grid, dim3(kAttentionThreads),
                stream, args);
  return static_cast<int>(cudaGetLastError());
}

// Rows per CTA, as the caller planned its work items (ops.row_tile_for): 1, 2, 4 or 8.
template <typename QueryT, typename CacheT, int HEAD_DIM, int BLOCK_SIZE>
int dispatch_row_tile(const PagedAttentionArgs& args, cudaStream_t stream) {
  switch (args.row_tile) {
    case 1: return launch_attention_kernel<QueryT, CacheT, HEAD_DIM, BLOCK_SIZE, 1>(args, stream);
    case 2: return launch_attention_kernel<QueryT, CacheT, HEAD_DIM, BLOCK_SIZE, 2>(args, stream);
    case 4: return launch_attention_kernel<QueryT, CacheT, HEAD_DIM, BLOCK_SIZE, 4>(args, stream);
    case 8: return launch_attention_kernel<QueryT, CacheT, HEAD_DIM, BLOCK_SIZE, 8>(args, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

template <typename QueryT, typename CacheT, int HEAD_DIM>
int dispatch_block_size(const PagedAttentionArgs& args, cudaStream_t stream) {
  switch (args.block_size) {
    case 16: return dispatch_row_tile<QueryT, CacheT, HEAD_DIM, 16>(args, stream);
    case 32: return dispatch_row_tile<QueryT, CacheT, HEAD_DIM, 32>(args, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

template <int HEAD_DIM>
int dispatch_types(const PagedAttentionArgs& args, cudaStream_t stream) {
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

int launch_paged_attention_hd64(const PagedAttentionArgs& args, cudaStream_t stream);
int launch_paged_attention_hd128(const PagedAttentionArgs& args, cudaStream_t stream);

}  // namespace alise
