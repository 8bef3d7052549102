// The end every decode kernel shares (flash-decoding's reduction): a block's four warps have each left their
// partial softmax state (O, row maximum in the log2 domain, row sum) in shared memory; the block combines
// them, writes its output (a pair cut in one piece) or its partial result, and the block that finishes a
// pair's last piece merges the pieces (no second kernel). Used by the fp16 decode (decode.cu) and the
// quantized-cache decodes (cuda/kv_quant/decode_kivi.cu, decode_bfp.cu), which share the plan's pieces and buffers.
#pragma once

#include <cuda_runtime.h>

#include "core/attention.h"
#include "cuda/attention/mma_sm80.cuh"

namespace nkv::cuda::attention {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;

struct DecodeKernelParams {
  DecodeAttentionArgs args;
  const DecodeSplit* splits;
  int32_t* merge_counters;     // [pair, counter_stride]: pieces finished in this run, per row block
  int counter_stride;
  float* partial_o;    // [partial index (DecodeSplit::pair_first + piece), q_len x G, head_dim]
  float* partial_lse;  // [partial index, q_len x G]
  int q_len;
  int num_heads_q;
  int num_heads_kv;
  KernelMask mask;
};

// The plan's part of a decode kernel's parameters (pieces, merge counters, partial buffers, mask); the caller
// sets args.
inline DecodeKernelParams decode_params_of(const nkv_attention_plan& plan) {
  DecodeKernelParams p{};
  p.splits = plan.device_splits;
  p.merge_counters = plan.merge_counters;
  p.counter_stride = decode_merge_counters_per_pair(plan);
  p.partial_o = plan.partial_o;
  p.partial_lse = plan.partial_lse;
  p.q_len = plan.q_len;
  p.num_heads_q = plan.num_heads_q;
  p.num_heads_kv = plan.num_heads_kv;
  p.mask = make_kernel_mask(plan);
  return p;
}

// The last block to finish a piece of a split pair (for its row block) merges the pair's partial
// results. It sums them in piece order whichever block that is, so the output does not depend on timing.
// Partials written by other blocks in this kernel are read through L2 (__ldcg), never a stale L1.
// The merge starts after the pair's other pieces have finished, so its L2 round trips are the tail of
// the kernel: up to kFewPieces pieces, one (merge_few_pieces); more, the pieces' weights exp(LSE - max) / sum
// are staged in shared memory kMergeChunk pieces at a time (one round trip), then each thread has kInFlight
// pieces' 4-element vectors in flight at once.
// `scratch` is shared memory for kMergeScratchFloats floats.
constexpr int kMergeChunk = 64;
template <int kRows>
constexpr int kMergeScratchFloats = kRows * (kMergeChunk + 2) + 1;

// Pieces a pair may have for the merge's one-round-trip path: a thread holds each piece's LSE and 4-element vector of
// every one of its items at once (at most 16 vectors).
template <int kHeadDim, int kRows>
constexpr int kFewPieces = 16 / ((kRows * kHeadDim / 4 + kDecodeThreads - 1) / kDecodeThreads);

// The merge of a pair cut into few pieces (the usual plan): each thread asks for its rows' LSEs and its vectors of
// every piece at once, one L2 round trip at the end of the kernel where the general path takes two (the LSEs, then
// the vectors they weigh). Pieces are summed in piece order, as there.
template <typename T, int kHeadDim, int kRows, typename PartialRow>
__device__ __forceinline__ void merge_few_pieces(const DecodeKernelParams& p, int sequence, int kv_head, int count, int valid_rows,
                                                 int row0, const PartialRow& partial_row) {
  constexpr int kVectors = kHeadDim / 4;
  constexpr int kItems = (kRows * kVectors + kDecodeThreads - 1) / kDecodeThreads;
  constexpr int kPieces = kFewPieces<kHeadDim, kRows>;
  const DecodeAttentionArgs& args = p.args;
  const int group = p.mask.group;
  float lse[kItems][kPieces];
  float4 value[kItems][kPieces];
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int item = threadIdx.x + j * kDecodeThreads;
    const int r = min(item / kVectors, valid_rows - 1);  // a dead item rereads a live row, written by nobody
#pragma unroll
    for (int u = 0; u < kPieces; ++u) {
      const int i = min(u, count - 1);  // a dead slot rereads a live piece, weight 0
      lse[j][u] = __ldcg(p.partial_lse + partial_row(i, r));
      value[j][u] = __ldcg(reinterpret_cast<const float4*>(p.partial_o + partial_row(i, r) * kHeadDim) + item % kVectors);
    }
  }
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int item = threadIdx.x + j * kDecodeThreads;
    if (item >= valid_rows * kVectors) continue;
    float best = lse[j][0];
#pragma unroll
    for (int u = 1; u < kPieces; ++u) best = u < count ? fmaxf(best, lse[j][u]) : best;
    const float base = best == -INFINITY ? 0.0f : best;
    float sum = 0.0f;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int u = 0; u < kPieces; ++u) {
      const float w = u < count ? __expf(lse[j][u] - base) : 0.0f;
      sum += w;
      acc.x += w * value[j][u].x;
      acc.y += w * value[j][u].y;
      acc.z += w * value[j][u].z;
      acc.w += w * value[j][u].w;
    }
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int row = row0 + item / kVectors;
    const int d = item % kVectors * 4;
    const int token = row / group;
    const int head = kv_head * group + (row - token * group);
    T* out = static_cast<T*>(args.o) + sequence * args.o_batch_stride + token * args.o_strides.row + head * args.o_strides.head + d;
    out[0] = MmaType<T>::from_float(acc.x * inverse);
    out[1] = MmaType<T>::from_float(acc.y * inverse);
    out[2] = MmaType<T>::from_float(acc.z * inverse);
    out[3] = MmaType<T>::from_float(acc.w * inverse);
    if (d == 0 && args.lse != nullptr) {
      args.lse[sequence * args.lse_batch_stride + head * args.lse_head_stride + token] = sum > 0.0f ? base + __logf(sum) : -INFINITY;
    }
  }
}

