#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/backends.h"
#include "core/error.h"

namespace nkv::cpu {

namespace {
constexpr uint64_t kAlignment = 256;  // same alignment cudaMalloc gives, so vectorized paths behave alike
}

void* allocate(uint64_t size_bytes) {
  // Rounding up must not wrap: a request near UINT64_MAX would otherwise become a tiny allocation.
  if (size_bytes > static_cast<uint64_t>(PTRDIFF_MAX) - kAlignment) {
    fail(NKV_STATUS_OUT_OF_MEMORY, "host allocation of " + std::to_string(size_bytes) + " bytes is larger than the address space allows");
  }
  const uint64_t rounded = (size_bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* data = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
  if (data == nullptr) {
    fail(NKV_STATUS_OUT_OF_MEMORY, "host allocation of " + std::to_string(size_bytes) + " bytes failed");
  }
  return data;
}

void release(void* data) noexcept { std::free(data); }

}  // namespace nkv::cpu
