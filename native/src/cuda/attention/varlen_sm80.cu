// Varlen attention forward, sm_80 design (FlashAttention-2): one thread block owns a tile of query rows
// of one sequence and one KV head, keeps Q in registers (or shared memory for d256), streams K and V
// tiles through shared memory with cp.async, and keeps the running softmax (max, sum) and O in fp32
// registers; P never leaves registers between the two MMAs. K has two shared-memory stages, so the next
// K tile is requested before this tile's QK^T and no barrier separates QK^T from the softmax.
//
// Query rows are "packed GQA" rows: row r of a (sequence, KV head) is query token r / G of query head
// kv_head * G + r % G, with G = num_heads_q / num_heads_kv. All heads of a group share one K/V tile in
// shared memory, and a batch that mixes long prefills with single-token decodes does not waste 15 of
// 16 MMA rows on the decodes when G > 1.
#include <cuda_runtime.h>

#include <cmath>
#include <limits>
#include <string>

#include "core/attention.h"
#include "core/error.h"
#include "cuda/attention/mma_sm80.cuh"
#include "cuda/attention/varlen_sm90.h"
#include "cuda/common/cuda_check.h"

// Tiles per head dim: warps, 16-row MMA tiles per warp, keys per tile, Q in registers. Overridable at
// configure time for tuning experiments (bench/NOTES.md records what each choice measured).
#ifndef NKV_VARLEN_TILES_64
#define NKV_VARLEN_TILES_64 4, 2, 64, true
#endif
#ifndef NKV_VARLEN_TILES_96
#define NKV_VARLEN_TILES_96 4, 2, 64, false
#endif
#ifndef NKV_VARLEN_TILES_128
#define NKV_VARLEN_TILES_128 4, 2, 64, false
#endif
#ifndef NKV_VARLEN_TILES_256
#define NKV_VARLEN_TILES_256 8, 1, 64, false
#endif

