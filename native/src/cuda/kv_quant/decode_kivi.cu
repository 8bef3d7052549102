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
// A tile whose keys or values are not all coded (the last R + 15 tokens or fewer: the fp16 residuals) has
// those rows brought into its warp's scratch as fp16 and multiplied as they are; a warp's O is brought to
// true units once, before its first tile of plain values (tiles run in key order, the coded ones first).
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
// Pipeline stages and the blocks per SM the registers are capped for (128 registers: 4 blocks of 4 warps),
// overridable at configure time for tuning runs. On an H200, 3 stages and 4 blocks ran KIVI-2 at b8 x L32768
// in 181 us where 4 stages and 3 blocks (159 registers) took 195 us in the same run (bench/NOTES.md q3).
#ifndef NKV_KIVI_STAGES
#define NKV_KIVI_STAGES 3
#endif
#ifndef NKV_KIVI_MIN_BLOCKS
#define NKV_KIVI_MIN_BLOCKS 4
#endif
constexpr int kStages = NKV_KIVI_STAGES;
constexpr int kMinBlocksPerSm = NKV_KIVI_MIN_BLOCKS;

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
  static constexpr int kScratchHalves = 2 * 16 * kHeadDim;  // per warp: K and V [16][d]
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
__global__ void __launch_bounds__(kDecodeThreads, kMinBlocksPerSm) decode_kivi_kernel(const KiviDecodeParams p) {
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
  const int group_shift = kv.group_shift;  // G = 2^group_shift: no divisions by a run-time G in the loop
  const int quantized_keys = static_cast<int>(kivi::quantized_keys(lk, residual));
  const int quantized_values = static_cast<int>(kivi::quantized_values(lk, residual));
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
  const int value_groups_per_token = kHeadDim >> group_shift;
  const uint32_t* value_groups = kv.value_groups + sequence * kv.value_groups_slot + kv_head * value_groups_per_token;
  const uint16_t* value_residual = kv.value_residual + sequence * kv.residual_slot + kv_head * kHeadDim;
  const int64_t value_word_stride = channels / kCpw;        // words from one token to the next
  const int64_t value_group_stride = channels >> group_shift;

  // One chunk of codes and groups into stage `chunk % kStages` (nothing for chunks past the quantized
  // keys, which hold no codes at all). Rows past the slot's capacity are zero-filled, never read from past
  // the arrays.
  // Each thread's pieces of a stage are the same in every chunk: their offsets are computed once.
  constexpr int kRowPieces = kHeadDim / 4;  // 16-byte pieces of a row of kHeadDim words
  constexpr int kTokenPieces = Tiles::kValueWordsPerToken / 4;
  constexpr int kKeyCodePieces = (Tiles::kKeyCodeWords / 4 + kDecodeThreads - 1) / kDecodeThreads;
  constexpr int kKeyGroupPieces = (Tiles::kKeyGroupWords / 4 + kDecodeThreads - 1) / kDecodeThreads;
  constexpr int kValueCodePieces = (Tiles::kValueCodeWords / 4 + kDecodeThreads - 1) / kDecodeThreads;
  constexpr int kValueGroupItems = (Tiles::kValueGroupWords + kDecodeThreads - 1) / kDecodeThreads;
  const int value_group_items = kChunk * value_groups_per_token;
  const int value_group_token_shift = 31 - __clz(value_groups_per_token);
  auto load_chunk = [&](int chunk) {
    const int c0 = key_begin + chunk * kChunk;
    if (c0 >= quantized_keys) return;
    const uint32_t base = shared_address(stages + (chunk % kStages) * Tiles::kStageWords);
#pragma unroll
    for (int j = 0; j < kKeyCodePieces; ++j) {
      const int i = threadIdx.x + j * kDecodeThreads;
      if (i < Tiles::kKeyCodeWords / 4) {
        const int word_row = c0 / kCpw + i / kRowPieces;
        const bool valid = word_row * kCpw < kv.capacity;
        copy_async_16(base + 16u * i, key_codes + (valid ? word_row : 0) * channels + 4 * (i % kRowPieces), valid);
      }
    }
    const uint32_t group_base = base + 4u * Tiles::kKeyCodeWords;
#pragma unroll
    for (int j = 0; j < kKeyGroupPieces; ++j) {
      const int i = threadIdx.x + j * kDecodeThreads;
      if (i < Tiles::kKeyGroupWords / 4) {
        const int index = (c0 >> group_shift) + i / kRowPieces;
        const bool valid = (index << group_shift) < min(kv.capacity, c0 + kChunk);  // only groups the chunk has
        copy_async_16(group_base + 16u * i, key_groups + (valid ? index : 0) * channels + 4 * (i % kRowPieces), valid);
      }
    }
    const uint32_t value_base = group_base + 4u * Tiles::kKeyGroupWords;
#pragma unroll
    for (int j = 0; j < kValueCodePieces; ++j) {
      const int i = threadIdx.x + j * kDecodeThreads;
      if (i < Tiles::kValueCodeWords / 4) {
        const int token = c0 + i / kTokenPieces;
        const bool valid = token < kv.capacity;
        copy_async_16(value_base + 16u * i, value_codes + (valid ? token : 0) * value_word_stride + 4 * (i % kTokenPieces), valid);
      }
    }
    const uint32_t value_group_base = value_base + 4u * Tiles::kValueCodeWords;
#pragma unroll
    for (int j = 0; j < kValueGroupItems; ++j) {
      const int i = threadIdx.x + j * kDecodeThreads;
      if (i < value_group_items) {
        const int r = i >> value_group_token_shift, w = i & (value_groups_per_token - 1);
        const bool valid = c0 + r < kv.capacity;
        copy_async_4(value_group_base + 4u * (r * Tiles::kValueGroupsPerToken + w),
                     value_groups + (valid ? c0 + r : 0) * value_group_stride + w, valid);
      }
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
      const int source = ((16 * i) >> group_shift) * 4 + t;  // the lane holding this tile's group row of o_min
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
  __half* scratch_v = scratch_k + 16 * kHeadDim;     // [16][kHeadDim]
  // A tile's fp16 rows into the warp's scratch: residual keys (when its keys are not coded), and values from
  // the residual ring or, below T - R, dequantized from the stage's codes; zeros past the sequence. The
  // residual rows come as independent 16-byte loads, all in flight together.
  auto fill_scratch = [&](const uint32_t* stage, int c0, int t0, bool keys_coded, bool values_coded) {
    constexpr int kChunksPerRow = kHeadDim / 8;
    constexpr int kPerLane = 16 * kChunksPerRow / 32;
    if (!keys_coded) {
      uint4 rows[kPerLane];
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int item = lane + 32 * j;
        const int token = t0 + item / kChunksPerRow, c = item % kChunksPerRow * 8;
        rows[j] = token < lk ? *reinterpret_cast<const uint4*>(key_residual + (token - quantized_keys) * channels + c)
                             : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int item = lane + 32 * j;
        *reinterpret_cast<uint4*>(scratch_k + item / kChunksPerRow * kHeadDim + item % kChunksPerRow * 8) = rows[j];
      }
    }
    if (!values_coded) {
      uint4 rows[kPerLane];
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int item = lane + 32 * j;
        const int token = t0 + item / kChunksPerRow, c = item % kChunksPerRow * 8;
        rows[j] = token >= quantized_values && token < lk
                      ? *reinterpret_cast<const uint4*>(value_residual + token % residual * channels + c)
                      : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int item = lane + 32 * j;
        const int r = item / kChunksPerRow, c = item % kChunksPerRow * 8;
        const int token = t0 + r;
        if (token < quantized_values) {  // the one tile across T - R: its first tokens are coded
          const int local = token - c0;
          const uint32_t* words = stage + Tiles::kKeyCodeWords + Tiles::kKeyGroupWords + local * Tiles::kValueWordsPerToken;
          const uint32_t* groups = stage + Tiles::kKeyCodeWords + Tiles::kKeyGroupWords + Tiles::kValueCodeWords +
                                   local * Tiles::kValueGroupsPerToken;
          uint32_t halves[4];
          for (int e = 0; e < 8; e += 2) {
            float pair[2];
            for (int u = 0; u < 2; ++u) {
              const int channel = c + e + u;
              const kivi::Group vg = kivi::unpack_group(groups[channel >> group_shift]);
              pair[u] = kivi::value_of(unpack_code(words[channel / kCpw], channel % kCpw, kBits), vg);
            }
            halves[e / 2] = pack_halves(pair[0], pair[1]);
          }
          rows[j] = make_uint4(halves[0], halves[1], halves[2], halves[3]);
        }
        *reinterpret_cast<uint4*>(scratch_v + r * kHeadDim + c) = rows[j];
      }
    }
    __syncwarp();
  };

  for (int chunk = 0; chunk < chunks; ++chunk) {
    copy_async_wait<kStages - 2>();
    __syncthreads();  // this chunk is in; every warp is done with the stage the next load overwrites
    if (chunk + kStages - 1 < chunks) load_chunk(chunk + kStages - 1);
    copy_async_commit();

    const int c0 = key_begin + chunk * kChunk;
    const int t0 = c0 + warp * 16;
    if (t0 >= key_end) continue;
    const uint32_t* stage = stages + (chunk % kStages) * Tiles::kStageWords;
    // Keys come in whole tiles of codes or of residual rows (the split point T - T % R is a multiple of 32);
    // values change over once, at T - R, possibly within a tile.
    const bool keys_coded = t0 + 16 <= quantized_keys;
    const bool values_coded = t0 + 16 <= quantized_values;
    if (!values_coded && !plain) to_plain();
    if (!keys_coded || !values_coded) fill_scratch(stage, c0, t0, keys_coded, values_coded);
    float s[kNTiles][4];

    if (keys_coded) {
      // ---- logits from the key codes of this tile (tokens t0 .. t0 + 15, one key group) ----
      const uint32_t* codes = stage + (t0 - c0) / kCpw * kHeadDim;
      const int low_row = g / kCpw * kHeadDim;          // word rows of rows g and g + 8 past the tile's first
      const int high_row = (g + 8) / kCpw * kHeadDim;
      const uint32_t* groups = stage + Tiles::kKeyCodeWords + ((t0 >> group_shift) - (c0 >> group_shift)) * kHeadDim;
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

    if (values_coded) {
      // ---- P.V from the value codes: tokens 2t, 2t + 1 (and + 8) of the tile ----
      const int local = t0 - c0;
      const uint32_t* words = stage + Tiles::kKeyCodeWords + Tiles::kKeyGroupWords + local * Tiles::kValueWordsPerToken;
      const uint32_t* groups = stage + Tiles::kKeyCodeWords + Tiles::kKeyGroupWords + Tiles::kValueCodeWords +
                               local * Tiles::kValueGroupsPerToken;
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
      // Code words four at a time per token (16 bytes: 64 channels at 2 bits, 32 at 4, 16 at 8).
      constexpr int kQuadChannels = 4 * kCpw;
      constexpr int kTilesPerQuad = kQuadChannels / 16;
      const int tokens[4] = {2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9};
      uint32_t scaled[kNTiles][2];
#pragma unroll
      for (int quad = 0; quad < Tiles::kValueWordsPerToken / 4; ++quad) {
        uint4 w[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) w[u] = *reinterpret_cast<const uint4*>(words + tokens[u] * Tiles::kValueWordsPerToken + 4 * quad);
#pragma unroll
        for (int in_quad = 0; in_quad < kTilesPerQuad; ++in_quad) {
          const int i = quad * kTilesPerQuad + in_quad;
          if (i % 2 == 0) {  // two 16-channel tiles per group at least (G >= 32)
            const int j = (16 * i) >> group_shift;
            const uint32_t scale01 = byte_permute(value_group(2 * t, j), value_group(2 * t + 1, j), 0x5410);
            const uint32_t scale89 = byte_permute(value_group(2 * t + 8, j), value_group(2 * t + 9, j), 0x5410);
#pragma unroll
            for (int nt = 0; nt < kNTiles; ++nt) {
              scaled[nt][0] = multiply_halves(probabilities[nt][0], scale01);
              scaled[nt][1] = multiply_halves(probabilities[nt][1], scale89);
            }
          }
          // The words of rows g and g + 8 (channels 16 i + g, + 8) within the quad: fixed at 2 and 4 bits,
          // by lane at 8 (rows g and g + 8 are then words g / 4 and 2 + g / 4 of a 4-word tile).
          auto pick = [&](const uint4& x, bool high) -> uint32_t {
            int index = 0;
            if constexpr (kBits == 2) {
              index = in_quad;  // one word is a whole 16-channel tile
            } else if constexpr (kBits == 4) {
              index = 2 * in_quad + (high ? 1 : 0);
            } else {
              const bool second = g >= 4;
              return high ? (second ? x.w : x.z) : (second ? x.y : x.x);
            }
            return index == 0 ? x.x : index == 1 ? x.y : index == 2 ? x.z : x.w;
          };
          const uint32_t a[4] = {lanes.operand(pick(w[0], false), pick(w[1], false), false),
                                 lanes.operand(pick(w[0], true), pick(w[1], true), true),
                                 lanes.operand(pick(w[2], false), pick(w[3], false), false),
                                 lanes.operand(pick(w[2], true), pick(w[3], true), true)};
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt) mma_16816(o[i][nt], a, scaled[nt][0], scaled[nt][1], __half());
        }
      }
    } else {
      // V^T from the scratch's rows: (channel, tokens 2t and 2t + 1) as one fp16 pair.
      const uint16_t* v = reinterpret_cast<const uint16_t*>(scratch_v);
      auto pair = [&](int token, int channel) {
        return static_cast<uint32_t>(v[token * kHeadDim + channel]) | static_cast<uint32_t>(v[(token + 1) * kHeadDim + channel]) << 16;
      };
#pragma unroll
      for (int i = 0; i < kVTiles; ++i) {
        const int channel = 16 * i + g;
        const uint32_t a[4] = {pair(2 * t, channel), pair(2 * t, channel + 8), pair(2 * t + 8, channel), pair(2 * t + 8, channel + 8)};
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) mma_16816(o[i][nt], a, probabilities[nt][0], probabilities[nt][1], __half());
      }
    }
    if (!keys_coded || !values_coded) __syncwarp();  // the scratch is read before the next tile overwrites it
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

// Blocks of the kernel a plan runs (by its bits, head_dim and rows) that fit one SM.
template <int kBits, int kHeadDim, int kNTiles>
int resident_blocks() {
  using Tiles = KiviTiles<kBits, kHeadDim, kNTiles>;
  auto kernel = decode_kivi_kernel<kBits, kHeadDim, kNTiles>;
  NKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Tiles::kSharedBytes)));
  int blocks = 0;
  NKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kDecodeThreads, Tiles::kSharedBytes));
  return std::max(1, blocks);
}

