// Reference implementation of int8 vector-wise quantization. Written for clarity: the CUDA kernels
// must reproduce it bit for bit (same float32 operations in the same order per element).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/float_bits.h"
#include "core/quant.h"

namespace nkv::cpu {
namespace {

float load_element(const void* base, nkv_dtype dtype, int64_t index) {
  switch (dtype) {
    case NKV_DTYPE_FLOAT16: return half_to_float(static_cast<const uint16_t*>(base)[index]);
    case NKV_DTYPE_BFLOAT16: return bfloat16_to_float(static_cast<const uint16_t*>(base)[index]);
    default: return static_cast<const float*>(base)[index];
  }
}

void store_element(void* base, nkv_dtype dtype, int64_t index, float value) {
  switch (dtype) {
    case NKV_DTYPE_FLOAT16: static_cast<uint16_t*>(base)[index] = float_to_half(value); break;
    case NKV_DTYPE_BFLOAT16: static_cast<uint16_t*>(base)[index] = float_to_bfloat16(value); break;
    default: static_cast<float*>(base)[index] = value; break;
  }
}

bool is_outlier(float x, float threshold) { return threshold > 0.0f && std::fabs(x) >= threshold; }

int8_t quantize_value(float x, float scale) {
  const float q = x / scale;  // 0/0 and inf/inf are NaN: those codes are 0
  if (std::isnan(q)) return 0;
  const float rounded = std::nearbyint(q);  // default rounding mode: half to even
  return static_cast<int8_t>(std::clamp(rounded, -127.0f, 127.0f));
}

}  // namespace

void int8_quantize(const Int8QuantizeArgs& a) {
  const bool by_row = a.axis == NKV_QUANT_AXIS_ROW;
  const int64_t vectors = by_row ? a.rows : a.cols;
  std::vector<uint32_t> absmax(static_cast<size_t>(vectors), 0u);
  std::vector<bool> column_has_outlier(static_cast<size_t>(a.cols), false);

  for (int64_t r = 0; r < a.rows; ++r) {
    for (int64_t c = 0; c < a.cols; ++c) {
      const float x = load_element(a.input, a.input_dtype, r * a.input_row_stride + c);
      if (is_outlier(x, a.outlier_threshold)) {
        column_has_outlier[static_cast<size_t>(c)] = true;
        continue;
      }
      uint32_t& m = absmax[static_cast<size_t>(by_row ? r : c)];
      m = std::max(m, magnitude_bits(x));
    }
  }

  std::vector<float> scale(static_cast<size_t>(vectors));
  for (int64_t v = 0; v < vectors; ++v) {
    scale[static_cast<size_t>(v)] = bits_float(absmax[static_cast<size_t>(v)]) / 127.0f;
    a.scales[v] = scale[static_cast<size_t>(v)];
  }

  for (int64_t r = 0; r < a.rows; ++r) {
    for (int64_t c = 0; c < a.cols; ++c) {
      const float x = load_element(a.input, a.input_dtype, r * a.input_row_stride + c);
      a.codes[r * a.codes_row_stride + c] =
          is_outlier(x, a.outlier_threshold) ? int8_t{0} : quantize_value(x, scale[static_cast<size_t>(by_row ? r : c)]);
    }
  }

  if (a.outlier_columns != nullptr) {
    int32_t count = 0;
    for (int64_t c = 0; c < a.cols; ++c) {
      if (column_has_outlier[static_cast<size_t>(c)]) a.outlier_columns[count++] = static_cast<int32_t>(c);
    }
    std::fill(a.outlier_columns + count, a.outlier_columns + a.cols, -1);
    *a.outlier_column_count = count;
  }
}

void int8_dequantize(const Int8DequantizeArgs& a) {
  const bool by_row = a.axis == NKV_QUANT_AXIS_ROW;
  for (int64_t r = 0; r < a.rows; ++r) {
    for (int64_t c = 0; c < a.cols; ++c) {
      const float scale = a.scales[by_row ? r : c];
      const float value = static_cast<float>(a.codes[r * a.codes_row_stride + c]) * scale;
      store_element(a.output, a.output_dtype, r * a.output_row_stride + c, value);
    }
  }
}

}  // namespace nkv::cpu
