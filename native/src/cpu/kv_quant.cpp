// Reference of the quantized KV cache: a step's write (KIVI's flush rules through the group quantizers of
// core/kv_quant.h) and decode attention over the dequantized keys and values (float32 q * s + mn, then
// the float64 reference attention). The CUDA kernels are tested against both.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/kv_quant.h"
#include "core/quantized_kvcache.h"
#include "cpu/attention_reference.h"

namespace nkv::cpu {
namespace {

using namespace reference;

// Where a slot's rows lie. The token-indexed arrays (codes, groups, BFP's fp16 values) are per head: a pointer to the
// row of `head` that holds token t (a key code word row, a key group, or the token's row), in the slot's share or
// the page that holds t (head_row); KIVI's residuals are [row][heads x d].
struct SlotArrays {
  const QuantizedKvLayer& l;
  int32_t slot;
  int64_t channels() const { return static_cast<int64_t>(l.heads) * l.head_dim; }
  uint32_t* key_codes(int64_t head, int64_t t) const {  // KIVI: the word row of t; BFP: t's words
    if (l.format == NKV_KV_FORMAT_BFP) return l.key_codes + head_row(l, l.key_codes_slot, slot, head, t, 0, l.head_dim / l.codes_per_word());
    return l.key_codes + head_row(l, l.key_codes_slot, slot, head, t, l.word_shift(), l.head_dim);
  }
  uint32_t* key_groups(int64_t head, int64_t t) const {
    return l.key_groups + head_row(l, l.key_groups_slot, slot, head, t, l.group_shift, l.head_dim);
  }
  uint32_t* value_codes(int64_t head, int64_t t) const {
    return l.value_codes + head_row(l, l.value_codes_slot, slot, head, t, 0, l.head_dim / l.codes_per_word());
  }
  uint32_t* value_group_unit(int64_t head, int64_t t, int64_t column) const { return l.value_groups + nkv::value_group_unit(l, slot, head, t, column); }
  int8_t* key_exponents(int64_t head, int64_t t) const {
    return reinterpret_cast<int8_t*>(l.key_groups) + head_row(l, l.key_groups_slot, slot, head, t, 0, l.head_dim / l.group);
  }
  int8_t* value_exponents(int64_t head, int64_t t) const {
    return reinterpret_cast<int8_t*>(l.value_groups) + head_row(l, l.value_groups_slot, slot, head, t, 0, l.head_dim / l.group);
  }
  uint16_t* fp16_values(int64_t head, int64_t t) const {  // BFP with fp16 values
    return l.value_residual + head_row(l, l.value_residual_slot, slot, head, t, 0, l.head_dim);
  }
  uint16_t* key_residual() const { return l.key_residual + slot * l.residual_slot; }                  // KIVI
  uint16_t* value_residual() const { return l.value_residual + slot * l.value_residual_slot; }        // KIVI's ring
  // The written channel that stored key channel c holds (K-sort).
  int64_t key_source(int64_t c) const {
    if (l.key_permutation == nullptr) return c;
    return c / l.head_dim * l.head_dim + l.key_permutation[c];
  }
};

float input_at(const uint16_t* base, int64_t row_stride, int64_t head_stride, int32_t head_dim, int64_t row, int64_t c) {
  return half_to_float(base[row * row_stride + c / head_dim * head_stride + c % head_dim]);
}

// Block floating point: every new token's keys (in the layer's key order) and values, as they are written.
void bfp_write(const QuantizedKvLayer& l, const QuantizedKvStep& step, const QuantizedKvInput& in) {
  for (int32_t i = 0; i < step.count; ++i) {
    const QuantizedKvStepEntry& e = step.entries[i];
    const SlotArrays slot{l, e.slot};
    for (int64_t t = e.old_length; t < e.old_length + e.count; ++t) {
      const int64_t row = e.input_row + t - e.old_length;
      for (int64_t h = 0; h < l.heads; ++h) {
        const int64_t c0 = h * l.head_dim;
        bfp::quantize_token(
            l.bits, l.group, l.head_dim,
            [&](int64_t c) { return input_at(in.k, in.k_row_stride, in.k_head_stride, l.head_dim, row, slot.key_source(c0 + c)); },
            slot.key_codes(h, t), slot.key_exponents(h, t));
        if (l.value_format == NKV_KV_VALUES_FP16) {
          uint16_t* values = slot.fp16_values(h, t);
          for (int64_t c = 0; c < l.head_dim; ++c) {
            values[c] = float_to_half(input_at(in.v, in.v_row_stride, in.v_head_stride, l.head_dim, row, c0 + c));
          }
        } else {
          bfp::quantize_token(l.bits, l.group, l.head_dim,
                              [&](int64_t c) { return input_at(in.v, in.v_row_stride, in.v_head_stride, l.head_dim, row, c0 + c); },
                              slot.value_codes(h, t), slot.value_exponents(h, t));
        }
      }
    }
  }
}

}  // namespace

void ksort_order(const nkv_tensor& keys, nkv_rotary_pairs pairs, int32_t* permutation) {
  const int64_t tokens = keys.shape[0], heads = keys.shape[1], d = keys.shape[2];
  auto at = [&](int64_t t, int64_t h, int64_t c) -> double {
    const int64_t index = t * keys.strides[0] + h * keys.strides[1] + c;
    if (keys.dtype == NKV_DTYPE_FLOAT32) return static_cast<const float*>(keys.data)[index];
    return half_to_float(static_cast<const uint16_t*>(keys.data)[index]);
  };
  for (int64_t h = 0; h < heads; ++h) {
    std::vector<double> energy(static_cast<size_t>(d), 0.0);  // sum of squares per channel
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t c = 0; c < d; ++c) energy[static_cast<size_t>(c)] += at(t, h, c) * at(t, h, c);
    }
    for (int64_t c = 0; c < d; ++c) {
      if (!std::isfinite(energy[static_cast<size_t>(c)])) {
        fail_argument("argument 'keys': head " + std::to_string(h) + ", channel " + std::to_string(c) + " has a non-finite value");
      }
    }
    // Units that move as wholes: single channels, or rotary pairs (listed by their first channel).
    const int64_t units = pairs == NKV_ROTARY_NONE ? d : d / 2;
    auto members = [&](int64_t u) -> std::pair<int64_t, int64_t> {
      if (pairs == NKV_ROTARY_HALVES) return {u, u + d / 2};
      if (pairs == NKV_ROTARY_ADJACENT) return {2 * u, 2 * u + 1};
      return {u, -1};
    };
    auto unit_energy = [&](int64_t u) {
      const auto [a, b] = members(u);
      return energy[static_cast<size_t>(a)] + (b >= 0 ? energy[static_cast<size_t>(b)] : 0.0);
    };
    std::vector<int64_t> order(static_cast<size_t>(units));
    std::iota(order.begin(), order.end(), 0);
    // Largest first; ties keep the channel order (a stable sort), so the result is deterministic.
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return unit_energy(x) > unit_energy(y); });
    int32_t* out = permutation + h * d;
    for (int64_t k = 0; k < units; ++k) {
      const auto [a, b] = members(order[static_cast<size_t>(k)]);
      if (pairs == NKV_ROTARY_NONE) {
        out[k] = static_cast<int32_t>(a);
      } else if (pairs == NKV_ROTARY_HALVES) {
        out[k] = static_cast<int32_t>(a);
        out[k + d / 2] = static_cast<int32_t>(b);
      } else {
        out[2 * k] = static_cast<int32_t>(a);
        out[2 * k + 1] = static_cast<int32_t>(b);
      }
    }
  }
}

