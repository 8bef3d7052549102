// Decode attention read straight from a KIVI cache's codes (flash-decoding over quantized K/V; the plan's
// pieces, partial buffers and final merge are the fp16 decode's, cuda/attention/decode_merge.cuh).
//
// The MMAs run transposed, S^T = K Q^T and O^T = V^T P^T, so that the 16 rows of each tile are keys or
// channels (the many) and the 8 columns query rows (q_len x G, few). Each warp takes 32 keys of a stage: two
// 16-key tiles that share their key group (G >= 32), hence the group's q x s, its minimum term and the
// softmax step. Codes become MMA operands without arithmetic: a byte permute brings one byte of each of two
// words into the low byte of a 16-bit half, and a mask keeps one code there, so the half reads as an fp16
// subnormal code x 2^(shift - 24), exact. Which token (or channel) a tile row is follows from that: a lane's
// rows g and g + 8 (and, at 2 bits, the same rows of the warp's other tile) are the codes of ONE byte (at 8 bits,
// of two neighbouring bytes), so one permute feeds two operands (four at 2 bits), and each operand costs one mask (4-bit values come by
// ldmatrix.trans instead: a lane's half-word of two tokens, see CodeLayout). The group's scale goes into
// the other operand (keys: q x s per channel; values: P x s per token), its minimum into a second MMA (keys:
// mn . q, one per group; values: P . mn per 32-channel block), and 2^(24 - shift) into the float32 result.
// Keys: the reduction index of the key MMA takes channels 4t .. 4t + 3 for lane t, one 16-byte load.
// A warp tile whose keys or values are not all coded (the last R + 31 tokens or fewer: the fp16 residuals)
// reads those operands from global memory as fp16 (residual rows, or values dequantized one pair at a
// time for the one tile across T - R); a warp's O is brought to true units once, before its first tile of
// plain values (tiles run in key order, the coded ones first).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "core/attention.h"
#include "core/error.h"
#include "core/kv_quant.h"
#include "core/quantized_kvcache.h"
#include "cuda/attention/decode_merge.cuh"
#include "cuda/attention/mma_sm80.cuh"
#include "cuda/common/cuda_check.h"
#include "cuda/kv_quant/code_bits.cuh"
#include "cuda/kv_quant/decode_bfp.h"

