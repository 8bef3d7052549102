// Building blocks of the sm_80 attention kernels: asynchronous 16-byte copies, swizzled shared-memory
// tiles read with ldmatrix, the m16n8k16 tensor-core MMA, and the per-element attention mask.
// Fragment layouts follow the PTX ISA ("Matrix fragments for mma.m16n8k16"): for a thread with lane l,
// accumulator c0,c1 sit at (row l/4, cols 2(l%4), +1) and c2,c3 at row l/4 + 8.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "core/attention.h"

namespace nkv::cuda::attention {

// ---- element types -------------------------------------------------------------------------------

template <typename T>
struct MmaType;

template <>
struct MmaType<__half> {
  __device__ static uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  __device__ static __half from_float(float x) { return __float2half_rn(x); }
};

template <>
struct MmaType<__nv_bfloat16> {
  __device__ static uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  __device__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

// c += a * b for one 16x8x16 tile: a is 16x16 (row-major fragments), b is 16x8 ("col": stored n-major).
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, __half) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The k8 shape (fp16): A is rows g and g + 8 at k = 2t, 2t + 1; B is k = 2t, 2t + 1 of column g.
__device__ __forceinline__ void mma_1688(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t b) {
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a0), "r"(a1), "r"(b));
}

__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                          __nv_bfloat16) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- shared memory ----------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// A tile of rows x kPitch elements (2-byte) in shared memory. Each row is kPitch / 8 chunks of 16 bytes;
// chunk c of row r is stored at chunk c ^ (r % 8), so the 8 rows that one ldmatrix phase reads (same
// logical chunk) fall into 8 different 16-byte bank groups.
template <int kPitch>
struct SwizzledTile {
  static_assert(kPitch % 64 == 0, "rows must hold a multiple of 8 chunks for the XOR swizzle");
  __device__ static int offset(int row, int col) {
    return row * kPitch + (((col >> 3) ^ (row & 7)) << 3) + (col & 7);
  }
};

// 16 bytes global -> shared without going through registers; `valid` false writes zeros instead
// (rows past the end of a sequence must be zeros, never stale data: 0 * NaN would poison the MMA).
__device__ __forceinline__ void copy_async_16(uint32_t shared, const void* global, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(global), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void copy_async_16(void* shared, const void* global, bool valid) {
  copy_async_16(shared_address(shared), global, valid);
}
// The first `bytes` (0 .. 16) of a 16-byte piece; the rest of it zero-filled.
__device__ __forceinline__ void copy_async_16_prefix(uint32_t shared, const void* global, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(global), "r"(bytes));
}
// Smaller copies (both addresses aligned to the size), for arrays whose rows are not whole 16-byte pieces.
__device__ __forceinline__ void copy_async_4(uint32_t shared, const void* global, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(shared), "l"(global), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void copy_async_8(uint32_t shared, const void* global, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(shared), "l"(global), "r"(valid ? 8 : 0));
}
// copy_async_16 with an L2 eviction policy (createpolicy), for data a kernel reads exactly once.
__device__ __forceinline__ void copy_async_16(uint32_t shared, const void* global, bool valid, uint64_t policy) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(shared), "l"(global),
               "r"(valid ? 16 : 0), "l"(policy));
}
// Lines loaded under this policy are the first the L2 evicts: K/V streamed once per call make room for
// what other blocks and the next call read again (the plan's piece records, Q).
__device__ __forceinline__ uint64_t l2_evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
// Where a kernel finds key t: row t of its K/V (kRows); row t % tokens of block t / tokens (KeyBlocks),
// where blocks and tiles nest (kBlocks: each thread's row offsets within a tile computed once, see
// nests_in_tiles) or not (kAnyBlocks: a division per row); or through a block table (kPages). Each is its
// own instantiation, so the plain kernel carries neither the divisions nor the table lookups and their registers.
enum class KeyAddressing { kRows, kBlocks, kAnyBlocks, kPages };

