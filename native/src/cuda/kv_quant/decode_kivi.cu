// Decode attention read straight from a KIVI cache's codes (flash-decoding over quantized K/V; the plan's
// pieces, partial buffers and final merge are the fp16 decode's, cuda/attention/decode_merge.cuh).
//
// The MMAs run transposed, S^T = K Q^T and O^T = V^T P^T, so that the 16 rows of each tile are keys or
// channels (the many) and the 8 columns query rows (q_len x G, few). Codes become MMA operands without
// arithmetic: a byte permute brings a code of two neighbouring words into the low byte of each 16-bit half,
// and a mask keeps it there, so each half reads as an fp16 subnormal code x 2^(shift - 24), exact. The
// group's scale goes into the other operand (keys: q x s per channel, one group per 16-token tile; values:
// P x s per token, one group per 16-channel tile), its minimum into a second MMA (keys: mn . q, equal for
// every key of a group; values: P . mn per channel group), and the 2^(24 - shift) into the float32 result:
// shift is the code's bit offset within its byte, the same for all of a thread's rows, so that is one
// multiply per element at the end. Which keys a tile's rows are follows KIVI's packing (a key code word is
// 32 / b tokens of one channel, a value code word 32 / b channels of one token); the reduction dimension
// of the key MMA takes channels 4t .. 4t + 3 for lane t, so a lane's four are one 16-byte load.
// Tiles whose values are not all quantized yet (the last R + 15 keys or fewer: the fp16 residuals) are
// dequantized into a warp's scratch and multiplied as plain fp16; a warp's O is brought to true units once,
// before its first such tile (tiles run in key order, the quantized ones first).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "core/attention.h"
#include "core/error.h"
#include "core/kv_quant.h"
#include "core/quantized_kvcache.h"
#include "cuda/attention/decode_merge.cuh"
#include "cuda/attention/mma_sm80.cuh"
#include "cuda/common/cuda_check.h"

namespace nkv::cuda {
namespace kv_quant {
namespace {

using namespace attention;

constexpr int kChunk = 64;   // keys per pipeline stage: 16 per warp; the plan cuts pieces at multiples of it
constexpr int kStages = 4;

struct KiviDecodeParams {
  DecodeKernelParams base;  // q, o, lse, the plan's pieces and partials (base.args.k/v unused)
  QuantizedKvLayer kv;
};

template <int kBits, int kHeadDim, int kNTiles>
struct KiviTiles {
  static constexpr int kCodesPerWord = 32 / kBits;
  static constexpr int kRows = 8 * kNTiles;  // packed query rows per block
  static constexpr int kKeyCodeWords = kChunk / kCodesPerWord * kHeadDim;  // [word row][d]
  static constexpr int kKeyGroupWords = 2 * kHeadDim;                       // [group][d]: G >= 32, so at most two
  static constexpr int kValueWordsPerToken = kHeadDim / kCodesPerWord;
  static constexpr int kValueGroupsPerToken = kHeadDim / 32;                // the most (G = 32)
  static constexpr int kValueCodeWords = kChunk * kValueWordsPerToken;      // [token][word]
  static constexpr int kValueGroupWords = kChunk * kValueGroupsPerToken;    // [token][group]
  static constexpr int kStageWords = kKeyCodeWords + kKeyGroupWords + kValueCodeWords + kValueGroupWords;
  static constexpr int kScratchHalves = 2 * 16 * kHeadDim;  // per warp: K [16][d] and V^T [d][16]
  static constexpr size_t kPipelineBytes = static_cast<size_t>(kStages) * kStageWords * 4 + static_cast<size_t>(kDecodeWarps) * kScratchHalves * 2;
  static constexpr size_t kMergeBytes = static_cast<size_t>(kDecodeWarps) * kRows * (kHeadDim + 2) * 4;
  static constexpr size_t kSharedBytes = kPipelineBytes > kMergeBytes ? kPipelineBytes : kMergeBytes;
};

__device__ __forceinline__ uint32_t byte_permute(uint32_t a, uint32_t b, uint32_t selector) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(selector));
  return d;
}

__device__ __forceinline__ uint32_t multiply_halves(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

// Two floats as an fp16 pair, the first in the low half.
__device__ __forceinline__ uint32_t pack_halves(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// The 8x8 fp16 matrix the warp holds (lane: row lane / 4, columns 2 (lane % 4) ..) transposed.
__device__ __forceinline__ uint32_t transpose_8x8(uint32_t x) {
  uint32_t d;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(d) : "r"(x));
  return d;
}

__device__ __forceinline__ void copy_async_4(uint32_t shared, const void* global, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(shared), "l"(global), "r"(valid ? 4 : 0));
}

// How a lane turns two code words into an MMA operand for its tile rows g = lane / 4 and g + 8: the byte of
// each word that holds the row's code, and the code's bits within that byte.
template <int kBits>
struct CodeLanes {
  static constexpr int kCodesPerWord = 32 / kBits;
  uint32_t select_low;   // prmt selector for row g: that byte of word a to byte 0, of word b to byte 2
  uint32_t select_high;  // for row g + 8
  uint32_t mask;         // the code's bits in both halves
  float scale;           // 2^(24 - shift): what an operand code x 2^(shift - 24) is multiplied by

