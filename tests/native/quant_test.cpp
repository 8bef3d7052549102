// int8 vector-wise quantization: CPU numerics against an fp64 model, CUDA bit-exact against the CPU
// reference, every bad-input path of both C functions.
#include <cmath>
#include <limits>
#include <tuple>

#include "core/float_bits.h"
#include "test_support.h"

using namespace nkv_test;

namespace {

struct Matrix {  // host data in the input dtype's bit pattern, plus its float values
  nkv_dtype dtype;
  int64_t rows, cols, row_stride;
  std::vector<uint8_t> bytes;
  std::vector<float> values;  // [rows, cols], what the input dtype represents
};

size_t dtype_bytes(nkv_dtype d) { return nkv_dtype_size(d); }

void set_value(Matrix& m, int64_t r, int64_t c, float x) {
  const int64_t i = r * m.row_stride + c;
  float stored = x;
  if (m.dtype == NKV_DTYPE_FLOAT16) {
    const uint16_t h = nkv::float_to_half(x);
    std::memcpy(&m.bytes[i * 2], &h, 2);
    stored = nkv::half_to_float(h);
  } else if (m.dtype == NKV_DTYPE_BFLOAT16) {
    const uint16_t h = nkv::float_to_bfloat16(x);
    std::memcpy(&m.bytes[i * 2], &h, 2);
    stored = nkv::bfloat16_to_float(h);
  } else {
    std::memcpy(&m.bytes[i * 4], &x, 4);
  }
  m.values[r * m.cols + c] = stored;
}

// Normal values with a few large ones per row so absmax varies; the padding between rows is poison.
Matrix random_matrix(nkv_dtype dtype, int64_t rows, int64_t cols, int64_t padding = 0) {
  Matrix m{dtype, rows, cols, cols + padding, {}, {}};
  m.bytes.assign(static_cast<size_t>(std::max<int64_t>(rows * m.row_stride, 1)) * dtype_bytes(dtype), 0x7f);
  m.values.assign(static_cast<size_t>(rows * cols), 0.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> row_scale(0.01f, 100.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float s = row_scale(rng());
    for (int64_t c = 0; c < cols; ++c) set_value(m, r, c, normal(rng()) * s);
  }
  return m;
}

struct Result {
  std::vector<int8_t> codes;
  std::vector<float> scales;
  std::vector<int32_t> outlier_columns;
  int32_t outlier_count = -2;
};

// Runs nkv_int8_quantize on `context` with outputs poisoned first; asserts every output was written.
Result quantize(nkv_context* context, const Matrix& m, nkv_quant_axis axis, float threshold = 0.0f,
                int64_t codes_padding = 0) {
  const nkv_device_type device = device_of(context);
  const int64_t codes_stride = m.cols + codes_padding;
  const int64_t nscales = axis == NKV_QUANT_AXIS_ROW ? m.rows : m.cols;
  Memory input(context, m.bytes.size()), codes(context, std::max<int64_t>(m.rows * codes_stride, 1)),
      scales(context, std::max<int64_t>(nscales, 1) * 4), outliers(context, std::max<int64_t>(m.cols, 1) * 4),
      count(context, 4);
  input.upload(m.bytes);
  codes.fill(0x5A, static_cast<size_t>(std::max<int64_t>(m.rows * codes_stride, 1)));
  scales.fill(0xFF, static_cast<size_t>(std::max<int64_t>(nscales, 1) * 4));
  outliers.fill(0x5A, static_cast<size_t>(std::max<int64_t>(m.cols, 1) * 4));
  count.fill(0x5A, 4);
  nkv_tensor in = view(input.data(), m.dtype, device, {m.rows, m.cols}, {m.row_stride, 1});
  nkv_tensor out = view(codes.data(), NKV_DTYPE_INT8, device, {m.rows, m.cols}, {codes_stride, 1});
  nkv_tensor sc = view(scales.data(), NKV_DTYPE_FLOAT32, device, {nscales});
  nkv_tensor oc = view(outliers.data(), NKV_DTYPE_INT32, device, {m.cols});
  nkv_tensor cnt = view(count.data(), NKV_DTYPE_INT32, device, {1});
  nkv_int8_quant_params params{sizeof params, axis, threshold, 0};
  const bool with_outliers = threshold > 0.0f;
  EXPECT_EQ(nkv_int8_quantize(context, &params, &in, &out, &sc, with_outliers ? &oc : nullptr,
                              with_outliers ? &cnt : nullptr),
            NKV_STATUS_SUCCESS)
      << nkv_last_error();
  Result r;
  auto all_codes = codes.download<int8_t>(static_cast<size_t>(m.rows * codes_stride));
  for (int64_t row = 0; row < m.rows; ++row) {
    r.codes.insert(r.codes.end(), all_codes.begin() + row * codes_stride, all_codes.begin() + row * codes_stride + m.cols);
    for (int64_t p = m.cols; p < codes_stride; ++p) {
      EXPECT_EQ(all_codes[row * codes_stride + p], 0x5A) << "padding between code rows was written";
    }
  }
  r.scales = scales.download<float>(static_cast<size_t>(nscales));
  for (float s : r.scales) EXPECT_NE(nkv::float_bits(s), 0xFFFFFFFFu) << "a scale was not written";
  if (with_outliers) {
    r.outlier_columns = outliers.download<int32_t>(static_cast<size_t>(m.cols));
    r.outlier_count = count.download<int32_t>(1)[0];
  }
  return r;
}

// The fp64 model of the op: absmax, scale, x/scale to nearest (ties to even).
void expect_matches_fp64_model(const Matrix& m, nkv_quant_axis axis, const Result& r, float threshold = 0.0f) {
  const bool by_row = axis == NKV_QUANT_AXIS_ROW;
  std::vector<double> absmax(by_row ? m.rows : m.cols, 0.0);
  auto outlier = [&](float x) { return threshold > 0.0f && std::fabs(x) >= threshold; };
  for (int64_t i = 0; i < m.rows; ++i)
    for (int64_t j = 0; j < m.cols; ++j) {
      const float x = m.values[i * m.cols + j];
      if (!outlier(x)) absmax[by_row ? i : j] = std::max(absmax[by_row ? i : j], std::fabs(static_cast<double>(x)));
    }
  for (size_t v = 0; v < absmax.size(); ++v) {
    const double expected = absmax[v] / 127.0;
    ASSERT_NEAR(r.scales[v], expected, expected * 1e-7) << "scale " << v;
  }
  for (int64_t i = 0; i < m.rows; ++i)
    for (int64_t j = 0; j < m.cols; ++j) {
      const float x = m.values[i * m.cols + j];
      const int code = r.codes[i * m.cols + j];
      if (outlier(x)) {
        ASSERT_EQ(code, 0) << "outlier at " << i << "," << j;
        continue;
      }
      const double s = absmax[by_row ? i : j] / 127.0;
      const double q = s == 0.0 ? 0.0 : x / s;
      const double nearest = std::nearbyint(q);
      // float32 division can land on the other side of a .5 boundary only within its rounding error
      const bool near_tie = std::fabs(std::fabs(q - std::trunc(q)) - 0.5) < 1e-5;
      if (near_tie) {
        ASSERT_LE(std::fabs(code - q), 0.5 + 1e-5) << i << "," << j;
      } else {
        ASSERT_EQ(code, static_cast<int>(std::clamp(nearest, -127.0, 127.0))) << "x=" << x << " at " << i << "," << j;
      }
    }
}

using Shape = std::tuple<int64_t, int64_t>;
const Shape kAwkwardShapes[] = {{1, 1}, {1, 4097}, {4097, 3}, {33, 257}, {7, 4096}, {0, 5}, {5, 0}};
const nkv_dtype kFloatTypes[] = {NKV_DTYPE_FLOAT32, NKV_DTYPE_FLOAT16, NKV_DTYPE_BFLOAT16};
const nkv_quant_axis kAxes[] = {NKV_QUANT_AXIS_ROW, NKV_QUANT_AXIS_COLUMN};

}  // namespace

TEST(Quant, CpuMatchesFp64ModelOnAwkwardShapes) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  for (nkv_dtype dtype : kFloatTypes)
    for (nkv_quant_axis axis : kAxes)
      for (auto [rows, cols] : kAwkwardShapes) {
        SCOPED_TRACE(testing::Message() << "dtype " << dtype << " axis " << axis << " shape " << rows << "x" << cols);
        Matrix m = random_matrix(dtype, rows, cols, /*padding=*/3);
        expect_matches_fp64_model(m, axis, quantize(cpu.get(), m, axis, 0.0f, /*codes_padding=*/5), 0.0f);
      }
}

