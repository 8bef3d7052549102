// Prepacking: the plan (computed on the host, index arrays mirrored on the context's device) and the one
// data-movement primitive every pack/unpack operation reduces to.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/handles.h"
#include "core/host_device.h"  // the row arithmetic below runs on the host (CPU backend) and in CUDA kernels alike

namespace nkv {

// The plan's int32 arrays: the public nkv_pack_array values, then two that only the padded ops use.
constexpr int32_t kPackPublicArrayCount = NKV_PACK_ROW_STARTS + 1;
// [prompt_count + 1]: first caller token of each caller prompt, then total_tokens.
constexpr int32_t kPackCallerOffsets = kPackPublicArrayCount;
// [total_tokens]: padded slot p * longest_prompt + i of caller token i of prompt p. Empty when the padded
// layout has more slots than int32 can number (the padded ops then report NOT_SUPPORTED).
constexpr int32_t kPackPaddedSlots = kPackPublicArrayCount + 1;
constexpr int32_t kPackArrayCount = kPackPublicArrayCount + 2;

struct PackArraySpan {
  int64_t offset = 0;  // int32 values from the start of the block
  int64_t length = 0;
};

}  // namespace nkv

struct nkv_pack_plan {
  nkv_context* context = nullptr;
  int32_t prompt_count = 0;
  int32_t row_count = 0;
  int32_t row_capacity = 0;
  int32_t longest_prompt = 0;
  int64_t total_tokens = 0;
  // Every array back to back, so that the device needs one allocation and one upload.
  std::vector<int32_t> host_block;
  nkv::PackArraySpan spans[nkv::kPackArrayCount];
  // The CUDA allocation holding a copy of host_block; null on the CPU backend, whose kernels read
  // host_block itself.
  void* device_block = nullptr;

  const int32_t* host_array(int32_t which) const { return host_block.data() + spans[which].offset; }
  const int32_t* device_array(int32_t which) const {
    const int32_t* base = device_block != nullptr ? static_cast<const int32_t*>(device_block) : host_block.data();
    return base + spans[which].offset;
  }
};

namespace nkv {

// Fills everything but the device copy from validated arguments (every length >= 1, row_capacity >= the
// longest, total within int32): first-fit decreasing into rows of row_capacity tokens.
void plan_packing(const int32_t* prompt_lengths, int32_t prompt_count, int32_t row_capacity, nkv_pack_plan& plan);

// Where row r of a tensor starts, in elements from its data pointer. Rows come in groups of
// rows_per_group (the padded layout: one group of longest_prompt slots per prompt); a matrix is a
// single group.
struct RowLayout {
  int64_t row_stride = 0;
  int64_t rows_per_group = INT64_MAX;
  int64_t group_stride = 0;

  NKV_HOST_DEVICE int64_t offset(int64_t row) const {
    if (row < rows_per_group) return row * row_stride;  // the first group (a matrix's only one): no division
    const int64_t group = row / rows_per_group;
    return group * group_stride + (row - group * rows_per_group) * row_stride;
  }
};

// destination row r = source row index(r) for r < rows, where a row is row_elements elements of
// element_size bytes (unit inner stride) and index(r) == -1 writes zeros. index(r) is index[r] when
// `index` is set. Otherwise the destination's groups are prompts and `runs` [groups + 1] their first
// source rows: index(g * rows_per_group + i) = runs[g] + i while that is below runs[g + 1], else -1
// (padding): the padded gather, without an index array as large as the padded tensor.
// The index arrays live where the data lives.
struct GatherRowsArgs {
  const void* source = nullptr;
  RowLayout source_layout;
  void* destination = nullptr;
  RowLayout destination_layout;
  int64_t rows = 0;
  int64_t row_elements = 0;
  size_t element_size = 0;
  const int32_t* index = nullptr;
  const int32_t* runs = nullptr;

  NKV_HOST_DEVICE int64_t source_row(int64_t row) const {
    if (index != nullptr) return index[row];
    const int64_t group = row / destination_layout.rows_per_group;
    const int64_t candidate = runs[group] + (row - group * destination_layout.rows_per_group);
    return candidate < runs[group + 1] ? candidate : -1;
  }
};

namespace cpu {
void gather_rows(const GatherRowsArgs& args);
}  // namespace cpu

namespace cuda {
void gather_rows(const GatherRowsArgs& args, const nkv_context& context);
}  // namespace cuda

}  // namespace nkv