namespace nkv::cuda {
namespace attention {
namespace {

struct VarlenKernelParams {
  VarlenAttentionArgs args;
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;
  KernelMask mask;
};

// kWarps warps each own kMTiles x 16 query rows; kBlockN keys per K/V tile; Q fragments either stay in
// registers for the whole block or are re-read from shared memory at every K tile (fewer registers).
template <int kHeadDim, int kWarps, int kMTiles, int kBlockN, bool kQInRegisters_>
struct VarlenTiles {
  static constexpr int kPitch = kHeadDim == 96 ? 128 : kHeadDim;  // the swizzle needs 8-chunk rows
  static constexpr int kBlockM = kWarps * 16 * kMTiles;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks of a row that hold data
  static constexpr bool kQInRegisters = kQInRegisters_;
  static constexpr uint32_t kKStageBytes = kBlockN * kPitch * 2;
  static constexpr size_t kSharedBytes = static_cast<size_t>(kBlockM + 3 * kBlockN) * kPitch * 2;  // Q, 2 K, V
};

// kKeys: where key t lies (KeyAddressing): row t, in blocks (args.key_blocks) or through args.block_table.
template <typename T, int kHeadDim, int kWarps, int kMTiles, int kBlockN, bool kQInRegisters, KeyAddressing kKeys>
__global__ void __launch_bounds__(kWarps * 32) varlen_forward_kernel(const VarlenKernelParams p) {
  const VarlenAttentionArgs& args = p.args;
  using Tiles = VarlenTiles<kHeadDim, kWarps, kMTiles, kBlockN, kQInRegisters>;
  constexpr int kBlockM = Tiles::kBlockM;
  constexpr int kThreads = Tiles::kThreads;
  constexpr int kChunks = Tiles::kChunks;
  constexpr int kKSteps = kHeadDim / 16;
  constexpr int kNTiles = kBlockN / 8;
  constexpr int kDTiles = kHeadDim / 8;
  constexpr float kNegInf = -INFINITY;

  extern __shared__ __align__(128) unsigned char shared_bytes[];
  T* q_tile = reinterpret_cast<T*>(shared_bytes);
  T* k_tile = q_tile + kBlockM * Tiles::kPitch;
  T* v_tile = k_tile + 2 * kBlockN * Tiles::kPitch;

  const int sequence = blockIdx.z;
  const int kv_head = blockIdx.y;
  const int q_begin = p.cu_seqlens_q[sequence];
  const int lq = p.cu_seqlens_q[sequence + 1] - q_begin;
  const int k_begin = p.cu_seqlens_k[sequence];
  const int lk = p.cu_seqlens_k[sequence + 1] - k_begin;
  const int group = p.mask.group;
  const int rows = lq * group;
  // Reverse order: under a causal mask the last row tiles carry the most work; start them first.
  const int row0 = (gridDim.x - 1 - blockIdx.x) * kBlockM;
  if (row0 >= rows) return;

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int offset = lk - lq;  // the causal diagonal of token i is key i + offset
  const int first_token = row0 / group;
  const int last_token = (min(rows, row0 + kBlockM) - 1) / group;
  int key_end = lk;
  if (p.mask.causal) key_end = min(lk, last_token + offset + 1);
  const int key_begin = p.mask.window_left >= 0 ? max(0, first_token + offset - p.mask.window_left) : 0;
  const int tile_begin = key_begin / kBlockN;
  const int tile_end = key_end > key_begin ? (key_end + kBlockN - 1) / kBlockN : tile_begin;
  const float exp_scale = p.mask.score.softcap > 0.0f ? 1.0f : p.mask.score.scale_log2;

  const T* q_base = static_cast<const T*>(args.q) + static_cast<int64_t>(q_begin) * args.q_strides.row;
  // Paged: the pools' first rows, and this sequence's row of the block table. Batched: its batch entry.
  constexpr bool kPaged = kKeys == KeyAddressing::kPages;
  const int64_t k_row0 = kPaged || args.batched_kv ? 0 : k_begin;
  const T* k_base = static_cast<const T*>(args.k) + sequence * args.k_batch_stride + k_row0 * args.k_strides.row +
                    kv_head * args.k_strides.head;
  const T* v_base = static_cast<const T*>(args.v) + sequence * args.v_batch_stride + k_row0 * args.v_strides.row +
                    kv_head * args.v_strides.head;
  const int32_t* page_row = kPaged ? args.block_table + sequence * args.block_table_stride : nullptr;

  using Loader = TileLoader<kBlockN, Tiles::kPitch, kChunks, kThreads>;
  const Loader k_loader(k_tile, threadIdx.x);
  const Loader v_loader(v_tile, threadIdx.x);
  // A K or V tile, contiguous or through the block table. Prefill computes a whole tile of queries per
  // key tile, so the table read right before the copies is not worth a lookahead's registers here (reading
  // the pages a tile ahead made the kernel 2% slower on an H100; bench/NOTES.md p6). A tile within one page
  // (pages of kBlockN tokens or more) is a contiguous run of rows: one table read and the contiguous copies.
  const bool tile_in_one_page = kPaged && (1 << args.page_shift) >= kBlockN;
  // Keys in blocks: where blocks and tiles nest, a thread's rows lie at the same offsets from every tile's
  // first row (computed once), else each row divides (decode.cu has the measurements).
  int32_t row_offsets[Loader::kPasses];
  if constexpr (kKeys == KeyAddressing::kBlocks) k_loader.tile_offsets(args.key_blocks, args.k_strides.row, args.key_blocks.k_stride, row_offsets);
  auto load_keys = [&](const Loader& loader, const T* base, int64_t row_stride, int64_t block_stride, int n0, uint32_t stage) {
    if constexpr (kKeys == KeyAddressing::kBlocks) {
      const int block = args.key_blocks.block_of(n0);
      loader.load_at_offsets(base + block * block_stride + (n0 - block * args.key_blocks.tokens) * row_stride, row_offsets, n0, lk, stage);
    } else if constexpr (kKeys == KeyAddressing::kAnyBlocks) {
      loader.load_blocked(base, row_stride, args.key_blocks, block_stride, n0, lk, stage);
    } else if constexpr (kPaged) {
      if (tile_in_one_page) {  // n0 < lk, so the table row has the tile's page
        const int page_mask = (1 << args.page_shift) - 1;
        const int64_t page_first_row = static_cast<int64_t>(__ldg(page_row + (n0 >> args.page_shift))) << args.page_shift;
        loader.load(base + page_first_row * row_stride, row_stride, n0 & page_mask, lk - (n0 & ~page_mask), stage);
        return;
      }
      int32_t pages[Loader::kPasses], rows_in_pool[Loader::kPasses];
      loader.lookup_pages(page_row, args.page_shift, n0, lk, pages);
      loader.rows_in_pool(pages, args.page_shift, n0, rows_in_pool);
      loader.load_paged(base, static_cast<int32_t>(row_stride), rows_in_pool, n0, lk, stage);
    } else {
      loader.load(base, row_stride, n0, lk, stage);
    }
  };

  load_packed_q_tile<Tiles::kPitch, kBlockM, kChunks, kThreads>(q_tile, q_base, args.q_strides, row0, rows, group, kv_head);
  const auto k_stage = [](int tile) { return static_cast<uint32_t>(tile & 1) * Tiles::kKStageBytes; };
  if (tile_end > tile_begin) {
    load_keys(k_loader, k_base, args.k_strides.row, args.key_blocks.k_stride, (tile_end - 1) * kBlockN, k_stage(tile_end - 1));
  }
  copy_async_commit();

  float o[kMTiles][kDTiles][4];
  float row_max[kMTiles][2];
  float row_sum[kMTiles][2];
  reset_softmax_state(o, row_max, row_sum);

  copy_async_wait<0>();
  __syncthreads();

  // ldmatrix lanes: Q (A operand) rows lane % 16, chunk lane / 16; K (B operand, n-major) rows lane % 8
  // + 8 (lane / 16), chunk (lane / 8) % 2; V (B operand through .trans) rows lane % 8 + 8 ((lane / 8) % 2),
  // chunk lane / 16.
  const FragmentReader<Tiles::kPitch> q_reader(q_tile, warp * 16 * kMTiles + (lane % 16), lane / 16);
  const FragmentReader<Tiles::kPitch> k_reader(k_tile, (lane % 8) + (lane / 16) * 8, (lane / 8) % 2);
  const FragmentReader<Tiles::kPitch> v_reader(v_tile, (lane % 8) + ((lane / 8) % 2) * 8, lane / 16);
  uint32_t q_frag[kMTiles][Tiles::kQInRegisters ? kKSteps : 1][4];
  auto load_q_fragment = [&](uint32_t(&frag)[4], int mt, int kk) { ldmatrix_x4(frag, q_reader.at(mt * 16, kk)); };
  if constexpr (Tiles::kQInRegisters) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) load_q_fragment(q_frag[mt][kk], mt, kk);
    }
  }

