// NativeKv kernel micro-benchmarks through the public C ABI.
//
// GPU: CUDA events around each launch, warm-up first, median of --iterations, inputs rotated across
// enough copies to exceed the L2 cache several times, random (never zero) data. Each case is reported
// next to a device-to-device copy of the same number of bytes, measured in the same process: the
// physical limit for a memory-bound op. CPU: the same cases on the reference backend, timed with
// std::chrono (for completeness; the CPU backend is written for clarity, not speed).
//
// Output: one JSON object per line on stdout (bench/run.py turns them into tables and charts);
// progress on stderr.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_tensor.h"
#include "core/float_bits.h"
#include "nativekv/nativekv.h"

#if NKV_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace {

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "nkv_bench: %s\n", message.c_str());
  std::exit(1);
}

void check(nkv_status status, const char* what) {
  if (status != NKV_STATUS_SUCCESS) die(std::string(what) + ": " + nkv_last_error());
}

#if NKV_HAVE_CUDA
void check_cuda(cudaError_t error, const char* what) {
  if (error != cudaSuccess) die(std::string(what) + ": " + cudaGetErrorString(error));
}
#endif

struct Options {
  std::string backend = "auto";
  int iterations = 30;
  int warmup = 5;
  bool quick = false;
  std::string only;  // run only cases whose label contains this, e.g. "quantize float16 4096x14336 row"
};

struct Case {
  nkv_dtype dtype;
  int64_t rows, cols;
  nkv_quant_axis axis;
  float threshold;
  const char* op;                 // "quantize" or "dequantize"
  const char* data = "spread";    // input distribution, see random_input
};

const char* dtype_label(nkv_dtype d) {
  return d == NKV_DTYPE_FLOAT16 ? "float16" : d == NKV_DTYPE_BFLOAT16 ? "bfloat16" : "float32";
}

// Random normal values in the dtype's bit pattern, generated fast enough for 128 MiB inputs.
// "spread": N(0,1) times 1..7 cycling along the flat index (with threshold 6 about 16% of all elements are
//           outliers: a stress case);
// "llm":    N(0,1) with LLM.int8()-style outlier features: every 1024th column (0.1%) scaled by 20.
std::vector<uint8_t> random_input(nkv_dtype dtype, int64_t count, int64_t cols, const std::string& data, uint64_t seed) {
  std::vector<uint8_t> bytes(static_cast<size_t>(count) * nkv_dtype_size(dtype));
  std::mt19937 engine(static_cast<uint32_t>(seed));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> pool(1 << 16);
  for (float& v : pool) v = normal(engine);
  for (int64_t i = 0; i < count; ++i) {
    const float z = pool[(static_cast<uint64_t>(i) * 2654435761u + seed) & 0xffff];
    const float x = data == "llm" ? (i % cols % 1024 == 7 ? 20.0f * z : z) : z * (1.0f + static_cast<float>(i % 7));
    if (dtype == NKV_DTYPE_FLOAT32) {
      std::memcpy(&bytes[i * 4], &x, 4);
    } else {
      const uint16_t h = dtype == NKV_DTYPE_FLOAT16 ? nkv::float_to_half(x) : nkv::float_to_bfloat16(x);
      std::memcpy(&bytes[i * 2], &h, 2);
    }
  }
  return bytes;
}

