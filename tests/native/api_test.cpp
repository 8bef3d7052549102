// The C ABI's non-op surface: versions, errors, devices, contexts, buffers, introspection.
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <thread>
#include <set>
#include <string>

#include "core/float_bits.h"
#include "test_support.h"

using namespace nkv_test;

TEST(Version, ReportsVersionAndAbi) {
  EXPECT_EQ(nkv_abi_version(), static_cast<uint32_t>(NKV_ABI_VERSION));
  const std::string version = nkv_version();
  EXPECT_EQ(std::count(version.begin(), version.end(), '.'), 2) << version;
}

TEST(Status, NamesEveryStatus) {
  EXPECT_STREQ(nkv_status_name(NKV_STATUS_SUCCESS), "NKV_STATUS_SUCCESS");
  EXPECT_STREQ(nkv_status_name(NKV_STATUS_INVALID_ARGUMENT), "NKV_STATUS_INVALID_ARGUMENT");
  EXPECT_STREQ(nkv_status_name(NKV_STATUS_INTERNAL), "NKV_STATUS_INTERNAL");
  nkv_status unknown;
  const int raw = 77;
  std::memcpy(&unknown, &raw, sizeof unknown);
  EXPECT_STREQ(nkv_status_name(unknown), "NKV_STATUS_UNKNOWN");
}

TEST(Status, LastErrorIsPerThreadAndClearedBySuccess) {
  EXPECT_EQ(nkv_context_backend(nullptr, nullptr), NKV_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(nkv_last_error()).find("nkv_context_backend"), std::string::npos);
  std::string other_thread_error = "unset";
  std::thread([&] { other_thread_error = nkv_last_error(); }).join();
  EXPECT_EQ(other_thread_error, "");
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  int32_t backend = -1;
  NKV_ASSERT_OK(nkv_context_backend(cpu.get(), &backend));
  EXPECT_STREQ(nkv_last_error(), "");
}

TEST(Tensor, DtypeSizes) {
  EXPECT_EQ(nkv_dtype_size(NKV_DTYPE_FLOAT32), 4u);
  EXPECT_EQ(nkv_dtype_size(NKV_DTYPE_FLOAT16), 2u);
  EXPECT_EQ(nkv_dtype_size(NKV_DTYPE_BFLOAT16), 2u);
  EXPECT_EQ(nkv_dtype_size(NKV_DTYPE_INT8), 1u);
  EXPECT_EQ(nkv_dtype_size(NKV_DTYPE_INT64), 8u);
  EXPECT_EQ(nkv_dtype_size(99), 0u);
}

TEST(Context, CpuContextHasNoStream) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  int32_t backend = -1;
  void* stream = reinterpret_cast<void*>(1);
  NKV_ASSERT_OK(nkv_context_backend(cpu.get(), &backend));
  NKV_ASSERT_OK(nkv_context_stream(cpu.get(), &stream));
  EXPECT_EQ(backend, NKV_BACKEND_CPU);
  EXPECT_EQ(stream, nullptr);
  NKV_ASSERT_OK(nkv_context_synchronize(cpu.get()));
}

TEST(Context, AutoPicksTheGpuOnlyWhenADeviceIsUsable) {
  nkv_context* context = nullptr;
  NKV_ASSERT_OK(nkv_context_create(nullptr, &context));
  ContextPtr owned(context);
  int32_t backend = -1;
  NKV_ASSERT_OK(nkv_context_backend(context, &backend));
  EXPECT_EQ(backend, cuda_device_count() > 0 ? NKV_BACKEND_CUDA : NKV_BACKEND_CPU);
}

TEST(Context, GpuRequestWithoutDeviceIsNoDeviceWithTheReason) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  nkv_context_options options{sizeof(nkv_context_options), NKV_BACKEND_CUDA, 0, 0, nullptr};
  nkv_context* context = reinterpret_cast<nkv_context*>(0x1);
  NKV_EXPECT_STATUS(nkv_context_create(&options, &context), NKV_STATUS_NO_DEVICE, "no CUDA device is usable");
  EXPECT_EQ(context, reinterpret_cast<nkv_context*>(0x1)) << "output must be untouched on failure";
}

