// Validated, backend-neutral arguments of the quantization ops (see nativekv.h for the semantics).
#pragma once

#include <cstdint>

#include "core/handles.h"

namespace nkv {

struct Int8QuantizeArgs {
  const void* input = nullptr;
  nkv_dtype input_dtype = NKV_DTYPE_FLOAT32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t input_row_stride = 0;  // elements
  int8_t* codes = nullptr;
  int64_t codes_row_stride = 0;  // elements
  float* scales = nullptr;
  nkv_quant_axis axis = NKV_QUANT_AXIS_ROW;
  float outlier_threshold = 0.0f;      // 0: no outlier handling
  int32_t* outlier_columns = nullptr;  // [cols], only with a threshold
  int32_t* outlier_column_count = nullptr;
};

struct Int8DequantizeArgs {
  const int8_t* codes = nullptr;
  int64_t codes_row_stride = 0;
  const float* scales = nullptr;
  nkv_quant_axis axis = NKV_QUANT_AXIS_ROW;
  int64_t rows = 0;
  int64_t cols = 0;
  void* output = nullptr;
  nkv_dtype output_dtype = NKV_DTYPE_FLOAT32;
  int64_t output_row_stride = 0;
};

namespace cpu {
void int8_quantize(const Int8QuantizeArgs& args);
void int8_dequantize(const Int8DequantizeArgs& args);
}  // namespace cpu

namespace cuda {
void int8_quantize(const Int8QuantizeArgs& args, const nkv_context& context);
void int8_dequantize(const Int8DequantizeArgs& args, const nkv_context& context);
}  // namespace cuda

}  // namespace nkv
