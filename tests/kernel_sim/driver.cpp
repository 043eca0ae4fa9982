// Runs the real launchers (launch_paged_attention, launch_cache_write) on the CPU emulator.
//
//   simt_driver attend DIR   reads DIR/params.txt ("name value" lines) and the raw tensors
//   simt_driver write DIR    named below, runs the launcher, and writes the outputs back in place
//
// Raw tensors are little-endian, row-major, exactly as torch's `numpy().tofile()` writes them.
#include <cstdio>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "launchers.h"

namespace {

using Params = std::map<std::string, double>;

Params read_params(const std::string& dir) {
  Params params;
  std::ifstream file(dir + "/params.txt");
  std::string name;
  double value;
  while (file >> name >> value) params[name] = value;
  return params;
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot read " + path);
  return std::vector<char>((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream file(path, std::ios::binary);
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

int as_int(const Params& params, const char* name) { return static_cast<int>(params.at(name)); }

alise::ElementType as_type(const Params& params, const char* name) {
  return static_cast<alise::ElementType>(as_int(params, name));
}

// Decode (implicit work items) when params has varlen 0; else reads query_start_loc and work_items.
int run_attention(const std::string& dir) {
  const Params p = read_params(dir);
  auto query = read_bytes(dir + "/query.bin"), key_cache = read_bytes(dir + "/key_cache.bin");
  auto value_cache = read_bytes(dir + "/value_cache.bin"), tables = read_bytes(dir + "/block_tables.bin");
  auto lens = read_bytes(dir + "/seq_lens.bin"), out = read_bytes(dir + "/out.bin");
  const bool int8 = as_type(p, "cache_type") == alise::ElementType::kInt8;
  const bool varlen = as_int(p, "varlen") != 0;
  std::vector<char> key_scales, value_scales, starts, items;
  if (int8) {
    key_scales = read_bytes(dir + "/key_scales.bin");
    value_scales = read_bytes(dir + "/value_scales.bin");
  }
  if (varlen) {
    starts = read_bytes(dir + "/query_start_loc.bin");
    items = read_bytes(dir + "/work_items.bin");
  }
  const int num_tokens = as_int(p, "num_tokens"), num_heads = as_int(p, "num_heads"), head_dim = as_int(p, "head_dim");
  const int num_kv_heads = as_int(p, "num_kv_heads"), block_size = as_int(p, "block_size");
  const int num_splits = as_int(p, "num_splits"), row_tile = as_int(p, "row_tile");
  std::vector<float> partial_acc(size_t(num_tokens) * num_heads * num_splits * head_dim);
  std::vector<float> partial_max(size_t(num_tokens) * num_heads * num_splits);
  std::vector<float> partial_sum(partial_max.size());
  alise::PagedAttentionArgs args{};
  args.query = query.data();
  args.query_token_stride = int64_t(num_heads) * head_dim;
  args.query_head_stride = head_dim;
  args.key_cache = key_cache.data();
  args.value_cache = value_cache.data();
  args.cache_token_stride = int64_t(num_kv_heads) * head_dim;
  args.cache_block_stride = args.cache_token_stride * block_size;
  args.cache_head_stride = head_dim;
  args.key_scales = int8 ? reinterpret_cast<const float*>(key_scales.data()) : nullptr;
  args.value_scales = int8 ? reinterpret_cast<const float*>(value_scales.data()) : nullptr;
  args.scale_block_stride = num_kv_heads;
  args.block_tables = reinterpret_cast<const int32_t*>(tables.data());
  args.block_table_stride = as_int(p, "max_blocks");
  args.seq_lens = reinterpret_cast<const int32_t*>(lens.data());
  args.query_start_loc = varlen ? reinterpret_cast<const int32_t*>(starts.data()) : nullptr;
  args.work_items = varlen ? reinterpret_cast<const int32_t*>(items.data()) : nullptr;
  const int group = num_heads / num_kv_heads;
  args.row_tiles_per_request = (group + row_tile - 1) / row_tile;
  args.num_work_items = varlen ? as_int(p, "num_work_items") : as_int(p, "num_requests") * args.row_tiles_per_request;
  args.out = out.data();
  args.out_token_stride = args.query_token_stride;
  args.out_head_stride = head_dim;
  args.partial_acc = partial_acc.data();
  args.partial_max = partial_max.data();
  args.partial_sum = partial_sum.data();
  args.num_tokens = num_tokens;
  args.num_heads = num_heads;
  args.num_kv_heads = num_kv_heads;
  args.head_dim = head_dim;
  args.block_size = block_size;
  args.row_tile = row_tile;
  args.num_splits = num_splits;
  args.partition_tokens = as_int(p, "partition_tokens");
  args.scale = static_cast<float>(p.at("scale"));
  args.query_type = as_type(p, "query_type");
  args.cache_type = as_type(p, "cache_type");
  const int status = alise::launch_paged_attention(args, nullptr);
  write_bytes(dir + "/out.bin", out);
  return status;
}

int run_write(const std::string& dir) {
  const Params p = read_params(dir);
  auto key = read_bytes(dir + "/key.bin"), value = read_bytes(dir + "/value.bin");
  auto key_cache = read_bytes(dir + "/key_cache.bin"), value_cache = read_bytes(dir + "/value_cache.bin");
  auto slots = read_bytes(dir + "/slot_mapping.bin");
  const bool int8 = as_type(p, "cache_type") == alise::ElementType::kInt8;
  std::vector<char> key_scales, value_scales;
  if (int8) {
    key_scales = read_bytes(dir + "/key_scales.bin");
    value_scales = read_bytes(dir + "/value_scales.bin");
  }
  const int num_kv_heads = as_int(p, "num_kv_heads"), head_dim = as_int(p, "head_dim");
  alise::CacheWriteArgs args{};
  args.key = key.data();
  args.value = value.data();
  args.source_token_stride = int64_t(num_kv_heads) * head_dim;
  args.source_head_stride = head_dim;
  args.key_cache = key_cache.data();
  args.value_cache = value_cache.data();
  args.cache_token_stride = int64_t(num_kv_heads) * head_dim;
  args.cache_block_stride = args.cache_token_stride * as_int(p, "block_size");
  args.cache_head_stride = head_dim;
  args.key_scales = int8 ? reinterpret_cast<float*>(key_scales.data()) : nullptr;
  args.value_scales = int8 ? reinterpret_cast<float*>(value_scales.data()) : nullptr;
  args.scale_block_stride = num_kv_heads;
  args.slot_mapping = reinterpret_cast<const int64_t*>(slots.data());
  args.num_tokens = as_int(p, "num_tokens");
  args.num_kv_heads = num_kv_heads;
  args.head_dim = head_dim;
  args.block_size = as_int(p, "block_size");
  args.source_type = as_type(p, "source_type");
  args.cache_type = as_type(p, "cache_type");
  const int status = alise::launch_cache_write(args, nullptr);
  write_bytes(dir + "/key_cache.bin", key_cache);
  write_bytes(dir + "/value_cache.bin", value_cache);
  if (int8) {
    write_bytes(dir + "/key_scales.bin", key_scales);
    write_bytes(dir + "/value_scales.bin", value_scales);
  }
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s attend|write DIR\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1], dir = argv[2];
  const int status = mode == "attend" ? run_attention(dir) : run_write(dir);
  if (status != 0) std::fprintf(stderr, "launcher returned %s\n", alise::cuda_error_name(status));
  return status == 0 ? 0 : 3;
}
