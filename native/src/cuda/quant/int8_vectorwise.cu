// int8 vector-wise quantization (LLM.int8() first half) and its inverse.
//
// Row-wise is the hot path: one block per row, the row read once from HBM into registers (16-byte loads),
// its absmax reduced across the block, then codes written from the registers. Rows longer than the
// register cache re-read the rest (from L2: the row was just read). Column-wise needs the whole column's
// absmax before any code, so it is two passes: atomic absmax per column, then quantize.
//
// Every element computes exactly what cpu/quant.cpp computes (IEEE float32 division, round half to
// even), so CUDA results match the CPU reference bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "core/quant.h"
#include "cuda/common/cuda_check.h"

namespace nkv::cuda {
namespace {

// A row kernel's thread keeps CACHED 16-byte packs in registers between the two passes; wider rows use
// more packs per thread rather than more threads, which keeps blocks near 256 threads: per-thread index
// registers are then a smaller share of the register file and more rows fit on an SM at once.
constexpr int kMaxThreads = 1024;
constexpr int kRowThreadsTarget = 256;

// Block-size bound per instantiation, so the compiler may use up to 255 registers for 256-thread blocks
// instead of spilling the register cache to fit 1024-thread blocks.
constexpr int row_max_threads(int v, int cached) { return v == 1 ? kMaxThreads : cached == 16 ? 512 : kRowThreadsTarget; }
constexpr int kColumnThreads = 256;
constexpr int64_t kColumnRowsPerBlock = 64;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Loads that bypass L1 allocation for data read once; 16-byte packs become one LDG.128.
template <typename P>
__device__ __forceinline__ P load_streaming(const P* p) {
  if constexpr (sizeof(P) == 16) {
    const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(p));
    return *reinterpret_cast<const P*>(&raw);
  } else if constexpr (sizeof(P) == 8) {
    const uint2 raw = __ldcs(reinterpret_cast<const uint2*>(p));
    return *reinterpret_cast<const P*>(&raw);
  } else {
    return *p;
  }
}

template <typename P>
__device__ __forceinline__ void store_streaming(P* p, const P& value) {
  if constexpr (sizeof(P) == 16) {
    __stcs(reinterpret_cast<uint4*>(p), *reinterpret_cast<const uint4*>(&value));
  } else if constexpr (sizeof(P) == 8) {
    __stcs(reinterpret_cast<uint2*>(p), *reinterpret_cast<const uint2*>(&value));
  } else if constexpr (sizeof(P) == 4) {
    __stcs(reinterpret_cast<unsigned int*>(p), *reinterpret_cast<const unsigned int*>(&value));
  } else {
    *p = value;
  }
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ bool is_outlier(float x, float threshold) {
  return threshold > 0.0f && fabsf(x) >= threshold;
}

// |x| as bits: unsigned order is magnitude order and NaN sorts above inf, so max propagates NaN.
__device__ __forceinline__ uint32_t magnitude_bits(float x) { return __float_as_uint(x) & 0x7fffffffu; }

__device__ __forceinline__ float scale_from_absmax(uint32_t absmax_bits) {
  return __fdiv_rn(__uint_as_float(absmax_bits), 127.0f);
}

// x / scale rounded half-to-even, computed as in the CPU reference but without a division per element:
// q = x * RN(1/scale) is within 2^-15 of the IEEE quotient for |q| <= 128, so it rounds the same way
// unless it lies within 2^-13 of a half-integer; those rare elements (and rows whose scale is
// subnormal, where 1/scale loses that bound) take the exact division. NaN converts to 0.
struct Divisor {
  float scale;
  float reciprocal;
  bool exact_only;
};

__device__ __forceinline__ Divisor make_divisor(float scale) {
  return {scale, __frcp_rn(scale), scale > 0.0f && scale < 1.17549435e-38f};
}

__device__ __forceinline__ int8_t quantize_value(float x, const Divisor& d) {
  const float q = __fmul_rn(x, d.reciprocal);
  float k = rintf(q);
  if (d.exact_only || fabsf(q - k) > 0.5f - 0x1p-13f) k = rintf(__fdiv_rn(x, d.scale));
  return static_cast<int8_t>(min(max(__float2int_rn(k), -127), 127));  // cvt of NaN gives 0
}

// Magnitude max of a pack without converting each element: for 16-bit floats the bit patterns of
// |x| order like the values (NaN above inf), so two lanes at a time go through one 16x2 integer max.
template <typename T, int V>
__device__ __forceinline__ uint32_t pack_magnitude_max(const Pack<T, V>& p, uint32_t running) {
  if constexpr (sizeof(T) == 2 && V % 2 == 0) {
    const uint32_t* words = reinterpret_cast<const uint32_t*>(p.v);
#pragma unroll
    for (int j = 0; j < V / 2; ++j) running = __vmaxu2(running, words[j] & 0x7fff7fffu);
    return running;  // two 16-bit lanes; finish_magnitude_max folds them
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) running = max(running, magnitude_bits(to_float(p.v[j])));
    return running;
  }
}

template <typename T, int V>
__device__ __forceinline__ uint32_t finish_magnitude_max(uint32_t running) {
  if constexpr (sizeof(T) == 2 && V % 2 == 0) {
    const uint16_t bits = static_cast<uint16_t>(max(running & 0xffffu, running >> 16));
    T value;
    memcpy(&value, &bits, sizeof value);
    return magnitude_bits(to_float(value));
  } else {
    return running;
  }
}

// Max over the block; blockDim.x is a multiple of 32.
__device__ uint32_t block_max(uint32_t value) {
  __shared__ uint32_t warp_max[kMaxThreads / 32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  value = __reduce_max_sync(0xffffffffu, value);
  if (lane == 0) warp_max[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < static_cast<int>(blockDim.x >> 5) ? warp_max[lane] : 0u;
    value = __reduce_max_sync(0xffffffffu, value);
    if (lane == 0) warp_max[0] = value;
  }
  __syncthreads();
  return warp_max[0];
}

template <typename T, int V, int kRowCachedPacks, bool kOutliers>
__global__ void __launch_bounds__(row_max_threads(V, kRowCachedPacks)) quantize_rows_kernel(Int8QuantizeArgs a) {
  using In = Pack<T, V>;
  using Out = Pack<int8_t, V>;
  const int64_t row = blockIdx.x;
  const In* in = reinterpret_cast<const In*>(static_cast<const T*>(a.input) + row * a.input_row_stride);
  Out* out = reinterpret_cast<Out*>(a.codes + row * a.codes_row_stride);
  const int64_t packs = a.cols / V;
  const float threshold = a.outlier_threshold;

  uint32_t running = 0;
  auto absorb = [&](const In& p, int64_t pack) {
    if constexpr (kOutliers) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float x = to_float(p.v[j]);
        if (fabsf(x) >= threshold) {
          int32_t* flag = &a.outlier_columns[pack * V + j];
          if (*flag == 0) *flag = 1;  // read first: most rows find the flag already set, and skip the store
        } else {
          running = max(running, magnitude_bits(x));
        }
      }
    } else {
      running = pack_magnitude_max(p, running);
    }
  };