void quantized_kv_write(const QuantizedKvLayer& l, const QuantizedKvStep& step, const QuantizedKvInput& in) {
  if (l.format == NKV_KV_FORMAT_BFP) return bfp_write(l, step, in);
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
      return input_at(in.k, in.k_row_stride, in.k_head_stride, l.head_dim, e.input_row + t - t0, slot.key_source(c));
    };
    auto value = [&](int64_t t, int64_t c) {
      if (t < t0) return half_to_float(slot.value_residual()[t % r * channels + c]);
      return input_at(in.v, in.v_row_stride, in.v_head_stride, l.head_dim, e.input_row + t - t0, c);
    };
    // Quantize first: the residual rows written below may be the ones read here.
    for (int64_t g = keys_before; g < keys_after; g += l.group) {
      for (int64_t h = 0; h < l.heads; ++h) {
        // The group's word rows and its group row of head h are consecutive rows of one layout block; the group row
        // is stored by channel pair (kivi::store_key_group).
        std::vector<uint32_t> groups(static_cast<size_t>(l.head_dim));
        kivi::quantize_key_group(l.bits, l.group, l.head_dim, 0, [&](int64_t t, int64_t c) { return key(g + t, h * l.head_dim + c); },
                                 slot.key_codes(h, g), groups.data());
        for (int64_t d = 0; d < l.head_dim; ++d) kivi::store_key_group(slot.key_groups(h, g), d, kivi::unpack_group(groups[static_cast<size_t>(d)]));
      }
    }
    for (int64_t t = kivi::quantized_values(t0, r); t < kivi::quantized_values(t1, r); ++t) {
      for (int64_t h = 0; h < l.heads; ++h) {
        // The token's words and groups in channel order, then stored in the head row's word order and group units.
        const int64_t words = l.head_dim / l.codes_per_word();
        std::vector<uint32_t> codes(static_cast<size_t>(words)), groups(static_cast<size_t>(l.head_dim / l.group));
        kivi::quantize_value_token(l.bits, l.group, l.head_dim, [&](int64_t c) { return value(t, h * l.head_dim + c); }, codes.data(),
                                   groups.data());
        uint32_t* row = slot.value_codes(h, t);
        for (int64_t w = 0; w < words; ++w) row[kivi::value_word_slot(w, words, l.bits)] = codes[static_cast<size_t>(w)];
        for (size_t j = 0; j < groups.size(); ++j) {
          kivi::store_value_group(slot.value_group_unit(h, t, static_cast<int64_t>(j)), t & 7, kivi::unpack_group(groups[j]));
        }
      }
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
    const bool bfp = l.format == NKV_KV_FORMAT_BFP;
    const int64_t quantized_keys = bfp ? length : kivi::quantized_keys(length, l.residual);
    const int64_t quantized_values = bfp ? (l.value_format == NKV_KV_VALUES_FP16 ? 0 : length) : kivi::quantized_values(length, l.residual);
    // One stored value of a BFP row: the block's exponent and the channel's mantissa (d: the head's stored channel).
    auto bfp_value = [&](bool keys, int64_t t, int64_t d) {
      const uint32_t* words = keys ? slot.key_codes(hk, t) : slot.value_codes(hk, t);
      const int8_t* exponents = keys ? slot.key_exponents(hk, t) : slot.value_exponents(hk, t);
      const int mantissa = bfp::mantissa_from_field(unpack_code(words[d / per_word], static_cast<int>(d % per_word), l.bits), l.bits);
      return bfp::value_of(mantissa, exponents[d / l.group], l.bits);
    };
    // Keys come back in the written channel order: stored channel d of the head is written channel source(d).
    auto key_rows = [&](int64_t t, int32_t head_dim, double* out) {
      for (int32_t d = 0; d < head_dim; ++d) {
        const int64_t c = static_cast<int64_t>(hk) * head_dim + d;
        double& x = out[slot.key_source(c) - static_cast<int64_t>(hk) * head_dim];
        if (bfp) {
          x = bfp_value(true, t, d);
        } else if (t < quantized_keys) {
          const uint32_t word = slot.key_codes(hk, t)[d];
          const kivi::Group g = kivi::load_key_group(slot.key_groups(hk, t), d);
          x = kivi::value_of(unpack_code(word, static_cast<int>(t % per_word), l.bits), g);
        } else {
          x = half_to_float(slot.key_residual()[(t - quantized_keys) * channels + c]);
        }
      }
    };
    auto value_rows = [&](int64_t t, int32_t head_dim, double* out) {
      for (int32_t d = 0; d < head_dim; ++d) {
        const int64_t c = static_cast<int64_t>(hk) * head_dim + d;
        if (bfp) {
          out[d] = quantized_values > 0 ? bfp_value(false, t, d) : half_to_float(slot.fp16_values(hk, t)[d]);
        } else if (t < quantized_values) {
          const uint32_t word = slot.value_codes(hk, t)[kivi::value_word_slot(d / per_word, head_dim / per_word, l.bits)];
          const kivi::Group g = kivi::load_value_group(slot.value_group_unit(hk, t, d / l.group), t & 7);
          out[d] = kivi::value_of(unpack_code(word, static_cast<int>(d % per_word), l.bits), g);
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
