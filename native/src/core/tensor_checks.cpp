#include "core/tensor_checks.h"

#include <algorithm>
#include <cstdint>
#include <sstream>

#include "core/error.h"

namespace nkv {

const char* dtype_name(int32_t dtype) {
  switch (dtype) {
    case NKV_DTYPE_FLOAT32: return "float32";
    case NKV_DTYPE_FLOAT16: return "float16";
    case NKV_DTYPE_BFLOAT16: return "bfloat16";
    case NKV_DTYPE_INT8: return "int8";
    case NKV_DTYPE_UINT8: return "uint8";
    case NKV_DTYPE_INT32: return "int32";
    case NKV_DTYPE_INT64: return "int64";
    case NKV_DTYPE_FLOAT64: return "float64";
    default: return nullptr;
  }
}

const char* device_name(int32_t device) {
  switch (device) {
    case NKV_DEVICE_HOST: return "host";
    case NKV_DEVICE_CUDA: return "cuda";
    default: return nullptr;
  }
}

std::string shape_string(const nkv_tensor& t) {
  std::ostringstream out;
  out << '[';
  for (int32_t i = 0; i < t.ndim; ++i) out << (i ? ", " : "") << t.shape[i];
  out << ']';
  return out.str();
}

int64_t element_count(const nkv_tensor& t) {
  int64_t n = 1;
  for (int32_t i = 0; i < t.ndim; ++i) {
    if (t.shape[i] == 0) return 0;
  }
  for (int32_t i = 0; i < t.ndim; ++i) {
    if (__builtin_mul_overflow(n, t.shape[i], &n)) return -1;  // check_tensor rejects it
  }
  return n;
}

namespace {
// Element offset of the last element, or -1 when it does not fit in int64.
int64_t last_element_offset(const nkv_tensor& t) {
  int64_t offset = 0;
  for (int32_t i = 0; i < t.ndim; ++i) {
    int64_t reach = 0;
    if (__builtin_mul_overflow(t.shape[i] - 1, t.strides[i], &reach) || __builtin_add_overflow(offset, reach, &offset)) {
      return -1;
    }
  }
  return offset;
}
}  // namespace

ByteRange byte_range(const nkv_tensor& t) {
  if (element_count(t) == 0) return {};
  const auto begin = reinterpret_cast<uintptr_t>(t.data);
  const auto size = static_cast<uintptr_t>(nkv_dtype_size(t.dtype));
  return {begin, begin + (static_cast<uintptr_t>(last_element_offset(t)) + 1) * size};
}

void check_disjoint(const char* name_a, const nkv_tensor& a, const char* name_b, const nkv_tensor& b) {
  const ByteRange ra = byte_range(a), rb = byte_range(b);
  if (ra.begin < ra.end && rb.begin < rb.end && ra.begin < rb.end && rb.begin < ra.end) {
    fail_argument(std::string("arguments '") + name_a + "' and '" + name_b +
                  "' overlap in memory; outputs must not share memory with inputs or other outputs");
  }
}

namespace {
std::string arg(const char* name) { return std::string("argument '") + name + "'"; }
}  // namespace

const nkv_context& check_context(const nkv_context* context) {
  if (context == nullptr) fail_argument("argument 'context' must not be NULL");
  return *context;
}

const nkv_tensor& check_tensor(const char* name, const nkv_tensor* t, const nkv_context& context) {
  if (t == nullptr) fail_argument(arg(name) + " must not be NULL");
  if (t->ndim < 0 || t->ndim > NKV_MAX_DIMS) {
    fail_argument(arg(name) + ": expected ndim in [0, " + std::to_string(NKV_MAX_DIMS) + "], got " +
                  std::to_string(t->ndim));
  }
  if (dtype_name(t->dtype) == nullptr) fail_argument(arg(name) + ": unknown dtype value " + std::to_string(t->dtype));
  if (device_name(t->device) == nullptr) {
    fail_argument(arg(name) + ": unknown device value " + std::to_string(t->device));
  }
  if (t->reserved != 0) fail_argument(arg(name) + ": field 'reserved' must be 0, got " + std::to_string(t->reserved));
  for (int32_t i = 0; i < t->ndim; ++i) {
    if (t->shape[i] < 0) fail_argument(arg(name) + ": negative extent in shape " + shape_string(*t));
    if (t->strides[i] < 0) {
      fail(NKV_STATUS_NOT_SUPPORTED, arg(name) + ": negative stride " + std::to_string(t->strides[i]) +
                                         " in dimension " + std::to_string(i) + " is not supported");
    }
  }
  const nkv_device_type expected = device_type_of(context);
  if (t->device != expected) {
    fail_argument(arg(name) + ": expected memory on device '" + device_name(expected) + "' (the context's backend), got '" +
                  device_name(t->device) + "'");
  }
  const int64_t count = element_count(*t);
  if (count < 0) fail_argument(arg(name) + ": shape " + shape_string(*t) + " has more elements than int64 can count");
  if (count == 0) return *t;
  if (t->data == nullptr) fail_argument(arg(name) + ": data must not be NULL");
  const size_t element_size = nkv_dtype_size(t->dtype);
  if (reinterpret_cast<uintptr_t>(t->data) % element_size != 0) {
    fail_argument(arg(name) + ": data pointer is not aligned to its element size (" + std::to_string(element_size) +
                  " bytes)");
  }
  // The farthest byte must be addressable: no offset may wrap around.
  const int64_t last = last_element_offset(*t);
  int64_t bytes = 0;
  if (last < 0 || __builtin_mul_overflow(last + 1, static_cast<int64_t>(element_size), &bytes) ||
      reinterpret_cast<uintptr_t>(t->data) > UINTPTR_MAX - static_cast<uintptr_t>(bytes)) {
    fail_argument(arg(name) + ": shape " + shape_string(*t) + " with its strides reaches beyond the address space");
  }
  return *t;
}

void check_dtype(const char* name, const nkv_tensor& t, std::initializer_list<nkv_dtype> allowed) {
  std::string expected;
  for (nkv_dtype d : allowed) {
    if (t.dtype == d) return;
    expected += (expected.empty() ? "" : " or ") + std::string(dtype_name(d));
  }
  fail_argument(arg(name) + ": expected dtype " + expected + ", got " + dtype_name(t.dtype));
}

void check_shape(const char* name, const nkv_tensor& t, std::initializer_list<int64_t> expected) {
  bool ok = t.ndim == static_cast<int32_t>(expected.size());
  std::string wanted = "[";
  int32_t i = 0;
  for (int64_t e : expected) {
    if (ok && e >= 0 && t.shape[i] != e) ok = false;
    wanted += (i ? ", " : "") + (e < 0 ? std::string("*") : std::to_string(e));
    ++i;
  }
  wanted += "]";
  if (!ok) fail_argument(arg(name) + ": expected shape " + wanted + ", got " + shape_string(t));
}

void check_unit_inner_stride(const char* name, const nkv_tensor& t) {
  if (t.ndim == 0) return;
  const int32_t last = t.ndim - 1;
  if (t.shape[last] > 1 && t.strides[last] != 1) {
    fail(NKV_STATUS_NOT_SUPPORTED, arg(name) + ": expected stride 1 along the last dimension, got " +
                                       std::to_string(t.strides[last]) + " (non-contiguous rows are not supported)");
  }
}

void check_rows_disjoint(const char* name, const nkv_tensor& t) {
  if (t.ndim == 2 && t.shape[0] > 1 && t.shape[1] > 0 && t.strides[0] < t.shape[1]) {
    fail_argument(arg(name) + ": row stride " + std::to_string(t.strides[0]) + " is smaller than the row length " +
                  std::to_string(t.shape[1]) + ", so output rows would overlap");
  }
}

void check_elements_disjoint(const char* name, const nkv_tensor& t) {
  if (element_count(t) <= 1) return;
  int order[NKV_MAX_DIMS];
  int dims = 0;
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] > 1) order[dims++] = i;
  }
  for (int k = 1; k < dims; ++k) {  // insertion sort by stride: at most NKV_MAX_DIMS entries
    for (int j = k; j > 0 && t.strides[order[j]] < t.strides[order[j - 1]]; --j) std::swap(order[j], order[j - 1]);
  }
  int64_t reach = 1;  // elements spanned by the dimensions placed so far
  for (int k = 0; k < dims; ++k) {
    const int d = order[k];
    if (t.strides[d] < reach) {
      fail_argument(arg(name) + ": stride " + std::to_string(t.strides[d]) + " of dimension " + std::to_string(d) +
                    " is smaller than the " + std::to_string(reach) + " elements spanned by the faster dimensions (shape " +
                    shape_string(t) + "), so output elements would overlap");
    }
    reach = t.strides[d] * (t.shape[d] - 1) + reach;
  }
}