TEST(Context, RejectsBadOptions) {
  nkv_context* context = nullptr;
  NKV_EXPECT_STATUS(nkv_context_create(nullptr, nullptr), NKV_STATUS_INVALID_ARGUMENT, "out_context");
  nkv_context_options small{4, NKV_BACKEND_CPU, 0, 0, nullptr};
  NKV_EXPECT_STATUS(nkv_context_create(&small, &context), NKV_STATUS_INVALID_ARGUMENT, "struct_size");
  nkv_context_options bad_backend{sizeof(nkv_context_options), 7, 0, 0, nullptr};
  NKV_EXPECT_STATUS(nkv_context_create(&bad_backend, &context), NKV_STATUS_INVALID_ARGUMENT, "got 7");
  int dummy = 0;
  nkv_context_options cpu_stream{sizeof(nkv_context_options), NKV_BACKEND_CPU, 0, 0, &dummy};
  NKV_EXPECT_STATUS(nkv_context_create(&cpu_stream, &context), NKV_STATUS_INVALID_ARGUMENT, "options.stream");
  EXPECT_EQ(context, nullptr);
  EXPECT_EQ(nkv_context_destroy(nullptr), NKV_STATUS_SUCCESS);
}

TEST(Device, CountSucceedsAndExplainsZero) {
  int32_t count = -1;
  NKV_ASSERT_OK(nkv_cuda_device_count(&count));
  EXPECT_GE(count, 0);
  if (count == 0) {
    EXPECT_STRNE(nkv_last_error(), "");
  }
  NKV_EXPECT_STATUS(nkv_cuda_device_count(nullptr), NKV_STATUS_INVALID_ARGUMENT, "out_count");
}

TEST(DeviceCuda, PropertiesDescribeTheGpu) {
  NKV_REQUIRE_CUDA();
  nkv_device_properties props{};
  props.struct_size = sizeof props;
  NKV_ASSERT_OK(nkv_cuda_device_properties(0, &props));
  EXPECT_GT(std::strlen(props.name), 0u);
  EXPECT_GE(props.compute_capability_major, 7);
  EXPECT_GT(props.multiprocessor_count, 0);
  EXPECT_GT(props.total_memory_bytes, 1ull << 30);
  EXPECT_GT(props.l2_cache_bytes, 0);
  nkv_device_properties bad{};
  bad.struct_size = sizeof bad;
  NKV_EXPECT_STATUS(nkv_cuda_device_properties(1000, &bad), NKV_STATUS_INVALID_ARGUMENT, "ordinal");
}

class BufferTest : public ::testing::TestWithParam<nkv_backend> {
 protected:
  void SetUp() override {
    if (GetParam() == NKV_BACKEND_CUDA && cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: " << nkv_last_error();
    context_ = make_context(GetParam());
  }
  ContextPtr context_;
};

TEST_P(BufferTest, UploadCopyMemsetDownloadRoundTrip) {
  const size_t n = 1 << 16;
  std::vector<uint8_t> data(n);
  for (auto& b : data) b = static_cast<uint8_t>(rng()());
  Memory a(context_.get(), n), b(context_.get(), n);
  a.upload(data);
  NKV_ASSERT_OK(nkv_buffer_copy(b.buffer(), 0, a.buffer(), 0, n));
  NKV_ASSERT_OK(nkv_buffer_memset(b.buffer(), 100, 0xAB, 50));
  auto out = b.download<uint8_t>(n);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], (i >= 100 && i < 150) ? 0xAB : data[i]) << "byte " << i;
  uint64_t size = 0;
  int32_t device = -1;
  NKV_ASSERT_OK(nkv_buffer_size(a.buffer(), &size));
  NKV_ASSERT_OK(nkv_buffer_device(a.buffer(), &device));
  EXPECT_EQ(size, n);
  EXPECT_EQ(device, GetParam() == NKV_BACKEND_CUDA ? NKV_DEVICE_CUDA : NKV_DEVICE_HOST);
  void* p = nullptr;
  NKV_ASSERT_OK(nkv_buffer_data(a.buffer(), &p));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 256, 0u);
}