// Tiles of kTileRows keys starting at multiples of kTileRows lie alike on the blocks (KeyAddressing::kBlocks).
template <int kTileRows>
bool nests_in_tiles(const KeyBlocks& blocks) {
  return blocks.uniform && (kTileRows % blocks.tokens == 0 || blocks.tokens % kTileRows == 0);
}

// Copies a tile of kRows rows x kPitch elements from global memory (rows `row_stride` elements apart)
// into a SwizzledTile with kThreads threads. Each thread owns one 16-byte chunk column of the tile and
// rows first_row + i * kRowsPerPass; everything that does not change from tile to tile (the swizzled
// destination, the chunk's column) is computed once, so a tile costs one 64-bit add and one cp.async
// per pass. Chunks at or past kDataChunks (head_dim 96 in a 128-wide pitch) are zero-filled.
template <int kRows, int kPitch, int kDataChunks, int kThreads>
struct TileLoader {
  static constexpr int kChunks = kPitch / 8;
  static_assert(kThreads % kChunks == 0, "every thread keeps one chunk column");
  static constexpr int kRowsPerPass = kThreads / kChunks;
  static_assert(kRows % kRowsPerPass == 0, "whole passes");
  static constexpr int kPasses = kRows / kRowsPerPass;
  // Rows one pass apart share row % 8 (so one swizzle) when kRowsPerPass is a multiple of 8; otherwise
  // the swizzle cycles through kPhases values.
  static_assert(kRowsPerPass % 8 == 0 || 8 % kRowsPerPass == 0, "passes must tile 8-row swizzle groups");
  static constexpr int kPhases = kRowsPerPass % 8 == 0 ? 1 : 8 / kRowsPerPass;

  uint32_t shared[kPhases];
  int first_row;
  int chunk;

  __device__ __forceinline__ TileLoader(const void* tile, int thread) {
    chunk = thread % kChunks;
    first_row = thread / kChunks;
#pragma unroll
    for (int phase = 0; phase < kPhases; ++phase) {
      const int row = first_row + phase * kRowsPerPass;
      shared[phase] = shared_address(tile) + 2u * static_cast<uint32_t>(row * kPitch + ((chunk ^ (row & 7)) << 3));
    }
  }