// kFewPiecesInOneTrip: pairs of few pieces take merge_few_pieces (the decodes whose loop keeps its registers with it
// inlined; in the BFP decode it cost the loop 1.4%, bench/NOTES.md q14).
template <typename T, int kHeadDim, int kRows, bool kFewPiecesInOneTrip = true>
__device__ void merge_pieces(const DecodeKernelParams& p, float* scratch, int sequence, int kv_head, int first,
                             int count, int row0, int rows) {
  constexpr int kInFlight = 16;
  constexpr int kVectors = kHeadDim / 4;
  constexpr int kItems = (kRows * kVectors + kDecodeThreads - 1) / kDecodeThreads;  // vectors per thread
  float* row_base = scratch;                 // [row]: the largest LSE
  float* row_inverse = scratch + kRows;      // [row]: 1 / sum of exp(LSE - largest)
  float* weights = scratch + 2 * kRows;      // [row][kMergeChunk]
  int& is_last = *reinterpret_cast<int*>(weights + kRows * kMergeChunk);  // whether this block merges
  __threadfence();  // this block's partials are visible before its count is
  __syncthreads();
  const int pair = sequence * p.num_heads_kv + kv_head;
  if (threadIdx.x == 0) {
    int* counter = p.merge_counters + static_cast<int64_t>(pair) * p.counter_stride + blockIdx.z;
    is_last = atomicAdd(counter, 1) == count - 1;
    if (is_last) *counter = 0;  // every piece of this run has counted: ready for the next run
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  const int valid_rows = min(kRows, rows - row0);
  auto partial_row = [&](int i, int r) { return static_cast<int64_t>(first + i) * rows + row0 + r; };
  const DecodeAttentionArgs& args = p.args;
  const int group = p.mask.group;
  if (kFewPiecesInOneTrip && count <= kFewPieces<kHeadDim, kRows>) {
    merge_few_pieces<T, kHeadDim, kRows>(p, sequence, kv_head, count, valid_rows, row0, partial_row);
    return;
  }
  // Per row, one warp each: the largest LSE, the sum, the row's LSE output. Up to kMergeChunk (= 64)
  // pieces the LSEs are read once: lane i holds piece i's and writes its weight.
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  for (int r = warp; r < valid_rows; r += kDecodeWarps) {
    float mine[kMergeChunk / 32];
#pragma unroll
    for (int u = 0; u < kMergeChunk / 32; ++u) {
      mine[u] = lane + 32 * u < count ? __ldcg(p.partial_lse + partial_row(lane + 32 * u, r)) : -INFINITY;
    }
    float best = mine[0];
#pragma unroll
    for (int u = 1; u < kMergeChunk / 32; ++u) best = fmaxf(best, mine[u]);
    for (int i = lane + kMergeChunk; i < count; i += 32) best = fmaxf(best, __ldcg(p.partial_lse + partial_row(i, r)));
#pragma unroll
    for (int m = 16; m > 0; m /= 2) best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, m));
    const float base = best == -INFINITY ? 0.0f : best;
    float own[kMergeChunk / 32];
    float sum = 0.0f;
#pragma unroll
    for (int u = 0; u < kMergeChunk / 32; ++u) {
      own[u] = lane + 32 * u < count ? __expf(mine[u] - base) : 0.0f;
      sum += own[u];
    }
    for (int i = lane + kMergeChunk; i < count; i += 32) sum += __expf(__ldcg(p.partial_lse + partial_row(i, r)) - base);
#pragma unroll
    for (int m = 16; m > 0; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
    for (int u = 0; u < kMergeChunk / 32; ++u) weights[r * kMergeChunk + lane + 32 * u] = own[u] * inverse;
    if (lane == 0) {
      row_base[r] = base;
      row_inverse[r] = inverse;
      const int row = row0 + r;
      const int token = row / group;
      const int head = kv_head * group + (row - token * group);
      if (args.lse != nullptr) {
        args.lse[sequence * args.lse_batch_stride + head * args.lse_head_stride + token] = sum > 0.0f ? base + __logf(sum) : -INFINITY;
      }
    }
  }
  float4 acc[kItems];
#pragma unroll
  for (int j = 0; j < kItems; ++j) acc[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int chunk = 0; chunk < count; chunk += kMergeChunk) {
    __syncthreads();  // the weights of the chunk before are used up (or, for the first, written)
    if (chunk > 0) {
      for (int e = threadIdx.x; e < valid_rows * kMergeChunk; e += kDecodeThreads) {
        const int r = e / kMergeChunk;
        const int i = chunk + e % kMergeChunk;
        weights[e] = i < count ? __expf(__ldcg(p.partial_lse + partial_row(i, r)) - row_base[r]) * row_inverse[r] : 0.0f;
      }
      __syncthreads();
    }
    const int in_chunk = min(kMergeChunk, count - chunk);
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const int item = threadIdx.x + j * kDecodeThreads;
      if (item < valid_rows * kVectors) {
        const int r = item / kVectors;
        const int v = item % kVectors;
        for (int i0 = 0; i0 < in_chunk; i0 += kInFlight) {
          float4 value[kInFlight];
#pragma unroll
          for (int u = 0; u < kInFlight; ++u) {
            const int i = chunk + min(i0 + u, in_chunk - 1);  // a dead slot rereads a live row, weight 0
            value[u] = __ldcg(reinterpret_cast<const float4*>(p.partial_o + partial_row(i, r) * kHeadDim) + v);
          }
#pragma unroll
          for (int u = 0; u < kInFlight; ++u) {
            const float w = i0 + u < in_chunk ? weights[r * kMergeChunk + i0 + u] : 0.0f;
            acc[j].x += w * value[u].x;
            acc[j].y += w * value[u].y;
            acc[j].z += w * value[u].z;
            acc[j].w += w * value[u].w;
          }
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int item = threadIdx.x + j * kDecodeThreads;
    if (item < valid_rows * kVectors) {
      const int row = row0 + item / kVectors;
      const int d = item % kVectors * 4;
      const int token = row / group;
      const int head = kv_head * group + (row - token * group);
      T* out = static_cast<T*>(args.o) + sequence * args.o_batch_stride + token * args.o_strides.row + head * args.o_strides.head + d;
      out[0] = MmaType<T>::from_float(acc[j].x);
      out[1] = MmaType<T>::from_float(acc[j].y);
      out[2] = MmaType<T>::from_float(acc[j].z);
      out[3] = MmaType<T>::from_float(acc[j].w);
    }
  }
}

// A warp's softmax state (rows in the m16n8 accumulator layout of kMTiles 16-row tiles: O over head_dim, row
// maximum and sum) into the merge area: merge_o [warp][row][kHeadDim], then merge_max and merge_sum [warp][row].
// Padding rows (at or past `rows`) are left out. The caller synchronizes the block before and after.
template <int kHeadDim, int kRows, int kMTiles, int kDTiles>
__device__ __forceinline__ void leave_warp_state(float* merge_o, const float (&o)[kMTiles][kDTiles][4], const float (&row_max)[kMTiles][2],
                                                 const float (&row_sum)[kMTiles][2], int row0, int rows) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* merge_max = merge_o + kDecodeWarps * kRows * kHeadDim;
  float* merge_sum = merge_max + kDecodeWarps * kRows;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = mt * 16 + lane / 4 + 8 * half;
      const float sum = quad_sum(row_sum[mt][half]);  // the whole warp shuffles, padding rows too
      if (row0 + r >= rows) continue;                  // padding rows of the MMA tile (q_len x G < 16): nothing to merge
      float* out = merge_o + (warp * kRows + r) * kHeadDim + (lane % 4) * 2;
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt) {
        *reinterpret_cast<float2*>(out + dt * 8) = make_float2(o[mt][dt][2 * half], o[mt][dt][2 * half + 1]);
      }
      if (lane % 4 == 0) {
        merge_max[warp * kRows + r] = row_max[mt][half];
        merge_sum[warp * kRows + r] = sum;
      }
    }
  }
}

