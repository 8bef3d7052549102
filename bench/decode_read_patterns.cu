// Read patterns of decode attention, without the attention: how fast can thread blocks stream the K/V
// of b64 x L4096 (or b8 x L32768) x Hkv 8 x d128 fp16 (1.07 GB) into shared memory through the same
// 3-stage cp.async pipeline as NativeKv's decode kernel (128 threads), depending on which bytes a block
// reads and where they lie?
//   - which bytes: whole token rows (all KV heads of a key range per block) vs one block per (sequence,
//     KV head) (bench/NOTES.md, decode a10);
//   - where: K/V rows at a token stride wider than a row, as the token-major virtual cache lays them out
//     (one layer's K and V of a token, 4 KiB, every 128 KiB for 32 layers), and whether touching a later
//     tile's pages ahead of its loads hides what that stride costs (bench/NOTES.md p6, p7).
//
//   nvcc -O3 -arch=sm_90a -o /tmp/decode_read_patterns bench/decode_read_patterns.cu && /tmp/decode_read_patterns
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace {

constexpr int kThreads = 128;
constexpr int kStages = 3;
constexpr int kTileBytes = 16384;  // per tensor per stage: 64 keys x 256 B, as in the decode kernel

enum class Prefetch { kNone, kLine, kBulk };

struct Pattern {
  std::string name;
  int rows_per_tile;        // rows of row_bytes each, kTileBytes in all
  int row_bytes;            // contiguous bytes per row
  long long row_stride;     // bytes between a block's consecutive rows within a group
  int group;                // rows per group: row r lies at (r / group) * group_stride + (r % group) * row_stride
  long long group_stride;
  long long v_offset;       // bytes from a K row to its V row
  // Block b of n0 * n1 * n2 starts at (b % n0) * s0 + (b / n0 % n1) * s1 + (b / (n0 * n1)) * s2.
  int n0, n1, n2;
  long long s0, s1, s2;
  int tiles;  // per block
  Prefetch prefetch = Prefetch::kNone;
  int prefetch_ahead = 0;  // tiles
  int prefetch_every = 16;  // rows between the prefetched rows of a tile
};

__device__ __forceinline__ void copy16(unsigned dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}

__device__ __forceinline__ long long row_offset(const Pattern& p, int row) {
  return static_cast<long long>(row / p.group) * p.group_stride + static_cast<long long>(row % p.group) * p.row_stride;
}

__global__ void __launch_bounds__(kThreads) stream_kernel(const char* kv, Pattern p, unsigned* sink) {
  extern __shared__ __align__(128) unsigned char smem[];
  const long long base = static_cast<long long>(blockIdx.x % p.n0) * p.s0 + static_cast<long long>(blockIdx.x / p.n0 % p.n1) * p.s1 +
                         static_cast<long long>(blockIdx.x / (p.n0 * p.n1)) * p.s2;
  const int chunks_per_row = p.row_bytes / 16;
  auto touch_ahead = [&](int tile) {
    const int ahead = tile + p.prefetch_ahead;
    if (p.prefetch == Prefetch::kNone || ahead >= p.tiles) return;
    const int row = threadIdx.x * p.prefetch_every;
    if (row >= p.rows_per_tile) return;
    const char* k_row = kv + base + row_offset(p, ahead * p.rows_per_tile + row);
    if (p.prefetch == Prefetch::kLine) {
      asm volatile("prefetch.global.L2 [%0];\n" ::"l"(k_row));
      asm volatile("prefetch.global.L2 [%0];\n" ::"l"(k_row + p.v_offset));
    } else {
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(k_row), "r"(p.row_bytes));
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(k_row + p.v_offset), "r"(p.row_bytes));
    }
  };
  auto load = [&](int tile) {
    const unsigned stage = static_cast<unsigned>(__cvta_generic_to_shared(smem)) + (tile % kStages) * 2 * kTileBytes;
    for (int c = threadIdx.x; c < kTileBytes / 16; c += kThreads) {
      const int row = tile * p.rows_per_tile + c / chunks_per_row;
      const long long offset = base + row_offset(p, row) + (c % chunks_per_row) * 16;
      copy16(stage + c * 16, kv + offset);
      copy16(stage + kTileBytes + c * 16, kv + offset + p.v_offset);
    }
    touch_ahead(tile);
  };
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < p.tiles) load(s);
    asm volatile("cp.async.commit_group;\n");
  }
  unsigned acc = 0;
  for (int tile = 0; tile < p.tiles; ++tile) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 2));
    __syncthreads();
    if (tile + kStages - 1 < p.tiles) load(tile + kStages - 1);
    asm volatile("cp.async.commit_group;\n");
    acc ^= reinterpret_cast<const unsigned*>(smem + (tile % kStages) * 2 * kTileBytes)[threadIdx.x];
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

