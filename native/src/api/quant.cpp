#include <cmath>
#include <limits>
#include <string>

#include "core/api_guard.h"
#include "core/quant.h"
#include "core/tensor_checks.h"

using namespace nkv;

namespace {

nkv_quant_axis check_params(const nkv_int8_quant_params* params, bool uses_threshold) {
  if (params == nullptr) fail_argument("argument 'params' must not be NULL");
  check_struct_size("params", params->struct_size, sizeof(nkv_int8_quant_params), "sizeof(nkv_int8_quant_params)");
  if (params->axis != NKV_QUANT_AXIS_ROW && params->axis != NKV_QUANT_AXIS_COLUMN) {
    fail_argument("argument 'params.axis': expected NKV_QUANT_AXIS_ROW (0) or NKV_QUANT_AXIS_COLUMN (1), got " +
                  std::to_string(params->axis));
  }
  if (uses_threshold && (std::isnan(params->outlier_threshold) || params->outlier_threshold < 0.0f)) {
    fail_argument("argument 'params.outlier_threshold': expected 0 (off) or a positive value, got " +
                  std::to_string(params->outlier_threshold));
  }
  if (params->reserved != 0) fail_argument("argument 'params.reserved' must be 0, got " + std::to_string(params->reserved));
  return static_cast<nkv_quant_axis>(params->axis);
}

// The kernels launch one block per row (row axis) and index columns with int32 in the outlier list.
void check_extents(int64_t rows, int64_t cols) {
  constexpr int64_t limit = std::numeric_limits<int32_t>::max();
  if (rows > limit || cols > limit) {
    fail(NKV_STATUS_NOT_SUPPORTED, "matrix of shape [" + std::to_string(rows) + ", " + std::to_string(cols) +
                                       "]: each extent must be at most " + std::to_string(limit));
  }
}

void check_scales(const nkv_tensor& scales, nkv_quant_axis axis, int64_t rows, int64_t cols) {
  check_dtype("scales", scales, {NKV_DTYPE_FLOAT32});
  check_shape("scales", scales, {axis == NKV_QUANT_AXIS_ROW ? rows : cols});
  check_unit_inner_stride("scales", scales);
}

}  // namespace

