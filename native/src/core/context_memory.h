// Memory of a context, whichever its backend: the context's device on CUDA (operations ordered on its
// stream), the host on the CPU backend. One place for the backend choice of every API object that owns
// memory (buffers, caches).
#pragma once

#include <cstdint>
#include <cstring>

#include "core/backends.h"
#include "core/handles.h"

namespace nkv {

inline void* allocate_on(const nkv_context& c, uint64_t bytes) {
  return c.backend == NKV_BACKEND_CUDA ? cuda::allocate(c.device_ordinal, bytes) : cpu::allocate(bytes);
}

inline void release_on(const nkv_context& c, void* data) noexcept {
  if (c.backend == NKV_BACKEND_CUDA) {
    cuda::release(c.device_ordinal, data);
  } else {
    cpu::release(data);
  }
}

// Host memory into the context's (complete on return; the source may change right after).
inline void upload_to(const nkv_context& c, void* destination, const void* host_source, uint64_t bytes) {
  if (c.backend == NKV_BACKEND_CUDA) {
    cuda::upload(c.device_ordinal, c.stream, destination, host_source, bytes);
  } else {
    std::memcpy(destination, host_source, bytes);
  }
}

inline void download_from(const nkv_context& c, void* host_destination, const void* source, uint64_t bytes) {
  if (c.backend == NKV_BACKEND_CUDA) {
    cuda::download(c.device_ordinal, c.stream, host_destination, source, bytes);
  } else {
    std::memcpy(host_destination, source, bytes);
  }
}

// Waits for the work queued on the context's stream (nothing to wait for on the CPU backend).
inline void synchronize_on(const nkv_context& c) {
  if (c.backend == NKV_BACKEND_CUDA) cuda::synchronize(c.device_ordinal, c.stream);
}

// Within the context's memory; on CUDA asynchronous on the context's stream.
inline void copy_within(const nkv_context& c, void* destination, const void* source, uint64_t bytes) {
  if (c.backend == NKV_BACKEND_CUDA) {
    cuda::copy(c.device_ordinal, c.stream, destination, source, bytes);
  } else {
    std::memcpy(destination, source, bytes);
  }
}

}  // namespace nkv