namespace nkv::cuda {
namespace kv_quant {
namespace {

using namespace attention;

constexpr int kChunk = 128;    // keys per pipeline stage: 32 per warp (pieces start at multiples of 64)
constexpr int kWarpKeys = 32;  // two 16-key tiles
// Pipeline stages (2: ~27 KB per block at d128 for 2 and 4 bits; 8 bits, for tests, takes ~52 KB. On an H200 at b8 x
// L32768, bench/NOTES.md q13: 3 stages at 2 bits, as before q13, took 72.4 us where 2 took 71.5 once the queries no longer
// waited behind the copies, and 3 stages with only chunk 0 asked for before the loop 71.1 where 2 took 69.9) and the
// blocks per SM the registers are capped for (3 blocks of 4 warps: 168 registers), overridable at
// configure time for tuning. On an H200 (bench/NOTES.md q6, q10), 5 blocks at 96 registers spilled and ran KIVI-2 at
// b8 x L32768 in 175 us where 4 blocks took 141 us; at q10, 4 blocks (128 registers, the loop spilling ~50 bytes at 2
// bits) took 91.4 us (KIVI-2) and 97.6 us (KIVI-4) where 3 blocks took 86.9 and 96.0: 12 warps per SM keep enough bytes
// in flight, and the registers go to the loop's loads.
#ifndef NKV_KIVI_MIN_BLOCKS
#define NKV_KIVI_MIN_BLOCKS 3
#endif
constexpr int kMinBlocksPerSm = NKV_KIVI_MIN_BLOCKS;
// Measurement only (bench/NOTES.md q8): a build with NKV_KIVI_ABLATE set to a sum of 1 (the key part), 2 (the value part,
// which since q10 also adds up the softmax sum) and 4 (the softmax step) skips those parts of every coded warp tile and
// keeps every load; its outputs are wrong (without the value part, not even finite), its time is what the rest costs.
// 0 (the default) compiles none of it.
#ifndef NKV_KIVI_ABLATE
#define NKV_KIVI_ABLATE 0
#endif
constexpr int kAblate = NKV_KIVI_ABLATE;
// Measurement only (bench/NOTES.md q11): a build with NKV_KIVI_TIMELINE=1 prints, from thread 0 of every block and launch,
// the %globaltimer (ns) at its start, when its first chunk is in, after its last warp step and at its end, with its SM:
// where a call's fixed cost goes. 0 (the default) compiles none of it.
#ifndef NKV_KIVI_TIMELINE
#define NKV_KIVI_TIMELINE 0
#endif
constexpr bool kTimeline = NKV_KIVI_TIMELINE != 0;
[[maybe_unused]] __device__ __forceinline__ unsigned long long global_nanoseconds() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
#ifndef NKV_KIVI_STAGES
#define NKV_KIVI_STAGES 2
#endif

struct KiviDecodeParams {
  DecodeKernelParams base;  // q, o, lse, the plan's pieces and partials (base.args.k/v unused)
  QuantizedKvLayer kv;
};

template <int kBits, int kHeadDim, int kNTiles>
struct KiviTiles {
  static constexpr int kStages = NKV_KIVI_STAGES;
  static constexpr int kCodesPerWord = 32 / kBits;
  static constexpr int kRows = 8 * kNTiles;  // packed query rows per block
  static constexpr int kKeyWordRows = kChunk / kCodesPerWord;
  // Words per key word row, unpadded: a quarter warp's loads in the key phase (lanes g = 2k, 2k + 1) read one word row, so
  // rows never meet in a bank there, while a padded row (16 bytes, before q12) split every 128-byte line the copies write
  // in two: 10.5 shared-memory wavefronts per copy instruction where 4 suffice (ncu, bench/NOTES.md q12).
  static constexpr int kKeyPitch = kHeadDim;
  static constexpr int kKeyCodeWords = kKeyWordRows * kKeyPitch;  // [word row][d]
  static constexpr int kKeyGroupRows = kDecodeWarps;             // one per warp: the group of its 32 keys
  static constexpr int kKeyGroupWords = kKeyGroupRows * kHeadDim;  // [group][d]
  static constexpr int kValueWordsPerToken = kHeadDim / kCodesPerWord;
  static constexpr int kValueBlocks = kHeadDim / 32;  // a token's group word per 32 channels (repeated for G > 32)
  static constexpr int kValueCodeWords = kChunk * kValueWordsPerToken;  // [token][word], 16-byte pieces swizzled
  static constexpr int kValueGroupWords = kChunk * kValueBlocks;        // [32-channel block][unit of 8 tokens][16 halves]
  // Past the value groups, 32 words of fp16 ones per warp, written once: what the minimum MMA's rows past the blocks read
  // in place of minimums (row kSumRow adds up P), so every lane's operand is one load.
  static constexpr int kOnesWords = kChunk;
  static constexpr int kStageWords = kKeyCodeWords + kKeyGroupWords + kValueCodeWords + kValueGroupWords + kOnesWords;
  static constexpr int kQPitch = kHeadDim + 16;  // halves per query row: a lane's rows g fall in other banks
  static constexpr int kTokenPieces = kValueWordsPerToken / 4;  // 16-byte pieces of a token's value codes: a lane's copies per chunk
  static constexpr size_t kQBytes = static_cast<size_t>(kRows) * kQPitch * 2;
  static constexpr size_t kPipelineBytes = static_cast<size_t>(kStages) * kStageWords * 4 + kQBytes;
  static constexpr size_t kMergeBytes = static_cast<size_t>(kDecodeWarps) * kRows * (kHeadDim + 2) * 4;
  static constexpr size_t kSharedBytes = kPipelineBytes > kMergeBytes ? kPipelineBytes : kMergeBytes;
};

// x, held in a register from here on: ptxas otherwise rebuilds lane constants (swizzled offsets, permute selectors) from
// the thread index in every step of the loop, ~10-25 instructions each time, rather than keep them (bench/NOTES.md q10).
__device__ __forceinline__ int lane_constant(int x) {
  int y;
  asm volatile("mov.b32 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}

template <typename T>
__device__ __forceinline__ const T* lane_constant(const T* x) {
  uint64_t y;
  asm volatile("mov.b64 %0, %1;" : "=l"(y) : "l"(reinterpret_cast<uint64_t>(x)));
  return reinterpret_cast<const T*>(y);
}

__device__ __forceinline__ uint32_t multiply_halves(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

// The 8x8 fp16 matrix the warp holds (lane: row lane / 4, columns 2 (lane % 4) ..) transposed.
__device__ __forceinline__ uint32_t transpose_8x8(uint32_t x) {
  uint32_t d;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(d) : "r"(x));
  return d;
}

// Which codes a warp's tile rows are. Keys: row r (0..15) of the warp's tile m (0, 1) is token
// tile_token(m, r) of the warp's 32. Values: row r of the 16-channel tile i of O^T is channel
// value_channel(i, r). Both put rows g and g + 8 of lane g in one byte of a word (at 2 bits, also the same rows
// of the other tile: tile parity p; at 8 bits two neighbouring bytes), so that one byte permute serves them. At 2 and
// 4 bits a lane's key tokens of both tiles (4g .. 4g + 3) lie in one word row, so one 16-byte load serves both tiles
// (at 4 bits the tiles' bytes differ: a permute per tile). At 4 bits the values come from
// ldmatrix.trans instead, which hands lane g half-word g of a 16-byte piece (32 channels) for two tokens: the
// nibbles of its low byte are rows g and g + 8 of tile 2b, those of its high byte the same rows of tile 2b + 1.
template <int kBits>
struct CodeLayout {
  __device__ static constexpr int tile_token(int m, int r) {
    return kBits <= 4 ? 4 * (r % 8) + 2 * m + r / 8 : 16 * m + 2 * (r % 8) + r / 8;
  }
  // The token of lane t's value-MMA B operand half u of key tile m (the reduction index k = tile row: halves 0, 1 are
  // k = 2t, 2t + 1; halves 2, 3 are k = 2t + 8, 2t + 9).
  __device__ static constexpr int value_token(int m, int t, int u) { return tile_token(m, 2 * t + u % 2 + 8 * (u / 2)); }
  __device__ static constexpr int value_channel(int i, int g, int half) {
    return kBits == 2   ? 32 * (i / 2) + 16 * (g / 4) + 4 * (g % 4) + 2 * (i % 2) + half
           : kBits == 4 ? 32 * (i / 2) + 4 * g + 2 * (i % 2) + half
                        : 16 * i + 2 * g + half;
  }
  // The index within its word of the code of lane row g + 8 * half, tile parity p (keys, and values at 2 and 8 bits;
  // 4-bit values are read by ldmatrix, see above).
  __device__ static constexpr int code_index(int g, int p, int half) {
    return kBits == 2 ? 4 * (g % 4) + 2 * p + half : kBits == 4 ? 4 * (g % 2) + 2 * p + half : 2 * (g % 2) + half;
  }
};

// A lane's operand arithmetic: the byte permute (one selector below 8 bits, one per row at 8: the byte depends
// on the lane), then a mask, and the 2^(24 - shift) that brings a row's results to true units. The code's bit
// offset within its byte depends only on (parity, half), so masks and scales are constants.
template <int kBits>
struct CodeLanes {
  using Layout = CodeLayout<kBits>;
  uint32_t select[2][2];  // by (parity, half): one value at 2 bits, by parity at 4, by half at 8

  __device__ explicit CodeLanes(int g) {
#pragma unroll
    for (int p = 0; p < 2; ++p) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const uint32_t byte = static_cast<uint32_t>(Layout::code_index(g, p, half) * kBits / 8);
        select[p][half] = static_cast<uint32_t>(lane_constant(static_cast<int>(byte | byte << 4 | (byte + 4) << 8 | (byte + 4) << 12)));
      }
    }
  }
  __device__ static constexpr int shift(int p, int half) { return kBits == 2 ? 2 * (2 * p + half) : kBits == 4 ? 4 * half : 0; }
  __device__ static constexpr uint32_t mask(int p, int half) { return (((1u << kBits) - 1u) << shift(p, half)) * 0x00010001u; }
  __device__ static float scale(int p, int half) { return __int_as_float((127 + 24 - shift(p, half)) << 23); }
  // The operand of rows (lane row g + 8 * half, parity p) from the words of two reduction neighbours.
  __device__ __forceinline__ uint32_t operand(uint32_t a, uint32_t b, int p, int half) const {
    return byte_permute(a, b, select[kBits == 8 ? 0 : p][kBits == 4 ? 0 : half]) & mask(p, half);
  }
};

// Where piece `piece` (16 bytes) of token `token`'s value code words sits in its stage row: XOR-swizzled by the
// token bits that tell apart the tokens one load instruction reads for lanes t = 0..3 (tokens 4 apart at 8 bits, 8
// apart at 2; at 4 bits see value_row), so that those land in different banks.
template <int kBits, int kPieces>
__device__ __forceinline__ int swizzled_piece(int token, int piece) {
  return piece ^ ((kBits == 8 ? token >> 2 : token >> 3) & (kPieces - 1));
}
// The stage row of a value token. At 4 bits an ldmatrix reads the same piece of 8 tokens 4 apart (tile rows
// 0..7 or 8..15): rows (64 bytes at d128) swapped in pairs by token bit 2 put those in both halves of a 128-byte
// bank line, and the piece swizzle above (token bits 3, 4) spreads them within each half (at d64, 32-byte rows, some
// conflicts remain). At 2 bits a load reads one 16-byte piece (d128; 8 bytes at d64) of 4 tokens 8 apart (lanes t):
// rows of 32 bytes (d128) 256 bytes apart share their banks, and the piece swizzle (bit 3) tells only two of them apart;
// flipping row bit 1 by token bit 4 puts the other two in the line's other 64 bytes (at d64, 16-byte rows without a
// piece swizzle, bit 3 does it for two of the four). A lane's four tokens differ in bits 0 and 2 only, so their rows keep the tokens' distances.
template <int kBits, int kPieces>
__device__ __forceinline__ int value_row(int token) {
  if constexpr (kBits == 4) return token ^ ((token >> 2) & 1);
  if constexpr (kBits == 2) return token ^ (((token >> (kPieces > 1 ? 4 : 3)) & 1) << 1);
  return token;
}

// kPaged: the coded arrays are pool pages found through the block table (looked up per chunk); otherwise a slot's
// share, read through running sources.
template <int kBits, int kHeadDim, int kNTiles, bool kPaged>
__global__ void __launch_bounds__(kDecodeThreads, kMinBlocksPerSm) decode_kivi_kernel(const KiviDecodeParams p) {
  using Tiles = KiviTiles<kBits, kHeadDim, kNTiles>;
  using Layout = CodeLayout<kBits>;
  constexpr int kStages = Tiles::kStages;
  constexpr int kCpw = Tiles::kCodesPerWord;
  constexpr int kRows = Tiles::kRows;
  constexpr int kKSteps = kHeadDim / 16;
  constexpr int kVTiles = kHeadDim / 16;  // 16-channel tiles of O^T
  constexpr int kBlocks = Tiles::kValueBlocks;  // 32-channel blocks of a value row
  [[maybe_unused]] unsigned long long timeline[3] = {};  // NKV_KIVI_TIMELINE: start, first chunk in, loop done
  if constexpr (kTimeline) timeline[0] = timeline[1] = global_nanoseconds();
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
  const int key_begin = split.key_begin + (window_start - split.key_begin) / 64 * 64;  // pieces start at multiples of 64
  const int chunks = key_end > key_begin ? (key_end - key_begin + kChunk - 1) / kChunk : 0;

  const int64_t channels = static_cast<int64_t>(kv.heads) * kHeadDim;
  const uint16_t* key_residual = kv.key_residual + sequence * kv.residual_slot + kv_head * kHeadDim;
  const uint16_t* value_residual = kv.value_residual + sequence * kv.residual_slot + kv_head * kHeadDim;
  // The coded arrays are layout blocks, head-major (core/quantized_kvcache.h, head_row): in a share (the slot's, or the
  // page that holds a token), in_share is the element offset of this head's row holding local token `local` (32-bit: a
  // share's words fit, the API checks).
  auto in_share = [&](int local, int row_shift, int row_elements) {
    return head_row_in_share<uint32_t>(kv, local, kv_head, row_shift, static_cast<uint32_t>(row_elements));
  };
  constexpr int kWordShift = kBits == 2 ? 4 : kBits == 4 ? 3 : 2;
  constexpr int kValueWords = Tiles::kValueWordsPerToken;

  // Each warp streams its own 32 keys of every chunk into its own part of the stages (its key code rows, key group row
  // `warp`, its value tokens and their groups in every 32-channel block), so the loop has no block barrier: a warp waits
  // for its lanes' copies and syncs its lanes, and the warps of a block drift apart as their work allows. A warp's slice
  // of each array is one run of a layout block (blocks hold >= 64 tokens and the slice is 32-aligned; a value group
  // column keeps its tokens in units of 8, kivi::store_value_group), copied as consecutive 16-byte pieces: each copy
  // instruction of a warp reads whole 32-byte sectors and writes whole 128-byte lines of the stage. Only coded key tiles
  // load (t0 + 32 <= quantized keys <= the slot's length <= its capacity: never a row past the slot), and only coded
  // tiles read the stage. The stage keeps the value groups block-major ([32-channel block][units]: a lane reads its
  // tokens' scale or minimum pairs of a block at once; a block's group is its channels' column, repeated for G > 32).
  constexpr int kTokenPieces = Tiles::kTokenPieces;
  constexpr int kWarpKeyCodePieces = kWarpKeys / kCpw * kHeadDim / 4 / 32;  // per lane
  constexpr int kKeyGroupPieces = kHeadDim / 4;                          // one key group row, one piece per lane
  constexpr int kValueGroupPieces = kBlocks * kWarpKeys / 4;             // 4 tokens' words per piece, one per lane
  static_assert(kWarpKeyCodePieces >= 1 && kKeyGroupPieces <= 32 && kValueGroupPieces <= 32 &&
                    kChunk == kDecodeWarps * kWarpKeys,
                "a warp's slice is whole 16-byte pieces, at most one key group and one value group piece per lane");
  const int tile_first = warp * kWarpKeys;  // the warp's first key within a chunk
  const int value_group_block = lane / (kWarpKeys / 4);
  const int value_group_piece = lane % (kWarpKeys / 4);
  const int value_group_columns = kHeadDim >> group_shift;
  const int lane_group_column = (32 * min(value_group_block, kBlocks - 1)) >> group_shift;  // its 32-channel block's group column
  auto value_group_offset = [&](int local) {
    return value_group_in_share<uint32_t>(kv, local, kv_head, lane_group_column, static_cast<uint32_t>(value_group_columns)) + 4 * value_group_piece;
  };
  // The lane's sources in the warp's slice of chunk 0 (not paged: a chunk, 128 tokens, moves every row by the same number
  // of elements, whole layout blocks as B divides 128, so chunk c's sources are these plus c steps: one IMAD.WIDE each,
  // into a fresh register pair, where running sources cost an add pair and, as ptxas placed them, two moves each).
  const int first_tile = key_begin + tile_first;
  const uint32_t* const key_code_source = lane_constant(kv.key_codes + sequence * kv.key_codes_slot + in_share(first_tile, kWordShift, kHeadDim) + 4 * lane);
  const uint32_t* const key_group_source = lane_constant(kv.key_groups + sequence * kv.key_groups_slot + in_share(first_tile, group_shift, kHeadDim) + 4 * lane);
  const uint32_t* const value_code_source = lane_constant(kv.value_codes + sequence * kv.value_codes_slot + in_share(first_tile, 0, kValueWords) + 4 * lane);
  const uint32_t* const value_group_source = lane_constant(kv.value_groups + sequence * kv.value_groups_slot + value_group_offset(first_tile));
  // A chunk's step in the code arrays (keys: kChunk / kCpw word rows of d words; values: kChunk tokens of d / kCpw words)
  // and in the group arrays (keys: kChunk / G rows of d words; values: d / G columns of kChunk words) is the same, and
  // like the other values the copies use every chunk it is kept in a register: ptxas, short of registers, otherwise
  // rebuilds them all, ~25 instructions per chunk and warp (bench/NOTES.md q13).
  const uint32_t heads = static_cast<uint32_t>(kv.heads);
  const uint32_t code_step = static_cast<uint32_t>(lane_constant(static_cast<int>(heads * (kChunk / kCpw * kHeadDim))));
  const uint32_t group_step = static_cast<uint32_t>(lane_constant(static_cast<int>(heads * static_cast<uint32_t>((kChunk >> group_shift) * kHeadDim))));
  // The lane's places in a stage (bytes from its start), the same for every chunk; copy j of a run is 32 pieces on.
  const uint32_t key_code_destination = 4u * (tile_first / kCpw * Tiles::kKeyPitch) + 16u * lane;
  const uint32_t key_group_destination = 4u * (Tiles::kKeyCodeWords + warp * kHeadDim) + 16u * lane;
  auto value_code_destination = [&](int j) {
    const int piece = lane + 32 * j, token = tile_first + piece / kTokenPieces;
    return 4u * (Tiles::kKeyCodeWords + Tiles::kKeyGroupWords) +
           16u * (value_row<kBits, kTokenPieces>(token) * kTokenPieces + swizzled_piece<kBits, kTokenPieces>(token, piece % kTokenPieces));
  };
  // Up to two of them kept in registers (ptxas would rebuild the swizzle, ~15 instructions, every chunk); more would cost
  // the loop registers, so 4- and 8-bit d128 rebuild theirs.
  constexpr int kKeptDestinations = kTokenPieces <= 2 ? kTokenPieces : 0;
  [[maybe_unused]] uint32_t kept_destination[kKeptDestinations > 0 ? kKeptDestinations : 1];
#pragma unroll
  for (int j = 0; j < kKeptDestinations; ++j) kept_destination[j] = static_cast<uint32_t>(lane_constant(static_cast<int>(value_code_destination(j))));
  const uint32_t value_group_destination = static_cast<uint32_t>(lane_constant(static_cast<int>(
      4u * (Tiles::kKeyCodeWords + Tiles::kKeyGroupWords + Tiles::kValueCodeWords + value_group_block * kChunk + tile_first) + 16u * value_group_piece)));
  const uint32_t stage_bytes = 4u * Tiles::kStageWords;
  constexpr uint32_t kTwoOnes = 0x3c003c00u;  // fp16 1.0 in both halves
#pragma unroll
  for (int s = 0; s < kStages; ++s) {  // the warp's fp16 ones in every stage (Tiles::kOnesWords)
    stages[s * Tiles::kStageWords + Tiles::kStageWords - Tiles::kOnesWords + kWarpKeys * warp + lane] = kTwoOnes;
  }
  // The copies carry an L2 evict_first policy: every code and group byte is read once per call, and streamed as the L2's
  // first to evict they leave it to what the next call's blocks read before their first copy (the plan's piece records,
  // Q), as the fp16 decode's do (bench/NOTES.md a12, q14). Where the stage address is warp-uniform, ptxas (12.4, 13.0)
  // splits it into [R + UR] and names an unset uniform register as the hinted copy's policy (an illegal instruction,
  // a12): the first stage's address plus a zero read back from the lane's own word of ones is a vector value to it.
  const uint32_t own_ones = *static_cast<volatile uint32_t*>(stages + Tiles::kStageWords - Tiles::kOnesWords + kWarpKeys * warp + lane);
  const uint32_t first_stage = static_cast<uint32_t>(lane_constant(static_cast<int>(shared_address(stages)))) + (own_ones - kTwoOnes);
  const uint64_t stream_policy = l2_evict_first_policy();
  uint32_t load_stage = first_stage;  // the stage the next load_tile fills (chunks load in order)
  auto load_tile = [&](int chunk) {
    const uint32_t base = load_stage;
    load_stage = load_stage == first_stage + (kStages - 1) * stage_bytes ? first_stage : load_stage + stage_bytes;
    const int t0 = key_begin + chunk * kChunk + tile_first;
    if (t0 + kWarpKeys <= quantized_keys) {
      const uint32_t code_offset = static_cast<uint32_t>(chunk) * code_step, group_offset = static_cast<uint32_t>(chunk) * group_step;
      const uint32_t *key_codes = key_code_source + code_offset, *key_groups = key_group_source + group_offset;
      const uint32_t *value_codes = value_code_source + code_offset, *value_groups = value_group_source + group_offset;
      if constexpr (kPaged) {  // the warp's 32 tokens lie in one page (pages hold a multiple of G >= 32 tokens)
        const TokenPlace place = token_place(kv, 1, sequence, t0);
        const int local = static_cast<int>(place.token);
        key_codes = kv.key_codes + place.share * kv.key_codes_slot + in_share(local, kWordShift, kHeadDim) + 4 * lane;
        key_groups = kv.key_groups + place.share * kv.key_groups_slot + in_share(local, group_shift, kHeadDim) + 4 * lane;
        value_codes = kv.value_codes + place.share * kv.value_codes_slot + in_share(local, 0, kValueWords) + 4 * lane;
        value_groups = kv.value_groups + place.share * kv.value_groups_slot + value_group_offset(local);
      }
#pragma unroll
      for (int j = 0; j < kWarpKeyCodePieces; ++j) copy_async_16(base + key_code_destination + 512u * j, key_codes + 128 * j, true, stream_policy);
      if (lane < kKeyGroupPieces) copy_async_16(base + key_group_destination, key_groups, true, stream_policy);
#pragma unroll
      for (int j = 0; j < kTokenPieces; ++j) {
        copy_async_16(base + (j < kKeptDestinations ? kept_destination[j] : value_code_destination(j)), value_codes + 128 * j, true,
                      stream_policy);
      }
      if (lane < kValueGroupPieces) copy_async_16(base + value_group_destination, value_groups, true, stream_policy);
    }
  };
  // The block's query rows (zeros past `rows`), read before the first chunks are asked for: the loads queue behind the
  // copies otherwise, and every warp's first step waits for the barrier that publishes them (bench/NOTES.md q13). They
  // go to shared memory, where the key MMA's B operand is read per k-step, which leaves the compiler 16 registers for
  // the loop's loads. Under K-sort (key_permutation set) the stored key channel j is written channel permutation[j]: q
  // is read in that order, so q.k keeps its products.
  constexpr int kQItems = (kRows * kHeadDim / 8 + kDecodeThreads - 1) / kDecodeThreads;  // 16-byte pieces per thread
  const int32_t* permutation = kv.key_permutation != nullptr ? kv.key_permutation + kv_head * kHeadDim : nullptr;
  uint4 q_pieces[kQItems];
#pragma unroll
  for (int j = 0; j < kQItems; ++j) {
    const int item = threadIdx.x + j * kDecodeThreads;
    const int r = item / (kHeadDim / 8), c = item % (kHeadDim / 8) * 8;
    const int row = row0 + r;
    const int token = row / group;
    q_pieces[j] = make_uint4(0u, 0u, 0u, 0u);
    if (item < kRows * kHeadDim / 8 && row < rows) {
      const __half* q = static_cast<const __half*>(args.q) + sequence * args.q_batch_stride + token * args.q_strides.row +
                        (kv_head * group + row - token * group) * args.q_strides.head;
      if (permutation == nullptr) {
        q_pieces[j] = *reinterpret_cast<const uint4*>(q + c);
      } else {
        alignas(16) __half gathered[8];
        for (int e = 0; e < 8; ++e) gathered[e] = q[permutation[c + e]];
        q_pieces[j] = *reinterpret_cast<const uint4*>(gathered);
      }
    }
  }
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < chunks) load_tile(s);
    copy_async_commit();
  }
  __half* q_rows = reinterpret_cast<__half*>(shared_bytes + static_cast<size_t>(kStages) * Tiles::kStageWords * 4);
#pragma unroll
  for (int j = 0; j < kQItems; ++j) {
    const int item = threadIdx.x + j * kDecodeThreads;
    if (item < kRows * kHeadDim / 8) *reinterpret_cast<uint4*>(q_rows + item / (kHeadDim / 8) * Tiles::kQPitch + item % (kHeadDim / 8) * 8) = q_pieces[j];
  }
  __syncthreads();  // the query rows are the block's; from here each warp works on its own (no barrier until the merge)
  // Q as the key MMA's B operand: column n = query row g of each 8-row tile, reduction index k = 2t + j
  // at channel 16 s + 4t + j, k = 2t + 8 + j at 16 s + 4t + 2 + j.
  const int q_lane = lane_constant(g * Tiles::kQPitch + 4 * t);
  auto q_fragment = [&](int ks, int nt) {
    return *reinterpret_cast<const uint2*>(q_rows + q_lane + nt * 8 * Tiles::kQPitch + 16 * ks);
  };
  // The keys query column (nt, j) of the lane sees within the piece (recomputed where a warp tile needs it: registers in
  // the loop are scarce).
  auto visible = [&](int nt, int j) {
    const int column_row = row0 + nt * 8 + 2 * t + j;
    KeyRange r = visible_keys(min(column_row, rows - 1) / group, lq, lk, p.base.mask.causal, p.base.mask.window_left);
    r.first = max(r.first, split.key_begin);
    r.last = min(r.last, split.key_end - 1);
    return r;
  };
  int all_first = 0, all_last = 0x7fffffff, any_first = 0x7fffffff;  // over the block's query rows
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const KeyRange r = visible(nt, j);
      all_first = max(all_first, r.first);
      all_last = min(all_last, r.last);
      any_first = min(any_first, r.first);
    }
  }
