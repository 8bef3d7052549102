// The quantized KV cache behind nkv_quantized_kv_cache (KIVI): host bookkeeping of the slots and the last
// step, the memory of every layer's codes, groups and residuals, and what the backends' write and decode
// receive. The arithmetic of one group and the residual split are in core/kv_quant.h.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/attention.h"
#include "core/handles.h"
#include "core/host_device.h"
#include "core/virtual_memory.h"
#include "nativekv/nativekv.h"

namespace nkv {

// One slot's part of a step: its tokens [old_length, old_length + count) are rows input_row .. of the
// step's K and V. key_groups_before / value_tokens_before: key groups and value tokens the entries before
// this one quantize, so a kernel finds the entry of its work item by a search over these prefixes.
struct QuantizedKvStepEntry {
  int32_t slot = 0;
  int32_t old_length = 0;
  int32_t count = 0;
  int32_t input_row = 0;
  int32_t key_groups_before = 0;
  int32_t value_tokens_before = 0;
  int32_t new_tokens_before = 0;
  int32_t reserved = 0;
};

// One layer of the cache as the kernels address it (element strides; codes in int32 words, key groups in half2 pairs
// by channel pair (kivi::store_key_group), value groups in units of 8 tokens (kivi::store_value_group), residuals in
// halves).
struct QuantizedKvLayer {
  nkv_kv_format format = NKV_KV_FORMAT_KIVI;
  nkv_kv_value_format value_format = NKV_KV_VALUES_LIKE_KEYS;
  const int32_t* key_permutation = nullptr;  // [heads][d] in the backend's memory: stored channel j is written channel [j]; null: identity
  int32_t bits = 0;
  int32_t group = 0;     // G
  int32_t group_shift = 0;  // log2(G)
  int32_t residual = 0;  // R
  int32_t heads = 0;
  int32_t head_dim = 0;
  int32_t capacity = 0;  // tokens per slot
  // The token-indexed arrays (codes, groups, BFP's fp16 values) in layout blocks (see head_row below):
  uint32_t* key_codes = nullptr;     // KIVI rows: word rows of 32 / b tokens, [d] words; BFP rows: tokens, [d / (32 / m)] words
  uint32_t* key_groups = nullptr;    // KIVI rows: groups of G tokens, [d] pairs; BFP rows: tokens, [d / n] int8 exponents
  uint16_t* key_residual = nullptr;  // KIVI [slot][row][head][d]
  uint32_t* value_codes = nullptr;   // rows: tokens, [d / (32 / b)] words (kivi::value_word_slot's order)
  uint32_t* value_groups = nullptr;  // KIVI: [d / G][units of 8 tokens of the block] (group-major, see value_group_unit); BFP: as the keys'
  uint16_t* value_residual = nullptr;  // KIVI [slot][row][head][d]; BFP's fp16 values: rows of tokens, [d] halves
  // Per-share strides: a slot's share of each array, or with pages (block_table set) a page's share of the token-indexed
  // arrays (codes, groups, BFP's fp16 values); KIVI's residuals are always per slot.
  int64_t key_codes_slot = 0;
  int64_t key_groups_slot = 0;
  int64_t residual_slot = 0;        // the key residual's; KIVI's value residual has the same (the CUDA kernels take it for both)
  int64_t value_residual_slot = 0;
  int64_t value_codes_slot = 0;
  int64_t value_groups_slot = 0;
  // Paged (NKV_KV_MEMORY_PAGED): token t of slot s is token t % P of page block_table[s * block_table_stride + t / P]
  // (P = 2^page_shift tokens, a multiple of G and of the codes per word); null otherwise.
  const int32_t* block_table = nullptr;  // in the backend's memory
  int64_t block_table_stride = 0;
  int32_t page_shift = 0;
  int32_t block_shift = 0;  // layout blocks of 2^block_shift tokens (head_row): a page when paged

