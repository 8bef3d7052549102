// Varlen attention forward, sm_90a design (FlashAttention-3): one warpgroup produces (a single thread
// issues TMA loads of Q and of K/V tiles into a 2-stage ring, completing on mbarriers), two or three
// warpgroups consume (each owns 64 query rows: S = Q K^T with both operands in shared memory, the
// online softmax in registers, O += P V with P from registers, the softmax of one key tile overlapping
// the P V product of the previous one). setmaxnreg moves registers from the producer to the consumers.
// Head dims 64 (192 x 128 tiles: three consumers, since the softmax costs as much as both products
// there) and 128 (128 x 128); compiled only for sm_90a (other targets get an empty body and are never
// dispatched, see hopper_kernels_available).
//
// Shared-memory tiles use TMA's 128-byte swizzle: a 128-wide row is stored as 64-element halves,
// each half a [rows][64] block whose 16-byte chunks are XOR-swizzled by row % 8 (the layout wgmma's
// SW128 descriptors describe).
#include <cuda.h>  // CUtensorMap and its enums only: the encoder comes through the runtime's driver entry point
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cmath>
#include <limits>
#include <string>

#include "core/attention.h"
#include "core/backends.h"
#include "core/error.h"
#include "cuda/attention/mma_sm80.cuh"
#include "cuda/attention/varlen_sm90.h"
#include "cuda/common/cuda_check.h"

namespace nkv::cuda::attention {
namespace {

constexpr int kBlockN = 128;  // keys per K/V tile
constexpr int kStages = 2;
#ifndef NKV_SM90_PINGPONG
#define NKV_SM90_PINGPONG 1
#endif
// Whether the consumer warpgroups take turns issuing wgmma (see take_turn). A tuning knob at
// configure time; bench/NOTES.md records what each choice measured.
[[maybe_unused]] constexpr bool kPingPong = NKV_SM90_PINGPONG != 0;  // device code only
// Named barriers: 1..3 are the consumers' turns (see take_turn), this one all consumers together.
[[maybe_unused]] constexpr int kClearBarrier = 4;
constexpr int kKvHalfBytes = 128 * 64 * 2;  // one [128 keys][64] half-tile: 16 KiB

// The block shape for head_dim kHeadDim (64 or 128) and its shared memory: Q, then kStages K tiles,
// kStages V tiles, then the mbarriers (q_full, k_full[s], k_empty[s], v_full[s], v_empty[s]) and a
// scratch float per thread.
template <int kHeadDim>
struct Sm90Tiles {
  static constexpr int kConsumers = kHeadDim == 64 ? 3 : 2;
  static constexpr int kBlockM = 64 * kConsumers;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // Registers per thread after setmaxnreg (multiples of 8): the producer keeps few, the consumers share
  // the rest of what the block was launched with, at most 65536 / kThreads per thread rounded down to 8
  // (128 x 512 = 64K for three consumers, 168 x 384 = 63K for two): setmaxnreg.inc would wait forever for
  // registers the block does not have (bench/NOTES.md s5).
  static constexpr int kLaunchRegisters = 65536 / kThreads / 8 * 8;
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = kConsumers == 3 ? 160 : 240;
  static constexpr int kHalves = kHeadDim / 64;
  static constexpr int kQHalfBytes = kBlockM * 64 * 2;
  static constexpr int kQBytes = kHalves * kQHalfBytes;
  static constexpr int kKvTileBytes = kHalves * kKvHalfBytes;
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQOffset + kQBytes;
  static constexpr int kVOffset = kKOffset + kStages * kKvTileBytes;
  static constexpr int kBarrierOffset = kVOffset + kStages * kKvTileBytes;
  static constexpr int kBarriers = 1 + 4 * kStages;
  static constexpr int kScratchOffset = kBarrierOffset + kBarriers * 8;  // a float per thread, see the consumer loop
  // + 1024: the dynamic shared memory base is aligned up to the 1024 bytes the swizzle atoms need.
  static constexpr size_t kSharedBytes = kScratchOffset + kThreads * 4 + 1024;
};

// Q, K and V come through the tensor maps; the kernel writes O and LSE itself.
struct Sm90Params {
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;
  void* o;
  float* lse;
  HeadMajorStrides o_strides;
  int64_t lse_head;
  KernelMask mask;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define NKV_SM90A_DEVICE_CODE 1
#endif

#ifdef NKV_SM90A_DEVICE_CODE

__device__ __forceinline__ void barrier_init(uint32_t barrier, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(barrier), "r"(count));
}
// Arrives once and announces `bytes` of TMA traffic the phase must wait for.
__device__ __forceinline__ void barrier_expect_bytes(uint32_t barrier, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(barrier), "r"(bytes) : "memory");
}
__device__ __forceinline__ void barrier_arrive(uint32_t barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(barrier) : "memory");
}
__device__ __forceinline__ void barrier_wait(uint32_t barrier, int phase) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(barrier),
      "r"(phase)
      : "memory");
}