TEST_P(BufferTest, RejectsOutOfRangeAndNulls) {
  Memory a(context_.get(), 64);
  uint8_t host[128] = {};
  NKV_EXPECT_STATUS(nkv_buffer_upload(a.buffer(), 60, host, 8), NKV_STATUS_INVALID_ARGUMENT, "exceeds");
  NKV_EXPECT_STATUS(nkv_buffer_download(a.buffer(), UINT64_MAX, host, 2), NKV_STATUS_INVALID_ARGUMENT, "exceeds");
  NKV_EXPECT_STATUS(nkv_buffer_upload(a.buffer(), 0, nullptr, 8), NKV_STATUS_INVALID_ARGUMENT, "host_source");
  NKV_EXPECT_STATUS(nkv_buffer_download(nullptr, 0, host, 8), NKV_STATUS_INVALID_ARGUMENT, "'buffer'");
  NKV_EXPECT_STATUS(nkv_buffer_memset(a.buffer(), 0, 256, 8), NKV_STATUS_INVALID_ARGUMENT, "'value'");
  NKV_EXPECT_STATUS(nkv_buffer_create(nullptr, 8, nullptr), NKV_STATUS_INVALID_ARGUMENT, "context");
  EXPECT_EQ(nkv_buffer_destroy(nullptr), NKV_STATUS_SUCCESS);
}

TEST_P(BufferTest, OverlappingCopyWithinOneBufferIsRejected) {
  Memory a(context_.get(), 64);
  NKV_EXPECT_STATUS(nkv_buffer_copy(a.buffer(), 8, a.buffer(), 0, 16), NKV_STATUS_INVALID_ARGUMENT, "overlap");
  NKV_ASSERT_OK(nkv_buffer_copy(a.buffer(), 16, a.buffer(), 0, 16));  // adjacent ranges are fine
}

TEST(Buffer, SizesBeyondTheAddressSpaceAreOutOfMemory) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  nkv_buffer* buffer = nullptr;
  NKV_EXPECT_STATUS(nkv_buffer_create(cpu.get(), UINT64_MAX, &buffer), NKV_STATUS_OUT_OF_MEMORY, "bytes");
  EXPECT_EQ(buffer, nullptr);
}

TEST_P(BufferTest, CopyBetweenContextsIsRejected) {
  ContextPtr other = make_context(NKV_BACKEND_CPU);
  Memory a(context_.get(), 64), b(other.get(), 64);
  NKV_EXPECT_STATUS(nkv_buffer_copy(a.buffer(), 0, b.buffer(), 0, 8), NKV_STATUS_INVALID_ARGUMENT, "different contexts");
}

INSTANTIATE_TEST_SUITE_P(Cpu, BufferTest, ::testing::Values(NKV_BACKEND_CPU));
INSTANTIATE_TEST_SUITE_P(Cuda, BufferTest, ::testing::Values(NKV_BACKEND_CUDA));

TEST(ContextCuda, BorrowedStreamIsUsedAndNotDestroyed) {
  NKV_REQUIRE_CUDA();
  ContextPtr owner = make_context(NKV_BACKEND_CUDA);
  void* stream = nullptr;
  NKV_ASSERT_OK(nkv_context_stream(owner.get(), &stream));
  ASSERT_NE(stream, nullptr);
  {
    ContextPtr borrower = make_context(NKV_BACKEND_CUDA, stream);
    void* seen = nullptr;
    NKV_ASSERT_OK(nkv_context_stream(borrower.get(), &seen));
    EXPECT_EQ(seen, stream);
    Memory m(borrower.get(), 1024);
    m.fill(7, 1024);
    EXPECT_EQ(m.download<uint8_t>(1024)[1023], 7);
  }
  NKV_ASSERT_OK(nkv_context_synchronize(owner.get()));  // the owner's stream survived the borrower
}

TEST(Introspection, StructSizesAndOffsets) {
  EXPECT_EQ(nkv_struct_size("nkv_tensor"), sizeof(nkv_tensor));
  EXPECT_EQ(nkv_struct_size("nkv_context_options"), sizeof(nkv_context_options));
  EXPECT_EQ(nkv_struct_size("nkv_device_properties"), sizeof(nkv_device_properties));
  EXPECT_EQ(nkv_struct_size("nkv_int8_quant_params"), sizeof(nkv_int8_quant_params));
  EXPECT_EQ(nkv_struct_size("nope"), 0u);
  EXPECT_EQ(nkv_struct_field_offset("nkv_tensor", "strides"), offsetof(nkv_tensor, strides));
  EXPECT_EQ(nkv_struct_field_offset("nkv_context_options", "stream"), offsetof(nkv_context_options, stream));
  EXPECT_EQ(nkv_struct_field_offset("nkv_tensor", "nope"), SIZE_MAX);
  int64_t value = -1;
  NKV_ASSERT_OK(nkv_enum_value("NKV_DTYPE_BFLOAT16", &value));
  EXPECT_EQ(value, NKV_DTYPE_BFLOAT16);
  NKV_EXPECT_STATUS(nkv_enum_value("NKV_NOPE", &value), NKV_STATUS_INVALID_ARGUMENT, "NKV_NOPE");
}

