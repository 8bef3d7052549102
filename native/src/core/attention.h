// The attention plan behind nkv_attention_plan and the validated, backend-neutral arguments the
// backends receive (see nativekv.h for the semantics).
#pragma once

#include <cstdint>
#include <vector>

#include "core/handles.h"
#include "core/host_device.h"

namespace nkv {

struct AttentionMask {
  bool causal = false;
  float softmax_scale = 0.0f;  // resolved: never 0
  float softcap = 0.0f;        // 0: off
  int32_t window_left = -1;    // -1: unlimited
};

// Packed query rows in one MMA tile of the decode kernel, the fewest a thread block covers: the plan's
// merge counters (one per row block) are sized by it.
constexpr int32_t kDecodeRowsPerTile = 16;

// One piece of the keys of one decode (sequence, KV head) pair: [key_begin, key_end), run by one
// thread block. A pair cut into more than one piece leaves one partial result per piece, at partial
// index pair_first + piece (a pair's partials are neighbours whatever the order of the blocks), and the
// block that finishes the pair's last piece merges them. Everything a block needs about its pair travels
// in this one record (the sequence's key count, where its causal diagonal ends; the pair's pieces), so a
// block reads one 32-byte record, not a second array indexed by it, before its first K/V request and
// before its exit.
struct alignas(16) DecodeSplit {
  int32_t sequence = 0;
  int32_t kv_head = 0;
  int32_t key_begin = 0;
  int32_t key_end = 0;
  int32_t sequence_keys = 0;
  int32_t pair_pieces = 0;  // how many pieces this (sequence, KV head) pair has
  int32_t pair_first = 0;   // the partial index of the pair's first piece
  int32_t piece = 0;        // this piece's place in its pair, in key order
};

}  // namespace nkv

struct nkv_attention_plan {
  nkv_context* context = nullptr;
  nkv_attention_kind kind = NKV_ATTENTION_VARLEN;
  int32_t batch = 0;
  int32_t num_heads_q = 0;
  int32_t num_heads_kv = 0;
  int32_t head_dim = 0;
  int32_t q_len = 0;  // decode
  nkv::AttentionMask mask;
  nkv_attention_kernel kernel = NKV_ATTENTION_KERNEL_AUTO;  // as requested; CUDA dispatch resolves AUTO
  int32_t kv_page_size = 0;  // decode: the page size of the pools it is made for, 0 for any K/V
  int32_t kv_code_bits = 0;  // decode: the code bits of the quantized caches it is made for, 0 for any K/V
  int64_t total_q = 0;
  int64_t total_k = 0;
  int64_t max_seqlen_q = 0;
  int64_t max_seqlen_k = 0;
  // Host copies: cu_seqlens (varlen), seqlens_k (decode), and the decode pieces.
  std::vector<int32_t> cu_seqlens_q;
  std::vector<int32_t> cu_seqlens_k;
  std::vector<int32_t> seqlens_k;
  // Pieces in grid order (plan_decode_splits in api/attention.cpp says which).
  std::vector<nkv::DecodeSplit> splits;
  int32_t max_splits = 1;  // the most pieces of any pair
  // Device mirrors (host pointers into the vectors above on the CPU backend), in one allocation, and
  // for decode plans with split pairs: per (pair, row block) the count of pieces finished in the
  // current run (0 between runs), and the partial results partial_o [pieces, q_len x G, head_dim] and
  // partial_lse [pieces, q_len x G], float32, where G = num_heads_q / num_heads_kv.
  void* device_block = nullptr;
  const int32_t* device_cu_seqlens_q = nullptr;
  const int32_t* device_cu_seqlens_k = nullptr;
  const nkv::DecodeSplit* device_splits = nullptr;
  int32_t* merge_counters = nullptr;
  float* partial_o = nullptr;
  float* partial_lse = nullptr;
};

namespace nkv {

// Merge counters per decode (sequence, KV head) pair: one per block of kDecodeRowsPerTile packed query
// rows (q_len x G), the most row blocks any kernel configuration launches.
inline int32_t decode_merge_counters_per_pair(const nkv_attention_plan& plan) {
  const int32_t packed_rows = plan.q_len * (plan.num_heads_q / plan.num_heads_kv);
  return (packed_rows + kDecodeRowsPerTile - 1) / kDecodeRowsPerTile;
}

}  // namespace nkv

namespace nkv {

// A [rows, heads, head_dim] view's strides in elements (last stride 1).
struct HeadMajorStrides {
  int64_t row = 0;
  int64_t head = 0;
};

// Batched K/V whose token dimension is split in blocks, [batch, blocks, tokens, heads, head_dim] (the
// token-major virtual cache: one block per physical page, one layer's rows of its tokens together): key t
// is row t % tokens of block t / tokens. The division is a multiply-high, exact for t < 2^31:
// t / tokens = umulhi(t, magic) >> shift, magic 0 meaning tokens is 1.
struct KeyBlocks {
  int32_t tokens = 0;  // 0: the keys are not split
  uint32_t magic = 0;
  uint32_t shift = 0;
  int64_t k_stride = 0;  // elements from one block to the next
  int64_t v_stride = 0;
  // K and V have the same row and block strides, and the offset of any of the first 128 rows of a block from
  // the block's first row fits int32: kernels whose tiles lie alike on blocks (tiles of n rows starting at
  // multiples of n, with tokens dividing n or n dividing tokens) then compute each thread's row offsets
  // within a tile once, not per tile.
  bool uniform = false;

