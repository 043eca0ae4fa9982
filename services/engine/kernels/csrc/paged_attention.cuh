// Paged decode attention: one CTA per (kv head, group tile, sequence, KV partition).
//
// Work split, for head_dim 128 (16 lanes per position) and a 16-position tile:
//
//   CTA (kv head h, sequence s, partition p): the GROUP_TILE query heads of h that it serves
//   share every K/V load (GQA); 4 warps take the partition's tiles round-robin.
//
//   warp, one tile = kRows rows x kTokensPerRow positions:
//       lanes  0..15 -> position 2r,   dims [8*lane, 8*lane + 8)      one 16-byte load each
//       lanes 16..31 -> position 2r+1, dims [8*(lane-16), ...)
//   a position's score = shuffle-sum over its 16 lanes; the tile max = shuffle-max over rows
//   and positions, so the running max stays warp-uniform (online softmax, base-2 exponentials
//   with log2(e) folded into the query). P.V accumulates in registers, 8 dims per lane.
//
//   end: lanes of a warp reduce across positions, warps merge through shared memory, then the
//   CTA writes the normalized output (one partition) or its partial (acc, max, sum) for the
//   reduction pass (several partitions, paged_decode.cu).
//
// head_dim 64 uses 8 lanes per position (4 positions per row). int8 caches load 8 bytes per lane
// and position; the per-(block, kv head) scale multiplies the score (keys) and the softmax
// weight (values), so dequantization costs no extra pass. A tile never straddles two blocks.
#pragma once

#include <type_traits>

#include "launchers.h"
#include "vec.cuh"

namespace alise {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = 32 * kDecodeWarps;
constexpr float kLog2e = 1.4426950408889634f;

template <int HEAD_DIM, int GROUP_TILE>
struct DecodeTiling {
  static constexpr int kThreadsPerToken = HEAD_DIM / kVecElems;  // lanes sharing one position
  static constexpr int kTokensPerRow = 32 / kThreadsPerToken;     // positions one warp row covers
  static constexpr int kRowsFor16 = 16 / kTokensPerRow;           // rows of a 16-position tile
  static constexpr int kRowsByRegisters = 32 / GROUP_TILE;        // keeps rows x heads scores <= 32
  static constexpr int kRows = kRowsFor16 < kRowsByRegisters ? kRowsFor16 : kRowsByRegisters;
  static constexpr int kTileTokens = kRows * kTokensPerRow;       // positions per warp iteration
  static_assert(HEAD_DIM % kVecElems == 0 && 32 % kThreadsPerToken == 0, "unsupported head_dim");
};

// This lane's online-softmax state for the CTA's query heads.
template <int GROUP_TILE>
struct SoftmaxState {
  float max_log2[GROUP_TILE];        // running max score, log2 units; warp-uniform
  float sum[GROUP_TILE];             // this lane's share of the softmax denominator
  float acc[GROUP_TILE][kVecElems];  // this lane's share of sum(p * v) over its 8 dims
};

template <typename QueryT, int GROUP_TILE>
__device__ __forceinline__ void load_queries(const PagedDecodeArgs& args, int seq, int first_head,
                                             int num_heads_here, int dim0,
                                             float (&query)[GROUP_TILE][kVecElems]) {
  const QueryT* base = static_cast<const QueryT*>(args.query) + seq * args.query_seq_stride + dim0;
  const float scale_log2 = args.scale * kLog2e;
#pragma unroll
  for (int g = 0; g < GROUP_TILE; ++g) {
    if (g < num_heads_here) {
      vec8_to_float<QueryT>(load_vec8(base + (first_head + g) * args.query_head_stride), query[g]);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) query[g][e] *= scale_log2;
    } else {  // a head past the group: zeros, its output is never written
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) query[g][e] = 0.0f;
    }
  }
}

// Scores of one tile's positions (valid ones scaled, the rest -inf), warp-reduced per position.
template <typename CacheT, int HEAD_DIM, int GROUP_TILE, typename VecT, int ROWS>
__device__ __forceinline__ void tile_scores(const float (&query)[GROUP_TILE][kVecElems], const VecT (&keys)[ROWS],
                                            float key_scale, int num_valid, int token_in_row,
                                            float (&scores)[ROWS][GROUP_TILE]) {
  using Tiling = DecodeTiling<HEAD_DIM, GROUP_TILE>;
#pragma unroll
  for (int row = 0; row < ROWS; ++row) {
    float key[kVecElems];
    vec8_to_float<CacheT>(keys[row], key);
    const bool valid = row * Tiling::kTokensPerRow + token_in_row < num_valid;
#pragma unroll
    for (int g = 0; g < GROUP_TILE; ++g) {
      float dot = 0.0f;
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) dot = fmaf(query[g][e], key[e], dot);
      dot = warp_sum_over<1, Tiling::kThreadsPerToken / 2>(dot);
      scores[row][g] = valid ? dot * key_scale : negative_infinity();
    }
  }
}

