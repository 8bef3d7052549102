#include "core/error.h"
#include "nativekv_build_version.h"

static_assert(NKV_BUILD_ABI_VERSION == NKV_ABI_VERSION, "CMake's NKV_ABI_VERSION and nativekv.h disagree");

extern "C" {

NKV_API const char* nkv_version(void) { return NKV_VERSION_STRING; }

NKV_API uint32_t nkv_abi_version(void) { return NKV_ABI_VERSION; }

NKV_API const char* nkv_last_error(void) { return nkv::last_error(); }

NKV_API const char* nkv_status_name(nkv_status status) { return nkv::status_name(status); }

NKV_API size_t nkv_dtype_size(int32_t dtype) {
  switch (dtype) {
    case NKV_DTYPE_FLOAT32: return 4;
    case NKV_DTYPE_FLOAT16: return 2;
    case NKV_DTYPE_BFLOAT16: return 2;
    case NKV_DTYPE_INT8: return 1;
    case NKV_DTYPE_UINT8: return 1;
    case NKV_DTYPE_INT32: return 4;
    case NKV_DTYPE_INT64: return 8;
    case NKV_DTYPE_FLOAT64: return 8;
    default: return 0;
  }
}

}  // extern "C"
