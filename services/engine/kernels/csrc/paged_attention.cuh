// Paged attention for variable-length queries: one CTA per (work item, kv head, KV partition).
//
// A work item is ROW_TILE query rows of one request that share one kv head: a row is a (query
// token, query head of the kv head's group) pair, so GQA heads and the tokens of a prefill chunk
// or a verify query share every K/V load, and a decode with group g is g rows. Each row has its
// own causal limit (the position of its token); the CTA walks the keys up to the largest limit of
// its rows and masks per row.
//
// Work split, for head_dim 128 (16 lanes per position) and a 16-position tile:
//
//   4 warps take the partition's tiles round-robin; warp, one tile = kRows rows x kTokensPerRow
//   positions:
//       lanes  0..15 -> position 2r,   dims [8*lane, 8*lane + 8)      one 16-byte load each
//       lanes 16..31 -> position 2r+1, dims [8*(lane-16), ...)
//   a position's score = shuffle-sum over its 16 lanes; the tile max = shuffle-max over rows
//   and positions, so the running max stays warp-uniform (online softmax, base-2 exponentials
//   with log2(e) folded into the query). P.V accumulates in registers, 8 dims per lane.
//
//   end: lanes of a warp reduce across positions, warps merge through shared memory, then the
//   CTA writes the normalized output (one partition) or its partial (acc, max, sum) for the
//   reduction pass (several partitions, paged_attention.cu).
//
// A row can see no key at all in a tile, a warp or a whole partition (causal limit before it):
// its running max then stays -inf and every merge treats that state as empty (weight 0), never as
// exp2(-inf - -inf) = NaN. head_dim 64 uses 8 lanes per position (4 positions per row). int8
// caches load 8 bytes per lane and position; the per-(block, kv head) scale multiplies the score
// (keys) and the softmax weight (values), so dequantization costs no extra pass. A tile never
// straddles two blocks.
#pragma once

#include <type_traits>

#include "launchers.h"
#include "vec.cuh"

namespace alise {

constexpr int kAttentionWarps = 4;
constexpr int kAttentionThreads = 32 * kAttentionWarps;
constexpr float kLog2e = 1.4426950408889634f;

template <int HEAD_DIM, int ROW_TILE>
struct Tiling {
  static constexpr int kThreadsPerToken = HEAD_DIM / kVecElems;  // lanes sharing one position
  static constexpr int kTokensPerRow = 32 / kThreadsPerToken;     // positions one warp row covers
  static constexpr int kRowsFor16 = 16 / kTokensPerRow;           // rows of a 16-position tile
  static constexpr int kRowsByRegisters = 32 / ROW_TILE;          // keeps rows x queries scores <= 32
  static constexpr int kRows = kRowsFor16 < kRowsByRegisters ? kRowsFor16 : kRowsByRegisters;
  static constexpr int kTileTokens = kRows * kTokensPerRow;       // positions per warp iteration
  static_assert(HEAD_DIM % kVecElems == 0 && 32 % kThreadsPerToken == 0, "unsupported head_dim");
};

// The CTA's query rows: where each one's token and head are, and how far it may look.
template <int ROW_TILE>
struct RowTile {
  int request;               // the work item's request
  int first_token;           // query row of the request's first token
  int first_row;             // row index (token * group + head_in_group) of this CTA's row 0
  int num_rows;              // rows of this CTA that exist (<= ROW_TILE)
  int limit[ROW_TILE];       // last key position each row attends to; -1 for rows past num_rows
  int max_limit;             // the largest of limit
};

// This lane's online-softmax state for the CTA's rows.
template <int ROW_TILE>
struct SoftmaxState {
  float max_log2[ROW_TILE];        // running max score, log2 units; warp-uniform, -inf = nothing seen
  float sum[ROW_TILE];             // this lane's share of the softmax denominator
  float acc[ROW_TILE][kVecElems];  // this lane's share of sum(p * v) over its 8 dims
};

// 2^(x - m), and 0 when x is -inf (an empty state; m may be -inf too).
__device__ __forceinline__ float weight_of(float x, float m) {
  return x == negative_infinity() ? 0.0f : fast_exp2(x - m);
}

template <int ROW_TILE>
__device__ __forceinline__ RowTile<ROW_TILE> row_tile_of(const PagedAttentionArgs& args, int item, int group) {
  RowTile<ROW_TILE> tile;
  if (args.work_items != nullptr) {
    tile.request = args.work_items[2 * item];
    tile.first_row = args.work_items[2 * item + 1];
  } else {
    tile.request = item / args.row_tiles_per_request;
    tile.first_row = (item % args.row_tiles_per_request) * ROW_TILE;
  }
  int query_len = 1;
  tile.first_token = tile.request;
  if (args.query_start_loc != nullptr) {
    tile.first_token = args.query_start_loc[tile.request];
    query_len = args.query_start_loc[tile.request + 1] - tile.first_token;
  }
  const int seq_len = args.seq_lens[tile.request];
  tile.num_rows = max(0, min(ROW_TILE, query_len * group - tile.first_row));
  tile.max_limit = -1;
#pragma unroll
  for (int r = 0; r < ROW_TILE; ++r) {
    const int token = (tile.first_row + r) / group;  // token index within the request
    tile.limit[r] = r < tile.num_rows ? seq_len - query_len + token : -1;
    tile.max_limit = max(tile.max_limit, tile.limit[r]);
  }
  return tile;
}

template <typename QueryT, int ROW_TILE>
__device__ __forceinline__ void load_queries(const PagedAttentionArgs& args, const RowTile<ROW_TILE>& tile,
                                             int group, int kv_head, int dim0,
                                             float (&query)[ROW_TILE][kVecElems]) {
  const QueryT* base = static_cast<const QueryT*>(args.query) + dim0;
  const float scale_log2 = args.scale * kLog2e;
#pragma unroll
  for (int r = 0; r < ROW_TILE; ++r) {
    if (r < tile.num_rows) {
      const int row = tile.first_row + r;
      const int64_t token = tile.first_token + row / group, head = kv_head * group + row % group;
      vec8_to_float<QueryT>(load_vec8(base + token * args.query_token_stride + head * args.query_head_stride),
                            query[r]);
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) query[r][e] *= scale_log2;
    } else {  // a row past the request's rows: zeros, fully masked, never written
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) query[r][e] = 0.0f;
    }
  }
}

