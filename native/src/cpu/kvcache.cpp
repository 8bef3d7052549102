// Paged KV cache on the host: the reference for the CUDA write kernel.
#include <cstring>

#include "core/kvcache.h"

namespace nkv::cpu {

void paged_kv_write(const PagedKvWriteArgs& a) {
  // fp16 and bf16 are both 2 bytes: the write is a copy of rows.
  const size_t row_bytes = static_cast<size_t>(a.head_dim) * 2;
  for (int64_t t = 0; t < a.tokens; ++t) {
    const int64_t slot = a.slots[t];
    const int64_t row = a.block_slots > 0 ? slot / a.block_slots * a.block_stride + slot % a.block_slots * a.slot_stride
                                          : slot * a.slot_stride;
    for (int32_t h = 0; h < a.num_heads_kv; ++h) {
      const int64_t destination = (row + static_cast<int64_t>(h) * a.head_dim) * 2;
      std::memcpy(static_cast<char*>(a.k_pool) + destination,
                  static_cast<const char*>(a.k) + (t * a.k_row_stride + h * a.k_head_stride) * 2, row_bytes);
      std::memcpy(static_cast<char*>(a.v_pool) + destination,
                  static_cast<const char*>(a.v) + (t * a.v_row_stride + h * a.v_head_stride) * 2, row_bytes);
    }
  }
}

}  // namespace nkv::cpu