#pragma unroll
  for (int width = 1; width < 4; width *= 2) {  // the columns are spread over t
    all_first = max(all_first, __shfl_xor_sync(0xffffffffu, all_first, width));
    all_last = min(all_last, __shfl_xor_sync(0xffffffffu, all_last, width));
    any_first = min(any_first, __shfl_xor_sync(0xffffffffu, any_first, width));
  }

  const CodeLanes<kBits> lanes(g);
  constexpr int kSumRow = 7;  // of o_min: below it the blocks' rows
  static_assert(kBlocks < kSumRow, "the softmax sum's row of the minimum MMA lies past the 32-channel blocks' rows");
  // Two fp16 ones in the sum's row of the minimum MMA's operand (the fp16 values' tiles). Kept in a register: computed
  // where it is used, ptxas rematerializes the lane's minimum row in the coded value phase instead (4 more instructions
  // a step, bench/NOTES.md q13).
  const uint32_t sum_row = static_cast<uint32_t>(lane_constant(g == kSumRow ? static_cast<int>(kTwoOnes) : 0));
  const float exp_scale = __int_as_float(lane_constant(__float_as_int(p.base.mask.score.softcap > 0.0f ? 1.0f : p.base.mask.score.scale_log2)));
  // O^T per 16-channel tile (rows: channels value_channel(i, g, 0 / 1); columns: query rows 2t, 2t + 1), in code
  // units until `plain` (see the top of the file); the values' minimum term per 32-channel block (rows: blocks) and,
  // in row kSumRow, the softmax's running sum: that MMA row's operand is 1.0 for every key, so the tensor cores add up
  // P (in fp16, as the value MMAs take it before its scales) and the lazy rescale of o_min rescales it: no registers or
  // adds of its own (tiles of fp16 values run one more MMA per key tile for it).
  float o[kVTiles][kNTiles][4];
  float o_min[kNTiles][4];
  float o_min_high[kNTiles][4];  // the other half of the coded values' minimum terms and sum, in rows g + 8 (see the value phase)
  float row_max[kNTiles][2];
  // Per column, kept with row_max (they change only with it): the raw score above which a step rescales (see the softmax
  // step), and -row_max (0 while it is -inf) for the exponents.
  float rescale_above[kNTiles][2], exp_offset[kNTiles][2];
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      o_min[nt][e] = o_min_high[nt][e] = 0.0f;
#pragma unroll
      for (int i = 0; i < kVTiles; ++i) o[i][nt][e] = 0.0f;
    }
    row_max[nt][0] = row_max[nt][1] = -INFINITY;
    rescale_above[nt][0] = rescale_above[nt][1] = -INFINITY;
    exp_offset[nt][0] = exp_offset[nt][1] = 0.0f;
  }
  bool plain = false;
  auto to_plain = [&] {
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      o_min[nt][0] += o_min_high[nt][2];
      o_min[nt][1] += o_min_high[nt][3];
    }