  In cache[kRowCachedPacks];
#pragma unroll
  for (int k = 0; k < kRowCachedPacks; ++k) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    if (i < packs) cache[k] = load_streaming(in + i);
  }
#pragma unroll
  for (int k = 0; k < kRowCachedPacks; ++k) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    if (i < packs) absorb(cache[k], i);
  }
  for (int64_t i = threadIdx.x + static_cast<int64_t>(kRowCachedPacks) * blockDim.x; i < packs; i += blockDim.x) {
    absorb(in[i], i);
  }
  const uint32_t absmax = block_max(kOutliers ? running : finish_magnitude_max<T, V>(running));

  const Divisor divisor = make_divisor(scale_from_absmax(absmax));
  if (threadIdx.x == 0) a.scales[row] = divisor.scale;

  auto emit = [&](const In& p, int64_t pack) {
    Out o;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float x = to_float(p.v[j]);
      o.v[j] = (kOutliers && fabsf(x) >= threshold) ? int8_t{0} : quantize_value(x, divisor);
    }
    store_streaming(out + pack, o);
  };
#pragma unroll
  for (int k = 0; k < kRowCachedPacks; ++k) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    if (i < packs) emit(cache[k], i);
  }
  for (int64_t i = threadIdx.x + static_cast<int64_t>(kRowCachedPacks) * blockDim.x; i < packs; i += blockDim.x) {
    emit(in[i], i);
  }
}

// Column kernels: a thread owns one pack of V columns and walks a chunk of kColumnRowsPerBlock rows
// (chunk blockIdx.y, then every gridDim.y-th chunk: grid.y is capped at 65535). Rows are loaded
// kColumnBatch at a time before any is used, so each thread keeps several 16-byte loads in flight.
constexpr int kColumnBatch = 4;

