// The paged KV cache behind nkv_paged_kv_cache: host bookkeeping (pages, reference counts, sequences)
// and the memory the kernels see (pools, block-table and length mirrors, the last step's slots).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "core/handles.h"
#include "nativekv/nativekv.h"

struct nkv_paged_kv_cache {
  nkv_context* context = nullptr;
  nkv_dtype dtype = NKV_DTYPE_FLOAT16;
  int32_t num_layers = 0;
  int32_t num_heads_kv = 0;
  int32_t head_dim = 0;
  int32_t page_size = 0;
  int32_t max_sequences = 0;
  int32_t max_sequence_length = 0;
  int32_t pages_per_sequence = 0;  // block-table columns
  int64_t num_pages = 0;
  uint64_t pool_page_bytes = 0;  // one page of one pool (one layer's K or V)

  // Context memory: pools [layer][K, V][page][token in page][head][d], then the mirrors.
  void* pools = nullptr;
  int32_t* device_block_table = nullptr;  // [max_sequences][pages_per_sequence], -1 past a sequence's pages
  int32_t* device_lengths = nullptr;      // [max_sequences]
  int32_t* device_step_slots = nullptr;   // [step_capacity]
  int64_t step_capacity = 0;

  // Host bookkeeping.
  std::vector<int32_t> block_table;     // as device_block_table
  std::vector<int32_t> lengths;         // tokens per sequence id
  std::vector<uint8_t> alive;           // per sequence id
  std::vector<int32_t> free_pages;      // a stack
  std::vector<int32_t> page_references; // sequences holding each page
  std::vector<int32_t> step_slots;      // the last append's slots
};

namespace nkv {

// Stores `tokens` rows of K and V ([token][head][d], rows `*_row_stride` elements apart, heads
// `*_head_stride` apart) into the slots `slots` of one layer's pools: slot s is the [head][d] row at
// element s * slot_stride (the paged pools: num_heads_kv * head_dim; the virtual cache's token stride), or
// with block_slots > 0 at (s / block_slots) * block_stride + (s % block_slots) * slot_stride (the token-major
// virtual cache's blocks). fp16 and bf16 alike: the write moves 2-byte elements without looking at them.
struct PagedKvWriteArgs {
  const void* k;
  const void* v;
  int64_t k_row_stride, k_head_stride, v_row_stride, v_head_stride;
  void* k_pool;
  void* v_pool;
  const int32_t* slots;
  int64_t slot_stride;
  int32_t block_slots;
  int64_t block_stride;
  int64_t tokens;
  int32_t num_heads_kv;
  int32_t head_dim;
};

// The API side of a cache's write: checks a step's k and v ([tokens, num_heads_kv, head_dim] of `dtype`
// in the context's memory) and stores them through `slots` with the backend's kernel (api/kvcache.cpp).
void write_step(const nkv_context& context, nkv_dtype dtype, int64_t tokens, int32_t num_heads_kv, int32_t head_dim,
                const nkv_tensor* k, const nkv_tensor* v, void* k_pool, void* v_pool, const int32_t* slots,
                int64_t slot_stride, int32_t block_slots = 0, int64_t block_stride = 0);

// The checks every cache's append makes of entry `index` of a step, once the caller has found the id `id` alive:
// each id at most once (`seen`, one flag per id), a token count >= 0, and the id's `length` plus `count` within
// `limit`. Messages name the ids' argument and noun ("slots", "slot") and the limit's option (api/kvcache.cpp).
void check_step_entry(std::vector<uint8_t>& seen, int32_t index, int32_t id, int32_t count, int64_t length, int64_t limit,
                      const char* ids, const char* noun, const char* limit_option);

// A view of contiguous memory of the given shape (the caches' views; api/kvcache.cpp).
nkv_tensor contiguous_view(void* data, int32_t dtype, nkv_device_type device, std::initializer_list<int64_t> shape);

// The product of `factors`, or NKV_STATUS_NOT_SUPPORTED naming `what` when it does not fit 64 bits (a cache's
// sizes from its options; api/kvcache.cpp).
uint64_t checked_product(std::initializer_list<uint64_t> factors, const char* what);

// Makes the device array of a step's slots (or rows) hold at least `count` entries: it only grows, and an
// outgrown array is released after the work queued on it (api/kvcache.cpp).
void reserve_step_array(const nkv_context& context, int32_t*& array, int64_t& capacity, int64_t count);

namespace cpu {
void paged_kv_write(const PagedKvWriteArgs& args);
}  // namespace cpu

namespace cuda {
void paged_kv_write(const PagedKvWriteArgs& args, const nkv_context& context);
}  // namespace cuda

}  // namespace nkv