#pragma unroll
    for (int i = 0; i < kVTiles; ++i) {
      const int source = (i / 2) * 4 + t;  // the lane holding this tile's block row of o_min
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        const float m0 = __shfl_sync(0xffffffffu, o_min[nt][0], source);
        const float m1 = __shfl_sync(0xffffffffu, o_min[nt][1], source);
        o[i][nt][0] = fmaf(o[i][nt][0], lanes.scale(i % 2, 0), m0);
        o[i][nt][1] = fmaf(o[i][nt][1], lanes.scale(i % 2, 0), m1);
        o[i][nt][2] = fmaf(o[i][nt][2], lanes.scale(i % 2, 1), m0);
        o[i][nt][3] = fmaf(o[i][nt][3], lanes.scale(i % 2, 1), m1);
      }
    }
    plain = true;
  };

  // One value as stored for a token the stage does not hold coded: the residual ring (from T - R; `ring` is
  // token % R), the codes dequantized (the one tile across T - R), zero past the sequence. Channels c and c + 1
  // (c even).
  auto value_pair = [&](int token, int ring, int c) -> uint32_t {
    if (token >= lk) return 0u;
    if (token >= quantized_values) return *reinterpret_cast<const uint32_t*>(value_residual + ring * channels + c);
    const uint32_t word = kv.value_codes[head_row(kv, kv.value_codes_slot, sequence, kv_head, token, 0, kValueWords) +
                                         kivi::value_word_slot(c / kCpw, kValueWords, kBits)];
    const kivi::Group vg = kivi::load_value_group(kv.value_groups + value_group_unit(kv, sequence, kv_head, token, c >> group_shift), token & 7);
    return MmaType<__half>::pack(kivi::value_of(unpack_code(word, c % kCpw, kBits), vg), kivi::value_of(unpack_code(word, c % kCpw + 1, kBits), vg));
  };

  // 2 bits: where a lane's value words of key tile m start in a stage's value rows (past the warp's first token), the
  // same every step: the swizzled row and piece of its first token (see the value phase).
  [[maybe_unused]] int value_lane_offset[2] = {0, 0};
  if constexpr (kBits == 2) {
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      const int first_token = Layout::tile_token(m, 2 * t), first_slot = (g / 4) * kBlocks;
      value_lane_offset[m] = lane_constant(value_row<kBits, kTokenPieces>(first_token) * Tiles::kValueWordsPerToken +
                                           4 * swizzled_piece<kBits, kTokenPieces>(first_token, first_slot / 4) + first_slot % 4);
    }
  }

  // The warp's key code rows and its key group row in a stage (with the lane's channels 4t ..), the same every chunk.
  const int key_code_lane = lane_constant((kWarpKeys * warp + Layout::tile_token(0, g)) / kCpw * Tiles::kKeyPitch + 4 * t);
  const int key_group_lane = lane_constant(warp * kHeadDim + 4 * t);
  // 4 bits: lane L's row address for the ldmatrix of key tile m and blocks 2j, 2j + 1 (see the value phase).
  [[maybe_unused]] int ldmatrix_lane[2][2] = {};
  if constexpr (kBits == 4) {
#pragma unroll
    for (int m = 0; m < 2; ++m) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int token = Layout::tile_token(m, lane % 8 + 8 * ((lane / 8) % 2));
        const int piece = swizzled_piece<kBits, kTokenPieces>(token, 2 * j + lane / 16);
        ldmatrix_lane[m][j] = lane_constant(value_row<kBits, kTokenPieces>(token) * Tiles::kValueWordsPerToken + 4 * piece);
      }
    }
  }
  // The lane's unit of 8 tokens in a block's value groups, and (minimum MMA, row g) block g's row.
  [[maybe_unused]] const int value_group_lane = lane_constant(8 * t);
  [[maybe_unused]] const int minimum_block_row = lane_constant(min(g, kBlocks) * kChunk);  // past the blocks: the ones

  const uint32_t* read_stage = stages;  // the stage of chunk `chunk` below
  for (int chunk = 0; chunk < chunks; ++chunk) {
    copy_async_wait<kStages - 2>();
    __syncwarp();  // the warp's slice of this chunk is in; its lanes are done with the stage the next load overwrites
    if constexpr (kTimeline) {
      if (chunk == 0) timeline[1] = global_nanoseconds();
    }
    if (chunk + kStages - 1 < chunks) load_tile(chunk + kStages - 1);
    copy_async_commit();

    const uint32_t* stage = read_stage;
    read_stage = read_stage == stages + (kStages - 1) * Tiles::kStageWords ? stages : read_stage + Tiles::kStageWords;
    const int c0 = key_begin + chunk * kChunk;
    const int t0 = c0 + warp * kWarpKeys;
    if (t0 >= key_end || t0 + kWarpKeys <= any_first) continue;  // past the piece, or before every row's window
    // Keys come in whole warp tiles of codes or of residual rows (the split point T - T % R is a multiple of
    // 32); values change over once, at T - R, possibly within a warp tile.
    const bool keys_coded = t0 + kWarpKeys <= quantized_keys;
    const bool values_coded = t0 + kWarpKeys <= quantized_values;
    if (!values_coded && !plain) to_plain();
    float s[2][kNTiles][4];

    if ((kAblate & 1) && keys_coded) {
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[m][nt][e] = 0.001f * e;
    } else if (keys_coded) {
      // ---- logits from the key codes of the warp's 32 tokens (one key group) ----
      const uint32_t* codes = stage + key_code_lane;
      const uint32_t* groups = stage + Tiles::kKeyCodeWords + key_group_lane;
      float bias[kNTiles][4];
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) bias[nt][e] = s[0][nt][e] = s[1][nt][e] = 0.0f;
      }
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        const int c = 16 * ks;  // + 4t: in the lane offsets
        // Key groups are stored by channel pair (kivi::store_key_group): the scale and minimum pairs as loaded.
        const uint4 gr = *reinterpret_cast<const uint4*>(groups + c);
        const uint32_t scale01 = gr.x, min01 = gr.y, scale23 = gr.z, min23 = gr.w;
        // The quad as loaded: rows g + 8 get the minimums (every token of the group has them: Σ mn . q, read from
        // the accumulator's rows g + 8), rows g the scales, whose products nothing reads: no register copies.
        const uint32_t a_min[4] = {scale01, min01, scale23, min23};
        uint32_t a[2][4];
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          const uint4 w = *reinterpret_cast<const uint4*>(codes + (Layout::tile_token(m, g) / kCpw - Layout::tile_token(0, g) / kCpw) * Tiles::kKeyPitch + c);
          a[m][0] = lanes.operand(w.x, w.y, m, 0);
          a[m][1] = lanes.operand(w.x, w.y, m, 1);
          a[m][2] = lanes.operand(w.z, w.w, m, 0);
          a[m][3] = lanes.operand(w.z, w.w, m, 1);
        }
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          const uint2 q = q_fragment(ks, nt);
          const uint32_t b0 = multiply_halves(q.x, scale01), b1 = multiply_halves(q.y, scale23);
          mma_16816(bias[nt], a_min, q.x, q.y, __half());
          mma_16816(s[0][nt], a[0], b0, b1, __half());
          mma_16816(s[1][nt], a[1], b0, b1, __half());
        }
      }
