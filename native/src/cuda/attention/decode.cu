// Decode attention over a KV cache (flash-decoding). Decode is bound by reading K and V once, so the
// work is cut along the keys: the plan cuts each (sequence, KV head) pair's keys into pieces, one
// thread block per piece and row block, and the block that finishes a pair's last piece merges the
// pieces' partial results by their log-sum-exp (no second kernel launch). Inside a block the four
// warps take different keys of each 64-key tile (not different query rows: there are only q_len x G of
// those) and merge their partial softmax states at the end. Tiles stream through a cp.async pipeline of
// NKV_DECODE_STAGES stages (bench/NOTES.md, decode a5-a9, records the alternatives measured).
#include <cuda_runtime.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <string>

#include "core/attention.h"
#include "core/error.h"
#include "cuda/attention/decode_merge.cuh"
#include "cuda/attention/mma_sm80.cuh"
#include "cuda/common/cuda_check.h"

namespace nkv::cuda {
namespace attention {
namespace {

constexpr int kDecodeBlockN = 64;  // keys per tile: 16 per warp; must match kDecodeKeyTile in api/attention.cpp
// Pipeline stages where the GPU's shared memory allows them (else 2). Overridable at configure time
// for tuning experiments (bench/NOTES.md records what each choice measured).
#ifndef NKV_DECODE_STAGES
#define NKV_DECODE_STAGES 3
#endif
constexpr int kDeepStages = NKV_DECODE_STAGES;
static_assert(kDeepStages >= 2, "the pipeline keeps one tile in flight while computing another");


// kStages: kDeepStages where the GPU's shared memory allows (more bytes in flight), else 2.
template <int kHeadDim, int kMTiles, int kStages_>
struct DecodeTiles {
  static constexpr int kPitch = kHeadDim == 96 ? 128 : kHeadDim;
  static constexpr int kRows = kDecodeRowsPerTile * kMTiles;  // packed-GQA query rows per block
  static constexpr int kChunks = kHeadDim / 8;
  static constexpr int kStages = kStages_;
  static constexpr size_t kStageBytes = static_cast<size_t>(2 * kDecodeBlockN) * kPitch * 2;
  static constexpr size_t kPipelineBytes = static_cast<size_t>(kRows) * kPitch * 2 + kStages * kStageBytes;
  // The warps' partial O (fp32) plus their row max and sum, reusing the pipeline's memory at the end.
  static constexpr size_t kMergeBytes = static_cast<size_t>(kDecodeWarps) * kRows * (kHeadDim + 2) * 4;
  static constexpr size_t kSharedBytes = kPipelineBytes > kMergeBytes ? kPipelineBytes : kMergeBytes;
};

// One piece (blockIdx.x): the keys [key_begin, key_end) of one (sequence, KV head) pair, for the packed
// query rows of row block blockIdx.z.
// kKeys: where key t lies (KeyAddressing): row t, in blocks (args.key_blocks) or through args.block_table.
template <typename T, int kHeadDim, int kMTiles, int kStages_, KeyAddressing kKeys>
__global__ void __launch_bounds__(kDecodeThreads) decode_split_kernel(const DecodeKernelParams p) {
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  const int piece = blockIdx.x;
  const DecodeAttentionArgs& args = p.args;
  using Tiles = DecodeTiles<kHeadDim, kMTiles, kStages_>;
  constexpr int kRows = Tiles::kRows;
  constexpr int kChunks = Tiles::kChunks;
  constexpr int kStages = Tiles::kStages;
  constexpr int kKSteps = kHeadDim / 16;
  constexpr int kDTiles = kHeadDim / 8;
  constexpr int kTileElements = kDecodeBlockN * Tiles::kPitch;

  T* q_tile = reinterpret_cast<T*>(shared_bytes);
  T* stages = q_tile + kRows * Tiles::kPitch;  // stage s: K at 2s, V at 2s + 1

  const DecodeSplit split = p.splits[piece];
  const int sequence = split.sequence;
  const int kv_head = split.kv_head;
  const int group = p.mask.group;
  const int rows = p.q_len * group;
  const int row0 = blockIdx.z * kRows;
  if (row0 >= rows) return;
  const int lk = split.sequence_keys;
  const int lq = p.q_len;
  const int offset = lk - lq;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int first_token = row0 / group;
  const int last_token = (min(rows, row0 + kRows) - 1) / group;

  // The tiles of this split that any row of the block can see.
  int key_end = split.key_end;
  if (p.mask.causal) key_end = min(key_end, last_token + offset + 1);
  const int window_start =
      p.mask.window_left >= 0 ? max(split.key_begin, first_token + offset - p.mask.window_left) : split.key_begin;
  const int key_begin = split.key_begin + (window_start - split.key_begin) / kDecodeBlockN * kDecodeBlockN;
  const int tiles = key_end > key_begin ? (key_end - key_begin + kDecodeBlockN - 1) / kDecodeBlockN : 0;

  const T* q_base = static_cast<const T*>(args.q) + sequence * args.q_batch_stride;
  const T* k_base = (args.k_pointers != nullptr ? reinterpret_cast<const T*>(args.k_pointers[sequence])
                                             : static_cast<const T*>(args.k) + sequence * args.k_batch_stride) +
                    kv_head * args.k_strides.head;
  const T* v_base = (args.v_pointers != nullptr ? reinterpret_cast<const T*>(args.v_pointers[sequence])
                                             : static_cast<const T*>(args.v) + sequence * args.v_batch_stride) +
                    kv_head * args.v_strides.head;

  // Paged: this sequence's row of the block table (k_base and v_base are then the pools' first page).
  constexpr bool kPaged = kKeys == KeyAddressing::kPages;
  const int32_t* page_row = kPaged ? args.block_table + sequence * args.block_table_stride : nullptr;
  load_packed_q_tile<Tiles::kPitch, kRows, kChunks, kDecodeThreads>(q_tile, q_base, args.q_strides, row0, rows, group,
                                                                    kv_head);
  copy_async_commit();

  // Stage s holds K at stages + 2s tiles and V right after it.
  using Loader = TileLoader<kDecodeBlockN, Tiles::kPitch, kChunks, kDecodeThreads>;
  const Loader k_loader(stages, threadIdx.x);
  const Loader v_loader(stages + kTileElements, threadIdx.x);
  // Every K/V byte is read once per call. Streamed as the L2's first to evict, they leave it to what blocks
  // read again: the piece records and Q, each a dependent miss before a block's first K/V request when
  // they came from HBM (bench/NOTES.md a12: 1% at every decode shape on an H200). Not with two stages:
  // there ptxas (CUDA 12.4 and 13.0) folds the stage offset into a uniform register and gives the hinted
  // copies an unset uniform register as their policy, an illegal instruction at run time (NOTES a12).
  constexpr bool kStreamHint = kStages > 2;
  const uint64_t stream_policy = kStreamHint ? l2_evict_first_policy() : 0;
  // Paged: the pages of the next tile to load (K and V share rows, so one lookup serves both). They are
  // read one tile ahead, and nothing uses them before that tile's load: a table read that the copies (or
  // the row arithmetic before them) waited for stalled the block by an L2 round trip per tile; with one
  // block per SM that cost b8 x L32768 at page 16 up to 1.28x the contiguous time (bench/NOTES.md p3).
  int32_t next_pages[Loader::kPasses];
  // Keys in blocks: tiles start at multiples of kDecodeBlockN (pieces and windows cut at tiles), so where
  // blocks and tiles nest, a thread's rows lie at the same offsets from every tile's first row: a tile's
  // loads then cost one division and the contiguous kernel's adds, not a division per row (which made the
  // token-major cache's decode 3% slower at one block per SM; bench/NOTES.md p7).
  int32_t row_offsets[Loader::kPasses];
  if constexpr (kKeys == KeyAddressing::kBlocks) k_loader.tile_offsets(args.key_blocks, args.k_strides.row, args.key_blocks.k_stride, row_offsets);
  auto lookup_pages = [&](int tile) {
    if constexpr (kPaged) k_loader.lookup_pages(page_row, args.page_shift, key_begin + tile * kDecodeBlockN, key_end, next_pages);
  };
  auto load_tile = [&](int tile) {
    const uint32_t stage_bytes = static_cast<uint32_t>((tile % kStages) * 2 * kTileElements * sizeof(T));
    const int n0 = key_begin + tile * kDecodeBlockN;
    if constexpr (kPaged) {
      int32_t rows_in_pool[Loader::kPasses];
      k_loader.rows_in_pool(next_pages, args.page_shift, n0, rows_in_pool);
      k_loader.load_paged<kStreamHint>(k_base, static_cast<int32_t>(args.k_strides.row), rows_in_pool, n0, key_end, stage_bytes, stream_policy);
      v_loader.load_paged<kStreamHint>(v_base, static_cast<int32_t>(args.v_strides.row), rows_in_pool, n0, key_end, stage_bytes, stream_policy);
      lookup_pages(tile + 1);
    } else if constexpr (kKeys == KeyAddressing::kBlocks) {
      const KeyBlocks& blocks = args.key_blocks;
      const int block = blocks.block_of(n0);
      const int64_t first_row = block * blocks.k_stride + (n0 - block * blocks.tokens) * args.k_strides.row;
      k_loader.load_at_offsets<kStreamHint>(k_base + first_row, row_offsets, n0, key_end, stage_bytes, stream_policy);
      v_loader.load_at_offsets<kStreamHint>(v_base + first_row, row_offsets, n0, key_end, stage_bytes, stream_policy);
    } else if constexpr (kKeys == KeyAddressing::kAnyBlocks) {
      const KeyBlocks& blocks = args.key_blocks;
      k_loader.load_blocked<kStreamHint>(k_base, args.k_strides.row, blocks, blocks.k_stride, n0, key_end, stage_bytes, stream_policy);
      v_loader.load_blocked<kStreamHint>(v_base, args.v_strides.row, blocks, blocks.v_stride, n0, key_end, stage_bytes, stream_policy);
    } else {
      k_loader.load<kStreamHint>(k_base, args.k_strides.row, n0, key_end, stage_bytes, stream_policy);
      v_loader.load<kStreamHint>(v_base, args.v_strides.row, n0, key_end, stage_bytes, stream_policy);
    }
  };
  lookup_pages(0);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < tiles) load_tile(s);
    copy_async_commit();  // empty groups keep the wait counts uniform
  }

