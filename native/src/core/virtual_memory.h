// Reserved address space with physical pages mapped into it on demand: CUDA's virtual memory management
// on the CUDA backend, mmap of a memory file on the CPU backend (so the virtual KV cache's every test also
// runs without a GPU). One page is `page_bytes()`, the mapping granularity; a physical page may be mapped
// at several addresses at once (prefix sharing).
#pragma once

#include <cstdint>
#include <memory>

namespace nkv {

class VirtualMemory {
 public:
  virtual ~VirtualMemory() = default;
  virtual uint64_t page_bytes() const = 0;
  // Address space for `bytes` (a multiple of page_bytes), nothing mapped; fails with NKV_STATUS_OUT_OF_MEMORY.
  virtual void* reserve(uint64_t bytes) = 0;
  virtual void free_reservation(void* base, uint64_t bytes) noexcept = 0;
  // A physical page (its contents unspecified); NKV_STATUS_OUT_OF_MEMORY when the device has none left.
  virtual uint64_t create_page() = 0;
  virtual void release_page(uint64_t page) noexcept = 0;
  // Maps pages[0..count) at consecutive pages from `address` (page-aligned, inside a reservation, not
  // mapped) for reading and writing; on failure none of them stays mapped.
  virtual void map(void* address, const uint64_t* pages, size_t count) = 0;
  virtual void unmap(void* address) = 0;
  // Safe to call from several threads at once (the cache maps from its background thread too).
};

namespace cpu {
std::unique_ptr<VirtualMemory> virtual_memory();
}  // namespace cpu

namespace cuda {
// NKV_STATUS_NOT_SUPPORTED when device `ordinal` has no virtual memory management.
std::unique_ptr<VirtualMemory> virtual_memory(int32_t ordinal);
}  // namespace cuda

}  // namespace nkv
