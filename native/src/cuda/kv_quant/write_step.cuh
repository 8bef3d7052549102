// What the quantized caches' write kernels share (write_kivi.cu, write_bfp.cu): finding a work item's step entry
// and reading the step's K/V input.
#pragma once

#include <cuda_runtime.h>

#include "core/float_bits.h"
#include "core/quantized_kvcache.h"

namespace nkv::cuda {

// What every write kernel takes: the layer, the step's entries and its input rows.
struct WriteParams {
  QuantizedKvLayer l;
  QuantizedKvStep step;
  QuantizedKvInput in;
};

// The entry whose work items [before(i), before(i + 1)) hold `item` (entries in ascending order of before).
template <typename Before>
__device__ int step_entry_of(const QuantizedKvStep& step, int64_t item, Before before) {
  int lo = 0, hi = step.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (before(step.entries[mid]) <= item) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Channel c (head c / head_dim) of row `row` of the step's K or V.
__device__ __forceinline__ float step_input(const uint16_t* base, int64_t row_stride, int64_t head_stride, int head_dim, int64_t row,
                                            int64_t c) {
  return half_to_float(base[row * row_stride + c / head_dim * head_stride + c % head_dim]);
}

// The BFP cache's write (write_bfp.cu); write_kivi.cu's quantized_kv_write sends BFP layers there.
void quantized_kv_write_bfp(cudaStream_t stream, const QuantizedKvLayer& layer, const QuantizedKvStep& step, const QuantizedKvInput& input);

}  // namespace nkv::cuda