  KeyRange visible[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row0 + mt * 16 + lane / 4 + 8 * half;
      KeyRange r = visible_keys(min(row, rows - 1) / group, lq, lk, p.mask.causal, p.mask.window_left);
      r.first = max(r.first, split.key_begin);
      r.last = min(r.last, split.key_end - 1);
      visible[mt][half] = r;
    }
  }
  const bool causal_edge_possible = p.mask.causal || p.mask.window_left >= 0;
  const float exp_scale = p.mask.score.softcap > 0.0f ? 1.0f : p.mask.score.scale_log2;

  float o[kMTiles][kDTiles][4];
  float row_max[kMTiles][2];
  float row_sum[kMTiles][2];
  reset_softmax_state(o, row_max, row_sum);

  copy_async_wait<kStages - 1>();  // the Q group
  __syncthreads();
  uint32_t q_frag[kMTiles][kKSteps][4];
  {
    const FragmentReader<Tiles::kPitch> q_reader(q_tile, lane % 16, lane / 16);
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) ldmatrix_x4(q_frag[mt][kk], q_reader.at(mt * 16, kk));
    }
  }
  // Readers of stage 0; stage s is s * 2 * kTileElements elements further.
  const FragmentReader<Tiles::kPitch> k_reader(stages, warp * 16 + (lane % 8) + (lane / 16) * 8, (lane / 8) % 2);
  const FragmentReader<Tiles::kPitch> v_reader(stages + kTileElements, warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8,
                                               lane / 16);

  for (int tile = 0; tile < tiles; ++tile) {
    copy_async_wait<kStages - 2>();
    __syncthreads();  // this tile is in; every warp is done with the stage the next load overwrites
    if (tile + kStages - 1 < tiles) load_tile(tile + kStages - 1);
    copy_async_commit();

    const uint32_t stage_bytes = static_cast<uint32_t>((tile % kStages) * 2 * kTileElements * sizeof(T));
    const int n0 = key_begin + tile * kDecodeBlockN;
    const int warp_key0 = warp * 16;

    decode_warp_keys<T, kHeadDim>(q_frag, k_reader, stage_bytes, v_reader, stage_bytes, p.mask.score, exp_scale,
                                  n0 + kDecodeBlockN > split.key_end || causal_edge_possible, visible, n0 + warp_key0, o, row_max, row_sum);
  }
  copy_async_wait<0>();
  __syncthreads();  // the pipeline's shared memory becomes the merge area

  // Each warp saw different keys: merge the four (max, sum, O) states through shared memory.
  float* merge_o = reinterpret_cast<float*>(shared_bytes);
  leave_warp_state<kHeadDim, kRows>(merge_o, o, row_max, row_sum, row0, rows);
  __syncthreads();

  static_assert(Tiles::kMergeBytes >= kMergeScratchFloats<kRows> * sizeof(float), "merge_pieces' scratch fits the merge area");
  finish_decode_block<T, kHeadDim, kRows>(p, merge_o, split, row0, rows);
}