// Scores of one tile's positions (allowed ones scaled, the rest -inf), warp-reduced per position.
template <typename CacheT, int HEAD_DIM, int ROW_TILE, typename VecT, int ROWS>
__device__ __forceinline__ void tile_scores(const float (&query)[ROW_TILE][kVecElems], const VecT (&keys)[ROWS],
                                            float key_scale, int tile_begin, int num_valid, int token_in_row,
                                            const int (&limit)[ROW_TILE], float (&scores)[ROWS][ROW_TILE]) {
  using T = Tiling<HEAD_DIM, ROW_TILE>;
#pragma unroll
  for (int row = 0; row < ROWS; ++row) {
    float key[kVecElems];
    vec8_to_float<CacheT>(keys[row], key);
    const int offset = row * T::kTokensPerRow + token_in_row;
    const bool valid = offset < num_valid;
#pragma unroll
    for (int r = 0; r < ROW_TILE; ++r) {
      float dot = 0.0f;
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) dot = fmaf(query[r][e], key[e], dot);
      dot = warp_sum_over<1, T::kThreadsPerToken / 2>(dot);
      scores[row][r] = valid && tile_begin + offset <= limit[r] ? dot * key_scale : negative_infinity();
    }
  }
}

// Folds the tile into the running max; turns scores into softmax weights p = 2^(s - max).
template <int HEAD_DIM, int ROW_TILE, int ROWS>
__device__ __forceinline__ void online_softmax_update(SoftmaxState<ROW_TILE>& state,
                                                      float (&scores)[ROWS][ROW_TILE]) {
  using T = Tiling<HEAD_DIM, ROW_TILE>;
#pragma unroll
  for (int r = 0; r < ROW_TILE; ++r) {
    float tile_max = scores[0][r];
#pragma unroll
    for (int row = 1; row < ROWS; ++row) tile_max = fmaxf(tile_max, scores[row][r]);
    tile_max = warp_max_over<T::kThreadsPerToken, 16>(tile_max);
    const float new_max = fmaxf(state.max_log2[r], tile_max);
    const float base = new_max == negative_infinity() ? 0.0f : new_max;  // nothing seen yet: p = 0
    const float rescale = fast_exp2(state.max_log2[r] - base);           // 0 on the first seen tile
    state.max_log2[r] = new_max;
    state.sum[r] *= rescale;
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) state.acc[r][e] *= rescale;
#pragma unroll
    for (int row = 0; row < ROWS; ++row) {
      scores[row][r] = fast_exp2(scores[row][r] - base);
      state.sum[r] += scores[row][r];
    }
  }
}