  // Rows [row0, row0 + kRows) of the matrix at `base`; rows at or past `valid_rows` become zeros.
  // `extra_bytes` offsets the destination (another pipeline stage of the same layout).
  // kWithPolicy: the copies carry `policy` (createpolicy) as their L2 eviction hint.
  template <bool kWithPolicy = false, typename T>
  __device__ __forceinline__ void load(const T* base, int64_t row_stride, int row0, int valid_rows,
                                       uint32_t extra_bytes = 0, uint64_t policy = 0) const {
    const bool data_chunk = chunk < kDataChunks;
    const T* src = base + static_cast<int64_t>(row0 + first_row) * row_stride + chunk * 8;
    const int64_t pass_stride = static_cast<int64_t>(kRowsPerPass) * row_stride;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const bool valid = data_chunk && row0 + first_row + i * kRowsPerPass < valid_rows;
      copy_pass<kWithPolicy>(i, valid ? src : base, valid, extra_bytes, policy);
      src += pass_stride;
    }
  }

  // The same through a page table, reading the rows `physical_rows` (this thread's rows of the tile, from
  // rows_in_pool) of `base`. The row indices are 32-bit (the API checks that a pool has fewer than 2^31 rows), so
  // a pass costs one wide multiply-add more than the contiguous load.
  template <bool kWithPolicy = false, typename T>
  __device__ __forceinline__ void load_paged(const T* base, int32_t row_stride, const int32_t (&physical_rows)[kPasses],
                                             int row0, int valid_rows, uint32_t extra_bytes = 0, uint64_t policy = 0) const {
    const bool data_chunk = chunk < kDataChunks;
    const T* chunk_base = base + chunk * 8;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const bool valid = data_chunk && row0 + first_row + i * kRowsPerPass < valid_rows;
      copy_pass<kWithPolicy>(i, chunk_base + static_cast<int64_t>(physical_rows[i]) * row_stride, valid, extra_bytes, policy);
    }
  }

  // The same over keys split in blocks (KeyBlocks): row r at (r / tokens) x block_stride + (r % tokens) x
  // row_stride. A division by multiply-high and two wide multiply-adds per pass; no loads.
  template <bool kWithPolicy = false, typename T>
  __device__ __forceinline__ void load_blocked(const T* base, int64_t row_stride, const KeyBlocks& blocks, int64_t block_stride,
                                               int row0, int valid_rows, uint32_t extra_bytes = 0, uint64_t policy = 0) const {
    const bool data_chunk = chunk < kDataChunks;
    const T* chunk_base = base + chunk * 8;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int row = row0 + first_row + i * kRowsPerPass;
      const bool valid = data_chunk && row < valid_rows;
      const int block = blocks.block_of(row);
      const T* src = chunk_base + static_cast<int64_t>(block) * block_stride + static_cast<int64_t>(row - block * blocks.tokens) * row_stride;
      copy_pass<kWithPolicy>(i, valid ? src : base, valid, extra_bytes, policy);
    }
  }

  // Keys in blocks whose tiles all lie alike on them (nests_in_tiles<kRows>; tiles start at multiples of kRows): this thread's rows' offsets from a tile's first row, the
  // same for every tile. Divides once per block, so that a tile then costs what a contiguous one does.
  __device__ __forceinline__ void tile_offsets(const KeyBlocks& blocks, int64_t row_stride, int64_t block_stride,
                                               int32_t (&offsets)[kPasses]) const {
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int row = first_row + i * kRowsPerPass;
      const int block = row / blocks.tokens;
      offsets[i] = static_cast<int32_t>(block * block_stride + (row - block * blocks.tokens) * row_stride);
    }
  }

  // Rows [row0, row0 + kRows) whose first row is at `tile`, this thread's rows at the offsets from tile_offsets.
  template <bool kWithPolicy = false, typename T>
  __device__ __forceinline__ void load_at_offsets(const T* tile, const int32_t (&offsets)[kPasses], int row0, int valid_rows,
                                                  uint32_t extra_bytes = 0, uint64_t policy = 0) const {
    const bool data_chunk = chunk < kDataChunks;
    const T* chunk_base = tile + chunk * 8;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const bool valid = data_chunk && row0 + first_row + i * kRowsPerPass < valid_rows;
      copy_pass<kWithPolicy>(i, valid ? chunk_base + offsets[i] : tile, valid, extra_bytes, policy);
    }
  }

  // The pages holding this thread's rows of the tile at row0 (page 0 for rows at or past valid_rows: a table
  // row need not have entries past a sequence's last page). Only loads: whatever uses a page stalls until
  // the read returns, so the caller looks a tile ahead and computes rows_in_pool when the tile is loaded.
  __device__ __forceinline__ void lookup_pages(const int32_t* pages, int page_shift, int row0, int valid_rows,
                                               int32_t (&page)[kPasses]) const {
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int row = row0 + first_row + i * kRowsPerPass;
      page[i] = row < valid_rows ? __ldg(pages + (row >> page_shift)) : 0;
    }
  }

  // The pool rows of this thread's rows of the tile at row0, on the pages from lookup_pages: row r is row
  // page << page_shift | r & (page size - 1).
  __device__ __forceinline__ void rows_in_pool(const int32_t (&page)[kPasses], int page_shift, int row0,
                                               int32_t (&physical_rows)[kPasses]) const {
    const int page_mask = (1 << page_shift) - 1;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) physical_rows[i] = (page[i] << page_shift) | ((row0 + first_row + i * kRowsPerPass) & page_mask);
  }

 private:
  // This thread's 16-byte copy of pass i (zeros when !valid, `src` then only has to be a valid address).
  template <bool kWithPolicy>
  __device__ __forceinline__ void copy_pass(int i, const void* src, bool valid, uint32_t extra_bytes, uint64_t policy) const {
    const uint32_t dst = shared[i % kPhases] + extra_bytes +
                         2u * static_cast<uint32_t>((i / kPhases) * kPhases * kRowsPerPass * kPitch);
    if constexpr (kWithPolicy) {
      copy_async_16(dst, src, valid, policy);
    } else {
      copy_async_16(dst, src, valid);
    }
  }
};

