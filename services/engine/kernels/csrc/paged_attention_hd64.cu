// Paged decode kernels for head_dim 64 (all query/cache types, block sizes and group tiles);
// one file per head dim so that the two compile in parallel.
#include "paged_decode_launch.cuh"

namespace alise {

int launch_paged_decode_hd64(const PagedDecodeArgs& args, cudaStream_t stream) {
  return dispatch_types<64>(args, stream);
}

}  // namespace alise
