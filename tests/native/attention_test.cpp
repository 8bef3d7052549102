// Attention: the CPU reference against an independent float64 model, the CUDA kernels against the CPU
// reference on fresh random inputs of awkward shapes, and every argument check.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "core/attention.h"
#include "core/float_bits.h"
#include "test_support.h"

using namespace nkv_test;

namespace {

constexpr uint16_t kPoison = 0xffff;  // NaN in float16 and bfloat16

// For helpers that return a value: record the failure and return `value`.
#define NKV_ASSERT_OK_RETURN(call, value)                                   \
  do {                                                                      \
    const nkv_status nkv_status_ = (call);                                  \
    if (nkv_status_ != NKV_STATUS_SUCCESS) {                                \
      ADD_FAILURE() << #call << ": " << nkv_last_error();                   \
      return value;                                                         \
    }                                                                       \
  } while (0)

struct Options {
  bool causal = false;
  float scale = 0.0f;
  float softcap = 0.0f;
  int32_t window_left = -1;
  int32_t num_splits = 0;
  nkv_attention_kernel kernel = NKV_ATTENTION_KERNEL_AUTO;

  nkv_attention_options c() const {
    return nkv_attention_options{sizeof(nkv_attention_options), causal ? 1 : 0, scale, softcap, window_left, num_splits,
                                 kernel, 0, 0};
  }
};

float to_float(nkv_dtype dtype, uint16_t bits) {
  return dtype == NKV_DTYPE_BFLOAT16 ? nkv::bfloat16_to_float(bits) : nkv::half_to_float(bits);
}
uint16_t from_float(nkv_dtype dtype, float x) {
  return dtype == NKV_DTYPE_BFLOAT16 ? nkv::float_to_bfloat16(x) : nkv::float_to_half(x);
}

std::vector<uint16_t> random_values(nkv_dtype dtype, size_t count, float amplitude) {
  std::uniform_real_distribution<float> u(-amplitude, amplitude);
  std::vector<uint16_t> v(count);
  for (auto& x : v) x = from_float(dtype, u(rng()));
  return v;
}

// A [rows, heads, head_dim] tensor in host memory with optional padding between heads and rows, so that
// the kernels see strided views.
struct HeadTensor {
  int64_t rows = 0, heads = 0, dim = 0;
  int64_t head_stride = 0, row_stride = 0;
  std::vector<uint16_t> data;

  HeadTensor() = default;
  HeadTensor(int64_t rows_, int64_t heads_, int64_t dim_, bool strided)
      : rows(rows_), heads(heads_), dim(dim_), head_stride(dim_ + (strided ? 8 : 0)),
        row_stride(heads_ * (dim_ + (strided ? 8 : 0)) + (strided ? 24 : 0)),
        data(static_cast<size_t>(std::max<int64_t>(rows_, 1) * row_stride), kPoison) {}
  uint16_t& at(int64_t r, int64_t h, int64_t d) { return data[static_cast<size_t>(r * row_stride + h * head_stride + d)]; }
  uint16_t at(int64_t r, int64_t h, int64_t d) const {
    return data[static_cast<size_t>(r * row_stride + h * head_stride + d)];
  }
  void randomize(nkv_dtype dtype, float amplitude) {
    std::vector<uint16_t> values = random_values(dtype, static_cast<size_t>(rows * heads * dim), amplitude);
    size_t i = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t d = 0; d < dim; ++d) at(r, h, d) = values[i++];
  }
  nkv_tensor view_at(void* base, nkv_dtype dtype, nkv_device_type device) const {
    return view(base, dtype, device, {rows, heads, dim}, {row_stride, head_stride, 1});
  }
};

// Places host data in memory of `context` (a buffer: host memory on CPU, device memory on CUDA).
struct Placed {
  std::unique_ptr<Memory> memory;
  size_t bytes = 0;
  Placed(nkv_context* context, const void* data, size_t bytes_) : bytes(bytes_) {
    memory = std::make_unique<Memory>(context, std::max<size_t>(bytes, 256));
    memory->upload(data, bytes);
  }
  void* data() const { return memory->data(); }
  template <typename T>
  std::vector<T> read() const {
    return memory->download<T>(bytes / sizeof(T));
  }
};

struct VarlenCase {
  nkv_dtype dtype = NKV_DTYPE_FLOAT16;
  int32_t heads_q = 4, heads_kv = 2, head_dim = 64;
  std::vector<int32_t> lq, lk;
  Options options;
  bool strided = false;
  int64_t extra_rows = 3;  // rows past total_q / total_k that must stay untouched
};

struct VarlenInputs {
  HeadTensor q, k, v;
  std::vector<int32_t> cu_q, cu_k;
};

std::vector<int32_t> prefix_sums(const std::vector<int32_t>& lengths) {
  std::vector<int32_t> cu(lengths.size() + 1, 0);
  for (size_t i = 0; i < lengths.size(); ++i) cu[i + 1] = cu[i] + lengths[i];
  return cu;
}

VarlenInputs make_inputs(const VarlenCase& c) {
  VarlenInputs in;
  in.cu_q = prefix_sums(c.lq);
  in.cu_k = prefix_sums(c.lk);
  in.q = HeadTensor(in.cu_q.back() + c.extra_rows, c.heads_q, c.head_dim, c.strided);
  in.k = HeadTensor(in.cu_k.back() + c.extra_rows, c.heads_kv, c.head_dim, c.strided);
  in.v = HeadTensor(in.cu_k.back() + c.extra_rows, c.heads_kv, c.head_dim, c.strided);
  in.q.randomize(c.dtype, 2.0f);
  in.k.randomize(c.dtype, 2.0f);
  in.v.randomize(c.dtype, 1.0f);
  return in;
}

struct Outputs {
  HeadTensor o;
  std::vector<float> lse;  // [heads_q, rows]
};

// Runs varlen attention on `context` and returns O (with its poisoned padding) and LSE.
Outputs run_varlen(nkv_context* context, const VarlenCase& c, const VarlenInputs& in) {
  const nkv_device_type device = device_of(context);
  Outputs out;
  out.o = HeadTensor(in.q.rows, c.heads_q, c.head_dim, c.strided);
  out.lse.assign(static_cast<size_t>(c.heads_q * in.q.rows), std::numeric_limits<float>::quiet_NaN());
  Placed q(context, in.q.data.data(), in.q.data.size() * 2);
  Placed k(context, in.k.data.data(), in.k.data.size() * 2);
  Placed v(context, in.v.data.data(), in.v.data.size() * 2);
  Placed o(context, out.o.data.data(), out.o.data.size() * 2);
  Placed lse(context, out.lse.data(), out.lse.size() * 4);
  const nkv_attention_options options = c.options.c();
  nkv_attention_plan* plan = nullptr;
  NKV_ASSERT_OK_RETURN(nkv_attention_plan_varlen(context, &options, c.heads_q, c.heads_kv, c.head_dim,
                                                 static_cast<int32_t>(c.lq.size()), in.cu_q.data(), in.cu_k.data(), &plan),
                       out);
  const nkv_tensor tq = in.q.view_at(q.data(), c.dtype, device);
  const nkv_tensor tk = in.k.view_at(k.data(), c.dtype, device);
  const nkv_tensor tv = in.v.view_at(v.data(), c.dtype, device);
  const nkv_tensor to = out.o.view_at(o.data(), c.dtype, device);
  const nkv_tensor tl = view(lse.data(), NKV_DTYPE_FLOAT32, device, {c.heads_q, in.q.rows});
  const nkv_status status = nkv_attention_varlen(plan, &tq, &tk, &tv, &to, &tl);
  EXPECT_EQ(status, NKV_STATUS_SUCCESS) << nkv_last_error();
  out.o.data = o.read<uint16_t>();
  out.lse = lse.read<float>();
  EXPECT_EQ(nkv_attention_plan_destroy(plan), NKV_STATUS_SUCCESS) << nkv_last_error();
  return out;
}

// An independent float64 model of nativekv.h's formulas (one row at a time) for checking the CPU backend.
void model_row(const VarlenCase& c, const VarlenInputs& in, int b, int h, int i, std::vector<double>& out, double& lse) {
  const int lq = c.lq[b], lk = c.lk[b];
  const int hk = h / (c.heads_q / c.heads_kv);
  const double scale = c.options.scale > 0 ? c.options.scale : 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  std::vector<double> s;
  std::vector<int> keys;
  for (int j = 0; j < lk; ++j) {
    if (c.options.causal && j > i + lk - lq) continue;
    if (c.options.window_left >= 0 && j < i + lk - lq - c.options.window_left) continue;
    double dot = 0;
    for (int d = 0; d < c.head_dim; ++d) {
      dot += static_cast<double>(to_float(c.dtype, in.q.at(in.cu_q[b] + i, h, d))) *
             to_float(c.dtype, in.k.at(in.cu_k[b] + j, hk, d));
    }
    double x = dot * scale;
    if (c.options.softcap > 0) x = c.options.softcap * std::tanh(x / c.options.softcap);
    s.push_back(x);
    keys.push_back(j);
  }
  out.assign(static_cast<size_t>(c.head_dim), 0.0);
  if (s.empty()) {
    lse = -std::numeric_limits<double>::infinity();
    return;
  }
  const double m = *std::max_element(s.begin(), s.end());
  double sum = 0;
  for (size_t n = 0; n < s.size(); ++n) {
    const double p = std::exp(s[n] - m);
    sum += p;
    for (int d = 0; d < c.head_dim; ++d) out[d] += p * to_float(c.dtype, in.v.at(in.cu_k[b] + keys[n], hk, d));
  }
  for (double& x : out) x /= sum;
  lse = m + std::log(sum);
}

