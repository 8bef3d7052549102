// The CPU backend's virtual memory: a PROT_NONE reservation, and physical pages that are ranges of one
// memory file (memfd), mapped MAP_SHARED|MAP_FIXED into it, so that one page can appear at several
// addresses as on a GPU. A released page's range is punched out of the file (its memory returned).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/virtual_memory.h"

namespace nkv::cpu {
namespace {

// The GPUs' granularity, so that page and block arithmetic is the same on both backends.
constexpr uint64_t kPageBytes = 2u << 20;

[[noreturn]] void fail_errno(nkv_status status, const std::string& what) {
  fail(status, what + ": " + std::strerror(errno));
}

class HostVirtualMemory final : public VirtualMemory {
 public:
  HostVirtualMemory() {
    fd_ = memfd_create("nativekv-virtual-kv-cache", MFD_CLOEXEC);
    if (fd_ < 0) fail_errno(NKV_STATUS_OUT_OF_MEMORY, "memfd_create for the virtual KV cache's pages");
  }
  ~HostVirtualMemory() override { close(fd_); }

  uint64_t page_bytes() const override { return kPageBytes; }

  void* reserve(uint64_t bytes) override {
    void* base = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) fail_errno(NKV_STATUS_OUT_OF_MEMORY, "reserving " + std::to_string(bytes) + " bytes of address space");
    return base;
  }

  void free_reservation(void* base, uint64_t bytes) noexcept override { munmap(base, bytes); }

  uint64_t create_page() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!free_offsets_.empty()) {
      const uint64_t offset = free_offsets_.back();
      free_offsets_.pop_back();
      return offset;
    }
    const uint64_t offset = file_pages_ * kPageBytes;
    if (ftruncate(fd_, static_cast<off_t>(offset + kPageBytes)) != 0) fail_errno(NKV_STATUS_OUT_OF_MEMORY, "growing the page file");
    ++file_pages_;
    return offset;
  }

  void release_page(uint64_t page) noexcept override {
    std::lock_guard<std::mutex> lock(mutex_);
    fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(page), static_cast<off_t>(kPageBytes));
    free_offsets_.push_back(page);
  }

  void map(void* address, const uint64_t* pages, size_t count) override {
    char* at = static_cast<char*>(address);
    for (size_t i = 0; i < count; ++i) {
      if (mmap(at + i * kPageBytes, kPageBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd_, static_cast<off_t>(pages[i])) ==
          MAP_FAILED) {
        const int error = errno;
        while (i-- > 0) unmap(at + i * kPageBytes);
        errno = error;
        fail_errno(NKV_STATUS_OUT_OF_MEMORY, "mapping a page of the virtual KV cache");
      }
    }
  }

  void unmap(void* address) override {
    // Back to reserved, inaccessible address space (munmap would give the range away).
    if (mmap(address, kPageBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED) {
      fail_errno(NKV_STATUS_INTERNAL, "unmapping a page of the virtual KV cache");
    }
  }

 private:
  int fd_ = -1;
  std::mutex mutex_;
  uint64_t file_pages_ = 0;
  std::vector<uint64_t> free_offsets_;  // punched-out ranges of the file, reused before it grows
};

}  // namespace

std::unique_ptr<VirtualMemory> virtual_memory() { return std::make_unique<HostVirtualMemory>(); }

}  // namespace nkv::cpu
