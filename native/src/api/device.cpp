#include <cstring>
#include <string>

#include "core/api_guard.h"
#include "core/backends.h"

using namespace nkv;

extern "C" {

NKV_API nkv_status nkv_cuda_device_count(int32_t* out_count) {
  return guard("nkv_cuda_device_count", [&] {
    require_out(out_count, "out_count");
    std::string reason;
    *out_count = cuda::device_count(reason);
    // Success either way; with no device the reason stays readable through nkv_last_error().
    if (!reason.empty()) set_last_error("nkv_cuda_device_count: " + reason);
  });
}

NKV_API nkv_status nkv_cuda_device_properties(int32_t ordinal, nkv_device_properties* out) {
  return guard("nkv_cuda_device_properties", [&] {
    require_out(out, "out");
    check_struct_size("out", out->struct_size, sizeof(nkv_device_properties), "sizeof(nkv_device_properties)");
    std::string reason;
    const int32_t count = cuda::device_count(reason);
    if (count == 0) fail(NKV_STATUS_NO_DEVICE, reason);
    if (ordinal < 0 || ordinal >= count) {
      fail_argument("argument 'ordinal': expected 0.." + std::to_string(count - 1) + ", got " + std::to_string(ordinal));
    }
    nkv_device_properties props{};
    props.struct_size = out->struct_size;
    cuda::device_properties(ordinal, props);
    std::memcpy(out, &props, sizeof props);
  });
}

}  // extern "C"