TEST(Quant, RoundsHalfToEven) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  Matrix m{NKV_DTYPE_FLOAT32, 1, 8, 8, std::vector<uint8_t>(32), std::vector<float>(8)};
  const float xs[] = {254.0f, 5.0f, 7.0f, -5.0f, 3.0f, 1.0f, -1.0f, -7.0f};  // scale 2: 2.5 1.5 0.5 ...
  for (int c = 0; c < 8; ++c) set_value(m, 0, c, xs[c]);
  Result r = quantize(cpu.get(), m, NKV_QUANT_AXIS_ROW);
  EXPECT_EQ(r.scales[0], 2.0f);
  const int expected[] = {127, 2, 4, -2, 2, 0, 0, -4};
  for (int c = 0; c < 8; ++c) EXPECT_EQ(r.codes[c], expected[c]) << "x=" << xs[c];
}

TEST(Quant, ZeroRowGivesZeroScaleAndCodes) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  Matrix m = random_matrix(NKV_DTYPE_FLOAT16, 3, 100);
  for (int c = 0; c < 100; ++c) set_value(m, 1, c, c % 2 ? 0.0f : -0.0f);
  Result r = quantize(cpu.get(), m, NKV_QUANT_AXIS_ROW);
  EXPECT_EQ(r.scales[1], 0.0f);
  for (int c = 0; c < 100; ++c) EXPECT_EQ(r.codes[100 + c], 0);
  EXPECT_GT(r.scales[0], 0.0f);
}

