// KV-cache quantization formats: the arithmetic of one KIVI group and one block-floating-point block
// (core/kv_quant.h), which the CPU reference and the CUDA kernels share.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/float_bits.h"
#include "core/kv_quant.h"
#include "test_support.h"

namespace {

using namespace nkv_test;

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
  std::vector<uint32_t> key_groups, value_groups;
  int64_t quantized_keys = 0, quantized_values = 0;

  int64_t tokens() const { return static_cast<int64_t>(keys.size()) / channels; }
  void quantize_keys_up_to(int64_t end) {
    const int64_t per_word = nkv::codes_per_word(bits);
    key_words.resize(static_cast<size_t>(end / per_word * channels));
    key_groups.resize(static_cast<size_t>(end / group * channels));
    for (; quantized_keys < end; quantized_keys += group) {
      nkv::kivi::quantize_key_group(bits, group, channels, quantized_keys,
                                    [&](int64_t t, int64_t c) { return keys[static_cast<size_t>(t * channels + c)]; },
                                    key_words.data(), key_groups.data());
    }
  }
  void quantize_values_up_to(int64_t end) {
    const int64_t per_word = nkv::codes_per_word(bits);
    for (; quantized_values < end; ++quantized_values) {
      const int64_t t = quantized_values;
      value_words.resize(static_cast<size_t>((t + 1) * channels / per_word));
      value_groups.resize(static_cast<size_t>((t + 1) * channels / group));
      nkv::kivi::quantize_value_token(bits, group, channels, [&](int64_t c) { return values[static_cast<size_t>(t * channels + c)]; },
                                      value_words.data() + t * channels / per_word, value_groups.data() + t * channels / group);
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
          KiviSequence streamed{bits, group, residual, channels, {}, {}, {}, {}, {}, {}};
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
          ASSERT_EQ(streamed.key_groups, one_shot.key_groups) << where;
          ASSERT_EQ(streamed.value_words, one_shot.value_words) << where;
          ASSERT_EQ(streamed.value_groups, one_shot.value_groups) << where;
          // The layouts: key code (t, c) in word t / (32 / b) of channel c, value code (t, c) in word c / (32 / b) of token t.
          const int64_t per_word = nkv::codes_per_word(bits);
          for (int64_t probe = 0; probe < 64 && streamed.quantized_values > 0; ++probe) {
            const int64_t t = static_cast<int64_t>(rng()) % std::max<int64_t>(1, streamed.quantized_keys);
            const int64_t c = static_cast<int64_t>(rng()) % channels;
            if (streamed.quantized_keys > 0) {
              const size_t at = static_cast<size_t>(t / group * channels + c);
              const nkv::kivi::Group g = nkv::kivi::unpack_group(streamed.key_groups[at]);
              ASSERT_EQ(nkv::unpack_code(streamed.key_words[static_cast<size_t>(t / per_word * channels + c)], static_cast<int>(t % per_word), bits),
                        nkv::kivi::code_of(k[static_cast<size_t>(t * channels + c)], g, bits));
            }
            const int64_t tv = static_cast<int64_t>(rng()) % streamed.quantized_values;
            const size_t vat = static_cast<size_t>(tv * channels / group + c / group);
            const nkv::kivi::Group gv = nkv::kivi::unpack_group(streamed.value_groups[vat]);
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

// ---- the quantized KV cache (nkv_quantized_kv_cache_*) and decode over it ----------------------------

struct CacheDeleter {
  void operator()(nkv_quantized_kv_cache* c) const { nkv_quantized_kv_cache_destroy(c); }
};
using CachePtr = std::unique_ptr<nkv_quantized_kv_cache, CacheDeleter>;

struct PlanDeleter {
  void operator()(nkv_attention_plan* p) const { nkv_attention_plan_destroy(p); }
};
using PlanPtr = std::unique_ptr<nkv_attention_plan, PlanDeleter>;

struct CacheShape {
  int bits = 2, group = 32, residual = 64, layers = 2, heads = 2, head_dim = 64, slots = 3, max_tokens = 3000;
  int memory = NKV_KV_MEMORY_ALLOCATED;
  int format = NKV_KV_FORMAT_KIVI, value_format = NKV_KV_VALUES_LIKE_KEYS;  // BFP: group is the block, residual 0
  int page_size = 0, max_pages = 0;                                           // memory NKV_KV_MEMORY_PAGED
};

CachePtr make_cache(nkv_context* context, const CacheShape& s) {
  nkv_quantized_kv_cache_options o{sizeof(nkv_quantized_kv_cache_options), s.format, s.bits, s.group, s.residual,
                                   s.layers, s.heads, s.head_dim, s.slots, s.max_tokens, s.value_format, s.memory,
                                   s.page_size, s.max_pages};
  nkv_quantized_kv_cache* cache = nullptr;
  EXPECT_EQ(nkv_quantized_kv_cache_create(context, &o, &cache), NKV_STATUS_SUCCESS) << nkv_last_error();
  return CachePtr(cache);
}

// `count` elements of T at `address` in the cache's memory (maybe a device's), on the host: gathered on CUDA as one
// row of 32-bit words by an identity pack plan into a buffer of the test's own.
template <typename T>
std::vector<T> read_elements(nkv_context* context, const void* address, size_t count) {
  std::vector<T> out(count);
  const size_t bytes = count * sizeof(T);
  if (bytes == 0) return out;
  if (device_of(context) == NKV_DEVICE_HOST) {
    std::memcpy(out.data(), address, bytes);
    return out;
  }
  EXPECT_EQ(bytes % 4, 0u);
  int32_t one = 1;
  nkv_pack_plan* plan = nullptr;
  EXPECT_EQ(nkv_pack_plan_create(context, &one, 1, 0, &plan), NKV_STATUS_SUCCESS) << nkv_last_error();
  Memory copy(context, bytes);
  const int64_t words = static_cast<int64_t>(bytes / 4);
  const nkv_tensor in = view(const_cast<void*>(address), NKV_DTYPE_INT32, NKV_DEVICE_CUDA, {1, words});
  const nkv_tensor to = view(copy.data(), NKV_DTYPE_INT32, NKV_DEVICE_CUDA, {1, words});
  EXPECT_EQ(nkv_pack_gather(plan, &in, &to), NKV_STATUS_SUCCESS) << nkv_last_error();
  nkv_pack_plan_destroy(plan);
  return copy.download<T>(count);
}

nkv_tensor cache_view(nkv_quantized_kv_cache* cache, nkv_quantized_kv_view which, int32_t layer) {
  nkv_tensor v{};
  EXPECT_EQ(nkv_quantized_kv_cache_view(cache, which, layer, &v), NKV_STATUS_SUCCESS) << nkv_last_error();
  return v;
}

// Rows [0, rows) of share `share` (a slot's; a page's when paged) of a token-indexed view, as bytes in the order
// [row][head][row elements]: the layout one-shot quantization gives. The view is layout blocks, [shares, blocks, heads,
// rows per block, row elements...], or for KIVI's value groups (column_major) [shares, blocks, heads, columns, tokens
// per block, 2]. Only the blocks that hold the rows are read (with virtual memory the rest may not be mapped).
std::vector<uint8_t> share_rows(nkv_context* context, const nkv_tensor& v, int64_t share, int64_t rows, bool column_major = false) {
  if (rows <= 0 || v.shape[1] == 0) return {};
  const int64_t element = static_cast<int64_t>(nkv_dtype_size(v.dtype));
  const int64_t heads = v.shape[2], per_block = column_major ? v.shape[4] : v.shape[3];
  int64_t unit = element;  // bytes of one entry: a head's row, or one column of a token's row (column-major)
  for (int i = column_major ? 5 : 4; i < v.ndim; ++i) unit *= v.shape[i];
  const int64_t columns = column_major ? v.shape[3] : 1, width = unit * columns;
  const int64_t block_bytes = v.strides[1] * element, blocks = (rows + per_block - 1) / per_block;
  const char* first = static_cast<const char*>(v.data) + share * v.strides[0] * element;
  const std::vector<uint8_t> raw = read_elements<uint8_t>(context, first, static_cast<size_t>((blocks * block_bytes + 3) / 4 * 4));
  std::vector<uint8_t> out(static_cast<size_t>(rows * heads * width));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t j = 0; j < columns; ++j) {
        const int64_t from = r / per_block * block_bytes + ((h * columns + j) * per_block + r % per_block) * unit;
        std::memcpy(out.data() + (r * heads + h) * width + j * unit, raw.data() + from, static_cast<size_t>(unit));
      }
    }
  }
  return out;
}

template <typename T>
std::vector<T> as_elements(const std::vector<uint8_t>& bytes) {
  std::vector<T> out(bytes.size() / sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

// What a slot of one layer holds that its length defines: codes and groups of the quantized tokens, the
// residual rows of the rest (other entries are unspecified and not compared).
struct SlotContents {
  std::vector<uint32_t> key_codes, key_groups, value_codes, value_groups;
  std::vector<uint16_t> key_residual, value_residual;
  bool operator==(const SlotContents& o) const {
    return key_codes == o.key_codes && key_groups == o.key_groups && value_codes == o.value_codes &&
           value_groups == o.value_groups && key_residual == o.key_residual && value_residual == o.value_residual;
  }
};

SlotContents slot_contents(nkv_context* context, nkv_quantized_kv_cache* cache, const CacheShape& s, int32_t layer, int32_t slot) {
  int32_t length = 0;
  EXPECT_EQ(nkv_quantized_kv_cache_slot(cache, slot, &length), NKV_STATUS_SUCCESS) << nkv_last_error();
  const int64_t channels = static_cast<int64_t>(s.heads) * s.head_dim, per_word = nkv::codes_per_word(s.bits);
  const int64_t keys = nkv::kivi::quantized_keys(length, s.residual), values = nkv::kivi::quantized_values(length, s.residual);
  // Rows [from, to) of the slot's share of a residual view (only those: with virtual memory the rest may not be mapped).
  auto rows_of = [&](nkv_quantized_kv_view which, int64_t row_width, int64_t from, int64_t to, auto element) {
    const nkv_tensor v = cache_view(cache, which, layer);
    const char* first = static_cast<const char*>(v.data) + (slot * v.strides[0]) * static_cast<int64_t>(nkv_dtype_size(v.dtype)) +
                        from * row_width * static_cast<int64_t>(sizeof(element));
    return read_elements<decltype(element)>(context, first, static_cast<size_t>(std::max<int64_t>(0, to - from) * row_width));
  };
  // The coded arrays, in token-row order; the group views are fp16 pairs, read here as one 32-bit word each.
  auto coded = [&](nkv_quantized_kv_view which, int64_t rows) {
    return as_elements<uint32_t>(share_rows(context, cache_view(cache, which, layer), slot, rows, which == NKV_QUANTIZED_KV_VALUE_GROUPS));
  };
  SlotContents c;
  c.key_codes = coded(NKV_QUANTIZED_KV_KEY_CODES, keys / per_word);
  c.key_groups = coded(NKV_QUANTIZED_KV_KEY_GROUPS, keys / s.group);
  // Key group rows are stored by channel pair (kivi::store_key_group): back to a {scale, minimum} word per channel, the
  // order one-shot quantization gives.
  for (size_t r = 0; r < c.key_groups.size(); r += static_cast<size_t>(s.head_dim)) {
    const std::vector<uint32_t> row(c.key_groups.begin() + static_cast<std::ptrdiff_t>(r), c.key_groups.begin() + static_cast<std::ptrdiff_t>(r) + s.head_dim);
    for (int d = 0; d < s.head_dim; ++d) c.key_groups[r + static_cast<size_t>(d)] = nkv::kivi::pack_group(nkv::kivi::load_key_group(row.data(), d));
  }
  c.key_residual = rows_of(NKV_QUANTIZED_KV_KEY_RESIDUAL, channels, 0, length - keys, uint16_t{});
  // Value words are stored in kivi::value_word_slot's order and value groups in units of 8 tokens
  // (kivi::store_value_group): back to channel order and a {scale, minimum} word per token and group.
  const int64_t words = s.head_dim / per_word, columns = s.head_dim / s.group;
  const std::vector<uint32_t> stored_words = coded(NKV_QUANTIZED_KV_VALUE_CODES, values);
  c.value_codes.resize(stored_words.size());
  for (size_t r = 0; r < stored_words.size(); r += static_cast<size_t>(words)) {
    for (int64_t w = 0; w < words; ++w) c.value_codes[r + static_cast<size_t>(w)] = stored_words[r + static_cast<size_t>(nkv::kivi::value_word_slot(w, words, s.bits))];
  }
  const std::vector<uint32_t> units = coded(NKV_QUANTIZED_KV_VALUE_GROUPS, (values + 7) / 8);  // [unit][head][column][8 words]
  for (int64_t t = 0; t < values; ++t) {
    for (int64_t h = 0; h < s.heads; ++h) {
      for (int64_t j = 0; j < columns; ++j) {
        const uint32_t* unit = units.data() + ((t / 8 * s.heads + h) * columns + j) * 8;
        c.value_groups.push_back(nkv::kivi::pack_group(nkv::kivi::load_value_group(unit, t % 8)));
      }
    }
  }
  const auto ring = rows_of(NKV_QUANTIZED_KV_VALUE_RESIDUAL, channels, 0, s.residual, uint16_t{});
  for (int64_t t = values; t < length; ++t) {  // the window in token order
    c.value_residual.insert(c.value_residual.end(), ring.begin() + t % s.residual * channels, ring.begin() + (t % s.residual + 1) * channels);
  }
  return c;
}

// A model of the steps a test makes: every slot's K and V (fp16 bits, [token][head][d]) per layer.
struct Steps {
  nkv_context* context;
  nkv_quantized_kv_cache* cache;
  CacheShape shape;
  std::vector<std::vector<std::vector<uint16_t>>> k, v;  // [layer][slot]
  std::mt19937 rng{7};

  Steps(nkv_context* c, nkv_quantized_kv_cache* q, const CacheShape& s) : context(c), cache(q), shape(s) {
    k.assign(static_cast<size_t>(s.layers), std::vector<std::vector<uint16_t>>(static_cast<size_t>(s.slots)));
    v = k;
  }
  int64_t channels() const { return static_cast<int64_t>(shape.heads) * shape.head_dim; }
  // Appends counts[i] tokens to slots[i] with the given K/V source (random when `source` < 0, else a copy of
  // slot `source`'s tokens at the same positions), and writes every layer.
  void step(const std::vector<int32_t>& slots, const std::vector<int32_t>& counts, int32_t source = -1,
            float spread = 1.0f) {
    ASSERT_EQ(nkv_quantized_kv_cache_append(cache, slots.data(), counts.data(), static_cast<int32_t>(slots.size())),
              NKV_STATUS_SUCCESS) << nkv_last_error();
    int64_t tokens = 0;
    for (int32_t n : counts) tokens += n;
    for (int32_t layer = 0; layer < shape.layers; ++layer) {
      std::vector<uint16_t> ks, vs;
      for (size_t i = 0; i < slots.size(); ++i) {
        auto& kh = k[layer][slots[i]];
        auto& vh = v[layer][slots[i]];
        const size_t from = kh.size(), n = static_cast<size_t>(counts[i] * channels());
        for (size_t e = 0; e < n; ++e) {
          if (source >= 0) {
            kh.push_back(k[layer][source][from + e]);
            vh.push_back(v[layer][source][from + e]);
          } else {
            std::normal_distribution<float> normal(0.0f, spread);
            kh.push_back(float_to_half(normal(rng) + (e % 7 == 3 ? 4.0f : 0.0f)));  // an outlier channel
            vh.push_back(float_to_half(normal(rng)));
          }
        }
        ks.insert(ks.end(), kh.end() - static_cast<std::ptrdiff_t>(n), kh.end());
        vs.insert(vs.end(), vh.end() - static_cast<std::ptrdiff_t>(n), vh.end());
      }
      Memory km(context, std::max<size_t>(2, ks.size() * 2)), vm(context, std::max<size_t>(2, vs.size() * 2));
      if (!ks.empty()) {
        km.upload(ks);
        vm.upload(vs);
      }
      const nkv_tensor kt = view(km.data(), NKV_DTYPE_FLOAT16, device_of(context), {tokens, shape.heads, shape.head_dim});
      const nkv_tensor vt = view(vm.data(), NKV_DTYPE_FLOAT16, device_of(context), {tokens, shape.heads, shape.head_dim});
      ASSERT_EQ(nkv_quantized_kv_cache_write(cache, layer, &kt, &vt), NKV_STATUS_SUCCESS) << nkv_last_error();
      ASSERT_EQ(nkv_context_synchronize(context), NKV_STATUS_SUCCESS) << nkv_last_error();
    }
  }
};

// The one-shot KIVI store of a token history (the KiviSequence model above), as the cache lays a slot out.
SlotContents one_shot(const CacheShape& s, const std::vector<uint16_t>& k, const std::vector<uint16_t>& v) {
  const int64_t channels = static_cast<int64_t>(s.heads) * s.head_dim;
  KiviSequence seq{s.bits, s.group, s.residual, channels, {}, {}, {}, {}, {}, {}};
  std::vector<float> kf(k.size()), vf(v.size());
  for (size_t i = 0; i < k.size(); ++i) kf[i] = half_to_float(k[i]);
  for (size_t i = 0; i < v.size(); ++i) vf[i] = half_to_float(v[i]);
  seq.prefill(kf, vf);
  SlotContents c;
  c.key_codes = seq.key_words;
  c.key_groups = seq.key_groups;
  c.value_codes = seq.value_words;
  c.value_groups = seq.value_groups;
  c.key_residual.assign(k.begin() + seq.quantized_keys * channels, k.end());
  c.value_residual.assign(v.begin() + seq.quantized_values * channels, v.end());
  return c;
}

// Slot 0 gets a prompt and then thousands of steps of random lengths (mostly single tokens), slot 1 the same
// tokens in a few large appends, slot 2 the same tokens at once at the end: all three hold what one-shot
// quantization of the history gives, bit for bit, for every layer.
void check_streaming_equals_one_shot(nkv_context* context, const CacheShape& shape, int steps) {
  CachePtr cache = make_cache(context, shape);
  int32_t a = -1, b = -1, c = -1;
  NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(cache.get(), &a));
  NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(cache.get(), &b));
  NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(cache.get(), &c));
  Steps model(context, cache.get(), shape);
  std::mt19937 rng(static_cast<unsigned>(shape.bits * 1000 + shape.group + shape.residual));
  int32_t total = static_cast<int32_t>(rng() % 300);
  model.step({a}, {total});
  for (int i = 0; i < steps && total < shape.max_tokens - 2 * shape.residual; ++i) {
    const int32_t n = rng() % 10 == 0 ? static_cast<int32_t>(rng() % (shape.residual + 9)) : 1;
    model.step({a}, {n});
    total += n;
    if (rng() % 400 == 0) {  // slot 1 catches up in one append of random size
      int32_t length_b = 0;
      NKV_ASSERT_OK(nkv_quantized_kv_cache_slot(cache.get(), b, &length_b));
      model.step({b}, {total - length_b}, a);
    }
  }
  int32_t length_b = 0;
  NKV_ASSERT_OK(nkv_quantized_kv_cache_slot(cache.get(), b, &length_b));
  model.step({b, c}, {total - length_b, 0}, a);
  model.step({c}, {total}, a);
  for (int32_t layer = 0; layer < shape.layers; ++layer) {
    const SlotContents expected = one_shot(shape, model.k[layer][a], model.v[layer][a]);
    for (int32_t slot : {a, b, c}) {
      const SlotContents got = slot_contents(context, cache.get(), shape, layer, slot);
      EXPECT_TRUE(got == expected) << (got.key_codes == expected.key_codes) << (got.key_groups == expected.key_groups)
                                   << (got.value_codes == expected.value_codes) << (got.value_groups == expected.value_groups)
                                   << (got.key_residual == expected.key_residual) << (got.value_residual == expected.value_residual) << " "
          << "bits " << shape.bits << " G " << shape.group << " R " << shape.residual << " layer " << layer << " slot " << slot
          << " of " << total << " tokens";
    }
  }
}