template <typename CacheT, int HEAD_DIM, int ROW_TILE>
__device__ __forceinline__ void attend_tile(const float (&query)[ROW_TILE][kVecElems],
                                            SoftmaxState<ROW_TILE>& state, const CacheT* key_head,
                                            const CacheT* value_head, const PagedAttentionArgs& args, int kv_head,
                                            int block, int tile_begin, int num_valid, int token_in_row,
                                            const int (&limit)[ROW_TILE], int block_size) {
  using T = Tiling<HEAD_DIM, ROW_TILE>;
  using VecT = typename Vec8<CacheT>::Type;
  constexpr int kRows = T::kRows;
  VecT keys[kRows], values[kRows];
  const int64_t block_base = int64_t(block) * args.cache_block_stride;
  const int first_offset = tile_begin % block_size;
#pragma unroll
  for (int row = 0; row < kRows; ++row) {  // every load of the tile is issued before any use
    const int token = row * T::kTokensPerRow + token_in_row;
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
  float scores[kRows][ROW_TILE];
  tile_scores<CacheT, HEAD_DIM, ROW_TILE>(query, keys, key_scale, tile_begin, num_valid, token_in_row, limit,
                                          scores);
  online_softmax_update<HEAD_DIM, ROW_TILE>(state, scores);
#pragma unroll
  for (int row = 0; row < kRows; ++row) {
    float value[kVecElems];
    vec8_to_float<CacheT>(values[row], value);
#pragma unroll
    for (int r = 0; r < ROW_TILE; ++r) {
      const float weight = scores[row][r] * value_scale;  // masked positions: weight 0, value 0 or finite
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) state.acc[r][e] = fmaf(weight, value[e], state.acc[r][e]);
    }
  }
}

// Reduces lanes and warps; writes each row's output (one partition) or its partial.
template <typename QueryT, int HEAD_DIM, int ROW_TILE>
__device__ __forceinline__ void merge_and_store(SoftmaxState<ROW_TILE>& state, const PagedAttentionArgs& args,
                                                const RowTile<ROW_TILE>& tile, int group, int kv_head, int split) {
  constexpr int kThreadsPerToken = Tiling<HEAD_DIM, ROW_TILE>::kThreadsPerToken;
  __shared__ float shared_max[kAttentionWarps][ROW_TILE];
  __shared__ float shared_sum[kAttentionWarps][ROW_TILE];
  __shared__ float shared_acc[kAttentionWarps][ROW_TILE][HEAD_DIM];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int r = 0; r < ROW_TILE; ++r) {
    state.sum[r] = warp_sum_over<kThreadsPerToken, 16>(state.sum[r]);
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) state.acc[r][e] = warp_sum_over<kThreadsPerToken, 16>(state.acc[r][e]);
    if (lane < kThreadsPerToken) {
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) shared_acc[warp][r][lane * kVecElems + e] = state.acc[r][e];
    }
    if (lane == 0) {
      shared_max[warp][r] = state.max_log2[r];
      shared_sum[warp][r] = state.sum[r];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < tile.num_rows * HEAD_DIM; i += kAttentionThreads) {
    const int r = i / HEAD_DIM, dim = i % HEAD_DIM, row = tile.first_row + r;
    const int64_t token = tile.first_token + row / group, head = kv_head * group + row % group;
    float max_log2 = negative_infinity();
#pragma unroll
    for (int w = 0; w < kAttentionWarps; ++w) max_log2 = fmaxf(max_log2, shared_max[w][r]);
    float sum = 0.0f, acc = 0.0f;
#pragma unroll
    for (int w = 0; w < kAttentionWarps; ++w) {  // a warp that saw no key of this row: weight 0
      const float weight = weight_of(shared_max[w][r], max_log2);
      sum += shared_sum[w][r] * weight;
      acc += shared_acc[w][r][dim] * weight;
    }
    if (args.num_splits == 1) {
      QueryT* out = static_cast<QueryT*>(args.out) + token * args.out_token_stride + head * args.out_head_stride;
      out[dim] = from_float<QueryT>(sum > 0.0f ? acc / sum : 0.0f);
    } else {  // every partition writes, an empty one (max -inf, sum 0, acc 0) included
      const int64_t index = (token * args.num_heads + head) * args.num_splits + split;
      args.partial_acc[index * HEAD_DIM + dim] = acc;
      if (dim == 0) {
        args.partial_max[index] = max_log2;
        args.partial_sum[index] = sum;
      }
    }
  }
}

