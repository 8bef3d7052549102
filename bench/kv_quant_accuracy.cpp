// Accuracy of the KV-cache formats (issue 5): attention output and logits over quantized keys and values
// against the same attention over the fp16 keys and values, on two kinds of data:
//   (a) keys with outlier channels, as LLM keys have them: K[t][c] = N(0, 1) for most channels; in each head 4 of
//       its 128 channels (every 32nd, from 5) carry a fixed offset of +-8 plus N(0, 2^2) (KIVI's observation:
//       a few channels hold large magnitudes for all tokens); values N(0, 1);
//   (b) i.i.d. N(0, 1) keys and values.
// Queries N(0, 1), softmax scale 1/sqrt(d), one sequence of T tokens, q_len 1, GQA 8 / 2, d 128, seed 0.
// Formats: KIVI-2 and KIVI-4 (G 32, R 128: keys per channel, values per token) as nkv_quantized_kv_cache stores
// them, and the same bits with keys quantized per token (groups of 32 channels, like the values) for
// comparison, which KIVI reports to be worse on keys with outlier channels; BFP12 and BFP16 (blocks of 32
// channels, keys and values), with and without K-sort (the order from nkv_ksort_calibrate over the first 512
// keys). The quantized keys and values are dequantized with core/kv_quant.h (the arithmetic the library runs)
// and attention is evaluated in float64; the library's own decode over its KIVI cache (CPU backend) is
// checked against this.
//
// Output: a Markdown table on stdout.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench_tensor.h"
#include "core/float_bits.h"
#include "core/kv_quant.h"
#include "nativekv/nativekv.h"

namespace {

constexpr int kHeadsQ = 8, kHeadsKv = 2, kHeadDim = 128, kGroup = 32, kResidual = 128;
constexpr int kChannels = kHeadsKv * kHeadDim;

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "nkv_kv_quant_accuracy: %s\n", message.c_str());
  std::exit(1);
}

void check(nkv_status status, const char* what) {
  if (status != NKV_STATUS_SUCCESS) die(std::string(what) + ": " + nkv_last_error());
}

float round_half(float x) { return nkv::half_to_float(nkv::float_to_half(x)); }

struct Data {
  int tokens;
  std::vector<float> k, v, q;  // [T][C], [T][C], [heads_q][d]; values exactly fp16
};

Data make_data(int tokens, bool outliers) {
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Data x{tokens, std::vector<float>(static_cast<size_t>(tokens) * kChannels), {}, std::vector<float>(kHeadsQ * kHeadDim)};
  std::vector<float> offset(kChannels, 0.0f);
  for (int c = 0; c < kChannels; ++c) {
    if (outliers && c % kHeadDim % 32 == 5) offset[c] = (c / 32 % 2 == 0 ? 8.0f : -8.0f);
  }
  for (int t = 0; t < tokens; ++t) {
    for (int c = 0; c < kChannels; ++c) {
      const bool outlier = offset[c] != 0.0f;
      x.k[static_cast<size_t>(t) * kChannels + c] = round_half(offset[c] + (outlier ? 2.0f : 1.0f) * normal(rng));
    }
  }
  x.v.resize(x.k.size());
  for (float& e : x.v) e = round_half(normal(rng));
  for (float& e : x.q) e = round_half(normal(rng));
  return x;
}