template <typename T, int kHeadDim, int kMTiles, int kStages>
void launch_decode(const nkv_attention_plan& plan, const DecodeKernelParams& params) {
  using Tiles = DecodeTiles<kHeadDim, kMTiles, kStages>;
  const cudaStream_t stream = static_cast<cudaStream_t>(plan.context->stream);
  auto split_kernel = decode_split_kernel<T, kHeadDim, kMTiles, kStages, KeyAddressing::kRows>;
  if (params.args.block_table != nullptr) {
    split_kernel = decode_split_kernel<T, kHeadDim, kMTiles, kStages, KeyAddressing::kPages>;
  } else if (params.args.key_blocks.tokens > 0) {
    split_kernel = nests_in_tiles<kDecodeBlockN>(params.args.key_blocks)
                       ? decode_split_kernel<T, kHeadDim, kMTiles, kStages, KeyAddressing::kBlocks>
                       : decode_split_kernel<T, kHeadDim, kMTiles, kStages, KeyAddressing::kAnyBlocks>;
  }
  NKV_CUDA_CHECK(cudaFuncSetAttribute(split_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(Tiles::kSharedBytes)));
  const int rows = plan.q_len * params.mask.group;
  const int row_blocks = (rows + Tiles::kRows - 1) / Tiles::kRows;
  const size_t blocks = plan.splits.size();
  if (blocks > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    fail(NKV_STATUS_NOT_SUPPORTED, "decode attention grid too large: " + std::to_string(blocks) + " pieces");
  }
  const dim3 grid(static_cast<unsigned>(blocks), 1, static_cast<unsigned>(row_blocks));
  split_kernel<<<grid, kDecodeThreads, Tiles::kSharedBytes, stream>>>(params);
  NKV_CUDA_CHECK(cudaGetLastError());
}