TEST(Quant, NonFiniteInputsFollowTheDocumentedRule) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  Matrix m = random_matrix(NKV_DTYPE_FLOAT32, 3, 16);
  set_value(m, 0, 5, std::numeric_limits<float>::quiet_NaN());
  set_value(m, 1, 7, -std::numeric_limits<float>::infinity());
  Result r = quantize(cpu.get(), m, NKV_QUANT_AXIS_ROW);
  EXPECT_TRUE(std::isnan(r.scales[0]));
  EXPECT_TRUE(std::isinf(r.scales[1]) && r.scales[1] > 0);
  for (int c = 0; c < 32; ++c) EXPECT_EQ(r.codes[c], 0) << c;
  EXPECT_TRUE(std::isfinite(r.scales[2]));
  // As an outlier, the infinity is excluded and the row quantizes normally.
  Result with_threshold = quantize(cpu.get(), m, NKV_QUANT_AXIS_ROW, 1e30f);
  EXPECT_TRUE(std::isfinite(with_threshold.scales[1]));
  EXPECT_EQ(with_threshold.outlier_count, 1);
  EXPECT_EQ(with_threshold.outlier_columns[0], 7);
}

TEST(Quant, OutliersAreExcludedZeroedAndListedInOrder) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  for (nkv_quant_axis axis : kAxes) {
    Matrix m = random_matrix(NKV_DTYPE_FLOAT16, 40, 300);
    for (int64_t r = 0; r < 40; ++r)
      for (int64_t c = 0; c < 300; ++c) set_value(m, r, c, std::fmod(m.values[r * 300 + c], 5.0f));
    set_value(m, 3, 299, 6.0f);   // exactly the threshold counts as an outlier
    set_value(m, 10, 17, -80.0f);
    set_value(m, 39, 17, 9.0f);
    set_value(m, 0, 0, 5.99f);    // below threshold after fp16 rounding? 5.99 -> 5.9883: not an outlier
    Result r = quantize(cpu.get(), m, axis, 6.0f);
    ASSERT_EQ(r.outlier_count, 2);
    EXPECT_EQ(r.outlier_columns[0], 17);
    EXPECT_EQ(r.outlier_columns[1], 299);
    for (int64_t c = 2; c < 300; ++c) ASSERT_EQ(r.outlier_columns[c], -1);
    expect_matches_fp64_model(m, axis, r, 6.0f);
  }
}