float median_us(const Pattern& p, int shared_bytes, const char* kv, unsigned* sink, cudaEvent_t start, cudaEvent_t stop) {
  std::vector<float> samples;
  for (int r = 0; r < 25; ++r) {
    cudaEventRecord(start);
    stream_kernel<<<p.n0 * p.n1 * p.n2, kThreads, shared_bytes>>>(kv, p, sink);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (r >= 3) samples.push_back(ms);
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2] * 1e3f;
}

struct Shape {
  int batch, length, pieces;  // pieces per sequence, as the decode plan cuts b8 x L32768
  int shared_bytes;           // per block: more than half an SM's leaves one block per SM, as decode runs b8 x L32768
};

// Token rows of K and V at token_stride with V right after K (the token-major cache: a row holds every
// layer's K and V of the token), one block per (sequence, piece, KV head), heads innermost as in the plan.
Pattern per_head(const Shape& shape, const char* name, long long token_stride) {
  const int tokens = shape.length / shape.pieces;
  return {name, 64, 256, token_stride, 1, token_stride, 2048, 8, shape.pieces, shape.batch,
          256, tokens * token_stride, shape.length * token_stride, tokens / 64};
}

// Groups of `group` tokens whose K|V rows are 4 KiB apart (dense), the groups group_stride apart: the
// same pages as a plain stride of group_stride / group, but dense runs of group x 4 KiB in them.
Pattern per_head_groups(const Shape& shape, int group, long long group_stride) {
  const int tokens = shape.length / shape.pieces;
  const long long span = tokens / group * group_stride;
  return {"per-head, runs of " + std::to_string(group) + " K|V rows (" + std::to_string(group * 4) + " KiB) every " +
              std::to_string(group_stride / 1024) + " KiB",
          64, 256, 4096, group, group_stride, 2048, 8, shape.pieces, shape.batch, 256, span, span * shape.pieces,
          tokens / 64};
}