  NKV_HOST_DEVICE int32_t block_of(int32_t t) const {
    if (magic == 0) return t;
#if defined(__CUDA_ARCH__)
    return static_cast<int32_t>(__umulhi(static_cast<uint32_t>(t), magic) >> shift);
#else
    return static_cast<int32_t>((static_cast<uint64_t>(static_cast<uint32_t>(t)) * magic) >> 32 >> shift);
#endif
  }
};

// Blocks of `tokens` >= 1 rows: with l = ceil(log2(tokens)), magic = ceil(2^(31 + l) / tokens) < 2^32 and
// shift = l - 1 (the round-up error stays below one for dividends under 2^31).
inline KeyBlocks key_blocks(int32_t tokens, int64_t k_stride, int64_t v_stride, int64_t k_row_stride, int64_t v_row_stride) {
  KeyBlocks b;
  b.tokens = tokens;
  b.k_stride = k_stride;
  b.v_stride = v_stride;
  constexpr int64_t kInt32Limit = int64_t{1} << 31;
  b.uniform = k_stride == v_stride && k_row_stride == v_row_stride && k_stride >= 0 && k_row_stride >= 0 &&
              k_stride < kInt32Limit / 512 && k_row_stride < kInt32Limit / 512;
  if (tokens > 1) {
    uint32_t l = 0;
    while ((int64_t{1} << l) < tokens) ++l;
    b.magic = static_cast<uint32_t>(((uint64_t{1} << (31 + l)) + static_cast<uint64_t>(tokens) - 1) / static_cast<uint64_t>(tokens));
    b.shift = l - 1;
  }
  return b;
}

struct VarlenAttentionArgs {
  nkv_dtype dtype = NKV_DTYPE_FLOAT16;
  const void* q = nullptr;
  HeadMajorStrides q_strides;
  const void* k = nullptr;
  HeadMajorStrides k_strides;
  const void* v = nullptr;
  HeadMajorStrides v_strides;
  void* o = nullptr;
  HeadMajorStrides o_strides;
  float* lse = nullptr;  // [num_heads_q, rows_q], may be null
  int64_t lse_head_stride = 0;
  // When set, key t of sequence b (t from 0; cu_seqlens_k then gives only the lengths) is row
  // (block_table[b * block_table_stride + (t >> page_shift)] << page_shift | t & (page size - 1)) of k and
  // v (paged pools; fewer than 2^31 rows each).
  const int32_t* block_table = nullptr;
  int64_t block_table_stride = 0;
  int32_t page_shift = 0;
  // When set (batched K/V, [batch, capacity, heads, d], as decode takes them and a virtual-memory cache's
  // views are), key t of sequence b is row t of batch entry b (cu_seqlens_k then gives only the lengths),
  // or with key_blocks.tokens > 0 row t % tokens of block t / tokens of it.
  bool batched_kv = false;
  int64_t k_batch_stride = 0;
  int64_t v_batch_stride = 0;
  KeyBlocks key_blocks;
};

struct DecodeAttentionArgs {
  nkv_dtype dtype = NKV_DTYPE_FLOAT16;
  const void* q = nullptr;  // [batch, q_len, heads, d]
  int64_t q_batch_stride = 0;
  HeadMajorStrides q_strides;  // row = query token
  const void* k = nullptr;     // [batch, capacity, heads_kv, d]
  int64_t k_batch_stride = 0;
  HeadMajorStrides k_strides;  // row = key token
  const void* v = nullptr;
  int64_t v_batch_stride = 0;
  HeadMajorStrides v_strides;
  void* o = nullptr;
  int64_t o_batch_stride = 0;
  HeadMajorStrides o_strides;
  float* lse = nullptr;  // [batch, heads, q_len], may be null
  int64_t lse_batch_stride = 0;
  int64_t lse_head_stride = 0;
  // When set, sequence b's K and V start at the addresses k_pointers[b] / v_pointers[b] (k, v and their
  // batch strides are then unused).
  const int64_t* k_pointers = nullptr;
  const int64_t* v_pointers = nullptr;
  // When set, key t of sequence b is row (block_table[b * block_table_stride + (t >> page_shift)] << page_shift
  // | t & (page size - 1)) of k and v (paged; their batch strides are then 0; fewer than 2^31 rows per pool).
  const int32_t* block_table = nullptr;
  int64_t block_table_stride = 0;
  int32_t page_shift = 0;
  // With tokens > 0: key t of sequence b is row t % tokens of block t / tokens of k and v's batch entry b.
  KeyBlocks key_blocks;
};

namespace cpu {
void attention_varlen(const nkv_attention_plan& plan, const VarlenAttentionArgs& args);
void attention_decode(const nkv_attention_plan& plan, const DecodeAttentionArgs& args);
}  // namespace cpu

namespace cuda {
// How many thread blocks of the decode kernel, each over its own keys, stream at once on the whole GPU
// for this plan (SMs x the blocks per SM that keep enough loads in flight, divided among the plan's
// row blocks).
int64_t decode_block_slots(const nkv_attention_plan& plan);
// The same for nkv_attention_decode_quantized's kernel (cuda/kv_quant/decode_kivi.cu).
int64_t quantized_decode_block_slots(const nkv_attention_plan& plan);
void attention_varlen(const nkv_attention_plan& plan, const VarlenAttentionArgs& args);
void attention_decode(const nkv_attention_plan& plan, const DecodeAttentionArgs& args);
}  // namespace cuda

}  // namespace nkv
