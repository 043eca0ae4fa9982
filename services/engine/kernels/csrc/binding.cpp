// Torch binding of the paged-attention kernels: validates the tensors, fills the plain argument
// structs of launchers.h and launches on the tensors' current CUDA stream.
//
// Only device-agnostic torch headers are included (no CUDA header): the current stream comes
// through c10's virtual guard as an opaque handle. So this file also compiles against the CPU
// build of torch, which is how CI syntax-checks it on machines without a GPU. Invalid input raises
// ValueError (TORCH_CHECK_VALUE); a failed launch raises RuntimeError naming the CUDA error.
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <pybind11/stl.h>
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <cstdint>
#include <exception>
#include <optional>

#include "launchers.h"

namespace alise {
namespace {

constexpr int64_t kMaxGridYZ = 65535;  // CUDA limit of grid dimensions y and z
constexpr int64_t kVectorElems = 8;    // the kernels move 8 elements per vector
constexpr int64_t kTileTokens = 16;    // partitions must hold whole 16-position tiles

ElementType element_type(const at::Tensor& tensor, const char* name) {
  switch (tensor.scalar_type()) {
    case at::kHalf: return ElementType::kFloat16;
    case at::kBFloat16: return ElementType::kBFloat16;
    case at::kChar: return ElementType::kInt8;
    default: break;
  }
  TORCH_CHECK_VALUE(false, name, " must be float16, bfloat16 or int8, got ", tensor.scalar_type());
  return ElementType::kFloat16;
}

void* current_stream(const at::Device& device) {
  const c10::impl::VirtualGuardImpl guard_impl(c10::DeviceType::CUDA);
  return guard_impl.getStream(device).native_handle();
}

void check_on(const at::Tensor& tensor, const at::Device& device, const char* name) {
  TORCH_CHECK_VALUE(tensor.is_cuda(), name, " must be a CUDA tensor, got ", tensor.device());
  TORCH_CHECK_VALUE(tensor.device() == device, name, " must be on ", device, ", got ", tensor.device());
}

// Last dimension contiguous, every other used stride a whole number of vectors, base 16-byte aligned.
void check_vector_layout(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK_VALUE(tensor.stride(-1) == 1, name, " must be contiguous in its last dimension");
  for (int64_t dim = 0; dim + 1 < tensor.dim(); ++dim) {
    TORCH_CHECK_VALUE(tensor.size(dim) == 1 || tensor.stride(dim) % kVectorElems == 0, name, " stride ", dim,
                      " must be a multiple of ", kVectorElems, " elements, got ", tensor.stride(dim));
  }
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(tensor.data_ptr()) % 16 == 0, name, " must be 16-byte aligned");
}

void check_cache_pair(const at::Tensor& key_cache, const at::Tensor& value_cache) {
  TORCH_CHECK_VALUE(key_cache.dim() == 4, "key_cache must be [num_blocks, block_size, num_kv_heads, head_dim]");
  TORCH_CHECK_VALUE(key_cache.sizes() == value_cache.sizes() && key_cache.strides() == value_cache.strides(),
                    "key_cache and value_cache must have the same shape and strides");
  TORCH_CHECK_VALUE(key_cache.scalar_type() == value_cache.scalar_type(), "caches must share one dtype");
  check_vector_layout(key_cache, "key_cache");
  check_vector_layout(value_cache, "value_cache");
}

// The scale tensors of an int8 cache ([num_blocks, num_kv_heads] float32), or none for fp16/bf16.
std::pair<float*, float*> scale_pointers(const at::Tensor& key_cache, const std::optional<at::Tensor>& key_scales,
                                         const std::optional<at::Tensor>& value_scales, int64_t* block_stride) {
  *block_stride = 0;
  if (key_cache.scalar_type() != at::kChar) {
    TORCH_CHECK_VALUE(!key_scales && !value_scales, "scales are only for an int8 cache");
    return {nullptr, nullptr};
  }
  TORCH_CHECK_VALUE(key_scales && value_scales, "an int8 cache needs key_scales and value_scales");
  const std::vector<int64_t> shape = {key_cache.size(0), key_cache.size(2)};
  for (const at::Tensor* scales : {&*key_scales, &*value_scales}) {
    check_on(*scales, key_cache.device(), "scales");
    TORCH_CHECK_VALUE(scales->scalar_type() == at::kFloat, "scales must be float32");
    TORCH_CHECK_VALUE(scales->sizes() == at::IntArrayRef(shape), "scales must be [num_blocks, num_kv_heads]");
    TORCH_CHECK_VALUE(scales->stride(1) == 1 && scales->stride(0) == key_scales->stride(0),
                      "key_scales and value_scales must be row-major with equal strides");
  }
  *block_stride = key_scales->stride(0);
  return {key_scales->data_ptr<float>(), value_scales->data_ptr<float>()};
}

void check_int32_vector(const at::Tensor& tensor, const at::Device& device, int64_t size, const char* name) {
  check_on(tensor, device, name);
  TORCH_CHECK_VALUE(tensor.scalar_type() == at::kInt && tensor.dim() == 1 && tensor.stride(0) == 1, name,
                    " must be a contiguous int32 vector");
  TORCH_CHECK_VALUE(tensor.size(0) == size, name, " must have ", size, " entries, got ", tensor.size(0));
}

void check_query_and_cache(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache) {
  const at::Device device = query.device();
  check_on(query, device, "query");
  check_on(out, device, "out");
  check_on(key_cache, device, "key_cache");
  TORCH_CHECK_VALUE(query.dim() == 3, "query must be [num_tokens, num_heads, head_dim]");
  TORCH_CHECK_VALUE(query.scalar_type() == at::kHalf || query.scalar_type() == at::kBFloat16,
                    "query must be float16 or bfloat16, got ", query.scalar_type());
  check_vector_layout(query, "query");
  TORCH_CHECK_VALUE(out.sizes() == query.sizes() && out.scalar_type() == query.scalar_type(),
                    "out must have the query's shape and dtype");
  TORCH_CHECK_VALUE(out.stride(-1) == 1, "out must be contiguous in its last dimension");
  const ElementType cache_type = element_type(key_cache, "key_cache");
  TORCH_CHECK_VALUE(cache_type == ElementType::kInt8 || key_cache.scalar_type() == query.scalar_type(),
                    "key_cache must have the query's dtype or be int8");
  TORCH_CHECK_VALUE(key_cache.size(3) == query.size(2), "cache head_dim must equal the query's");
  TORCH_CHECK_VALUE(query.size(2) == 64 || query.size(2) == 128, "head_dim must be 64 or 128, got ", query.size(2));
  TORCH_CHECK_VALUE(key_cache.size(1) == 16 || key_cache.size(1) == 32, "block_size must be 16 or 32");
  TORCH_CHECK_VALUE(query.size(1) % key_cache.size(2) == 0, "num_heads must be a multiple of num_kv_heads");
  TORCH_CHECK_VALUE(key_cache.size(2) <= kMaxGridYZ, "at most ", kMaxGridYZ, " kv heads");
  TORCH_CHECK_VALUE(query.size(0) <= INT32_MAX, "too many query tokens");
}

// Requests, their block tables and lengths; query_start_loc and work_items both or neither.
void check_requests(const at::Tensor& query, const at::Tensor& block_tables, const at::Tensor& seq_lens,
                    const std::optional<at::Tensor>& query_start_loc, const std::optional<at::Tensor>& work_items) {
  const at::Device device = query.device();
  check_on(block_tables, device, "block_tables");
  const int64_t num_requests = seq_lens.size(0);
  check_int32_vector(seq_lens, device, num_requests, "seq_lens");
  TORCH_CHECK_VALUE(block_tables.scalar_type() == at::kInt && block_tables.dim() == 2 && block_tables.stride(1) == 1,
                    "block_tables must be int32 [num_requests, max_blocks], row-major");
  TORCH_CHECK_VALUE(block_tables.size(0) == num_requests, "block_tables must have one row per request");
  TORCH_CHECK_VALUE(query_start_loc.has_value() == work_items.has_value(),
                    "query_start_loc and work_items come together (neither: one token per request)");
  if (!query_start_loc) {
    TORCH_CHECK_VALUE(num_requests == query.size(0), "without query_start_loc every request has one query token");
    return;
  }
  check_int32_vector(*query_start_loc, device, num_requests + 1, "query_start_loc");
  check_on(*work_items, device, "work_items");
  TORCH_CHECK_VALUE(work_items->scalar_type() == at::kInt && work_items->dim() == 2 && work_items->size(1) == 2 &&
                        work_items->is_contiguous(),
                    "work_items must be contiguous int32 [num_work_items, 2]");
}

// Pointers, strides and sizes of the paged cache, shared by both argument structs.
template <typename Args>
void set_cache_fields(Args& args, const at::Tensor& key_cache, const at::Tensor& value_cache) {
  args.key_cache = key_cache.data_ptr();
  args.value_cache = value_cache.data_ptr();
  args.cache_block_stride = key_cache.stride(0);
  args.cache_token_stride = key_cache.stride(1);
  args.cache_head_stride = key_cache.stride(2);
  args.block_size = static_cast<int32_t>(key_cache.size(1));
  args.cache_type = element_type(key_cache, "key_cache");
}

PagedAttentionArgs attention_args(const at::Tensor& out, const at::Tensor& query, const at::Tensor& block_tables,
                                  const at::Tensor& seq_lens, double scale) {
  PagedAttentionArgs args{};
  args.query = query.data_ptr();
  args.query_token_stride = query.stride(0);
  args.query_head_stride = query.stride(1);
  args.block_tables = block_tables.data_ptr<int32_t>();
  args.block_table_stride = block_tables.stride(0);
  args.seq_lens = seq_lens.data_ptr<int32_t>();
  args.out = out.data_ptr();
  args.out_token_stride = out.stride(0);
  args.out_head_stride = out.stride(1);
  args.num_tokens = static_cast<int32_t>(query.size(0));
  args.num_heads = static_cast<int32_t>(query.size(1));
  args.head_dim = static_cast<int32_t>(query.size(2));
  args.scale = static_cast<float>(scale);
  args.query_type = element_type(query, "query");
  return args;
}

// Float32 partials of a split launch; empty tensors (and null pointers) without a split.
std::pair<at::Tensor, at::Tensor> split_scratch(PagedAttentionArgs& args, const at::Tensor& query) {
  if (args.num_splits == 1) return {};
  const auto options = query.options().dtype(at::kFloat);
  at::Tensor acc = at::empty({query.size(0), query.size(1), args.num_splits, query.size(2)}, options);
  at::Tensor stats = at::empty({2, query.size(0), query.size(1), args.num_splits}, options);
  args.partial_acc = acc.data_ptr<float>();
  args.partial_max = stats[0].data_ptr<float>();
  args.partial_sum = stats[1].data_ptr<float>();
  return {acc, stats};
}

// Work items: given (varlen), or one per (request, row tile) of a one-token-per-request call.
void set_work(PagedAttentionArgs& args, const std::optional<at::Tensor>& query_start_loc,
              const std::optional<at::Tensor>& work_items, int64_t num_requests) {
  if (query_start_loc) {
    args.query_start_loc = query_start_loc->data_ptr<int32_t>();
    args.work_items = work_items->data_ptr<int32_t>();
    TORCH_CHECK_VALUE(work_items->size(0) <= INT32_MAX, "too many work items");
    args.num_work_items = static_cast<int32_t>(work_items->size(0));
    return;
  }
  const int64_t group = args.num_heads / args.num_kv_heads;
  args.row_tiles_per_request = static_cast<int32_t>((group + args.row_tile - 1) / args.row_tile);
  TORCH_CHECK_VALUE(num_requests * args.row_tiles_per_request <= INT32_MAX, "too many requests");
  args.num_work_items = static_cast<int32_t>(num_requests * args.row_tiles_per_request);
}

void paged_attention(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                     const at::Tensor& value_cache, const std::optional<at::Tensor>& key_scales,
                     const std::optional<at::Tensor>& value_scales, const at::Tensor& block_tables,
                     const at::Tensor& seq_lens, const std::optional<at::Tensor>& query_start_loc,
                     const std::optional<at::Tensor>& work_items, double scale, int64_t num_splits,
                     int64_t partition_tokens, int64_t row_tile) {
  check_query_and_cache(out, query, key_cache);
  check_requests(query, block_tables, seq_lens, query_start_loc, work_items);
  check_cache_pair(key_cache, value_cache);
  TORCH_CHECK_VALUE(num_splits >= 1 && num_splits <= kMaxGridYZ, "num_splits must be in [1, 65535]");
  TORCH_CHECK_VALUE(partition_tokens > 0 && partition_tokens % kTileTokens == 0 && partition_tokens <= INT32_MAX,
                    "partition_tokens must be a positive multiple of 16");
  TORCH_CHECK_VALUE(row_tile == 1 || row_tile == 2 || row_tile == 4 || row_tile == 8, "row_tile must be 1, 2, 4 or 8");
  PagedAttentionArgs args = attention_args(out, query, block_tables, seq_lens, scale);
  set_cache_fields(args, key_cache, value_cache);
  const auto scales = scale_pointers(key_cache, key_scales, value_scales, &args.scale_block_stride);
  args.key_scales = scales.first;
  args.value_scales = scales.second;
  args.num_kv_heads = static_cast<int32_t>(key_cache.size(2));
  args.num_splits = static_cast<int32_t>(num_splits);
  args.partition_tokens = static_cast<int32_t>(partition_tokens);
  args.row_tile = static_cast<int32_t>(row_tile);
  set_work(args, query_start_loc, work_items, seq_lens.size(0));
  if (args.num_tokens == 0 || args.num_work_items == 0) return;
  const c10::DeviceGuard device_guard(query.device());
  const auto scratch = split_scratch(args, query);  // kept alive until the launch is queued
  const int status = launch_paged_attention(args, current_stream(query.device()));
  TORCH_CHECK(status == 0, "paged attention launch failed: ", cuda_error_name(status));
}

void check_write_inputs(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                        const at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  for (const auto* tensor : {&key, &value, &key_cache, &value_cache, &slot_mapping}) {
    check_on(*tensor, key.device(), "every write_cache tensor");
  }
  TORCH_CHECK_VALUE(key.dim() == 3, "key must be [num_tokens, num_kv_heads, head_dim]");
  TORCH_CHECK_VALUE(key.sizes() == value.sizes() && key.strides() == value.strides() &&
                        key.scalar_type() == value.scalar_type(),
                    "key and value must have the same shape, strides and dtype");
  TORCH_CHECK_VALUE(key.scalar_type() == at::kHalf || key.scalar_type() == at::kBFloat16,
                    "key must be float16 or bfloat16, got ", key.scalar_type());
  check_vector_layout(key, "key");
  check_vector_layout(value, "value");
  check_cache_pair(key_cache, value_cache);
  TORCH_CHECK_VALUE(key_cache.scalar_type() == key.scalar_type() || key_cache.scalar_type() == at::kChar,
                    "the cache must have the key's dtype or be int8");
  TORCH_CHECK_VALUE(key_cache.size(2) == key.size(1) && key_cache.size(3) == key.size(2),
                    "key heads and head_dim must match the cache");
  TORCH_CHECK_VALUE(key.size(2) % kVectorElems == 0, "head_dim must be a multiple of 8");
  TORCH_CHECK_VALUE(key.size(1) <= kMaxGridYZ, "at most 65535 kv heads");
  TORCH_CHECK_VALUE(key.size(0) <= INT32_MAX, "too many tokens");
  TORCH_CHECK_VALUE(slot_mapping.scalar_type() == at::kLong && slot_mapping.dim() == 1 &&
                        slot_mapping.stride(0) == 1 && slot_mapping.size(0) == key.size(0),
                    "slot_mapping must be a contiguous int64 vector with one slot per token");
}

void write_cache(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                 const at::Tensor& value_cache, const std::optional<at::Tensor>& key_scales,
                 const std::optional<at::Tensor>& value_scales, const at::Tensor& slot_mapping) {
  check_write_inputs(key, value, key_cache, value_cache, slot_mapping);
  CacheWriteArgs args{};
  set_cache_fields(args, key_cache, value_cache);
  const auto scales = scale_pointers(key_cache, key_scales, value_scales, &args.scale_block_stride);
  args.key_scales = scales.first;
  args.value_scales = scales.second;
  args.key = key.data_ptr();
  args.value = value.data_ptr();
  args.source_token_stride = key.stride(0);
  args.source_head_stride = key.stride(1);
  args.slot_mapping = slot_mapping.data_ptr<int64_t>();
  args.num_tokens = static_cast<int32_t>(key.size(0));
  args.num_kv_heads = static_cast<int32_t>(key.size(1));
  args.head_dim = static_cast<int32_t>(key.size(2));
  args.source_type = element_type(key, "key");
  const c10::DeviceGuard device_guard(key.device());
  const int status = launch_cache_write(args, current_stream(key.device()));
  TORCH_CHECK(status == 0, "KV cache write launch failed: ", cuda_error_name(status));
}

}  // namespace
}  // namespace alise

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "alise paged-attention CUDA kernels (see services/engine/kernels)";
  // This module's c10 errors: ValueError for bad input, RuntimeError otherwise, without C++ backtrace.
  pybind11::register_local_exception_translator([](std::exception_ptr pointer) {
    try {
      if (pointer) std::rethrow_exception(pointer);
    } catch (const c10::ValueError& error) {
      PyErr_SetString(PyExc_ValueError, error.what_without_backtrace());
    } catch (const c10::Error& error) {
      PyErr_SetString(PyExc_RuntimeError, error.what_without_backtrace());
    }
  });
  module.def("paged_attention", &alise::paged_attention, "paged attention of variable-length queries into out");
  module.def("write_cache", &alise::write_cache, "writes keys/values into the paged cache");
}