// ‖a − b‖ / ‖b‖ over the rows [0, total) of two O tensors.
double relative_error(nkv_dtype dtype, const HeadTensor& a, const HeadTensor& b, int64_t total) {
  double diff = 0, norm = 0;
  for (int64_t r = 0; r < total; ++r)
    for (int64_t h = 0; h < a.heads; ++h)
      for (int64_t d = 0; d < a.dim; ++d) {
        const double x = to_float(dtype, a.at(r, h, d)), y = to_float(dtype, b.at(r, h, d));
        diff += (x - y) * (x - y);
        norm += y * y;
      }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

double tolerance(nkv_dtype dtype) { return dtype == NKV_DTYPE_BFLOAT16 ? 8e-3 : 1e-3; }

// Every element of the rows below `total` was written (no poison left) and nothing else was touched.
void expect_written_exactly(const HeadTensor& o, int64_t total, const std::string& label) {
  int64_t unwritten = 0, touched = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(o.data.size()); ++i) {
    const int64_t r = i / o.row_stride, within = i % o.row_stride;
    const bool inside = r < total && within / o.head_stride < o.heads && within % o.head_stride < o.dim;
    if (inside && o.data[i] == kPoison) ++unwritten;
    if (!inside && o.data[i] != kPoison) ++touched;
  }
  EXPECT_EQ(unwritten, 0) << label << ": output elements left unwritten";
  EXPECT_EQ(touched, 0) << label << ": elements outside the output rows were written";
}

void expect_lse_close(const std::vector<float>& a, const std::vector<float>& b, int64_t rows, int64_t total,
                      int64_t heads, const std::string& label) {
  int bad = 0;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t r = 0; r < total; ++r) {
      const float x = a[h * rows + r], y = b[h * rows + r];
      const bool same = (std::isinf(x) && std::isinf(y) && (x < 0) == (y < 0)) || std::fabs(x - y) <= 1e-3f;
      if (!same && bad++ < 5) ADD_FAILURE() << label << ": lse[" << h << "][" << r << "] = " << x << ", expected " << y;
    }
  EXPECT_EQ(bad, 0) << label;
}

std::string describe(const VarlenCase& c) {
  std::string s = std::string(c.dtype == NKV_DTYPE_BFLOAT16 ? "bf16" : "fp16") + " d" + std::to_string(c.head_dim) + " h" +
                  std::to_string(c.heads_q) + "/" + std::to_string(c.heads_kv) + (c.options.causal ? " causal" : "") +
                  (c.options.window_left >= 0 ? " window" + std::to_string(c.options.window_left) : "") +
                  (c.options.softcap > 0 ? " softcap" : "") + (c.strided ? " strided" : "") +
                  (c.options.kernel == NKV_ATTENTION_KERNEL_SM80   ? " sm80"
                   : c.options.kernel == NKV_ATTENTION_KERNEL_SM90 ? " sm90"
                                                                   : "") +
                  " lq/lk";
  for (size_t i = 0; i < c.lq.size(); ++i) s += " " + std::to_string(c.lq[i]) + "/" + std::to_string(c.lk[i]);
  return s;
}

struct DecodeCase {
  nkv_dtype dtype = NKV_DTYPE_FLOAT16;
  int32_t heads_q = 32, heads_kv = 8, head_dim = 128, q_len = 1, capacity = 0;
  std::vector<int32_t> seqlens;
  Options options;
  int64_t token_stride_extra = 0;  // e.g. layers interleaved between tokens
};

struct DecodeRun {
  std::vector<uint16_t> o;
  std::vector<float> lse;
};

struct DecodeInputs {
  std::vector<uint16_t> q, k, v;
  int64_t token_stride = 0, batch_stride = 0;
};

DecodeInputs make_decode_inputs(const DecodeCase& c) {
  DecodeInputs in;
  const int64_t batch = static_cast<int64_t>(c.seqlens.size());
  in.token_stride = static_cast<int64_t>(c.heads_kv) * c.head_dim + c.token_stride_extra;
  in.batch_stride = in.token_stride * c.capacity;
  in.q = random_values(c.dtype, static_cast<size_t>(batch * c.q_len * c.heads_q * c.head_dim), 2.0f);
  in.k = random_values(c.dtype, static_cast<size_t>(batch * in.batch_stride), 2.0f);
  in.v = random_values(c.dtype, in.k.size(), 1.0f);
  return in;
}

// Runs one plan `runs` times, poisoning O and LSE again before each later run (a run that skipped an
// output would leave poison); returns the last run's outputs.
DecodeRun run_decode(nkv_context* context, const DecodeCase& c, const DecodeInputs& in, int runs = 1) {
  const nkv_device_type device = device_of(context);
  const int64_t batch = static_cast<int64_t>(c.seqlens.size());
  DecodeRun run;
  run.o.assign(in.q.size(), kPoison);
  run.lse.assign(static_cast<size_t>(batch * c.heads_q * c.q_len), std::numeric_limits<float>::quiet_NaN());
  Placed q(context, in.q.data(), in.q.size() * 2), k(context, in.k.data(), in.k.size() * 2),
      v(context, in.v.data(), in.v.size() * 2), o(context, run.o.data(), run.o.size() * 2),
      lse(context, run.lse.data(), run.lse.size() * 4);
  const nkv_attention_options options = c.options.c();
  nkv_attention_plan* plan = nullptr;
  NKV_ASSERT_OK_RETURN(nkv_attention_plan_decode(context, &options, c.heads_q, c.heads_kv, c.head_dim,
                                                 static_cast<int32_t>(batch), c.q_len, c.seqlens.data(), &plan),
                       run);
  const nkv_tensor tq = view(q.data(), c.dtype, device, {batch, c.q_len, c.heads_q, c.head_dim});
  const std::vector<int64_t> kv_strides = {in.batch_stride, in.token_stride, c.head_dim, 1};
  const nkv_tensor tk = view(k.data(), c.dtype, device, {batch, c.capacity, c.heads_kv, c.head_dim}, kv_strides);
  const nkv_tensor tv = view(v.data(), c.dtype, device, {batch, c.capacity, c.heads_kv, c.head_dim}, kv_strides);
  const nkv_tensor to = view(o.data(), c.dtype, device, {batch, c.q_len, c.heads_q, c.head_dim});
  const nkv_tensor tl = view(lse.data(), NKV_DTYPE_FLOAT32, device, {batch, c.heads_q, c.q_len});
  for (int r = 0; r < runs; ++r) {
    if (r > 0) {
      o.memory->upload(run.o.data(), o.bytes);
      lse.memory->upload(run.lse.data(), lse.bytes);
    }
    EXPECT_EQ(nkv_attention_decode(plan, &tq, &tk, &tv, &to, &tl), NKV_STATUS_SUCCESS) << nkv_last_error();
  }
  run.o = o.read<uint16_t>();
  run.lse = lse.read<float>();
  nkv_attention_plan_destroy(plan);
  return run;
}

// The same values in both layouts: varlen sequences of q_len queries over seqlens keys packed back to
// back, and the decode layout [batch, capacity, heads, d] (unused capacity zero) of those queries and keys.
struct BothLayouts {
  VarlenCase varlen;
  VarlenInputs varlen_inputs;
  DecodeCase decode;
  DecodeInputs decode_inputs;
};

BothLayouts both_layouts(int32_t hq, int32_t hkv, int32_t d, int32_t q_len, int32_t capacity,
                         const std::vector<int32_t>& seqlens) {
  BothLayouts l;
  const int32_t batch = static_cast<int32_t>(seqlens.size());
  l.varlen.heads_q = l.decode.heads_q = hq;
  l.varlen.heads_kv = l.decode.heads_kv = hkv;
  l.varlen.head_dim = l.decode.head_dim = d;
  l.varlen.lq.assign(static_cast<size_t>(batch), q_len);
  l.varlen.lk = l.decode.seqlens = seqlens;
  l.varlen.options.causal = l.decode.options.causal = true;
  l.varlen.extra_rows = 0;
  l.decode.q_len = q_len;
  l.decode.capacity = capacity;
  l.varlen_inputs = make_inputs(l.varlen);
  const VarlenInputs& in = l.varlen_inputs;
  DecodeInputs& out = l.decode_inputs;
  out.token_stride = int64_t{hkv} * d;
  out.batch_stride = out.token_stride * capacity;
  out.q.resize(static_cast<size_t>(batch) * q_len * hq * d);
  out.k.assign(static_cast<size_t>(batch * out.batch_stride), 0);
  out.v = out.k;
  for (int b = 0; b < batch; ++b) {
    for (int t = 0; t < q_len; ++t)
      for (int h = 0; h < hq; ++h)
        for (int x = 0; x < d; ++x) out.q[((b * q_len + t) * hq + h) * d + x] = in.q.at(in.cu_q[b] + t, h, x);
    for (int j = 0; j < seqlens[b]; ++j)
      for (int h = 0; h < hkv; ++h)
        for (int x = 0; x < d; ++x) {
          out.k[b * out.batch_stride + j * out.token_stride + h * d + x] = in.k.at(in.cu_k[b] + j, h, x);
          out.v[b * out.batch_stride + j * out.token_stride + h * d + x] = in.v.at(in.cu_k[b] + j, h, x);
        }
  }
  return l;
}