// Loads kRows packed-GQA query rows starting at row0 into a SwizzledTile: row r is token r / group of query
// head kv_head * group + r % group; rows at or past `rows` are zero-filled. Once per block, so a plain
// loop (the K/V tiles, loaded every iteration, use TileLoader).
template <int kPitch, int kRows, int kChunks, int kThreads, typename T>
__device__ __forceinline__ void load_packed_q_tile(T* tile, const T* q_base, HeadMajorStrides strides, int row0, int rows,
                                                   int group, int kv_head) {
  for (int c = threadIdx.x; c < kRows * kChunks; c += kThreads) {
    const int r = c / kChunks;
    const int chunk = c % kChunks;
    const int row = row0 + r;
    const bool valid = row < rows;
    const T* src = q_base;
    if (valid) {
      const int token = row / group;
      const int head = kv_head * group + (row - token * group);
      src = q_base + static_cast<int64_t>(token) * strides.row + static_cast<int64_t>(head) * strides.head + chunk * 8;
    }
    copy_async_16(tile + SwizzledTile<kPitch>::offset(r, chunk * 8), src, valid);
  }
}

// exp2 as the single MUFU instruction (flushes subnormal results to zero, which softmax weights that
// small do not miss).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// The ldmatrix addresses of one lane in a SwizzledTile. A lane reads rows `row + 8m` and chunks
// `2 * step + chunk_lane` (step = k16 step along the row). All its rows have the same row % 8, so the
// swizzled chunk is 8 * (step / 4) + ((2 * (step % 4) + chunk_lane) ^ (row % 8)): four base addresses
// cover every step, and the rest is an immediate offset once the loops are unrolled. Without this the
// compiler keeps one 64-bit address per (row, step) pair live and the accumulators spill.
template <int kPitch>
struct FragmentReader {
  uint32_t base[4];

  __device__ __forceinline__ FragmentReader(const void* tile, int row, int chunk_lane) {
    const uint32_t tile_address = shared_address(tile);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      base[j] = tile_address + 2u * static_cast<uint32_t>(row * kPitch + (((2 * j + chunk_lane) ^ (row & 7)) << 3));
    }
  }
  // row_offset must be a multiple of 8; both arguments are compile-time constants in unrolled loops.
  __device__ __forceinline__ uint32_t at(int row_offset, int step) const {
    return base[step % 4] + 2u * static_cast<uint32_t>(row_offset * kPitch + (step / 4) * 64);
  }
};

// ---- mask and softmax -------------------------------------------------------------------------------

// The visible keys of one query token, by nativekv.h's formulas: [first, last], both inclusive.
struct KeyRange {
  int first;
  int last;
};

__device__ __forceinline__ KeyRange visible_keys(int token, int lq, int lk, bool causal, int window_left) {
  const int diagonal = token + lk - lq;
  KeyRange r;
  r.last = causal ? min(diagonal, lk - 1) : lk - 1;
  r.first = window_left >= 0 ? max(0, diagonal - window_left) : 0;
  return r;
}

// Scores go from raw dot products to the log2 domain (exp2 is one instruction): s * scale * log2(e),
// with the soft-cap, when set, applied to the scaled score first.
struct ScoreTransform {
  float scale_log2;      // softmax_scale * log2(e); without soft-cap
  float softcap;         // 0: off
  float scale_over_cap;  // softmax_scale / softcap
  float cap_log2;        // softcap * log2(e)