// What a swizzling writer XORs into the low two bits of row r's columns in merge_o, (r / 2) % 4: a permutation within
// each aligned group of 4 columns. A writer whose lane holds rows 2t + j and columns 4g + (0..3) (the KIVI decode's O^T
// tiles) then stores to 32 different banks where the plain layout put its 4 t on one bank;
// finish_decode_block<.., kSwizzledColumns> undoes it.
__device__ __forceinline__ int merge_column_swizzle(int r) { return (r >> 1) & 3; }

// Combines the warps' states: merge_o [warp][row][kHeadDim], then merge_max and merge_sum [warp][row] right
// after it, for kRows packed query rows from row0 (of `rows`). The caller has synchronized the block after
// writing them; the area must hold kMergeScratchFloats<kRows> floats for merge_pieces. kSwizzledColumns: row r's
// columns were written XOR merge_column_swizzle(r).
template <typename T, int kHeadDim, int kRows, bool kFewPiecesInOneTrip = true, bool kSwizzledColumns = false>
__device__ void finish_decode_block(const DecodeKernelParams& p, float* merge_o, const DecodeSplit& split, int row0,
                                    int rows) {
  constexpr float kNegInf = -INFINITY;
  const float* merge_max = merge_o + kDecodeWarps * kRows * kHeadDim;
  const float* merge_sum = merge_max + kDecodeWarps * kRows;
  const DecodeAttentionArgs& args = p.args;
  const int group = p.mask.group;
  const int sequence = split.sequence;
  const int kv_head = split.kv_head;
  const bool final_output = split.pair_pieces == 1;
  // One thread per 4 consecutive output elements of a valid row.
  constexpr int kVectors = kHeadDim / 4;
  const int valid_rows = min(kRows, rows - row0);
  for (int item = threadIdx.x; item < valid_rows * kVectors; item += kDecodeThreads) {
    const int r = item / kVectors;
    const int d = item % kVectors * 4;
    float best = kNegInf;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) best = fmaxf(best, merge_max[w * kRows + r]);
    const float base = best == kNegInf ? 0.0f : best;
    float sum = 0.0f;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) {
      const float weight = exp2f(merge_max[w * kRows + r] - base);
      sum += merge_sum[w * kRows + r] * weight;
      const float4 part = *reinterpret_cast<const float4*>(merge_o + (w * kRows + r) * kHeadDim + d);
      acc.x += part.x * weight;
      acc.y += part.y * weight;
      acc.z += part.z * weight;
      acc.w += part.w * weight;
    }
    if constexpr (kSwizzledColumns) {  // the four warps' parts of row r share its permutation: undone once, on the sum
      const int swizzle = merge_column_swizzle(r);
      if (swizzle & 1) acc = make_float4(acc.y, acc.x, acc.w, acc.z);
      if (swizzle & 2) acc = make_float4(acc.z, acc.w, acc.x, acc.y);
    }
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
    const float4 value = make_float4(acc.x * inverse, acc.y * inverse, acc.z * inverse, acc.w * inverse);
    const float lse = sum > 0.0f ? (best + log2f(sum)) * 0.69314718055994531f : kNegInf;
    const int row = row0 + r;
    const int token = row / group;
    const int head = kv_head * group + (row - token * group);
    if (final_output) {
      T* out = static_cast<T*>(args.o) + sequence * args.o_batch_stride + token * args.o_strides.row + head * args.o_strides.head + d;
      out[0] = MmaType<T>::from_float(value.x);
      out[1] = MmaType<T>::from_float(value.y);
      out[2] = MmaType<T>::from_float(value.z);
      out[3] = MmaType<T>::from_float(value.w);
      if (d == 0 && args.lse != nullptr) args.lse[sequence * args.lse_batch_stride + head * args.lse_head_stride + token] = lse;
    } else {
      const int64_t partial_row = static_cast<int64_t>(split.pair_first + split.piece) * rows + row;
      *reinterpret_cast<float4*>(p.partial_o + partial_row * kHeadDim + d) = value;
      if (d == 0) p.partial_lse[partial_row] = lse;
    }
  }
  if (!final_output) {
    // The warps' merge area is free once every thread is past the loop above (merge_pieces syncs first).
    merge_pieces<T, kHeadDim, kRows, kFewPiecesInOneTrip>(p, merge_o, sequence, kv_head, split.pair_first, split.pair_pieces, row0, rows);
  }
}

}  // namespace nkv::cuda::attention