#pragma unroll
      for (int m = 0; m < 2; ++m) {
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[m][nt][e] = fmaf(s[m][nt][e], lanes.scale(m, e / 2), bias[nt][2 + e % 2]);
        }
      }
    } else {
      // ---- logits from the fp16 residual rows, straight from global memory ----
#pragma unroll
      for (int m = 0; m < 2; ++m) {
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[m][nt][e] = 0.0f;
        }
      }
      // A batch of k-steps' rows is loaded before its MMAs: a round trip to global memory per batch, not per k-step (a
      // piece's last chunk waits on these while the other pieces have finished).
      const uint2* key_rows[2][2];
      bool key_in[2][2];
#pragma unroll
      for (int m = 0; m < 2; ++m) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int token = t0 + Layout::tile_token(m, g + 8 * half);
          key_in[m][half] = token < lk;
          key_rows[m][half] = reinterpret_cast<const uint2*>(key_residual + (key_in[m][half] ? token - quantized_keys : 0) * channels + 4 * t);
        }
      }
      constexpr int kKeyBatch = kKSteps / 2;
#pragma unroll
      for (int k0 = 0; k0 < kKSteps; k0 += kKeyBatch) {
        uint2 x[kKeyBatch][2][2];
#pragma unroll
        for (int kb = 0; kb < kKeyBatch; ++kb) {
#pragma unroll
          for (int m = 0; m < 2; ++m) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
              const uint2 row = key_rows[m][half][4 * (k0 + kb)];  // channels 16 ks + 4t ..
              x[kb][m][half] = key_in[m][half] ? row : make_uint2(0u, 0u);
            }
          }
        }
