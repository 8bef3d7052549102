// The opaque handle types behind the C ABI.
#pragma once

#include <cstdint>

#include "nativekv/nativekv.h"

struct nkv_context {
  nkv_backend backend = NKV_BACKEND_CPU;
  int32_t device_ordinal = 0;
  void* stream = nullptr;  // cudaStream_t on CUDA
  bool owns_stream = false;
  // Read once at creation (CUDA): kernels pick tiles and split counts from these.
  int32_t multiprocessor_count = 0;
  int32_t compute_capability = 0;  // major * 10 + minor
  int64_t shared_memory_per_block = 0;  // the opt-in maximum, bytes
  bool hopper_kernels = false;      // sm_90a device code present and runnable (compute capability 9.0)
};

struct nkv_buffer {
  nkv_context* context = nullptr;
  void* data = nullptr;
  uint64_t size_bytes = 0;
};

namespace nkv {

inline nkv_device_type device_type_of(const nkv_context& context) {
  return context.backend == NKV_BACKEND_CUDA ? NKV_DEVICE_CUDA : NKV_DEVICE_HOST;
}

}  // namespace nkv
