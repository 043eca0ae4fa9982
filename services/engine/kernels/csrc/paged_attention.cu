// Entry point of paged attention: picks the head-dim kernel family, then, when the context was
// split into several partitions, runs the reduction pass that merges their partials.
//
// Partition p of a query row left (acc_p, max_p, sum_p) with acc_p = sum_i 2^(s_i - max_p) v_i and
// sum_p = sum_i 2^(s_i - max_p) over its positions; with M = max_p max_p, the output is
//   sum_p 2^(max_p - M) acc_p / sum_p 2^(max_p - M) sum_p.
// Every partition of every row is written by the attention pass; one that saw no key of the row
// (past the context or the row's causal limit) has max -inf and weighs 0.
#include "paged_attention_launch.cuh"

namespace alise {

template <typename QueryT>
__global__ void __launch_bounds__(128) paged_attention_reduce_kernel(const PagedAttentionArgs args) {
  const int64_t token = blockIdx.x;
  const int head = blockIdx.y;
  const int64_t first = (token * args.num_heads + head) * args.num_splits;
  float max_log2 = negative_infinity();
  for (int split = 0; split < args.num_splits; ++split) max_log2 = fmaxf(max_log2, args.partial_max[first + split]);
  QueryT* out = static_cast<QueryT*>(args.out) + token * args.out_token_stride + head * args.out_head_stride;
  for (int dim = threadIdx.x; dim < args.head_dim; dim += blockDim.x) {
    float sum = 0.0f, acc = 0.0f;
    for (int split = 0; split < args.num_splits; ++split) {
      const float weight = weight_of(args.partial_max[first + split], max_log2);
      sum += args.partial_sum[first + split] * weight;
      acc += args.partial_acc[(first + split) * args.head_dim + dim] * weight;
    }
    out[dim] = from_float<QueryT>(sum > 0.0f ? acc / sum : 0.0f);
  }
}

int launch_paged_attention(const PagedAttentionArgs& args, void* stream_handle) {
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  int status = static_cast<int>(cudaErrorInvalidValue);
  if (args.head_dim == 64) status = launch_paged_attention_hd64(args, stream);
  if (args.head_dim == 128) status = launch_paged_attention_hd128(args, stream);
  if (status != 0 || args.num_splits == 1) return status;
  const dim3 grid(args.num_tokens, args.num_heads);
  if (args.query_type == ElementType::kFloat16) {
    launch_kernel(paged_attention_reduce_kernel<__half>, grid, dim3(args.head_dim), stream, args);
  } else {
    launch_kernel(paged_attention_reduce_kernel<__nv_bfloat16>, grid, dim3(args.head_dim), stream, args);
  }
  return static_cast<int>(cudaGetLastError());
}

const char* cuda_error_name(int code) { return cudaGetErrorName(static_cast<cudaError_t>(code)); }

}  // namespace alise