// Blocks of the contiguous or the paged instantiation (same shared memory, not the same registers) that fit
// on one SM. Plans do not know whether their keys will come in blocks (KeyBlocks): they are sized
// by the contiguous instantiation.
template <typename T, int kHeadDim, int kMTiles, int kStages>
int resident_blocks(bool paged) {
  using Tiles = DecodeTiles<kHeadDim, kMTiles, kStages>;
  auto split_kernel = paged ? decode_split_kernel<T, kHeadDim, kMTiles, kStages, KeyAddressing::kPages>
                            : decode_split_kernel<T, kHeadDim, kMTiles, kStages, KeyAddressing::kRows>;
  NKV_CUDA_CHECK(cudaFuncSetAttribute(split_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(Tiles::kSharedBytes)));
  int blocks = 0;
  NKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, split_kernel, kDecodeThreads, Tiles::kSharedBytes));
  return blocks;
}

// The configuration that runs `plan` on its GPU: one 16-row MMA tile for up to 16 packed rows
// (q_len x G), two beyond (except head_dim 256, whose O accumulator already fills the registers with one);
// kDeepStages pipeline stages where the GPU's shared memory per block allows, else 2 (GPUs with 99 KB per block:
// sm_86, sm_89).
struct DecodeConfig {
  int m_tiles;
  int stages;
};