template <int kBits>
int resident_blocks_for(int head_dim, bool two_tiles) {
  if (head_dim == 64) return two_tiles ? resident_blocks<kBits, 64, 2>() : resident_blocks<kBits, 64, 1>();
  return two_tiles ? resident_blocks<kBits, 128, 2>() : resident_blocks<kBits, 128, 1>();
}

}  // namespace
}  // namespace kv_quant

// A quantized cache's bytes take a fraction of the fp16 decode's time to stream, and its arithmetic per byte is
// higher: a plan for it keeps every block slot of the GPU busy (all resident blocks, not just enough for the
// bytes in flight that the fp16 decode sizes for).
int64_t quantized_decode_block_slots(const nkv_attention_plan& plan) {
  using namespace kv_quant;
  DeviceScope scope(plan.context->device_ordinal);
  const int64_t rows = static_cast<int64_t>(plan.q_len) * (plan.num_heads_q / plan.num_heads_kv);
  const bool two_tiles = rows > 8;
  const int64_t row_blocks = (rows + (two_tiles ? 16 : 8) - 1) / (two_tiles ? 16 : 8);
  int per_sm = 1;
  switch (plan.kv_code_bits) {
    case 2: per_sm = resident_blocks_for<2>(plan.head_dim, two_tiles); break;
    case 4: per_sm = resident_blocks_for<4>(plan.head_dim, two_tiles); break;
    default: per_sm = resident_blocks_for<8>(plan.head_dim, two_tiles); break;
  }
  return std::max<int64_t>(1, static_cast<int64_t>(plan.context->multiprocessor_count) * per_sm / row_blocks);
}

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
