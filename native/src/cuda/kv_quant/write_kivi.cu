// The quantized KV cache's write of one layer: keys whose residual filled are quantized a group of G tokens
// per channel, values that left the window a token at a time, then the step's new tokens go to the fp16
// residuals. Two launches in stream order, because a residual row written by the second may be one the
// first reads. The group arithmetic is core/kv_quant.h's, as on the CPU, so the codes match bit for bit. BFP layers
// go to write_bfp.cu.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "core/kv_quant.h"
#include "core/quantized_kvcache.h"
#include "cuda/common/cuda_check.h"
#include "cuda/kv_quant/write_step.cuh"

namespace nkv::cuda {
namespace {

constexpr int kThreads = 128;

// A key of the entry's slot: old tokens from the residual (which starts at the old flush point), new
// ones from the step's rows.
__device__ float key_at(const WriteParams& p, const QuantizedKvStepEntry& e, int64_t t, int64_t c, int64_t channels) {
  if (t < e.old_length) {
    const int64_t first = kivi::quantized_keys(e.old_length, p.l.residual);
    return half_to_float(p.l.key_residual[e.slot * p.l.residual_slot + (t - first) * channels + c]);
  }
  // Stored channel c is written channel key_permutation[c] of its head (K-sort; the residual holds stored order).
  const int64_t written = p.l.key_permutation != nullptr ? c / p.l.head_dim * p.l.head_dim + p.l.key_permutation[c] : c;
  return step_input(p.in.k, p.in.k_row_stride, p.in.k_head_stride, p.l.head_dim, e.input_row + t - e.old_length, written);
}

__device__ float value_at(const WriteParams& p, const QuantizedKvStepEntry& e, int64_t t, int64_t c, int64_t channels) {
  if (t < e.old_length) return half_to_float(p.l.value_residual[e.slot * p.l.residual_slot + t % p.l.residual * channels + c]);
  return step_input(p.in.v, p.in.v_row_stride, p.in.v_head_stride, p.l.head_dim, e.input_row + t - e.old_length, c);
}

// blockIdx.x: a key group of the step; one thread per channel.
__global__ void __launch_bounds__(kThreads) quantize_keys_kernel(const WriteParams p) {
  const int64_t channels = static_cast<int64_t>(p.l.heads) * p.l.head_dim;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (c >= channels) return;
  const int64_t item = blockIdx.x;
  const QuantizedKvStepEntry e = p.step.entries[step_entry_of(p.step, item, [](const QuantizedKvStepEntry& x) { return x.key_groups_before; })];
  const int bits = p.l.bits, group = p.l.group;
  const int64_t t0 = kivi::quantized_keys(e.old_length, p.l.residual) + (item - e.key_groups_before) * group;
  float lo = key_at(p, e, t0, c, channels), hi = lo;
  for (int64_t t = t0 + 1; t < t0 + group; ++t) {
    const float x = key_at(p, e, t, c, channels);
    lo = fminf(lo, x);
    hi = fmaxf(hi, x);
  }
  const kivi::Group g = kivi::group_of(lo, hi, bits);
  // The group and its word rows lie in one layout block (a block, and a page, is a multiple of G).
  const int64_t head = c / p.l.head_dim, d = c % p.l.head_dim;
  kivi::store_key_group(p.l.key_groups + head_row(p.l, p.l.key_groups_slot, e.slot, head, t0, p.l.group_shift, p.l.head_dim), d, g);
  const int per_word = static_cast<int>(codes_per_word(bits));
  uint32_t* words = p.l.key_codes + head_row(p.l, p.l.key_codes_slot, e.slot, head, t0, p.l.word_shift(), p.l.head_dim) + d;
  for (int64_t t = t0; t < t0 + group; t += per_word) {
    uint32_t word = 0;
    for (int i = 0; i < per_word; ++i) word = pack_code(word, kivi::code_of(key_at(p, e, t + i, c, channels), g, bits), i, bits);
    words[(t - t0) / per_word * p.l.head_dim] = word;
  }
}

// blockIdx.x: a value token of the step; one thread per group of G channels.
__global__ void __launch_bounds__(kThreads) quantize_values_kernel(const WriteParams p) {
  const int64_t channels = static_cast<int64_t>(p.l.heads) * p.l.head_dim;
  const int bits = p.l.bits, group = p.l.group;
  const int64_t item = blockIdx.x;
  const QuantizedKvStepEntry e = p.step.entries[step_entry_of(p.step, item, [](const QuantizedKvStepEntry& x) { return x.value_tokens_before; })];
  const int64_t t = kivi::quantized_values(e.old_length, p.l.residual) + (item - e.value_tokens_before);
  const int per_word = static_cast<int>(codes_per_word(bits));
  for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * group; c0 < channels; c0 += static_cast<int64_t>(kThreads) * group) {
    float lo = value_at(p, e, t, c0, channels), hi = lo;
    for (int64_t c = c0 + 1; c < c0 + group; ++c) {
      const float x = value_at(p, e, t, c, channels);
      lo = fminf(lo, x);
      hi = fmaxf(hi, x);
    }
    const kivi::Group g = kivi::group_of(lo, hi, bits);
    const int64_t head = c0 / p.l.head_dim, d0 = c0 % p.l.head_dim;
    kivi::store_value_group(p.l.value_groups + value_group_unit(p.l, e.slot, head, t, d0 / group), t & 7, g);
    const int64_t row_words = p.l.head_dim / per_word;
    uint32_t* words = p.l.value_codes + head_row(p.l, p.l.value_codes_slot, e.slot, head, t, 0, row_words);
    for (int64_t c = c0; c < c0 + group; c += per_word) {
      uint32_t word = 0;
      for (int i = 0; i < per_word; ++i) word = pack_code(word, kivi::code_of(value_at(p, e, t, c + i, channels), g, bits), i, bits);
      words[kivi::value_word_slot((d0 + c - c0) / per_word, row_words, bits)] = word;
    }
  }
}

// blockIdx.x: a new token of the step; threads over its 16-byte chunks of K and V.
__global__ void __launch_bounds__(kThreads) store_residuals_kernel(const WriteParams p) {
  const int64_t channels = static_cast<int64_t>(p.l.heads) * p.l.head_dim;
  const int64_t item = blockIdx.x;
  const QuantizedKvStepEntry e = p.step.entries[step_entry_of(p.step, item, [](const QuantizedKvStepEntry& x) { return x.new_tokens_before; })];
  const int64_t t = e.old_length + (item - e.new_tokens_before);
  const int64_t end = e.old_length + e.count;
  const int64_t row = e.input_row + (item - e.new_tokens_before);
  const int r = p.l.residual;
  const int64_t flushed = kivi::quantized_keys(end, r);
  const bool key_waits = t >= flushed;
  const bool value_waits = t >= end - r;
  const int chunks_per_head = p.l.head_dim / 8;
  for (int i = threadIdx.x; i < p.l.heads * chunks_per_head; i += kThreads) {
    const int64_t c = static_cast<int64_t>(i) * 8;
    const int head = i / chunks_per_head, d = i % chunks_per_head * 8;
    if (key_waits) {
      const uint16_t* k = p.in.k + row * p.in.k_row_stride + head * p.in.k_head_stride;
      uint16_t* stored = p.l.key_residual + e.slot * p.l.residual_slot + (t - flushed) * channels + c;
      if (p.l.key_permutation == nullptr) {
        *reinterpret_cast<uint4*>(stored) = *reinterpret_cast<const uint4*>(k + d);
      } else {  // K-sort: stored channel d + j of the head is written channel key_permutation[c + j]
        for (int j = 0; j < 8; ++j) stored[j] = k[p.l.key_permutation[c + j]];
      }
    }
    if (value_waits) {
      const uint4 x = *reinterpret_cast<const uint4*>(p.in.v + row * p.in.v_row_stride + head * p.in.v_head_stride + d);
      *reinterpret_cast<uint4*>(p.l.value_residual + e.slot * p.l.residual_slot + t % r * channels + c) = x;
    }
  }
}

}  // namespace

void quantized_kv_write(int32_t device_ordinal, void* stream, const QuantizedKvLayer& layer, const QuantizedKvStep& step,
                        const QuantizedKvInput& input) {
  DeviceScope scope(device_ordinal);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (layer.format == NKV_KV_FORMAT_BFP) return quantized_kv_write_bfp(s, layer, step, input);
  const WriteParams p{layer, step, input};
  const int64_t channels = static_cast<int64_t>(layer.heads) * layer.head_dim;
  if (step.key_groups > 0) {
    const dim3 grid(static_cast<unsigned>(step.key_groups), static_cast<unsigned>((channels + kThreads - 1) / kThreads));
    quantize_keys_kernel<<<grid, kThreads, 0, s>>>(p);
    NKV_CUDA_CHECK(cudaGetLastError());
  }
  if (step.value_tokens > 0) {
    quantize_values_kernel<<<static_cast<unsigned>(step.value_tokens), kThreads, 0, s>>>(p);
    NKV_CUDA_CHECK(cudaGetLastError());
  }
  if (step.new_tokens > 0) {
    store_residuals_kernel<<<static_cast<unsigned>(step.new_tokens), kThreads, 0, s>>>(p);
    NKV_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace nkv::cuda
