#include <memory>
#include <string>

#include "core/api_guard.h"
#include "core/backends.h"
#include "core/context_memory.h"
#include "core/handles.h"
#include "core/tensor_checks.h"

using namespace nkv;

namespace {

// `devices` receives the CUDA device count when the driver was asked (every request but CPU).
nkv_backend resolve_backend(int32_t requested, int32_t& devices) {
  if (requested == NKV_BACKEND_CPU) return NKV_BACKEND_CPU;
  std::string cuda_reason;
  devices = cuda::device_count(cuda_reason);
  if (requested == NKV_BACKEND_AUTO) return devices > 0 ? NKV_BACKEND_CUDA : NKV_BACKEND_CPU;
  if (devices == 0) fail(NKV_STATUS_NO_DEVICE, "NKV_BACKEND_CUDA requested but no CUDA device is usable: " + cuda_reason);
  return NKV_BACKEND_CUDA;
}

}  // namespace

extern "C" {

NKV_API nkv_status nkv_context_create(const nkv_context_options* options, nkv_context** out_context) {
  return guard("nkv_context_create", [&] {
    require_out(out_context, "out_context");
    nkv_context_options o{sizeof(nkv_context_options), NKV_BACKEND_AUTO, 0, 0, nullptr};
    if (options != nullptr) {
      check_struct_size("options", options->struct_size, sizeof(nkv_context_options), "sizeof(nkv_context_options)");
      o = *options;
    }
    if (o.backend != NKV_BACKEND_AUTO && o.backend != NKV_BACKEND_CPU && o.backend != NKV_BACKEND_CUDA) {
      fail_argument("argument 'options.backend': expected NKV_BACKEND_AUTO (0), NKV_BACKEND_CPU (1) or "
                    "NKV_BACKEND_CUDA (2), got " + std::to_string(o.backend));
    }
    if (o.reserved != 0) fail_argument("argument 'options.reserved' must be 0, got " + std::to_string(o.reserved));
    int32_t devices = 0;
    auto context = std::make_unique<nkv_context>();
    context->backend = resolve_backend(o.backend, devices);
    if (context->backend == NKV_BACKEND_CPU && o.stream != nullptr) {
      fail_argument("argument 'options.stream' must be NULL for the CPU backend");
    }
    if (context->backend == NKV_BACKEND_CUDA) {
      if (o.device_ordinal < 0 || o.device_ordinal >= devices) {
        fail_argument("argument 'options.device_ordinal': expected 0.." + std::to_string(devices - 1) + ", got " +
                      std::to_string(o.device_ordinal));
      }
      context->device_ordinal = o.device_ordinal;
      context->stream = o.stream != nullptr ? o.stream : cuda::create_stream(o.device_ordinal);
      context->owns_stream = o.stream == nullptr;
      nkv_device_properties properties{};
      properties.struct_size = sizeof(properties);
      cuda::device_properties(o.device_ordinal, properties);
      context->multiprocessor_count = properties.multiprocessor_count;
      context->compute_capability = properties.compute_capability_major * 10 + properties.compute_capability_minor;
      context->shared_memory_per_block = static_cast<int64_t>(properties.shared_memory_per_block_optin_bytes);
      context->hopper_kernels = context->compute_capability == 90 && cuda::hopper_kernels_available(o.device_ordinal);
    }
    *out_context = context.release();
  });
}

NKV_API nkv_status nkv_context_destroy(nkv_context* context) {
  return guard("nkv_context_destroy", [&] {
    if (context == nullptr) return;
    if (context->backend == NKV_BACKEND_CUDA) {
      if (context->owns_stream) {
        cuda::destroy_stream(context->device_ordinal, context->stream);
      } else {
        try {
          cuda::synchronize(context->device_ordinal, context->stream);
        } catch (...) {  // the caller's stream: its errors are the caller's to see
        }
      }
    }
    delete context;
  });
}

NKV_API nkv_status nkv_context_backend(const nkv_context* context, int32_t* out_backend) {
  return guard("nkv_context_backend", [&] {
    const nkv_context& c = check_context(context);
    require_out(out_backend, "out_backend");
    *out_backend = c.backend;
  });
}

NKV_API nkv_status nkv_context_device_ordinal(const nkv_context* context, int32_t* out_ordinal) {
  return guard("nkv_context_device_ordinal", [&] {
    const nkv_context& c = check_context(context);
    require_out(out_ordinal, "out_ordinal");
    *out_ordinal = c.device_ordinal;
  });
}

NKV_API nkv_status nkv_context_stream(const nkv_context* context, void** out_stream) {
  return guard("nkv_context_stream", [&] {
    const nkv_context& c = check_context(context);
    require_out(out_stream, "out_stream");
    *out_stream = c.stream;
  });
}

NKV_API nkv_status nkv_context_synchronize(nkv_context* context) {
  return guard("nkv_context_synchronize", [&] {
    const nkv_context& c = check_context(context);
    synchronize_on(c);
  });
}

}  // extern "C"
