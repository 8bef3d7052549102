// Every exported function runs its body through guard(): exceptions become a status code and the
// calling thread's last-error message, prefixed with the function's name. Nothing escapes the ABI.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>

#include "core/error.h"

namespace nkv {

template <typename Body>
nkv_status guard(const char* function, Body&& body) noexcept {
  try {
    clear_last_error();
    body();
    return NKV_STATUS_SUCCESS;
  } catch (const Error& e) {
    set_last_error(std::string(function) + ": " + e.what());
    return e.status();
  } catch (const std::bad_alloc&) {
    set_last_error(std::string(function) + ": host memory allocation failed");
    return NKV_STATUS_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    set_last_error(std::string(function) + ": internal error: " + e.what());
    return NKV_STATUS_INTERNAL;
  } catch (...) {
    set_last_error(std::string(function) + ": internal error: unknown exception");
    return NKV_STATUS_INTERNAL;
  }
}

// Checks an out-pointer argument before any work is done.
template <typename T>
void require_out(T* pointer, const char* name) {
  if (pointer == nullptr) fail_argument(std::string("argument '") + name + "' must not be NULL");
}

// The object behind a handle argument (a cache, a plan), after checking that it is not NULL.
template <typename T>
T& require_handle(T* pointer, const char* name) {
  require_out(pointer, name);
  return *pointer;
}

// A parameter or output struct whose size the caller sets: struct_size must cover at least `first_size`
// bytes (the struct as first published); fields appended later are read or written only when the
// caller's struct_size covers them.
inline void check_struct_size(const char* argument, uint32_t struct_size, size_t first_size, const char* struct_name) {
  if (struct_size < first_size) {
    fail_argument(std::string("argument '") + argument + "': struct_size " + std::to_string(struct_size) +
                  " is smaller than " + std::to_string(first_size) + " (" + struct_name + ")");
  }
}

// Writes `value` to an output struct whose caller may have an older header: only the bytes that the
// caller's struct_size covers (at least `first_size`), with struct_size set to what was written.
template <typename T>
void write_sized_struct(T* out, T value, const char* argument, size_t first_size, const char* struct_name) {
  check_struct_size(argument, out->struct_size, first_size, struct_name);
  const size_t filled = std::min<size_t>(out->struct_size, sizeof(T));
  value.struct_size = static_cast<uint32_t>(filled);
  std::memcpy(out, &value, filled);
}

}  // namespace nkv
