// Argument validation for tensor views at the C ABI boundary. Each check throws nkv::Error with a
// message naming the argument, what was expected and what was passed.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/handles.h"

namespace nkv {

const char* dtype_name(int32_t dtype);
const char* device_name(int32_t device);
std::string shape_string(const nkv_tensor& t);

// Non-null view, known dtype, ndim in range, non-negative shape and strides, data non-null unless
// empty, and memory on the context's device.
const nkv_tensor& check_tensor(const char* name, const nkv_tensor* t, const nkv_context& context);
void check_dtype(const char* name, const nkv_tensor& t, std::initializer_list<nkv_dtype> allowed);
// The dtype of `reference`, named reference_name in the message.
void check_same_dtype(const char* name, const nkv_tensor& t, const char* reference_name, const nkv_tensor& reference);
// Expected shape; -1 in `expected` accepts any extent.
void check_shape(const char* name, const nkv_tensor& t, std::initializer_list<int64_t> expected);
// Elements along the last dimension must be adjacent (stride 1) where a kernel reads rows as vectors.
void check_unit_inner_stride(const char* name, const nkv_tensor& t);
// Rows of an output matrix must not overlap: row stride >= cols (when there is more than one row).
void check_rows_disjoint(const char* name, const nkv_tensor& t);
// No two elements of an output view share memory (any rank): with the dimensions ordered by stride,
// each stride must reach past the previous dimension's whole extent.
void check_elements_disjoint(const char* name, const nkv_tensor& t);
// The data pointer and every stride but the last are multiples of `elements` elements, so kernels can
// move whole `elements`-wide vectors (16 bytes) per access.
void check_vector_aligned(const char* name, const nkv_tensor& t, int64_t elements);
int64_t element_count(const nkv_tensor& t);

// The bytes a checked view can touch, [begin, end); begin == end for a view without elements.
struct ByteRange {
  uintptr_t begin = 0;
  uintptr_t end = 0;
};
ByteRange byte_range(const nkv_tensor& t);
// Outputs must not share memory with inputs or with each other: kernels read and write in parallel.
void check_disjoint(const char* name_a, const nkv_tensor& a, const char* name_b, const nkv_tensor& b);

const nkv_context& check_context(const nkv_context* context);

}  // namespace nkv
