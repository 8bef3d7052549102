// Errors inside the library are C++ exceptions carrying an nkv_status; the API layer (api_guard.h)
// turns them into a status code plus the thread's last-error message. Nothing crosses the C ABI.
#pragma once

#include <stdexcept>
#include <string>

#include "nativekv/nativekv.h"

namespace nkv {

class Error : public std::runtime_error {
 public:
  Error(nkv_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  nkv_status status() const noexcept { return status_; }

 private:
  nkv_status status_;
};

[[noreturn]] void fail(nkv_status status, const std::string& message);
[[noreturn]] inline void fail_argument(const std::string& message) { fail(NKV_STATUS_INVALID_ARGUMENT, message); }

void set_last_error(const std::string& message);
void clear_last_error();
const char* last_error();

const char* status_name(nkv_status status);

}  // namespace nkv
