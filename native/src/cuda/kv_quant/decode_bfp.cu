// Decode attention read straight from a block-floating-point cache (flash-decoding over BFP12 / BFP16 keys and
// BFP or fp16 values; the plan's pieces, partial buffers and final merge are the fp16 decode's,
// cuda/attention/decode_merge.cuh).
//
// The codes stream through a cp.async pipeline of 64-token stages: the head's mantissa words of each token and the
// stage's run of the head's block exponents. Each warp then turns its own 16 tokens into fp16 rows in
// shared memory (values are exact in fp16: m-bit integers times a power of two) and runs the fp16 decode's MMAs
// and online softmax over them (q as the A operand, 16 packed query rows per tile). Only the warp reads the
// rows it wrote, so a __syncwarp orders them: no block barrier beyond the pipeline's one per stage.
//
// A mantissa becomes fp16 without a conversion instruction: a byte permute brings its field into the low bits of
// a half, a mask and an exclusive or make the half 1024 + 2^(m-1) + mantissa (the exponent bits of 1024 and the
// field's sign bit flipped), a subtraction leaves the mantissa, and a multiplication by the block's 2^(E + 2 - m)
// gives the value, all exact. Blocks whose step 2^(E + 2 - m) is below fp16's smallest subnormal 2^-24 (largest
// magnitude under 2^-18 for BFP16, 2^-22 for BFP12) decode as zeros (see nativekv.h).
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
#include "cuda/kv_quant/code_bits.cuh"

namespace nkv::cuda {
namespace kv_quant {
namespace {

using namespace attention;

constexpr int kTileKeys = 64;  // keys per stage: 16 per warp, as the fp16 decode's tiles (pieces start at multiples of 64)
constexpr int kExponentBytes = 8;  // per token at most: the head's d / n exponents (n >= 16)

struct BfpDecodeParams {
  DecodeKernelParams base;  // q, o, lse, the plan's pieces and partials (base.args.k/v unused)
  QuantizedKvLayer kv;
};

// kBits: mantissa bits (4: BFP12, 8: BFP16); kCodedValues: values in BFP too (else fp16 rows).
template <int kBits, int kHeadDim, int kMTiles, bool kCodedValues>
struct BfpTiles {
  static constexpr int kWords = kHeadDim * kBits / 32;  // a token's code words for one head
  static constexpr int kStages = kCodedValues ? 4 : 3;  // ~9 KB (BFP12, d128) or ~21 KB per stage
  static constexpr int kRows = kDecodeRowsPerTile * kMTiles;
  static constexpr size_t kCodeBytes = static_cast<size_t>(kTileKeys) * kWords * 4;
  static constexpr size_t kExponentTileBytes = static_cast<size_t>(kTileKeys) * kExponentBytes;
  static constexpr size_t kPlainBytes = static_cast<size_t>(kTileKeys) * kHeadDim * 2;  // one fp16 tile
  static constexpr size_t kValueBytes = kCodedValues ? kCodeBytes + kExponentTileBytes : kPlainBytes;
  static constexpr size_t kStageBytes = kCodeBytes + kExponentTileBytes + kValueBytes;
  // [q rows][fp16 keys][fp16 values, when coded][stages]
  static constexpr size_t kQBytes = static_cast<size_t>(kRows) * kHeadDim * 2;
  static constexpr size_t kStagesOffset = kQBytes + (kCodedValues ? 2 : 1) * kPlainBytes;
  static constexpr size_t kPipelineBytes = kStagesOffset + kStages * kStageBytes;
  static constexpr size_t kMergeBytes = static_cast<size_t>(kDecodeWarps) * kRows * (kHeadDim + 2) * 4;
  static constexpr size_t kSharedBytes = kPipelineBytes > kMergeBytes ? kPipelineBytes : kMergeBytes;
};

// (a & mask) ^ flip in one instruction (the compiler splits it when both are immediates).
__device__ __forceinline__ uint32_t mask_then_flip(uint32_t a, uint32_t mask, uint32_t flip) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0x6a;" : "=r"(d) : "r"(a), "r"(mask), "r"(flip));
  return d;
}

// (x + offset) * scale on fp16 pairs, rounded to nearest (exact here: small integers, then a power of two).
__device__ __forceinline__ uint32_t offset_then_scale(uint32_t x, uint32_t offset, uint32_t scale) {
  uint32_t sum, product;
  asm("add.rn.f16x2 %0, %1, %2;" : "=r"(sum) : "r"(x), "r"(offset));
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(product) : "r"(sum), "r"(scale));
  return product;
}

// 2^e as an fp16 pair (both halves), rounded to nearest: exact from 2^-24 up, 0 below 2^-25 (blocks that small decode
// as zeros); e <= 15 (a written block has E <= 15, so e = E + 2 - m <= 13; a zero block's E = -128 gives a tiny power
// of two, finite, and its mantissas are 0). Built as a float32 power of two (normal: e clamped to -126), then
// converted as a pair.
__device__ __forceinline__ uint32_t half_power_of_two_pair(int e) {
  const float f = __int_as_float(max(e + 127, 1) << 23);
  return MmaType<__half>::pack(f, f);
}

// Eight channels of one token (mantissas `words`, kBits / 4 words) as fp16 values, scaled by `scale` (a pair).
template <int kBits>
__device__ __forceinline__ uint4 dequantize_eight(const uint32_t* words, uint32_t scale) {
  uint32_t h[4];
  if constexpr (kBits == 4) {
    // Byte j holds channels 2j (low nibble) and 2j + 1 (high nibble): the byte of `w` and of `w >> 4` into the
    // two halves, one nibble kept in each.
    const uint32_t w = words[0], high = w >> 4;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t x = mask_then_flip(byte_permute(w, high, static_cast<uint32_t>(j | (4 + j) << 8)), 0x000f000fu, 0x64086408u);  // 1032 + m
      h[j] = offset_then_scale(x, 0xe408e408u, scale);  // -1032
    }
  } else {
    // Bytes 2j, 2j + 1 of a word are two channels: each into the low byte of a half under 0x64 (1024).
    const uint2 w = *reinterpret_cast<const uint2*>(words);
    const uint32_t flipped[2] = {w.x ^ 0x80808080u, w.y ^ 0x80808080u};  // 128 + m
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t x = byte_permute(flipped[j / 2], 0x64646464u, j % 2 == 0 ? 0x4140u : 0x4342u);  // 1152 + m
      h[j] = offset_then_scale(x, 0xe480e480u, scale);  // -1152
    }
  }
  return make_uint4(h[0], h[1], h[2], h[3]);
}

