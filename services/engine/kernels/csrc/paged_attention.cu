// Entry point of paged decode attention: picks the head-dim kernel family, then, when the context
// was split into several partitions, runs the reduction pass that merges their partials.
//
// Partition p of a sequence left (acc_p, max_p, sum_p) with acc_p = sum_i 2^(s_i - max_p) v_i and
// sum_p = sum_i 2^(s_i - max_p) over its positions; with M = max_p max_p, the output is
//   sum_p 2^(max_p - M) acc_p / sum_p 2^(max_p - M) sum_p.
// Partitions past a sequence's context were never written and are never read.
#include "paged_decode_launch.cuh"

namespace alise {

template <typename QueryT>
__global__ void __launch_bounds__(128) paged_decode_reduce_kernel(const PagedDecodeArgs args) {
  const int head = blockIdx.x, seq = blockIdx.y;
  const int context_len = args.context_lens[seq];
  const int num_used =
      context_len <= 0 ? 0 : min(args.num_splits, (context_len + args.partition_tokens - 1) / args.partition_tokens);
  const int64_t first = (int64_t(seq) * args.num_heads + head) * args.num_splits;
  float max_log2 = negative_infinity();
  for (int split = 0; split < num_used; ++split) max_log2 = fmaxf(max_log2, args.partial_max[first + split]);
  QueryT* out = static_cast<QueryT*>(args.out) + seq * args.out_seq_stride + head * args.out_head_stride;
  for (int dim = threadIdx.x; dim < args.head_dim; dim += blockDim.x) {
    float sum = 0.0f, acc = 0.0f;
    for (int split = 0; split < num_used; ++split) {
      const float weight = fast_exp2(args.partial_max[first + split] - max_log2);
      sum += args.partial_sum[first + split] * weight;
      acc += args.partial_acc[(first + split) * args.head_dim + dim] * weight;
    }
    out[dim] = from_float<QueryT>(num_used > 0 ? acc / sum : 0.0f);
  }
}

int launch_paged_decode(const PagedDecodeArgs& args, void* stream_handle) {
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  int status = static_cast<int>(cudaErrorInvalidValue);
  if (args.head_dim == 64) status = launch_paged_decode_hd64(args, stream);
  if (args.head_dim == 128) status = launch_paged_decode_hd128(args, stream);
  if (status != 0 || args.num_splits == 1) return status;
  const dim3 grid(args.num_heads, args.num_seqs);
  if (args.query_type == ElementType::kFloat16) {
    launch_kernel(paged_decode_reduce_kernel<__half>, grid, dim3(args.head_dim), stream, args);
  } else {
    launch_kernel(paged_decode_reduce_kernel<__nv_bfloat16>, grid, dim3(args.head_dim), stream, args);
  }
  return static_cast<int>(cudaGetLastError());
}

const char* cuda_error_name(int code) { return cudaGetErrorName(static_cast<cudaError_t>(code)); }

}  // namespace alise