  for (int tile = tile_end - 1; tile >= tile_begin; --tile) {
    const int n0 = tile * kBlockN;
    // V of this tile and K of the next one (into the stage the previous QK^T read; the last barrier
    // saw every warp finish it).
    load_keys(v_loader, v_base, args.v_strides.row, args.key_blocks.v_stride, n0, 0);
    copy_async_commit();
    if (tile > tile_begin) load_keys(k_loader, k_base, args.k_strides.row, args.key_blocks.k_stride, n0 - kBlockN, k_stage(tile - 1));
    copy_async_commit();
    const uint32_t k_offset = k_stage(tile);

    float s[kMTiles][kNTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      if constexpr (!Tiles::kQInRegisters) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) load_q_fragment(q_frag[mt][0], mt, kk);
      }
#pragma unroll
      for (int np = 0; np < kBlockN / 16; ++np) {
        uint32_t kb[4];
        ldmatrix_x4(kb, k_reader.at(np * 16, kk) + k_offset);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          const uint32_t(&a)[4] = q_frag[mt][Tiles::kQInRegisters ? kk : 0];
          mma_16816(s[mt][2 * np], a, kb[0], kb[1], T());
          mma_16816(s[mt][2 * np + 1], a, kb[2], kb[3], T());
        }
      }
    }

    // Soft-cap, then mask the keys a row must not see (only tiles at an edge need it), both as whole
    // loops behind block-uniform branches. Without soft-cap the scale is folded into the exponent (one
    // FFMA per score).
    if (p.mask.score.softcap > 0.0f) cap_scores(s, p.mask.score);
    const bool edge = n0 + kBlockN > lk || (p.mask.causal && n0 + kBlockN - 1 > first_token + offset) ||
                      (p.mask.window_left >= 0 && n0 < last_token + offset - p.mask.window_left);
    if (edge) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = row0 + warp * 16 * kMTiles + mt * 16 + lane / 4 + 8 * half;
          const KeyRange r = visible_keys(min(row, rows - 1) / group, lq, lk, p.mask.causal, p.mask.window_left);
          const int first = r.first - n0 - (lane % 4) * 2;  // in this lane's column numbering
          const int last = r.last - n0 - (lane % 4) * 2;
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              const int column = nt * 8 + j;
              if (column < first || column > last) s[mt][nt][2 * half + j] = kNegInf;
            }
          }
        }
      }
    }

    // Online softmax: rescale what was accumulated when the running max grows.
    online_softmax_step(s, row_max, row_sum, o, exp_scale);

    copy_async_wait<1>();
    __syncthreads();  // V is in (the next K may still be on its way)

    // O += P V with P straight from the score registers (the accumulator layout is the A layout).
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[kMTiles][4];
      pack_probabilities<T>(s, kk, a);