  __device__ static uint32_t selector(int row) {
    const uint32_t byte = static_cast<uint32_t>(row % kCodesPerWord * kBits / 8);
    return byte | byte << 4 | (byte + 4) << 8 | (byte + 4) << 12;
  }
  __device__ explicit CodeLanes(int g) {
    select_low = selector(g);
    select_high = selector(g + 8);
    const int shift = g % kCodesPerWord * kBits % 8;
    mask = (((1u << kBits) - 1u) << shift) * 0x00010001u;
    scale = __int_as_float((127 + 24 - shift) << 23);
  }
  __device__ uint32_t operand(uint32_t a, uint32_t b, bool high) const {
    return byte_permute(a, b, high ? select_high : select_low) & mask;
  }
};

template <int kBits, int kHeadDim, int kNTiles>
__global__ void __launch_bounds__(kDecodeThreads) decode_kivi_kernel(const KiviDecodeParams p) {
  using Tiles = KiviTiles<kBits, kHeadDim, kNTiles>;
  constexpr int kCpw = Tiles::kCodesPerWord;
  constexpr int kRows = Tiles::kRows;
  constexpr int kKSteps = kHeadDim / 16;
  constexpr int kVTiles = kHeadDim / 16;  // 16-channel tiles of O^T
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  uint32_t* stages = reinterpret_cast<uint32_t*>(shared_bytes);
  const int piece = blockIdx.x;
  const DecodeAttentionArgs& args = p.base.args;
  const QuantizedKvLayer& kv = p.kv;
  const DecodeSplit split = p.base.splits[piece];
  const int sequence = split.sequence;
  const int kv_head = split.kv_head;
  const int group = p.base.mask.group;
  const int rows = p.base.q_len * group;
  const int row0 = blockIdx.z * kRows;
  if (row0 >= rows) return;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int lk = split.sequence_keys;
  const int lq = p.base.q_len;
  const int offset = lk - lq;
  const int residual = kv.residual;
  const int key_group = kv.group;
  const int quantized_keys = static_cast<int>(kivi::quantized_keys(lk, residual));
  const int quantized_values = static_cast<int>(kivi::quantized_values(lk, residual));
  const int fast_end = quantized_values / 16 * 16;  // tiles below it have codes for all their keys and values
  const int first_token = row0 / group;
  const int last_token = (min(rows, row0 + kRows) - 1) / group;
  int key_end = split.key_end;
  if (p.base.mask.causal) key_end = min(key_end, last_token + offset + 1);
  const int window_start = p.base.mask.window_left >= 0 ? max(split.key_begin, first_token + offset - p.base.mask.window_left)
                                                        : split.key_begin;
  const int key_begin = split.key_begin + (window_start - split.key_begin) / kChunk * kChunk;
  const int chunks = key_end > key_begin ? (key_end - key_begin + kChunk - 1) / kChunk : 0;

  const int64_t channels = static_cast<int64_t>(kv.heads) * kHeadDim;
  const uint32_t* key_codes = kv.key_codes + sequence * kv.key_codes_slot + kv_head * kHeadDim;
  const uint32_t* key_groups = kv.key_groups + sequence * kv.key_groups_slot + kv_head * kHeadDim;
  const uint16_t* key_residual = kv.key_residual + sequence * kv.residual_slot + kv_head * kHeadDim;
  const uint32_t* value_codes = kv.value_codes + sequence * kv.value_codes_slot + kv_head * Tiles::kValueWordsPerToken;
  const int value_groups_per_token = kHeadDim / key_group;
  const uint32_t* value_groups = kv.value_groups + sequence * kv.value_groups_slot + kv_head * value_groups_per_token;
  const uint16_t* value_residual = kv.value_residual + sequence * kv.residual_slot + kv_head * kHeadDim;
  const int64_t value_word_stride = channels / kCpw;        // words from one token to the next
  const int64_t value_group_stride = channels / key_group;

  // One chunk of codes and groups into stage `chunk % kStages` (nothing for chunks past the quantized
  // tiles). Rows past the slot's capacity are zero-filled, never read from past the arrays.
  auto load_chunk = [&](int chunk) {
    const int c0 = key_begin + chunk * kChunk;
    if (c0 >= fast_end) return;
    uint32_t* stage = stages + (chunk % kStages) * Tiles::kStageWords;
    const uint32_t base = shared_address(stage);
    constexpr int kRowPieces = kHeadDim / 4;  // 16-byte pieces of a row of kHeadDim words
    for (int i = threadIdx.x; i < Tiles::kKeyCodeWords / 4; i += kDecodeThreads) {
      const int r = i / kRowPieces, piece4 = i % kRowPieces;
      const int word_row = c0 / kCpw + r;
      const bool valid = word_row * kCpw < kv.capacity;
      copy_async_16(base + 16u * i, key_codes + (valid ? word_row : 0) * channels + 4 * piece4, valid);
    }
    const uint32_t group_base = base + 4u * Tiles::kKeyCodeWords;
    for (int i = threadIdx.x; i < Tiles::kKeyGroupWords / 4; i += kDecodeThreads) {
      const int r = i / kRowPieces, piece4 = i % kRowPieces;
      const int key_group_index = c0 / key_group + r;
      const bool valid = key_group_index * key_group < min(kv.capacity, c0 + kChunk);
      copy_async_16(group_base + 16u * i, key_groups + (valid ? key_group_index : 0) * channels + 4 * piece4, valid);
    }
    const uint32_t value_base = group_base + 4u * Tiles::kKeyGroupWords;
    constexpr int kTokenPieces = Tiles::kValueWordsPerToken / 4;
    for (int i = threadIdx.x; i < Tiles::kValueCodeWords / 4; i += kDecodeThreads) {
      const int r = i / kTokenPieces, piece4 = i % kTokenPieces;
      const bool valid = c0 + r < kv.capacity;
      copy_async_16(value_base + 16u * i, value_codes + (valid ? c0 + r : 0) * value_word_stride + 4 * piece4, valid);
    }
    const uint32_t value_group_base = value_base + 4u * Tiles::kValueCodeWords;
    for (int i = threadIdx.x; i < kChunk * value_groups_per_token; i += kDecodeThreads) {
      const int r = i / value_groups_per_token, j = i % value_groups_per_token;
      const bool valid = c0 + r < kv.capacity;
      copy_async_4(value_group_base + 4u * (r * Tiles::kValueGroupsPerToken + j),
                   value_groups + (valid ? c0 + r : 0) * value_group_stride + j, valid);
    }
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < chunks) load_chunk(s);
    copy_async_commit();
  }

