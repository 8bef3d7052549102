// Compiled only when the library is built without a CUDA compiler: every CUDA entry reports it.
#include "core/attention.h"
#include "core/backends.h"
#include "core/error.h"
#include "core/kvcache.h"
#include "core/pack.h"
#include "core/quant.h"
#include "core/quantized_kvcache.h"
#include "core/virtual_memory.h"

namespace nkv::cuda {
namespace {
[[noreturn]] void unavailable() {
  fail(NKV_STATUS_NO_DEVICE, "this NativeKv library was built without the CUDA backend (no CUDA compiler at build time)");
}
}  // namespace

int32_t device_count(std::string& reason) {
  reason = "this NativeKv library was built without the CUDA backend";
  return 0;
}
void device_properties(int32_t, nkv_device_properties&) { unavailable(); }
void* create_stream(int32_t) { unavailable(); }
void destroy_stream(int32_t, void*) noexcept {}
void synchronize(int32_t, void*) { unavailable(); }
void* allocate(int32_t, uint64_t) { unavailable(); }
void release(int32_t, void*) noexcept {}
void upload(int32_t, void*, void*, const void*, uint64_t) { unavailable(); }
void download(int32_t, void*, void*, const void*, uint64_t) { unavailable(); }
void copy(int32_t, void*, void*, const void*, uint64_t) { unavailable(); }
void memset(int32_t, void*, void*, int32_t, uint64_t) { unavailable(); }
bool hopper_kernels_available(int32_t) { unavailable(); }
void int8_quantize(const Int8QuantizeArgs&, const nkv_context&) { unavailable(); }
void int8_dequantize(const Int8DequantizeArgs&, const nkv_context&) { unavailable(); }
int64_t decode_block_slots(const nkv_attention_plan&) { unavailable(); }
int64_t quantized_decode_block_slots(const nkv_attention_plan&) { unavailable(); }
void attention_varlen(const nkv_attention_plan&, const VarlenAttentionArgs&) { unavailable(); }
void attention_decode(const nkv_attention_plan&, const DecodeAttentionArgs&) { unavailable(); }
void gather_rows(const GatherRowsArgs&, const nkv_context&) { unavailable(); }
void paged_kv_write(const PagedKvWriteArgs&, const nkv_context&) { unavailable(); }
std::unique_ptr<VirtualMemory> virtual_memory(int32_t) { unavailable(); }
void quantized_kv_write(int32_t, void*, const QuantizedKvLayer&, const QuantizedKvStep&, const QuantizedKvInput&) { unavailable(); }
void attention_decode_quantized(const nkv_attention_plan&, const QuantizedDecodeArgs&) { unavailable(); }

}  // namespace nkv::cuda