template <int kHeadDim, int kMTiles>
int decode_stages(size_t limit) {
  if constexpr (kHeadDim != 256) {
    if (DecodeTiles<kHeadDim, kMTiles, kDeepStages>::kSharedBytes <= limit) return kDeepStages;
  }
  if (DecodeTiles<kHeadDim, kMTiles, 2>::kSharedBytes <= limit) return 2;
  fail(NKV_STATUS_NOT_SUPPORTED, "decode attention with head_dim " + std::to_string(kHeadDim) + " needs " +
                                     std::to_string(DecodeTiles<kHeadDim, kMTiles, 2>::kSharedBytes) +
                                     " bytes of shared memory per block; this GPU allows " + std::to_string(limit));
}

template <int kHeadDim>
DecodeConfig decode_config(const nkv_attention_plan& plan) {
  const size_t limit = static_cast<size_t>(plan.context->shared_memory_per_block);
  if constexpr (kHeadDim == 256) {
    return {1, decode_stages<kHeadDim, 1>(limit)};
  } else {
    if (plan.q_len * (plan.num_heads_q / plan.num_heads_kv) <= 16) return {1, decode_stages<kHeadDim, 1>(limit)};
    return {2, decode_stages<kHeadDim, 2>(limit)};
  }
}

template <typename T, int kHeadDim>
void dispatch_rows(const nkv_attention_plan& plan, const DecodeKernelParams& params) {
  const DecodeConfig c = decode_config<kHeadDim>(plan);
  if constexpr (kHeadDim == 256) {
    launch_decode<T, kHeadDim, 1, 2>(plan, params);
  } else if (c.m_tiles == 1) {
    c.stages == kDeepStages ? launch_decode<T, kHeadDim, 1, kDeepStages>(plan, params) : launch_decode<T, kHeadDim, 1, 2>(plan, params);
  } else {
    c.stages == kDeepStages ? launch_decode<T, kHeadDim, 2, kDeepStages>(plan, params) : launch_decode<T, kHeadDim, 2, 2>(plan, params);
  }
}

template <typename T>
void dispatch_head_dim(const nkv_attention_plan& plan, const DecodeKernelParams& params) {
  switch (plan.head_dim) {
    case 64: return dispatch_rows<T, 64>(plan, params);
    case 96: return dispatch_rows<T, 96>(plan, params);
    case 128: return dispatch_rows<T, 128>(plan, params);
    case 256: return dispatch_rows<T, 256>(plan, params);
    default: fail(NKV_STATUS_INTERNAL, "decode attention: head_dim " + std::to_string(plan.head_dim) + " reached the kernel");
  }
}