TEST(QuantizedKvCache, StepsOfRandomLengthsGiveOneShotCodes) {
  ContextPtr context = make_context(NKV_BACKEND_CPU);
  for (int bits : {2, 4, 8}) {
    for (int group : {32, 64}) {
      CacheShape shape;
      shape.bits = bits;
      shape.group = group;
      shape.residual = 2 * group;
      check_streaming_equals_one_shot(context.get(), shape, bits == 2 ? 2500 : 400);
    }
  }
}

// The same in virtual memory: pages mapped as the slots grow hold the same codes.
TEST(QuantizedKvCache, VirtualMemoryStepsGiveOneShotCodes) {
  ContextPtr context = make_context(NKV_BACKEND_CPU);
  for (int bits : {2, 4}) {
    CacheShape shape;
    shape.bits = bits;
    shape.residual = 128;
    shape.memory = NKV_KV_MEMORY_VIRTUAL;
    check_streaming_equals_one_shot(context.get(), shape, 600);
  }
}

TEST(QuantizedKvCacheCuda, StepsOfRandomLengthsGiveOneShotCodes) {
  NKV_REQUIRE_CUDA();
  ContextPtr context = make_context(NKV_BACKEND_CUDA);
  for (int bits : {2, 4, 8}) {
    for (int group : {32, 128}) {
      CacheShape shape;
      shape.bits = bits;
      shape.group = group;
      shape.residual = group == 32 ? 64 : 128;
      shape.head_dim = 128;
      check_streaming_equals_one_shot(context.get(), shape, bits == 2 ? 2500 : 300);
    }
  }
}