// ---------------------------------------------------------------------------------------------------
// CPU reference
// ---------------------------------------------------------------------------------------------------

TEST(Attention, CpuMatchesFloat64Model) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  std::vector<VarlenCase> cases;
  for (nkv_dtype dtype : {NKV_DTYPE_FLOAT16, NKV_DTYPE_BFLOAT16}) {
    VarlenCase c;
    c.dtype = dtype;
    c.lq = {0, 1, 17, 40};
    c.lk = {5, 1, 17, 70};
    c.options.causal = true;
    cases.push_back(c);
    c.options = Options{};
    c.options.window_left = 6;
    c.options.softcap = 3.0f;
    c.options.scale = 0.3f;
    c.heads_q = 6;
    c.heads_kv = 1;
    c.strided = true;
    cases.push_back(c);
  }
  for (const VarlenCase& c : cases) {
    const VarlenInputs in = make_inputs(c);
    const Outputs out = run_varlen(cpu.get(), c, in);
    expect_written_exactly(out.o, in.cu_q.back(), describe(c));
    double max_error = 0;
    for (size_t b = 0; b < c.lq.size(); ++b)
      for (int h = 0; h < c.heads_q; ++h)
        for (int i = 0; i < c.lq[b]; ++i) {
          std::vector<double> row;
          double lse = 0;
          model_row(c, in, static_cast<int>(b), h, i, row, lse);
          const int64_t r = in.cu_q[b] + i;
          for (int d = 0; d < c.head_dim; ++d) {
            // The output is the float64 value rounded once to the storage type.
            EXPECT_EQ(out.o.at(r, h, d), from_float(c.dtype, static_cast<float>(row[d]))) << describe(c);
          }
          const float got = out.lse[h * in.q.rows + r];
          if (std::isinf(lse)) {
            EXPECT_TRUE(std::isinf(got) && got < 0) << describe(c);
          } else {
            max_error = std::max(max_error, std::fabs(got - lse));
          }
        }
    EXPECT_LE(max_error, 1e-5) << describe(c);
  }
}

TEST(Attention, CpuDecodeMatchesCpuVarlenOnTheSameData) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  const int32_t q_len = 2, hq = 4;
  const BothLayouts l = both_layouts(hq, 2, 64, q_len, 50, {2, 50, 31});
  const VarlenInputs& in = l.varlen_inputs;
  const Outputs expected = run_varlen(cpu.get(), l.varlen, in);
  const DecodeRun decode = run_decode(cpu.get(), l.decode, l.decode_inputs);
  const int32_t batch = 3, d = 64;
  for (int b = 0; b < batch; ++b)
    for (int t = 0; t < q_len; ++t)
      for (int h = 0; h < hq; ++h) {
        for (int x = 0; x < d; ++x) {
          ASSERT_EQ(decode.o[((b * q_len + t) * hq + h) * d + x], expected.o.at(in.cu_q[b] + t, h, x));
        }
        ASSERT_EQ(decode.lse[(b * hq + h) * q_len + t], expected.lse[h * in.q.rows + in.cu_q[b] + t]);
      }
}

TEST(Attention, OptionsOfTheFirstLayoutAreAccepted) {
  // A caller compiled against the header before `kernel` existed passes struct_size 24: its fields are
  // read, the newer ones default (kernel AUTO), and bytes past its struct are never looked at.
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  const std::vector<int32_t> cu{0, 5};
  nkv_attention_options old = Options{}.c();
  old.struct_size = offsetof(nkv_attention_options, kernel);
  old.causal = 1;
  old.kernel = 99;  // beyond the caller's struct: garbage that must be ignored
  old.kv_page_size = 99;
  nkv_attention_plan* plan = nullptr;
  NKV_ASSERT_OK(nkv_attention_plan_varlen(cpu.get(), &old, 2, 1, 64, 1, cu.data(), cu.data(), &plan));
  nkv_attention_plan_destroy(plan);
}

TEST(Attention, PlanInfoReportsTheWork) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  const std::vector<int32_t> cu_q = {0, 3, 3, 10}, cu_k = {0, 5, 9, 20};
  nkv_attention_plan* plan = nullptr;
  NKV_ASSERT_OK(nkv_attention_plan_varlen(cpu.get(), nullptr, 8, 2, 128, 3, cu_q.data(), cu_k.data(), &plan));
  nkv_attention_plan_info info{};
  info.struct_size = sizeof(info);
  NKV_ASSERT_OK(nkv_attention_plan_get_info(plan, &info));
  EXPECT_EQ(info.kind, NKV_ATTENTION_VARLEN);
  EXPECT_EQ(info.batch, 3);
  EXPECT_EQ(info.total_q, 10);
  EXPECT_EQ(info.total_k, 20);
  EXPECT_EQ(info.max_seqlen_q, 7);
  EXPECT_EQ(info.max_seqlen_k, 11);
  EXPECT_EQ(info.num_splits, 1);
  EXPECT_FLOAT_EQ(info.softmax_scale, 1.0f / std::sqrt(128.0f));
  nkv_attention_plan_destroy(plan);

  const std::vector<int32_t> seqlens = {1000, 0, 64};
  Options fixed;
  fixed.num_splits = 4;
  const nkv_attention_options options = fixed.c();
  NKV_ASSERT_OK(nkv_attention_plan_decode(cpu.get(), &options, 8, 8, 64, 3, 1, seqlens.data(), &plan));
  NKV_ASSERT_OK(nkv_attention_plan_get_info(plan, &info));
  EXPECT_EQ(info.kind, NKV_ATTENTION_DECODE);
  EXPECT_EQ(info.num_splits, 4);
  EXPECT_EQ(info.total_k, 1064);
  EXPECT_EQ(info.q_len, 1);
  nkv_attention_plan_destroy(plan);
}

// ---------------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------------

class AttentionBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    context = make_context(NKV_BACKEND_CPU);
    NKV_ASSERT_OK(nkv_attention_plan_varlen(context.get(), nullptr, hq, hkv, d, 2, cu_q.data(), cu_k.data(), &plan));
    q.assign(static_cast<size_t>(rows * hq * d), 0x3c00);
    k.assign(static_cast<size_t>(rows * hkv * d), 0x3c00);
    v = k;
    o.assign(q.size(), kPoison);
    lse.assign(static_cast<size_t>(hq * rows), 7.0f);
  }
  void TearDown() override { nkv_attention_plan_destroy(plan); }

  nkv_tensor tensor(std::vector<uint16_t>& data, int64_t heads) {
    return view(data.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {rows, heads, d});
  }
  nkv_status run() {
    const nkv_tensor tq = tensor(q, hq), tk = tensor(k, hkv), tv = tensor(v, hkv), to = tensor(o, hq);
    const nkv_tensor tl = view(lse.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {hq, rows});
    return nkv_attention_varlen(plan, &tq, &tk, &tv, &to, &tl);
  }
  void expect_outputs_untouched() {
    EXPECT_TRUE(std::all_of(o.begin(), o.end(), [](uint16_t x) { return x == kPoison; })) << "o was written";
    EXPECT_TRUE(std::all_of(lse.begin(), lse.end(), [](float x) { return x == 7.0f; })) << "lse was written";
  }

  const int32_t hq = 4, hkv = 2, d = 64;
  int64_t rows = 12;
  const std::vector<int32_t> cu_q{0, 5, 12}, cu_k{0, 6, 12};
  ContextPtr context;
  nkv_attention_plan* plan = nullptr;
  std::vector<uint16_t> q, k, v, o;
  std::vector<float> lse;
};