  // Q as the key MMA's B operand: column n = query row g of each 8-row tile, reduction index k = 2t + j
  // at channel 16 s + 4t + j, k = 2t + 8 + j at 16 s + 4t + 2 + j.
  uint32_t q_frag[kKSteps][kNTiles][2];
  KeyRange visible[kNTiles][2];
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt) {
    const int row = row0 + nt * 8 + g;
    const int token = row / group;
    const __half* q = static_cast<const __half*>(args.q) + sequence * args.q_batch_stride + token * args.q_strides.row +
                      (kv_head * group + row - token * group) * args.q_strides.head;
#pragma unroll
    for (int s = 0; s < kKSteps; ++s) {
      uint2 x = make_uint2(0u, 0u);
      if (row < rows) x = *reinterpret_cast<const uint2*>(q + 16 * s + 4 * t);
      q_frag[s][nt][0] = x.x;
      q_frag[s][nt][1] = x.y;
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int column_row = row0 + nt * 8 + 2 * t + j;
      KeyRange r = visible_keys(min(column_row, rows - 1) / group, lq, lk, p.base.mask.causal, p.base.mask.window_left);
      r.first = max(r.first, split.key_begin);
      r.last = min(r.last, split.key_end - 1);
      visible[nt][j] = r;
    }
  }

  const CodeLanes<kBits> lanes(g);
  const float exp_scale = p.base.mask.score.softcap > 0.0f ? 1.0f : p.base.mask.score.scale_log2;
  // O^T per 16-channel tile (rows: channels 16 i + g, + 8; columns: query rows 2t, 2t + 1), in code units
  // until `plain` (see the top of the file); the values' minimum term per channel group (rows: groups).
  float o[kVTiles][kNTiles][4];
  float o_min[kNTiles][4];
  float row_max[kNTiles][2];
  float row_sum[kNTiles][2];
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      o_min[nt][e] = 0.0f;
#pragma unroll
      for (int i = 0; i < kVTiles; ++i) o[i][nt][e] = 0.0f;
    }
    row_max[nt][0] = row_max[nt][1] = -INFINITY;
    row_sum[nt][0] = row_sum[nt][1] = 0.0f;
  }
  bool plain = false;
  auto to_plain = [&] {
#pragma unroll
    for (int i = 0; i < kVTiles; ++i) {
      const int source = (16 * i / key_group) * 4 + t;  // the lane holding this tile's group row of o_min
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        const float m0 = __shfl_sync(0xffffffffu, o_min[nt][0], source);
        const float m1 = __shfl_sync(0xffffffffu, o_min[nt][1], source);
        o[i][nt][0] = fmaf(o[i][nt][0], lanes.scale, m0);
        o[i][nt][1] = fmaf(o[i][nt][1], lanes.scale, m1);
        o[i][nt][2] = fmaf(o[i][nt][2], lanes.scale, m0);
        o[i][nt][3] = fmaf(o[i][nt][3], lanes.scale, m1);
      }
    }
    plain = true;
  };

  __half* scratch_k = reinterpret_cast<__half*>(shared_bytes + static_cast<size_t>(kStages) * Tiles::kStageWords * 4) +
                      warp * Tiles::kScratchHalves;  // [16][kHeadDim]
  __half* scratch_vt = scratch_k + 16 * kHeadDim;    // [kHeadDim][16]

  for (int chunk = 0; chunk < chunks; ++chunk) {
    copy_async_wait<kStages - 2>();
    __syncthreads();  // this chunk is in; every warp is done with the stage the next load overwrites
    if (chunk + kStages - 1 < chunks) load_chunk(chunk + kStages - 1);
    copy_async_commit();

    const int c0 = key_begin + chunk * kChunk;
    const int t0 = c0 + warp * 16;
    if (t0 >= key_end) continue;
    const uint32_t* stage = stages + (chunk % kStages) * Tiles::kStageWords;
    const bool fast = t0 + 16 <= fast_end;
    float s[kNTiles][4];

    if (fast) {
      // ---- logits from the key codes of this tile (tokens t0 .. t0 + 15, one key group) ----
      const uint32_t* codes = stage + (t0 - c0) / kCpw * kHeadDim;
      const int low_row = g / kCpw * kHeadDim;          // word rows of rows g and g + 8 past the tile's first
      const int high_row = (g + 8) / kCpw * kHeadDim;
      const uint32_t* groups = stage + Tiles::kKeyCodeWords + (t0 / key_group - c0 / key_group) * kHeadDim;
      float acc[kNTiles][4], bias[kNTiles][4];
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = bias[nt][e] = 0.0f;
      }
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        const int c = 16 * ks + 4 * t;
        const uint4 gr = *reinterpret_cast<const uint4*>(groups + c);
        const uint32_t scale01 = byte_permute(gr.x, gr.y, 0x5410), scale23 = byte_permute(gr.z, gr.w, 0x5410);
        const uint32_t min01 = byte_permute(gr.x, gr.y, 0x7632), min23 = byte_permute(gr.z, gr.w, 0x7632);
        const uint4 lo = *reinterpret_cast<const uint4*>(codes + low_row + c);
        const uint4 hi = kBits == 2 ? lo : *reinterpret_cast<const uint4*>(codes + high_row + c);
        const uint32_t a[4] = {lanes.operand(lo.x, lo.y, false), lanes.operand(hi.x, hi.y, true),
                               lanes.operand(lo.z, lo.w, false), lanes.operand(hi.z, hi.w, true)};
        const uint32_t a_min[4] = {min01, min01, min23, min23};
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          mma_16816(acc[nt], a, multiply_halves(q_frag[ks][nt][0], scale01), multiply_halves(q_frag[ks][nt][1], scale23), __half());
          mma_16816(bias[nt], a_min, q_frag[ks][nt][0], q_frag[ks][nt][1], __half());
        }
      }
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = fmaf(acc[nt][e], lanes.scale, bias[nt][e]);
      }
    } else {
      if (!plain) to_plain();
      // ---- a tile with fp16 residual keys or values: dequantized into the warp's scratch ----
      for (int e = lane; e < 16 * kHeadDim; e += 32) {
        const int r = e / kHeadDim, d = e % kHeadDim;
        const int token = t0 + r;
        float key = 0.0f, value = 0.0f;
        if (token < lk) {
          if (token < quantized_keys) {
            const kivi::Group kg = kivi::unpack_group(key_groups[token / key_group * channels + d]);
            key = kivi::value_of(unpack_code(key_codes[token / kCpw * channels + d], token % kCpw, kBits), kg);
          } else {
            key = half_to_float(key_residual[(token - quantized_keys) * channels + d]);
          }
          if (token < quantized_values) {
            const kivi::Group vg = kivi::unpack_group(value_groups[token * value_group_stride + d / key_group]);
            value = kivi::value_of(unpack_code(value_codes[token * value_word_stride + d / kCpw], d % kCpw, kBits), vg);
          } else {
            value = half_to_float(value_residual[token % residual * channels + d]);
          }
        }
        scratch_k[r * kHeadDim + d] = __float2half_rn(key);
        scratch_vt[d * 16 + r] = __float2half_rn(value);
      }
      __syncwarp();
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
      }
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        const int c = 16 * ks + 4 * t;
        const uint32_t a[4] = {*reinterpret_cast<const uint32_t*>(scratch_k + g * kHeadDim + c),
                               *reinterpret_cast<const uint32_t*>(scratch_k + (g + 8) * kHeadDim + c),
                               *reinterpret_cast<const uint32_t*>(scratch_k + g * kHeadDim + c + 2),
                               *reinterpret_cast<const uint32_t*>(scratch_k + (g + 8) * kHeadDim + c + 2)};
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) mma_16816(s[nt], a, q_frag[ks][nt][0], q_frag[ks][nt][1], __half());
      }
    }

    // ---- one online-softmax step over the tile's 16 keys, per query column ----
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int token = t0 + g + 8 * (e / 2);
        const KeyRange& r = visible[nt][e % 2];
        float x = p.base.mask.score.softcap > 0.0f ? p.base.mask.score.capped(s[nt][e]) : s[nt][e];
        s[nt][e] = token >= r.first && token <= r.last ? x : -INFINITY;
      }
    }
    uint32_t probabilities[kNTiles][2];  // P^T as the value MMA's B operand
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      float alpha[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        float tile_max = fmaxf(s[nt][j], s[nt][2 + j]) * exp_scale;
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 4));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 8));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 16));
        const float new_max = fmaxf(row_max[nt][j], tile_max);
        const float base = new_max == -INFINITY ? 0.0f : new_max;
        alpha[j] = fast_exp2(row_max[nt][j] - base);
        row_max[nt][j] = new_max;
        s[nt][j] = fast_exp2(fmaf(s[nt][j], exp_scale, -base));
        s[nt][2 + j] = fast_exp2(fmaf(s[nt][2 + j], exp_scale, -base));
        row_sum[nt][j] = fmaf(row_sum[nt][j], alpha[j], s[nt][j] + s[nt][2 + j]);
      }
