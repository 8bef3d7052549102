// CUDA runtime errors become nkv::Error with the failing call and CUDA's own words.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "core/error.h"

namespace nkv::cuda {

[[noreturn]] inline void fail_cuda(cudaError_t error, const char* call) {
  cudaGetLastError();  // clear a sticky-free error so the next call starts clean
  const nkv_status status = error == cudaErrorMemoryAllocation ? NKV_STATUS_OUT_OF_MEMORY
                            : (error == cudaErrorNoDevice || error == cudaErrorInsufficientDriver)
                                ? NKV_STATUS_NO_DEVICE
                                : NKV_STATUS_DEVICE_ERROR;
  fail(status, std::string(call) + " failed: " + cudaGetErrorString(error) + " (" + cudaGetErrorName(error) + ")");
}

inline void check(cudaError_t error, const char* call) {
  if (error != cudaSuccess) fail_cuda(error, call);
}

// Makes `ordinal` current for the scope and restores the caller's device afterwards, so that NativeKv
// never changes the current device of the engine that calls it.
class DeviceScope {
 public:
  explicit DeviceScope(int32_t ordinal) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != ordinal) check(cudaSetDevice(ordinal), "cudaSetDevice");
  }
  ~DeviceScope() {
    int current = previous_;
    if (cudaGetDevice(&current) == cudaSuccess && current != previous_) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace nkv::cuda

#define NKV_CUDA_CHECK(call) ::nkv::cuda::check((call), #call)
