// CUDA's virtual memory management for the virtual KV cache: cuMemAddressReserve, then one cuMemCreate'd
// handle per page mapped with cuMemMap + cuMemSetAccess. The driver functions come through the runtime's
// entry-point query, so the library does not link libcuda (it still loads on machines without a driver).
// Costs per 2 MiB page on an H100 (native/src/cuda/kvcache/RESEARCH.md): create 9 µs, map 1 µs, set
// access 27 µs, unmap 17 µs, release 11 µs; none of them waits for the GPU.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <string>

#include "core/virtual_memory.h"
#include "cuda/common/cuda_check.h"

namespace nkv::cuda {
namespace {

struct Driver {
  PFN_cuGetErrorName_v6000 get_error_name = nullptr;
  PFN_cuDeviceGetAttribute_v2000 device_attribute = nullptr;
  PFN_cuMemGetAllocationGranularity_v10020 granularity = nullptr;
  PFN_cuMemAddressReserve_v10020 address_reserve = nullptr;
  PFN_cuMemAddressFree_v10020 address_free = nullptr;
  PFN_cuMemCreate_v10020 create = nullptr;
  PFN_cuMemRelease_v10020 release = nullptr;
  PFN_cuMemMap_v10020 map = nullptr;
  PFN_cuMemUnmap_v10020 unmap = nullptr;
  PFN_cuMemSetAccess_v10020 set_access = nullptr;
};

template <typename Function>
void entry_point(const char* name, Function& out) {
  void* function = nullptr;
  cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
  NKV_CUDA_CHECK(cudaGetDriverEntryPointByVersion(name, &function, 12000, cudaEnableDefault, &found));
#else
  NKV_CUDA_CHECK(cudaGetDriverEntryPoint(name, &function, cudaEnableDefault, &found));
#endif
  if (found != cudaDriverEntryPointSuccess || function == nullptr) {
    fail(NKV_STATUS_NOT_SUPPORTED, std::string("the CUDA driver does not provide ") + name);
  }
  out = reinterpret_cast<Function>(function);
}

const Driver& driver() {
  static const Driver d = [] {
    Driver x;
    entry_point("cuGetErrorName", x.get_error_name);
    entry_point("cuDeviceGetAttribute", x.device_attribute);
    entry_point("cuMemGetAllocationGranularity", x.granularity);
    entry_point("cuMemAddressReserve", x.address_reserve);
    entry_point("cuMemAddressFree", x.address_free);
    entry_point("cuMemCreate", x.create);
    entry_point("cuMemRelease", x.release);
    entry_point("cuMemMap", x.map);
    entry_point("cuMemUnmap", x.unmap);
    entry_point("cuMemSetAccess", x.set_access);
    return x;
  }();
  return d;
}

void check_driver(CUresult result, const char* call) {
  if (result == CUDA_SUCCESS) return;
  const char* name = "?";
  driver().get_error_name(result, &name);
  fail(result == CUDA_ERROR_OUT_OF_MEMORY ? NKV_STATUS_OUT_OF_MEMORY : NKV_STATUS_DEVICE_ERROR,
       std::string(call) + " failed: " + name);
}

class DeviceVirtualMemory final : public VirtualMemory {
 public:
  explicit DeviceVirtualMemory(int32_t ordinal) : ordinal_(ordinal) {
    DeviceScope scope(ordinal);
    NKV_CUDA_CHECK(cudaFree(nullptr));  // the primary context, current on this thread
    const Driver& d = driver();
    int supported = 0;
    check_driver(d.device_attribute(&supported, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, ordinal),
                 "cuDeviceGetAttribute(VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED)");
    if (!supported) fail(NKV_STATUS_NOT_SUPPORTED, "device " + std::to_string(ordinal) + " has no virtual memory management");
    prop_.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop_.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop_.location.id = ordinal;
    size_t granularity = 0;
    check_driver(d.granularity(&granularity, &prop_, CU_MEM_ALLOC_GRANULARITY_MINIMUM), "cuMemGetAllocationGranularity");
    page_bytes_ = granularity;
    access_.location = prop_.location;
    access_.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  }

  uint64_t page_bytes() const override { return page_bytes_; }

  void* reserve(uint64_t bytes) override {
    DeviceScope scope(ordinal_);
    CUdeviceptr base = 0;
    check_driver(driver().address_reserve(&base, bytes, page_bytes_, 0, 0), "cuMemAddressReserve");
    return reinterpret_cast<void*>(base);
  }

  void free_reservation(void* base, uint64_t bytes) noexcept override {
    driver().address_free(reinterpret_cast<CUdeviceptr>(base), bytes);
  }

  uint64_t create_page() override {
    DeviceScope scope(ordinal_);
    CUmemGenericAllocationHandle handle = 0;
    check_driver(driver().create(&handle, page_bytes_, &prop_, 0), "cuMemCreate");
    return handle;
  }

  void release_page(uint64_t page) noexcept override { driver().release(page); }

  // One cuMemSetAccess for the whole range: each call changes the GPU's page tables under running kernels.
  void map(void* address, const uint64_t* pages, size_t count) override {
    DeviceScope scope(ordinal_);
    const Driver& d = driver();
    const CUdeviceptr at = reinterpret_cast<CUdeviceptr>(address);
    size_t mapped = 0;
    CUresult result = CUDA_SUCCESS;
    for (; mapped < count; ++mapped) {
      result = d.map(at + mapped * page_bytes_, page_bytes_, 0, pages[mapped], 0);
      if (result != CUDA_SUCCESS) break;
    }
    const char* call = "cuMemMap";
    if (result == CUDA_SUCCESS) {
      result = d.set_access(at, count * page_bytes_, &access_, 1);
      call = "cuMemSetAccess";
    }
    if (result != CUDA_SUCCESS) {
      while (mapped-- > 0) d.unmap(at + mapped * page_bytes_, page_bytes_);
      check_driver(result, call);
    }
  }

  void unmap(void* address) override {
    DeviceScope scope(ordinal_);
    check_driver(driver().unmap(reinterpret_cast<CUdeviceptr>(address), page_bytes_), "cuMemUnmap");
  }

 private:
  int32_t ordinal_;
  uint64_t page_bytes_ = 0;
  CUmemAllocationProp prop_{};
  CUmemAccessDesc access_{};
};

}  // namespace

std::unique_ptr<VirtualMemory> virtual_memory(int32_t ordinal) { return std::make_unique<DeviceVirtualMemory>(ordinal); }

}  // namespace nkv::cuda
