// Reference attention: the formulas of nativekv.h evaluated directly, scores and sums in float64.
// Written for clarity; the CUDA kernels are tested against it. Independent (sequence, head) pairs are
// spread over the host's threads so that long-sequence tests stay practical.
#include "cpu/attention_reference.h"

namespace nkv::cpu {
namespace {

using namespace reference;

// Q, K, V and O are 2-byte types.
const void* at(const void* base, int64_t element) { return static_cast<const char*>(base) + element * 2; }
void* at(void* base, int64_t element) { return static_cast<char*>(base) + element * 2; }

}  // namespace

void attention_varlen(const nkv_attention_plan& plan, const VarlenAttentionArgs& a) {
  const int32_t group = plan.num_heads_q / plan.num_heads_kv;
  parallel_for(static_cast<int64_t>(plan.batch) * plan.num_heads_q, [&](int64_t task) {
    const int32_t b = static_cast<int32_t>(task / plan.num_heads_q);
    const int32_t h = static_cast<int32_t>(task % plan.num_heads_q);
    const int64_t q0 = plan.cu_seqlens_q[b];
    const int64_t k0 = plan.cu_seqlens_k[b];
    const int64_t lq = plan.cu_seqlens_q[b + 1] - q0;
    const int64_t lk = plan.cu_seqlens_k[b + 1] - k0;
    const int32_t hk = h / group;
    RowsOfHead q{at(a.q, q0 * a.q_strides.row + h * a.q_strides.head), a.q_strides.row};
    const int32_t* pages = a.block_table != nullptr ? a.block_table + b * a.block_table_stride : nullptr;
    // Paged: the sequence's keys start on its first page. Batched: at row 0 of its batch entry.
    const int64_t k_row0 = pages != nullptr || a.batched_kv ? 0 : k0;
    RowsOfHead k{at(a.k, b * a.k_batch_stride + k_row0 * a.k_strides.row + hk * a.k_strides.head), a.k_strides.row, pages,
                 a.page_shift, a.key_blocks.tokens, a.key_blocks.k_stride};
    RowsOfHead v{at(a.v, b * a.v_batch_stride + k_row0 * a.v_strides.row + hk * a.v_strides.head), a.v_strides.row, pages,
                 a.page_shift, a.key_blocks.tokens, a.key_blocks.v_stride};
    OutputRowsOfHead o{at(a.o, q0 * a.o_strides.row + h * a.o_strides.head), a.o_strides.row,
                       a.lse != nullptr ? a.lse + h * a.lse_head_stride + q0 : nullptr, 1};
    attend(plan.mask, a.dtype, plan.head_dim, lq, lk, q, StoredRows{k, a.dtype}, StoredRows{v, a.dtype}, o);
  });
}

void attention_decode(const nkv_attention_plan& plan, const DecodeAttentionArgs& a) {
  const int32_t group = plan.num_heads_q / plan.num_heads_kv;
  parallel_for(static_cast<int64_t>(plan.batch) * plan.num_heads_q, [&](int64_t task) {
    const int32_t b = static_cast<int32_t>(task / plan.num_heads_q);
    const int32_t h = static_cast<int32_t>(task % plan.num_heads_q);
    const int32_t hk = h / group;
    RowsOfHead q{at(a.q, b * a.q_batch_stride + h * a.q_strides.head), a.q_strides.row};
    const void* k_base = a.k_pointers != nullptr ? reinterpret_cast<const void*>(a.k_pointers[b]) : at(a.k, b * a.k_batch_stride);
    const void* v_base = a.v_pointers != nullptr ? reinterpret_cast<const void*>(a.v_pointers[b]) : at(a.v, b * a.v_batch_stride);
    const int32_t* pages = a.block_table != nullptr ? a.block_table + b * a.block_table_stride : nullptr;
    RowsOfHead k{at(k_base, hk * a.k_strides.head), a.k_strides.row, pages, a.page_shift, a.key_blocks.tokens,
                 a.key_blocks.k_stride};
    RowsOfHead v{at(v_base, hk * a.v_strides.head), a.v_strides.row, pages, a.page_shift, a.key_blocks.tokens,
                 a.key_blocks.v_stride};
    OutputRowsOfHead o{at(a.o, b * a.o_batch_stride + h * a.o_strides.head), a.o_strides.row,
                       a.lse != nullptr ? a.lse + b * a.lse_batch_stride + h * a.lse_head_stride : nullptr, 1};
    attend(plan.mask, a.dtype, plan.head_dim, plan.q_len, plan.seqlens_k[b], q, StoredRows{k, a.dtype}, StoredRows{v, a.dtype}, o);
  });
}

}  // namespace nkv::cpu