struct Buffer {
  nkv_buffer* handle = nullptr;
  void* data = nullptr;
  Buffer(nkv_context* context, uint64_t bytes) {
    check(nkv_buffer_create(context, bytes, &handle), "nkv_buffer_create");
    check(nkv_buffer_data(handle, &data), "nkv_buffer_data");
  }
  ~Buffer() { nkv_buffer_destroy(handle); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Times `run(i)` for iteration i; returns the median in microseconds.
template <typename Run>
double time_us(nkv_context* context, bool gpu, const Options& o, Run&& run) {
  for (int i = 0; i < o.warmup; ++i) run(i);
  check(nkv_context_synchronize(context), "synchronize");
  std::vector<double> samples;
#if NKV_HAVE_CUDA
  if (gpu) {
    void* stream = nullptr;
    check(nkv_context_stream(context, &stream), "nkv_context_stream");
    cudaEvent_t start, stop;
    check_cuda(cudaEventCreate(&start), "cudaEventCreate");
    check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
    for (int i = 0; i < o.iterations; ++i) {
      check_cuda(cudaEventRecord(start, static_cast<cudaStream_t>(stream)), "cudaEventRecord");
      run(o.warmup + i);
      check_cuda(cudaEventRecord(stop, static_cast<cudaStream_t>(stream)), "cudaEventRecord");
      check_cuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
      float ms = 0;
      check_cuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
      samples.push_back(ms * 1000.0);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return median(samples);
  }
#endif
  (void)gpu;
  for (int i = 0; i < o.iterations; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    run(o.warmup + i);
    check(nkv_context_synchronize(context), "synchronize");
    samples.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(samples);
}

// Enough rotating copies that consecutive iterations never find their input in L2.
int rotation_count(uint64_t bytes_per_set, uint64_t l2_bytes) {
  const uint64_t wanted = 4 * std::max<uint64_t>(l2_bytes, 1);
  return static_cast<int>(std::clamp<uint64_t>((wanted + bytes_per_set - 1) / bytes_per_set, 2, 64));
}

// Device-to-device copy of `bytes`, rotated like the op's inputs; returns the median in microseconds.
double copy_us(nkv_context* context, bool gpu, const Options& o, uint64_t bytes, uint64_t l2_bytes) {
  const int sets = rotation_count(bytes, l2_bytes);
  std::vector<std::unique_ptr<Buffer>> src, dst;
  for (int i = 0; i < sets; ++i) {
    src.push_back(std::make_unique<Buffer>(context, bytes));
    dst.push_back(std::make_unique<Buffer>(context, bytes));
    check(nkv_buffer_memset(src.back()->handle, 0, 0x3c, bytes), "memset");
  }
  return time_us(context, gpu, o, [&](int i) {
    check(nkv_buffer_copy(dst[i % sets]->handle, 0, src[i % sets]->handle, 0, bytes), "nkv_buffer_copy");
  });
}

void print_result(const char* backend, const char* device, const Case& c, double us, uint64_t bytes, double copy_time_us,
                  uint64_t copy_bytes) {
  const double gbps = static_cast<double>(bytes) / (us * 1e3);
  const double copy_gbps = static_cast<double>(2 * copy_bytes) / (copy_time_us * 1e3);
  std::printf(
      "{\"op\":\"int8_%s\",\"backend\":\"%s\",\"device\":\"%s\",\"dtype\":\"%s\",\"rows\":%lld,\"cols\":%lld,"
      "\"axis\":\"%s\",\"outlier_threshold\":%g,\"median_us\":%.3f,\"bytes\":%llu,\"gb_per_s\":%.1f,"
      "\"copy_us\":%.3f,\"copy_gb_per_s\":%.1f,\"fraction_of_copy\":%.3f,\"data\":\"%s\"}\n",
      c.op, backend, device, dtype_label(c.dtype), static_cast<long long>(c.rows), static_cast<long long>(c.cols),
      c.axis == NKV_QUANT_AXIS_ROW ? "row" : "column", static_cast<double>(c.threshold), us,
      static_cast<unsigned long long>(bytes), gbps, copy_time_us, copy_gbps, gbps / copy_gbps, c.data);
  std::fflush(stdout);
}

void run_case(nkv_context* context, bool gpu, const char* backend, const char* device, const Options& o, const Case& c,
              uint64_t l2_bytes) {
  const nkv_device_type dev = gpu ? NKV_DEVICE_CUDA : NKV_DEVICE_HOST;
  const int64_t n = c.rows * c.cols;
  const uint64_t float_bytes = static_cast<uint64_t>(n) * nkv_dtype_size(c.dtype);
  const int64_t nscales = c.axis == NKV_QUANT_AXIS_ROW ? c.rows : c.cols;
  const bool quantize = std::strcmp(c.op, "quantize") == 0;
  // Bytes the op must move: read each input once, write each output once.
  const uint64_t bytes = float_bytes + static_cast<uint64_t>(n) + static_cast<uint64_t>(nscales) * 4 +
                         (c.threshold > 0 ? static_cast<uint64_t>(c.cols) * 4 : 0);
  const int sets = gpu ? rotation_count(bytes, l2_bytes) : 1;
  std::vector<std::unique_ptr<Buffer>> floats, codes, scales, outliers, counts;
  for (int s = 0; s < sets; ++s) {
    floats.push_back(std::make_unique<Buffer>(context, float_bytes));
    codes.push_back(std::make_unique<Buffer>(context, static_cast<uint64_t>(n)));
    scales.push_back(std::make_unique<Buffer>(context, static_cast<uint64_t>(nscales) * 4));
    outliers.push_back(std::make_unique<Buffer>(context, static_cast<uint64_t>(c.cols) * 4));
    counts.push_back(std::make_unique<Buffer>(context, 4));
    if (s == 0) {
      const std::vector<uint8_t> host = random_input(c.dtype, n, c.cols, c.data, 12345);
      check(nkv_buffer_upload(floats[0]->handle, 0, host.data(), host.size()), "upload");
    } else {
      check(nkv_buffer_copy(floats[s]->handle, 0, floats[0]->handle, 0, float_bytes), "copy");
    }
  }
  nkv_int8_quant_params params{sizeof params, c.axis, c.threshold, 0};
  if (!quantize) {  // dequantize needs real codes and scales: quantize each set once
    for (int s = 0; s < sets; ++s) {
      nkv_tensor in = view(floats[s]->data, c.dtype, dev, {c.rows, c.cols});
      nkv_tensor q = view(codes[s]->data, NKV_DTYPE_INT8, dev, {c.rows, c.cols});
      nkv_tensor sc = view(scales[s]->data, NKV_DTYPE_FLOAT32, dev, {nscales});
      nkv_int8_quant_params plain{sizeof plain, c.axis, 0.0f, 0};
      check(nkv_int8_quantize(context, &plain, &in, &q, &sc, nullptr, nullptr), "nkv_int8_quantize");
    }
  }
  const double us = time_us(context, gpu, o, [&](int i) {
    const int s = i % sets;
    nkv_tensor fl = view(floats[s]->data, c.dtype, dev, {c.rows, c.cols});
    nkv_tensor q = view(codes[s]->data, NKV_DTYPE_INT8, dev, {c.rows, c.cols});
    nkv_tensor sc = view(scales[s]->data, NKV_DTYPE_FLOAT32, dev, {nscales});
    if (quantize) {
      nkv_tensor oc = view(outliers[s]->data, NKV_DTYPE_INT32, dev, {c.cols});
      nkv_tensor cnt = view(counts[s]->data, NKV_DTYPE_INT32, dev, {1});
      const bool with = c.threshold > 0;
      check(nkv_int8_quantize(context, &params, &fl, &q, &sc, with ? &oc : nullptr, with ? &cnt : nullptr),
            "nkv_int8_quantize");
    } else {
      check(nkv_int8_dequantize(context, &params, &q, &sc, &fl), "nkv_int8_dequantize");
    }
  });
  // The limit: a plain copy moving the same total bytes (half read, half written).
  const uint64_t copy_bytes = bytes / 2;
  const double copy_time = copy_us(context, gpu, o, copy_bytes, l2_bytes);
  print_result(backend, device, c, us, bytes, copy_time, copy_bytes);
  std::fprintf(stderr, "  %-10s %-8s %6lldx%-6lld %-6s thr=%-4g %-6s %9.1f us  %7.1f GB/s  (copy %7.1f GB/s)\n", c.op,
               dtype_label(c.dtype), static_cast<long long>(c.rows), static_cast<long long>(c.cols),
               c.axis == NKV_QUANT_AXIS_ROW ? "row" : "column", static_cast<double>(c.threshold), c.data, us,
               static_cast<double>(bytes) / (us * 1e3), static_cast<double>(bytes) / (copy_time * 1e3));
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--backend" && i + 1 < argc) {
      o.backend = argv[++i];
    } else if (a == "--iterations" && i + 1 < argc) {
      o.iterations = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--only" && i + 1 < argc) {
      o.only = argv[++i];
    } else {
      die("usage: nkv_bench [--backend auto|cpu|cuda] [--iterations N] [--quick] [--only LABEL-SUBSTRING]");
    }
  }
  const int32_t backend_request = o.backend == "cpu" ? NKV_BACKEND_CPU : o.backend == "cuda" ? NKV_BACKEND_CUDA : NKV_BACKEND_AUTO;
  nkv_context_options options{sizeof options, backend_request, 0, 0, nullptr};
  nkv_context* context = nullptr;
  check(nkv_context_create(&options, &context), "nkv_context_create");
  int32_t backend = 0;
  check(nkv_context_backend(context, &backend), "nkv_context_backend");
  const bool gpu = backend == NKV_BACKEND_CUDA;
  std::string device = "CPU";
  uint64_t l2_bytes = 32ull << 20;
  if (gpu) {
    nkv_device_properties props{};
    props.struct_size = sizeof props;
    check(nkv_cuda_device_properties(0, &props), "nkv_cuda_device_properties");
    device = props.name;
    l2_bytes = static_cast<uint64_t>(props.l2_cache_bytes);
  } else {
    int32_t count = 0;
    nkv_cuda_device_count(&count);
    std::fprintf(stderr, "nkv_bench: no CUDA device (%s); benchmarking the CPU reference backend\n", nkv_last_error());
    o.iterations = std::min(o.iterations, 5);
    o.warmup = 1;
  }
  std::fprintf(stderr, "nkv_bench: backend %s, device %s, %d iterations (median)\n", gpu ? "cuda" : "cpu",
               device.c_str(), o.iterations);

  std::vector<Case> cases;
  const int64_t big = gpu && !o.quick ? 8192 : 1024;
  for (nkv_dtype dtype : {NKV_DTYPE_FLOAT16, NKV_DTYPE_BFLOAT16, NKV_DTYPE_FLOAT32}) {
    cases.push_back({dtype, big, big, NKV_QUANT_AXIS_ROW, 0.0f, "quantize"});
  }
  if (gpu && !o.quick) {
    cases.push_back({NKV_DTYPE_FLOAT16, 4096, 4096, NKV_QUANT_AXIS_ROW, 0.0f, "quantize"});
    cases.push_back({NKV_DTYPE_FLOAT16, 16384, 4096, NKV_QUANT_AXIS_ROW, 0.0f, "quantize"});
    cases.push_back({NKV_DTYPE_FLOAT16, 4096, 14336, NKV_QUANT_AXIS_ROW, 0.0f, "quantize"});
  }
  cases.push_back({NKV_DTYPE_FLOAT16, big, big, NKV_QUANT_AXIS_ROW, 6.0f, "quantize", "llm"});
  cases.push_back({NKV_DTYPE_FLOAT16, big, big, NKV_QUANT_AXIS_ROW, 6.0f, "quantize"});
  cases.push_back({NKV_DTYPE_FLOAT16, big, big, NKV_QUANT_AXIS_COLUMN, 0.0f, "quantize"});
  cases.push_back({NKV_DTYPE_FLOAT16, big, big, NKV_QUANT_AXIS_ROW, 0.0f, "dequantize"});
  for (const Case& c : cases) {
    const std::string label = std::string(c.op) + " " + dtype_label(c.dtype) + " " + std::to_string(c.rows) + "x" +
                              std::to_string(c.cols) + " " + (c.axis == NKV_QUANT_AXIS_ROW ? "row" : "column") +
                              (c.threshold > 0 ? std::string(" outliers ") + c.data : std::string());
    if (!o.only.empty() && label.find(o.only) == std::string::npos) continue;
    run_case(context, gpu, gpu ? "cuda" : "cpu", device.c_str(), o, c, l2_bytes);
  }
  check(nkv_context_destroy(context), "nkv_context_destroy");
  return 0;
}