// One [box] TMA load of a 3-D map (d, head, row) into shared memory, completing on `barrier`.
__device__ __forceinline__ void tma_load(uint32_t destination, const CUtensorMap* map, uint32_t barrier, int d, int head,
                                         int row) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
          destination),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(d), "r"(head), "r"(row), "r"(barrier)
      : "memory");
}

// A wgmma shared-memory descriptor for a 128-byte-swizzled operand: start address, leading and stride
// byte offsets (each >> 4), swizzle mode 1 (128 B) in bits 62-63.
__device__ __forceinline__ uint64_t sw128_descriptor(uint32_t address, uint32_t leading_bytes, uint32_t stride_bytes) {
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) | (static_cast<uint64_t>(leading_bytes >> 4) << 16) |
         (static_cast<uint64_t>(stride_bytes >> 4) << 32) | (1ull << 62);
}

// The fp32 accumulator operands of one wgmma ("+f" d[0..31] or d[0..63]): the f16 and bf16 forms of
// each instruction differ only in its type suffix.
#define NKV_WGMMA_ACCUMULATORS_8(d, i)                                                                  \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define NKV_WGMMA_ACCUMULATORS_32(d)                                                                 \
  NKV_WGMMA_ACCUMULATORS_8(d, 0), NKV_WGMMA_ACCUMULATORS_8(d, 8), NKV_WGMMA_ACCUMULATORS_8(d, 16), \
      NKV_WGMMA_ACCUMULATORS_8(d, 24)
#define NKV_WGMMA_ACCUMULATORS_64(d)                                                                  \
  NKV_WGMMA_ACCUMULATORS_32(d), NKV_WGMMA_ACCUMULATORS_8(d, 32), NKV_WGMMA_ACCUMULATORS_8(d, 40),   \
      NKV_WGMMA_ACCUMULATORS_8(d, 48), NKV_WGMMA_ACCUMULATORS_8(d, 56)

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void store_shared_zeros(uint32_t address) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(address), "r"(0) : "memory");
}
__device__ __forceinline__ void store_shared(uint32_t address, float value) {
  asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(address), "f"(value) : "memory");
}

template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Makes the compiler treat these registers as read and rewritten here, so that no access to them moves
// across this point (an in-flight wgmma reads or writes them until its wait).
template <int N>
__device__ __forceinline__ void fence_operands(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_operands(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

__device__ __forceinline__ void wgmma_ss_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, bool accumulate,
                                                    __half) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : NKV_WGMMA_ACCUMULATORS_64(d)
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
}
__device__ __forceinline__ void wgmma_rs_m64n128k16(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, __half) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : NKV_WGMMA_ACCUMULATORS_64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

__device__ __forceinline__ void wgmma_ss_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, bool accumulate,
                                                    __nv_bfloat16) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : NKV_WGMMA_ACCUMULATORS_64(d)
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
}
__device__ __forceinline__ void wgmma_rs_m64n128k16(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, __nv_bfloat16) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : NKV_WGMMA_ACCUMULATORS_64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}


__device__ __forceinline__ void wgmma_rs_m64n64k16(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, __half) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : NKV_WGMMA_ACCUMULATORS_32(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

__device__ __forceinline__ void wgmma_rs_m64n64k16(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, __nv_bfloat16) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : NKV_WGMMA_ACCUMULATORS_32(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

template <typename T>
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
  wgmma_rs_m64n128k16(d, a, desc_b, T());
}
template <typename T>
__device__ __forceinline__ void wgmma_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b) {
  wgmma_rs_m64n64k16(d, a, desc_b, T());
}