template <int kBits, int kHeadDim, int kMTiles, bool kCodedValues>
__global__ void __launch_bounds__(kDecodeThreads) decode_bfp_kernel(const BfpDecodeParams p) {
  using Tiles = BfpTiles<kBits, kHeadDim, kMTiles, kCodedValues>;
  constexpr int kRows = Tiles::kRows;
  constexpr int kStages = Tiles::kStages;
  constexpr int kWords = Tiles::kWords;
  constexpr int kKSteps = kHeadDim / 16;
  constexpr int kDTiles = kHeadDim / 8;
  constexpr int kEights = kHeadDim / 8;  // 8-channel pieces of a row: one 16-byte fp16 chunk each
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  __half* q_tile = reinterpret_cast<__half*>(shared_bytes);
  __half* plain_keys = q_tile + kRows * kHeadDim;
  __half* plain_values = kCodedValues ? plain_keys + kTileKeys * kHeadDim : nullptr;
  unsigned char* stages = shared_bytes + Tiles::kStagesOffset;

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
  const int lk = split.sequence_keys;
  const int lq = p.base.q_len;
  const int offset = lk - lq;
  const int first_token = row0 / group;
  const int last_token = (min(rows, row0 + kRows) - 1) / group;
  int key_end = split.key_end;
  if (p.base.mask.causal) key_end = min(key_end, last_token + offset + 1);
  const int window_start = p.base.mask.window_left >= 0 ? max(split.key_begin, first_token + offset - p.base.mask.window_left)
                                                        : split.key_begin;
  const int key_begin = split.key_begin + (window_start - split.key_begin) / kTileKeys * kTileKeys;
  const int tiles = key_end > key_begin ? (key_end - key_begin + kTileKeys - 1) / kTileKeys : 0;

  // Where a token's rows are: layout blocks of tokens, head-major (core/quantized_kvcache.h, head_row), this head's
  // rows of code words [kWords], exponent bytes [d / n] and fp16 values [d], from the slot's share of each array or,
  // paged, from the page that holds the token.
  const int block_shift = kv.group_shift;  // n = 2^block_shift channels per exponent
  const int head_blocks = kHeadDim >> block_shift;
  const unsigned char* key_exponents = reinterpret_cast<const unsigned char*>(kv.key_groups);
  const unsigned char* value_exponents = reinterpret_cast<const unsigned char*>(kv.value_groups);
  const __half* value_rows = reinterpret_cast<const __half*>(kv.value_residual);

  // One stage: key words [64][kWords], key exponents [64][d / n] bytes, then the values alike or as a SwizzledTile of
  // fp16 rows. Tokens at or past key_end are zero-filled (never stale bytes: 0 x NaN would poison the MMA). A thread's
  // pieces of an array are rows a fixed distance apart at a fixed column, so a piece costs the row's address; the
  // exponents of a stage are consecutive bytes of a layout block (16 / (d / n) tokens to a 16-byte piece).
  constexpr int kRowPieces = kWords / 4;  // 16-byte pieces of a token's words
  constexpr int kCodePasses = kTileKeys * kRowPieces / kDecodeThreads;
  constexpr int kValuePasses = kTileKeys * kEights / kDecodeThreads;
  static_assert(kCodePasses * kDecodeThreads == kTileKeys * kRowPieces && kValuePasses * kDecodeThreads == kTileKeys * kEights,
                "a stage is whole passes of the block");
  // This head's row of local token `local` in a share, `row_elements` elements a row (32-bit offsets: a slot's code
  // words stay below 2^32, api/quantized_kvcache.cpp), and the share that holds `token`.
  auto row_of = [&](const auto* array, int64_t per_share, uint32_t row_elements, int token) {
    const TokenPlace place = token_place(kv, per_share, sequence, token);
    const int local = static_cast<int>(place.token);
    return array + place.share + head_row_in_share<uint32_t>(kv, local, kv_head, 0, row_elements);
  };
  const int exponent_tokens = 16 / head_blocks;  // per 16-byte piece
  const int code_row = threadIdx.x / kRowPieces, code_piece = threadIdx.x % kRowPieces;
  auto load_codes = [&](uint32_t words_at, uint32_t exponents_at, const uint32_t* codes, int64_t codes_share, const unsigned char* exponents,
                        int64_t exponents_share, int n0) {
#pragma unroll
    for (int pass = 0; pass < kCodePasses; ++pass) {
      const int row = code_row + pass * (kDecodeThreads / kRowPieces);
      const bool valid = n0 + row < key_end;
      const uint32_t* source = row_of(codes, codes_share, kWords, valid ? n0 + row : 0) + 4 * code_piece;
      copy_async_16(words_at + 16u * (threadIdx.x + pass * kDecodeThreads), source, valid);
    }
    if (threadIdx.x < 4 * head_blocks) {
      const int row = threadIdx.x * exponent_tokens;
      const int tokens = max(0, min(exponent_tokens, key_end - n0 - row));  // the others' bytes zero-filled
      const unsigned char* head = row_of(exponents, exponents_share, static_cast<uint32_t>(head_blocks), tokens > 0 ? n0 + row : 0);
      copy_async_16_prefix(exponents_at + 16u * threadIdx.x, head, tokens * head_blocks);
    }
  };
  const int value_row = threadIdx.x / kEights, value_eight = threadIdx.x % kEights;
  auto load_tile = [&](int tile) {
    const int n0 = key_begin + tile * kTileKeys;
    const uint32_t stage = shared_address(stages) + static_cast<uint32_t>((tile % kStages) * Tiles::kStageBytes);
    load_codes(stage, stage + Tiles::kCodeBytes, kv.key_codes, kv.key_codes_slot, key_exponents, kv.key_groups_slot, n0);
    const uint32_t values = stage + Tiles::kCodeBytes + Tiles::kExponentTileBytes;
    if constexpr (kCodedValues) {
      load_codes(values, values + Tiles::kCodeBytes, kv.value_codes, kv.value_codes_slot, value_exponents, kv.value_groups_slot, n0);
    } else {
#pragma unroll
      for (int pass = 0; pass < kValuePasses; ++pass) {
        const int row = value_row + pass * (kDecodeThreads / kEights);
        const bool valid = n0 + row < key_end;
        copy_async_16(values + 2u * SwizzledTile<kHeadDim>::offset(row, 8 * value_eight),
                      row_of(value_rows, kv.value_residual_slot, static_cast<uint32_t>(kHeadDim), valid ? n0 + row : 0) + 8 * value_eight, valid);
      }
    }
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < tiles) load_tile(s);
    copy_async_commit();
  }

  // The block's query rows (zeros past `rows`), permuted like the stored keys under K-sort: stored channel j is
  // written channel permutation[j], so q's channel permutation[j] goes to column j and q.k keeps its products.
  const int32_t* permutation = kv.key_permutation != nullptr ? kv.key_permutation + kv_head * kHeadDim : nullptr;
  for (int item = threadIdx.x; item < kRows * kHeadDim; item += kDecodeThreads) {
    const int r = item / kHeadDim, j = item % kHeadDim;
    const int row = row0 + r;
    __half x = __float2half(0.0f);
    if (row < rows) {
      const int token = row / group;
      const int c = permutation != nullptr ? permutation[j] : j;
      x = static_cast<const __half*>(args.q)[sequence * args.q_batch_stride + token * args.q_strides.row +
                                             (kv_head * group + row - token * group) * args.q_strides.head + c];
    }
    q_tile[SwizzledTile<kHeadDim>::offset(r, j)] = x;
  }
  __syncthreads();
  uint32_t q_frag[kMTiles][kKSteps][4];
  {
    const FragmentReader<kHeadDim> q_reader(q_tile, lane % 16, lane / 16);
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) ldmatrix_x4(q_frag[mt][kk], q_reader.at(mt * 16, kk));
    }
  }

  KeyRange visible[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row0 + mt * 16 + lane / 4 + 8 * half;
      KeyRange r = visible_keys(min(row, rows - 1) / group, lq, lk, p.base.mask.causal, p.base.mask.window_left);
      r.first = max(r.first, split.key_begin);
      r.last = min(r.last, split.key_end - 1);
      visible[mt][half] = r;
    }
  }
  const bool causal_edge_possible = p.base.mask.causal || p.base.mask.window_left >= 0;
  const float exp_scale = p.base.mask.score.softcap > 0.0f ? 1.0f : p.base.mask.score.scale_log2;

  float o[kMTiles][kDTiles][4];
  float row_max[kMTiles][2];
  float row_sum[kMTiles][2];
  reset_softmax_state(o, row_max, row_sum);

  const FragmentReader<kHeadDim> k_reader(plain_keys, warp * 16 + (lane % 8) + (lane / 16) * 8, (lane / 8) % 2);
  const __half* value_tile = kCodedValues ? plain_values : reinterpret_cast<const __half*>(stages + Tiles::kCodeBytes + Tiles::kExponentTileBytes);
  const FragmentReader<kHeadDim> v_reader(value_tile, warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8, lane / 16);
  const int warp_key0 = warp * 16;

  // The warp's 16 tokens of a stage's codes as fp16 rows (rows warp_key0 .. + 15 of `plain`): lane items are
  // (token, 8-channel piece), consecutive lanes on consecutive pieces.
  // Lane items: 8-channel piece `eight` (fixed per lane, so its block is too) of rows lane / kEights + j x 32 / kEights;
  // a row's exponent byte sits at the same place of the stage's exponent run in every stage.
  constexpr int kItems = 16 * kEights / 32;
  const int item_eight = lane % kEights;
  int exponent_at[kItems];  // the item's exponent byte within a stage's exponent rows
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int row = warp_key0 + lane / kEights + j * (32 / kEights);
    exponent_at[j] = row * head_blocks + ((8 * item_eight) >> block_shift);
  }
  auto dequantize_rows = [&](const unsigned char* codes, __half* plain) {
    const uint32_t* words = reinterpret_cast<const uint32_t*>(codes);
    const unsigned char* exponents = codes + Tiles::kCodeBytes;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const int row = warp_key0 + lane / kEights + j * (32 / kEights);
      const int exponent = static_cast<signed char>(exponents[exponent_at[j]]);
      const uint4 x = dequantize_eight<kBits>(words + row * kWords + item_eight * (kBits / 4), half_power_of_two_pair(exponent + 2 - kBits));
      *reinterpret_cast<uint4*>(plain + SwizzledTile<kHeadDim>::offset(row, 8 * item_eight)) = x;
    }
  };

  for (int tile = 0; tile < tiles; ++tile) {
    copy_async_wait<kStages - 2>();
    __syncthreads();  // this stage is in; every warp is done with the stage the next load overwrites and its fp16 rows
    if (tile + kStages - 1 < tiles) load_tile(tile + kStages - 1);
    copy_async_commit();

    const int n0 = key_begin + tile * kTileKeys;
    const unsigned char* stage = stages + (tile % kStages) * Tiles::kStageBytes;
    const uint32_t value_stage_bytes = kCodedValues ? 0u : static_cast<uint32_t>((tile % kStages) * Tiles::kStageBytes);
    dequantize_rows(stage, plain_keys);
    if constexpr (kCodedValues) dequantize_rows(stage + Tiles::kCodeBytes + Tiles::kExponentTileBytes, plain_values);
    __syncwarp();

    decode_warp_keys<__half, kHeadDim>(q_frag, k_reader, 0u, v_reader, value_stage_bytes, p.base.mask.score, exp_scale,
                                       n0 + kTileKeys > split.key_end || causal_edge_possible, visible, n0 + warp_key0, o, row_max, row_sum);
  }
  copy_async_wait<0>();
  __syncthreads();  // the pipeline's shared memory becomes the merge area

  float* merge_o = reinterpret_cast<float*>(shared_bytes);
  leave_warp_state<kHeadDim, kRows>(merge_o, o, row_max, row_sum, row0, rows);
  __syncthreads();
  static_assert(Tiles::kMergeBytes >= kMergeScratchFloats<kRows> * sizeof(float), "merge_pieces' scratch fits the merge area");
  finish_decode_block<__half, kHeadDim, kRows, false>(p.base, merge_o, split, row0, rows);
}