TEST(Quant, DequantizeInvertsWithinHalfAStep) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  for (nkv_quant_axis axis : kAxes) {
    Matrix m = random_matrix(NKV_DTYPE_FLOAT32, 17, 130);
    Result r = quantize(cpu.get(), m, axis);
    std::vector<float> out(17 * 130, -1.0f);
    nkv_tensor codes = view(r.codes.data(), NKV_DTYPE_INT8, NKV_DEVICE_HOST, {17, 130});
    nkv_tensor scales = view(r.scales.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {static_cast<int64_t>(r.scales.size())});
    nkv_tensor output = view(out.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {17, 130});
    nkv_int8_quant_params params{sizeof params, axis, 0.0f, 0};
    NKV_ASSERT_OK(nkv_int8_dequantize(cpu.get(), &params, &codes, &scales, &output));
    for (int64_t i = 0; i < 17; ++i)
      for (int64_t j = 0; j < 130; ++j) {
        const float s = r.scales[axis == NKV_QUANT_AXIS_ROW ? i : j];
        ASSERT_EQ(out[i * 130 + j], static_cast<float>(r.codes[i * 130 + j]) * s);
        ASSERT_LE(std::fabs(out[i * 130 + j] - m.values[i * 130 + j]), s * 0.5f * (1 + 1e-5f));
      }
  }
}

// ---- bad input: every path returns its status, names the argument, leaves outputs untouched ----

class QuantBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    context_ = make_context(NKV_BACKEND_CPU);
    input_.assign(rows_ * cols_, 1.0f);
    codes_.assign(rows_ * cols_, 0x33);
    scales_.assign(rows_, 42.0f);
    in_ = view(input_.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {rows_, cols_});
    out_ = view(codes_.data(), NKV_DTYPE_INT8, NKV_DEVICE_HOST, {rows_, cols_});
    sc_ = view(scales_.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {rows_});
    oc_ = view(outliers_, NKV_DTYPE_INT32, NKV_DEVICE_HOST, {cols_});
    cnt_ = view(&count_, NKV_DTYPE_INT32, NKV_DEVICE_HOST, {1});
  }
  void TearDown() override {
    for (int8_t c : codes_) ASSERT_EQ(c, 0x33) << "codes were written by a failing call";
    for (float s : scales_) ASSERT_EQ(s, 42.0f) << "scales were written by a failing call";
    EXPECT_EQ(count_, 99);
  }
  nkv_status run() { return nkv_int8_quantize(context_.get(), &params_, &in_, &out_, &sc_, oc_ptr_, cnt_ptr_); }

  const int64_t rows_ = 4, cols_ = 8;
  ContextPtr context_;
  std::vector<float> input_;
  std::vector<int8_t> codes_;
  std::vector<float> scales_;
  int32_t outliers_[8] = {};
  int32_t count_ = 99;
  nkv_tensor in_{}, out_{}, sc_{}, oc_{}, cnt_{};
  nkv_tensor* oc_ptr_ = nullptr;
  nkv_tensor* cnt_ptr_ = nullptr;
  nkv_int8_quant_params params_{sizeof(nkv_int8_quant_params), NKV_QUANT_AXIS_ROW, 0.0f, 0};
};