#endif  // NKV_SM90A_DEVICE_CODE

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(Sm90Tiles<kHeadDim>::kThreads, 1)
    varlen_forward_sm90_kernel(const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap k_map,
                               const __grid_constant__ CUtensorMap v_map, const Sm90Params p) {
#ifdef NKV_SM90A_DEVICE_CODE
  using Layout = Sm90Tiles<kHeadDim>;
  constexpr int kHalves = Layout::kHalves;
  constexpr int kBlockM = Layout::kBlockM;
  constexpr int kQHalfBytes = Layout::kQHalfBytes;
  constexpr int kKvTileBytes = Layout::kKvTileBytes;
  constexpr int kDChunks = kHeadDim / 8;  // n8 chunks of O per row
  constexpr float kNegInf = -INFINITY;
  extern __shared__ __align__(1024) unsigned char shared_bytes[];
  const uint32_t base = (shared_address(shared_bytes) + 1023u) & ~1023u;
  const uint32_t q_tile = base + Layout::kQOffset;
  const uint32_t barriers = base + Layout::kBarrierOffset;
  const uint32_t scratch = base + Layout::kScratchOffset;
  const uint32_t q_full = barriers;
  auto k_full = [&](int s) { return barriers + 8u * (1 + s); };
  auto k_empty = [&](int s) { return barriers + 8u * (1 + kStages + s); };
  auto v_full = [&](int s) { return barriers + 8u * (1 + 2 * kStages + s); };
  auto v_empty = [&](int s) { return barriers + 8u * (1 + 3 * kStages + s); };
  auto k_tile = [&](int s) { return base + Layout::kKOffset + static_cast<uint32_t>(s * kKvTileBytes); };
  auto v_tile = [&](int s) { return base + Layout::kVOffset + static_cast<uint32_t>(s * kKvTileBytes); };

  const int sequence = blockIdx.z;
  const int head = blockIdx.y;
  const int kv_head = head / p.mask.group;
  const int q_begin = p.cu_seqlens_q[sequence];
  const int lq = p.cu_seqlens_q[sequence + 1] - q_begin;
  const int k_begin = p.cu_seqlens_k[sequence];
  const int lk = p.cu_seqlens_k[sequence + 1] - k_begin;
  const int row0 = (gridDim.x - 1 - blockIdx.x) * kBlockM;  // heaviest row tiles first under a causal mask
  if (row0 >= lq) return;  // the whole block, before any barrier exists

  const int offset = lk - lq;
  const int last_token = min(lq, row0 + kBlockM) - 1;
  int key_end = lk;
  if (p.mask.causal) key_end = min(lk, last_token + offset + 1);
  const int key_begin = p.mask.window_left >= 0 ? max(0, row0 + offset - p.mask.window_left) : 0;
  const int tile_begin = key_begin / kBlockN;
  const int tiles = key_end > key_begin ? (key_end + kBlockN - 1) / kBlockN - tile_begin : 0;

  if (threadIdx.x == 0) {
    barrier_init(q_full, 1);
    for (int s = 0; s < kStages; ++s) {
      barrier_init(k_full(s), 1);
      barrier_init(v_full(s), 1);
      barrier_init(k_empty(s), Layout::kConsumers * 128);
      barrier_init(v_empty(s), Layout::kConsumers * 128);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    // Producer: one thread issues every load; the tiles are visited last to first, as the consumers do.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(Layout::kProducerRegisters));
    if (threadIdx.x == 0) {
      barrier_expect_bytes(q_full, Layout::kQBytes);
      for (int h = 0; h < kHalves; ++h) tma_load(q_tile + h * kQHalfBytes, &q_map, q_full, 64 * h, head, q_begin + row0);
      for (int i = 0; i < tiles; ++i) {
        const int n0 = (tile_begin + tiles - 1 - i) * kBlockN;
        const int s = i % kStages;
        const int phase = (i / kStages) & 1;
        barrier_wait(k_empty(s), phase ^ 1);  // the first pass over the ring finds every stage free
        barrier_expect_bytes(k_full(s), kKvTileBytes);
        for (int h = 0; h < kHalves; ++h) {
          tma_load(k_tile(s) + h * kKvHalfBytes, &k_map, k_full(s), 64 * h, kv_head, k_begin + n0);
        }
        barrier_wait(v_empty(s), phase ^ 1);
        barrier_expect_bytes(v_full(s), kKvTileBytes);
        for (int h = 0; h < kHalves; ++h) {
          tma_load(v_tile(s) + h * kKvHalfBytes, &v_map, v_full(s), 64 * h, kv_head, k_begin + n0);
        }
      }
    }
    return;
  }

  // Consumers.
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(Layout::kConsumerRegisters));
  const int consumer = warpgroup - 1;  // rows consumer*64 .. +63 of the tile
  const int warp = (threadIdx.x % 128) / 32;
  const int lane = threadIdx.x % 32;
  const int row_lo = consumer * 64 + warp * 16 + lane / 4;  // this thread's rows: row_lo and row_lo + 8
  const float exp_scale = p.mask.score.softcap > 0.0f ? 1.0f : p.mask.score.scale_log2;

  float o[kHeadDim / 2];
#pragma unroll
  for (int i = 0; i < kHeadDim / 2; ++i) o[i] = 0.0f;
  float row_max[2] = {kNegInf, kNegInf};
  float row_sum[2] = {0.0f, 0.0f};

  // Tile i's stage and the parity of its use of that stage.
  auto stage_of = [](int i) { return i % kStages; };
  auto phase_of = [](int i) { return (i / kStages) & 1; };
  auto key_start = [&](int i) { return (tile_begin + tiles - 1 - i) * kBlockN; };

  // S = Q K^T, issued (not waited for): head_dim / 16 k-steps; k-step kk reads 32 bytes at (kk % 4) * 32 of
  // half kk / 4. The fence also orders the register writes before it (P, the rescaled O) with the
  // wgmma that follow.
  auto issue_scores = [&](int i, float (&acc)[64]) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      const uint32_t k_step = static_cast<uint32_t>((kk % 4) * 32);
      const uint32_t q_half = static_cast<uint32_t>((kk / 4) * kQHalfBytes + consumer * 64 * 128);
      const uint64_t a = sw128_descriptor(q_tile + q_half + k_step, 16, 1024);
      const uint64_t b = sw128_descriptor(k_tile(stage_of(i)) + static_cast<uint32_t>((kk / 4) * kKvHalfBytes) + k_step, 16, 1024);
      wgmma_ss_m64n128k16(acc, a, b, kk > 0, T());
    }
    wgmma_commit();
  };
  // O += P V, issued: P in the register-A layout of m64k16 times V read MN-major: key-step kk is 16 rows
  // (2048 bytes) into each half; the halves (d 0-63, 64-127) are the descriptor's leading offset
  // apart, 8-row groups 1024 bytes apart.
  auto issue_values = [&](int i, const uint32_t (&pa)[kBlockN / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      const uint64_t b = sw128_descriptor(v_tile(stage_of(i)) + static_cast<uint32_t>(kk * 16 * 128), kKvHalfBytes, 1024);
      wgmma_rs<T>(o, pa[kk], b);
    }
    wgmma_commit();
  };
  // Masks and exponentiates tile i's scores in place and updates the row statistics; returns (through
  // `correction`) the factor that O, still accumulating the previous tile, must be scaled by.
  // acc[4c + j]: row row_lo + 8 * (j / 2), key n0 + 8c + 2 (lane % 4) + j % 2.
  auto softmax = [&](int i, float (&acc)[64], float (&correction)[2]) {
    const int n0 = key_start(i);
    if (p.mask.score.softcap > 0.0f) {
#pragma unroll
      for (int j = 0; j < 64; ++j) acc[j] = p.mask.score.capped(acc[j]);
    }
    const bool edge = n0 + kBlockN > lk || (p.mask.causal && n0 + kBlockN - 1 > row0 + offset) ||
                      (p.mask.window_left >= 0 && n0 < last_token + offset - p.mask.window_left);
    if (edge) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const KeyRange r = visible_keys(min(row0 + row_lo + 8 * half, lq - 1), lq, lk, p.mask.causal, p.mask.window_left);
        const int first = r.first - n0 - (lane % 4) * 2;
        const int last = r.last - n0 - (lane % 4) * 2;
#pragma unroll
        for (int c = 0; c < 16; ++c) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int column = 8 * c + j;
            if (column < first || column > last) acc[4 * c + 2 * half + j] = kNegInf;
          }
        }
      }
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float tile_max = kNegInf;
#pragma unroll
      for (int c = 0; c < 16; ++c) tile_max = fmaxf(tile_max, fmaxf(acc[4 * c + 2 * half], acc[4 * c + 2 * half + 1]));
      const float new_max = fmaxf(row_max[half], quad_max(tile_max) * exp_scale);
      const float base_max = new_max == kNegInf ? 0.0f : new_max;
      correction[half] = fast_exp2(row_max[half] - base_max);
      row_max[half] = new_max;
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < 16; ++c) {
        acc[4 * c + 2 * half] = fast_exp2(fmaf(acc[4 * c + 2 * half], exp_scale, -base_max));
        acc[4 * c + 2 * half + 1] = fast_exp2(fmaf(acc[4 * c + 2 * half + 1], exp_scale, -base_max));
        sum += acc[4 * c + 2 * half] + acc[4 * c + 2 * half + 1];
      }
      row_sum[half] = row_sum[half] * correction[half] + sum;
    }
  };
  auto rescale = [&](const float (&correction)[2]) {
#pragma unroll
    for (int c = 0; c < kDChunks; ++c) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        o[4 * c + 2 * half] *= correction[half];
        o[4 * c + 2 * half + 1] *= correction[half];
      }
    }
  };
  auto pack = [&](const float (&acc)[64], uint32_t (&pa)[kBlockN / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      pa[kk][0] = MmaType<T>::pack(acc[8 * kk + 0], acc[8 * kk + 1]);
      pa[kk][1] = MmaType<T>::pack(acc[8 * kk + 2], acc[8 * kk + 3]);
      pa[kk][2] = MmaType<T>::pack(acc[8 * kk + 4], acc[8 * kk + 5]);
      pa[kk][3] = MmaType<T>::pack(acc[8 * kk + 6], acc[8 * kk + 7]);
    }
  };

  auto wait_keys = [&](int i) { barrier_wait(k_full(stage_of(i)), phase_of(i)); };
  // The maps span every sequence, so the rows of the sequence's last key tile past its last key hold
  // the next sequence's values. P is 0 there, but 0 x Inf is NaN: once that tile (tile 0: the traversal
  // runs last to first) has landed, the consumers zero those rows before any P V product reads them.
  // Row r of each 64-column half is the 128 bytes at r * 128 (the swizzle only permutes them).
  auto wait_values = [&](int i) {
    barrier_wait(v_full(stage_of(i)), phase_of(i));
    const int valid_rows = lk - key_start(i);
    if (valid_rows >= kBlockN) return;
    constexpr int kConsumerThreads = Layout::kConsumers * 128;
    const uint32_t tile = v_tile(stage_of(i));
    const int chunks = (kBlockN - valid_rows) * kHalves * 8;  // 16-byte chunks to clear
    for (int c = static_cast<int>(threadIdx.x) - 128; c < chunks; c += kConsumerThreads) {
      const int row = valid_rows + c / (kHalves * 8);
      const int within = c % (kHalves * 8);
      store_shared_zeros(tile + static_cast<uint32_t>((within / 8) * kKvHalfBytes + row * 128 + (within % 8) * 16));
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // wgmma reads through the async proxy
    asm volatile("bar.sync %0, %1;\n" ::"n"(kClearBarrier), "n"(kConsumerThreads) : "memory");
  };
  // Ping-pong (FlashAttention-3's inter-warpgroup overlap): the consumers take turns to issue their
  // wgmma, so that one warpgroup's GEMMs run while the others compute their softmax. Consumer c's
  // turn is named barrier 1 + c: its own 128 threads wait there until the 128 of consumer c - 1
  // arrive, which they do right after issuing.
  auto take_turn = [&] {
    if constexpr (kPingPong) asm volatile("bar.sync %0, 256;\n" ::"r"(1 + consumer) : "memory");
  };
  auto pass_turn = [&] {
    if constexpr (kPingPong) asm volatile("bar.arrive %0, 256;\n" ::"r"(1 + (consumer + 1) % Layout::kConsumers) : "memory");
  };

  // Software pipeline (FlashAttention-3's intra-warpgroup overlap): while the tensor cores compute
  // P_{i-1} V_{i-1}, this warpgroup runs the softmax of tile i, whose scores were issued just before.
  // The operand fences keep the compiler from touching a register an in-flight wgmma reads or
  // writes before the wait that retires it.
  barrier_wait(q_full, 0);
  if (tiles > 0) {
    float acc[64];
    uint32_t pa[kBlockN / 16][4];
    float correction[2];
    if (consumer == Layout::kConsumers - 1) pass_turn();  // the first turn is consumer 0's
    wait_keys(0);
    take_turn();
    issue_scores(0, acc);
    pass_turn();
    wgmma_wait<0>();
    fence_operands(acc);
    barrier_arrive(k_empty(stage_of(0)));
    softmax(0, acc, correction);
    pack(acc, pa);
    for (int i = 1; i < tiles; ++i) {
      wait_keys(i);
      wait_values(i - 1);
      take_turn();
      issue_scores(i, acc);
      issue_values(i - 1, pa);
      pass_turn();
      wgmma_wait<1>();  // the scores of tile i
      fence_operands(acc);
      barrier_arrive(k_empty(stage_of(i)));
      softmax(i, acc, correction);
      // ptxas schedules arithmetic freely across a wgmma wait and would sink the softmax below it,
      // serializing it after P_{i-1} V_{i-1}. A shared-memory store of a value that depends on every
      // exponential stays ahead of the wait, and so does the softmax.
      store_shared(scratch + 4u * threadIdx.x, row_sum[0] + row_sum[1]);
      wgmma_wait<0>();  // P_{i-1} V_{i-1}
      fence_operands(o);
      fence_operands(pa);
      barrier_arrive(v_empty(stage_of(i - 1)));
      rescale(correction);
      pack(acc, pa);
    }
    wait_values(tiles - 1);
    take_turn();
    wgmma_fence();
    issue_values(tiles - 1, pa);
    if (consumer != Layout::kConsumers - 1) pass_turn();  // the last turn of all leaves no arrival pending
    wgmma_wait<0>();
    fence_operands(o);
    fence_operands(pa);
    barrier_arrive(v_empty(stage_of(tiles - 1)));
  }

  // Epilogue: normalize and store the rows of this sequence; o[4c + j] is column 8c + 2 (lane % 4) + j % 2.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const float sum = quad_sum(row_sum[half]);
    const int token = row0 + row_lo + 8 * half;
    if (token >= lq) continue;
    const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
    T* out = static_cast<T*>(p.o) + static_cast<int64_t>(q_begin + token) * p.o_strides.row +
             static_cast<int64_t>(head) * p.o_strides.head + (lane % 4) * 2;
#pragma unroll
    for (int c = 0; c < kDChunks; ++c) {
      *reinterpret_cast<uint32_t*>(out + 8 * c) =
          MmaType<T>::pack(o[4 * c + 2 * half] * inverse, o[4 * c + 2 * half + 1] * inverse);
    }
    if (p.lse != nullptr && lane % 4 == 0) {
      p.lse[static_cast<int64_t>(head) * p.lse_head + q_begin + token] =
          sum > 0.0f ? (row_max[half] + log2f(sum)) * 0.69314718055994531f : kNegInf;
    }
  }
