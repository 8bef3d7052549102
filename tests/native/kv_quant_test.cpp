// KV-cache quantization formats: the arithmetic of one KIVI group and one block-floating-point block
// (core/kv_quant.h), which the CPU reference and the CUDA kernels share.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/float_bits.h"
#include "core/kv_quant.h"

namespace {

using nkv::float_to_half;
using nkv::half_to_float;

// fp16 values as floats: what a cache holds.
std::vector<float> random_halves(std::mt19937& rng, size_t count, float spread) {
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> x(count);
  for (auto& v : x) v = half_to_float(float_to_half(normal(rng)));
  return x;
}

TEST(KvQuant, CodesPackLeastSignificantFirst) {
  for (int bits : {2, 4, 8}) {
    const uint32_t per_word = nkv::codes_per_word(bits);
    EXPECT_EQ(per_word, 32u / static_cast<uint32_t>(bits));
    std::mt19937 rng(bits);
    std::vector<uint32_t> codes(per_word);
    uint32_t word = 0;
    for (uint32_t i = 0; i < per_word; ++i) {
      codes[i] = static_cast<uint32_t>(rng()) & nkv::kivi::largest_code(bits);
      word = nkv::pack_code(word, codes[i], static_cast<int>(i), bits);
    }
    for (uint32_t i = 0; i < per_word; ++i) EXPECT_EQ(nkv::unpack_code(word, static_cast<int>(i), bits), codes[i]);
  }
  // 2-bit codes 0, 1, 2, 3 of the group [0, 1, 2, 3]: scale 1, minimum 0, the first code lowest.
  const nkv::kivi::Group g = nkv::kivi::group_of(0.0f, 3.0f, 2);
  EXPECT_EQ(half_to_float(g.scale), 1.0f);
  EXPECT_EQ(half_to_float(g.min), 0.0f);
  uint32_t word = 0;
  for (int i = 0; i < 4; ++i) word = nkv::pack_code(word, nkv::kivi::code_of(static_cast<float>(i), g, 2), i, 2);
  EXPECT_EQ(word, 0xE4u);
}

TEST(Kivi, RoundsHalfToEvenAndClamps) {
  const nkv::kivi::Group g = nkv::kivi::group_of(0.0f, 3.0f, 2);
  EXPECT_EQ(nkv::kivi::code_of(0.5f, g, 2), 0u);
  EXPECT_EQ(nkv::kivi::code_of(1.5f, g, 2), 2u);
  EXPECT_EQ(nkv::kivi::code_of(2.5f, g, 2), 2u);
  EXPECT_EQ(nkv::kivi::code_of(-7.0f, g, 2), 0u);
  EXPECT_EQ(nkv::kivi::code_of(9.0f, g, 2), 3u);
  EXPECT_EQ(nkv::kivi::code_of(NAN, g, 2), 0u);
}

// Random groups of 32 fp16 values, with planted outliers: the minimum maps to code 0 and the maximum to
// 2^b - 1, and every value comes back within half a step (plus what rounding the scale to fp16 moves the
// top of the range).
TEST(Kivi, GroupErrorsStayWithinHalfAStep) {
  std::mt19937 rng(7);
  for (int bits : {2, 4, 8}) {
    for (int trial = 0; trial < 2000; ++trial) {
      std::vector<float> x = random_halves(rng, 32, trial % 3 == 0 ? 20.0f : 1.0f);
      if (trial % 5 == 0) x[rng() % 32] = half_to_float(float_to_half(300.0f));
      const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
      const nkv::kivi::Group g = nkv::kivi::group_of(*lo, *hi, bits);
      const float scale = half_to_float(g.scale), exact_scale = (*hi - *lo) / static_cast<float>(nkv::kivi::largest_code(bits));
      ASSERT_EQ(half_to_float(g.min), *lo);  // fp16 inputs: the minimum is exact
      ASSERT_EQ(nkv::kivi::code_of(*lo, g, bits), 0u);
      ASSERT_EQ(nkv::kivi::code_of(*hi, g, bits), nkv::kivi::largest_code(bits)) << "bits " << bits << " trial " << trial;
      const float bound = 0.5f * scale + static_cast<float>(nkv::kivi::largest_code(bits)) * std::fabs(scale - exact_scale) +
                          1e-6f * std::fabs(*hi);
      for (float v : x) {
        const float back = nkv::kivi::value_of(nkv::kivi::code_of(v, g, bits), g);
        ASSERT_LE(std::fabs(back - v), bound) << "bits " << bits << " value " << v;
      }
    }
  }
}

TEST(Kivi, ConstantGroupGivesZerosAndItsValue) {
  for (int bits : {2, 4, 8}) {
    for (float c : {0.0f, -3.25f, 1000.0f}) {
      const nkv::kivi::Group g = nkv::kivi::group_of(c, c, bits);
      EXPECT_EQ(g.scale, 0u);
      EXPECT_EQ(nkv::kivi::code_of(c, g, bits), 0u);
      EXPECT_EQ(nkv::kivi::value_of(0, g), c);
    }
  }
  // A range below fp16's resolution of the scale is a constant group too: no NaN, no division by zero.
  const nkv::kivi::Group tiny = nkv::kivi::group_of(1.0f, 1.0f + 1e-9f, 8);
  EXPECT_EQ(tiny.scale, 0u);
  EXPECT_EQ(nkv::kivi::value_of(nkv::kivi::code_of(1.0f, tiny, 8), tiny), 1.0f);
}

// One sequence's KIVI store kept as a cache keeps it: quantized keys and values in the layouts of
// core/kv_quant.h, fp16 residuals of keys (flushed R at a time) and values (a window of R).
struct KiviSequence {
  int bits, group, residual;
  int64_t channels;
  std::vector<float> keys, values;  // every token so far, [T][C]
  std::vector<uint32_t> key_words, value_words;
  std::vector<uint16_t> key_scales, key_mins, value_scales, value_mins;
  int64_t quantized_keys = 0, quantized_values = 0;

