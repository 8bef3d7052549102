// Helpers shared by the native suites: RAII handles, tensor views, random data, CUDA availability.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "nativekv/nativekv.h"

namespace nkv_test {

#define NKV_ASSERT_OK(call)                                                              \
  do {                                                                                   \
    const nkv_status nkv_status_ = (call);                                               \
    ASSERT_EQ(nkv_status_, NKV_STATUS_SUCCESS) << #call << ": " << nkv_last_error();     \
  } while (0)

// Expects `call` to fail with `status` and a message mentioning `needle`.
#define NKV_EXPECT_STATUS(call, status, needle)                                                              \
  do {                                                                                                       \
    const nkv_status nkv_status_ = (call);                                                                   \
    EXPECT_EQ(nkv_status_, status) << #call << ": " << nkv_last_error();                                     \
    EXPECT_NE(std::string(nkv_last_error()).find(needle), std::string::npos)                                 \
        << "message '" << nkv_last_error() << "' does not mention '" << (needle) << "'";                     \
  } while (0)

struct ContextDeleter {
  void operator()(nkv_context* c) const { nkv_context_destroy(c); }
};
using ContextPtr = std::unique_ptr<nkv_context, ContextDeleter>;

struct BufferDeleter {
  void operator()(nkv_buffer* b) const { nkv_buffer_destroy(b); }
};
using BufferPtr = std::unique_ptr<nkv_buffer, BufferDeleter>;

inline int32_t cuda_device_count() {
  int32_t count = 0;
  return nkv_cuda_device_count(&count) == NKV_STATUS_SUCCESS ? count : 0;
}

#define NKV_REQUIRE_CUDA()                                                                          \
  do {                                                                                              \
    if (::nkv_test::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << nkv_last_error(); \
  } while (0)

inline ContextPtr make_context(nkv_backend backend, void* stream = nullptr) {
  nkv_context_options options{sizeof(nkv_context_options), backend, 0, 0, stream};
  nkv_context* context = nullptr;
  const nkv_status status = nkv_context_create(&options, &context);
  EXPECT_EQ(status, NKV_STATUS_SUCCESS) << nkv_last_error();
  return ContextPtr(context);
}

inline nkv_device_type device_of(nkv_context* context) {
  int32_t backend = 0;
  nkv_context_backend(context, &backend);
  return backend == NKV_BACKEND_CUDA ? NKV_DEVICE_CUDA : NKV_DEVICE_HOST;
}

inline nkv_tensor view(void* data, nkv_dtype dtype, nkv_device_type device, std::vector<int64_t> shape,
                       std::vector<int64_t> strides = {}) {
  nkv_tensor t{};
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.ndim = static_cast<int32_t>(shape.size());
  if (strides.empty()) {
    strides.assign(shape.size(), 1);
    for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * shape[i + 1];
  }
  for (size_t i = 0; i < shape.size(); ++i) {
    t.shape[i] = shape[i];
    t.strides[i] = strides[i];
  }
  return t;
}

// Memory of one context: a host vector for CPU, a device buffer (mirrored on the host) for CUDA.
class Memory {
 public:
  Memory(nkv_context* context, size_t bytes) : context_(context) {
    nkv_buffer* b = nullptr;
    EXPECT_EQ(nkv_buffer_create(context, bytes, &b), NKV_STATUS_SUCCESS) << nkv_last_error();
    buffer_.reset(b);
  }
  void* data() const {
    void* d = nullptr;
    nkv_buffer_data(buffer_.get(), &d);
    return d;
  }
  void upload(const void* src, size_t bytes) {
    EXPECT_EQ(nkv_buffer_upload(buffer_.get(), 0, src, bytes), NKV_STATUS_SUCCESS) << nkv_last_error();
  }
  template <typename T>
  void upload(const std::vector<T>& v) { upload(v.data(), v.size() * sizeof(T)); }
  template <typename T>
  std::vector<T> download(size_t count) const {
    std::vector<T> out(count);
    EXPECT_EQ(nkv_buffer_synchronize_and_download(out.data(), count * sizeof(T)), NKV_STATUS_SUCCESS) << nkv_last_error();
    return out;
  }
  void fill(uint8_t byte, size_t bytes) {
    EXPECT_EQ(nkv_buffer_memset(buffer_.get(), 0, byte, bytes), NKV_STATUS_SUCCESS) << nkv_last_error();
    EXPECT_EQ(nkv_context_synchronize(context_), NKV_STATUS_SUCCESS) << nkv_last_error();
  }
  nkv_buffer* buffer() const { return buffer_.get(); }

 private:
  nkv_status nkv_buffer_synchronize_and_download(void* dst, size_t bytes) const {
    const nkv_status s = nkv_context_synchronize(context_);
    if (s != NKV_STATUS_SUCCESS) return s;
    return nkv_buffer_download(buffer_.get(), 0, dst, bytes);
  }
  nkv_context* context_;
  BufferPtr buffer_;
};

inline std::mt19937_64& rng() {
  static std::mt19937_64 engine(std::random_device{}());
  return engine;
}

}  // namespace nkv_test