#pragma unroll
        for (int kb = 0; kb < kKeyBatch; ++kb) {
#pragma unroll
          for (int m = 0; m < 2; ++m) {
            const uint32_t a[4] = {x[kb][m][0].x, x[kb][m][1].x, x[kb][m][0].y, x[kb][m][1].y};
#pragma unroll
            for (int nt = 0; nt < kNTiles; ++nt) {
              const uint2 q = q_fragment(k0 + kb, nt);
              mma_16816(s[m][nt], a, q.x, q.y, __half());
            }
          }
        }
      }
    }

    // ---- one online-softmax step over the warp's 32 keys, per query column ----
    if (p.base.mask.score.softcap > 0.0f) {
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[m][nt][e] = p.base.mask.score.capped(s[m][nt][e]);
    }
    if (t0 < all_first || t0 + kWarpKeys - 1 > all_last) {  // some row does not see all 32 keys
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        const KeyRange columns[2] = {visible(nt, 0), visible(nt, 1)};
#pragma unroll
        for (int m = 0; m < 2; ++m) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int token = t0 + Layout::tile_token(m, g + 8 * (e / 2));
            const KeyRange& r = columns[e % 2];
            s[m][nt][e] = token >= r.first && token <= r.last ? s[m][nt][e] : -INFINITY;
          }
        }
      }
    }
    uint32_t probabilities[2][kNTiles][2];  // P^T of each key tile as the value MMA's B operand
    if (kAblate & 4) {
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          probabilities[m][nt][0] = MmaType<__half>::pack(s[m][nt][0], s[m][nt][1]);
          probabilities[m][nt][1] = MmaType<__half>::pack(s[m][nt][2], s[m][nt][3]);
          o_min[nt][0] += s[m][nt][0];
        }
    } else {
      // A column's running maximum m only has to bound its scores closely enough that P = 2^(x - m) stays in range, not
      // be their maximum (the sum and O use the same m): the warp looks at its lanes' own scores first and does the
      // cross-lane maximum (three dependent shuffles per column) and the rescale of O only when some lane saw a score
      // more than kRescaleSlack above its column's m, which after the first keys is rare. Otherwise P <= 2^(1/2): the
      // value MMA's operand P x s stays finite for every fp16 value group's scale s (at most 131008 / 3 = 43669 at 2
      // bits; 2^(1/2) x 43669 < 65504), as FlashAttention-4 skips rescales below a threshold (bench/NOTES.md q13).
      constexpr float kRescaleSlack = 0.5f;
      float lane_max[kNTiles][2];  // of the raw scores
      bool grew = false;
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          lane_max[nt][j] = fmaxf(fmaxf(s[0][nt][j], s[0][nt][2 + j]), fmaxf(s[1][nt][j], s[1][nt][2 + j]));
          grew |= lane_max[nt][j] > rescale_above[nt][j];
        }
      }
      if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          float alpha[2];
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            float tile_max = lane_max[nt][j] * exp_scale;
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 4));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 8));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 16));
            const float new_max = fmaxf(row_max[nt][j], tile_max);
            alpha[j] = fast_exp2(row_max[nt][j] - (new_max == -INFINITY ? 0.0f : new_max));
            row_max[nt][j] = new_max;
            // Rounding may leave the threshold a little above (row_max + slack) / exp_scale: P stays below 2^0.51.
            rescale_above[nt][j] = __fdividef(new_max + kRescaleSlack, exp_scale);
            exp_offset[nt][j] = new_max == -INFINITY ? 0.0f : -new_max;
          }
          if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
            for (int i = 0; i < kVTiles; ++i) {
              o[i][nt][0] *= alpha[0];
              o[i][nt][1] *= alpha[1];
              o[i][nt][2] *= alpha[0];
              o[i][nt][3] *= alpha[1];
            }
            o_min[nt][0] *= alpha[0];
            o_min[nt][1] *= alpha[1];
            o_min_high[nt][2] *= alpha[0];
            o_min_high[nt][3] *= alpha[1];
          }
        }
      }
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
#pragma unroll
          for (int m = 0; m < 2; ++m) {
            s[m][nt][j] = fast_exp2(fmaf(s[m][nt][j], exp_scale, exp_offset[nt][j]));
            s[m][nt][2 + j] = fast_exp2(fmaf(s[m][nt][2 + j], exp_scale, exp_offset[nt][j]));
          }
        }
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          probabilities[m][nt][0] = transpose_8x8(MmaType<__half>::pack(s[m][nt][0], s[m][nt][1]));
          probabilities[m][nt][1] = transpose_8x8(MmaType<__half>::pack(s[m][nt][2], s[m][nt][3]));
        }
      }
    }

    // The value MMA of key tile m takes reduction index k = tile row k: lane t's operands hold tokens
    // tile_token(m, 2t), (m, 2t + 1) (registers 0, 1) and (m, 2t + 8), (m, 2t + 9) (registers 2, 3).
    if ((kAblate & 2) && values_coded) {
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) o[0][nt][0] += __half2float(__ushort_as_half(static_cast<unsigned short>(probabilities[m][nt][0])));
    } else if (values_coded) {
      // ---- P.V from the value codes ----
      const uint32_t* words = stage + Tiles::kKeyCodeWords + Tiles::kKeyGroupWords + (t0 - c0) * Tiles::kValueWordsPerToken;
      const uint32_t* blocks = stage + Tiles::kKeyCodeWords + Tiles::kKeyGroupWords + Tiles::kValueCodeWords + (t0 - c0);
      // At 2 and 4 bits a lane's scale (and minimum) pairs of both key tiles are the four scale (minimum) words of its unit
      // of 8 tokens: one 16-byte load per block for both tiles, where one 8-byte load per tile cost 4 more loads a step.
      [[maybe_unused]] uint4 unit_scales[kBlocks];
      uint4 unit_minimums;
      // 8 bits (tests): a block's scale (which = 0) or minimum (1) pairs of key tile m's four tokens, gathered by half.
      [[maybe_unused]] auto gathered_pairs = [&](const uint32_t* block, int which, int m) {
        const uint16_t* halves = reinterpret_cast<const uint16_t*>(block);
        uint16_t h[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int token = Layout::value_token(m, t, u);
          h[u] = halves[2 * (token & ~7) + 8 * which + kivi::value_group_half(token & 7)];
        }
        return make_uint2(h[0] | static_cast<uint32_t>(h[1]) << 16, h[2] | static_cast<uint32_t>(h[3]) << 16);
      };
      if constexpr (kBits <= 4) {
#pragma unroll
        for (int b = 0; b < kBlocks; ++b) unit_scales[b] = *reinterpret_cast<const uint4*>(blocks + b * kChunk + value_group_lane);
        unit_minimums = *reinterpret_cast<const uint4*>(blocks + minimum_block_row + value_group_lane + 4);
      } else {
        const uint2 m0 = gathered_pairs(blocks + minimum_block_row, 1, 0), m1 = gathered_pairs(blocks + minimum_block_row, 1, 1);
        unit_minimums = make_uint4(m0.x, m0.y, m1.x, m1.y);
      }
      // The minimum terms (rows: 32-channel blocks; row kSumRow and the rows between read ones, so row kSumRow adds up P)
      // of both key tiles in four k8 MMAs whose A operands are the lane's minimum words as loaded, {x, y} and {z, w}
      // (tile m's pairs are words 2m, 2m + 1): with B = tile m's first P register, rows g get tile m's first pair x P;
      // with its second, rows g + 8 get the second pair's. The other rows (products of unmatched pairs) are never read:
      // o_min keeps rows g, o_min_high rows g + 8, added up at to_plain. Two k16 MMAs would need B pairs that are not
      // the registers the softmax step leaves them in (4 moves), and one per tile an A operand that is not (4 more).
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        mma_1688(o_min[nt], unit_minimums.x, unit_minimums.y, probabilities[0][nt][0]);
        mma_1688(o_min[nt], unit_minimums.z, unit_minimums.w, probabilities[1][nt][0]);
        mma_1688(o_min_high[nt], unit_minimums.x, unit_minimums.y, probabilities[0][nt][1]);
        mma_1688(o_min_high[nt], unit_minimums.z, unit_minimums.w, probabilities[1][nt][1]);
      }
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        [[maybe_unused]] const int tokens[4] = {Layout::value_token(m, t, 0), Layout::value_token(m, t, 1), Layout::value_token(m, t, 2),
                                                Layout::value_token(m, t, 3)};
        // Block b's scale pairs of the four tokens, as the B operand's two registers take them. The stage keeps each
        // block's groups in units of 8 tokens (kivi::store_value_group): at 2 and 4 bits the lane's tokens 8t + 2m + {0, 4}
        // and + {1, 5} are words 2m and 2m + 1 of its unit's scales (loaded above).
        auto scale_pairs = [&](int b) {
          if constexpr (kBits <= 4) {
            return m == 0 ? make_uint2(unit_scales[b].x, unit_scales[b].y) : make_uint2(unit_scales[b].z, unit_scales[b].w);
          } else {
            return gathered_pairs(blocks + b * kChunk, 0, m);
          }
        };
        // 2 bits: the lane's word of each block for each token (value_word_slot puts a lane's words, one per 32-channel
        // block, side by side: one 16-byte load per token at d128, 8 bytes at d64). The tokens (and their rows) differ
        // from tokens[0] by constants and share its swizzle, so each load is one lane address plus an immediate.
        [[maybe_unused]] uint32_t lane_words[4][kBlocks];
        if constexpr (kBits == 2) {
          const uint32_t* at = words + value_lane_offset[m];
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const uint32_t* x = at + (tokens[u] - tokens[0]) * Tiles::kValueWordsPerToken;
            if constexpr (kBlocks == 4) {
              const uint4 v = *reinterpret_cast<const uint4*>(x);
              lane_words[u][0] = v.x, lane_words[u][1] = v.y, lane_words[u][2] = v.z, lane_words[u][3] = v.w;
            } else {
              const uint2 v = *reinterpret_cast<const uint2*>(x);
              lane_words[u][0] = v.x, lane_words[u][1] = v.y;
            }
          }
        }
        uint32_t pieces[4];  // 4 bits: the ldmatrix of blocks b and b + 1