TEST_F(QuantBadInput, NullPointers) {
  NKV_EXPECT_STATUS(nkv_int8_quantize(nullptr, &params_, &in_, &out_, &sc_, nullptr, nullptr), NKV_STATUS_INVALID_ARGUMENT, "'context'");
  NKV_EXPECT_STATUS(nkv_int8_quantize(context_.get(), nullptr, &in_, &out_, &sc_, nullptr, nullptr), NKV_STATUS_INVALID_ARGUMENT, "'params'");
  NKV_EXPECT_STATUS(nkv_int8_quantize(context_.get(), &params_, nullptr, &out_, &sc_, nullptr, nullptr), NKV_STATUS_INVALID_ARGUMENT, "'input'");
  NKV_EXPECT_STATUS(nkv_int8_quantize(context_.get(), &params_, &in_, nullptr, &sc_, nullptr, nullptr), NKV_STATUS_INVALID_ARGUMENT, "'codes'");
  NKV_EXPECT_STATUS(nkv_int8_quantize(context_.get(), &params_, &in_, &out_, nullptr, nullptr, nullptr), NKV_STATUS_INVALID_ARGUMENT, "'scales'");
  in_.data = nullptr;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "data must not be NULL");
}

TEST_F(QuantBadInput, Params) {
  params_.struct_size = 4;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "struct_size");
  params_ = {sizeof params_, 5, 0.0f, 0};
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "params.axis");
  params_ = {sizeof params_, NKV_QUANT_AXIS_ROW, -1.0f, 0};
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "outlier_threshold");
  params_ = {sizeof params_, NKV_QUANT_AXIS_ROW, std::nanf(""), 0};
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "outlier_threshold");
}

TEST_F(QuantBadInput, WrongDtypes) {
  in_.dtype = NKV_DTYPE_INT32;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "argument 'input': expected dtype float32 or float16 or bfloat16, got int32");
  in_.dtype = NKV_DTYPE_FLOAT32;
  out_.dtype = NKV_DTYPE_UINT8;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "argument 'codes': expected dtype int8, got uint8");
  out_.dtype = NKV_DTYPE_INT8;
  sc_.dtype = NKV_DTYPE_FLOAT16;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "argument 'scales': expected dtype float32, got float16");
  sc_.dtype = 77;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "unknown dtype value 77");
}

TEST_F(QuantBadInput, ShapeMismatches) {
  out_.shape[1] = 7;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "argument 'codes': expected shape [4, 8], got [4, 7]");
  out_.shape[1] = 8;
  sc_.shape[0] = 8;  // column count, but the axis is ROW
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "argument 'scales': expected shape [4], got [8]");
  sc_.shape[0] = 4;
  in_.ndim = 3;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "argument 'input': expected shape [*, *]");
  in_.ndim = 9;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "expected ndim in [0, 6], got 9");
}

TEST_F(QuantBadInput, NonContiguousRowsAreNotSupported) {
  in_.strides[1] = 2;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_NOT_SUPPORTED, "argument 'input': expected stride 1");
  in_.strides[1] = 1;
  out_.strides[0] = 4;  // rows overlap
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "output rows would overlap");
}

TEST_F(QuantBadInput, OutputsOverlappingInputsAreRejected) {
  nkv_tensor scales_over_input = view(input_.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {rows_});
  NKV_EXPECT_STATUS(nkv_int8_quantize(context_.get(), &params_, &in_, &out_, &scales_over_input, nullptr, nullptr),
                    NKV_STATUS_INVALID_ARGUMENT, "arguments 'scales' and 'input' overlap");
  nkv_tensor codes_over_input = view(input_.data(), NKV_DTYPE_INT8, NKV_DEVICE_HOST, {rows_, cols_});
  NKV_EXPECT_STATUS(nkv_int8_quantize(context_.get(), &params_, &in_, &codes_over_input, &sc_, nullptr, nullptr),
                    NKV_STATUS_INVALID_ARGUMENT, "arguments 'codes' and 'input' overlap");
  std::vector<float> out(rows_ * cols_);
  nkv_tensor output = view(out.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {rows_, cols_});
  nkv_tensor codes_in_output = view(out.data(), NKV_DTYPE_INT8, NKV_DEVICE_HOST, {rows_, cols_});
  NKV_EXPECT_STATUS(nkv_int8_dequantize(context_.get(), &params_, &codes_in_output, &sc_, &output),
                    NKV_STATUS_INVALID_ARGUMENT, "arguments 'output' and 'codes' overlap");
}