TEST_F(AttentionBadInput, PlanArguments) {
  nkv_attention_plan* p = nullptr;
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), nullptr, 4, 2, 80, 2, cu_q.data(), cu_k.data(), &p),
                    NKV_STATUS_NOT_SUPPORTED, "head_dim");
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), nullptr, 6, 4, 64, 2, cu_q.data(), cu_k.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "multiple of num_heads_kv");
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), nullptr, 0, 1, 64, 2, cu_q.data(), cu_k.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "num_heads_q");
  const std::vector<int32_t> not_monotone{0, 7, 5}, not_from_zero{1, 5, 12};
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), nullptr, 4, 2, 64, 2, not_monotone.data(), cu_k.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "non-decreasing");
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), nullptr, 4, 2, 64, 2, cu_q.data(), not_from_zero.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "entry 0 must be 0");
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), nullptr, 4, 2, 64, 2, nullptr, cu_k.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "cu_seqlens_q");
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), nullptr, 4, 2, 64, -1, cu_q.data(), cu_k.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "batch");
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), nullptr, 4, 2, 64, 2, cu_q.data(), cu_k.data(), nullptr),
                    NKV_STATUS_INVALID_ARGUMENT, "out_plan");
  Options bad;
  bad.num_splits = 2;
  nkv_attention_options o1 = bad.c();
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), &o1, 4, 2, 64, 2, cu_q.data(), cu_k.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "num_splits");
  nkv_attention_options o2 = Options{}.c();
  o2.struct_size = 8;
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), &o2, 4, 2, 64, 2, cu_q.data(), cu_k.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "struct_size");
  nkv_attention_options o3 = Options{}.c();
  o3.softcap = -1.0f;
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), &o3, 4, 2, 64, 2, cu_q.data(), cu_k.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "softcap");
  nkv_attention_options o4 = Options{}.c();
  o4.window_left = -2;
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), &o4, 4, 2, 64, 2, cu_q.data(), cu_k.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "window_left");
  nkv_attention_options o5 = Options{}.c();
  o5.softmax_scale = std::numeric_limits<float>::quiet_NaN();
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), &o5, 4, 2, 64, 2, cu_q.data(), cu_k.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "softmax_scale");
  nkv_attention_options o6 = Options{}.c();
  o6.kernel = 7;
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), &o6, 4, 2, 64, 2, cu_q.data(), cu_k.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "options.kernel");
  o6.kernel = NKV_ATTENTION_KERNEL_SM80;  // a CUDA kernel family on the CPU backend
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), &o6, 4, 2, 64, 2, cu_q.data(), cu_k.data(), &p),
                    NKV_STATUS_NOT_SUPPORTED, "CPU backend");
  o6.kernel = NKV_ATTENTION_KERNEL_AUTO;
  o6.kv_page_size = 16;  // paged K/V is for decode plans
  NKV_EXPECT_STATUS(nkv_attention_plan_varlen(context.get(), &o6, 4, 2, 64, 2, cu_q.data(), cu_k.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "options.kv_page_size");
  const std::vector<int32_t> two{3, 5};
  o6.kv_page_size = 24;
  NKV_EXPECT_STATUS(nkv_attention_plan_decode(context.get(), &o6, 4, 2, 64, 2, 1, two.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "options.kv_page_size");
  o6.kv_page_size = 0;
  const std::vector<int32_t> seqlens{3, -1};
  NKV_EXPECT_STATUS(nkv_attention_plan_decode(context.get(), nullptr, 4, 2, 64, 2, 1, seqlens.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "negative");
  NKV_EXPECT_STATUS(nkv_attention_plan_decode(context.get(), nullptr, 4, 2, 64, 1, 17, seqlens.data(), &p),
                    NKV_STATUS_INVALID_ARGUMENT, "q_len");
  EXPECT_EQ(p, nullptr);
}

TEST_F(AttentionBadInput, LengthsBeyondTheTensors) {
  rows = 11;  // cu_seqlens reach 12
  q.resize(static_cast<size_t>(rows * hq * d));
  o.resize(q.size());
  lse.resize(static_cast<size_t>(hq * rows));
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "needs 12");
  expect_outputs_untouched();
}

TEST_F(AttentionBadInput, TensorChecks) {
  const nkv_tensor tq = tensor(q, hq), tk = tensor(k, hkv), tv = tensor(v, hkv), to = tensor(o, hq);
  const nkv_tensor tl = view(lse.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {hq, rows});
  NKV_EXPECT_STATUS(nkv_attention_varlen(nullptr, &tq, &tk, &tv, &to, &tl), NKV_STATUS_INVALID_ARGUMENT, "plan");
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, nullptr, &tk, &tv, &to, &tl), NKV_STATUS_INVALID_ARGUMENT, "'q'");
  nkv_tensor wrong_heads = tensor(k, hkv);
  wrong_heads.shape[1] = 1;
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &tq, &wrong_heads, &tv, &to, &tl), NKV_STATUS_INVALID_ARGUMENT, "'k'");
  nkv_tensor wrong_dtype = tensor(v, hkv);
  wrong_dtype.dtype = NKV_DTYPE_BFLOAT16;
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &tq, &tk, &wrong_dtype, &to, &tl), NKV_STATUS_INVALID_ARGUMENT, "differs");
  nkv_tensor float_q = tq;
  float_q.dtype = NKV_DTYPE_FLOAT32;
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &float_q, &tk, &tv, &to, &tl), NKV_STATUS_INVALID_ARGUMENT, "'q'");
  nkv_tensor strided_o = to;
  strided_o.strides[1] = d / 2;  // heads overlap
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &tq, &tk, &tv, &strided_o, &tl), NKV_STATUS_INVALID_ARGUMENT, "overlap");
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &tq, &tk, &tv, &tq, &tl), NKV_STATUS_INVALID_ARGUMENT, "overlap");
  nkv_tensor lse_wrong = tl;
  lse_wrong.shape[0] = hkv;
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &tq, &tk, &tv, &to, &lse_wrong), NKV_STATUS_INVALID_ARGUMENT, "'lse'");
  nkv_tensor device_q = tq;
  device_q.device = NKV_DEVICE_CUDA;
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &device_q, &tk, &tv, &to, &tl), NKV_STATUS_INVALID_ARGUMENT, "'q'");
  NKV_EXPECT_STATUS(nkv_attention_decode(plan, &tq, &tk, &tv, &to, &tl), NKV_STATUS_INVALID_ARGUMENT, "varlen plan");
  expect_outputs_untouched();
}

TEST_F(AttentionBadInput, DecodeCapacityTooSmall) {
  const std::vector<int32_t> seqlens{4, 9};
  nkv_attention_plan* decode = nullptr;
  NKV_ASSERT_OK(nkv_attention_plan_decode(context.get(), nullptr, hq, hkv, d, 2, 1, seqlens.data(), &decode));
  std::vector<uint16_t> dq(static_cast<size_t>(2 * hq * d), 0x3c00), dkv(static_cast<size_t>(2 * 8 * hkv * d), 0x3c00),
      dout(dq.size(), kPoison);
  const nkv_tensor tq = view(dq.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {2, 1, hq, d});
  const nkv_tensor tkv = view(dkv.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {2, 8, hkv, d});
  const nkv_tensor to = view(dout.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {2, 1, hq, d});
  NKV_EXPECT_STATUS(nkv_attention_decode(decode, &tq, &tkv, &tkv, &to, nullptr), NKV_STATUS_INVALID_ARGUMENT, "capacity");
  EXPECT_TRUE(std::all_of(dout.begin(), dout.end(), [](uint16_t x) { return x == kPoison; }));
  nkv_attention_plan_destroy(decode);
}

// ---------------------------------------------------------------------------------------------------
// CUDA against the CPU reference
// ---------------------------------------------------------------------------------------------------

void expect_cuda_matches_cpu(const VarlenCase& c) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  const VarlenInputs in = make_inputs(c);
  VarlenCase reference = c;
  reference.options.kernel = NKV_ATTENTION_KERNEL_AUTO;  // the CPU backend has one implementation
  const Outputs expected = run_varlen(cpu.get(), reference, in);
  const Outputs got = run_varlen(gpu.get(), c, in);
  const std::string label = describe(c);
  const int64_t total = in.cu_q.back();
  expect_written_exactly(got.o, total, label);
  const double error = relative_error(c.dtype, got.o, expected.o, total);
  EXPECT_LE(error, tolerance(c.dtype)) << label;
  expect_lse_close(got.lse, expected.lse, in.q.rows, total, c.heads_q, label);
  if (::testing::Test::HasFailure()) std::printf("  %s: relative error %.3g\n", label.c_str(), error);
}

TEST(AttentionCuda, VarlenEveryHeadDimCausalAndNot) {
  NKV_REQUIRE_CUDA();
  for (nkv_dtype dtype : {NKV_DTYPE_FLOAT16, NKV_DTYPE_BFLOAT16})
    for (int32_t d : {64, 96, 128, 256})
      for (bool causal : {false, true}) {
        VarlenCase c;
        c.dtype = dtype;
        c.head_dim = d;
        c.lq = {0, 1, 63, 65, 127, 129, 1000};
        c.lk = {7, 1, 63, 65, 200, 129, 1000};
        c.options.causal = causal;
        expect_cuda_matches_cpu(c);
      }
}

// Whether this build and device run the sm_90a kernel family (a Hopper GPU and a library with sm_90a code).
bool sm90_kernels_available(nkv_context* context) {
  const std::vector<int32_t> cu{0, 4};
  Options o;
  o.kernel = NKV_ATTENTION_KERNEL_SM90;
  const nkv_attention_options options = o.c();
  nkv_attention_plan* plan = nullptr;
  const nkv_status status = nkv_attention_plan_varlen(context, &options, 1, 1, 128, 1, cu.data(), cu.data(), &plan);
  nkv_attention_plan_destroy(plan);
  return status == NKV_STATUS_SUCCESS;
}

// Both kernel families on the same cases where the device has both (AUTO is the Hopper one there).
TEST(AttentionCuda, VarlenKernelFamiliesOnHeadDim64And128) {
  NKV_REQUIRE_CUDA();
  std::vector<nkv_attention_kernel> kernels = {NKV_ATTENTION_KERNEL_SM80};
  ContextPtr probe = make_context(NKV_BACKEND_CUDA);
  if (sm90_kernels_available(probe.get())) kernels.push_back(NKV_ATTENTION_KERNEL_SM90);
  for (nkv_attention_kernel kernel : kernels)
    for (int32_t d : {64, 128})
      for (nkv_dtype dtype : {NKV_DTYPE_FLOAT16, NKV_DTYPE_BFLOAT16})
        for (bool causal : {false, true}) {
          VarlenCase c;
          c.dtype = dtype;
          c.head_dim = d;
          c.heads_q = 8;
          c.heads_kv = 2;
          c.lq = {0, 1, 63, 65, 127, 129, 1000, 300};
          c.lk = {7, 1, 63, 65, 200, 129, 1000, 2000};
          c.options.causal = causal;
          c.options.kernel = kernel;
          expect_cuda_matches_cpu(c);
          c.strided = true;
          c.options.window_left = 100;
          c.options.softcap = 10.0f;
          expect_cuda_matches_cpu(c);
        }
}