#pragma unroll
      for (int dp = 0; dp < kHeadDim / 16; ++dp) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, v_reader.at(kk * 16, dp));
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_16816(o[mt][2 * dp], a[mt], vb[0], vb[1], T());
          mma_16816(o[mt][2 * dp + 1], a[mt], vb[2], vb[3], T());
        }
      }
    }
    copy_async_wait<0>();
    __syncthreads();  // the next K is in; every warp is done with V
  }

  // Epilogue: normalize, write O (rows of this sequence only) and the natural-log LSE.
  T* o_base = static_cast<T*>(args.o) + static_cast<int64_t>(q_begin) * args.o_strides.row;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float sum = quad_sum(row_sum[mt][half]);
      const int row = row0 + warp * 16 * kMTiles + mt * 16 + lane / 4 + 8 * half;
      if (row >= rows) continue;
      const int token = row / group;
      const int head = kv_head * group + (row - token * group);
      const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
      T* out = o_base + static_cast<int64_t>(token) * args.o_strides.row + static_cast<int64_t>(head) * args.o_strides.head +
               (lane % 4) * 2;
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt) {
        *reinterpret_cast<uint32_t*>(out + dt * 8) =
            MmaType<T>::pack(o[mt][dt][2 * half] * inverse, o[mt][dt][2 * half + 1] * inverse);
      }
      if (args.lse != nullptr && lane % 4 == 0) {
        args.lse[static_cast<int64_t>(head) * args.lse_head_stride + q_begin + token] =
            sum > 0.0f ? (row_max[mt][half] + log2f(sum)) * 0.69314718055994531f : kNegInf;
      }
    }
  }
}