#pragma unroll
        for (int b = 0; b < kBlocks; ++b) {  // 32 channels: tiles 2b, 2b + 1
          const uint2 scales = scale_pairs(b);
          uint32_t scaled[kNTiles][2];
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt) {
            scaled[nt][0] = multiply_halves(probabilities[m][nt][0], scales.x);
            scaled[nt][1] = multiply_halves(probabilities[m][nt][1], scales.y);
          }
          uint32_t a[2][4];  // tiles 2b and 2b + 1
          if constexpr (kBits == 4) {
            // Lane L addresses row L % 8 of matrix L / 8: tile rows 0..7 (tokens of registers 0, 1) or 8..15 (2, 3),
            // for piece b (matrices 0, 1) and b + 1 (2, 3); one load serves blocks b and b + 1, so odd b reuses it.
            if (b % 2 == 0) ldmatrix_x4_trans(pieces, shared_address(words + ldmatrix_lane[m][b / 2]));
            const uint32_t lo = pieces[2 * (b % 2)], hi = pieces[2 * (b % 2) + 1];
            const uint32_t lo_high_byte = lo >> 8, hi_high_byte = hi >> 8;
            a[0][0] = lo & lanes.mask(0, 0);
            a[0][1] = lo & lanes.mask(0, 1);
            a[0][2] = hi & lanes.mask(0, 0);
            a[0][3] = hi & lanes.mask(0, 1);
            a[1][0] = lo_high_byte & lanes.mask(1, 0);
            a[1][1] = lo_high_byte & lanes.mask(1, 1);
            a[1][2] = hi_high_byte & lanes.mask(1, 0);
            a[1][3] = hi_high_byte & lanes.mask(1, 1);
          } else if constexpr (kBits == 2) {
#pragma unroll
            for (int q = 0; q < 2; ++q) {  // the two tiles' rows are codes of one byte
              a[q][0] = lanes.operand(lane_words[0][b], lane_words[1][b], q, 0);
              a[q][1] = lanes.operand(lane_words[0][b], lane_words[1][b], q, 1);
              a[q][2] = lanes.operand(lane_words[2][b], lane_words[3][b], q, 0);
              a[q][3] = lanes.operand(lane_words[2][b], lane_words[3][b], q, 1);
            }
          } else {
            // 8 bits: the lane's words of tiles 2b and 2b + 1 for each of the four tokens (addressed like the 2-bit loads).
            uint32_t w[4][2];
            auto at = [&](int word) {
              return words + value_row<kBits, kTokenPieces>(tokens[0]) * Tiles::kValueWordsPerToken + 4 * swizzled_piece<kBits, kTokenPieces>(tokens[0], word / 4) +
                     word % 4;
            };
#pragma unroll
            for (int u = 0; u < 4; ++u) {
              const int next = (tokens[u] - tokens[0]) * Tiles::kValueWordsPerToken;
              w[u][0] = at(4 * (2 * b) + g / 2)[next];
              w[u][1] = at(4 * (2 * b + 1) + g / 2)[next];
            }
#pragma unroll
            for (int q = 0; q < 2; ++q) {
              a[q][0] = lanes.operand(w[0][q], w[1][q], q, 0);
              a[q][1] = lanes.operand(w[0][q], w[1][q], q, 1);
              a[q][2] = lanes.operand(w[2][q], w[3][q], q, 0);
              a[q][3] = lanes.operand(w[2][q], w[3][q], q, 1);
            }
          }