template <typename T, int V, typename Body>
__device__ __forceinline__ void for_each_row_batch(const Int8QuantizeArgs& a, int64_t pack, Body&& body) {
  using In = Pack<T, V>;
  for (int64_t begin = static_cast<int64_t>(blockIdx.y) * kColumnRowsPerBlock; begin < a.rows;
       begin += static_cast<int64_t>(gridDim.y) * kColumnRowsPerBlock) {
    const int64_t end = min(a.rows, begin + kColumnRowsPerBlock);
    for (int64_t r0 = begin; r0 < end; r0 += kColumnBatch) {
      In batch[kColumnBatch];
#pragma unroll
      for (int k = 0; k < kColumnBatch; ++k) {
        if (r0 + k < end) {
          batch[k] = load_streaming(reinterpret_cast<const In*>(static_cast<const T*>(a.input) + (r0 + k) * a.input_row_stride) + pack);
        }
      }
#pragma unroll
      for (int k = 0; k < kColumnBatch; ++k) {
        if (r0 + k < end) body(r0 + k, batch[k]);
      }
    }
  }
}

// Column pass 1: per-thread absmax over its rows; atomicMax merges the chunks of a column.
template <typename T, int V>
__global__ void __launch_bounds__(kColumnThreads) column_absmax_kernel(Int8QuantizeArgs a, uint32_t* absmax_bits) {
  const int64_t pack = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pack >= a.cols / V) return;
  uint32_t absmax[V] = {};
  bool outlier[V] = {};
  for_each_row_batch<T, V>(a, pack, [&](int64_t, const Pack<T, V>& p) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float x = to_float(p.v[j]);
      if (is_outlier(x, a.outlier_threshold)) {
        outlier[j] = true;
      } else {
        absmax[j] = max(absmax[j], magnitude_bits(x));
      }
    }
  });
#pragma unroll
  for (int j = 0; j < V; ++j) {
    if (absmax[j] != 0) atomicMax(&absmax_bits[pack * V + j], absmax[j]);
    if (outlier[j]) a.outlier_columns[pack * V + j] = 1;
  }
}

// Column pass 2: codes from the finished per-column absmax.
template <typename T, int V>
__global__ void __launch_bounds__(kColumnThreads) column_quantize_kernel(Int8QuantizeArgs a, const uint32_t* absmax_bits) {
  using Out = Pack<int8_t, V>;
  const int64_t pack = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pack >= a.cols / V) return;
  Divisor divisor[V];
#pragma unroll
  for (int j = 0; j < V; ++j) divisor[j] = make_divisor(scale_from_absmax(absmax_bits[pack * V + j]));
  for_each_row_batch<T, V>(a, pack, [&](int64_t r, const Pack<T, V>& p) {
    Out o;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float x = to_float(p.v[j]);
      o.v[j] = is_outlier(x, a.outlier_threshold) ? int8_t{0} : quantize_value(x, divisor[j]);
    }
    store_streaming(reinterpret_cast<Out*>(a.codes + r * a.codes_row_stride) + pack, o);
  });
}

// absmax bits -> scales, in place (the scales output doubles as the absmax accumulator).
__global__ void finish_column_scales_kernel(float* scales, int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c < cols) scales[c] = scale_from_absmax(__float_as_uint(scales[c]));
}

// Turns per-column flags (0/1) into ascending column indices, in place, then -1 past the count.
// One block walks the flags in spans of blockDim.x * kCompactPerThread; each thread reads its
// kCompactPerThread adjacent flags at once (one memory latency per span, not per flag), the block scans
// the per-thread counts, and the indices are written only after every flag of the span was read. An
// index is never written past the flag it comes from, so the in-place rewrite is safe.
constexpr int kCompactPerThread = 8;