#pragma unroll
      for (int i = 0; i < kVTiles; ++i) {
        o[i][nt][0] *= alpha[0];
        o[i][nt][1] *= alpha[1];
        o[i][nt][2] *= alpha[0];
        o[i][nt][3] *= alpha[1];
      }
      o_min[nt][0] *= alpha[0];
      o_min[nt][1] *= alpha[1];
      probabilities[nt][0] = transpose_8x8(pack_halves(s[nt][0], s[nt][1]));
      probabilities[nt][1] = transpose_8x8(pack_halves(s[nt][2], s[nt][3]));
    }

    if (fast) {
      // ---- P.V from the value codes: tokens 2t, 2t + 1 (and + 8) of the tile ----
      const int local = t0 - c0;
      const uint32_t* words = stage + Tiles::kKeyCodeWords + Tiles::kKeyGroupWords + local * Tiles::kValueWordsPerToken;
      const uint32_t* groups = stage + Tiles::kKeyCodeWords + Tiles::kKeyGroupWords + Tiles::kValueCodeWords +
                               local * Tiles::kValueGroupsPerToken;
      auto word = [&](int token, int w) { return words[token * Tiles::kValueWordsPerToken + w]; };
      auto value_group = [&](int token, int j) { return groups[token * Tiles::kValueGroupsPerToken + j]; };
      {
        // Rows of the minimum MMA are channel groups: row g holds group g's minimums of the four tokens.
        uint32_t a_min[4] = {0u, 0u, 0u, 0u};
        if (g < value_groups_per_token) {
          a_min[0] = byte_permute(value_group(2 * t, g), value_group(2 * t + 1, g), 0x7632);
          a_min[2] = byte_permute(value_group(2 * t + 8, g), value_group(2 * t + 9, g), 0x7632);
        }
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) mma_16816(o_min[nt], a_min, probabilities[nt][0], probabilities[nt][1], __half());
      }
      uint32_t scaled[kNTiles][2];