// Dequantized keys of one format: per-channel KIVI (the library's) or per-token groups of 32 channels; the
// last tokens stay fp16 as the library's residual rules say.
std::vector<float> dequantized_keys(const Data& x, int bits, bool per_channel) {
  std::vector<float> out = x.k;
  const int64_t quantized = nkv::kivi::quantized_keys(x.tokens, kResidual);
  const int per_word = static_cast<int>(nkv::codes_per_word(bits));
  if (per_channel) {
    std::vector<uint32_t> words(static_cast<size_t>(quantized / per_word * kChannels)), groups(static_cast<size_t>(quantized / kGroup * kChannels));
    for (int64_t t0 = 0; t0 < quantized; t0 += kGroup) {
      nkv::kivi::quantize_key_group(bits, kGroup, kChannels, t0, [&](int64_t t, int64_t c) { return x.k[static_cast<size_t>(t * kChannels + c)]; },
                                    words.data(), groups.data());
    }
    for (int64_t t = 0; t < quantized; ++t) {
      for (int c = 0; c < kChannels; ++c) {
        const nkv::kivi::Group g = nkv::kivi::unpack_group(groups[static_cast<size_t>(t / kGroup * kChannels + c)]);
        out[static_cast<size_t>(t * kChannels + c)] =
            nkv::kivi::value_of(nkv::unpack_code(words[static_cast<size_t>(t / per_word * kChannels + c)], static_cast<int>(t % per_word), bits), g);
      }
    }
  } else {
    std::vector<uint32_t> words(kChannels / per_word), groups(kChannels / kGroup);
    for (int64_t t = 0; t < quantized; ++t) {
      nkv::kivi::quantize_value_token(bits, kGroup, kChannels, [&](int64_t c) { return x.k[static_cast<size_t>(t * kChannels + c)]; },
                                      words.data(), groups.data());
      for (int c = 0; c < kChannels; ++c) {
        out[static_cast<size_t>(t * kChannels + c)] = nkv::kivi::value_of(
            nkv::unpack_code(words[static_cast<size_t>(c / per_word)], c % per_word, bits), nkv::kivi::unpack_group(groups[static_cast<size_t>(c / kGroup)]));
      }
    }
  }
  return out;
}

std::vector<float> dequantized_values(const Data& x, int bits) {
  std::vector<float> out = x.v;
  const int64_t quantized = nkv::kivi::quantized_values(x.tokens, kResidual);
  const int per_word = static_cast<int>(nkv::codes_per_word(bits));
  std::vector<uint32_t> words(kChannels / per_word), groups(kChannels / kGroup);
  for (int64_t t = 0; t < quantized; ++t) {
    nkv::kivi::quantize_value_token(bits, kGroup, kChannels, [&](int64_t c) { return x.v[static_cast<size_t>(t * kChannels + c)]; },
                                    words.data(), groups.data());
    for (int c = 0; c < kChannels; ++c) {
      out[static_cast<size_t>(t * kChannels + c)] = nkv::kivi::value_of(
          nkv::unpack_code(words[static_cast<size_t>(c / per_word)], c % per_word, bits), nkv::kivi::unpack_group(groups[static_cast<size_t>(c / kGroup)]));
    }
  }
  return out;
}

// BFP keys or values per token in blocks of 32 channels, dequantized; order (K-sort, [heads][d]) or null.
std::vector<float> dequantized_bfp(const Data& x, const std::vector<float>& in, int mantissa_bits, const int32_t* order) {
  constexpr int kBlock = 32;
  std::vector<float> out(in.size());
  const int per_word = static_cast<int>(nkv::codes_per_word(mantissa_bits));
  std::vector<uint32_t> words(kChannels / per_word);
  std::vector<int8_t> exponents(kChannels / kBlock);
  auto source = [&](int64_t c) { return order == nullptr ? c : c / kHeadDim * kHeadDim + order[c]; };
  for (int64_t t = 0; t < x.tokens; ++t) {
    nkv::bfp::quantize_token(mantissa_bits, kBlock, kChannels, [&](int64_t c) { return in[static_cast<size_t>(t * kChannels + source(c))]; },
                             words.data(), exponents.data());
    for (int64_t c = 0; c < kChannels; ++c) {
      const int mantissa = nkv::bfp::mantissa_from_field(
          nkv::unpack_code(words[static_cast<size_t>(c / per_word)], static_cast<int>(c % per_word), mantissa_bits), mantissa_bits);
      out[static_cast<size_t>(t * kChannels + source(c))] = nkv::bfp::value_of(mantissa, exponents[static_cast<size_t>(c / kBlock)], mantissa_bits);
    }
  }
  return out;
}