TEST(QuantizedKvCache, RejectsBadOptionsAndSecondWrites) {
  ContextPtr context = make_context(NKV_BACKEND_CPU);
  nkv_quantized_kv_cache* cache = nullptr;
  nkv_quantized_kv_cache_options o{sizeof(nkv_quantized_kv_cache_options), NKV_KV_FORMAT_KIVI, 2, 32, 0, 1, 2, 64, 2, 100, 0, 0, 0, 0};
  auto expect = [&](nkv_quantized_kv_cache_options bad, const char* needle) {
    NKV_EXPECT_STATUS(nkv_quantized_kv_cache_create(context.get(), &bad, &cache), NKV_STATUS_INVALID_ARGUMENT, needle);
    EXPECT_EQ(cache, nullptr);
  };
  auto bad = o;
  bad.format = 7;
  expect(bad, "options.format");
  bad = o;
  bad.bits = 3;
  expect(bad, "options.bits");
  bad = o;
  bad.group_size = 128;
  expect(bad, "at most head_dim");
  bad = o;
  bad.residual = 48;
  expect(bad, "options.residual");
  bad = o;
  bad.head_dim = 96;
  expect(bad, "options.head_dim");
  NKV_ASSERT_OK(nkv_quantized_kv_cache_create(context.get(), &o, &cache));
  CachePtr owned(cache);
  nkv_quantized_kv_cache_info info{};
  info.struct_size = sizeof(info);
  NKV_ASSERT_OK(nkv_quantized_kv_cache_get_info(cache, &info));
  EXPECT_EQ(info.residual, 128);  // the default
  EXPECT_EQ(info.capacity, 128);
  int32_t slot = -1;
  NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(cache, &slot));
  const int32_t count = 3;
  NKV_ASSERT_OK(nkv_quantized_kv_cache_append(cache, &slot, &count, 1));
  std::vector<uint16_t> rows(3 * 2 * 64, float_to_half(0.5f));
  const nkv_tensor kv = view(rows.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {3, 2, 64});
  const nkv_tensor short_kv = view(rows.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {2, 2, 64});
  NKV_EXPECT_STATUS(nkv_quantized_kv_cache_write(cache, 0, &short_kv, &kv), NKV_STATUS_INVALID_ARGUMENT, "'k'");
  NKV_ASSERT_OK(nkv_quantized_kv_cache_write(cache, 0, &kv, &kv));
  NKV_EXPECT_STATUS(nkv_quantized_kv_cache_write(cache, 0, &kv, &kv), NKV_STATUS_INVALID_ARGUMENT, "already written");
  const int32_t too_many = 126;
  NKV_EXPECT_STATUS(nkv_quantized_kv_cache_append(cache, &slot, &too_many, 1), NKV_STATUS_INVALID_ARGUMENT, "max_tokens");
  int32_t length = 0;
  NKV_ASSERT_OK(nkv_quantized_kv_cache_slot(cache, slot, &length));
  EXPECT_EQ(length, 3);
  int32_t other = -1;
  NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(cache, &other));
  NKV_EXPECT_STATUS(nkv_quantized_kv_cache_add_slot(cache, &other), NKV_STATUS_OUT_OF_MEMORY, "max_slots");
}

// ---- decode over the cache ----

struct DecodeCase {
  int32_t heads_q = 8, q_len = 1, num_splits = 0, window_left = -1;
  bool causal = false;
  float softcap = 0.0f;
  bool any_kv_plan = false;  // options.kv_code_bits 0 instead of the cache's bits
  std::vector<int32_t> lengths;
};

// The cases the CUDA tests run: `any_kv_plan` alternates between the configurations (plans for any K/V and for the
// cache's bits alike).
DecodeCase decode_case(int32_t heads_q, int32_t q_len, bool causal, int32_t window, int32_t splits, std::vector<int32_t> lengths,
                       bool any_kv_plan) {
  DecodeCase c;
  c.heads_q = heads_q;
  c.q_len = q_len;
  c.causal = causal;
  c.window_left = window;
  c.num_splits = splits;
  c.any_kv_plan = any_kv_plan;
  c.lengths = std::move(lengths);
  return c;
}

// q [batch, q_len, heads_q, d] random; runs nkv_attention_decode_quantized for layer 1 and returns O and LSE.
struct DecodeResult {
  std::vector<uint16_t> o;
  std::vector<float> lse;
};

DecodeResult run_quantized_decode(nkv_context* context, nkv_quantized_kv_cache* cache, const CacheShape& shape,
                                  const DecodeCase& c, const std::vector<uint16_t>& q, int32_t layer = 1) {
  // Plans made for the cache's bits (pieces sized for the quantized kernel) and plans for any K/V alike.
  nkv_attention_options options{sizeof(nkv_attention_options), c.causal ? 1 : 0, 0.0f, c.softcap, c.window_left, c.num_splits, 0, 0,
                                c.any_kv_plan ? 0 : shape.bits};
  nkv_attention_plan* raw = nullptr;
  const int32_t batch = static_cast<int32_t>(c.lengths.size());
  EXPECT_EQ(nkv_attention_plan_decode(context, &options, c.heads_q, shape.heads, shape.head_dim, batch, c.q_len, c.lengths.data(), &raw),
            NKV_STATUS_SUCCESS) << nkv_last_error();
  PlanPtr plan(raw);
  const size_t out_elements = q.size();
  Memory qm(context, q.size() * 2), om(context, out_elements * 2), lm(context, static_cast<size_t>(batch) * c.heads_q * c.q_len * 4);
  qm.upload(q);
  om.fill(0xff, out_elements * 2);  // NaN poison: every element must be written
  lm.fill(0xff, static_cast<size_t>(batch) * c.heads_q * c.q_len * 4);
  const nkv_device_type device = device_of(context);
  const nkv_tensor qt = view(qm.data(), NKV_DTYPE_FLOAT16, device, {batch, c.q_len, c.heads_q, shape.head_dim});
  const nkv_tensor ot = view(om.data(), NKV_DTYPE_FLOAT16, device, {batch, c.q_len, c.heads_q, shape.head_dim});
  const nkv_tensor lt = view(lm.data(), NKV_DTYPE_FLOAT32, device, {batch, c.heads_q, c.q_len});
  EXPECT_EQ(nkv_attention_decode_quantized(plan.get(), &qt, cache, layer, &ot, &lt), NKV_STATUS_SUCCESS) << nkv_last_error();
  return {om.download<uint16_t>(out_elements), lm.download<float>(static_cast<size_t>(batch) * c.heads_q * c.q_len)};
}

// nkv_attention_decode (CPU backend) of one sequence over host fp16 K/V [c.lengths[0], heads, head_dim].
DecodeResult run_plain_decode(nkv_context* context, const CacheShape& shape, const DecodeCase& c, const std::vector<uint16_t>& q,
                              const std::vector<uint16_t>& k, const std::vector<uint16_t>& v) {
  nkv_attention_options options{sizeof(nkv_attention_options), c.causal ? 1 : 0, 0.0f, 0.0f, c.window_left, c.num_splits, 0, 0, 0};
  nkv_attention_plan* raw = nullptr;
  const int32_t length = c.lengths[0];
  EXPECT_EQ(nkv_attention_plan_decode(context, &options, c.heads_q, shape.heads, shape.head_dim, 1, c.q_len, &length, &raw),
            NKV_STATUS_SUCCESS) << nkv_last_error();
  PlanPtr plan(raw);
  DecodeResult r{std::vector<uint16_t>(q.size()), std::vector<float>(static_cast<size_t>(c.heads_q * c.q_len))};
  auto host = [](const std::vector<uint16_t>& x, std::vector<int64_t> shape_of) {
    return view(const_cast<uint16_t*>(x.data()), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, std::move(shape_of));
  };
  const nkv_tensor qt = host(q, {1, c.q_len, c.heads_q, shape.head_dim});
  const nkv_tensor k4 = host(k, {1, length, shape.heads, shape.head_dim});
  const nkv_tensor v4 = host(v, {1, length, shape.heads, shape.head_dim});
  const nkv_tensor ot = host(r.o, {1, c.q_len, c.heads_q, shape.head_dim});
  const nkv_tensor lt = view(r.lse.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {1, c.heads_q, c.q_len});
  EXPECT_EQ(nkv_attention_decode(plan.get(), &qt, &k4, &v4, &ot, &lt), NKV_STATUS_SUCCESS) << nkv_last_error();
  return r;
}

// Fills slots 0 .. n - 1 with c.lengths tokens (a prompt, then single steps) from `model`'s generator, K and V of
// standard deviation `spread`.
void fill_slots(Steps& model, const DecodeCase& c, float spread = 1.0f) {
  std::vector<int32_t> slots;
  for (size_t i = 0; i < c.lengths.size(); ++i) {
    int32_t s = -1;
    NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(model.cache, &s));
    slots.push_back(s);
  }
  std::vector<int32_t> prompt(c.lengths.size());
  for (size_t i = 0; i < c.lengths.size(); ++i) prompt[i] = std::max(0, c.lengths[i] - 3);
  model.step(slots, prompt, -1, spread);
  for (int i = 0; i < 3; ++i) {
    std::vector<int32_t> one(c.lengths.size());
    for (size_t j = 0; j < c.lengths.size(); ++j) one[j] = c.lengths[j] >= 3 ? 1 : (i < c.lengths[j] ? 1 : 0);
    model.step(slots, one, -1, spread);
  }
}

double relative_error(const std::vector<uint16_t>& x, const std::vector<uint16_t>& reference) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double a = half_to_float(x[i]), b = half_to_float(reference[i]);
    diff += (a - b) * (a - b);
    norm += b * b;
  }
  return std::sqrt(diff / std::max(norm, 1e-30));
}

// A CUDA decode against the CPU reference's: every output written, O within 1e-3 (relative, over the whole output),
// LSE within 2e-3 (relative above 1), rows that see no key -inf on both.
void expect_matches_reference(const DecodeResult& on_gpu, const DecodeResult& reference, const std::string& where) {
  for (uint16_t x : on_gpu.o) ASSERT_FALSE(std::isnan(half_to_float(x))) << where << ": an output element was not written";
  EXPECT_LE(relative_error(on_gpu.o, reference.o), 1e-3) << where;
  for (size_t i = 0; i < reference.lse.size(); ++i) {
    if (std::isinf(reference.lse[i])) {
      EXPECT_EQ(on_gpu.lse[i], reference.lse[i]) << where << " lse " << i;
    } else {
      EXPECT_NEAR(on_gpu.lse[i], reference.lse[i], 2e-3 * std::max(1.0f, std::fabs(reference.lse[i]))) << where << " lse " << i;
    }
  }
}