// A sequence's output does not depend on another sequence's keys and values, even non-finite ones: key
// tiles reach past a sequence's last key into the next sequence (the sm_90a kernel's tensor maps span
// them all).
TEST(AttentionCuda, VarlenSequencesDoNotLeakIntoEachOther) {
  NKV_REQUIRE_CUDA();
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  std::vector<nkv_attention_kernel> kernels = {NKV_ATTENTION_KERNEL_SM80};
  if (sm90_kernels_available(gpu.get())) kernels.push_back(NKV_ATTENTION_KERNEL_SM90);
  for (nkv_attention_kernel kernel : kernels)
    for (int32_t d : {64, 128})
      for (bool causal : {false, true}) {
        VarlenCase c;
        c.head_dim = d;
        c.lq = {100, 50};
        c.lk = {100, 300};
        c.options.causal = causal;
        c.options.kernel = kernel;
        VarlenInputs in = make_inputs(c);
        for (int64_t r = in.cu_k[1]; r < in.cu_k[2]; ++r)
          for (int64_t h = 0; h < c.heads_kv; ++h)
            for (int64_t x = 0; x < d; ++x) {
              in.k.at(r, h, x) = 0x7E00;  // fp16 NaN
              in.v.at(r, h, x) = 0x7C00;  // fp16 +Inf
            }
        VarlenCase reference = c;
        reference.options.kernel = NKV_ATTENTION_KERNEL_AUTO;
        const Outputs expected = run_varlen(cpu.get(), reference, in);
        const Outputs got = run_varlen(gpu.get(), c, in);
        const std::string label = describe(c);
        const int64_t first = in.cu_q[1];  // the first sequence's rows only: the second one's are NaN by design
        EXPECT_LE(relative_error(c.dtype, got.o, expected.o, first), tolerance(c.dtype)) << label;
        expect_lse_close(got.lse, expected.lse, in.q.rows, first, c.heads_q, label);
      }
}

TEST(AttentionCuda, VarlenLongSequence) {
  NKV_REQUIRE_CUDA();
  VarlenCase c;
  c.head_dim = 128;
  c.heads_q = 2;
  c.heads_kv = 1;
  c.lq = {4097};
  c.lk = {4097};
  c.options.causal = true;
  expect_cuda_matches_cpu(c);
}

TEST(AttentionCuda, VarlenGqaRatios) {
  NKV_REQUIRE_CUDA();
  for (int ratio : {1, 2, 3, 4, 5, 6, 7, 8, 32}) {
    VarlenCase c;
    c.head_dim = 64;
    c.heads_kv = ratio == 32 ? 1 : 2;
    c.heads_q = c.heads_kv * ratio;
    c.lq = {1, 33, 130};
    c.lk = {40, 33, 130};
    c.options.causal = true;
    expect_cuda_matches_cpu(c);
  }
}

TEST(AttentionCuda, VarlenChunkedPrefillMixedWithDecodes) {
  NKV_REQUIRE_CUDA();
  for (nkv_dtype dtype : {NKV_DTYPE_FLOAT16, NKV_DTYPE_BFLOAT16}) {
    VarlenCase c;
    c.dtype = dtype;
    c.head_dim = 128;
    c.heads_q = 8;
    c.heads_kv = 2;
    // A chunk of 512 over a cached prefix, decodes (one query over a cache), a fresh prompt, and a
    // sequence with more queries than keys (its first queries see nothing).
    c.lq = {512, 1, 1, 300, 1, 20};
    c.lk = {1536, 900, 1, 300, 4097, 10};
    c.options.causal = true;
    expect_cuda_matches_cpu(c);
  }
}

TEST(AttentionCuda, VarlenStridedWindowAndSoftcap) {
  NKV_REQUIRE_CUDA();
  for (int32_t d : {64, 128, 256}) {
    VarlenCase c;
    c.head_dim = d;
    c.heads_q = 6;
    c.heads_kv = 2;
    c.lq = {65, 200, 1};
    c.lk = {300, 200, 77};
    c.strided = true;
    c.options.causal = true;
    c.options.window_left = 50;
    c.options.softcap = 5.0f;
    expect_cuda_matches_cpu(c);
    c.options.causal = false;
    c.options.window_left = 100;
    c.options.softcap = 0.0f;
    c.options.scale = 0.05f;
    expect_cuda_matches_cpu(c);
  }
}

void expect_decode_matches_cpu(const DecodeCase& c) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  const DecodeInputs in = make_decode_inputs(c);
  const DecodeRun expected = run_decode(cpu.get(), c, in);
  const DecodeRun got = run_decode(gpu.get(), c, in);
  std::string label = std::string(c.dtype == NKV_DTYPE_BFLOAT16 ? "bf16" : "fp16") + " decode d" +
                      std::to_string(c.head_dim) + " h" + std::to_string(c.heads_q) + "/" + std::to_string(c.heads_kv) +
                      " q_len " + std::to_string(c.q_len) + " splits " + std::to_string(c.options.num_splits) +
                      (c.options.causal ? " causal" : "") + " seqlens";
  for (int32_t s : c.seqlens) label += " " + std::to_string(s);
  double diff = 0, norm = 0;
  int64_t unwritten = 0;
  for (size_t i = 0; i < got.o.size(); ++i) {
    if (got.o[i] == kPoison) ++unwritten;
    const double x = to_float(c.dtype, got.o[i]), y = to_float(c.dtype, expected.o[i]);
    diff += (x - y) * (x - y);
    norm += y * y;
  }
  EXPECT_EQ(unwritten, 0) << label;
  const double error = norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
  EXPECT_LE(error, tolerance(c.dtype)) << label;
  expect_lse_close(got.lse, expected.lse, static_cast<int64_t>(got.lse.size()), static_cast<int64_t>(got.lse.size()), 1,
                   label);
  if (::testing::Test::HasFailure()) std::printf("  %s: relative error %.3g\n", label.c_str(), error);
}

TEST(AttentionCuda, DecodeEveryHeadDimAndSplit) {
  NKV_REQUIRE_CUDA();
  for (nkv_dtype dtype : {NKV_DTYPE_FLOAT16, NKV_DTYPE_BFLOAT16})
    for (int32_t d : {64, 96, 128, 256})
      for (int32_t splits : {0, 1, 3}) {
        DecodeCase c;
        c.dtype = dtype;
        c.head_dim = d;
        c.heads_q = 8;
        c.heads_kv = 2;
        c.seqlens = {0, 1, 63, 65, 1000, 4097};
        c.capacity = 4100;
        c.options.num_splits = splits;
        expect_decode_matches_cpu(c);
      }
}

TEST(AttentionCuda, DecodeSpeculativeQueriesGqaAndInterleavedLayers) {
  NKV_REQUIRE_CUDA();
  for (int32_t q_len : {1, 3, 16})
    for (auto heads : {std::pair<int, int>{32, 8}, {32, 1}, {7, 7}, {12, 2}}) {
      DecodeCase c;
      c.heads_q = heads.first;
      c.heads_kv = heads.second;
      c.q_len = q_len;
      c.seqlens = {700, 16, 2049};
      c.capacity = 2100;
      c.token_stride_extra = 4 * c.heads_kv * c.head_dim;  // four other layers between tokens
      c.options.causal = true;
      expect_decode_matches_cpu(c);
    }
}

TEST(AttentionCuda, DecodeWindowAndSoftcap) {
  NKV_REQUIRE_CUDA();
  DecodeCase c;
  c.q_len = 4;
  c.seqlens = {300, 5000};
  c.capacity = 5000;
  c.options.causal = true;
  c.options.window_left = 256;
  c.options.softcap = 30.0f;
  expect_decode_matches_cpu(c);
}

TEST(AttentionCuda, DecodeEdgeSplitsAndMasks) {
  NKV_REQUIRE_CUDA();
  // More queries than keys under a causal mask (the first queries see nothing), and a window with a fixed
  // split count, so that whole splits of a sequence are masked out and merge with weight 0.
  DecodeCase c;
  c.heads_q = 8;
  c.heads_kv = 2;
  c.q_len = 8;
  c.seqlens = {3, 0, 8, 2000};
  c.capacity = 2000;
  c.options.causal = true;
  expect_decode_matches_cpu(c);
  c.options.num_splits = 5;
  c.options.window_left = 100;
  expect_decode_matches_cpu(c);
  c.options.causal = false;
  c.options.window_left = 0;
  c.options.num_splits = 16;
  expect_decode_matches_cpu(c);
}

TEST(AttentionCuda, DecodeOneSequenceOf256KTokens) {
  NKV_REQUIRE_CUDA();
  DecodeCase c;
  c.heads_q = 8;
  c.heads_kv = 1;
  c.seqlens = {262144};
  c.capacity = 262144;
  expect_decode_matches_cpu(c);
}

// A decode plan for case c with Q, O (poisoned) and LSE (NaN) placed on the context and viewed: what a test
// needs around a decode call over K/V laid out its own way. plan is null when planning failed.
struct DecodeCall {
  Placed q, o, lse;
  nkv_attention_plan* plan = nullptr;
  nkv_tensor tq{}, to{}, tl{};
  DecodeCall(nkv_context* context, const DecodeCase& c, const DecodeInputs& in)
      : q(context, in.q.data(), in.q.size() * 2),
        o(context, std::vector<uint16_t>(in.q.size(), kPoison).data(), in.q.size() * 2),
        lse(context, std::vector<float>(c.seqlens.size() * c.heads_q * c.q_len, std::numeric_limits<float>::quiet_NaN()).data(),
            c.seqlens.size() * c.heads_q * c.q_len * 4) {
    const int64_t batch = static_cast<int64_t>(c.seqlens.size());
    const nkv_device_type device = device_of(context);
    const nkv_attention_options options = c.options.c();
    EXPECT_EQ(nkv_attention_plan_decode(context, &options, c.heads_q, c.heads_kv, c.head_dim, static_cast<int32_t>(batch), c.q_len,
                                        c.seqlens.data(), &plan),
              NKV_STATUS_SUCCESS)
        << nkv_last_error();
    tq = view(q.data(), c.dtype, device, {batch, c.q_len, c.heads_q, c.head_dim});
    to = view(o.data(), c.dtype, device, {batch, c.q_len, c.heads_q, c.head_dim});
    tl = view(lse.data(), NKV_DTYPE_FLOAT32, device, {batch, c.heads_q, c.q_len});
  }
  ~DecodeCall() { nkv_attention_plan_destroy(plan); }
  DecodeCall(const DecodeCall&) = delete;
  DecodeCall& operator=(const DecodeCall&) = delete;
  DecodeRun read() const { return {o.read<uint16_t>(), lse.read<float>()}; }
};