  int64_t tokens() const { return static_cast<int64_t>(keys.size()) / channels; }
  void quantize_keys_up_to(int64_t end) {
    const int64_t per_word = nkv::codes_per_word(bits);
    key_words.resize(static_cast<size_t>(end / per_word * channels));
    key_scales.resize(static_cast<size_t>(end / group * channels));
    key_mins.resize(key_scales.size());
    for (; quantized_keys < end; quantized_keys += group) {
      nkv::kivi::quantize_key_group(bits, group, channels, quantized_keys,
                                    [&](int64_t t, int64_t c) { return keys[static_cast<size_t>(t * channels + c)]; },
                                    key_words.data(), key_scales.data(), key_mins.data());
    }
  }
  void quantize_values_up_to(int64_t end) {
    const int64_t per_word = nkv::codes_per_word(bits);
    for (; quantized_values < end; ++quantized_values) {
      const int64_t t = quantized_values;
      value_words.resize(static_cast<size_t>((t + 1) * channels / per_word));
      value_scales.resize(static_cast<size_t>((t + 1) * channels / group));
      value_mins.resize(value_scales.size());
      nkv::kivi::quantize_value_token(bits, group, channels, [&](int64_t c) { return values[static_cast<size_t>(t * channels + c)]; },
                                      value_words.data() + t * channels / per_word, value_scales.data() + t * channels / group,
                                      value_mins.data() + t * channels / group);
    }
  }
  // A prefill: the tokens' split straight from the bookkeeping functions.
  void prefill(const std::vector<float>& k, const std::vector<float>& v) {
    keys.insert(keys.end(), k.begin(), k.end());
    values.insert(values.end(), v.begin(), v.end());
    quantize_keys_up_to(nkv::kivi::quantized_keys(tokens(), residual));
    quantize_values_up_to(nkv::kivi::quantized_values(tokens(), residual));
  }
  // A decode step of one token, by KIVI's flush rules.
  void step(const std::vector<float>& k, const std::vector<float>& v) {
    keys.insert(keys.end(), k.begin(), k.end());
    values.insert(values.end(), v.begin(), v.end());
    if (tokens() - quantized_keys == residual) quantize_keys_up_to(tokens());
    if (tokens() - quantized_values > residual) quantize_values_up_to(quantized_values + 1);
  }
};

// Prefill then single-token steps, over thousands of steps with random prompt lengths, ends with the same codes,
// scales and minimums as one prefill of all the tokens, and with the split the bookkeeping functions give.
TEST(Kivi, PrefillThenDecodeStepsEqualOneShotQuantization) {
  std::mt19937 rng(5);
  const int64_t channels = 2 * 64;
  int64_t steps = 0;
  for (int bits : {2, 4, 8}) {
    for (int group : {32, 64, 128}) {
      for (int residual : {group, 2 * group}) {
        for (int trial = 0; trial < 3; ++trial) {
          KiviSequence streamed{bits, group, residual, channels, {}, {}, {}, {}, {}, {}, {}, {}};
          KiviSequence one_shot = streamed;
          const int64_t prompt = static_cast<int64_t>(rng() % 700), total = prompt + 1 + static_cast<int64_t>(rng() % 400);
          const std::vector<float> k = random_halves(rng, static_cast<size_t>(total * channels), 2.0f);
          const std::vector<float> v = random_halves(rng, k.size(), 1.0f);
          auto rows = [&](const std::vector<float>& x, int64_t from, int64_t to) {
            return std::vector<float>(x.begin() + from * channels, x.begin() + to * channels);
          };
          streamed.prefill(rows(k, 0, prompt), rows(v, 0, prompt));
          for (int64_t t = prompt; t < total; ++t, ++steps) streamed.step(rows(k, t, t + 1), rows(v, t, t + 1));
          one_shot.prefill(k, v);
          const std::string where = "bits " + std::to_string(bits) + " G " + std::to_string(group) + " R " +
                                    std::to_string(residual) + " prompt " + std::to_string(prompt) + " total " + std::to_string(total);
          ASSERT_EQ(streamed.quantized_keys, nkv::kivi::quantized_keys(total, residual)) << where;
          ASSERT_EQ(streamed.quantized_values, nkv::kivi::quantized_values(total, residual)) << where;
          ASSERT_LT(total - streamed.quantized_keys, residual) << where;  // never a full residual left unflushed
          ASSERT_EQ(total - streamed.quantized_values, std::min<int64_t>(total, residual)) << where;
          ASSERT_EQ(streamed.key_words, one_shot.key_words) << where;
          ASSERT_EQ(streamed.key_scales, one_shot.key_scales) << where;
          ASSERT_EQ(streamed.key_mins, one_shot.key_mins) << where;
          ASSERT_EQ(streamed.value_words, one_shot.value_words) << where;
          ASSERT_EQ(streamed.value_scales, one_shot.value_scales) << where;
          ASSERT_EQ(streamed.value_mins, one_shot.value_mins) << where;
          // The layouts: key code (t, c) in word t / (32 / b) of channel c, value code (t, c) in word c / (32 / b) of token t.
          const int64_t per_word = nkv::codes_per_word(bits);
          for (int64_t probe = 0; probe < 64 && streamed.quantized_values > 0; ++probe) {
            const int64_t t = static_cast<int64_t>(rng()) % std::max<int64_t>(1, streamed.quantized_keys);
            const int64_t c = static_cast<int64_t>(rng()) % channels;
            if (streamed.quantized_keys > 0) {
              const size_t at = static_cast<size_t>(t / group * channels + c);
              const nkv::kivi::Group g{streamed.key_scales[at], streamed.key_mins[at]};
              ASSERT_EQ(nkv::unpack_code(streamed.key_words[static_cast<size_t>(t / per_word * channels + c)], static_cast<int>(t % per_word), bits),
                        nkv::kivi::code_of(k[static_cast<size_t>(t * channels + c)], g, bits));
            }
            const int64_t tv = static_cast<int64_t>(rng()) % streamed.quantized_values;
            const size_t vat = static_cast<size_t>(tv * channels / group + c / group);
            const nkv::kivi::Group gv{streamed.value_scales[vat], streamed.value_mins[vat]};
            ASSERT_EQ(nkv::unpack_code(streamed.value_words[static_cast<size_t>(tv * channels / per_word + c / per_word)],
                                       static_cast<int>(c % per_word), bits),
                      nkv::kivi::code_of(v[static_cast<size_t>(tv * channels + c)], gv, bits));
          }
        }
      }
    }
  }
  EXPECT_GT(steps, 5000);
}

TEST(Bfp, SharedExponentIsTheLargestMagnitudesFloorLog2) {
  EXPECT_EQ(nkv::bfp::exponent_of(1.0f), 0);
  EXPECT_EQ(nkv::bfp::exponent_of(1.99f), 0);
  EXPECT_EQ(nkv::bfp::exponent_of(2.0f), 1);
  EXPECT_EQ(nkv::bfp::exponent_of(0.75f), -1);
  EXPECT_EQ(nkv::bfp::exponent_of(65504.0f), 15);
  EXPECT_EQ(nkv::bfp::exponent_of(0.0f), nkv::bfp::kZeroBlock);
  EXPECT_EQ(nkv::bfp::exponent_of(1e-40f), -127);
  EXPECT_EQ(nkv::bfp::value_of(5, nkv::bfp::kZeroBlock, 8), 0.0f);
}

TEST(Bfp, MantissasRoundToNearestAndClipSymmetrically) {
  // BFP16 (m = 8), E = 0: steps of 2^-6.
  EXPECT_EQ(nkv::bfp::mantissa_of(1.0f, 0, 8), 64);
  EXPECT_EQ(nkv::bfp::mantissa_of(1.99f, 0, 8), 127);   // 127.36
  EXPECT_EQ(nkv::bfp::mantissa_of(-1.999f, 0, 8), -127);  // -127.9: clipped, never -128
  EXPECT_EQ(nkv::bfp::mantissa_of(3.0f / 128.0f, 0, 8), 2);  // 1.5 steps: to even
  // BFP12 (m = 4), E = 0: steps of 1/4, at most 7 of them.
  EXPECT_EQ(nkv::bfp::mantissa_of(1.0f, 0, 4), 4);
  EXPECT_EQ(nkv::bfp::mantissa_of(1.99f, 0, 4), 7);
  EXPECT_EQ(nkv::bfp::value_of(7, 0, 4), 1.75f);
  EXPECT_EQ(nkv::bfp::value_of(-64, 0, 8), -1.0f);
}

// Random blocks of 16 / 32 / 64 fp16 values: every value within half a step, unless clipped at the top,
// where it comes back as the largest mantissa.
TEST(Bfp, BlockErrorsStayWithinHalfAStepUnlessClipped) {
  std::mt19937 rng(11);
  for (int m : {4, 8}) {
    for (int n : {16, 32, 64}) {
      for (int trial = 0; trial < 500; ++trial) {
        std::vector<float> x = random_halves(rng, static_cast<size_t>(n), trial % 2 ? 0.01f : 3.0f);
        float largest = 0.0f;
        for (float v : x) largest = std::max(largest, std::fabs(v));
        const int e = nkv::bfp::exponent_of(largest);
        const float step = std::ldexp(1.0f, e + 2 - m), top = static_cast<float>(nkv::bfp::largest_mantissa(m));
        for (float v : x) {
          const int mantissa = nkv::bfp::mantissa_of(v, e, m);
          const float back = nkv::bfp::value_of(mantissa, e, m);
          if (std::fabs(v) / step > top + 0.5f) {
            ASSERT_EQ(std::fabs(back), top * step);
          } else {
            ASSERT_LE(std::fabs(back - v), 0.5f * step) << "m " << m << " n " << n << " value " << v;
          }
        }
      }
    }
  }
}

}  // namespace