void check_vector_aligned(const char* name, const nkv_tensor& t, int64_t elements) {
  const size_t bytes = static_cast<size_t>(elements) * nkv_dtype_size(t.dtype);
  if (element_count(t) == 0) return;
  if (reinterpret_cast<uintptr_t>(t.data) % bytes != 0) {
    fail_argument(arg(name) + ": data pointer must be aligned to " + std::to_string(bytes) + " bytes, got address " +
                  std::to_string(reinterpret_cast<uintptr_t>(t.data)));
  }
  for (int i = 0; i + 1 < t.ndim; ++i) {
    if (t.strides[i] % elements != 0) {
      fail_argument(arg(name) + ": stride " + std::to_string(t.strides[i]) + " of dimension " + std::to_string(i) +
                    " must be a multiple of " + std::to_string(elements) + " elements (" + std::to_string(bytes) +
                    "-byte vectors)");
    }
  }
}

void check_same_dtype(const char* name, const nkv_tensor& t, const char* reference_name, const nkv_tensor& reference) {
  if (t.dtype != reference.dtype) {
    fail_argument(arg(name) + ": expected dtype " + dtype_name(reference.dtype) + " (that of '" + reference_name +
                  "'), got " + dtype_name(t.dtype) + ", which differs");
  }
}

}  // namespace nkv