#pragma unroll
      for (int i = 0; i < kVTiles; ++i) {
        if (i % 2 == 0) {  // two 16-channel tiles per group at least (G >= 32)
          const int j = 16 * i / key_group;
          const uint32_t scale01 = byte_permute(value_group(2 * t, j), value_group(2 * t + 1, j), 0x5410);
          const uint32_t scale89 = byte_permute(value_group(2 * t + 8, j), value_group(2 * t + 9, j), 0x5410);
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt) {
            scaled[nt][0] = multiply_halves(probabilities[nt][0], scale01);
            scaled[nt][1] = multiply_halves(probabilities[nt][1], scale89);
          }
        }
        const int low = (16 * i + g) / kCpw, high = (16 * i + g + 8) / kCpw;
        const uint32_t a[4] = {lanes.operand(word(2 * t, low), word(2 * t + 1, low), false),
                               lanes.operand(word(2 * t, high), word(2 * t + 1, high), true),
                               lanes.operand(word(2 * t + 8, low), word(2 * t + 9, low), false),
                               lanes.operand(word(2 * t + 8, high), word(2 * t + 9, high), true)};
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) mma_16816(o[i][nt], a, scaled[nt][0], scaled[nt][1], __half());
      }
    } else {
#pragma unroll
      for (int i = 0; i < kVTiles; ++i) {
        const __half* v = scratch_vt + (16 * i + g) * 16 + 2 * t;
        const uint32_t a[4] = {*reinterpret_cast<const uint32_t*>(v), *reinterpret_cast<const uint32_t*>(v + 8 * 16),
                               *reinterpret_cast<const uint32_t*>(v + 8), *reinterpret_cast<const uint32_t*>(v + 8 * 16 + 8)};
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) mma_16816(o[i][nt], a, probabilities[nt][0], probabilities[nt][1], __half());
      }
      __syncwarp();  // the scratch is read before the next tile overwrites it
    }
  }
  if (!plain) to_plain();
  copy_async_wait<0>();
  __syncthreads();  // the pipeline's shared memory becomes the merge area

  float* merge_o = reinterpret_cast<float*>(shared_bytes);        // [warp][row][d]
  float* merge_max = merge_o + kDecodeWarps * kRows * kHeadDim;   // [warp][row]
  float* merge_sum = merge_max + kDecodeWarps * kRows;            // [warp][row]
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float sum = row_sum[nt][j];
      sum += __shfl_xor_sync(0xffffffffu, sum, 4);
      sum += __shfl_xor_sync(0xffffffffu, sum, 8);
      sum += __shfl_xor_sync(0xffffffffu, sum, 16);
      const int r = nt * 8 + 2 * t + j;