// Folds the tile into the running max; turns scores into softmax weights p = 2^(s - max).
template <int HEAD_DIM, int GROUP_TILE, int ROWS>
__device__ __forceinline__ void online_softmax_update(SoftmaxState<GROUP_TILE>& state,
                                                      float (&scores)[ROWS][GROUP_TILE]) {
  using Tiling = DecodeTiling<HEAD_DIM, GROUP_TILE>;
#pragma unroll
  for (int g = 0; g < GROUP_TILE; ++g) {
    float tile_max = scores[0][g];
#pragma unroll
    for (int row = 1; row < ROWS; ++row) tile_max = fmaxf(tile_max, scores[row][g]);
    tile_max = warp_max_over<Tiling::kThreadsPerToken, 16>(tile_max);
    const float new_max = fmaxf(state.max_log2[g], tile_max);  // finite: a tile has a valid position
    const float rescale = fast_exp2(state.max_log2[g] - new_max);  // 0 on the first tile
    state.max_log2[g] = new_max;
    state.sum[g] *= rescale;
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) state.acc[g][e] *= rescale;
#pragma unroll
    for (int row = 0; row < ROWS; ++row) {
      scores[row][g] = fast_exp2(scores[row][g] - new_max);
      state.sum[g] += scores[row][g];
    }
  }
}

template <typename CacheT, int HEAD_DIM, int GROUP_TILE>
__device__ __forceinline__ void attend_tile(const float (&query)[GROUP_TILE][kVecElems],
                                            SoftmaxState<GROUP_TILE>& state, const CacheT* key_head,
                                            const CacheT* value_head, const PagedDecodeArgs& args, int kv_head,
                                            int block, int first_offset, int num_valid, int token_in_row) {
  using Tiling = DecodeTiling<HEAD_DIM, GROUP_TILE>;
  using VecT = typename Vec8<CacheT>::Type;
  constexpr int kRows = Tiling::kRows;
  VecT keys[kRows], values[kRows];
  const int64_t block_base = int64_t(block) * args.cache_block_stride;
#pragma unroll
  for (int row = 0; row < kRows; ++row) {  // every load of the tile is issued before any use
    const int token = row * Tiling::kTokensPerRow + token_in_row;
    const int64_t offset = block_base + int64_t(first_offset + token) * args.cache_token_stride;
    keys[row] = token < num_valid ? load_vec8(key_head + offset) : zero_vec8<CacheT>();
    values[row] = token < num_valid ? load_vec8(value_head + offset) : zero_vec8<CacheT>();
  }
  float key_scale = 1.0f, value_scale = 1.0f;
  if constexpr (std::is_same_v<CacheT, int8_t>) {
    const int64_t scale_index = int64_t(block) * args.scale_block_stride + kv_head;
    key_scale = args.key_scales[scale_index];
    value_scale = args.value_scales[scale_index];
  }
  float scores[kRows][GROUP_TILE];
  tile_scores<CacheT, HEAD_DIM, GROUP_TILE>(query, keys, key_scale, num_valid, token_in_row, scores);
  online_softmax_update<HEAD_DIM, GROUP_TILE>(state, scores);
#pragma unroll
  for (int row = 0; row < kRows; ++row) {
    float value[kVecElems];
    vec8_to_float<CacheT>(values[row], value);
#pragma unroll
    for (int g = 0; g < GROUP_TILE; ++g) {
      const float weight = scores[row][g] * value_scale;  // invalid positions: weight 0, value 0
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) state.acc[g][e] = fmaf(weight, value[e], state.acc[g][e]);
    }
  }
}

// Reduces lanes and warps; writes the output (one partition) or this partition's partial.
template <typename QueryT, int HEAD_DIM, int GROUP_TILE>
__device__ __forceinline__ void merge_and_store(SoftmaxState<GROUP_TILE>& state, const PagedDecodeArgs& args,
                                                int seq, int split, int first_head, int num_heads_here) {
  constexpr int kThreadsPerToken = DecodeTiling<HEAD_DIM, GROUP_TILE>::kThreadsPerToken;
  __shared__ float shared_max[kDecodeWarps][GROUP_TILE];
  __shared__ float shared_sum[kDecodeWarps][GROUP_TILE];
  __shared__ float shared_acc[kDecodeWarps][GROUP_TILE][HEAD_DIM];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int g = 0; g < GROUP_TILE; ++g) {
    state.sum[g] = warp_sum_over<kThreadsPerToken, 16>(state.sum[g]);
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) state.acc[g][e] = warp_sum_over<kThreadsPerToken, 16>(state.acc[g][e]);
    if (lane < kThreadsPerToken) {
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) shared_acc[warp][g][lane * kVecElems + e] = state.acc[g][e];
    }
    if (lane == 0) {
      shared_max[warp][g] = state.max_log2[g];
      shared_sum[warp][g] = state.sum[g];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < num_heads_here * HEAD_DIM; i += kDecodeThreads) {
    const int g = i / HEAD_DIM, dim = i % HEAD_DIM, head = first_head + g;
    float max_log2 = negative_infinity();
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) max_log2 = fmaxf(max_log2, shared_max[w][g]);
    float sum = 0.0f, acc = 0.0f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) {  // a warp without tiles has max -inf: weight 0
      const float weight = fast_exp2(shared_max[w][g] - max_log2);
      sum += shared_sum[w][g] * weight;
      acc += shared_acc[w][g][dim] * weight;
    }
    if (args.num_splits == 1) {
      QueryT* out = static_cast<QueryT*>(args.out) + seq * args.out_seq_stride + head * args.out_head_stride;
      out[dim] = from_float<QueryT>(acc / sum);
    } else {
      const int64_t index = (int64_t(seq) * args.num_heads + head) * args.num_splits + split;
      args.partial_acc[index * HEAD_DIM + dim] = acc;
      if (dim == 0) {
        args.partial_max[index] = max_log2;
        args.partial_sum[index] = sum;
      }
    }
  }
}