  NKV_HOST_DEVICE int32_t codes_per_word() const { return 32 / bits; }
  NKV_HOST_DEVICE int32_t word_shift() const { return bits == 2 ? 4 : bits == 4 ? 3 : 2; }  // log2(codes per word)
};

// Where token t of `slot` lies in a token-indexed array whose shares are `per_share` elements apart: the element
// offset of the slot's share (or of the page holding t) and t's index within it.
struct TokenPlace {
  int64_t share;
  int64_t token;
};
NKV_HOST_DEVICE inline TokenPlace token_place(const QuantizedKvLayer& l, int64_t per_share, int64_t slot, int64_t t) {
  if (l.block_table == nullptr) return {slot * per_share, t};
  const int64_t page = l.block_table[slot * l.block_table_stride + (t >> l.page_shift)];
  return {page * per_share, t & ((int64_t{1} << l.page_shift) - 1)};
}

// The token-indexed arrays keep a share (a slot's, or a page's) as layout blocks of 2^block_shift tokens (a paged
// cache's page is one block), each block head-major: [block][head][rows][row elements], a row being 2^row_shift
// tokens (KIVI's key code word rows 32 / b, key groups G, every other array 1). One head's part of a block is
// contiguous, so a decode streams runs of a block per head, not each token's few bytes per head.
// Within a share: the element offset of `head`'s row that holds the share's token `local`, computed in Offset (the
// CUDA decodes take uint32_t: a share's elements fit 32 bits, the API checks; Index is the token's type).
template <typename Offset, typename Index>
NKV_HOST_DEVICE inline Offset head_row_in_share(const QuantizedKvLayer& l, Index local, Index head, int32_t row_shift, Offset row_elements) {
  const Offset head_block = static_cast<Offset>((local >> l.block_shift) * l.heads + head);
  const Offset row = static_cast<Offset>((local & ((Index{1} << l.block_shift) - 1)) >> row_shift);
  return ((head_block << (l.block_shift - row_shift)) + row) * row_elements;
}
// KIVI's value groups are group-major within a head's part of a block ([d / G][B / 8 units of 8 tokens], see
// kivi::store_value_group), so that one group column of consecutive tokens is contiguous: the word offset within a
// share of the share's token `local` in its group `column` of `head` (`columns` = head_dim / G), that token's unit's
// offset for `local` a multiple of 8.
template <typename Offset, typename Index>
NKV_HOST_DEVICE inline Offset value_group_in_share(const QuantizedKvLayer& l, Index local, Index head, Index column, Offset columns) {
  const Offset head_block = static_cast<Offset>((local >> l.block_shift) * l.heads + head);
  return ((head_block * columns + static_cast<Offset>(column)) << l.block_shift) +
         static_cast<Offset>(local & ((Index{1} << l.block_shift) - 1));
}
// The element offset of the row that holds token t of `head` (in its slot's share, or its page).
NKV_HOST_DEVICE inline int64_t head_row(const QuantizedKvLayer& l, int64_t per_share, int64_t slot, int64_t head, int64_t t,
                                        int32_t row_shift, int64_t row_elements) {
  const TokenPlace p = token_place(l, per_share, slot, t);
  return p.share + head_row_in_share<int64_t>(l, p.token, head, row_shift, row_elements);
}
// The element offset of the unit of 8 tokens that holds token t's value group `column` of `head` (t's place there:
// t % 8, kivi::load_value_group).
NKV_HOST_DEVICE inline int64_t value_group_unit(const QuantizedKvLayer& l, int64_t slot, int64_t head, int64_t t, int64_t column) {
  const TokenPlace p = token_place(l, l.value_groups_slot, slot, t);
  return p.share + value_group_in_share<int64_t>(l, p.token & ~int64_t{7}, head, column, l.head_dim >> l.group_shift);
}

// The step's K and V of one write: [step tokens, heads, d] halves.
struct QuantizedKvInput {
  const uint16_t* k = nullptr;
  const uint16_t* v = nullptr;
  int64_t k_row_stride = 0, k_head_stride = 0, v_row_stride = 0, v_head_stride = 0;
};

struct QuantizedKvStep {
  const QuantizedKvStepEntry* entries = nullptr;  // host or device copy
  int32_t count = 0;
  int64_t key_groups = 0;     // key groups the step quantizes, all entries
  int64_t value_tokens = 0;   // value tokens it quantizes
  int64_t new_tokens = 0;     // the step's tokens
};

struct QuantizedDecodeArgs {
  const void* q = nullptr;  // [batch, q_len, heads, d] halves
  int64_t q_batch_stride = 0;
  HeadMajorStrides q_strides;
  void* o = nullptr;
  int64_t o_batch_stride = 0;
  HeadMajorStrides o_strides;
  float* lse = nullptr;
  int64_t lse_batch_stride = 0;
  int64_t lse_head_stride = 0;
  QuantizedKvLayer kv;  // sequence b is slot b
};

namespace cpu {
// K-sort: per head the channels ordered by RMS over the sample (api/quantized_kvcache.cpp checked the arguments).
void ksort_order(const nkv_tensor& keys, nkv_rotary_pairs pairs, int32_t* permutation);
void quantized_kv_write(const QuantizedKvLayer& layer, const QuantizedKvStep& step, const QuantizedKvInput& input);
void attention_decode_quantized(const nkv_attention_plan& plan, const QuantizedDecodeArgs& args);
}  // namespace cpu

namespace cuda {
void quantized_kv_write(int32_t device_ordinal, void* stream, const QuantizedKvLayer& layer, const QuantizedKvStep& step,
                        const QuantizedKvInput& input);
void attention_decode_quantized(const nkv_attention_plan& plan, const QuantizedDecodeArgs& args);
}  // namespace cuda

}  // namespace nkv