template <int kBits, int kHeadDim, int kMTiles, bool kCodedValues>
void launch(const nkv_attention_plan& plan, const BfpDecodeParams& params) {
  using Tiles = BfpTiles<kBits, kHeadDim, kMTiles, kCodedValues>;
  auto kernel = decode_bfp_kernel<kBits, kHeadDim, kMTiles, kCodedValues>;
  if (Tiles::kSharedBytes > static_cast<size_t>(plan.context->shared_memory_per_block)) {
    fail(NKV_STATUS_NOT_SUPPORTED, "BFP decode needs " + std::to_string(Tiles::kSharedBytes) + " bytes of shared memory per block; this GPU allows " +
                                       std::to_string(plan.context->shared_memory_per_block));
  }
  NKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Tiles::kSharedBytes)));
  const int rows = plan.q_len * params.base.mask.group;
  const int row_blocks = (rows + Tiles::kRows - 1) / Tiles::kRows;
  const dim3 grid(static_cast<unsigned>(plan.splits.size()), 1, static_cast<unsigned>(row_blocks));
  kernel<<<grid, kDecodeThreads, Tiles::kSharedBytes, static_cast<cudaStream_t>(plan.context->stream)>>>(params);
  NKV_CUDA_CHECK(cudaGetLastError());
}

