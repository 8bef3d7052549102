// Paged KV cache on CUDA: the step's K/V rows scattered into their slots (vLLM's reshape_and_cache).
// Bound by moving the bytes once: one thread per 16-byte chunk of a (token, head) row, K and V.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/kvcache.h"
#include "cuda/common/cuda_check.h"

namespace nkv::cuda {
namespace {

struct WriteParams {
  const uint4* k;
  const uint4* v;
  int64_t k_row_stride, k_head_stride, v_row_stride, v_head_stride;  // in 16-byte chunks
  uint4* k_pool;
  uint4* v_pool;
  const int32_t* slots;
  int64_t slot_stride;  // in 16-byte chunks
  int32_t block_slots;  // > 0: slots in blocks of this many, block_stride chunks apart
  int64_t block_stride;
  int64_t tokens;
  int32_t num_heads_kv;
  int32_t chunks;  // per head row
};

__global__ void paged_kv_write_kernel(const WriteParams p) {
  const int64_t per_token = static_cast<int64_t>(p.num_heads_kv) * p.chunks;
  const int64_t total = p.tokens * per_token;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t token = i / per_token;
    const int64_t within = i - token * per_token;
    const int64_t head = within / p.chunks;
    const int64_t chunk = within - head * p.chunks;
    const int32_t slot = p.slots[token];
    const int64_t row = p.block_slots > 0 ? static_cast<int64_t>(slot / p.block_slots) * p.block_stride + (slot % p.block_slots) * p.slot_stride
                                          : static_cast<int64_t>(slot) * p.slot_stride;
    const int64_t destination = row + within;
    p.k_pool[destination] = p.k[token * p.k_row_stride + head * p.k_head_stride + chunk];
    p.v_pool[destination] = p.v[token * p.v_row_stride + head * p.v_head_stride + chunk];
  }
}

}  // namespace

void paged_kv_write(const PagedKvWriteArgs& a, const nkv_context& context) {
  DeviceScope scope(context.device_ordinal);
  WriteParams p{};
  p.k = static_cast<const uint4*>(a.k);
  p.v = static_cast<const uint4*>(a.v);
  // Strides in elements of 2 bytes; the API checked they are multiples of 8 elements (16 bytes).
  p.k_row_stride = a.k_row_stride / 8;
  p.k_head_stride = a.k_head_stride / 8;
  p.v_row_stride = a.v_row_stride / 8;
  p.v_head_stride = a.v_head_stride / 8;
  p.k_pool = static_cast<uint4*>(a.k_pool);
  p.v_pool = static_cast<uint4*>(a.v_pool);
  p.slots = a.slots;
  p.slot_stride = a.slot_stride / 8;
  p.block_slots = a.block_slots;
  p.block_stride = a.block_stride / 8;
  p.tokens = a.tokens;
  p.num_heads_kv = a.num_heads_kv;
  p.chunks = a.head_dim / 8;
  const int64_t total = a.tokens * a.num_heads_kv * p.chunks;
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{context.multiprocessor_count} * 16);
  paged_kv_write_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(context.stream)>>>(p);
  NKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace nkv::cuda