struct Attention {
  std::vector<double> logits;  // [head][token], scaled
  std::vector<double> out;     // [head][d]
};

Attention attend(const Data& x, const std::vector<float>& k, const std::vector<float>& v) {
  Attention a{std::vector<double>(static_cast<size_t>(kHeadsQ) * x.tokens), std::vector<double>(kHeadsQ * kHeadDim, 0.0)};
  const double scale = 1.0 / std::sqrt(static_cast<double>(kHeadDim));
  for (int h = 0; h < kHeadsQ; ++h) {
    const int hk = h / (kHeadsQ / kHeadsKv);
    double top = -INFINITY;
    for (int t = 0; t < x.tokens; ++t) {
      double dot = 0.0;
      for (int d = 0; d < kHeadDim; ++d) dot += static_cast<double>(x.q[h * kHeadDim + d]) * k[static_cast<size_t>(t) * kChannels + hk * kHeadDim + d];
      a.logits[static_cast<size_t>(h) * x.tokens + t] = dot * scale;
      top = std::max(top, dot * scale);
    }
    double sum = 0.0;
    for (int t = 0; t < x.tokens; ++t) {
      const double p = std::exp(a.logits[static_cast<size_t>(h) * x.tokens + t] - top);
      sum += p;
      for (int d = 0; d < kHeadDim; ++d) a.out[h * kHeadDim + d] += p * v[static_cast<size_t>(t) * kChannels + hk * kHeadDim + d];
    }
    for (int d = 0; d < kHeadDim; ++d) a.out[h * kHeadDim + d] /= sum;
  }
  return a;
}

double relative(const std::vector<double>& x, const std::vector<double>& reference) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    diff += (x[i] - reference[i]) * (x[i] - reference[i]);
    norm += reference[i] * reference[i];
  }
  return std::sqrt(diff / norm);
}

double mean_absolute(const std::vector<double>& x, const std::vector<double>& reference) {
  double sum = 0.0;
  for (size_t i = 0; i < x.size(); ++i) sum += std::fabs(x[i] - reference[i]);
  return sum / static_cast<double>(x.size());
}