#endif  // NKV_SM90A_DEVICE_CODE
}

// Writes 1 when this build carries sm_90a device code for the running GPU, 0 otherwise (a compute_90
// PTX or another architecture's code would run the empty kernel bodies above).
__global__ void sm90a_probe_kernel(int* result) {
#ifdef NKV_SM90A_DEVICE_CODE
  *result = 1;
#else
  *result = 0;
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 encoder = [] {
    void* function = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    NKV_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &function, 12000, cudaEnableDefault, &found));
#else
    NKV_CUDA_CHECK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &function, cudaEnableDefault, &found));
#endif
    if (found != cudaDriverEntryPointSuccess || function == nullptr) {
      fail(NKV_STATUS_DEVICE_ERROR, "the CUDA driver does not provide cuTensorMapEncodeTiled (needs a CUDA 12 driver)");
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(function);
  }();
  return encoder;
}

// A 3-D map (d, head, row) over `rows` rows; boxes of [box_rows][1 head][64 d], 128-byte swizzled.
CUtensorMap make_map(const void* data, nkv_dtype dtype, int32_t head_dim, int64_t rows, int32_t heads,
                     HeadMajorStrides strides, uint32_t box_rows) {
  CUtensorMap map{};
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(rows)};
  const cuuint64_t byte_strides[2] = {static_cast<cuuint64_t>(strides.head) * 2, static_cast<cuuint64_t>(strides.row) * 2};
  const cuuint32_t box[3] = {64, 1, box_rows};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult result = tensor_map_encoder()(
      &map, dtype == NKV_DTYPE_BFLOAT16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3,
      const_cast<void*>(data), dims, byte_strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS) {
    fail(NKV_STATUS_DEVICE_ERROR, "cuTensorMapEncodeTiled failed with CUresult " + std::to_string(static_cast<int>(result)));
  }
  return map;
}