__global__ void __launch_bounds__(kMaxThreads) compact_outlier_columns_kernel(int32_t* flags, int64_t cols,
                                                                              int32_t* count) {
  __shared__ int32_t warp_totals[kMaxThreads / 32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  const int64_t span = static_cast<int64_t>(blockDim.x) * kCompactPerThread;
  int32_t base = 0;
  for (int64_t start = 0; start < cols; start += span) {
    const int64_t first = start + static_cast<int64_t>(threadIdx.x) * kCompactPerThread;
    uint32_t set = 0;  // bit k: column first + k is flagged
#pragma unroll
    for (int k = 0; k < kCompactPerThread; ++k) {
      if (first + k < cols && flags[first + k] != 0) set |= 1u << k;
    }
    const int32_t mine = __popc(set);
    int32_t inclusive = mine;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int32_t other = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += other;
    }
    if (lane == 31) warp_totals[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
      int32_t total = lane < warps ? warp_totals[lane] : 0;
#pragma unroll
      for (int offset = 1; offset < 32; offset <<= 1) {
        const int32_t other = __shfl_up_sync(0xffffffffu, total, offset);
        if (lane >= offset) total += other;
      }
      if (lane < warps) warp_totals[lane] = total;  // inclusive prefix over warps
    }
    __syncthreads();
    int32_t next = base + (warp == 0 ? 0 : warp_totals[warp - 1]) + inclusive - mine;
    for (uint32_t rest = set; rest != 0; rest &= rest - 1) {
      flags[next++] = static_cast<int32_t>(first + __ffs(static_cast<int>(rest)) - 1);
    }
    base += warp_totals[warps - 1];
    __syncthreads();
  }
  for (int64_t c = base + threadIdx.x; c < cols; c += blockDim.x) flags[c] = -1;
  if (threadIdx.x == 0) *count = base;
}

template <typename T, int V>
__global__ void dequantize_kernel(Int8DequantizeArgs a) {
  using In = Pack<int8_t, V>;
  using Out = Pack<T, V>;
  const int64_t packs_per_row = a.cols / V;
  const int64_t total = a.rows * packs_per_row;
  const bool by_row = a.axis == NKV_QUANT_AXIS_ROW;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / packs_per_row;
    const int64_t pack = i - r * packs_per_row;
    const In codes = load_streaming(reinterpret_cast<const In*>(a.codes + r * a.codes_row_stride) + pack);
    Out o;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float scale = by_row ? a.scales[r] : a.scales[pack * V + j];
      o.v[j] = from_float<T>(static_cast<float>(codes.v[j]) * scale);
    }
    store_streaming(reinterpret_cast<Out*>(static_cast<T*>(a.output) + r * a.output_row_stride) + pack, o);
  }
}

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0; }

int round_up_warp(int64_t threads) {
  return static_cast<int>(std::clamp<int64_t>((threads + 31) / 32 * 32, 32, kMaxThreads));
}

void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

template <typename T, int V, int kCached>
void launch_rows_cached(const Int8QuantizeArgs& a, int64_t packs, bool outliers, cudaStream_t stream) {
  const int threads = std::min(round_up_warp((packs + kCached - 1) / kCached), row_max_threads(V, kCached));
  if (outliers) {
    quantize_rows_kernel<T, V, kCached, true><<<static_cast<unsigned>(a.rows), threads, 0, stream>>>(a);
  } else {
    quantize_rows_kernel<T, V, kCached, false><<<static_cast<unsigned>(a.rows), threads, 0, stream>>>(a);
  }
}

template <typename T, int V>
void launch_rows(const Int8QuantizeArgs& a, int64_t packs, bool outliers, cudaStream_t stream) {
  if constexpr (V == 1) {  // unaligned fallback: correctness first
    launch_rows_cached<T, V, 4>(a, packs, outliers, stream);
  } else if (packs <= 4 * kRowThreadsTarget) {
    launch_rows_cached<T, V, 4>(a, packs, outliers, stream);
  } else if (packs <= 8 * kRowThreadsTarget) {
    launch_rows_cached<T, V, 8>(a, packs, outliers, stream);
  } else {
    launch_rows_cached<T, V, 16>(a, packs, outliers, stream);
  }
  check_launch("quantize_rows_kernel");
}