// The library's decode over its own cache (CPU backend) for per-channel KIVI, as a check of the path above.
std::vector<double> library_decode(const Data& x, int bits) {
  nkv_context_options co{sizeof(nkv_context_options), NKV_BACKEND_CPU, 0, 0, nullptr};
  nkv_context* context = nullptr;
  check(nkv_context_create(&co, &context), "nkv_context_create");
  nkv_quantized_kv_cache_options o{sizeof(o), NKV_KV_FORMAT_KIVI, bits, kGroup, kResidual, 1, kHeadsKv, kHeadDim, 1, x.tokens, 0, 0, 0, 0};
  nkv_quantized_kv_cache* cache = nullptr;
  check(nkv_quantized_kv_cache_create(context, &o, &cache), "nkv_quantized_kv_cache_create");
  int32_t slot = 0, tokens = x.tokens;
  check(nkv_quantized_kv_cache_add_slot(cache, &slot), "add_slot");
  check(nkv_quantized_kv_cache_append(cache, &slot, &tokens, 1), "append");
  std::vector<uint16_t> k(x.k.size()), v(x.v.size()), q(x.q.size()), out(x.q.size());
  for (size_t i = 0; i < k.size(); ++i) k[i] = nkv::float_to_half(x.k[i]);
  for (size_t i = 0; i < v.size(); ++i) v[i] = nkv::float_to_half(x.v[i]);
  for (size_t i = 0; i < q.size(); ++i) q[i] = nkv::float_to_half(x.q[i]);
  auto view = [](void* data, std::vector<int64_t> shape) { return ::view(data, NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, std::move(shape)); };
  const nkv_tensor kt = view(k.data(), {tokens, kHeadsKv, kHeadDim}), vt = view(v.data(), {tokens, kHeadsKv, kHeadDim});
  check(nkv_quantized_kv_cache_write(cache, 0, &kt, &vt), "write");
  nkv_attention_plan* plan = nullptr;
  check(nkv_attention_plan_decode(context, nullptr, kHeadsQ, kHeadsKv, kHeadDim, 1, 1, &tokens, &plan), "plan");
  const nkv_tensor qt = view(q.data(), {1, 1, kHeadsQ, kHeadDim}), ot = view(out.data(), {1, 1, kHeadsQ, kHeadDim});
  check(nkv_attention_decode_quantized(plan, &qt, cache, 0, &ot, nullptr), "decode");
  nkv_attention_plan_destroy(plan);
  nkv_quantized_kv_cache_destroy(cache);
  nkv_context_destroy(context);
  std::vector<double> result(out.size());
  for (size_t i = 0; i < out.size(); ++i) result[i] = nkv::half_to_float(out[i]);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  const int tokens = argc > 1 ? std::atoi(argv[1]) : 4096;
  std::printf("| data | format | keys | bits / element | attention output rel. error | logit rel. error | mean abs. logit error |\n");
  std::printf("|---|---|---|---:|---:|---:|---:|\n");
  for (bool outliers : {true, false}) {
    const Data x = make_data(tokens, outliers);
    const Attention reference = attend(x, x.k, x.v);
    for (int bits : {4, 2}) {
      for (bool per_channel : {true, false}) {
        const Attention a = attend(x, dequantized_keys(x, bits, per_channel), dequantized_values(x, bits));
        if (per_channel) {
          // The library's decode must give the same output (to its fp16 output rounding).
          const std::vector<double> library = library_decode(x, bits);
          if (relative(library, a.out) > 2e-3) die("the library's decode differs from the dequantize-then-attend reference");
        }
        const double bits_per_element = bits + 32.0 / kGroup;  // codes + an fp16 scale and minimum per group
        std::printf("| %s | KIVI-%d, G %d, R %d | %s | %.2f | %.3e | %.3e | %.3e |\n", outliers ? "(a) keys with outlier channels" : "(b) i.i.d.",
                    bits, kGroup, kResidual, per_channel ? "per channel (KIVI)" : "per token", bits_per_element,
                    relative(a.out, reference.out), relative(a.logits, reference.logits), mean_absolute(a.logits, reference.logits));
      }
    }
    // K-sort's order from a calibration sample: the first 512 tokens' keys.
    std::vector<int32_t> order(kChannels);
    nkv_tensor sample{};
    sample.data = const_cast<float*>(x.k.data());
    sample.dtype = NKV_DTYPE_FLOAT32;
    sample.device = NKV_DEVICE_HOST;
    sample.ndim = 3;
    const int64_t shape[3] = {std::min(512, x.tokens), kHeadsKv, kHeadDim}, strides[3] = {kChannels, kHeadDim, 1};
    for (int i = 0; i < 3; ++i) sample.shape[i] = shape[i], sample.strides[i] = strides[i];
    check(nkv_ksort_calibrate(&sample, NKV_ROTARY_NONE, order.data()), "nkv_ksort_calibrate");
    for (int m : {4, 8}) {
      for (bool sorted : {false, true}) {
        const Attention a = attend(x, dequantized_bfp(x, x.k, m, sorted ? order.data() : nullptr), dequantized_bfp(x, x.v, m, nullptr));
        std::printf("| %s | BFP%d, n 32 | %s | %.2f | %.3e | %.3e | %.3e |\n", outliers ? "(a) keys with outlier channels" : "(b) i.i.d.",
                    m + 8, sorted ? "K-sort" : "channel order", m + 8.0 / 32, relative(a.out, reference.out),
                    relative(a.logits, reference.logits), mean_absolute(a.logits, reference.logits));
      }
    }
  }
  std::printf("\nT = %d tokens, d = %d, %d query heads over %d KV heads, q_len 1; errors against fp16 K/V, float64 attention. "
              "KIVI's bits per element exclude its fp16 residual (the last %d tokens).\n", tokens, kHeadDim, kHeadsQ, kHeadsKv, kResidual);
  return 0;
}