#pragma unroll
      for (int i = 0; i < kVTiles; ++i) {
        merge_o[(warp * kRows + r) * kHeadDim + 16 * i + g] = o[i][nt][j];
        merge_o[(warp * kRows + r) * kHeadDim + 16 * i + g + 8] = o[i][nt][2 + j];
      }
      if (g == 0) {
        merge_max[warp * kRows + r] = row_max[nt][j];
        merge_sum[warp * kRows + r] = sum;
      }
    }
  }
  __syncthreads();
  static_assert(Tiles::kMergeBytes >= kMergeScratchFloats<kRows> * sizeof(float), "merge_pieces' scratch fits the merge area");
  finish_decode_block<__half, kHeadDim, kRows>(p.base, merge_o, piece, split, row0, rows);
}

template <int kBits, int kHeadDim, int kNTiles>
void launch(const nkv_attention_plan& plan, const KiviDecodeParams& params) {
  using Tiles = KiviTiles<kBits, kHeadDim, kNTiles>;
  auto kernel = decode_kivi_kernel<kBits, kHeadDim, kNTiles>;
  NKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Tiles::kSharedBytes)));
  const int rows = plan.q_len * params.base.mask.group;
  const int row_blocks = (rows + Tiles::kRows - 1) / Tiles::kRows;
  const dim3 grid(static_cast<unsigned>(plan.splits.size()), 1, static_cast<unsigned>(row_blocks));
  kernel<<<grid, kDecodeThreads, Tiles::kSharedBytes, static_cast<cudaStream_t>(plan.context->stream)>>>(params);
  NKV_CUDA_CHECK(cudaGetLastError());
}