template <typename T, int kHeadDim>
void launch(const nkv_attention_plan& plan, const VarlenAttentionArgs& a, const Sm90Params& params) {
  // Maps span exactly the plan's rows, so TMA zero-fills past the last sequence.
  using Tiles = Sm90Tiles<kHeadDim>;
  static_assert(Tiles::kProducerRegisters + Tiles::kConsumers * Tiles::kConsumerRegisters <=
                    Tiles::kLaunchRegisters * (1 + Tiles::kConsumers),
                "the warpgroups' registers after setmaxnreg fit what the block is launched with");
  const CUtensorMap q_map = make_map(a.q, a.dtype, kHeadDim, plan.total_q, plan.num_heads_q, a.q_strides, Tiles::kBlockM);
  const CUtensorMap k_map = make_map(a.k, a.dtype, kHeadDim, plan.total_k, plan.num_heads_kv, a.k_strides, kBlockN);
  const CUtensorMap v_map = make_map(a.v, a.dtype, kHeadDim, plan.total_k, plan.num_heads_kv, a.v_strides, kBlockN);
  auto kernel = varlen_forward_sm90_kernel<T, kHeadDim>;
  constexpr size_t kSharedBytes = Tiles::kSharedBytes;
  NKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSharedBytes)));
  const int64_t row_blocks = (plan.max_seqlen_q + Tiles::kBlockM - 1) / Tiles::kBlockM;
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(plan.num_heads_q), static_cast<unsigned>(plan.batch));
  kernel<<<grid, Tiles::kThreads, kSharedBytes, static_cast<cudaStream_t>(plan.context->stream)>>>(q_map, k_map, v_map, params);
  NKV_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void launch_for_head_dim(const nkv_attention_plan& plan, const VarlenAttentionArgs& a, const Sm90Params& params) {
  if (plan.head_dim == 64) {
    launch<T, 64>(plan, a, params);
  } else {
    launch<T, 128>(plan, a, params);
  }
}

}  // namespace