TEST_F(QuantBadInput, MisalignedAndWrappingViewsAreRejected) {
  in_.data = reinterpret_cast<char*>(input_.data()) + 1;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "argument 'input': data pointer is not aligned");
  in_.data = input_.data();
  in_.strides[0] = (int64_t{1} << 62) + 1;  // the byte offset of row 1 would wrap around
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "reaches beyond the address space");
  in_.strides[0] = cols_;
  in_.shape[0] = int64_t{1} << 40;
  in_.shape[1] = int64_t{1} << 40;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "more elements than int64 can count");
}

TEST_F(QuantBadInput, DeviceMemoryOnACpuContext) {
  in_.device = NKV_DEVICE_CUDA;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "argument 'input': expected memory on device 'host'");
}

TEST_F(QuantBadInput, OutlierOutputsMustMatchTheThreshold) {
  params_.outlier_threshold = 6.0f;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "'outlier_columns' must not be NULL");
  oc_ptr_ = &oc_;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "'outlier_column_count' must not be NULL");
  cnt_ptr_ = &cnt_;
  oc_.shape[0] = 4;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "argument 'outlier_columns': expected shape [8]");
  oc_.shape[0] = 8;
  cnt_.dtype = NKV_DTYPE_INT64;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "argument 'outlier_column_count': expected dtype int32");
  params_.outlier_threshold = 0.0f;
  NKV_EXPECT_STATUS(run(), NKV_STATUS_INVALID_ARGUMENT, "must be NULL when params.outlier_threshold is 0");
}

