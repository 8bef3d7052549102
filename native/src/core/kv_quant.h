// KV-cache quantization formats: the arithmetic of one KIVI group and of one block-floating-point block.
// The CPU reference and the CUDA kernels both call these functions, so that they produce the same codes and
// the same dequantized values bit for bit: divisions are correctly rounded and products fused explicitly
// (no dependence on the compiler's contraction or fast-math choices).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/float_bits.h"
#include "core/host_device.h"

namespace nkv {

NKV_HOST_DEVICE inline float divide_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// b-bit codes, 32 / b to a 32-bit word, the first in the least significant bits.
NKV_HOST_DEVICE inline uint32_t codes_per_word(int bits) { return 32u / static_cast<uint32_t>(bits); }
NKV_HOST_DEVICE inline uint32_t pack_code(uint32_t word, uint32_t code, int index, int bits) {
  return word | code << (index * bits);
}
NKV_HOST_DEVICE inline uint32_t unpack_code(uint32_t word, int index, int bits) {
  return (word >> (index * bits)) & ((1u << bits) - 1u);
}

namespace kivi {

// KIVI's asymmetric min/max quantization of one group (G values: G tokens of one key channel, or G channels
// of one value token) to b bits, b in {2, 4, 8}. The group's minimum and scale are stored as fp16 bits.
struct Group {
  uint16_t scale = 0;  // fp16: (max - min) / (2^b - 1), rounded
  uint16_t min = 0;    // fp16: the group's minimum, rounded
};

NKV_HOST_DEVICE inline uint32_t largest_code(int bits) { return (1u << bits) - 1u; }

// A group as one 32-bit word, the scale in the low half and the minimum in the high half (an fp16 pair {scale, minimum}
// in memory): the one-shot sequence layouts below keep groups so; the cache stores them reordered (store_key_group,
// store_value_group).
NKV_HOST_DEVICE inline uint32_t pack_group(Group g) { return g.scale | static_cast<uint32_t>(g.min) << 16; }
NKV_HOST_DEVICE inline Group unpack_group(uint32_t word) {
  return {static_cast<uint16_t>(word & 0xffffu), static_cast<uint16_t>(word >> 16)};
}
// A quantized cache's key group row (one group of G tokens, every channel of a head) keeps its groups by channel pair:
// halves {scale of 2p, scale of 2p + 1, minimum of 2p, minimum of 2p + 1} for pair p, so a kernel's 16-byte load of
// four channels holds the scale pairs and minimum pairs it multiplies with as they are.
NKV_HOST_DEVICE inline void store_key_group(uint32_t* row, int64_t d, Group g) {
  uint16_t* halves = reinterpret_cast<uint16_t*>(row);
  halves[2 * (d & ~int64_t{1}) + (d & 1)] = g.scale;
  halves[2 * (d & ~int64_t{1}) + 2 + (d & 1)] = g.min;
}
NKV_HOST_DEVICE inline Group load_key_group(const uint32_t* row, int64_t d) {
  const uint16_t* halves = reinterpret_cast<const uint16_t*>(row);
  return {halves[2 * (d & ~int64_t{1}) + (d & 1)], halves[2 * (d & ~int64_t{1}) + 2 + (d & 1)]};
}
// A value group column keeps its tokens in units of 8 (core/quantized_kvcache.h, value_group_unit): 16 halves, the
// scales of the unit's tokens 0 4 1 5 2 6 3 7, then their minimums in the same order. A word is then the scale (or
// minimum) pair of two tokens 4 apart, which is how the decode's P^T operand pairs its tokens (keys 8t + 2m and + 4).
// j: the token's place in its unit (token % 8).
NKV_HOST_DEVICE inline int value_group_half(int64_t j) { return static_cast<int>(2 * (j & 3) + ((j >> 2) & 1)); }
NKV_HOST_DEVICE inline void store_value_group(uint32_t* unit, int64_t j, Group g) {
  uint16_t* halves = reinterpret_cast<uint16_t*>(unit);
  halves[value_group_half(j)] = g.scale;
  halves[8 + value_group_half(j)] = g.min;
}
NKV_HOST_DEVICE inline Group load_value_group(const uint32_t* unit, int64_t j) {
  const uint16_t* halves = reinterpret_cast<const uint16_t*>(unit);
  return {halves[value_group_half(j)], halves[8 + value_group_half(j)]};
}
// Where word w (channels w * (32 / b) ..) of a value token's head row of `words` words is stored: at 2 bits the even
// words first, then the odd ones (d128: 0 2 4 6 1 3 5 7), so that a decode lane's words (one 16-channel half of each
// 32-channel block) are one 16-byte piece; 4 and 8 bits keep channel order. Codes within a word keep KIVI's order.
NKV_HOST_DEVICE inline int64_t value_word_slot(int64_t w, int64_t words, int bits) { return bits == 2 ? (w & 1) * (words / 2) + (w >> 1) : w; }

// The stored parameters of a group whose values (as float) lie in [lo, hi]. The scale comes from the stored
// (rounded) minimum, so that the group's maximum maps to the largest code. A group whose rounded scale is 0
// (constant, or a range below fp16's resolution) keeps scale 0: every code is 0 and every value its minimum
// (KIVI's reference divides by 0 there and produces NaN). Values must lie within fp16's range.
NKV_HOST_DEVICE inline Group group_of(float lo, float hi, int bits) {
  Group g;
  g.min = float_to_half(lo);
  const float range = hi - half_to_float(g.min);
  g.scale = range > 0.0f ? float_to_half(divide_rn(range, static_cast<float>(largest_code(bits)))) : uint16_t{0};
  return g;
}

// The code of x: round((x - min) / scale) to nearest even, clamped to [0, 2^b - 1]; 0 when the scale is 0
// and for NaN.
NKV_HOST_DEVICE inline uint32_t code_of(float x, Group g, int bits) {
  const float scale = half_to_float(g.scale);
  if (!(scale > 0.0f)) return 0;
  const float q = rintf(divide_rn(x - half_to_float(g.min), scale));
  if (!(q > 0.0f)) return 0;  // negative, or NaN
  const float top = static_cast<float>(largest_code(bits));
  return static_cast<uint32_t>(q < top ? q : top);
}

// The dequantized value of a code: code * scale + min as one fused multiply-add.
NKV_HOST_DEVICE inline float value_of(uint32_t code, Group g) {
  return fmaf(static_cast<float>(code), half_to_float(g.scale), half_to_float(g.min));
}

// Where a sequence's T tokens are (KIVI's bookkeeping, residual window R a multiple of G): keys [0, T - T % R)
// quantized in groups of G tokens per channel, the rest (fewer than R) in the fp16 residual; values [0, T - R)
// quantized one token at a time, the last min(T, R) in the residual. A prefill of T tokens and T single-token
// steps end in the same split: keys flush R at a time when their residual fills (never a group of one token),
// values flush their oldest token when the window passes R.
NKV_HOST_DEVICE inline int64_t quantized_keys(int64_t tokens, int32_t residual) { return tokens - tokens % residual; }
NKV_HOST_DEVICE inline int64_t quantized_values(int64_t tokens, int32_t residual) {
  return tokens > residual ? tokens - residual : 0;
}

// The layouts of one sequence's quantized keys and values over C channels (heads x head_dim), b bits, groups of G:
//   key codes    [T / (32 / b), C] words: word w of channel c holds tokens w * (32 / b) .. in its low bits first
//   key groups   [T / G, C] packed groups (scale and minimum)
//   value codes  [T, C / (32 / b)] words: word w of token t holds channels w * (32 / b) ..
//   value groups [T, C / G] packed groups
// A word of key codes is 16 tokens (2-bit) of one channel, so a warp over channels loads 32 words together.

// Quantizes keys [t0, t0 + G) (t0 a multiple of G) of every channel: key(t, c) returns them as floats.
template <typename KeyAt>
void quantize_key_group(int bits, int group, int64_t channels, int64_t t0, KeyAt key, uint32_t* words, uint32_t* groups) {
  const int64_t per_word = codes_per_word(bits);
  for (int64_t c = 0; c < channels; ++c) {
    float lo = key(t0, c), hi = lo;
    for (int64_t t = t0 + 1; t < t0 + group; ++t) {
      lo = fminf(lo, key(t, c));
      hi = fmaxf(hi, key(t, c));
    }
    const Group g = group_of(lo, hi, bits);
    groups[t0 / group * channels + c] = pack_group(g);
    for (int64_t t = t0; t < t0 + group; t += per_word) {
      uint32_t word = 0;
      for (int64_t i = 0; i < per_word; ++i) word = pack_code(word, code_of(key(t + i, c), g, bits), static_cast<int>(i), bits);
      words[t / per_word * channels + c] = word;
    }
  }
}

// Quantizes one value token (C channels, C a multiple of G): value(c) returns them as floats; words and
// groups point at the token's row.
template <typename ValueAt>
void quantize_value_token(int bits, int group, int64_t channels, ValueAt value, uint32_t* words, uint32_t* groups) {
  const int64_t per_word = codes_per_word(bits);
  for (int64_t c0 = 0; c0 < channels; c0 += group) {
    float lo = value(c0), hi = lo;
    for (int64_t c = c0 + 1; c < c0 + group; ++c) {
      lo = fminf(lo, value(c));
      hi = fmaxf(hi, value(c));
    }
    groups[c0 / group] = pack_group(group_of(lo, hi, bits));
    const Group g = unpack_group(groups[c0 / group]);
    for (int64_t c = c0; c < c0 + group; c += per_word) {
      uint32_t word = 0;
      for (int64_t i = 0; i < per_word; ++i) word = pack_code(word, code_of(value(c + i), g, bits), static_cast<int>(i), bits);
      words[c / per_word] = word;
    }
  }
}

}  // namespace kivi

namespace bfp {

// Block floating point: a block of n values (n in {16, 32, 64}, along the channels) shares the exponent
// E = floor(log2(max |x|)) (int8) and keeps m-bit signed mantissas (m = 4: BFP12, m = 8: BFP16) in steps of
// 2^(E + 2 - m), rounded to nearest even and clipped to +-(2^(m-1) - 1). A block of zeros stores kZeroBlock.
constexpr int kZeroBlock = -128;

// E for a block whose largest magnitude is `largest` (kZeroBlock for 0; NaN and inf are the caller's to
// avoid). Exponents below -127 (bfloat16 subnormals) are raised to -127: those values then round to 0.
NKV_HOST_DEVICE inline int exponent_of(float largest) {
  if (!(largest > 0.0f)) return kZeroBlock;
  int e = 0;
  frexpf(largest, &e);  // largest = f * 2^e, f in [0.5, 1)
  const int exponent = e - 1;
  return exponent < -127 ? -127 : exponent;
}

NKV_HOST_DEVICE inline int largest_mantissa(int mantissa_bits) { return (1 << (mantissa_bits - 1)) - 1; }

// The mantissa of x in a block of exponent E: x / 2^(E + 2 - m) (exact: a power of two), rounded to nearest
// even and clipped symmetrically.
NKV_HOST_DEVICE inline int mantissa_of(float x, int exponent, int mantissa_bits) {
  if (exponent == kZeroBlock) return 0;
  const float q = rintf(ldexpf(x, mantissa_bits - 2 - exponent));
  const float top = static_cast<float>(largest_mantissa(mantissa_bits));
  if (!(q == q)) return 0;
  return static_cast<int>(q > top ? top : (q < -top ? -top : q));
}

NKV_HOST_DEVICE inline float value_of(int mantissa, int exponent, int mantissa_bits) {
  if (exponent == kZeroBlock) return 0.0f;
  return ldexpf(static_cast<float>(mantissa), exponent + 2 - mantissa_bits);
}

// A mantissa as its m-bit two's complement field (packed 32 / m to a word like KIVI's codes), and back.
NKV_HOST_DEVICE inline uint32_t mantissa_field(int mantissa, int mantissa_bits) {
  return static_cast<uint32_t>(mantissa) & ((1u << mantissa_bits) - 1u);
}
NKV_HOST_DEVICE inline int mantissa_from_field(uint32_t field, int mantissa_bits) {
  const int shift = 32 - mantissa_bits;
  return static_cast<int32_t>(field << shift) >> shift;
}

// Quantizes one token's channels (a multiple of n) in blocks of n: value(c) returns them as floats (finite);
// words [channels / (32 / m)] and exponents [channels / n] point at the token's row.
template <typename ValueAt>
void quantize_token(int mantissa_bits, int block, int64_t channels, ValueAt value, uint32_t* words, int8_t* exponents) {
  const int64_t per_word = codes_per_word(mantissa_bits);
  for (int64_t c0 = 0; c0 < channels; c0 += block) {
    float largest = 0.0f;
    for (int64_t c = c0; c < c0 + block; ++c) largest = fmaxf(largest, fabsf(value(c)));
    const int e = exponent_of(largest);
    exponents[c0 / block] = static_cast<int8_t>(e);
    for (int64_t c = c0; c < c0 + block; c += per_word) {
      uint32_t word = 0;
      for (int64_t i = 0; i < per_word; ++i) {
        word = pack_code(word, mantissa_field(mantissa_of(value(c + i), e, mantissa_bits), mantissa_bits), static_cast<int>(i), mantissa_bits);
      }
      words[c / per_word] = word;
    }
  }
}

}  // namespace bfp

}  // namespace nkv