// Two speculative queries of 8 heads over 2 KV heads of 64, causal, over up to 300 keys: the decode of the tests
// that lay the same keys out their own ways.
DecodeCase small_causal_decode(std::vector<int32_t> seqlens) {
  DecodeCase c;
  c.heads_q = 8;
  c.heads_kv = 2;
  c.head_dim = 64;
  c.q_len = 2;
  c.seqlens = std::move(seqlens);
  c.capacity = 300;
  c.options.causal = true;
  return c;
}

// Decode through a base-pointer table against decode over the batch layout, on the same values: sequences
// stored apart, in reverse order, with a token stride larger than heads x head_dim. Both must give the same bits.
void expect_pointer_table_matches_batch_layout(nkv_backend backend) {
  ContextPtr context = make_context(backend);
  const nkv_device_type device = device_of(context.get());
  const DecodeCase c = small_causal_decode({70, 1, 300, 0});
  const DecodeInputs in = make_decode_inputs(c);
  const DecodeRun expected = run_decode(context.get(), c, in);

  const int64_t batch = static_cast<int64_t>(c.seqlens.size());
  const int64_t token_stride = in.token_stride + 16;  // not the batch layout's stride
  std::vector<int64_t> offsets(static_cast<size_t>(batch));
  int64_t total = 0;
  for (int64_t b = batch - 1; b >= 0; --b) {  // last sequence first in memory
    offsets[b] = total;
    total += std::max<int64_t>(c.seqlens[b], 1) * token_stride + 64;
  }
  std::vector<uint16_t> k(static_cast<size_t>(total), kPoison), v(k.size(), kPoison);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < c.seqlens[b]; ++j)
      for (int64_t x = 0; x < c.heads_kv * c.head_dim; ++x) {
        k[offsets[b] + j * token_stride + x] = in.k[b * in.batch_stride + j * in.token_stride + x];
        v[offsets[b] + j * token_stride + x] = in.v[b * in.batch_stride + j * in.token_stride + x];
      }
  Placed pk(context.get(), k.data(), k.size() * 2), pv(context.get(), v.data(), v.size() * 2);
  std::vector<int64_t> k_table(static_cast<size_t>(batch)), v_table(k_table.size());
  for (int64_t b = 0; b < batch; ++b) {
    k_table[b] = reinterpret_cast<int64_t>(static_cast<char*>(pk.data()) + offsets[b] * 2);
    v_table[b] = reinterpret_cast<int64_t>(static_cast<char*>(pv.data()) + offsets[b] * 2);
  }
  Placed tk(context.get(), k_table.data(), k_table.size() * 8), tv(context.get(), v_table.data(), v_table.size() * 8);
  DecodeCall call(context.get(), c, in);
  ASSERT_NE(call.plan, nullptr);
  nkv_attention_plan* plan = call.plan;
  const nkv_tensor &tq = call.tq, &to = call.to, &tl = call.tl;
  const nkv_tensor k_pointers = view(tk.data(), NKV_DTYPE_INT64, device, {batch});
  const nkv_tensor v_pointers = view(tv.data(), NKV_DTYPE_INT64, device, {batch});
  NKV_ASSERT_OK(nkv_attention_decode_kv_pointers(plan, &tq, &k_pointers, &v_pointers, token_stride, c.head_dim, &to, &tl));
  const DecodeRun got = call.read();
  EXPECT_EQ(got.o, expected.o);
  EXPECT_EQ(0, std::memcmp(got.lse.data(), expected.lse.data(), got.lse.size() * 4));

  // Bad tables and strides: status, message, outputs untouched.
  nkv_tensor int32_table = k_pointers;
  int32_table.dtype = NKV_DTYPE_INT32;
  NKV_EXPECT_STATUS(nkv_attention_decode_kv_pointers(plan, &tq, &int32_table, &v_pointers, token_stride, c.head_dim, &to, &tl),
                    NKV_STATUS_INVALID_ARGUMENT, "k_pointers");
  nkv_tensor short_table = v_pointers;
  short_table.shape[0] = batch - 1;
  NKV_EXPECT_STATUS(nkv_attention_decode_kv_pointers(plan, &tq, &k_pointers, &short_table, token_stride, c.head_dim, &to, &tl),
                    NKV_STATUS_INVALID_ARGUMENT, "v_pointers");
  NKV_EXPECT_STATUS(nkv_attention_decode_kv_pointers(plan, &tq, &k_pointers, &v_pointers, -8, c.head_dim, &to, &tl),
                    NKV_STATUS_INVALID_ARGUMENT, "token_stride");
  NKV_EXPECT_STATUS(nkv_attention_decode_kv_pointers(plan, &tq, &k_pointers, &v_pointers, token_stride, c.head_dim, &to, &to),
                    NKV_STATUS_INVALID_ARGUMENT, "'lse'");
  EXPECT_EQ(call.read().o, got.o);
}

// Varlen over batched K/V ([batch, capacity, heads, d], a virtual-memory cache's views; with block_tokens > 0
// [batch, blocks, block_tokens, heads, d], the token-major cache's) against varlen over the same keys packed:
// sequences in entries with a wide token stride (layers interleaved), poison past each sequence's keys and
// between blocks. The SM80 family runs both on CUDA, so the bits must match.
void expect_batched_kv_matches_packed(nkv_backend backend, int64_t block_tokens = 0) {
  ContextPtr context = make_context(backend);
  const nkv_device_type device = device_of(context.get());
  VarlenCase c;
  c.heads_q = 8;
  c.heads_kv = 2;
  c.head_dim = 64;
  c.lk = {200, 0, 1, 1000, 64};
  c.lq = {200, 0, 1, 37, 64};  // prefill, an empty sequence, a decode, a chunk over a cached prefix
  c.options.causal = true;
  if (backend == NKV_BACKEND_CUDA) c.options.kernel = NKV_ATTENTION_KERNEL_SM80;
  const VarlenInputs in = make_inputs(c);
  const Outputs expected = run_varlen(context.get(), c, in);

  const int64_t batch = static_cast<int64_t>(c.lk.size()), capacity = 1000 + 70, row = c.heads_kv * c.head_dim;
  const int64_t token_stride = 3 * row;
  const int64_t blocks = block_tokens > 0 ? (capacity + block_tokens - 1) / block_tokens : 0;
  const int64_t block_stride = block_tokens * token_stride + 24;
  const int64_t batch_stride = (block_tokens > 0 ? blocks * block_stride : capacity * token_stride) + 64;
  auto token_at = [&](int64_t t) { return block_tokens > 0 ? t / block_tokens * block_stride + t % block_tokens * token_stride : t * token_stride; };
  std::vector<uint16_t> k(static_cast<size_t>(batch * batch_stride), 0x7E00), v(k.size(), 0x7C00);  // NaN, +Inf past the keys
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < c.lk[b]; ++t)
      for (int64_t h = 0; h < c.heads_kv; ++h)
        for (int64_t x = 0; x < c.head_dim; ++x) {
          k[b * batch_stride + token_at(t) + h * c.head_dim + x] = in.k.at(in.cu_k[b] + t, h, x);
          v[b * batch_stride + token_at(t) + h * c.head_dim + x] = in.v.at(in.cu_k[b] + t, h, x);
        }
  Placed pk(context.get(), k.data(), k.size() * 2), pv(context.get(), v.data(), v.size() * 2);
  Outputs got;
  got.o = HeadTensor(in.q.rows, c.heads_q, c.head_dim, false);
  got.lse.assign(expected.lse.size(), std::numeric_limits<float>::quiet_NaN());
  Placed q(context.get(), in.q.data.data(), in.q.data.size() * 2), o(context.get(), got.o.data.data(), got.o.data.size() * 2),
      lse(context.get(), got.lse.data(), got.lse.size() * 4);
  const nkv_attention_options options = c.options.c();
  nkv_attention_plan* plan = nullptr;
  NKV_ASSERT_OK(nkv_attention_plan_varlen(context.get(), &options, c.heads_q, c.heads_kv, c.head_dim,
                                          static_cast<int32_t>(batch), in.cu_q.data(), in.cu_k.data(), &plan));
  const nkv_tensor tq = in.q.view_at(q.data(), c.dtype, device);
  const nkv_tensor to = got.o.view_at(o.data(), c.dtype, device);
  const nkv_tensor tl = view(lse.data(), NKV_DTYPE_FLOAT32, device, {c.heads_q, in.q.rows});
  const nkv_tensor tk = block_tokens > 0 ? view(pk.data(), c.dtype, device, {batch, blocks, block_tokens, c.heads_kv, c.head_dim},
                                                 {batch_stride, block_stride, token_stride, c.head_dim, 1})
                                          : view(pk.data(), c.dtype, device, {batch, capacity, c.heads_kv, c.head_dim},
                                                 {batch_stride, token_stride, c.head_dim, 1});
  nkv_tensor tv = tk;
  tv.data = pv.data();
  NKV_ASSERT_OK(nkv_attention_varlen(plan, &tq, &tk, &tv, &to, &tl));
  const std::vector<uint16_t> got_o = o.read<uint16_t>();
  for (int64_t r = 0; r < in.cu_q.back(); ++r)
    for (int64_t h = 0; h < c.heads_q; ++h)
      for (int64_t x = 0; x < c.head_dim; ++x) {
        ASSERT_EQ(got_o[r * got.o.row_stride + h * got.o.head_stride + x], expected.o.at(r, h, x)) << "row " << r << " head " << h;
      }
  const std::vector<float> got_lse = lse.read<float>();
  for (int64_t h = 0; h < c.heads_q; ++h)
    for (int64_t r = 0; r < in.cu_q.back(); ++r) {
      const size_t i = static_cast<size_t>(h * in.q.rows + r);
      ASSERT_EQ(0, std::memcmp(&got_lse[i], &expected.lse[i], 4)) << "lse row " << r << " head " << h;
    }

  // Shapes that do not fit the plan: status, message, output untouched.
  nkv_tensor short_capacity = tk;
  short_capacity.shape[1] = block_tokens > 0 ? 999 / block_tokens : 999;
  nkv_tensor v_short = tv;
  v_short.shape[1] = short_capacity.shape[1];
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &tq, &short_capacity, &v_short, &to, &tl), NKV_STATUS_INVALID_ARGUMENT,
                    "capacity of " + std::to_string(block_tokens > 0 ? 999 / block_tokens * block_tokens : 999));
  if (block_tokens > 0) {
    nkv_tensor v_other_blocks = tv;
    v_other_blocks.shape[1] = blocks * 2;
    v_other_blocks.shape[2] = (block_tokens + 1) / 2;
    NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &tq, &tk, &v_other_blocks, &to, &tl), NKV_STATUS_INVALID_ARGUMENT, "'v'");
  }
  nkv_tensor wrong_batch = tk;
  wrong_batch.shape[0] = batch - 1;
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &tq, &wrong_batch, &tv, &to, &tl), NKV_STATUS_INVALID_ARGUMENT, "'k'");
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &tq, &tk, &v_short, &to, &tl), NKV_STATUS_INVALID_ARGUMENT, "'v'");
  EXPECT_EQ(o.read<uint16_t>(), got_o);
  nkv_attention_plan_destroy(plan);
  if (backend == NKV_BACKEND_CUDA && sm90_kernels_available(context.get())) {
    const nkv_attention_options sm90{sizeof(nkv_attention_options), 1, 0.0f, 0.0f, -1, 0, NKV_ATTENTION_KERNEL_SM90, 0, 0};
    NKV_ASSERT_OK(nkv_attention_plan_varlen(context.get(), &sm90, c.heads_q, c.heads_kv, c.head_dim,
                                            static_cast<int32_t>(batch), in.cu_q.data(), in.cu_k.data(), &plan));
    NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &tq, &tk, &tv, &to, &tl), NKV_STATUS_NOT_SUPPORTED, "SM80");
    nkv_attention_plan_destroy(plan);
  }
}