// K and V that KIVI stores exactly (each group is mn + code x 1/8 and holds codes 0 and 2^b - 1): decode over
// the quantized cache then equals nkv_attention_decode over the same K/V, bit for bit (both references
// compute in float64 from the same values).
TEST(QuantizedKvCache, DecodeOverExactlyQuantizableKeysEqualsPlainDecode) {
  ContextPtr context = make_context(NKV_BACKEND_CPU);
  for (int bits : {2, 4}) {
    CacheShape shape;
    shape.bits = bits;
    shape.layers = 2;
    shape.max_tokens = 600;
    CachePtr cache = make_cache(context.get(), shape);
    const int64_t channels = static_cast<int64_t>(shape.heads) * shape.head_dim;
    const int32_t length = 517, top = (1 << bits) - 1;
    std::mt19937 rng(3);
    std::vector<uint16_t> k(static_cast<size_t>(length * channels)), v(k.size());
    for (int64_t t = 0; t < length; ++t) {
      for (int64_t c = 0; c < channels; ++c) {
        const int key_code = t % shape.group == 0 ? 0 : t % shape.group == 1 ? top : static_cast<int>(rng() % (top + 1));
        const int value_code = c % shape.group == 0 ? 0 : c % shape.group == 1 ? top : static_cast<int>(rng() % (top + 1));
        const float key_min = static_cast<float>(static_cast<int>((c * 7 + t / shape.group * 3) % 11) - 5) * 0.25f;
        const float value_min = static_cast<float>(static_cast<int>((t * 5 + c / shape.group) % 9) - 4) * 0.25f;
        k[static_cast<size_t>(t * channels + c)] = float_to_half(key_min + static_cast<float>(key_code) * 0.125f);
        v[static_cast<size_t>(t * channels + c)] = float_to_half(value_min + static_cast<float>(value_code) * 0.125f);
      }
    }
    int32_t slot = -1;
    NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(cache.get(), &slot));
    NKV_ASSERT_OK(nkv_quantized_kv_cache_append(cache.get(), &slot, &length, 1));
    const nkv_tensor kt = view(k.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {length, shape.heads, shape.head_dim});
    const nkv_tensor vt = view(v.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {length, shape.heads, shape.head_dim});
    for (int32_t layer = 0; layer < shape.layers; ++layer) NKV_ASSERT_OK(nkv_quantized_kv_cache_write(cache.get(), layer, &kt, &vt));
    DecodeCase c;
    c.q_len = 2;
    c.causal = true;
    c.lengths = {length};
    std::vector<uint16_t> q(static_cast<size_t>(c.q_len * c.heads_q * shape.head_dim));
    for (auto& x : q) x = float_to_half(std::normal_distribution<float>(0.0f, 0.3f)(rng));
    const DecodeResult quantized = run_quantized_decode(context.get(), cache.get(), shape, c, q);
    const DecodeResult plain = run_plain_decode(context.get(), shape, c, q, k, v);
    EXPECT_EQ(quantized.o, plain.o) << "bits " << bits;
    EXPECT_EQ(quantized.lse, plain.lse) << "bits " << bits;
  }
}

TEST(QuantizedKvCache, DecodeRejectsPlansThatDoNotMatchTheCache) {
  ContextPtr context = make_context(NKV_BACKEND_CPU);
  CacheShape shape;
  CachePtr cache = make_cache(context.get(), shape);
  Steps model(context.get(), cache.get(), shape);
  DecodeCase c;
  c.lengths = {40, 7};
  fill_slots(model, c);
  std::vector<int32_t> wrong = {40, 8};
  nkv_attention_plan* raw = nullptr;
  NKV_ASSERT_OK(nkv_attention_plan_decode(context.get(), nullptr, 8, shape.heads, shape.head_dim, 2, 1, wrong.data(), &raw));
  PlanPtr plan(raw);
  std::vector<uint16_t> q(2 * 8 * 64), o(q.size());
  const nkv_tensor qt = view(q.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {2, 1, 8, 64});
  const nkv_tensor ot = view(o.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {2, 1, 8, 64});
  NKV_EXPECT_STATUS(nkv_attention_decode_quantized(plan.get(), &qt, cache.get(), 0, &ot, nullptr), NKV_STATUS_INVALID_ARGUMENT,
                    "seqlens_k[1]");
  NKV_EXPECT_STATUS(nkv_attention_decode_quantized(plan.get(), &qt, cache.get(), 2, &ot, nullptr), NKV_STATUS_INVALID_ARGUMENT,
                    "'layer'");
  NKV_EXPECT_STATUS(nkv_attention_decode_quantized(plan.get(), &qt, nullptr, 0, &ot, nullptr), NKV_STATUS_INVALID_ARGUMENT, "'cache'");
  nkv_attention_plan* other = nullptr;
  NKV_ASSERT_OK(nkv_attention_plan_decode(context.get(), nullptr, 8, 4, shape.head_dim, 2, 1, c.lengths.data(), &other));
  PlanPtr other_plan(other);
  NKV_EXPECT_STATUS(nkv_attention_decode_quantized(other_plan.get(), &qt, cache.get(), 0, &ot, nullptr), NKV_STATUS_INVALID_ARGUMENT,
                    "KV heads");
  // A plan made for other code bits, and a plan made for quantized caches over plain K/V.
  nkv_attention_options four_bits{sizeof(nkv_attention_options), 0, 0.0f, 0.0f, -1, 0, 0, 0, 4};
  nkv_attention_plan* four = nullptr;
  NKV_ASSERT_OK(nkv_attention_plan_decode(context.get(), &four_bits, 8, shape.heads, shape.head_dim, 2, 1, c.lengths.data(), &four));
  PlanPtr four_plan(four);
  NKV_EXPECT_STATUS(nkv_attention_decode_quantized(four_plan.get(), &qt, cache.get(), 0, &ot, nullptr), NKV_STATUS_INVALID_ARGUMENT,
                    "4-bit codes");
  std::vector<uint16_t> kv(2 * 40 * shape.heads * 64);
  const nkv_tensor k4 = view(kv.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {2, 40, shape.heads, 64});
  NKV_EXPECT_STATUS(nkv_attention_decode(four_plan.get(), &qt, &k4, &k4, &ot, nullptr), NKV_STATUS_INVALID_ARGUMENT,
                    "nkv_attention_decode_quantized");
  nkv_attention_options three_bits = four_bits;
  three_bits.kv_code_bits = 3;
  NKV_EXPECT_STATUS(nkv_attention_plan_decode(context.get(), &three_bits, 8, shape.heads, shape.head_dim, 2, 1, c.lengths.data(), &four),
                    NKV_STATUS_INVALID_ARGUMENT, "kv_code_bits");
}

// The CUDA kernel against the CPU reference on the same codes: fresh random K/V (with outlier channels), lengths
// that are not multiples of the tiles (all-residual, partly quantized, long), GQA 1..8, q_len 1..16,
// causal and windowed, fixed and automatic splits.
TEST(QuantizedKvCacheCuda, DecodeMatchesTheCpuReference) {
  NKV_REQUIRE_CUDA();
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  struct Config {
    int bits, group, residual, head_dim, heads_kv;
    DecodeCase c;
    float spread = 1.0f;  // of K and V: small ones give groups of small scale
    int32_t max_tokens = 4100;
    bool permuted = false;  // a K-sort order on layer 1: its stored codes must match the CPU's too
  };
  std::vector<Config> configs;
  auto add = [&](int bits, int group, int residual, int head_dim, int heads_kv, int heads_q, int q_len, bool causal, int window,
                 int splits, std::vector<int32_t> lengths) {
    configs.push_back({bits, group, residual, head_dim, heads_kv,
                       decode_case(heads_q, q_len, causal, window, splits, std::move(lengths), configs.size() % 2 == 1)});
  };
  add(2, 32, 128, 128, 8, 32, 1, false, -1, 0, {4000, 37, 300, 129, 1000});
  add(4, 32, 128, 128, 8, 32, 1, false, -1, 3, {3001, 250, 5, 800});
  add(8, 32, 64, 128, 2, 16, 1, false, -1, 0, {1500, 700});
  add(2, 64, 128, 64, 4, 4, 3, true, -1, 0, {2049, 64, 17});
  add(4, 128, 128, 128, 1, 8, 16, true, -1, 2, {1300, 900});
  add(2, 32, 32, 64, 2, 12, 2, true, 100, 0, {2500, 300});
  add(4, 64, 64, 64, 3, 3, 1, false, 500, 4, {1800, 1, 0, 65});
  add(4, 32, 128, 128, 8, 32, 1, false, -1, 48, {4000, 3100});  // pieces of 64 to 128 keys
  configs.back().permuted = true;
  add(2, 32, 128, 128, 8, 32, 1, false, -1, 60, {4000, 2100});
  // Groups of small scale (values N(0, 0.02)): the kernel's float16 products q x s and P x s get small.
  add(8, 32, 128, 128, 8, 32, 1, false, -1, 0, {3000, 1000});
  configs.back().spread = 0.02f;
  add(2, 32, 96, 64, 2, 8, 1, false, -1, 0, {4100, 700});  // R not a multiple of 64; the capacity's last chunk
  configs.back().spread = 0.02f;
  // Soft-capped scores; 8-bit codes at d64 in blocks of two row tiles (q_len 3 x 8); 2 and 4 bits in groups of 128
  // at d128 with a window; a slot filled to its capacity (T % R = 0, pieces of 64 mod 128 keys, so a chunk passes the
  // capacity and is zero-filled).
  add(4, 32, 128, 128, 8, 32, 1, false, -1, 0, {3000, 900});
  configs.back().c.softcap = 30.0f;
  add(8, 64, 128, 64, 2, 16, 3, true, -1, 0, {2000, 333});
  add(2, 128, 128, 128, 4, 16, 1, false, 300, 0, {3500, 1200});
  // 4 bits in groups of 128 with a window: chunks that start 64 keys into a 128-token layout block, so a block boundary
  // falls between the stage's value copies (three of them after the first at 4 bits).
  add(4, 128, 128, 128, 2, 8, 2, false, 700, 0, {2600, 900});
  add(4, 32, 128, 128, 8, 32, 1, false, -1, 3, {4096, 4095});
  configs.back().max_tokens = 4096;
  for (const Config& config : configs) {
    CacheShape shape;
    shape.bits = config.bits;
    shape.group = config.group;
    shape.residual = config.residual;
    shape.head_dim = config.head_dim;
    shape.heads = config.heads_kv;
    shape.slots = static_cast<int>(config.c.lengths.size());
    shape.max_tokens = config.max_tokens;
    CachePtr gpu_cache = make_cache(gpu.get(), shape);
    CachePtr cpu_cache = make_cache(cpu.get(), shape);
    if (config.permuted) {
      std::vector<int32_t> order(static_cast<size_t>(shape.heads * shape.head_dim));
      for (int h = 0; h < shape.heads; ++h) {
        for (int j = 0; j < shape.head_dim; ++j) order[static_cast<size_t>(h * shape.head_dim + j)] = (j * 5 + h) % shape.head_dim;
      }
      NKV_ASSERT_OK(nkv_quantized_kv_cache_set_key_permutation(gpu_cache.get(), 1, order.data()));
      NKV_ASSERT_OK(nkv_quantized_kv_cache_set_key_permutation(cpu_cache.get(), 1, order.data()));
    }
    Steps gpu_model(gpu.get(), gpu_cache.get(), shape);
    Steps cpu_model(cpu.get(), cpu_cache.get(), shape);  // the same generator seed: the same K/V
    fill_slots(gpu_model, config.c, config.spread);
    fill_slots(cpu_model, config.c, config.spread);
    if (config.permuted) {
      for (int32_t slot = 0; slot < shape.slots; ++slot) {
        EXPECT_TRUE(slot_contents(gpu.get(), gpu_cache.get(), shape, 1, slot) == slot_contents(cpu.get(), cpu_cache.get(), shape, 1, slot))
            << "K-sort: slot " << slot << " stores other codes or residual rows on CUDA than on the CPU";
      }
    }
    std::mt19937 rng(static_cast<unsigned>(config.bits + 10 * config.group));
    const size_t q_elements = config.c.lengths.size() * static_cast<size_t>(config.c.q_len * config.c.heads_q * shape.head_dim);
    std::vector<uint16_t> q(q_elements);
    for (auto& x : q) x = float_to_half(std::normal_distribution<float>(0.0f, 0.5f)(rng));
    const DecodeResult on_gpu = run_quantized_decode(gpu.get(), gpu_cache.get(), shape, config.c, q);
    const DecodeResult reference = run_quantized_decode(cpu.get(), cpu_cache.get(), shape, config.c, q);
    const std::string where = "bits " + std::to_string(config.bits) + " G " + std::to_string(config.group) + " R " +
                              std::to_string(config.residual) + " d " + std::to_string(config.head_dim) + " heads " +
                              std::to_string(config.c.heads_q) + "/" + std::to_string(config.heads_kv) + " q_len " +
                              std::to_string(config.c.q_len);
    expect_matches_reference(on_gpu, reference, where);
  }
}

}  // namespace