template <int kBits, int kHeadDim>
void dispatch_rows(const nkv_attention_plan& plan, const KiviDecodeParams& params) {
  // Up to 8 packed rows (q_len x G) fill one 8-column tile; more take blocks of 16 (two tiles), which is also
  // how the plan's merge counters count row blocks.
  if (plan.q_len * params.base.mask.group <= 8) {
    launch<kBits, kHeadDim, 1>(plan, params);
  } else {
    launch<kBits, kHeadDim, 2>(plan, params);
  }
}

template <int kBits>
void dispatch_head_dim(const nkv_attention_plan& plan, const KiviDecodeParams& params) {
  if (plan.head_dim == 64) return dispatch_rows<kBits, 64>(plan, params);
  return dispatch_rows<kBits, 128>(plan, params);
}

}  // namespace
}  // namespace kv_quant

void attention_decode_quantized(const nkv_attention_plan& plan, const QuantizedDecodeArgs& a) {
  using namespace kv_quant;
  static_assert(kChunk == 64, "pieces are cut at the fp16 decode's 64-key tiles");
  KiviDecodeParams p{};
  p.base.args.dtype = NKV_DTYPE_FLOAT16;
  p.base.args.q = a.q;
  p.base.args.q_batch_stride = a.q_batch_stride;
  p.base.args.q_strides = a.q_strides;
  p.base.args.o = a.o;
  p.base.args.o_batch_stride = a.o_batch_stride;
  p.base.args.o_strides = a.o_strides;
  p.base.args.lse = a.lse;
  p.base.args.lse_batch_stride = a.lse_batch_stride;
  p.base.args.lse_head_stride = a.lse_head_stride;
  p.base.splits = plan.device_splits;
  p.base.merge_counters = plan.merge_counters;
  p.base.counter_stride = decode_merge_counters_per_pair(plan);
  p.base.partial_o = plan.partial_o;
  p.base.partial_lse = plan.partial_lse;
  p.base.q_len = plan.q_len;
  p.base.num_heads_q = plan.num_heads_q;
  p.base.num_heads_kv = plan.num_heads_kv;
  p.base.mask = attention::make_kernel_mask(plan);
  p.kv = a.kv;
  DeviceScope scope(plan.context->device_ordinal);
  if (plan.head_dim != 64 && plan.head_dim != 128) {
    fail(NKV_STATUS_INTERNAL, "quantized decode: head_dim " + std::to_string(plan.head_dim) + " reached the kernel");
  }
  switch (a.kv.bits) {
    case 2: return dispatch_head_dim<2>(plan, p);
    case 4: return dispatch_head_dim<4>(plan, p);
    case 8: return dispatch_head_dim<8>(plan, p);
    default: fail(NKV_STATUS_INTERNAL, "quantized decode: " + std::to_string(a.kv.bits) + "-bit codes reached the kernel");
  }
}

}  // namespace nkv::cuda