struct nkv_quantized_kv_cache {
  nkv_context* context = nullptr;
  nkv_kv_format format = NKV_KV_FORMAT_KIVI;
  nkv_kv_value_format value_format = NKV_KV_VALUES_LIKE_KEYS;
  int32_t bits = 0;
  int32_t group = 0;
  int32_t residual = 0;
  int32_t num_layers = 0;
  int32_t num_heads_kv = 0;
  int32_t head_dim = 0;
  int32_t max_slots = 0;
  int32_t max_tokens = 0;
  int32_t capacity = 0;  // max_tokens rounded up to a multiple of R
  // Layout blocks of the token-indexed arrays (QuantizedKvLayer::block_shift): a page when paged, else 64 tokens (G
  // for KIVI groups of 128), so that a slot's share is whole blocks and grows block by block (virtual memory).
  int32_t block_shift = 0;

  // Context memory: per layer the six arrays of every slot, each starting on a 256-byte boundary, then the
  // device mirrors.
  void* memory = nullptr;
  uint64_t bytes = 0;
  uint64_t layer_bytes = 0;
  uint64_t offsets[6] = {};     // of each array within a layer
  uint64_t slot_bytes[6] = {};  // one slot's share of each array (whole pages with virtual memory)

  // NKV_KV_MEMORY_VIRTUAL: `memory` is a reservation of `bytes`; pages[slot][layer * 6 + array] are the
  // physical pages mapped from the start of the slot's share of that array.
  nkv_kv_memory memory_kind = NKV_KV_MEMORY_ALLOCATED;
  std::unique_ptr<nkv::VirtualMemory> virtual_memory;
  uint64_t page_bytes = 0;
  std::vector<std::vector<std::vector<uint64_t>>> pages;
  uint64_t mapped_pages = 0;
  // NKV_KV_MEMORY_PAGED: the token-indexed arrays' shares are max_pages pages of page_size tokens (shares[i] says
  // which arrays: max_pages shares, else max_slots); block_table[slot * pages_per_slot + i] is the page of the slot's
  // tokens [i P, (i + 1) P) (0 where the slot holds no page: a valid page that nothing reads); free_pages a stack.
  int32_t page_size = 0;
  int32_t page_shift = 0;
  int32_t max_pages = 0;
  int32_t pages_per_slot = 0;
  uint64_t shares[6] = {};
  std::vector<int32_t> block_table;
  std::vector<int32_t> slot_page_counts;
  std::vector<int32_t> free_pages;
  int32_t* device_block_table = nullptr;  // CUDA: its copy on the device
  int32_t* device_lengths = nullptr;
  nkv::QuantizedKvStepEntry* device_step = nullptr;  // [max_slots]

  // Host bookkeeping.
  std::vector<int32_t> lengths;
  std::vector<uint8_t> alive;
  std::vector<nkv::QuantizedKvStepEntry> step;  // the last append's entries (slots with tokens)
  int64_t step_key_groups = 0;
  int64_t step_value_tokens = 0;
  int64_t step_tokens = 0;
  std::vector<uint8_t> written;  // per layer: written in the current step
  std::vector<int32_t> key_permutations;  // [layer][head][d] (K-sort); empty: the identity everywhere
  int32_t* device_key_permutations = nullptr;  // CUDA: their copy on the device (made at the first set)
};

namespace nkv {
// Where layer `layer` of the cache lies (api/quantized_kvcache.cpp).
QuantizedKvLayer quantized_kv_layer(const nkv_quantized_kv_cache& cache, int32_t layer);
}  // namespace nkv