// ---- block floating point and K-sort (CPU backend) ------------------------------------------------------

namespace {

// Keys whose channel c has RMS about scale(c): the calibration must order channels by it.
TEST(KSort, CalibrationOrdersChannelsByRmsAndKeepsRotaryPairs) {
  const int tokens = 64, heads = 2, d = 16;
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> keys(static_cast<size_t>(tokens * heads * d));
  auto scale = [](int h, int c) { return 1.0f + static_cast<float>((c * 7 + h * 3) % d); };  // distinct per channel
  for (int t = 0; t < tokens; ++t) {
    for (int h = 0; h < heads; ++h) {
      for (int c = 0; c < d; ++c) keys[static_cast<size_t>((t * heads + h) * d + c)] = scale(h, c) * (normal(rng) > 0 ? 1.0f : -1.0f);
    }
  }
  const nkv_tensor sample = view(keys.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {tokens, heads, d});
  std::vector<int32_t> order(static_cast<size_t>(heads * d));
  NKV_ASSERT_OK(nkv_ksort_calibrate(&sample, NKV_ROTARY_NONE, order.data()));
  for (int h = 0; h < heads; ++h) {
    for (int j = 1; j < d; ++j) EXPECT_GT(scale(h, order[h * d + j - 1]), scale(h, order[h * d + j])) << "head " << h << " position " << j;
  }
  for (int pairs : {NKV_ROTARY_HALVES, NKV_ROTARY_ADJACENT}) {
    NKV_ASSERT_OK(nkv_ksort_calibrate(&sample, pairs, order.data()));
    for (int h = 0; h < heads; ++h) {
      std::vector<int> seen(d, 0);
      for (int j = 0; j < d; ++j) ++seen[order[h * d + j]];
      EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), d) << "a permutation";
      for (int k = 0; k < d / 2; ++k) {
        const int a = pairs == NKV_ROTARY_HALVES ? order[h * d + k] : order[h * d + 2 * k];
        const int b = pairs == NKV_ROTARY_HALVES ? order[h * d + k + d / 2] : order[h * d + 2 * k + 1];
        if (pairs == NKV_ROTARY_HALVES) EXPECT_EQ(b, a + d / 2); else EXPECT_EQ(b, a + 1);
        if (k > 0) {  // pairs by their RMS, largest first
          const int p = pairs == NKV_ROTARY_HALVES ? order[h * d + k - 1] : order[h * d + 2 * k - 2];
          const int q = pairs == NKV_ROTARY_HALVES ? p + d / 2 : p + 1;
          EXPECT_GE(scale(h, p) * scale(h, p) + scale(h, q) * scale(h, q), scale(h, a) * scale(h, a) + scale(h, b) * scale(h, b));
        }
      }
    }
  }
  NKV_EXPECT_STATUS(nkv_ksort_calibrate(&sample, 3, order.data()), NKV_STATUS_INVALID_ARGUMENT, "rotary_pairs");
  NKV_EXPECT_STATUS(nkv_ksort_calibrate(nullptr, 0, order.data()), NKV_STATUS_INVALID_ARGUMENT, "'keys'");
}

// Without quantization, logits over permuted queries and keys equal the originals to float32 rounding (the same
// products, summed in another order).
TEST(KSort, PermutedLogitsEqualTheOriginals) {
  const int tokens = 200, d = 128;
  std::mt19937 rng(4);
  std::vector<float> keys = random_halves(rng, static_cast<size_t>(tokens * d), 1.0f), query = random_halves(rng, d, 1.0f);
  for (int t = 0; t < tokens; ++t) keys[static_cast<size_t>(t * d + 5)] *= 30.0f;  // an outlier channel
  const nkv_tensor sample = view(keys.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {tokens, 1, d});
  std::vector<int32_t> order(d);
  NKV_ASSERT_OK(nkv_ksort_calibrate(&sample, NKV_ROTARY_HALVES, order.data()));
  EXPECT_TRUE(order[0] == 5 || order[d / 2] == 5) << "the outlier channel's pair comes first";
  for (int t = 0; t < tokens; ++t) {
    float plain = 0.0f, permuted = 0.0f, magnitude = 0.0f;
    for (int j = 0; j < d; ++j) {
      plain += query[j] * keys[static_cast<size_t>(t * d + j)];
      permuted += query[order[j]] * keys[static_cast<size_t>(t * d + order[j])];
      magnitude += std::fabs(query[j] * keys[static_cast<size_t>(t * d + j)]);
    }
    EXPECT_NEAR(permuted, plain, 1e-6f * 2 * d * magnitude / d + 1e-6f) << "token " << t;
  }
}

CachePtr make_bfp_cache(nkv_context* context, int mantissa_bits, int block, int value_format, int max_tokens = 300) {
  nkv_quantized_kv_cache_options o{sizeof(o), NKV_KV_FORMAT_BFP, mantissa_bits, block, 0, 2, 2, 64, 2, max_tokens, value_format, 0, 0, 0};
  nkv_quantized_kv_cache* cache = nullptr;
  EXPECT_EQ(nkv_quantized_kv_cache_create(context, &o, &cache), NKV_STATUS_SUCCESS) << nkv_last_error();
  return CachePtr(cache);
}

// A BFP cache with a K-sort order stores each token's permuted keys and its values as core/kv_quant.h's blocks,
// bit for bit; with fp16 values, the values as written.
TEST(QuantizedKvCache, BfpStoresEveryTokenInBlocks) {
  ContextPtr context = make_context(NKV_BACKEND_CPU);
  const int heads = 2, d = 64, channels = heads * d, tokens = 70;
  for (int bits : {4, 8}) {
    for (int block : {16, 32, 64}) {
      for (int value_format : {NKV_KV_VALUES_LIKE_KEYS, NKV_KV_VALUES_FP16}) {
        CachePtr cache = make_bfp_cache(context.get(), bits, block, value_format);
        std::vector<int32_t> order(static_cast<size_t>(channels));
        for (int h = 0; h < heads; ++h) {
          for (int j = 0; j < d; ++j) order[static_cast<size_t>(h * d + j)] = (j * 5 + h) % d;  // a permutation (5 is odd)
        }
        NKV_ASSERT_OK(nkv_quantized_kv_cache_set_key_permutation(cache.get(), 1, order.data()));
        int32_t slot = -1;
        NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(cache.get(), &slot));
        std::mt19937 rng(static_cast<unsigned>(bits + block));
        std::vector<float> k = random_halves(rng, static_cast<size_t>(tokens * channels), 2.0f), v = random_halves(rng, k.size(), 1.0f);
        std::vector<uint16_t> kh(k.size()), vh(v.size());
        for (size_t i = 0; i < k.size(); ++i) kh[i] = float_to_half(k[i]), vh[i] = float_to_half(v[i]);
        for (int first = 0; first < tokens;) {  // steps of 1 .. 20 tokens
          const int n = std::min(tokens - first, 1 + first % 20);
          NKV_ASSERT_OK(nkv_quantized_kv_cache_append(cache.get(), &slot, &n, 1));
          for (int layer = 0; layer < 2; ++layer) {
            const nkv_tensor kt = view(kh.data() + first * channels, NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {n, heads, d});
            const nkv_tensor vt = view(vh.data() + first * channels, NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {n, heads, d});
            NKV_ASSERT_OK(nkv_quantized_kv_cache_write(cache.get(), layer, &kt, &vt));
          }
          first += n;
        }
        const int per_word = static_cast<int>(nkv::codes_per_word(bits));
        std::vector<uint32_t> words(static_cast<size_t>(channels / per_word));
        std::vector<int8_t> exponents(static_cast<size_t>(channels / block));
        const nkv_tensor key_exponents_view = cache_view(cache.get(), NKV_QUANTIZED_KV_KEY_GROUPS, 1);
        EXPECT_EQ(key_exponents_view.dtype, NKV_DTYPE_INT8);
        // Every token's rows, in token order ([token][head][row]).
        const auto key_codes = as_elements<uint32_t>(share_rows(context.get(), cache_view(cache.get(), NKV_QUANTIZED_KV_KEY_CODES, 1), slot, tokens));
        const auto key_exponents = as_elements<int8_t>(share_rows(context.get(), key_exponents_view, slot, tokens));
        const auto values = as_elements<uint16_t>(share_rows(context.get(), cache_view(cache.get(), NKV_QUANTIZED_KV_VALUE_RESIDUAL, 1), slot, tokens));
        const auto value_codes = as_elements<uint32_t>(share_rows(context.get(), cache_view(cache.get(), NKV_QUANTIZED_KV_VALUE_CODES, 1), slot, tokens));
        for (int t = 0; t < tokens; ++t) {
          nkv::bfp::quantize_token(bits, block, channels, [&](int64_t c) {
            return k[static_cast<size_t>(t * channels + c / d * d + order[static_cast<size_t>(c)])];
          }, words.data(), exponents.data());
          const uint32_t* stored = key_codes.data() + t * (channels / per_word);
          const int8_t* stored_exponents = key_exponents.data() + t * (channels / block);
          ASSERT_TRUE(std::equal(words.begin(), words.end(), stored)) << "bits " << bits << " block " << block << " token " << t;
          ASSERT_TRUE(std::equal(exponents.begin(), exponents.end(), stored_exponents)) << "token " << t;
          if (value_format == NKV_KV_VALUES_FP16) {
            ASSERT_TRUE(std::equal(vh.begin() + t * channels, vh.begin() + (t + 1) * channels, values.data() + t * channels));
          } else {
            nkv::bfp::quantize_token(bits, block, channels, [&](int64_t c) { return v[static_cast<size_t>(t * channels + c)]; },
                                     words.data(), exponents.data());
            ASSERT_TRUE(std::equal(words.begin(), words.end(), value_codes.data() + t * (channels / per_word)));
          }
        }
      }
    }
  }
}