TEST(Attention, CpuVarlenOverBatchedKvMatchesPackedKv) { expect_batched_kv_matches_packed(NKV_BACKEND_CPU); }

TEST(AttentionCuda, VarlenOverBatchedKvMatchesPackedKv) {
  NKV_REQUIRE_CUDA();
  expect_batched_kv_matches_packed(NKV_BACKEND_CUDA);
}

// Blocks of 16 tokens (the token-major cache's, a power of two) and of 7 and 1 (the division by multiply).
TEST(Attention, CpuVarlenOverKeyBlocksMatchesPackedKv) {
  for (int64_t tokens : {16, 7, 1}) expect_batched_kv_matches_packed(NKV_BACKEND_CPU, tokens);
}

TEST(AttentionCuda, VarlenOverKeyBlocksMatchesPackedKv) {
  NKV_REQUIRE_CUDA();
  for (int64_t tokens : {16, 7, 1}) expect_batched_kv_matches_packed(NKV_BACKEND_CUDA, tokens);
}

// Decode over K/V in blocks, [batch, blocks, tokens, heads, d] with poison between the blocks, equals decode
// over the batch layout bit for bit (the same kernel with the row arithmetic of KeyBlocks), causal or with a
// sliding window (whose first tile starts inside a piece).
void expect_key_blocks_match_the_batch_layout(nkv_backend backend, int64_t block_tokens, int32_t window_left = -1) {
  ContextPtr context = make_context(backend);
  const nkv_device_type device = device_of(context.get());
  DecodeCase c = small_causal_decode({70, 1, 300, 0, 129});
  c.options.num_splits = 3;
  c.options.window_left = window_left;
  const DecodeInputs in = make_decode_inputs(c);
  const DecodeRun expected = run_decode(context.get(), c, in);

  const int64_t batch = static_cast<int64_t>(c.seqlens.size());
  const int64_t blocks = (c.capacity + block_tokens - 1) / block_tokens;
  const int64_t block_stride = block_tokens * in.token_stride + 40, batch_stride = blocks * block_stride + 8;
  std::vector<uint16_t> k(static_cast<size_t>(batch * batch_stride), kPoison), v(k.size(), kPoison);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < c.seqlens[b]; ++j)
      for (int64_t x = 0; x < c.heads_kv * c.head_dim; ++x) {
        const int64_t at = b * batch_stride + j / block_tokens * block_stride + j % block_tokens * in.token_stride + x;
        k[at] = in.k[b * in.batch_stride + j * in.token_stride + x];
        v[at] = in.v[b * in.batch_stride + j * in.token_stride + x];
      }
  Placed pk(context.get(), k.data(), k.size() * 2), pv(context.get(), v.data(), v.size() * 2);
  DecodeCall call(context.get(), c, in);
  ASSERT_NE(call.plan, nullptr);
  nkv_attention_plan* plan = call.plan;
  const nkv_tensor &tq = call.tq, &to = call.to, &tl = call.tl;
  const nkv_tensor tk = view(pk.data(), c.dtype, device, {batch, blocks, block_tokens, c.heads_kv, c.head_dim},
                             {batch_stride, block_stride, in.token_stride, c.head_dim, 1});
  nkv_tensor tv = tk;
  tv.data = pv.data();
  NKV_ASSERT_OK(nkv_attention_decode(plan, &tq, &tk, &tv, &to, &tl));
  const DecodeRun got = call.read();
  EXPECT_EQ(got.o, expected.o) << block_tokens << " tokens per block";
  EXPECT_EQ(0, std::memcmp(got.lse.data(), expected.lse.data(), got.lse.size() * 4));

  // K and V cut differently, or too few tokens per entry: status, message, outputs untouched.
  nkv_tensor v_other_blocks = tv;
  v_other_blocks.shape[1] = blocks + 1;
  NKV_EXPECT_STATUS(nkv_attention_decode(plan, &tq, &tk, &v_other_blocks, &to, &tl), NKV_STATUS_INVALID_ARGUMENT, "'v'");
  nkv_tensor k_short = tk, v_short = tv;
  k_short.shape[1] = v_short.shape[1] = 299 / block_tokens;
  NKV_EXPECT_STATUS(nkv_attention_decode(plan, &tq, &k_short, &v_short, &to, &tl), NKV_STATUS_INVALID_ARGUMENT, "capacity");
  EXPECT_EQ(call.read().o, got.o);
}

// Blocks that nest in the 64-key tiles (16, 1), hold whole tiles (64, 128) or neither (7).
TEST(Attention, CpuDecodeOverKeyBlocksMatchesTheBatchLayout) {
  for (int64_t tokens : {16, 7, 1, 128}) expect_key_blocks_match_the_batch_layout(NKV_BACKEND_CPU, tokens);
  expect_key_blocks_match_the_batch_layout(NKV_BACKEND_CPU, 16, 90);
}

TEST(AttentionCuda, DecodeOverKeyBlocksMatchesTheBatchLayout) {
  NKV_REQUIRE_CUDA();
  for (int64_t tokens : {16, 7, 1, 64, 128}) expect_key_blocks_match_the_batch_layout(NKV_BACKEND_CUDA, tokens);
  for (int64_t tokens : {16, 7}) expect_key_blocks_match_the_batch_layout(NKV_BACKEND_CUDA, tokens, 90);
}

// The division by multiply-high of KeyBlocks against integer division, over every dividend a sequence can
// have near the block boundaries and the ends of the int32 range.
TEST(Attention, KeyBlocksDivideExactly) {
  for (int32_t tokens = 1; tokens <= 4096; tokens = tokens < 64 ? tokens + 1 : tokens * 3 / 2) {
    const nkv::KeyBlocks blocks = nkv::key_blocks(tokens, 0, 0, 0, 0);
    for (int64_t base : {int64_t{0}, int64_t{tokens} * 1000, int64_t{1} << 30, (int64_t{1} << 31) - 3 * int64_t{tokens}}) {
      for (int64_t t = std::max<int64_t>(0, base - tokens); t < std::min<int64_t>(int64_t{1} << 31, base + 2 * tokens); ++t) {
        ASSERT_EQ(blocks.block_of(static_cast<int32_t>(t)), t / tokens) << t << " / " << tokens;
      }
    }
  }
}