extern "C" {

NKV_API nkv_status nkv_int8_quantize(nkv_context* context, const nkv_int8_quant_params* params,
                                     const nkv_tensor* input, const nkv_tensor* codes, const nkv_tensor* scales,
                                     const nkv_tensor* outlier_columns, const nkv_tensor* outlier_column_count) {
  return guard("nkv_int8_quantize", [&] {
    const nkv_context& c = check_context(context);
    const nkv_quant_axis axis = check_params(params, true);
    const nkv_tensor& in = check_tensor("input", input, c);
    check_dtype("input", in, {NKV_DTYPE_FLOAT32, NKV_DTYPE_FLOAT16, NKV_DTYPE_BFLOAT16});
    check_shape("input", in, {-1, -1});
    check_unit_inner_stride("input", in);
    const int64_t rows = in.shape[0];
    const int64_t cols = in.shape[1];
    check_extents(rows, cols);
    const nkv_tensor& out = check_tensor("codes", codes, c);
    check_dtype("codes", out, {NKV_DTYPE_INT8});
    check_shape("codes", out, {rows, cols});
    check_unit_inner_stride("codes", out);
    check_rows_disjoint("codes", out);
    check_scales(check_tensor("scales", scales, c), axis, rows, cols);

    Int8QuantizeArgs a;
    a.outlier_threshold = params->outlier_threshold;
    if (a.outlier_threshold > 0.0f) {
      if (outlier_columns == nullptr || outlier_column_count == nullptr) {
        fail_argument(std::string("argument '") + (outlier_columns == nullptr ? "outlier_columns" : "outlier_column_count") +
                      "' must not be NULL when params.outlier_threshold is set");
      }
      const nkv_tensor& oc = check_tensor("outlier_columns", outlier_columns, c);
      check_dtype("outlier_columns", oc, {NKV_DTYPE_INT32});
      check_shape("outlier_columns", oc, {cols});
      check_unit_inner_stride("outlier_columns", oc);
      const nkv_tensor& count = check_tensor("outlier_column_count", outlier_column_count, c);
      check_dtype("outlier_column_count", count, {NKV_DTYPE_INT32});
      check_shape("outlier_column_count", count, {1});
      a.outlier_columns = static_cast<int32_t*>(oc.data);
      a.outlier_column_count = static_cast<int32_t*>(count.data);
    } else if (outlier_columns != nullptr || outlier_column_count != nullptr) {
      fail_argument("arguments 'outlier_columns' and 'outlier_column_count' must be NULL when "
                    "params.outlier_threshold is 0 (outlier handling off)");
    }

    check_disjoint("codes", out, "input", in);
    check_disjoint("scales", *scales, "input", in);
    check_disjoint("scales", *scales, "codes", out);
    if (a.outlier_threshold > 0.0f) {
      const nkv_tensor* outputs[] = {outlier_columns, outlier_column_count};
      const char* names[] = {"outlier_columns", "outlier_column_count"};
      for (int i = 0; i < 2; ++i) {
        check_disjoint(names[i], *outputs[i], "input", in);
        check_disjoint(names[i], *outputs[i], "codes", out);
        check_disjoint(names[i], *outputs[i], "scales", *scales);
      }
      check_disjoint("outlier_columns", *outlier_columns, "outlier_column_count", *outlier_column_count);
    }

    a.input = in.data;
    a.input_dtype = static_cast<nkv_dtype>(in.dtype);
    a.rows = rows;
    a.cols = cols;
    a.input_row_stride = in.strides[0];
    a.codes = static_cast<int8_t*>(out.data);
    a.codes_row_stride = out.strides[0];
    a.scales = static_cast<float*>(scales->data);
    a.axis = axis;
    if (c.backend == NKV_BACKEND_CUDA) {
      cuda::int8_quantize(a, c);
    } else {
      cpu::int8_quantize(a);
    }
  });
}

NKV_API nkv_status nkv_int8_dequantize(nkv_context* context, const nkv_int8_quant_params* params,
                                       const nkv_tensor* codes, const nkv_tensor* scales, const nkv_tensor* output) {
  return guard("nkv_int8_dequantize", [&] {
    const nkv_context& c = check_context(context);
    const nkv_quant_axis axis = check_params(params, false);
    const nkv_tensor& in = check_tensor("codes", codes, c);
    check_dtype("codes", in, {NKV_DTYPE_INT8});
    check_shape("codes", in, {-1, -1});
    check_unit_inner_stride("codes", in);
    const int64_t rows = in.shape[0];
    const int64_t cols = in.shape[1];
    check_extents(rows, cols);
    check_scales(check_tensor("scales", scales, c), axis, rows, cols);
    const nkv_tensor& out = check_tensor("output", output, c);
    check_dtype("output", out, {NKV_DTYPE_FLOAT32, NKV_DTYPE_FLOAT16, NKV_DTYPE_BFLOAT16});
    check_shape("output", out, {rows, cols});
    check_unit_inner_stride("output", out);
    check_rows_disjoint("output", out);
    check_disjoint("output", out, "codes", in);
    check_disjoint("output", out, "scales", *scales);

    Int8DequantizeArgs a;
    a.codes = static_cast<const int8_t*>(in.data);
    a.codes_row_stride = in.strides[0];
    a.scales = static_cast<const float*>(scales->data);
    a.axis = axis;
    a.rows = rows;
    a.cols = cols;
    a.output = out.data;
    a.output_dtype = static_cast<nkv_dtype>(out.dtype);
    a.output_row_stride = out.strides[0];
    if (c.backend == NKV_BACKEND_CUDA) {
      cuda::int8_dequantize(a, c);
    } else {
      cpu::int8_dequantize(a);
    }
  });
}

}  // extern "C"