// Decode over a BFP cache with a K-sort order equals nkv_attention_decode over the dequantized K/V in the written
// channel order (BFP values are exact in fp16), bit for bit.
TEST(QuantizedKvCache, BfpDecodeEqualsPlainDecodeOverTheDequantizedKeys) {
  ContextPtr context = make_context(NKV_BACKEND_CPU);
  const int heads = 2, d = 64, channels = heads * d, length = 250, bits = 4, block = 32;
  CachePtr cache = make_bfp_cache(context.get(), bits, block, NKV_KV_VALUES_LIKE_KEYS);
  std::mt19937 rng(9);
  std::vector<float> k = random_halves(rng, static_cast<size_t>(length * channels), 1.0f), v = random_halves(rng, k.size(), 1.0f);
  for (int t = 0; t < length; ++t) {  // an outlier channel in head 0 (kept an fp16 number: the cache stores fp16 input)
    float& x = k[static_cast<size_t>(t * channels + 3)];
    x = half_to_float(float_to_half(x + 12.0f));
  }
  const nkv_tensor sample = view(k.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {length, heads, d});
  std::vector<int32_t> order(static_cast<size_t>(channels));
  NKV_ASSERT_OK(nkv_ksort_calibrate(&sample, NKV_ROTARY_HALVES, order.data()));
  NKV_ASSERT_OK(nkv_quantized_kv_cache_set_key_permutation(cache.get(), 0, order.data()));
  int32_t slot = -1;
  NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(cache.get(), &slot));
  NKV_ASSERT_OK(nkv_quantized_kv_cache_append(cache.get(), &slot, &length, 1));
  std::vector<uint16_t> kh(k.size()), vh(v.size());
  for (size_t i = 0; i < k.size(); ++i) kh[i] = float_to_half(k[i]), vh[i] = float_to_half(v[i]);
  const nkv_tensor kt = view(kh.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {length, heads, d});
  const nkv_tensor vt = view(vh.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {length, heads, d});
  NKV_ASSERT_OK(nkv_quantized_kv_cache_write(cache.get(), 0, &kt, &vt));
  NKV_EXPECT_STATUS(nkv_quantized_kv_cache_set_key_permutation(cache.get(), 1, order.data()), NKV_STATUS_INVALID_ARGUMENT, "holds tokens");
  // The dequantized keys, back in the written order, and values.
  std::vector<uint16_t> kd(k.size()), vd(v.size());
  const int per_word = static_cast<int>(nkv::codes_per_word(bits));
  std::vector<uint32_t> words(static_cast<size_t>(channels / per_word));
  std::vector<int8_t> exponents(static_cast<size_t>(channels / block));
  auto dequantize = [&](int t, auto value_at, std::vector<uint16_t>& out, bool permuted) {
    nkv::bfp::quantize_token(bits, block, channels, value_at, words.data(), exponents.data());
    for (int c = 0; c < channels; ++c) {
      const int mantissa = nkv::bfp::mantissa_from_field(nkv::unpack_code(words[static_cast<size_t>(c / per_word)], c % per_word, bits), bits);
      const float x = nkv::bfp::value_of(mantissa, exponents[static_cast<size_t>(c / block)], bits);
      ASSERT_EQ(half_to_float(float_to_half(x)), x) << "BFP values are fp16 numbers";
      const int written = permuted ? c / d * d + order[static_cast<size_t>(c)] : c;
      out[static_cast<size_t>(t * channels + written)] = float_to_half(x);
    }
  };
  for (int t = 0; t < length; ++t) {
    dequantize(t, [&](int64_t c) { return k[static_cast<size_t>(t * channels + c / d * d + order[static_cast<size_t>(c)])]; }, kd, true);
    dequantize(t, [&](int64_t c) { return v[static_cast<size_t>(t * channels + c)]; }, vd, false);
  }
  DecodeCase c;
  c.q_len = 3;
  c.causal = true;
  c.lengths = {length};
  CacheShape shape;
  shape.heads = heads;
  shape.head_dim = d;
  shape.bits = bits;
  std::vector<uint16_t> q(static_cast<size_t>(c.q_len * c.heads_q * d));
  for (auto& x : q) x = float_to_half(std::normal_distribution<float>(0.0f, 0.3f)(rng));
  const DecodeResult quantized = run_quantized_decode(context.get(), cache.get(), shape, c, q, 0);
  EXPECT_EQ(quantized.o, run_plain_decode(context.get(), shape, c, q, kd, vd).o);
}

// The CUDA write and decode of BFP caches against the CPU backend on the same steps: every slot's code words and
// exponents (or fp16 values) bit for bit, with and without a K-sort order, and decode within 1e-3 (both decode the
// same stored values, exact in fp16, in float32 MMAs vs float64). Shapes as the KIVI test's above: lengths that are
// not multiples of the 64-key stages, GQA 1..8, q_len 1..16 (two row tiles), causal, windowed, soft-capped, splits.
TEST(QuantizedKvCacheCuda, BfpMatchesTheCpuReference) {
  NKV_REQUIRE_CUDA();
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  struct Config {
    int bits, block, value_format, head_dim, heads_kv;
    bool permuted;
    DecodeCase c;
  };
  std::vector<Config> configs;
  auto add = [&](int bits, int block, int value_format, int head_dim, int heads_kv, bool permuted, int heads_q, int q_len, bool causal,
                 int window, int splits, std::vector<int32_t> lengths) {
    configs.push_back({bits, block, value_format, head_dim, heads_kv, permuted,
                       decode_case(heads_q, q_len, causal, window, splits, std::move(lengths), configs.size() % 2 == 1)});
  };
  add(4, 32, NKV_KV_VALUES_LIKE_KEYS, 128, 8, false, 32, 1, false, -1, 0, {4000, 37, 300, 129});
  add(8, 32, NKV_KV_VALUES_LIKE_KEYS, 128, 8, true, 32, 1, false, -1, 3, {3001, 250, 5});
  add(4, 16, NKV_KV_VALUES_FP16, 64, 4, true, 4, 3, true, -1, 0, {2049, 64, 17});
  add(8, 64, NKV_KV_VALUES_FP16, 128, 2, false, 16, 1, false, 500, 4, {1800, 1, 0, 65});
  add(4, 64, NKV_KV_VALUES_LIKE_KEYS, 64, 1, true, 8, 16, true, -1, 2, {1300, 900});
  add(8, 16, NKV_KV_VALUES_LIKE_KEYS, 64, 3, false, 3, 2, true, 100, 0, {2500, 300});
  add(4, 32, NKV_KV_VALUES_LIKE_KEYS, 128, 8, true, 32, 1, false, -1, 48, {4000, 3100});  // pieces of 64 to 128 keys
  add(4, 32, NKV_KV_VALUES_FP16, 128, 8, false, 32, 1, false, -1, 0, {3000, 900});
  configs.back().c.softcap = 30.0f;
  for (const Config& config : configs) {
    CacheShape shape;
    shape.format = NKV_KV_FORMAT_BFP;
    shape.value_format = config.value_format;
    shape.bits = config.bits;
    shape.group = config.block;
    shape.residual = 0;
    shape.head_dim = config.head_dim;
    shape.heads = config.heads_kv;
    shape.slots = static_cast<int>(config.c.lengths.size());
    shape.max_tokens = 4100;
    const std::string where = "bits " + std::to_string(config.bits) + " n " + std::to_string(config.block) + " values " +
                              std::to_string(config.value_format) + " d " + std::to_string(config.head_dim) + " heads " +
                              std::to_string(config.c.heads_q) + "/" + std::to_string(config.heads_kv) + " q_len " +
                              std::to_string(config.c.q_len) + (config.permuted ? " K-sort" : "");
    CachePtr gpu_cache = make_cache(gpu.get(), shape);
    CachePtr cpu_cache = make_cache(cpu.get(), shape);
    if (config.permuted) {  // layer 1 (the decoded one) in a per-head order
      std::vector<int32_t> order(static_cast<size_t>(shape.heads * shape.head_dim));
      for (int h = 0; h < shape.heads; ++h) {
        for (int j = 0; j < shape.head_dim; ++j) order[static_cast<size_t>(h * shape.head_dim + j)] = (j * 7 + 3 * h) % shape.head_dim;
      }
      NKV_ASSERT_OK(nkv_quantized_kv_cache_set_key_permutation(gpu_cache.get(), 1, order.data()));
      NKV_ASSERT_OK(nkv_quantized_kv_cache_set_key_permutation(cpu_cache.get(), 1, order.data()));
    }
    Steps gpu_model(gpu.get(), gpu_cache.get(), shape);
    Steps cpu_model(cpu.get(), cpu_cache.get(), shape);  // the same generator seed: the same K/V
    fill_slots(gpu_model, config.c);
    fill_slots(cpu_model, config.c);
    // A slot's first `length` rows of a view, as bytes (rows past the length are unspecified).
    auto stored = [&](nkv_context* context, nkv_quantized_kv_cache* cache, nkv_quantized_kv_view which, int32_t layer, int32_t slot) {
      return share_rows(context, cache_view(cache, which, layer), slot, config.c.lengths[static_cast<size_t>(slot)]);
    };
    for (int32_t layer = 0; layer < shape.layers; ++layer) {
      for (int32_t slot = 0; slot < shape.slots; ++slot) {
        for (nkv_quantized_kv_view which : {NKV_QUANTIZED_KV_KEY_CODES, NKV_QUANTIZED_KV_KEY_GROUPS, NKV_QUANTIZED_KV_VALUE_CODES,
                                            NKV_QUANTIZED_KV_VALUE_GROUPS, NKV_QUANTIZED_KV_VALUE_RESIDUAL}) {
          EXPECT_EQ(stored(gpu.get(), gpu_cache.get(), which, layer, slot), stored(cpu.get(), cpu_cache.get(), which, layer, slot))
              << where << ": view " << which << " of layer " << layer << ", slot " << slot;
        }
      }
    }
    std::mt19937 rng(static_cast<unsigned>(config.bits + 10 * config.block));
    std::vector<uint16_t> q(config.c.lengths.size() * static_cast<size_t>(config.c.q_len * config.c.heads_q * shape.head_dim));
    for (auto& x : q) x = float_to_half(std::normal_distribution<float>(0.0f, 0.5f)(rng));
    const DecodeResult on_gpu = run_quantized_decode(gpu.get(), gpu_cache.get(), shape, config.c, q);
    const DecodeResult reference = run_quantized_decode(cpu.get(), cpu_cache.get(), shape, config.c, q);
    expect_matches_reference(on_gpu, reference, where);
  }
}