template <typename T, int kHeadDim, int kWarps, int kMTiles, int kBlockN, bool kQInRegisters>
void launch_varlen(const nkv_attention_plan& plan, const VarlenKernelParams& params) {
  using Tiles = VarlenTiles<kHeadDim, kWarps, kMTiles, kBlockN, kQInRegisters>;
  auto kernel = varlen_forward_kernel<T, kHeadDim, kWarps, kMTiles, kBlockN, kQInRegisters, KeyAddressing::kRows>;
  if (params.args.block_table != nullptr) {
    kernel = varlen_forward_kernel<T, kHeadDim, kWarps, kMTiles, kBlockN, kQInRegisters, KeyAddressing::kPages>;
  } else if (params.args.key_blocks.tokens > 0) {
    kernel = nests_in_tiles<kBlockN>(params.args.key_blocks)
                 ? varlen_forward_kernel<T, kHeadDim, kWarps, kMTiles, kBlockN, kQInRegisters, KeyAddressing::kBlocks>
                 : varlen_forward_kernel<T, kHeadDim, kWarps, kMTiles, kBlockN, kQInRegisters, KeyAddressing::kAnyBlocks>;
  }
  const nkv_context& c = *plan.context;
  if (static_cast<int64_t>(Tiles::kSharedBytes) > c.shared_memory_per_block) {
    fail(NKV_STATUS_NOT_SUPPORTED, "varlen attention with head_dim " + std::to_string(kHeadDim) + " needs " +
                                       std::to_string(Tiles::kSharedBytes) + " bytes of shared memory per block; this GPU allows " +
                                       std::to_string(c.shared_memory_per_block));
  }
  NKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(Tiles::kSharedBytes)));
  const int64_t row_blocks = (plan.max_seqlen_q * params.mask.group + Tiles::kBlockM - 1) / Tiles::kBlockM;
  if (row_blocks > std::numeric_limits<int32_t>::max() || plan.batch > 65535 || plan.num_heads_kv > 65535) {
    fail(NKV_STATUS_NOT_SUPPORTED, "varlen attention grid too large: " + std::to_string(row_blocks) + " row tiles x " +
                                       std::to_string(plan.num_heads_kv) + " KV heads x " + std::to_string(plan.batch) +
                                       " sequences (at most 65535 sequences and KV heads)");
  }
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(plan.num_heads_kv),
                  static_cast<unsigned>(plan.batch));
  kernel<<<grid, Tiles::kThreads, Tiles::kSharedBytes, static_cast<cudaStream_t>(c.stream)>>>(params);
  NKV_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void dispatch_head_dim(const nkv_attention_plan& plan, const VarlenKernelParams& params) {
  switch (plan.head_dim) {
    case 64: return launch_varlen<T, 64, NKV_VARLEN_TILES_64>(plan, params);
    case 96: return launch_varlen<T, 96, NKV_VARLEN_TILES_96>(plan, params);
    case 128: return launch_varlen<T, 128, NKV_VARLEN_TILES_128>(plan, params);
    case 256:
      // 160 KB of tiles; GPUs with 99 KB per block (sm_86, sm_89) get half the query rows and half the
      // keys per tile.
      if (static_cast<int64_t>(VarlenTiles<256, NKV_VARLEN_TILES_256>::kSharedBytes) <= plan.context->shared_memory_per_block) {
        return launch_varlen<T, 256, NKV_VARLEN_TILES_256>(plan, params);
      }
      return launch_varlen<T, 256, 4, 1, 32, false>(plan, params);
    default: fail(NKV_STATUS_INTERNAL, "varlen attention: head_dim " + std::to_string(plan.head_dim) + " reached the kernel");
  }
}

ScoreTransform make_score_transform(const AttentionMask& mask) {
  constexpr float kLog2e = 1.4426950408889634f;
  ScoreTransform t{};
  t.scale_log2 = mask.softmax_scale * kLog2e;
  t.softcap = mask.softcap;
  t.scale_over_cap = mask.softcap > 0.0f ? mask.softmax_scale / mask.softcap : 0.0f;
  t.cap_log2 = mask.softcap * kLog2e;
  return t;
}

}  // namespace

KernelMask make_kernel_mask(const nkv_attention_plan& plan) {
  return {plan.num_heads_q / plan.num_heads_kv, make_score_transform(plan.mask), plan.mask.causal,
          plan.mask.window_left};
}

}  // namespace attention

void attention_varlen(const nkv_attention_plan& plan, const VarlenAttentionArgs& a) {
  using namespace attention;
  VarlenKernelParams p{};
  p.args = a;
  p.cu_seqlens_q = plan.device_cu_seqlens_q;
  p.cu_seqlens_k = plan.device_cu_seqlens_k;
  p.mask = make_kernel_mask(plan);
  DeviceScope scope(plan.context->device_ordinal);
  // AUTO takes the Hopper kernel wherever it applies; an SM90 plan was checked to fit it when it was made,
  // except a plan without keys, whose rows (O = 0, LSE = -inf) the SM80 kernel writes.
  // Paged and batched K/V run on the SM80 family (the API refuses an explicit SM90 plan for them): the Hopper
  // kernel's tensor-map loads read whole tiles past a sequence's last key, which a cache may not have mapped.
  if (plan.kernel != NKV_ATTENTION_KERNEL_SM80 && a.block_table == nullptr && !a.batched_kv && varlen_sm90_supports(plan)) {
    return attention_varlen_sm90(plan, a);
  }
  if (a.dtype == NKV_DTYPE_BFLOAT16) {
    dispatch_head_dim<__nv_bfloat16>(plan, p);
  } else {
    dispatch_head_dim<__half>(plan, p);
  }
}

}  // namespace nkv::cuda
