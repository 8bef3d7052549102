// Read patterns of decode attention, without the attention: how fast can thread blocks stream the K/V
// of b64 x L4096 x Hkv 8 x d128 fp16 (1.07 GB) into shared memory through the same 3-stage cp.async
// pipeline as NativeKv's decode kernel (128 threads, 2 blocks per SM), depending on which bytes a block
// reads? For deciding whether a decode kernel that reads whole token rows (all KV heads of a key range
// per block) would stream faster than one block per (sequence, KV head) (bench/NOTES.md, decode a10).
//
//   nvcc -O3 -arch=sm_90a -o /tmp/decode_read_patterns bench/decode_read_patterns.cu && /tmp/decode_read_patterns
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

namespace {

constexpr int kThreads = 128;
constexpr int kStages = 3;
constexpr int kTileBytes = 16384;  // per tensor per stage: 64 keys x 256 B, as in the decode kernel

struct Pattern {
  const char* name;
  int rows_per_tile;   // rows of row_bytes each, kTileBytes in all
  int row_bytes;       // contiguous bytes per row
  long long row_stride;  // bytes between a block's consecutive rows
  long long block_stride_a;  // bytes between blocks along blockIdx.x % split
  long long block_stride_b;  // bytes between blocks along blockIdx.x / split
  int split;
  int tiles;  // per block
};

__device__ __forceinline__ void copy16(unsigned dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}

__global__ void __launch_bounds__(kThreads) stream_kernel(const char* k, const char* v, Pattern p, unsigned* sink) {
  extern __shared__ __align__(128) unsigned char smem[];
  const long long base = (blockIdx.x % p.split) * p.block_stride_a + (blockIdx.x / p.split) * p.block_stride_b;
  const int chunks_per_row = p.row_bytes / 16;
  auto load = [&](int tile) {
    const unsigned stage = static_cast<unsigned>(__cvta_generic_to_shared(smem)) + (tile % kStages) * 2 * kTileBytes;
    for (int c = threadIdx.x; c < kTileBytes / 16; c += kThreads) {
      const int row = tile * p.rows_per_tile + c / chunks_per_row;
      const long long offset = base + row * p.row_stride + (c % chunks_per_row) * 16;
      copy16(stage + c * 16, k + offset);
      copy16(stage + kTileBytes + c * 16, v + offset);
    }
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

}  // namespace

int main() {
  const long long batch = 64, length = 4096, heads = 8, head_bytes = 256;
  const long long bytes = batch * length * heads * head_bytes;  // per tensor
  char *k = nullptr, *v = nullptr;
  unsigned* sink = nullptr;
  cudaMalloc(&k, bytes);
  cudaMalloc(&v, bytes);
  cudaMalloc(&sink, 4);
  cudaMemset(k, 1, bytes);
  cudaMemset(v, 2, bytes);
  const int shared = kStages * 2 * kTileBytes;
  cudaFuncSetAttribute(stream_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared);
  const long long token = heads * head_bytes;  // [b, L, Hkv, d]: one token row of all heads
  const Pattern patterns[] = {
      // one block per (sequence, head), [b, L, Hkv, d]: 256 B per key, 2 KiB apart (NativeKv today)
      {"per-head, [b,L,H,d] (256 B rows)", 64, 256, token, head_bytes, length * token, 8, 64},
      // one block per (sequence, head), [b, H, L, d]: 16 KiB contiguous tiles (SDPA's layout)
      {"per-head, [b,H,L,d] (16 KiB runs)", 64, 256, head_bytes, length * head_bytes, heads * length * head_bytes, 8, 64},
      // one block per (sequence, 512-key range), all heads: 8 whole token rows of 2 KiB per tile
      {"all-heads, [b,L,H,d] (2 KiB rows)", 8, 2048, token, 512 * token, length * token, 8, 64},
      // all heads, pairs of heads per row (512 B rows, 1 KiB apart... as a 2-head block would read)
      {"two-heads, [b,L,H,d] (512 B rows)", 32, 512, token, 2 * head_bytes, length * token, 4, 128},
  };
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int round = 0; round < 2; ++round) {
    for (const Pattern& p : patterns) {
      const int blocks = static_cast<int>(batch * p.split);
      std::vector<float> samples;
      for (int r = 0; r < 25; ++r) {
        cudaEventRecord(start);
        stream_kernel<<<blocks, kThreads, shared>>>(k, v, p, sink);
        cudaEventRecord(stop);
        cudaEventSynchronize(stop);
        float ms = 0;
        cudaEventElapsedTime(&ms, start, stop);
        if (r >= 3) samples.push_back(ms);
      }
      std::sort(samples.begin(), samples.end());
      const float us = samples[samples.size() / 2] * 1e3f;
      std::printf("%-36s %4d blocks x %3d tiles: %7.1f us, %.3f TB/s\n", p.name, blocks, p.tiles, us,
                  2.0 * bytes / (us * 1e-6) / 1e12);
    }
  }
  const cudaError_t error = cudaGetLastError();
  std::printf("%s\n", cudaGetErrorString(error));
  return error == cudaSuccess ? 0 : 1;
}