// The CUDA decodes address a slot's share of an array with 32-bit element offsets, and a share is whole head-major layout
// blocks: a cache whose last block reaches past 2^32 elements is refused before anything is allocated, though its
// capacity x num_heads_kv x head_dim x bits / 32 alone would fit (KIVI-8, 12 heads: 11184800 tokens are 4294963200 code
// words; the last block's rows of head 11 end at 11184832 x 12 x 32 = 4294975488).
TEST(QuantizedKvCacheCuda, SharesPastThirtyTwoBitOffsetsAreRefused) {
  NKV_REQUIRE_CUDA();
  ContextPtr context = make_context(NKV_BACKEND_CUDA);
  const nkv_quantized_kv_cache_options options{
      sizeof(nkv_quantized_kv_cache_options), NKV_KV_FORMAT_KIVI, 8, 32, 32, 1, 12, 128, 1, 11184800, 0, 0, 0, 0};
  nkv_quantized_kv_cache* cache = nullptr;
  NKV_EXPECT_STATUS(nkv_quantized_kv_cache_create(context.get(), &options, &cache), NKV_STATUS_NOT_SUPPORTED, "32-bit offsets");
  EXPECT_EQ(cache, nullptr);
}

TEST(QuantizedKvCache, BfpRejectsBadOptions) {
  ContextPtr context = make_context(NKV_BACKEND_CPU);
  nkv_quantized_kv_cache* cache = nullptr;
  const nkv_quantized_kv_cache_options good{sizeof(nkv_quantized_kv_cache_options), NKV_KV_FORMAT_BFP, 4, 32, 0, 1, 2, 64, 2, 100, 0, 0, 0, 0};
  auto expect = [&](nkv_quantized_kv_cache_options bad, const char* needle) {
    NKV_EXPECT_STATUS(nkv_quantized_kv_cache_create(context.get(), &bad, &cache), NKV_STATUS_INVALID_ARGUMENT, needle);
    EXPECT_EQ(cache, nullptr);
  };
  auto bad = good;
  bad.bits = 2;
  expect(bad, "BFP mantissas");
  bad = good;
  bad.group_size = 128;
  expect(bad, "BFP blocks");
  bad = good;
  bad.residual = 128;
  expect(bad, "no residual");
  bad = good;
  bad.value_format = 2;
  expect(bad, "value_format");
  bad = good;
  bad.format = NKV_KV_FORMAT_KIVI;
  bad.value_format = NKV_KV_VALUES_FP16;
  expect(bad, "KIVI caches keep their values");
  NKV_ASSERT_OK(nkv_quantized_kv_cache_create(context.get(), &good, &cache));
  CachePtr owned(cache);
  std::vector<int32_t> not_a_permutation(2 * 64, 0);
  NKV_EXPECT_STATUS(nkv_quantized_kv_cache_set_key_permutation(cache, 0, not_a_permutation.data()), NKV_STATUS_INVALID_ARGUMENT,
                    "not a permutation");
}

}  // namespace

namespace {

// A slot in a step whose layers are not all written cannot be freed (its step-mates would keep unwritten tokens);
// decode refuses a layer not written since the last append; a plan for quantized caches must have their head_dim;
// K-sort refuses non-finite keys.
TEST(QuantizedKvCache, RefusesStepsLeftHalfWritten) {
  ContextPtr context = make_context(NKV_BACKEND_CPU);
  CacheShape shape;
  CachePtr cache = make_cache(context.get(), shape);
  int32_t a = -1, b = -1;
  NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(cache.get(), &a));
  NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(cache.get(), &b));
  const std::vector<int32_t> slots = {a, b}, counts = {1, 1};
  NKV_ASSERT_OK(nkv_quantized_kv_cache_append(cache.get(), slots.data(), counts.data(), 2));
  std::vector<uint16_t> rows(2 * 2 * 64, float_to_half(0.25f));
  const nkv_tensor kv = view(rows.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {2, 2, 64});
  NKV_ASSERT_OK(nkv_quantized_kv_cache_write(cache.get(), 0, &kv, &kv));
  NKV_EXPECT_STATUS(nkv_quantized_kv_cache_free_slot(cache.get(), a), NKV_STATUS_INVALID_ARGUMENT, "layer 1 is not written");
  const int32_t lengths[2] = {1, 1};
  nkv_attention_plan* raw = nullptr;
  NKV_ASSERT_OK(nkv_attention_plan_decode(context.get(), nullptr, 4, 2, 64, 2, 1, lengths, &raw));
  PlanPtr plan(raw);
  std::vector<uint16_t> q(2 * 4 * 64, float_to_half(0.5f)), o(q.size());
  const nkv_tensor qt = view(q.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {2, 1, 4, 64});
  const nkv_tensor ot = view(o.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {2, 1, 4, 64});
  NKV_EXPECT_STATUS(nkv_attention_decode_quantized(plan.get(), &qt, cache.get(), 1, &ot, nullptr), NKV_STATUS_INVALID_ARGUMENT,
                    "not written since the last append");
  NKV_ASSERT_OK(nkv_attention_decode_quantized(plan.get(), &qt, cache.get(), 0, &ot, nullptr));
  NKV_ASSERT_OK(nkv_quantized_kv_cache_write(cache.get(), 1, &kv, &kv));
  NKV_ASSERT_OK(nkv_quantized_kv_cache_free_slot(cache.get(), a));

  nkv_attention_options for_codes{sizeof(nkv_attention_options), 0, 0.0f, 0.0f, -1, 0, 0, 0, 2};
  NKV_EXPECT_STATUS(nkv_attention_plan_decode(context.get(), &for_codes, 4, 2, 96, 2, 1, lengths, &raw), NKV_STATUS_INVALID_ARGUMENT,
                    "head_dim 64 or 128");
  std::vector<float> keys(4 * 64, 1.0f);
  keys[70] = std::numeric_limits<float>::infinity();
  const nkv_tensor sample = view(keys.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {4, 1, 64});
  std::vector<int32_t> order(64);
  NKV_EXPECT_STATUS(nkv_ksort_calibrate(&sample, NKV_ROTARY_NONE, order.data()), NKV_STATUS_INVALID_ARGUMENT, "non-finite");
}

}  // namespace

namespace {

// A virtual-memory cache maps pages as slots grow and returns them when slots are freed; decode over it equals decode
// over the same tokens in an allocated cache, bit for bit.
void check_virtual_memory_decode(nkv_backend backend) {
  ContextPtr context = make_context(backend);
  CacheShape shape;
  shape.bits = 4;
  shape.residual = 128;
  shape.head_dim = 128;
  shape.max_tokens = 40000;  // 2 MiB pages: several per slot and array at this length
  CacheShape virtual_shape = shape;
  virtual_shape.memory = NKV_KV_MEMORY_VIRTUAL;
  CachePtr allocated = make_cache(context.get(), shape);
  CachePtr in_pages = make_cache(context.get(), virtual_shape);
  nkv_quantized_kv_cache_info info{};
  info.struct_size = sizeof(info);
  NKV_ASSERT_OK(nkv_quantized_kv_cache_get_info(in_pages.get(), &info));
  EXPECT_EQ(info.mapped_bytes, 0u);
  Steps a(context.get(), allocated.get(), shape), b(context.get(), in_pages.get(), virtual_shape);
  DecodeCase c;
  c.lengths = {30000, 900, 5};
  fill_slots(a, c);
  fill_slots(b, c);
  NKV_ASSERT_OK(nkv_quantized_kv_cache_get_info(in_pages.get(), &info));
  EXPECT_GT(info.mapped_bytes, 0u);
  EXPECT_LT(info.mapped_bytes, info.bytes);
  const uint64_t mapped = info.mapped_bytes;
  std::mt19937 rng(12);
  std::vector<uint16_t> q(c.lengths.size() * static_cast<size_t>(c.heads_q * shape.head_dim));
  for (auto& x : q) x = float_to_half(std::normal_distribution<float>(0.0f, 0.5f)(rng));
  const DecodeResult x = run_quantized_decode(context.get(), allocated.get(), shape, c, q);
  const DecodeResult y = run_quantized_decode(context.get(), in_pages.get(), virtual_shape, c, q);
  EXPECT_EQ(x.o, y.o);
  EXPECT_EQ(x.lse, y.lse);
  NKV_ASSERT_OK(nkv_quantized_kv_cache_free_slot(in_pages.get(), 0));
  NKV_ASSERT_OK(nkv_quantized_kv_cache_get_info(in_pages.get(), &info));
  EXPECT_LT(info.mapped_bytes, mapped) << "the long slot's pages are returned";
  NKV_ASSERT_OK(nkv_quantized_kv_cache_free_slot(in_pages.get(), 1));
  NKV_ASSERT_OK(nkv_quantized_kv_cache_free_slot(in_pages.get(), 2));
  NKV_ASSERT_OK(nkv_quantized_kv_cache_get_info(in_pages.get(), &info));
  EXPECT_EQ(info.mapped_bytes, 0u);
}

TEST(QuantizedKvCache, VirtualMemoryDecodeEqualsAllocated) { check_virtual_memory_decode(NKV_BACKEND_CPU); }

TEST(QuantizedKvCacheCuda, VirtualMemoryDecodeEqualsAllocated) {
  NKV_REQUIRE_CUDA();
  check_virtual_memory_decode(NKV_BACKEND_CUDA);
}

}  // namespace