  // With the soft-cap set (callers branch once per tile, not per element).
  // tanh.approx (one MUFU op, relative error ~2^-11, as FlashAttention's soft-cap) instead of tanhf's
  // long accurate sequence: the result is rounded to 16 bits for the PV product anyway.
  __device__ __forceinline__ float capped(float dot) const {
    float t;
    asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(dot * scale_over_cap));
    return cap_log2 * t;
  }
};

// The mask and score parameters every attention kernel takes, made once from the plan.
struct KernelMask {
  int group;  // query heads per KV head
  ScoreTransform score;
  bool causal;
  int window_left;
};

KernelMask make_kernel_mask(const nkv_attention_plan& plan);

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// ---- online softmax over mma.sync fragments (the sm_80 kernels) ------------------------------------
// A warp's scores for kMTiles 16-row tiles of kNTiles 8-key tiles, in the m16n8 accumulator layout:
// s[mt][nt][2 * half + j] is row lane / 4 + 8 * half, key 8 nt + 2 (lane % 4) + j. The running state
// per row: the maximum (log2 domain), the sum of exponentials, and O in the same layout over head_dim.

template <int kMTiles, int kDTiles>
__device__ __forceinline__ void reset_softmax_state(float (&o)[kMTiles][kDTiles][4], float (&row_max)[kMTiles][2],
                                                    float (&row_sum)[kMTiles][2]) {
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.0f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
  }
}

// Soft-cap (the scores are then in the log2 domain). A whole loop behind the caller's block-uniform
// branch: per-element branches would multiply the loop body's code and miss in the instruction cache.
template <int kMTiles, int kNTiles>
__device__ __forceinline__ void cap_scores(float (&s)[kMTiles][kNTiles][4], const ScoreTransform& score) {
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[mt][nt][i] = score.capped(s[mt][nt][i]);
}

// Masks the scores of one warp's 16 keys (key0 = the first, kNTiles = 2) for rows whose visible range does not
// hold them all: visible[mt][half] is row lane / 4 + 8 * half of tile mt.
template <int kMTiles>
__device__ __forceinline__ void mask_warp_keys(float (&s)[kMTiles][2][4], const KeyRange (&visible)[kMTiles][2], int key0) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const KeyRange& r = visible[mt][half];
      const int first = r.first - key0 - (lane % 4) * 2;
      const int last = r.last - key0 - (lane % 4) * 2;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int column = nt * 8 + j;
          if (column < first || column > last) s[mt][nt][2 * half + j] = -INFINITY;
        }
      }
    }
  }
}

// Folds one tile of (masked) scores into the running state: s becomes this tile's exponentials
// exp2(s * exp_scale - max), and row_sum and O are rescaled when a row's maximum grows. exp_scale is
// the folded softmax scale, or 1 for soft-capped scores.
template <int kMTiles, int kNTiles, int kDTiles>
__device__ __forceinline__ void online_softmax_step(float (&s)[kMTiles][kNTiles][4], float (&row_max)[kMTiles][2],
                                                    float (&row_sum)[kMTiles][2], float (&o)[kMTiles][kDTiles][4],
                                                    float exp_scale) {
  static_assert((kNTiles & (kNTiles - 1)) == 0, "the tree reductions halve the key tiles");
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      // Tree reductions (max here, sum below): a chain of kNTiles dependent instructions would stall the
      // warp on each one's latency.
      float partial[kNTiles];
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) partial[nt] = fmaxf(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]);
#pragma unroll
      for (int width = kNTiles / 2; width > 0; width /= 2) {
#pragma unroll
        for (int nt = 0; nt < width; ++nt) partial[nt] = fmaxf(partial[nt], partial[nt + width]);
      }
      const float new_max = fmaxf(row_max[mt][half], quad_max(partial[0]) * exp_scale);
      const float base = new_max == -INFINITY ? 0.0f : new_max;  // a row with no visible key yet stays 0
      const float correction = fast_exp2(row_max[mt][half] - base);
      row_max[mt][half] = new_max;
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        s[mt][nt][2 * half] = fast_exp2(fmaf(s[mt][nt][2 * half], exp_scale, -base));
        s[mt][nt][2 * half + 1] = fast_exp2(fmaf(s[mt][nt][2 * half + 1], exp_scale, -base));
        partial[nt] = s[mt][nt][2 * half] + s[mt][nt][2 * half + 1];
      }