bool varlen_sm90_supports(const nkv_attention_plan& plan) {
  // With no keys at all there is nothing to multiply (every row is O = 0, LSE = -inf) and a tensor map
  // cannot be empty: the SM80 kernel writes those rows whichever family was asked for.
  return plan.context->hopper_kernels && (plan.head_dim == 64 || plan.head_dim == 128) && plan.total_k > 0 &&
         plan.num_heads_q <= 65535 &&
         plan.batch <= 65535;
}

void attention_varlen_sm90(const nkv_attention_plan& plan, const VarlenAttentionArgs& a) {
  Sm90Params p{};
  p.cu_seqlens_q = plan.device_cu_seqlens_q;
  p.cu_seqlens_k = plan.device_cu_seqlens_k;
  p.o = a.o;
  p.lse = a.lse;
  p.o_strides = a.o_strides;
  p.lse_head = a.lse_head_stride;
  p.mask = make_kernel_mask(plan);
  if (a.dtype == NKV_DTYPE_BFLOAT16) {
    launch_for_head_dim<__nv_bfloat16>(plan, a, p);
  } else {
    launch_for_head_dim<__half>(plan, a, p);
  }
}

}  // namespace nkv::cuda::attention

namespace nkv::cuda {

bool hopper_kernels_available(int32_t ordinal) {
  DeviceScope scope(ordinal);
  int* flag = nullptr;
  NKV_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
  int result = 0;
  attention::sm90a_probe_kernel<<<1, 1>>>(flag);
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess) status = cudaMemcpy(&result, flag, sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(flag);
  // No kernel image for this device (a build without sm_90 code) simply means no Hopper path.
  if (status == cudaErrorNoKernelImageForDevice || status == cudaErrorInvalidDeviceFunction) {
    cudaGetLastError();
    return false;
  }
  NKV_CUDA_CHECK(status);
  return result == 1;
}

}  // namespace nkv::cuda
