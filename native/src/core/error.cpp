#include "core/error.h"

namespace nkv {
namespace {
thread_local std::string g_last_error;
}

void fail(nkv_status status, const std::string& message) { throw Error(status, message); }

void set_last_error(const std::string& message) { g_last_error = message; }
void clear_last_error() { g_last_error.clear(); }
const char* last_error() { return g_last_error.c_str(); }

const char* status_name(nkv_status status) {
  switch (status) {
    case NKV_STATUS_SUCCESS: return "NKV_STATUS_SUCCESS";
    case NKV_STATUS_INVALID_ARGUMENT: return "NKV_STATUS_INVALID_ARGUMENT";
    case NKV_STATUS_NOT_SUPPORTED: return "NKV_STATUS_NOT_SUPPORTED";
    case NKV_STATUS_NO_DEVICE: return "NKV_STATUS_NO_DEVICE";
    case NKV_STATUS_OUT_OF_MEMORY: return "NKV_STATUS_OUT_OF_MEMORY";
    case NKV_STATUS_DEVICE_ERROR: return "NKV_STATUS_DEVICE_ERROR";
    case NKV_STATUS_INTERNAL: return "NKV_STATUS_INTERNAL";
  }
  return "NKV_STATUS_UNKNOWN";
}

}  // namespace nkv