TEST(Attention, CpuDecodeThroughAPointerTableMatchesTheBatchLayout) {
  expect_pointer_table_matches_batch_layout(NKV_BACKEND_CPU);
}

TEST(AttentionCuda, DecodeThroughAPointerTableMatchesTheBatchLayout) {
  NKV_REQUIRE_CUDA();
  expect_pointer_table_matches_batch_layout(NKV_BACKEND_CUDA);
}

TEST(AttentionCuda, DecodeWithFixedSplitsIsDeterministic) {
  NKV_REQUIRE_CUDA();
  DecodeCase c;
  c.seqlens = {3000, 10000};
  c.capacity = 10000;
  c.options.num_splits = 7;
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  const DecodeInputs in = make_decode_inputs(c);
  const DecodeRun a = run_decode(gpu.get(), c, in);
  const DecodeRun b = run_decode(gpu.get(), c, in);
  EXPECT_EQ(a.o, b.o);
  EXPECT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * 4));
  // The same plan run again (its merge counters must be back at zero after each run) writes the same bits,
  // also with several row blocks per piece (16 queries x 4 heads per KV head: 64 packed rows).
  const DecodeRun again = run_decode(gpu.get(), c, in, 3);
  EXPECT_EQ(a.o, again.o);
  EXPECT_EQ(0, std::memcmp(a.lse.data(), again.lse.data(), a.lse.size() * 4));
  c.q_len = 16;
  const DecodeInputs many_rows = make_decode_inputs(c);
  const DecodeRun once = run_decode(gpu.get(), c, many_rows);
  const DecodeRun thrice = run_decode(gpu.get(), c, many_rows, 3);
  EXPECT_EQ(once.o, thrice.o);
  EXPECT_EQ(0, std::memcmp(once.lse.data(), thrice.lse.data(), once.lse.size() * 4));
}

TEST(AttentionCuda, DecodeMatchesVarlenOnTheSameData) {
  NKV_REQUIRE_CUDA();
  // The same queries and keys through both CUDA ops.
  const int32_t batch = 3, q_len = 3, hq = 8, d = 128;
  const BothLayouts l = both_layouts(hq, 2, d, q_len, 3000, {5, 2999, 1200});
  const VarlenInputs& in = l.varlen_inputs;
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  const Outputs varlen = run_varlen(gpu.get(), l.varlen, in);
  const DecodeRun decode = run_decode(gpu.get(), l.decode, l.decode_inputs);
  double diff = 0, norm = 0;
  for (int b = 0; b < batch; ++b)
    for (int t = 0; t < q_len; ++t)
      for (int h = 0; h < hq; ++h)
        for (int x = 0; x < d; ++x) {
          const double a = to_float(l.varlen.dtype, decode.o[((b * q_len + t) * hq + h) * d + x]);
          const double e = to_float(l.varlen.dtype, varlen.o.at(in.cu_q[b] + t, h, x));
          diff += (a - e) * (a - e);
          norm += e * e;
        }
  EXPECT_LE(std::sqrt(diff / norm), 1e-3);
}

TEST(Attention, CpuTakesViewsOfAnyElementAlignment) {
  // The CUDA kernels need 16-byte vectors; the CPU backend reads element by element and must not care.
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  VarlenCase c;
  c.lq = {3, 9};
  c.lk = {3, 9};
  c.options.causal = true;
  c.extra_rows = 0;
  const VarlenInputs in = make_inputs(c);
  const Outputs expected = run_varlen(cpu.get(), c, in);
  // The same data one element further into memory, with row strides that are not multiples of 8.
  const int64_t row = c.heads_q * c.head_dim + 1, row_kv = c.heads_kv * c.head_dim + 1, rows = 12;
  std::vector<uint16_t> q(static_cast<size_t>(rows * row + 1)), k(static_cast<size_t>(rows * row_kv + 1)), v(k.size()),
      o(q.size(), kPoison);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < c.heads_q; ++h)
      for (int64_t x = 0; x < c.head_dim; ++x) q[1 + r * row + h * c.head_dim + x] = in.q.at(r, h, x);
    for (int64_t h = 0; h < c.heads_kv; ++h)
      for (int64_t x = 0; x < c.head_dim; ++x) {
        k[1 + r * row_kv + h * c.head_dim + x] = in.k.at(r, h, x);
        v[1 + r * row_kv + h * c.head_dim + x] = in.v.at(r, h, x);
      }
  }
  nkv_attention_plan* plan = nullptr;
  const nkv_attention_options options = c.options.c();
  NKV_ASSERT_OK(nkv_attention_plan_varlen(cpu.get(), &options, c.heads_q, c.heads_kv, c.head_dim, 2, in.cu_q.data(),
                                          in.cu_k.data(), &plan));
  const nkv_tensor tq = view(q.data() + 1, NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {rows, c.heads_q, c.head_dim}, {row, c.head_dim, 1});
  const nkv_tensor tk = view(k.data() + 1, NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {rows, c.heads_kv, c.head_dim}, {row_kv, c.head_dim, 1});
  const nkv_tensor tv = view(v.data() + 1, NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {rows, c.heads_kv, c.head_dim}, {row_kv, c.head_dim, 1});
  const nkv_tensor to = view(o.data() + 1, NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {rows, c.heads_q, c.head_dim}, {row, c.head_dim, 1});
  NKV_ASSERT_OK(nkv_attention_varlen(plan, &tq, &tk, &tv, &to, nullptr));
  nkv_attention_plan_destroy(plan);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < c.heads_q; ++h)
      for (int64_t x = 0; x < c.head_dim; ++x) ASSERT_EQ(o[1 + r * row + h * c.head_dim + x], expected.o.at(r, h, x));
}

TEST(AttentionCuda, MisalignedViewsAreRejectedOnCuda) {
  NKV_REQUIRE_CUDA();
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  const std::vector<int32_t> cu{0, 4};
  nkv_attention_plan* plan = nullptr;
  NKV_ASSERT_OK(nkv_attention_plan_varlen(gpu.get(), nullptr, 1, 1, 64, 1, cu.data(), cu.data(), &plan));
  Memory in(gpu.get(), 8 * 64 * 2 + 64), out(gpu.get(), 8 * 64 * 2 + 64);
  const nkv_tensor t = view(in.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_CUDA, {4, 1, 64});
  const nkv_tensor o = view(out.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_CUDA, {4, 1, 64});
  nkv_tensor shifted = t;
  shifted.data = static_cast<char*>(in.data()) + 2;
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &shifted, &t, &t, &o, nullptr), NKV_STATUS_INVALID_ARGUMENT, "aligned");
  nkv_tensor odd_rows = t;
  odd_rows.strides[0] = 68;  // rows 136 bytes apart
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &t, &odd_rows, &t, &o, nullptr), NKV_STATUS_INVALID_ARGUMENT, "multiple of 8");
  nkv_attention_plan_destroy(plan);
}

TEST(AttentionCuda, KernelFamilies) {
  NKV_REQUIRE_CUDA();
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  const std::vector<int32_t> cu{0, 4};
  Options o;
  nkv_attention_options options = o.c();
  options.kernel = NKV_ATTENTION_KERNEL_SM80;
  nkv_attention_plan* plan = nullptr;
  NKV_ASSERT_OK(nkv_attention_plan_varlen(gpu.get(), &options, 1, 1, 64, 1, cu.data(), cu.data(), &plan));
  nkv_attention_plan_destroy(plan);
  plan = nullptr;
  options.kernel = NKV_ATTENTION_KERNEL_SM90;
  NKV_EXPECT_STATUS(nkv_attention_plan_decode(gpu.get(), &options, 1, 1, 64, 1, 1, cu.data() + 1, &plan),
                    NKV_STATUS_NOT_SUPPORTED, "decode");
  EXPECT_EQ(plan, nullptr);
  // The sm_90a family needs Hopper (and sm_90a code in the library), and covers head_dim 64 and 128 there.
  if (sm90_kernels_available(gpu.get())) {
    NKV_EXPECT_STATUS(nkv_attention_plan_varlen(gpu.get(), &options, 1, 1, 96, 1, cu.data(), cu.data(), &plan),
                      NKV_STATUS_NOT_SUPPORTED, "head_dim 64");
  } else {
    NKV_EXPECT_STATUS(nkv_attention_plan_varlen(gpu.get(), &options, 1, 1, 128, 1, cu.data(), cu.data(), &plan),
                      NKV_STATUS_NOT_SUPPORTED, "Hopper");
  }
  EXPECT_EQ(plan, nullptr);
}

TEST(AttentionCuda, HostTensorsOnACudaPlanAreRejected) {
  NKV_REQUIRE_CUDA();
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  const std::vector<int32_t> cu{0, 4};
  nkv_attention_plan* plan = nullptr;
  NKV_ASSERT_OK(nkv_attention_plan_varlen(gpu.get(), nullptr, 1, 1, 64, 1, cu.data(), cu.data(), &plan));
  std::vector<uint16_t> host(4 * 64, 0x3c00), out(host.size(), kPoison);
  const nkv_tensor t = view(host.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {4, 1, 64});
  const nkv_tensor o = view(out.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {4, 1, 64});
  NKV_EXPECT_STATUS(nkv_attention_varlen(plan, &t, &t, &t, &o, nullptr), NKV_STATUS_INVALID_ARGUMENT, "'q'");
  nkv_attention_plan_destroy(plan);
}

}  // namespace
