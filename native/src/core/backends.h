// What each backend provides. The API layer validates arguments, then calls exactly one of these.
// The CUDA declarations are implemented in cuda/ when the library is built with CUDA, and by
// cuda/cuda_unavailable.cpp (reporting NKV_STATUS_NO_DEVICE) when it is not.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "nativekv/nativekv.h"

namespace nkv {

namespace cpu {
void* allocate(uint64_t size_bytes);
void release(void* data) noexcept;
}  // namespace cpu

namespace cuda {
// Number of devices; 0 with `reason` set when there is no driver or device.
int32_t device_count(std::string& reason);
void device_properties(int32_t ordinal, nkv_device_properties& out);
void* create_stream(int32_t ordinal);
void destroy_stream(int32_t ordinal, void* stream) noexcept;
void synchronize(int32_t ordinal, void* stream);
void* allocate(int32_t ordinal, uint64_t size_bytes);
void release(int32_t ordinal, void* data) noexcept;
void upload(int32_t ordinal, void* stream, void* device_destination, const void* host_source, uint64_t size_bytes);
void download(int32_t ordinal, void* stream, void* host_destination, const void* device_source, uint64_t size_bytes);
void copy(int32_t ordinal, void* stream, void* device_destination, const void* device_source, uint64_t size_bytes);
void memset(int32_t ordinal, void* stream, void* device_destination, int32_t value, uint64_t size_bytes);
// Whether this library carries sm_90a device code that runs on device `ordinal` (a one-off probe launch).
bool hopper_kernels_available(int32_t ordinal);
}  // namespace cuda

}  // namespace nkv