#pragma unroll
          for (int q = 0; q < 2; ++q) {
#pragma unroll
            for (int nt = 0; nt < kNTiles; ++nt) mma_16816(o[2 * b + q][nt], a[q], scaled[nt][0], scaled[nt][1], __half());
          }
        }
      }
    } else {
      // ---- P.V from fp16 values (residual, or dequantized here), straight from global memory ----
      const int ring0 = t0 % residual;  // the ring's slot of t0; R >= 32, so a warp tile wraps at most once
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        int tokens[4], rings[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int d = Layout::value_token(m, t, u);
          tokens[u] = t0 + d;
          rings[u] = ring0 + d >= residual ? ring0 + d - residual : ring0 + d;
        }
        // Tile i's MMA from the four tokens' channel pairs (c, c + 1), c = value_channel(i, g, 0).
        auto accumulate_pairs = [&](int i, const uint32_t (&x)[4]) {
          const uint32_t a[4] = {byte_permute(x[0], x[1], 0x5410), byte_permute(x[0], x[1], 0x7632), byte_permute(x[2], x[3], 0x5410),
                                 byte_permute(x[2], x[3], 0x7632)};
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt) mma_16816(o[i][nt], a, probabilities[m][nt][0], probabilities[m][nt][1], __half());
        };
        {
          const uint32_t a_sum[4] = {sum_row, 0u, sum_row, 0u};  // the softmax sum's row of o_min (see kSumRow)
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt) mma_16816(o_min[nt], a_sum, probabilities[m][nt][0], probabilities[m][nt][1], __half());
        }
        if (t0 >= quantized_values) {
          // All residual (the usual tail): each value row's channel pairs for half the tiles are loaded before those tiles'
          // MMAs, two round trips to global memory per key tile rather than one per tile.
          const uint32_t* value_rows[4];
#pragma unroll
          for (int u = 0; u < 4; ++u) value_rows[u] = reinterpret_cast<const uint32_t*>(value_residual + (tokens[u] < lk ? rings[u] : 0) * channels);
          constexpr int kValueBatch = kVTiles / 2;
#pragma unroll
          for (int i0 = 0; i0 < kVTiles; i0 += kValueBatch) {
            uint32_t x[kValueBatch][4];
#pragma unroll
            for (int ib = 0; ib < kValueBatch; ++ib) {
#pragma unroll
              for (int u = 0; u < 4; ++u) {
                const uint32_t pair = value_rows[u][Layout::value_channel(i0 + ib, g, 0) / 2];
                x[ib][u] = tokens[u] < lk ? pair : 0u;
              }
            }
#pragma unroll
            for (int ib = 0; ib < kValueBatch; ++ib) accumulate_pairs(i0 + ib, x[ib]);
          }
          continue;
        }
        // The one tile across T - R: values dequantized pair by pair.
#pragma unroll
        for (int i = 0; i < kVTiles; ++i) {
          const int c = Layout::value_channel(i, g, 0);
          uint32_t x[4];
#pragma unroll
          for (int u = 0; u < 4; ++u) x[u] = value_pair(tokens[u], rings[u], c);
          accumulate_pairs(i, x);
        }
      }
    }
  }
  if constexpr (kTimeline) timeline[2] = global_nanoseconds();
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
      const float sum = __shfl_sync(0xffffffffu, o_min[nt][j], 4 * kSumRow + t);
      const int r = nt * 8 + 2 * t + j;
      // Swizzled columns: in the plain layout a lane's four t (rows 2t + j, whole rows apart) shared a bank, 4-way
      // conflicts in every block's end while the SM's other blocks stream, on the call's critical chain (NOTES q16).
      float* row = merge_o + (warp * kRows + r) * kHeadDim;
      const int swizzle = merge_column_swizzle(r);
#pragma unroll
      for (int i = 0; i < kVTiles; ++i) {
        row[Layout::value_channel(i, g, 0) ^ swizzle] = o[i][nt][j];
        row[Layout::value_channel(i, g, 1) ^ swizzle] = o[i][nt][2 + j];
      }
      if (g == 0) {
        merge_max[warp * kRows + r] = row_max[nt][j];
        merge_sum[warp * kRows + r] = sum;
      }
    }
  }
  __syncthreads();
  static_assert(Tiles::kMergeBytes >= kMergeScratchFloats<kRows> * sizeof(float), "merge_pieces' scratch fits the merge area");
  finish_decode_block<__half, kHeadDim, kRows, true, true>(p.base, merge_o, split, row0, rows);
  if constexpr (kTimeline) {
    if (threadIdx.x == 0) {
      unsigned sm = 0;
      asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
      printf("kivi-timeline bits %d piece %d rows %d sm %u chunks %d start %llu first %llu loop %llu end %llu\n", kBits, piece,
             static_cast<int>(blockIdx.z), sm, chunks, timeline[0], timeline[1], timeline[2], global_nanoseconds());
    }
  }
}

template <int kBits, int kHeadDim, int kNTiles>
void launch(const nkv_attention_plan& plan, const KiviDecodeParams& params) {
  using Tiles = KiviTiles<kBits, kHeadDim, kNTiles>;
  auto kernel = params.kv.block_table != nullptr ? decode_kivi_kernel<kBits, kHeadDim, kNTiles, true>
                                                 : decode_kivi_kernel<kBits, kHeadDim, kNTiles, false>;
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
  auto kernel = decode_kivi_kernel<kBits, kHeadDim, kNTiles, false>;  // the paged twin: the same launch bounds and shared memory
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
  static_assert(kChunk % 64 == 0, "chunks start where pieces do: at multiples of the fp16 decode's 64-key tiles");
  KiviDecodeParams p{};
  p.base = attention::decode_params_of(plan);
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
  p.kv = a.kv;
  DeviceScope scope(plan.context->device_ordinal);
  if (plan.head_dim != 64 && plan.head_dim != 128) {
    fail(NKV_STATUS_INTERNAL, "quantized decode: head_dim " + std::to_string(plan.head_dim) + " reached the kernel");
  }
  if (a.kv.format == NKV_KV_FORMAT_BFP) return attention_decode_bfp(plan, p.base, a.kv);
  switch (a.kv.bits) {
    case 2: return dispatch_head_dim<2>(plan, p);
    case 4: return dispatch_head_dim<4>(plan, p);
    case 8: return dispatch_head_dim<8>(plan, p);
    default: fail(NKV_STATUS_INTERNAL, "quantized decode: " + std::to_string(a.kv.bits) + "-bit codes reached the kernel");
  }
}

}  // namespace nkv::cuda
