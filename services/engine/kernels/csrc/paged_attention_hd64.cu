// Paged attention kernels for head_dim 64 (all query/cache types, block sizes and row tiles);
// one file per head dim so that the two compile in parallel.
#include "paged_attention_launch.cuh"

namespace alise {

int launch_paged_attention_hd64(const PagedAttentionArgs& args, cudaStream_t stream) {
  return dispatch_types<64>(args, stream);
}

}  // namespace alise
