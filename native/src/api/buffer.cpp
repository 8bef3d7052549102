#include <cstring>
#include <memory>
#include <string>

#include "core/api_guard.h"
#include "core/backends.h"
#include "core/context_memory.h"
#include "core/handles.h"
#include "core/tensor_checks.h"

using namespace nkv;

namespace {

const nkv_buffer& check_buffer(const nkv_buffer* buffer, const char* name) {
  if (buffer == nullptr) fail_argument(std::string("argument '") + name + "' must not be NULL");
  return *buffer;
}

// [offset, offset + size) must lie inside the buffer; written so that no sum can overflow.
void check_range(const nkv_buffer& buffer, const char* name, uint64_t offset, uint64_t size) {
  if (offset > buffer.size_bytes || size > buffer.size_bytes - offset) {
    fail_argument(std::string("argument '") + name + "': range [" + std::to_string(offset) + ", " + std::to_string(offset) +
                  " + " + std::to_string(size) + ") exceeds the buffer's " + std::to_string(buffer.size_bytes) + " bytes");
  }
}

char* at(const nkv_buffer& buffer, uint64_t offset) { return static_cast<char*>(buffer.data) + offset; }

}  // namespace

extern "C" {

NKV_API nkv_status nkv_buffer_create(nkv_context* context, uint64_t size_bytes, nkv_buffer** out_buffer) {
  return guard("nkv_buffer_create", [&] {
    const nkv_context& c = check_context(context);
    require_out(out_buffer, "out_buffer");
    auto buffer = std::make_unique<nkv_buffer>();
    buffer->context = context;
    buffer->size_bytes = size_bytes;
    buffer->data = allocate_on(c, size_bytes);
    *out_buffer = buffer.release();
  });
}

NKV_API nkv_status nkv_buffer_destroy(nkv_buffer* buffer) {
  return guard("nkv_buffer_destroy", [&] {
    if (buffer == nullptr) return;
    release_on(*buffer->context, buffer->data);
    delete buffer;
  });
}

NKV_API nkv_status nkv_buffer_data(const nkv_buffer* buffer, void** out_data) {
  return guard("nkv_buffer_data", [&] {
    const nkv_buffer& b = check_buffer(buffer, "buffer");
    require_out(out_data, "out_data");
    *out_data = b.data;
  });
}

NKV_API nkv_status nkv_buffer_size(const nkv_buffer* buffer, uint64_t* out_size_bytes) {
  return guard("nkv_buffer_size", [&] {
    const nkv_buffer& b = check_buffer(buffer, "buffer");
    require_out(out_size_bytes, "out_size_bytes");
    *out_size_bytes = b.size_bytes;
  });
}

NKV_API nkv_status nkv_buffer_device(const nkv_buffer* buffer, int32_t* out_device) {
  return guard("nkv_buffer_device", [&] {
    const nkv_buffer& b = check_buffer(buffer, "buffer");
    require_out(out_device, "out_device");
    *out_device = device_type_of(*b.context);
  });
}

NKV_API nkv_status nkv_buffer_upload(nkv_buffer* buffer, uint64_t offset_bytes, const void* host_source,
                                     uint64_t size_bytes) {
  return guard("nkv_buffer_upload", [&] {
    const nkv_buffer& b = check_buffer(buffer, "buffer");
    check_range(b, "offset_bytes/size_bytes", offset_bytes, size_bytes);
    if (size_bytes == 0) return;
    if (host_source == nullptr) fail_argument("argument 'host_source' must not be NULL");
    upload_to(*b.context, at(b, offset_bytes), host_source, size_bytes);
  });
}

NKV_API nkv_status nkv_buffer_download(const nkv_buffer* buffer, uint64_t offset_bytes, void* host_destination,
                                       uint64_t size_bytes) {
  return guard("nkv_buffer_download", [&] {
    const nkv_buffer& b = check_buffer(buffer, "buffer");
    check_range(b, "offset_bytes/size_bytes", offset_bytes, size_bytes);
    if (size_bytes == 0) return;
    if (host_destination == nullptr) fail_argument("argument 'host_destination' must not be NULL");
    download_from(*b.context, host_destination, at(b, offset_bytes), size_bytes);
  });
}

NKV_API nkv_status nkv_buffer_copy(nkv_buffer* destination, uint64_t destination_offset_bytes,
                                   const nkv_buffer* source, uint64_t source_offset_bytes, uint64_t size_bytes) {
  return guard("nkv_buffer_copy", [&] {
    const nkv_buffer& d = check_buffer(destination, "destination");
    const nkv_buffer& s = check_buffer(source, "source");
    if (d.context != s.context) fail_argument("arguments 'destination' and 'source' belong to different contexts");
    check_range(d, "destination_offset_bytes/size_bytes", destination_offset_bytes, size_bytes);
    check_range(s, "source_offset_bytes/size_bytes", source_offset_bytes, size_bytes);
    // cudaMemcpy does not define overlapping copies, so neither backend accepts them.
    if (&d == &s && source_offset_bytes < destination_offset_bytes + size_bytes &&
        destination_offset_bytes < source_offset_bytes + size_bytes) {
      fail_argument("arguments 'destination' and 'source': the ranges [" + std::to_string(destination_offset_bytes) + ", +" +
                    std::to_string(size_bytes) + ") and [" + std::to_string(source_offset_bytes) + ", +" +
                    std::to_string(size_bytes) + ") of the same buffer overlap");
    }
    if (size_bytes == 0) return;
    copy_within(*d.context, at(d, destination_offset_bytes), at(s, source_offset_bytes), size_bytes);
  });
}

NKV_API nkv_status nkv_buffer_memset(nkv_buffer* buffer, uint64_t offset_bytes, int32_t value, uint64_t size_bytes) {
  return guard("nkv_buffer_memset", [&] {
    const nkv_buffer& b = check_buffer(buffer, "buffer");
    check_range(b, "offset_bytes/size_bytes", offset_bytes, size_bytes);
    if (value < 0 || value > 255) fail_argument("argument 'value': expected 0..255, got " + std::to_string(value));
    if (size_bytes == 0) return;
    const nkv_context& c = *b.context;
    if (c.backend == NKV_BACKEND_CUDA) {
      cuda::memset(c.device_ordinal, c.stream, at(b, offset_bytes), value, size_bytes);
    } else {
      std::memset(at(b, offset_bytes), value, size_bytes);
    }
  });
}

}  // extern "C"