Pattern with_prefetch(Pattern p, Prefetch how, int ahead, int every = 16) {
  p.prefetch = how;
  p.prefetch_ahead = ahead;
  p.prefetch_every = every;
  p.name += how == Prefetch::kLine ? ", line prefetch " : ", bulk prefetch ";
  p.name += std::to_string(ahead) + " tiles ahead every " + std::to_string(every) + " rows";
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  // --prefetch: also the patterns that touch later tiles ahead (all slower: bench/NOTES.md p7)
  const bool with_prefetches = argc > 1 && std::string(argv[1]) == "--prefetch";
  const long long heads = 8, head_bytes = 256, token = heads * head_bytes;
  const long long widest = 128 * 1024;
  const long long tokens = 64LL * 4096;  // both shapes
  const long long bytes = tokens * widest;  // 32 GiB: every pattern's span
  char* kv = nullptr;
  unsigned* sink = nullptr;
  if (cudaMalloc(&kv, bytes) != cudaSuccess || cudaMalloc(&sink, 4) != cudaSuccess) {
    std::printf("allocation of %lld bytes failed\n", bytes);
    return 1;
  }
  cudaMemset(kv, 1, bytes);
  constexpr int kPipelineBytes = kStages * 2 * kTileBytes, kOneBlockPerSm = 120 * 1024;
  cudaFuncSetAttribute(stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kOneBlockPerSm);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  const long long k_bytes = tokens * token;  // contiguous: V right after the whole K tensor
  for (const Shape shape : {Shape{64, 4096, 1, kPipelineBytes}, Shape{8, 32768, 8, kPipelineBytes}, Shape{8, 32768, 2, kOneBlockPerSm}}) {
    const int per_piece = shape.length / shape.pieces;
    std::vector<Pattern> patterns;
    // [b, L, Hkv, d] K and V tensors: 256 B per key, 2 KiB apart (the contiguous decode's layout)
    Pattern contiguous{"per-head, [b,L,H,d] K and V tensors", 64, 256, token, 1, token, k_bytes, 8, shape.pieces, shape.batch,
                       head_bytes, per_piece * token, shape.length * token, per_piece / 64};
    patterns.push_back(contiguous);
    if (with_prefetches) patterns.push_back(with_prefetch(contiguous, Prefetch::kLine, 4));
    if (shape.batch == 64) {
      // [b, H, L, d]: 16 KiB contiguous tiles (SDPA's layout)
      patterns.push_back({"per-head, [b,H,L,d] (16 KiB runs)", 64, 256, head_bytes, 1, head_bytes, k_bytes, 8, 1, 64,
                          4096 * head_bytes, 0, heads * 4096 * head_bytes, 64});
      // one block per (sequence, 512-key range), all heads: 8 whole token rows of 2 KiB per tile
      patterns.push_back({"all-heads, [b,L,H,d] (2 KiB rows)", 8, 2048, token, 1, token, k_bytes, 8, 1, 64, 512 * token, 0,
                          4096 * token, 64});
    }
    for (long long kib : {4, 8, 32, 128}) {
      patterns.push_back(per_head(shape, ("per-head, K|V rows every " + std::to_string(kib) + " KiB").c_str(), kib * 1024));
    }
    const Pattern strided = per_head(shape, "per-head, K|V rows every 128 KiB", widest);
    if (with_prefetches) {
      for (int ahead : {1, 2, 4, 8}) patterns.push_back(with_prefetch(strided, Prefetch::kLine, ahead));
      patterns.push_back(with_prefetch(strided, Prefetch::kLine, 4, 64));
      for (int ahead : {2, 4}) patterns.push_back(with_prefetch(strided, Prefetch::kBulk, ahead, 1));
    }
    // Same pages as a plain stride, denser runs: address translation (pages per byte) vs DRAM locality.
    patterns.push_back(per_head_groups(shape, 8, 64 * 1024));      // pages of 8 KiB stride
    patterns.push_back(per_head_groups(shape, 2, 256 * 1024));     // pages of 128 KiB stride
    patterns.push_back(per_head_groups(shape, 8, 1024 * 1024));    // pages of 128 KiB stride
    patterns.push_back(per_head_groups(shape, 16, 2048 * 1024));   // pages of 128 KiB stride, one run per page
    patterns.push_back(per_head_groups(shape, 64, 8192 * 1024));   // a whole tile per run, 4 pages apart
    // all heads of a key range per block: 8 whole rows of K (2 KiB, V after it) per tile
    if (per_piece == 4096) patterns.push_back({"all-heads, K|V rows every 128 KiB", 8, 2048, widest, 1, widest, 2048, 8, shape.pieces, shape.batch,
                        per_piece / 8 * widest, per_piece * widest, shape.length * widest, 64});
    std::printf("\nb%d x L%d, %d pieces per sequence, %d KiB of shared memory per block\n", shape.batch, shape.length,
                shape.pieces, shape.shared_bytes / 1024);
    std::vector<std::vector<float>> times(patterns.size());
    for (int round = 0; round < 3; ++round) {
      for (size_t i = 0; i < patterns.size(); ++i) times[i].push_back(median_us(patterns[i], shape.shared_bytes, kv, sink, start, stop));
    }
    const float base = times[0][0] + times[0][1] + times[0][2];
    for (size_t i = 0; i < patterns.size(); ++i) {
      const Pattern& p = patterns[i];
      const float sum = times[i][0] + times[i][1] + times[i][2];
      std::printf("%-72s %4d blocks x %3d tiles: %7.1f %7.1f %7.1f us, %.3f TB/s, contiguous/this %.3f\n", p.name.c_str(),
                  p.n0 * p.n1 * p.n2, p.tiles, times[i][0], times[i][1], times[i][2],
                  2.0 * k_bytes / (sum / 3 * 1e-6) / 1e12, base / sum);
    }
  }
  const cudaError_t error = cudaGetLastError();
  std::printf("%s\n", cudaGetErrorString(error));
  return error == cudaSuccess ? 0 : 1;
}