TEST_F(QuantBadInput, DequantizeChecksItsArguments) {
  std::vector<float> out(rows_ * cols_, 5.0f);
  nkv_tensor output = view(out.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {rows_, cols_});
  NKV_EXPECT_STATUS(nkv_int8_dequantize(context_.get(), &params_, &in_, &sc_, &output), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'codes': expected dtype int8, got float32");
  output.dtype = NKV_DTYPE_INT8;
  NKV_EXPECT_STATUS(nkv_int8_dequantize(context_.get(), &params_, &out_, &sc_, &output), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'output': expected dtype float32 or float16 or bfloat16, got int8");
  output.dtype = NKV_DTYPE_FLOAT32;
  output.shape[0] = 3;
  NKV_EXPECT_STATUS(nkv_int8_dequantize(context_.get(), &params_, &out_, &sc_, &output), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'output': expected shape [4, 8], got [3, 8]");
  for (float v : out) ASSERT_EQ(v, 5.0f);
}

// ---- CUDA: bit-exact against the CPU reference ----

namespace {

void expect_same_bits(const Result& gpu, const Result& cpu) {
  ASSERT_EQ(gpu.codes.size(), cpu.codes.size());
  for (size_t i = 0; i < cpu.codes.size(); ++i) ASSERT_EQ(gpu.codes[i], cpu.codes[i]) << "code " << i;
  ASSERT_EQ(gpu.scales.size(), cpu.scales.size());
  for (size_t i = 0; i < cpu.scales.size(); ++i) {
    if (std::isnan(cpu.scales[i])) {
      ASSERT_TRUE(std::isnan(gpu.scales[i])) << "scale " << i;
    } else {
      ASSERT_EQ(nkv::float_bits(gpu.scales[i]), nkv::float_bits(cpu.scales[i])) << "scale " << i;
    }
  }
  ASSERT_EQ(gpu.outlier_count, cpu.outlier_count);
  ASSERT_EQ(gpu.outlier_columns, cpu.outlier_columns);
}

}  // namespace

TEST(QuantCuda, MatchesCpuBitForBitOnAwkwardShapes) {
  NKV_REQUIRE_CUDA();
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  const Shape shapes[] = {{1, 1}, {1, 4097}, {4097, 3}, {33, 257}, {7, 4096}, {0, 5}, {5, 0}, {3, 40000}, {300, 1024}};
  for (nkv_dtype dtype : kFloatTypes)
    for (nkv_quant_axis axis : kAxes)
      for (auto [rows, cols] : shapes)
        for (float threshold : {0.0f, 50.0f})
          for (int64_t padding : {int64_t{0}, int64_t{8}, int64_t{3}}) {
            SCOPED_TRACE(testing::Message() << "dtype " << dtype << " axis " << axis << " shape " << rows << "x" << cols
                                            << " threshold " << threshold << " padding " << padding);
            Matrix m = random_matrix(dtype, rows, cols, padding);
            expect_same_bits(quantize(gpu.get(), m, axis, threshold, padding), quantize(cpu.get(), m, axis, threshold, padding));
          }
}

TEST(QuantCuda, NonFiniteAndZeroRowsMatchCpu) {
  NKV_REQUIRE_CUDA();
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  for (nkv_dtype dtype : kFloatTypes)
    for (nkv_quant_axis axis : kAxes) {
      Matrix m = random_matrix(dtype, 64, 256);
      set_value(m, 1, 5, std::numeric_limits<float>::quiet_NaN());
      set_value(m, 2, 9, std::numeric_limits<float>::infinity());
      for (int c = 0; c < 256; ++c) set_value(m, 3, c, 0.0f);
      for (float threshold : {0.0f, 1e30f}) {
        expect_same_bits(quantize(gpu.get(), m, axis, threshold), quantize(cpu.get(), m, axis, threshold));
      }
    }
}

// The CUDA kernels avoid a division per element and fall back to it near half-integers; these rows are
// full of exact ties, values a few ulps either side of them, and subnormal scales.
TEST(QuantCuda, ExactAndNearTiesAndSubnormalScalesMatchCpu) {
  NKV_REQUIRE_CUDA();
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  std::uniform_int_distribution<int> code(-126, 126), ulps(-3, 3), pick(0, 3);
  std::uniform_real_distribution<float> magnitude(0.5f, 1000.0f);
  for (nkv_dtype dtype : kFloatTypes)
    for (nkv_quant_axis axis : kAxes) {
      const int64_t rows = 96, cols = 512;
      Matrix m = random_matrix(dtype, rows, cols);
      for (int64_t r = 0; r < rows; ++r) {
        const int kind = static_cast<int>(r % 3);
        // kind 0: power-of-two scale, values k/2 * scale (exact ties when k is odd); kind 1: arbitrary
        // scale, values (k + 0.5) * scale nudged by a few ulps; kind 2: subnormal magnitudes
        const float absmax = kind == 0 ? 127.0f * std::ldexp(1.0f, static_cast<int>(r % 9) - 4)
                           : kind == 1 ? magnitude(rng())
                                       : 127.0f * 1e-41f;
        const float scale = absmax / 127.0f;
        for (int64_t c = 0; c < cols; ++c) {
          float x;
          if (c == 0) {
            x = absmax;
          } else if (kind == 0) {
            x = static_cast<float>(code(rng()) * 2 + 1) * 0.5f * scale * (pick(rng()) == 0 ? 0.5f : 1.0f);
          } else if (kind == 1) {
            x = (static_cast<float>(code(rng())) + 0.5f) * scale;
            for (int u = ulps(rng()); u != 0; u += u > 0 ? -1 : 1) x = std::nextafter(x, u > 0 ? 1e30f : -1e30f);
          } else {
            x = static_cast<float>(code(rng())) * 1e-41f;
          }
          set_value(m, r, c, x);
        }
      }
      SCOPED_TRACE(testing::Message() << "dtype " << dtype << " axis " << axis);
      expect_same_bits(quantize(gpu.get(), m, axis), quantize(cpu.get(), m, axis));
    }
}

// The CUDA row kernel compares magnitudes with the threshold as bit patterns of the input type, so
// thresholds that fall between two representable values (and past the largest one) must still agree
// with the CPU's float comparison.
TEST(QuantCuda, OutlierThresholdsBetweenRepresentableValuesMatchCpu) {
  NKV_REQUIRE_CUDA();
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  for (nkv_dtype dtype : kFloatTypes)
    for (nkv_quant_axis axis : kAxes)
      for (float threshold : {6.0001f, 2.99f, 65519.0f, 1e-6f, 3.0e38f}) {
        Matrix m = random_matrix(dtype, 64, 1024);
        for (int64_t r = 0; r < 64; ++r) {
          set_value(m, r, r * 13 % 1024, threshold);                      // exactly the threshold (after rounding)
          set_value(m, r, (r * 29 + 5) % 1024, std::nextafter(threshold, 0.0f));
          set_value(m, r, (r * 31 + 9) % 1024, -std::numeric_limits<float>::infinity());
        }
        SCOPED_TRACE(testing::Message() << "dtype " << dtype << " axis " << axis << " threshold " << threshold);
        expect_same_bits(quantize(gpu.get(), m, axis, threshold), quantize(cpu.get(), m, axis, threshold));
      }
}

TEST(QuantCuda, Large8192SquareFloat16MatchesCpu) {
  NKV_REQUIRE_CUDA();
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  Matrix m = random_matrix(NKV_DTYPE_FLOAT16, 8192, 8192);
  for (nkv_quant_axis axis : kAxes) {
    expect_same_bits(quantize(gpu.get(), m, axis, 60.0f), quantize(cpu.get(), m, axis, 60.0f));
  }
}

TEST(QuantCuda, DequantizeMatchesCpu) {
  NKV_REQUIRE_CUDA();
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  for (nkv_dtype dtype : kFloatTypes)
    for (nkv_quant_axis axis : kAxes)
      for (auto [rows, cols] : {Shape{129, 4096}, Shape{5, 4097}, Shape{1000, 8}}) {
        std::vector<int8_t> codes(rows * cols);
        for (auto& c : codes) c = static_cast<int8_t>(static_cast<int>(rng()() % 255) - 127);
        const int64_t n = axis == NKV_QUANT_AXIS_ROW ? rows : cols;
        std::vector<float> scales(n);
        for (auto& s : scales) s = std::uniform_real_distribution<float>(1e-4f, 10.0f)(rng());
        const size_t out_bytes = rows * cols * nkv_dtype_size(dtype);
        std::vector<uint8_t> expected(out_bytes);
        nkv_int8_quant_params params{sizeof params, axis, 0.0f, 0};
        {
          nkv_tensor c = view(codes.data(), NKV_DTYPE_INT8, NKV_DEVICE_HOST, {rows, cols});
          nkv_tensor s = view(scales.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {n});
          nkv_tensor o = view(expected.data(), dtype, NKV_DEVICE_HOST, {rows, cols});
          NKV_ASSERT_OK(nkv_int8_dequantize(cpu.get(), &params, &c, &s, &o));
        }
        Memory dc(gpu.get(), codes.size()), ds(gpu.get(), n * 4), dout(gpu.get(), out_bytes);
        dc.upload(codes);
        ds.upload(scales);
        dout.fill(0x5A, out_bytes);
        nkv_tensor c = view(dc.data(), NKV_DTYPE_INT8, NKV_DEVICE_CUDA, {rows, cols});
        nkv_tensor s = view(ds.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_CUDA, {n});
        nkv_tensor o = view(dout.data(), dtype, NKV_DEVICE_CUDA, {rows, cols});
        NKV_ASSERT_OK(nkv_int8_dequantize(gpu.get(), &params, &c, &s, &o));
        ASSERT_EQ(dout.download<uint8_t>(out_bytes), expected) << "dtype " << dtype << " axis " << axis;
      }
}

TEST(QuantCuda, HostTensorOnACudaContextIsRejected) {
  NKV_REQUIRE_CUDA();
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  std::vector<float> input(16, 1.0f);
  std::vector<int8_t> codes(16, 3);
  std::vector<float> scales(4, 2.0f);
  nkv_tensor in = view(input.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {4, 4});
  nkv_tensor out = view(codes.data(), NKV_DTYPE_INT8, NKV_DEVICE_HOST, {4, 4});
  nkv_tensor sc = view(scales.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {4});
  nkv_int8_quant_params params{sizeof params, NKV_QUANT_AXIS_ROW, 0.0f, 0};
  NKV_EXPECT_STATUS(nkv_int8_quantize(gpu.get(), &params, &in, &out, &sc, nullptr, nullptr), NKV_STATUS_INVALID_ARGUMENT,
                    "expected memory on device 'cuda'");
  for (int8_t c : codes) EXPECT_EQ(c, 3);
}
