// A tensor descriptor over contiguous memory, for the benchmark programs (nkv_bench, nkv_kv_quant_accuracy).
#pragma once

#include <cstdint>
#include <vector>

#include "nativekv/nativekv.h"

inline nkv_tensor view(void* data, nkv_dtype dtype, nkv_device_type device, std::vector<int64_t> shape) {
  nkv_tensor t{};
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.ndim = static_cast<int32_t>(shape.size());
  int64_t stride = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    t.shape[i] = shape[static_cast<size_t>(i)];
    t.strides[i] = stride;
    stride *= t.shape[i];
  }
  return t;
}