// One 16-row tile for up to 16 packed rows (q_len x G), two beyond: the fp16 decode's choice.
template <int kBits, int kHeadDim, bool kCodedValues>
void dispatch_rows(const nkv_attention_plan& plan, const BfpDecodeParams& params) {
  if (plan.q_len * params.base.mask.group <= 16) return launch<kBits, kHeadDim, 1, kCodedValues>(plan, params);
  launch<kBits, kHeadDim, 2, kCodedValues>(plan, params);
}

template <int kBits, int kHeadDim>
void dispatch_values(const nkv_attention_plan& plan, const BfpDecodeParams& params) {
  if (params.kv.value_format == NKV_KV_VALUES_FP16) return dispatch_rows<kBits, kHeadDim, false>(plan, params);
  dispatch_rows<kBits, kHeadDim, true>(plan, params);
}

template <int kBits>
void dispatch_head_dim(const nkv_attention_plan& plan, const BfpDecodeParams& params) {
  if (plan.head_dim == 64) return dispatch_values<kBits, 64>(plan, params);
  dispatch_values<kBits, 128>(plan, params);
}

}  // namespace
}  // namespace kv_quant

void attention_decode_bfp(const nkv_attention_plan& plan, const attention::DecodeKernelParams& base, const QuantizedKvLayer& layer) {
  using namespace kv_quant;
  static_assert(kTileKeys == 64, "stages start where pieces do: at multiples of the fp16 decode's 64-key tiles");
  BfpDecodeParams p{};
  p.base = base;
  p.kv = layer;
  switch (layer.bits) {
    case 4: return dispatch_head_dim<4>(plan, p);
    case 8: return dispatch_head_dim<8>(plan, p);
    default: fail(NKV_STATUS_INTERNAL, "BFP decode: " + std::to_string(layer.bits) + "-bit mantissas reached the kernel");
  }
}

}  // namespace nkv::cuda
