// The BFP cache's write of one layer: every new token's keys (in the layer's K-sort order) and values, each block
// of n channels with its shared exponent, quantized as written (no residual window). The block arithmetic is
// core/kv_quant.h's, as on the CPU, so the codes and exponents match bit for bit.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "core/kv_quant.h"
#include "core/quantized_kvcache.h"
#include "cuda/common/cuda_check.h"
#include "cuda/kv_quant/write_step.cuh"

namespace nkv::cuda {
namespace {

constexpr int kThreads = 128;

// blockIdx.x: a new token of the step; threads over its code words, keys first, then values. A word's thread finds
// its block's exponent from the block's n inputs (each word of the block does the same arithmetic, so the
// exponent is the CPU's), and the thread of the block's first word stores it. fp16 values are copied as rows.
__global__ void __launch_bounds__(kThreads) write_bfp_kernel(const WriteParams p) {
  const QuantizedKvLayer& l = p.l;
  const int64_t channels = static_cast<int64_t>(l.heads) * l.head_dim;
  const int bits = l.bits, block = l.group;
  const int per_word = static_cast<int>(codes_per_word(bits));
  const int64_t words = channels / per_word;
  const int64_t item = blockIdx.x;
  const QuantizedKvStepEntry e = p.step.entries[step_entry_of(p.step, item, [](const QuantizedKvStepEntry& x) { return x.new_tokens_before; })];
  const int64_t t = e.old_length + (item - e.new_tokens_before);
  const int64_t row = e.input_row + (item - e.new_tokens_before);
  const bool coded_values = l.value_format == NKV_KV_VALUES_LIKE_KEYS;
  for (int64_t i = threadIdx.x; i < (coded_values ? 2 : 1) * words; i += kThreads) {
    const bool is_key = i < words;
    const int64_t w = is_key ? i : i - words;
    const int64_t c0 = w * per_word, first = c0 / block * block;
    auto at = [&](int64_t c) {
      if (is_key) {
        const int64_t written = l.key_permutation != nullptr ? c / l.head_dim * l.head_dim + l.key_permutation[c] : c;
        return step_input(p.in.k, p.in.k_row_stride, p.in.k_head_stride, l.head_dim, row, written);
      }
      return step_input(p.in.v, p.in.v_row_stride, p.in.v_head_stride, l.head_dim, row, c);
    };
    float largest = 0.0f;
    for (int64_t c = first; c < first + block; ++c) largest = fmaxf(largest, fabsf(at(c)));
    const int exponent = bfp::exponent_of(largest);
    uint32_t word = 0;
    for (int j = 0; j < per_word; ++j) word = pack_code(word, bfp::mantissa_field(bfp::mantissa_of(at(c0 + j), exponent, bits), bits), j, bits);
    const int64_t head = c0 / l.head_dim, d0 = c0 % l.head_dim;
    const int64_t code_row = head_row(l, is_key ? l.key_codes_slot : l.value_codes_slot, e.slot, head, t, 0, l.head_dim / per_word);
    (is_key ? l.key_codes : l.value_codes)[code_row + d0 / per_word] = word;
    if (c0 == first) {
      const int64_t exponent_row = head_row(l, is_key ? l.key_groups_slot : l.value_groups_slot, e.slot, head, t, 0, l.head_dim / block);
      reinterpret_cast<int8_t*>(is_key ? l.key_groups : l.value_groups)[exponent_row + d0 / block] = static_cast<int8_t>(exponent);
    }
  }
  if (!coded_values) {
    const int chunks_per_head = l.head_dim / 8;
    for (int i = threadIdx.x; i < l.heads * chunks_per_head; i += kThreads) {
      const int head = i / chunks_per_head, d = i % chunks_per_head * 8;
      const uint4 x = *reinterpret_cast<const uint4*>(p.in.v + row * p.in.v_row_stride + head * p.in.v_head_stride + d);
      *reinterpret_cast<uint4*>(l.value_residual + head_row(l, l.value_residual_slot, e.slot, head, t, 0, l.head_dim) + d) = x;
    }
  }
}

}  // namespace

void quantized_kv_write_bfp(cudaStream_t stream, const QuantizedKvLayer& layer, const QuantizedKvStep& step, const QuantizedKvInput& input) {
  if (step.new_tokens == 0) return;
  write_bfp_kernel<<<static_cast<unsigned>(step.new_tokens), kThreads, 0, stream>>>(WriteParams{layer, step, input});
  NKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace nkv::cuda
