// The plain C++ interface between the torch binding (binding.cpp) and the CUDA kernels (*.cu).
//
// No torch and no CUDA header is included here: the kernels compile with a bare `nvcc -c` (the CI
// compile check, no GPU and no torch CUDA build needed), and the binding compiles with the torch
// headers alone. Pointers are untyped; `ElementType` says what they hold. Strides are in elements.
// Streams travel as `void*` (a cudaStream_t). Every launcher returns 0 (cudaSuccess) or a
// cudaError_t value, which the binding turns into a Python exception.
#pragma once

#include <cstdint>

namespace alise {

enum class ElementType : int32_t {
  kFloat16 = 0,   // IEEE half
  kBFloat16 = 1,  // bfloat16
  kInt8 = 2,      // symmetric int8 with one float32 scale per (block, kv head)
};

// Paged attention over variable-length queries: every request of a step in one launch.
//
//   key_cache[block, offset_in_block, kv_head, dim]; position p of request r lives in block
//   block_tables[r][p / block_size] at offset p % block_size. Request r's query tokens are rows
//   [query_start_loc[r], query_start_loc[r + 1]) of query; they are the last positions of its
//   context: token i of a q-token query sits at position seq_lens[r] - q + i and attends to
//   positions <= its own (causal). A decode is q = 1, a prefill chunk q = N over its cached prefix,
//   a speculative verify q = k + 1. Query head h reads kv head h / (num_heads / num_kv_heads).
//
// Work: a CTA serves one kv head (grid y), one work item (grid x) and one KV partition (grid z).
// A work item is (request, first row): rows of request r are (token, head-in-group) pairs,
// row = token * group + head_in_group, and a CTA takes rows [first_row, first_row + row_tile).
// Without query_start_loc (null) every request has one token (token r = row r of query) and the
// work items are implicit: item x = (x / row_tiles_per_request, (x % row_tiles_per_request) * row_tile).
struct PagedAttentionArgs {
  const void* query;               // [num_tokens, num_heads, head_dim], query_type
  int64_t query_token_stride;      // elements between tokens
  int64_t query_head_stride;       // elements between heads
  const void* key_cache;           // [num_blocks, block_size, num_kv_heads, head_dim], cache_type
  const void* value_cache;         // same shape and strides as key_cache
  int64_t cache_block_stride;      // elements between blocks
  int64_t cache_token_stride;      // elements between positions of one block
  int64_t cache_head_stride;       // elements between kv heads
  const float* key_scales;         // [num_blocks, num_kv_heads] when cache_type is kInt8, else null
  const float* value_scales;       // same shape as key_scales
  int64_t scale_block_stride;      // elements between blocks of the scale tensors
  const int32_t* block_tables;     // [num_requests, block_table_stride] physical block ids
  int64_t block_table_stride;      // elements between requests of block_tables
  const int32_t* seq_lens;         // [num_requests] positions with KV, this step's tokens included
  const int32_t* query_start_loc;  // [num_requests + 1] first token row of each request; null = decode
  const int32_t* work_items;       // [num_work_items, 2] (request, first row); null = implicit (decode)
  int32_t row_tiles_per_request;   // work items per request when work_items is null
  void* out;                       // [num_tokens, num_heads, head_dim], query_type
  int64_t out_token_stride;        // elements between tokens
  int64_t out_head_stride;         // elements between heads
  float* partial_acc;              // [num_tokens, num_heads, num_splits, head_dim] if num_splits > 1
  float* partial_max;              // [num_tokens, num_heads, num_splits] running max, log2 units
  float* partial_sum;              // [num_tokens, num_heads, num_splits] softmax denominators
  int32_t num_tokens;              // query rows (the reduction pass's grid x)
  int32_t num_work_items;          // grid x of the attention pass
  int32_t num_heads;               // query heads
  int32_t num_kv_heads;            // key/value heads; divides num_heads; grid y, <= 65535
  int32_t head_dim;                // 64 or 128
  int32_t block_size;              // 16 or 32 positions per block
  int32_t row_tile;                // rows per CTA: 1, 2, 4 or 8
  int32_t num_splits;              // KV partitions (grid z); 1 = no reduction pass
  int32_t partition_tokens;        // positions per partition, a multiple of 16
  float scale;                     // softmax scale, usually head_dim ** -0.5
  ElementType query_type;          // kFloat16 or kBFloat16 (also the output type)
  ElementType cache_type;          // query_type, or kInt8
};

// Writes new keys/values [num_tokens, num_kv_heads, head_dim] at their cache slots
// (slot = block * block_size + offset; a negative slot skips the token). With an int8 cache the
// values are quantized on write; see cache_write.cu for how the per-block scale grows.
struct CacheWriteArgs {
  const void* key;              // [num_tokens, num_kv_heads, head_dim], source_type
  const void* value;            // same shape as key
  int64_t source_token_stride;  // elements between tokens of key and value
  int64_t source_head_stride;   // elements between heads of key and value
  void* key_cache;              // [num_blocks, block_size, num_kv_heads, head_dim], cache_type
  void* value_cache;            // same shape and strides as key_cache
  int64_t cache_block_stride;   // elements between blocks
  int64_t cache_token_stride;   // elements between positions of one block
  int64_t cache_head_stride;    // elements between kv heads
  float* key_scales;            // [num_blocks, num_kv_heads] when cache_type is kInt8, else null
  float* value_scales;          // same shape as key_scales
  int64_t scale_block_stride;   // elements between blocks of the scale tensors
  const int64_t* slot_mapping;  // [num_tokens] cache slot of each token
  int32_t num_tokens;           // tokens to write
  int32_t num_kv_heads;         // key/value heads
  int32_t head_dim;             // a multiple of 8
  int32_t block_size;           // positions per block
  ElementType source_type;      // kFloat16 or kBFloat16
  ElementType cache_type;       // source_type, or kInt8
};

int launch_paged_attention(const PagedAttentionArgs& args, void* stream);
int launch_cache_write(const CacheWriteArgs& args, void* stream);
const char* cuda_error_name(int code);

}  // namespace alise
