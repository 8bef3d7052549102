// CUDA runtime services: devices, streams, memory. Host code; kernels live in the op folders.
#include <cstring>
#include <string>

#include "core/backends.h"
#include "cuda/common/cuda_check.h"

namespace nkv::cuda {

int32_t device_count(std::string& reason) {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    cudaGetLastError();
    reason = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(error) + " (" + cudaGetErrorName(error) + ")";
    return 0;
  }
  if (count == 0) reason = "the CUDA driver reports no devices";
  return count;
}

void device_properties(int32_t ordinal, nkv_device_properties& out) {
  auto attribute = [ordinal](cudaDeviceAttr which, const char* name) {
    int value = 0;
    check(cudaDeviceGetAttribute(&value, which, ordinal), name);
    return value;
  };
  cudaDeviceProp props{};
  NKV_CUDA_CHECK(cudaGetDeviceProperties(&props, ordinal));
  size_t free_bytes = 0, total_bytes = 0;
  {
    DeviceScope scope(ordinal);
    NKV_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  }
  out.ordinal = ordinal;
  static_assert(sizeof out.name == sizeof props.name, "device name buffers differ");
  std::memcpy(out.name, props.name, sizeof out.name);
  out.name[sizeof out.name - 1] = '\0';
  out.compute_capability_major = attribute(cudaDevAttrComputeCapabilityMajor, "cudaDevAttrComputeCapabilityMajor");
  out.compute_capability_minor = attribute(cudaDevAttrComputeCapabilityMinor, "cudaDevAttrComputeCapabilityMinor");
  out.multiprocessor_count = attribute(cudaDevAttrMultiProcessorCount, "cudaDevAttrMultiProcessorCount");
  out.l2_cache_bytes = attribute(cudaDevAttrL2CacheSize, "cudaDevAttrL2CacheSize");
  out.total_memory_bytes = total_bytes;
  out.shared_memory_per_block_optin_bytes = static_cast<uint64_t>(
      attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, "cudaDevAttrMaxSharedMemoryPerBlockOptin"));
  out.memory_bus_width_bits = attribute(cudaDevAttrGlobalMemoryBusWidth, "cudaDevAttrGlobalMemoryBusWidth");
  out.reserved = 0;
}

void* create_stream(int32_t ordinal) {
  DeviceScope scope(ordinal);
  cudaStream_t stream = nullptr;
  NKV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return stream;
}

void destroy_stream(int32_t ordinal, void* stream) noexcept {
  try {
    DeviceScope scope(ordinal);
    cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
    cudaStreamDestroy(static_cast<cudaStream_t>(stream));
  } catch (...) {
  }
}

void synchronize(int32_t ordinal, void* stream) {
  DeviceScope scope(ordinal);
  NKV_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

void* allocate(int32_t ordinal, uint64_t size_bytes) {
  DeviceScope scope(ordinal);
  void* data = nullptr;
  const cudaError_t error = cudaMalloc(&data, size_bytes == 0 ? 256 : size_bytes);
  if (error != cudaSuccess) {
    cudaGetLastError();
    fail(error == cudaErrorMemoryAllocation ? NKV_STATUS_OUT_OF_MEMORY : NKV_STATUS_DEVICE_ERROR,
         "cudaMalloc of " + std::to_string(size_bytes) + " bytes on device " + std::to_string(ordinal) +
             " failed: " + cudaGetErrorString(error));
  }
  return data;
}

void release(int32_t ordinal, void* data) noexcept {
  try {
    DeviceScope scope(ordinal);
    cudaFree(data);
  } catch (...) {
  }
}

void upload(int32_t ordinal, void* stream, void* device_destination, const void* host_source, uint64_t size_bytes) {
  DeviceScope scope(ordinal);
  auto s = static_cast<cudaStream_t>(stream);
  NKV_CUDA_CHECK(cudaMemcpyAsync(device_destination, host_source, size_bytes, cudaMemcpyHostToDevice, s));
  NKV_CUDA_CHECK(cudaStreamSynchronize(s));
}

void download(int32_t ordinal, void* stream, void* host_destination, const void* device_source, uint64_t size_bytes) {
  DeviceScope scope(ordinal);
  auto s = static_cast<cudaStream_t>(stream);
  NKV_CUDA_CHECK(cudaMemcpyAsync(host_destination, device_source, size_bytes, cudaMemcpyDeviceToHost, s));
  NKV_CUDA_CHECK(cudaStreamSynchronize(s));
}

void copy(int32_t ordinal, void* stream, void* device_destination, const void* device_source, uint64_t size_bytes) {
  DeviceScope scope(ordinal);
  NKV_CUDA_CHECK(cudaMemcpyAsync(device_destination, device_source, size_bytes, cudaMemcpyDeviceToDevice,
                                 static_cast<cudaStream_t>(stream)));
}

void memset(int32_t ordinal, void* stream, void* device_destination, int32_t value, uint64_t size_bytes) {
  DeviceScope scope(ordinal);
  NKV_CUDA_CHECK(cudaMemsetAsync(device_destination, value, size_bytes, static_cast<cudaStream_t>(stream)));
}

}  // namespace nkv::cuda