// Blocks per SM that keep `in_flight_bytes` of K/V loads in flight each (the stages being filled while one
// is computed on): on an H200 one block per SM with 64 KiB in flight streamed faster (4.45 TB/s at
// b8 x L32768 with 2 splits) than two co-resident blocks per SM over half the keys each (4.32 TB/s),
// and deeper pipelines (4 or 6 stages) did not help (bench/NOTES.md, a5).
template <int kHeadDim, int kMTiles, int kStages>
int blocks_per_sm(size_t in_flight_bytes, bool paged) {
  using Tiles = DecodeTiles<kHeadDim, kMTiles, kStages>;
  constexpr size_t kPerBlock = (kStages - 1) * Tiles::kStageBytes;
  const int wanted = static_cast<int>((in_flight_bytes + kPerBlock - 1) / kPerBlock);
  return std::max(1, std::min(wanted, resident_blocks<__half, kHeadDim, kMTiles, kStages>(paged)));
}

// Blocks over distinct keys that run at once on the GPU, shared among the row blocks.
template <int kHeadDim>
int64_t block_slots_for(const nkv_attention_plan& plan) {
  // Pages scattered over a pool miss the address-translation caches, so each load waits longer and twice
  // the bytes must be in flight. H100, b8 x L32768, pages in random order, contiguous time / paged time
  // with one block per SM vs two: page 16 0.932 vs 0.958, page 64 0.964 vs 0.971, page 256 0.985 vs 0.973
  // (bench/NOTES.md p3); but on an H200 page 256 with one block per SM (2 pieces) ran at 0.86-0.88 where
  // pages 16 and 64 with two ran at 0.96-0.98 (p7), so every page size gets two.
  const size_t in_flight_bytes = plan.kv_page_size > 0 ? 128 * 1024 : 64 * 1024;
  const bool paged = plan.kv_page_size > 0;  // such a plan runs only the paged instantiation
  const DecodeConfig c = decode_config<kHeadDim>(plan);
  int per_sm = 0;
  if constexpr (kHeadDim == 256) {
    per_sm = blocks_per_sm<kHeadDim, 1, 2>(in_flight_bytes, paged);
  } else if (c.m_tiles == 1) {
    per_sm = c.stages == kDeepStages ? blocks_per_sm<kHeadDim, 1, kDeepStages>(in_flight_bytes, paged)
                                     : blocks_per_sm<kHeadDim, 1, 2>(in_flight_bytes, paged);
  } else {
    per_sm = c.stages == kDeepStages ? blocks_per_sm<kHeadDim, 2, kDeepStages>(in_flight_bytes, paged)
                                     : blocks_per_sm<kHeadDim, 2, 2>(in_flight_bytes, paged);
  }
  const int64_t rows = static_cast<int64_t>(plan.q_len) * (plan.num_heads_q / plan.num_heads_kv);
  const int64_t row_blocks = (rows + 16 * c.m_tiles - 1) / (16 * c.m_tiles);
  return std::max<int64_t>(1, static_cast<int64_t>(plan.context->multiprocessor_count) * per_sm / row_blocks);
}

}  // namespace
}  // namespace attention

int64_t decode_block_slots(const nkv_attention_plan& plan) {
  using namespace attention;
  DeviceScope scope(plan.context->device_ordinal);
  switch (plan.head_dim) {
    case 64: return block_slots_for<64>(plan);
    case 96: return block_slots_for<96>(plan);
    case 128: return block_slots_for<128>(plan);
    default: return block_slots_for<256>(plan);
  }
}

void attention_decode(const nkv_attention_plan& plan, const DecodeAttentionArgs& a) {
  using namespace attention;
  DecodeKernelParams p = decode_params_of(plan);
  p.args = a;
  DeviceScope scope(plan.context->device_ordinal);
  if (a.dtype == NKV_DTYPE_BFLOAT16) {
    dispatch_head_dim<__nv_bfloat16>(plan, p);
  } else {
    dispatch_head_dim<__half>(plan, p);
  }
}

}  // namespace nkv::cuda