// The exported-function table must list exactly the library's dynamic symbols named nkv_*.
TEST(Introspection, ExportedFunctionTableMatchesTheSymbolTable) {
  std::set<std::string> listed;
  for (const char* const* name = nkv_exported_functions(); *name != nullptr; ++name) listed.insert(*name);
  std::set<std::string> exported;
  const std::string command = std::string("nm -D --defined-only '") + NKV_LIBRARY_FILE + "'";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char line[512];
  while (std::fgets(line, sizeof line, pipe) != nullptr) {
    std::string s(line);
    const size_t pos = s.rfind(' ');
    std::string symbol = s.substr(pos + 1);
    while (!symbol.empty() && (symbol.back() == '\n' || symbol.back() == '\r')) symbol.pop_back();
    if (symbol.rfind("nkv_", 0) == 0) exported.insert(symbol);
  }
  ASSERT_EQ(pclose(pipe), 0) << "nm failed";
  EXPECT_EQ(listed, exported);
  void* handle = dlopen(NKV_LIBRARY_FILE, RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(handle, nullptr);
  for (const std::string& name : listed) EXPECT_NE(dlsym(handle, name.c_str()), nullptr) << name;
  dlclose(handle);
}

// Only nkv_* symbols leave the library (hidden visibility, static cudart hidden by --exclude-libs).
TEST(Introspection, NoForeignSymbolsExported) {
  const std::string command = std::string("nm -D --defined-only '") + NKV_LIBRARY_FILE + "' | awk '{print $3}'";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char line[512];
  std::vector<std::string> foreign;
  while (std::fgets(line, sizeof line, pipe) != nullptr) {
    std::string symbol(line);
    while (!symbol.empty() && (symbol.back() == '\n')) symbol.pop_back();
    if (!symbol.empty() && symbol.rfind("nkv_", 0) != 0 && symbol.rfind("_init", 0) != 0 && symbol.rfind("_fini", 0) != 0) {
      foreign.push_back(symbol);
    }
  }
  pclose(pipe);
  EXPECT_TRUE(foreign.empty()) << "first foreign symbol: " << (foreign.empty() ? "" : foreign.front()) << " of "
                               << foreign.size();
}

// The host conversions the CPU backend uses agree with IEEE round-to-nearest-even on exhaustive halves.
TEST(FloatBits, HalfRoundTripIsExactForEveryHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = nkv::half_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(nkv::float_to_half(f), h) << std::hex << h;
  }
  EXPECT_EQ(nkv::float_to_half(65519.0f), 0x7bffu);
  EXPECT_EQ(nkv::float_to_half(65520.0f), 0x7c00u);
  EXPECT_EQ(nkv::float_to_half(1.0f + 1.0f / 2048.0f), 0x3c00u);   // tie -> even
  EXPECT_EQ(nkv::float_to_half(1.0f + 3.0f / 2048.0f), 0x3c02u);   // tie -> even (up)
  EXPECT_EQ(nkv::float_to_half(2.9802322e-08f), 0x0000u);          // 2^-25: tie -> 0
  EXPECT_EQ(nkv::float_to_half(2.9802326e-08f), 0x0001u);          // just above 2^-25
  EXPECT_EQ(nkv::float_to_bfloat16(1.0f + 1.0f / 256.0f), 0x3f80u);  // tie -> even
  EXPECT_EQ(nkv::float_to_bfloat16(1.0f + 3.0f / 256.0f), 0x3f82u);
  EXPECT_TRUE(std::isnan(nkv::bfloat16_to_float(nkv::float_to_bfloat16(std::nanf("")))));
}