template <typename QueryT, int HEAD_DIM>
__device__ __forceinline__ void store_zeros(const PagedDecodeArgs& args, int seq, int first_head,
                                            int num_heads_here) {
  QueryT* out = static_cast<QueryT*>(args.out) + seq * args.out_seq_stride;
  for (int i = threadIdx.x; i < num_heads_here * HEAD_DIM; i += kDecodeThreads) {
    out[(first_head + i / HEAD_DIM) * args.out_head_stride + i % HEAD_DIM] = from_float<QueryT>(0.0f);
  }
}

// Resident CTAs per SM asked of the register allocator: more query heads per CTA need more
// registers (queries, accumulators and scores all scale with GROUP_TILE). Chosen so that no
// variant spills on sm_80 or sm_90 (asked 3 for GROUP_TILE 4, ptxas spilled 16 bytes on sm_90).
template <int GROUP_TILE>
constexpr int decode_min_ctas_per_sm() { return GROUP_TILE <= 2 ? 4 : 2; }

template <typename QueryT, typename CacheT, int HEAD_DIM, int BLOCK_SIZE, int GROUP_TILE>
__global__ void __launch_bounds__(kDecodeThreads, decode_min_ctas_per_sm<GROUP_TILE>())
    paged_decode_kernel(const PagedDecodeArgs args) {
  using Tiling = DecodeTiling<HEAD_DIM, GROUP_TILE>;
  constexpr int kTile = Tiling::kTileTokens;
  static_assert(BLOCK_SIZE % kTile == 0, "a tile must not straddle two blocks");
  const int group = args.num_heads / args.num_kv_heads;
  const int tiles_per_group = (group + GROUP_TILE - 1) / GROUP_TILE;
  const int kv_head = blockIdx.x / tiles_per_group;
  const int first_in_group = (blockIdx.x % tiles_per_group) * GROUP_TILE;
  const int first_head = kv_head * group + first_in_group;
  const int num_heads_here = min(GROUP_TILE, group - first_in_group);
  const int seq = blockIdx.y, split = blockIdx.z;
  const int token_begin = split * args.partition_tokens;
  const int token_end = min(args.context_lens[seq], token_begin + args.partition_tokens);
  if (token_begin >= token_end) {  // empty partition: the reduction pass never reads it
    if (args.num_splits == 1) store_zeros<QueryT, HEAD_DIM>(args, seq, first_head, num_heads_here);
    return;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int token_in_row = lane / Tiling::kThreadsPerToken;
  const int dim0 = (lane % Tiling::kThreadsPerToken) * kVecElems;
  float query[GROUP_TILE][kVecElems];
  load_queries<QueryT, GROUP_TILE>(args, seq, first_head, num_heads_here, dim0, query);
  SoftmaxState<GROUP_TILE> state;
#pragma unroll
  for (int g = 0; g < GROUP_TILE; ++g) {
    state.max_log2[g] = negative_infinity();
    state.sum[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) state.acc[g][e] = 0.0f;
  }
  const CacheT* key_head = static_cast<const CacheT*>(args.key_cache) + kv_head * args.cache_head_stride + dim0;
  const CacheT* value_head = static_cast<const CacheT*>(args.value_cache) + kv_head * args.cache_head_stride + dim0;
  const int32_t* table = args.block_tables + seq * args.block_table_stride;
  const int num_tiles = (token_end - token_begin + kTile - 1) / kTile;
  int block = warp < num_tiles ? table[(token_begin + warp * kTile) / BLOCK_SIZE] : 0;
  for (int tile = warp; tile < num_tiles; tile += kDecodeWarps) {
    const int tile_begin = token_begin + tile * kTile;
    const int next_tile = tile + kDecodeWarps;  // its block id is fetched while this tile computes
    const int next_block = next_tile < num_tiles ? table[(token_begin + next_tile * kTile) / BLOCK_SIZE] : 0;
    attend_tile<CacheT, HEAD_DIM, GROUP_TILE>(query, state, key_head, value_head, args, kv_head, block,
                                              tile_begin % BLOCK_SIZE, min(kTile, token_end - tile_begin),
                                              token_in_row);
    block = next_block;
  }
  merge_and_store<QueryT, HEAD_DIM, GROUP_TILE>(state, args, seq, split, first_head, num_heads_here);
}

}  // namespace alise