namespace {

// A paged cache (pages of P tokens from a shared pool) holds what an allocated cache holds: over the same steps,
// with slots growing together (their pages interleave in the pool) and a slot freed and refilled (its pages
// reused), decode equals decode over the allocated cache bit for bit, for KIVI and BFP, with and without a K-sort
// order; the pool's pages are taken as slots grow and returned when they are freed.
void check_paged_decode(nkv_backend backend) {
  ContextPtr context = make_context(backend);
  struct Config {
    int format, bits, group, residual, page_size, value_format, head_dim;
  };
  const std::vector<Config> configs = {{NKV_KV_FORMAT_KIVI, 2, 32, 64, 64, 0, 128},  {NKV_KV_FORMAT_KIVI, 4, 64, 128, 128, 0, 128},
                                       {NKV_KV_FORMAT_KIVI, 4, 32, 128, 32, 0, 128}, {NKV_KV_FORMAT_KIVI, 2, 32, 64, 32, 0, 64},
                                       {NKV_KV_FORMAT_KIVI, 8, 32, 64, 64, 0, 128},  {NKV_KV_FORMAT_BFP, 4, 32, 0, 16, 0, 128},
                                       {NKV_KV_FORMAT_BFP, 8, 16, 0, 256, 0, 128},   {NKV_KV_FORMAT_BFP, 4, 64, 0, 64, NKV_KV_VALUES_FP16, 128}};
  for (const Config& config : configs) {
    CacheShape shape;
    shape.format = config.format;
    shape.bits = config.bits;
    shape.group = config.group;
    shape.residual = config.residual;
    shape.value_format = config.value_format;
    shape.head_dim = config.head_dim;
    shape.heads = 2;
    shape.max_tokens = 2000;
    CacheShape paged_shape = shape;
    paged_shape.memory = NKV_KV_MEMORY_PAGED;
    paged_shape.page_size = config.page_size;
    const std::string where = "format " + std::to_string(config.format) + " bits " + std::to_string(config.bits) + " page " +
                              std::to_string(config.page_size) + " d " + std::to_string(config.head_dim);
    CachePtr allocated = make_cache(context.get(), shape);
    CachePtr paged = make_cache(context.get(), paged_shape);
    if (config.page_size <= 32) {  // these configs also store layer 1's keys in a K-sort order (both caches alike)
      std::vector<int32_t> order(static_cast<size_t>(shape.heads * shape.head_dim));
      for (int h = 0; h < shape.heads; ++h) {
        for (int j = 0; j < shape.head_dim; ++j) order[static_cast<size_t>(h * shape.head_dim + j)] = (j * 3 + h) % shape.head_dim;
      }
      NKV_ASSERT_OK(nkv_quantized_kv_cache_set_key_permutation(allocated.get(), 1, order.data()));
      NKV_ASSERT_OK(nkv_quantized_kv_cache_set_key_permutation(paged.get(), 1, order.data()));
    }
    nkv_quantized_kv_cache_info info{};
    info.struct_size = sizeof(info);
    NKV_ASSERT_OK(nkv_quantized_kv_cache_get_info(paged.get(), &info));
    const int pages_per_slot = (2000 + std::max(config.residual, 1) - 1) / std::max(config.residual, 1) * std::max(config.residual, 1);
    EXPECT_EQ(info.page_size, config.page_size) << where;
    EXPECT_EQ(info.max_pages, shape.slots * ((pages_per_slot + config.page_size - 1) / config.page_size)) << where;
    EXPECT_EQ(info.free_pages, info.max_pages) << where;
    Steps a(context.get(), allocated.get(), shape), b(context.get(), paged.get(), paged_shape);
    DecodeCase c;
    c.q_len = 2;
    c.causal = true;
    c.lengths = {1500, 333, 0};
    fill_slots(a, c);
    fill_slots(b, c);
    NKV_ASSERT_OK(nkv_quantized_kv_cache_get_info(paged.get(), &info));
    // Pages of the coded tokens: KIVI keys up to the last flush, values up to the window; BFP every token.
    auto pages = [&](int64_t length) {
      const int64_t coded = config.format == NKV_KV_FORMAT_BFP ? length
                                                                : std::max(nkv::kivi::quantized_keys(length, config.residual),
                                                                           nkv::kivi::quantized_values(length, config.residual));
      return static_cast<int>((coded + config.page_size - 1) / config.page_size);
    };
    const int held = pages(1500) + pages(333);
    EXPECT_EQ(info.free_pages, info.max_pages - held) << where;
    // Slot 1 freed, then a new slot (id 1 again) refilled with other tokens: it takes pages slot 1 returned.
    for (nkv_quantized_kv_cache* cache : {allocated.get(), paged.get()}) {
      NKV_ASSERT_OK(nkv_quantized_kv_cache_free_slot(cache, 1));
      int32_t slot = -1;
      NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(cache, &slot));
      ASSERT_EQ(slot, 1);
    }
    for (Steps* model : {&a, &b}) {
      for (auto& layer : model->k) layer[1].clear();
      for (auto& layer : model->v) layer[1].clear();
      model->step({1, 0}, {700, 5});
      for (int i = 0; i < 70; ++i) model->step({0, 1}, {1, 1});  // pages taken one step apart
    }
    c.lengths = {1575, 770, 0};
    std::mt19937 rng(5);
    std::vector<uint16_t> q(c.lengths.size() * static_cast<size_t>(c.q_len * c.heads_q * shape.head_dim));
    for (auto& x : q) x = float_to_half(std::normal_distribution<float>(0.0f, 0.5f)(rng));
    const DecodeResult x = run_quantized_decode(context.get(), allocated.get(), shape, c, q);
    const DecodeResult y = run_quantized_decode(context.get(), paged.get(), paged_shape, c, q);
    EXPECT_EQ(x.o, y.o) << where;
    EXPECT_EQ(x.lse, y.lse) << where;
    const nkv_tensor table = cache_view(paged.get(), NKV_QUANTIZED_KV_BLOCK_TABLE, 0);
    EXPECT_EQ(table.dtype, NKV_DTYPE_INT32);
    EXPECT_EQ(table.shape[0], shape.slots);
    for (int32_t slot : {0, 1}) NKV_ASSERT_OK(nkv_quantized_kv_cache_free_slot(paged.get(), slot));
    NKV_ASSERT_OK(nkv_quantized_kv_cache_get_info(paged.get(), &info));
    EXPECT_EQ(info.free_pages, info.max_pages) << where << ": every page back in the pool";
  }
}

TEST(QuantizedKvCache, PagedDecodeEqualsAllocated) { check_paged_decode(NKV_BACKEND_CPU); }

TEST(QuantizedKvCacheCuda, PagedDecodeEqualsAllocated) {
  NKV_REQUIRE_CUDA();
  check_paged_decode(NKV_BACKEND_CUDA);
}

// A pool that runs out refuses the whole step (every slot keeps its length), and the page options are checked.
TEST(QuantizedKvCache, PagedPoolRunsOutAllOrNothing) {
  ContextPtr context = make_context(NKV_BACKEND_CPU);
  CacheShape shape;
  shape.memory = NKV_KV_MEMORY_PAGED;
  shape.page_size = 64;
  shape.max_pages = 5;
  CachePtr cache = make_cache(context.get(), shape);
  int32_t a = -1, b = -1;
  NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(cache.get(), &a));
  NKV_ASSERT_OK(nkv_quantized_kv_cache_add_slot(cache.get(), &b));
  const std::vector<int32_t> slots = {a, b};
  // Pages of 64 coded tokens (R 64): 200 tokens have keys 0..191 coded (3 pages), 70 tokens keys 0..63 (1 page).
  std::vector<int32_t> counts = {200, 70};
  NKV_ASSERT_OK(nkv_quantized_kv_cache_append(cache.get(), slots.data(), counts.data(), 2));
  counts = {60, 64};  // keys to 256 (4 pages) and to 128 (2 pages): 6 > 5
  NKV_EXPECT_STATUS(nkv_quantized_kv_cache_append(cache.get(), slots.data(), counts.data(), 2), NKV_STATUS_OUT_OF_MEMORY, "max_pages");
  int32_t length = 0;
  NKV_ASSERT_OK(nkv_quantized_kv_cache_slot(cache.get(), a, &length));
  EXPECT_EQ(length, 200);
  NKV_ASSERT_OK(nkv_quantized_kv_cache_slot(cache.get(), b, &length));
  EXPECT_EQ(length, 70);
  nkv_quantized_kv_cache_info info{};
  info.struct_size = sizeof(info);
  NKV_ASSERT_OK(nkv_quantized_kv_cache_get_info(cache.get(), &info));
  EXPECT_EQ(info.free_pages, 1);

  auto refused = [&](CacheShape s, const char* needle) {
    nkv_quantized_kv_cache_options o{sizeof(o), s.format, s.bits, s.group, s.residual, s.layers, s.heads, s.head_dim, s.slots, s.max_tokens,
                                     s.value_format, s.memory, s.page_size, s.max_pages};
    nkv_quantized_kv_cache* out = nullptr;
    NKV_EXPECT_STATUS(nkv_quantized_kv_cache_create(context.get(), &o, &out), NKV_STATUS_INVALID_ARGUMENT, needle);
    EXPECT_EQ(out, nullptr);
  };
  CacheShape bad = shape;
  bad.page_size = 96;
  refused(bad, "power of two");
  bad.page_size = 16;
  refused(bad, "multiple of group_size");
  bad = shape;
  bad.memory = NKV_KV_MEMORY_ALLOCATED;
  refused(bad, "NKV_KV_MEMORY_PAGED");
  // A caller built against the header before the page fields (struct_size up to `memory`) gets an allocated cache.
  nkv_quantized_kv_cache_options old{offsetof(nkv_quantized_kv_cache_options, page_size), NKV_KV_FORMAT_KIVI, 2, 32, 64, 1, 2, 64, 1, 100, 0, 0, 77, 77};
  nkv_quantized_kv_cache* out = nullptr;
  NKV_ASSERT_OK(nkv_quantized_kv_cache_create(context.get(), &old, &out));
  CachePtr owned(out);
  NKV_EXPECT_STATUS(nkv_quantized_kv_cache_view(out, NKV_QUANTIZED_KV_BLOCK_TABLE, 0, nullptr), NKV_STATUS_INVALID_ARGUMENT, "out_view");
  nkv_tensor view{};
  NKV_EXPECT_STATUS(nkv_quantized_kv_cache_view(out, NKV_QUANTIZED_KV_BLOCK_TABLE, 0, &view), NKV_STATUS_INVALID_ARGUMENT, "paged");
}

}  // namespace