#pragma unroll
      for (int width = kNTiles / 2; width > 0; width /= 2) {
#pragma unroll
        for (int nt = 0; nt < width; ++nt) partial[nt] += partial[nt + width];
      }
      row_sum[mt][half] = row_sum[mt][half] * correction + partial[0];
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt) {
        o[mt][dt][2 * half] *= correction;
        o[mt][dt][2 * half + 1] *= correction;
      }
    }
  }
}

// The exponentials of keys 16 kk .. 16 kk + 15 as the A operand of m16n8k16 (the accumulator layout
// of two n8 tiles is the A layout of one k16 step).
template <typename T, int kMTiles, int kNTiles>
__device__ __forceinline__ void pack_probabilities(const float (&s)[kMTiles][kNTiles][4], int kk, uint32_t (&a)[kMTiles][4]) {
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
    a[mt][0] = MmaType<T>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
    a[mt][1] = MmaType<T>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
    a[mt][2] = MmaType<T>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
    a[mt][3] = MmaType<T>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
  }
}

// One warp's 16 keys of a decode tile whose K and V rows are in shared memory (SwizzledTile rows read through
// k_reader / v_reader, plus the stage's byte offsets): scores against the query fragments (16-row tiles), the
// soft-cap and the mask (only when `edge`: some row of the block may not see all the tile's keys), one online-softmax
// step, and P.V into o. Shared by the fp16 decode and the BFP decode (which dequantizes into such rows first).
template <typename T, int kHeadDim, int kPitch, int kMTiles>
__device__ __forceinline__ void decode_warp_keys(const uint32_t (&q_frag)[kMTiles][kHeadDim / 16][4], const FragmentReader<kPitch>& k_reader,
                                                 uint32_t k_offset, const FragmentReader<kPitch>& v_reader, uint32_t v_offset,
                                                 const ScoreTransform& score, float exp_scale, bool edge, const KeyRange (&visible)[kMTiles][2],
                                                 int key0, float (&o)[kMTiles][kHeadDim / 8][4], float (&row_max)[kMTiles][2],
                                                 float (&row_sum)[kMTiles][2]) {
  float s[kMTiles][2][4];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
  }
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    uint32_t kb[4];
    ldmatrix_x4(kb, k_reader.at(0, kk) + k_offset);
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      mma_16816(s[mt][0], q_frag[mt][kk], kb[0], kb[1], T());
      mma_16816(s[mt][1], q_frag[mt][kk], kb[2], kb[3], T());
    }
  }
  // As in the varlen kernel: whole loops behind block-uniform branches, the scale folded into exp2.
  if (score.softcap > 0.0f) cap_scores(s, score);
  if (edge) mask_warp_keys(s, visible, key0);
  online_softmax_step(s, row_max, row_sum, o, exp_scale);
  uint32_t a[kMTiles][4];
  pack_probabilities<T>(s, 0, a);
#pragma unroll
  for (int dp = 0; dp < kHeadDim / 16; ++dp) {
    uint32_t vb[4];
    ldmatrix_x4_trans(vb, v_reader.at(0, dp) + v_offset);
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      mma_16816(o[mt][2 * dp], a[mt], vb[0], vb[1], T());
      mma_16816(o[mt][2 * dp + 1], a[mt], vb[2], vb[3], T());
    }
  }
}

}  // namespace nkv::cuda::attention
