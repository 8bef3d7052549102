// KV-cache quantization formats: the arithmetic of one KIVI group and one block-floating-point block
// (core/kv_quant.h), which the CPU reference and the CUDA kernels share.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
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