template <typename T, int V>
void quantize(const Int8QuantizeArgs& a, cudaStream_t stream) {
  const bool outliers = a.outlier_threshold > 0.0f;
  if (outliers) NKV_CUDA_CHECK(cudaMemsetAsync(a.outlier_columns, 0, sizeof(int32_t) * a.cols, stream));
  const int64_t packs = a.cols / V;
  if (a.axis == NKV_QUANT_AXIS_ROW && a.rows > 0 && a.cols == 0) {
    NKV_CUDA_CHECK(cudaMemsetAsync(a.scales, 0, sizeof(float) * a.rows, stream));  // empty rows: scale 0
  } else if (a.rows > 0 && a.cols > 0) {
    if (a.axis == NKV_QUANT_AXIS_ROW) {
      launch_rows<T, V>(a, packs, outliers, stream);
    } else {
      auto* absmax_bits = reinterpret_cast<uint32_t*>(a.scales);
      NKV_CUDA_CHECK(cudaMemsetAsync(absmax_bits, 0, sizeof(uint32_t) * a.cols, stream));
      const dim3 grid(static_cast<unsigned>((packs + kColumnThreads - 1) / kColumnThreads),
                      static_cast<unsigned>(std::min<int64_t>((a.rows + kColumnRowsPerBlock - 1) / kColumnRowsPerBlock, 65535)));
      column_absmax_kernel<T, V><<<grid, kColumnThreads, 0, stream>>>(a, absmax_bits);
      check_launch("column_absmax_kernel");
      column_quantize_kernel<T, V><<<grid, kColumnThreads, 0, stream>>>(a, absmax_bits);
      check_launch("column_quantize_kernel");
      finish_column_scales_kernel<<<static_cast<unsigned>((a.cols + 255) / 256), 256, 0, stream>>>(a.scales, a.cols);
      check_launch("finish_column_scales_kernel");
    }
  } else if (a.axis == NKV_QUANT_AXIS_COLUMN && a.cols > 0) {
    NKV_CUDA_CHECK(cudaMemsetAsync(a.scales, 0, sizeof(float) * a.cols, stream));  // empty columns: scale 0
  }
  if (outliers) {
    compact_outlier_columns_kernel<<<1, kMaxThreads, 0, stream>>>(a.outlier_columns, a.cols, a.outlier_column_count);
    check_launch("compact_outlier_columns_kernel");
  }
}

template <typename T>
void quantize_dispatch(const Int8QuantizeArgs& a, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const bool vectorized = a.cols % V == 0 && aligned(a.input, 16) && (a.input_row_stride * sizeof(T)) % 16 == 0 &&
                          aligned(a.codes, V) && a.codes_row_stride % V == 0;
  if (vectorized) {
    quantize<T, V>(a, stream);
  } else {
    quantize<T, 1>(a, stream);
  }
}

template <typename T, int V>
void dequantize(const Int8DequantizeArgs& a, cudaStream_t stream, int multiprocessors) {
  const int64_t packs = a.rows * (a.cols / V);
  if (packs == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((packs + threads - 1) / threads, static_cast<int64_t>(multiprocessors) * 16);
  dequantize_kernel<T, V><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(a);
  check_launch("dequantize_kernel");
}

template <typename T>
void dequantize_dispatch(const Int8DequantizeArgs& a, cudaStream_t stream, int multiprocessors) {
  constexpr int V = 16 / sizeof(T);
  const bool vectorized = a.cols % V == 0 && aligned(a.output, 16) && (a.output_row_stride * sizeof(T)) % 16 == 0 &&
                          aligned(a.codes, V) && a.codes_row_stride % V == 0;
  if (vectorized) {
    dequantize<T, V>(a, stream, multiprocessors);
  } else {
    dequantize<T, 1>(a, stream, multiprocessors);
  }
}

int multiprocessor_count(int32_t ordinal) {
  int count = 0;
  NKV_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, ordinal));
  return count;
}

}  // namespace

void int8_quantize(const Int8QuantizeArgs& args, const nkv_context& context) {
  DeviceScope scope(context.device_ordinal);
  auto stream = static_cast<cudaStream_t>(context.stream);
  switch (args.input_dtype) {
    case NKV_DTYPE_FLOAT16: quantize_dispatch<__half>(args, stream); break;
    case NKV_DTYPE_BFLOAT16: quantize_dispatch<__nv_bfloat16>(args, stream); break;
    default: quantize_dispatch<float>(args, stream); break;
  }
}

void int8_dequantize(const Int8DequantizeArgs& args, const nkv_context& context) {
  DeviceScope scope(context.device_ordinal);
  auto stream = static_cast<cudaStream_t>(context.stream);
  const int sms = multiprocessor_count(context.device_ordinal);
  switch (args.output_dtype) {
    case NKV_DTYPE_FLOAT16: dequantize_dispatch<__half>(args, stream, sms); break;
    case NKV_DTYPE_BFLOAT16: dequantize_dispatch<__nv_bfloat16>(args, stream, sms); break;
    default: dequantize_dispatch<float>(args, stream, sms); break;
  }
}

}  // namespace nkv::cuda