// Resident CTAs per SM asked of the register allocator: more rows per CTA need more registers
// (queries, accumulators, scores and causal limits all scale with ROW_TILE). Chosen so that no
// variant spills on sm_80 or sm_90: asked 4 for ROW_TILE 2, head_dim 128 spilled 4 bytes on sm_90
// (the per-row limits cost registers the decode kernel this grew from did not need).
template <int ROW_TILE>
constexpr int attention_min_ctas_per_sm() { return ROW_TILE == 1 ? 4 : ROW_TILE == 2 ? 3 : 2; }

template <typename QueryT, typename CacheT, int HEAD_DIM, int BLOCK_SIZE, int ROW_TILE>
__global__ void __launch_bounds__(kAttentionThreads, attention_min_ctas_per_sm<ROW_TILE>())
    paged_attention_kernel(const PagedAttentionArgs args) {
  using T = Tiling<HEAD_DIM, ROW_TILE>;
  constexpr int kTile = T::kTileTokens;
  static_assert(BLOCK_SIZE % kTile == 0, "a tile must not straddle two blocks");
  const int group = args.num_heads / args.num_kv_heads;
  const int kv_head = blockIdx.y, split = blockIdx.z;
  const RowTile<ROW_TILE> tile = row_tile_of<ROW_TILE>(args, blockIdx.x, group);
  const int token_begin = split * args.partition_tokens;
  const int token_end = min(min(args.seq_lens[tile.request], token_begin + args.partition_tokens), tile.max_limit + 1);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int token_in_row = lane / T::kThreadsPerToken;
  const int dim0 = (lane % T::kThreadsPerToken) * kVecElems;
  float query[ROW_TILE][kVecElems];
  load_queries<QueryT, ROW_TILE>(args, tile, group, kv_head, dim0, query);
  SoftmaxState<ROW_TILE> state;
#pragma unroll
  for (int r = 0; r < ROW_TILE; ++r) {
    state.max_log2[r] = negative_infinity();
    state.sum[r] = 0.0f;
#pragma unroll
    for (int e = 0; e < kVecElems; ++e) state.acc[r][e] = 0.0f;
  }
  const CacheT* key_head = static_cast<const CacheT*>(args.key_cache) + kv_head * args.cache_head_stride + dim0;
  const CacheT* value_head = static_cast<const CacheT*>(args.value_cache) + kv_head * args.cache_head_stride + dim0;
  const int32_t* table = args.block_tables + tile.request * args.block_table_stride;
  const int num_tiles = token_end > token_begin ? (token_end - token_begin + kTile - 1) / kTile : 0;
  int block = warp < num_tiles ? table[(token_begin + warp * kTile) / BLOCK_SIZE] : 0;
  for (int t = warp; t < num_tiles; t += kAttentionWarps) {
    const int tile_begin = token_begin + t * kTile;
    const int next_tile = t + kAttentionWarps;  // its block id is fetched while this tile computes
    const int next_block = next_tile < num_tiles ? table[(token_begin + next_tile * kTile) / BLOCK_SIZE] : 0;
    attend_tile<CacheT, HEAD_DIM, ROW_TILE>(query, state, key_head, value_head, args, kv_head, block, tile_begin,
                                            min(kTile, token_end - tile_begin), token_in_row, tile.limit,
                                            BLOCK_SIZE);
    block = next_block;
  }
  merge_and_store<QueryT, HEAD_DIM, ROW_TILE>(state, args, tile, group, kv_head, split);
}

}  // namespace alise
