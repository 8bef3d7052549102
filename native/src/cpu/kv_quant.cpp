// Reference of the quantized KV cache: a step's write (KIVI's flush rules through the group quantizers of
// core/kv_quant.h) and decode attention over the dequantized keys and values (float32 q * s + mn, then
// the float64 reference attention). The CUDA kernels are tested against both.
#include <algorithm>

#include "core/kv_quant.h"
#include "core/quantized_kvcache.h"
#include "cpu/attention_reference.h"

namespace nkv::cpu {
namespace {

using namespace reference;

// Where a slot's rows lie: channel c of row t of a [rows, heads x d] array.
struct SlotArrays {
  const QuantizedKvLayer& l;
  int32_t slot;
  int64_t channels() const { return static_cast<int64_t>(l.heads) * l.head_dim; }
  uint32_t* key_codes() const { return l.key_codes + slot * l.key_codes_slot; }
  uint32_t* key_groups() const { return l.key_groups + slot * l.key_groups_slot; }
  uint16_t* key_residual() const { return l.key_residual + slot * l.residual_slot; }
  uint32_t* value_codes() const { return l.value_codes + slot * l.value_codes_slot; }
  uint32_t* value_groups() const { return l.value_groups + slot * l.value_groups_slot; }
  uint16_t* value_residual() const { return l.value_residual + slot * l.residual_slot; }
};

float input_at(const uint16_t* base, int64_t row_stride, int64_t head_stride, int32_t head_dim, int64_t row, int64_t c) {
  return half_to_float(base[row * row_stride + c / head_dim * head_stride + c % head_dim]);
}

}  // namespace

void quantized_kv_write(const QuantizedKvLayer& l, const QuantizedKvStep& step, const QuantizedKvInput& in) {
  const int32_t r = l.residual;
  for (int32_t i = 0; i < step.count; ++i) {
    const QuantizedKvStepEntry& e = step.entries[i];
    const SlotArrays slot{l, e.slot};
    const int64_t channels = slot.channels();
    const int64_t t0 = e.old_length, t1 = e.old_length + e.count;
    const int64_t keys_before = kivi::quantized_keys(t0, r), keys_after = kivi::quantized_keys(t1, r);
    // Old tokens come from the residuals, new ones from the step's rows.
    auto key = [&](int64_t t, int64_t c) {
      if (t < t0) return half_to_float(slot.key_residual()[(t - keys_before) * channels + c]);
      return input_at(in.k, in.k_row_stride, in.k_head_stride, l.head_dim, e.input_row + t - t0, c);
    };
    auto value = [&](int64_t t, int64_t c) {
      if (t < t0) return half_to_float(slot.value_residual()[t % r * channels + c]);
      return input_at(in.v, in.v_row_stride, in.v_head_stride, l.head_dim, e.input_row + t - t0, c);
    };
    // Quantize first: the residual rows written below may be the ones read here.
    for (int64_t g = keys_before; g < keys_after; g += l.group) {
      kivi::quantize_key_group(l.bits, l.group, channels, g, key, slot.key_codes(), slot.key_groups());
    }
    const int64_t per_word = codes_per_word(l.bits);
    for (int64_t t = kivi::quantized_values(t0, r); t < kivi::quantized_values(t1, r); ++t) {
      kivi::quantize_value_token(l.bits, l.group, channels, [&](int64_t c) { return value(t, c); },
                                 slot.value_codes() + t * (channels / per_word), slot.value_groups() + t * (channels / l.group));
    }
    // Keys past the last flush wait in the residual (only new tokens move: when a flush happened every old
    // residual key was in it, and otherwise the old ones stay where they are).
    for (int64_t t = std::max(t0, keys_after); t < t1; ++t) {
      for (int64_t c = 0; c < channels; ++c) {
        slot.key_residual()[(t - keys_after) * channels + c] = float_to_half(key(t, c));
      }
    }
    for (int64_t t = std::max(t0, t1 - r); t < t1; ++t) {
      for (int64_t c = 0; c < channels; ++c) slot.value_residual()[t % r * channels + c] = float_to_half(value(t, c));
    }
  }
}

void attention_decode_quantized(const nkv_attention_plan& plan, const QuantizedDecodeArgs& a) {
  const int32_t group = plan.num_heads_q / plan.num_heads_kv;
  const QuantizedKvLayer& l = a.kv;
  const int32_t per_word = static_cast<int32_t>(codes_per_word(l.bits));
  parallel_for(static_cast<int64_t>(plan.batch) * plan.num_heads_q, [&](int64_t task) {
    const int32_t b = static_cast<int32_t>(task / plan.num_heads_q);
    const int32_t h = static_cast<int32_t>(task % plan.num_heads_q);
    const int32_t hk = h / group;
    const SlotArrays slot{l, b};
    const int64_t channels = slot.channels();
    const int64_t length = plan.seqlens_k[b];
    const int64_t quantized_keys = kivi::quantized_keys(length, l.residual);
    const int64_t quantized_values = kivi::quantized_values(length, l.residual);
    auto key_rows = [&](int64_t t, int32_t head_dim, double* out) {
      for (int32_t d = 0; d < head_dim; ++d) {
        const int64_t c = static_cast<int64_t>(hk) * head_dim + d;
        if (t < quantized_keys) {
          const uint32_t word = slot.key_codes()[t / per_word * channels + c];
          const kivi::Group g = kivi::unpack_group(slot.key_groups()[t / l.group * channels + c]);
          out[d] = kivi::value_of(unpack_code(word, static_cast<int>(t % per_word), l.bits), g);
        } else {
          out[d] = half_to_float(slot.key_residual()[(t - quantized_keys) * channels + c]);
        }
      }
    };
    auto value_rows = [&](int64_t t, int32_t head_dim, double* out) {
      for (int32_t d = 0; d < head_dim; ++d) {
        const int64_t c = static_cast<int64_t>(hk) * head_dim + d;
        if (t < quantized_values) {
          const uint32_t word = slot.value_codes()[t * (channels / per_word) + c / per_word];
          const kivi::Group g = kivi::unpack_group(slot.value_groups()[t * (channels / l.group) + c / l.group]);
          out[d] = kivi::value_of(unpack_code(word, static_cast<int>(c % per_word), l.bits), g);
        } else {
          out[d] = half_to_float(slot.value_residual()[t % l.residual * channels + c]);
        }
      }
    };
    const char* q = static_cast<const char*>(a.q) + (b * a.q_batch_stride + h * a.q_strides.head) * 2;
    char* o = static_cast<char*>(a.o) + (b * a.o_batch_stride + h * a.o_strides.head) * 2;
    OutputRowsOfHead out{o, a.o_strides.row, a.lse != nullptr ? a.lse + b * a.lse_batch_stride + h * a.lse_head_stride : nullptr, 1};
    attend(plan.mask, NKV_DTYPE_FLOAT16, plan.head_dim, plan.q_len, length, RowsOfHead{q, a.q_strides.row}, key_rows,
           value_rows, out);
  });
}

}  // namespace nkv::cpu
