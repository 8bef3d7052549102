// Tables that let bindings check themselves against this build: struct layouts, enum values, exports.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/api_guard.h"

using namespace nkv;

namespace {

struct FieldInfo {
  const char* structure;
  const char* field;
  size_t offset;
};

#define NKV_FIELD(s, f) {#s, #f, offsetof(s, f)}
constexpr FieldInfo kFields[] = {
    NKV_FIELD(nkv_tensor, data),
    NKV_FIELD(nkv_tensor, dtype),
    NKV_FIELD(nkv_tensor, device),
    NKV_FIELD(nkv_tensor, ndim),
    NKV_FIELD(nkv_tensor, reserved),
    NKV_FIELD(nkv_tensor, shape),
    NKV_FIELD(nkv_tensor, strides),
    NKV_FIELD(nkv_device_properties, struct_size),
    NKV_FIELD(nkv_device_properties, ordinal),
    NKV_FIELD(nkv_device_properties, name),
    NKV_FIELD(nkv_device_properties, compute_capability_major),
    NKV_FIELD(nkv_device_properties, compute_capability_minor),
    NKV_FIELD(nkv_device_properties, multiprocessor_count),
    NKV_FIELD(nkv_device_properties, l2_cache_bytes),
    NKV_FIELD(nkv_device_properties, total_memory_bytes),
    NKV_FIELD(nkv_device_properties, shared_memory_per_block_optin_bytes),
    NKV_FIELD(nkv_device_properties, memory_bus_width_bits),
    NKV_FIELD(nkv_device_properties, reserved),
    NKV_FIELD(nkv_context_options, struct_size),
    NKV_FIELD(nkv_context_options, backend),
    NKV_FIELD(nkv_context_options, device_ordinal),
    NKV_FIELD(nkv_context_options, reserved),
    NKV_FIELD(nkv_context_options, stream),
    NKV_FIELD(nkv_int8_quant_params, struct_size),
    NKV_FIELD(nkv_int8_quant_params, axis),
    NKV_FIELD(nkv_int8_quant_params, outlier_threshold),
    NKV_FIELD(nkv_int8_quant_params, reserved),
    NKV_FIELD(nkv_attention_options, struct_size),
    NKV_FIELD(nkv_attention_options, causal),
    NKV_FIELD(nkv_attention_options, softmax_scale),
    NKV_FIELD(nkv_attention_options, softcap),
    NKV_FIELD(nkv_attention_options, window_left),
    NKV_FIELD(nkv_attention_options, num_splits),
    NKV_FIELD(nkv_attention_options, kernel),
    NKV_FIELD(nkv_attention_options, kv_page_size),
    NKV_FIELD(nkv_attention_options, kv_code_bits),
    NKV_FIELD(nkv_attention_plan_info, struct_size),
    NKV_FIELD(nkv_attention_plan_info, kind),
    NKV_FIELD(nkv_attention_plan_info, batch),
    NKV_FIELD(nkv_attention_plan_info, num_heads_q),
    NKV_FIELD(nkv_attention_plan_info, num_heads_kv),
    NKV_FIELD(nkv_attention_plan_info, head_dim),
    NKV_FIELD(nkv_attention_plan_info, q_len),
    NKV_FIELD(nkv_attention_plan_info, num_splits),
    NKV_FIELD(nkv_attention_plan_info, total_q),
    NKV_FIELD(nkv_attention_plan_info, total_k),
    NKV_FIELD(nkv_attention_plan_info, max_seqlen_q),
    NKV_FIELD(nkv_attention_plan_info, max_seqlen_k),
    NKV_FIELD(nkv_attention_plan_info, softmax_scale),
    NKV_FIELD(nkv_attention_plan_info, reserved),
    NKV_FIELD(nkv_pack_plan_info, struct_size),
    NKV_FIELD(nkv_pack_plan_info, prompt_count),
    NKV_FIELD(nkv_pack_plan_info, row_count),
    NKV_FIELD(nkv_pack_plan_info, row_capacity),
    NKV_FIELD(nkv_pack_plan_info, longest_prompt),
    NKV_FIELD(nkv_pack_plan_info, reserved),
    NKV_FIELD(nkv_pack_plan_info, total_tokens),
    NKV_FIELD(nkv_pack_plan_info, padding_tokens),
    NKV_FIELD(nkv_pack_plan_info, unpacked_padding_tokens),
    NKV_FIELD(nkv_paged_kv_cache_options, struct_size),
    NKV_FIELD(nkv_paged_kv_cache_options, dtype),
    NKV_FIELD(nkv_paged_kv_cache_options, num_layers),
    NKV_FIELD(nkv_paged_kv_cache_options, num_heads_kv),
    NKV_FIELD(nkv_paged_kv_cache_options, head_dim),
    NKV_FIELD(nkv_paged_kv_cache_options, page_size),
    NKV_FIELD(nkv_paged_kv_cache_options, max_sequences),
    NKV_FIELD(nkv_paged_kv_cache_options, max_sequence_length),
    NKV_FIELD(nkv_paged_kv_cache_options, num_pages),
    NKV_FIELD(nkv_paged_kv_cache_options, byte_budget),
    NKV_FIELD(nkv_paged_kv_cache_info, struct_size),
    NKV_FIELD(nkv_paged_kv_cache_info, page_size),
    NKV_FIELD(nkv_paged_kv_cache_info, max_sequences),
    NKV_FIELD(nkv_paged_kv_cache_info, sequences),
    NKV_FIELD(nkv_paged_kv_cache_info, max_pages_per_sequence),
    NKV_FIELD(nkv_paged_kv_cache_info, reserved),
    NKV_FIELD(nkv_paged_kv_cache_info, num_pages),
    NKV_FIELD(nkv_paged_kv_cache_info, free_pages),
    NKV_FIELD(nkv_paged_kv_cache_info, tokens),
    NKV_FIELD(nkv_paged_kv_cache_info, shared_pages),
    NKV_FIELD(nkv_paged_kv_cache_info, bytes_per_page),
    NKV_FIELD(nkv_paged_kv_cache_info, step_tokens),
    NKV_FIELD(nkv_paged_kv_cache_info, empty_slots),
    NKV_FIELD(nkv_virtual_kv_cache_options, struct_size),
    NKV_FIELD(nkv_virtual_kv_cache_options, dtype),
    NKV_FIELD(nkv_virtual_kv_cache_options, layout),
    NKV_FIELD(nkv_virtual_kv_cache_options, num_layers),
    NKV_FIELD(nkv_virtual_kv_cache_options, num_heads_kv),
    NKV_FIELD(nkv_virtual_kv_cache_options, head_dim),
    NKV_FIELD(nkv_virtual_kv_cache_options, max_slots),
    NKV_FIELD(nkv_virtual_kv_cache_options, max_tokens),
    NKV_FIELD(nkv_virtual_kv_cache_options, byte_budget),
    NKV_FIELD(nkv_virtual_kv_cache_info, struct_size),
    NKV_FIELD(nkv_virtual_kv_cache_info, layout),
    NKV_FIELD(nkv_virtual_kv_cache_info, max_slots),
    NKV_FIELD(nkv_virtual_kv_cache_info, slots),
    NKV_FIELD(nkv_virtual_kv_cache_info, tokens_per_block),
    NKV_FIELD(nkv_virtual_kv_cache_info, max_blocks_per_slot),
    NKV_FIELD(nkv_virtual_kv_cache_info, page_bytes),
    NKV_FIELD(nkv_virtual_kv_cache_info, bytes_per_block),
    NKV_FIELD(nkv_virtual_kv_cache_info, rows_per_slot),
    NKV_FIELD(nkv_virtual_kv_cache_info, tokens),
    NKV_FIELD(nkv_virtual_kv_cache_info, budget_pages),
    NKV_FIELD(nkv_virtual_kv_cache_info, mapped_pages),
    NKV_FIELD(nkv_virtual_kv_cache_info, pooled_pages),
    NKV_FIELD(nkv_virtual_kv_cache_info, shared_pages),
    NKV_FIELD(nkv_virtual_kv_cache_info, deferred_blocks),
    NKV_FIELD(nkv_virtual_kv_cache_info, empty_token_slots),
    NKV_FIELD(nkv_virtual_kv_cache_info, step_tokens),
    NKV_FIELD(nkv_virtual_kv_cache_info, blocks_mapped_ahead),
    NKV_FIELD(nkv_virtual_kv_cache_info, blocks_mapped_inline),
    NKV_FIELD(nkv_virtual_kv_cache_info, pages_created),
    NKV_FIELD(nkv_quantized_kv_cache_options, struct_size),
    NKV_FIELD(nkv_quantized_kv_cache_options, format),
    NKV_FIELD(nkv_quantized_kv_cache_options, bits),
    NKV_FIELD(nkv_quantized_kv_cache_options, group_size),
    NKV_FIELD(nkv_quantized_kv_cache_options, residual),
    NKV_FIELD(nkv_quantized_kv_cache_options, num_layers),
    NKV_FIELD(nkv_quantized_kv_cache_options, num_heads_kv),
    NKV_FIELD(nkv_quantized_kv_cache_options, head_dim),
    NKV_FIELD(nkv_quantized_kv_cache_options, max_slots),
    NKV_FIELD(nkv_quantized_kv_cache_options, max_tokens),
    NKV_FIELD(nkv_quantized_kv_cache_options, value_format),
    NKV_FIELD(nkv_quantized_kv_cache_options, memory),
    NKV_FIELD(nkv_quantized_kv_cache_options, page_size),
    NKV_FIELD(nkv_quantized_kv_cache_options, max_pages),
    NKV_FIELD(nkv_quantized_kv_cache_info, struct_size),
    NKV_FIELD(nkv_quantized_kv_cache_info, format),
    NKV_FIELD(nkv_quantized_kv_cache_info, bits),
    NKV_FIELD(nkv_quantized_kv_cache_info, group_size),
    NKV_FIELD(nkv_quantized_kv_cache_info, residual),
    NKV_FIELD(nkv_quantized_kv_cache_info, max_slots),
    NKV_FIELD(nkv_quantized_kv_cache_info, slots),
    NKV_FIELD(nkv_quantized_kv_cache_info, capacity),
    NKV_FIELD(nkv_quantized_kv_cache_info, tokens),
    NKV_FIELD(nkv_quantized_kv_cache_info, step_tokens),
    NKV_FIELD(nkv_quantized_kv_cache_info, bytes),
    NKV_FIELD(nkv_quantized_kv_cache_info, mapped_bytes),
    NKV_FIELD(nkv_quantized_kv_cache_info, page_size),
    NKV_FIELD(nkv_quantized_kv_cache_info, max_pages),
    NKV_FIELD(nkv_quantized_kv_cache_info, free_pages),
    NKV_FIELD(nkv_quantized_kv_cache_info, reserved),
};
#undef NKV_FIELD

struct StructInfo {
  const char* name;
  size_t size;
};
constexpr StructInfo kStructs[] = {
    {"nkv_tensor", sizeof(nkv_tensor)},
    {"nkv_device_properties", sizeof(nkv_device_properties)},
    {"nkv_context_options", sizeof(nkv_context_options)},
    {"nkv_int8_quant_params", sizeof(nkv_int8_quant_params)},
    {"nkv_attention_options", sizeof(nkv_attention_options)},
    {"nkv_attention_plan_info", sizeof(nkv_attention_plan_info)},
    {"nkv_pack_plan_info", sizeof(nkv_pack_plan_info)},
    {"nkv_paged_kv_cache_options", sizeof(nkv_paged_kv_cache_options)},
    {"nkv_paged_kv_cache_info", sizeof(nkv_paged_kv_cache_info)},
    {"nkv_virtual_kv_cache_options", sizeof(nkv_virtual_kv_cache_options)},
    {"nkv_virtual_kv_cache_info", sizeof(nkv_virtual_kv_cache_info)},
    {"nkv_quantized_kv_cache_options", sizeof(nkv_quantized_kv_cache_options)},
    {"nkv_quantized_kv_cache_info", sizeof(nkv_quantized_kv_cache_info)},
};

struct EnumInfo {
  const char* name;
  int64_t value;
};
#define NKV_ENUM(c) {#c, c}
constexpr EnumInfo kEnums[] = {
    NKV_ENUM(NKV_STATUS_SUCCESS),      NKV_ENUM(NKV_STATUS_INVALID_ARGUMENT), NKV_ENUM(NKV_STATUS_NOT_SUPPORTED),
    NKV_ENUM(NKV_STATUS_NO_DEVICE),    NKV_ENUM(NKV_STATUS_OUT_OF_MEMORY),    NKV_ENUM(NKV_STATUS_DEVICE_ERROR),
    NKV_ENUM(NKV_STATUS_INTERNAL),     NKV_ENUM(NKV_DTYPE_FLOAT32),           NKV_ENUM(NKV_DTYPE_FLOAT16),
    NKV_ENUM(NKV_DTYPE_BFLOAT16),      NKV_ENUM(NKV_DTYPE_INT8),              NKV_ENUM(NKV_DTYPE_UINT8),
    NKV_ENUM(NKV_DTYPE_INT32),         NKV_ENUM(NKV_DTYPE_INT64),             NKV_ENUM(NKV_DTYPE_FLOAT64),
    NKV_ENUM(NKV_DEVICE_HOST),         NKV_ENUM(NKV_DEVICE_CUDA),             NKV_ENUM(NKV_BACKEND_AUTO),
    NKV_ENUM(NKV_BACKEND_CPU),         NKV_ENUM(NKV_BACKEND_CUDA),            NKV_ENUM(NKV_QUANT_AXIS_ROW),
    NKV_ENUM(NKV_QUANT_AXIS_COLUMN),   NKV_ENUM(NKV_MAX_DIMS),                NKV_ENUM(NKV_ABI_VERSION),
    NKV_ENUM(NKV_ATTENTION_VARLEN),    NKV_ENUM(NKV_ATTENTION_DECODE),        NKV_ENUM(NKV_PACK_CU_SEQLENS),
    NKV_ENUM(NKV_PACK_POSITION_IDS),   NKV_ENUM(NKV_PACK_GATHER_INDEX),       NKV_ENUM(NKV_PACK_SCATTER_INDEX),
    NKV_ENUM(NKV_PACK_PROMPT_ORDER),   NKV_ENUM(NKV_PACK_ROW_STARTS),         NKV_ENUM(NKV_ATTENTION_KERNEL_AUTO),
    NKV_ENUM(NKV_ATTENTION_KERNEL_SM80), NKV_ENUM(NKV_ATTENTION_KERNEL_SM90),
    NKV_ENUM(NKV_PAGED_KV_K_POOL),     NKV_ENUM(NKV_PAGED_KV_V_POOL),         NKV_ENUM(NKV_PAGED_KV_BLOCK_TABLE),
    NKV_ENUM(NKV_PAGED_KV_SEQUENCE_LENGTHS), NKV_ENUM(NKV_PAGED_KV_STEP_SLOTS),
    NKV_ENUM(NKV_VIRTUAL_KV_LAYER_MAJOR), NKV_ENUM(NKV_VIRTUAL_KV_TOKEN_MAJOR), NKV_ENUM(NKV_VIRTUAL_KV_K),
    NKV_ENUM(NKV_VIRTUAL_KV_V),        NKV_ENUM(NKV_VIRTUAL_KV_SLOT_LENGTHS), NKV_ENUM(NKV_VIRTUAL_KV_STEP_ROWS),
    NKV_ENUM(NKV_KV_FORMAT_KIVI),      NKV_ENUM(NKV_QUANTIZED_KV_KEY_CODES),  NKV_ENUM(NKV_QUANTIZED_KV_KEY_GROUPS),
    NKV_ENUM(NKV_QUANTIZED_KV_KEY_RESIDUAL), NKV_ENUM(NKV_QUANTIZED_KV_VALUE_CODES), NKV_ENUM(NKV_QUANTIZED_KV_VALUE_GROUPS),
    NKV_ENUM(NKV_QUANTIZED_KV_VALUE_RESIDUAL), NKV_ENUM(NKV_QUANTIZED_KV_SLOT_LENGTHS),
    NKV_ENUM(NKV_QUANTIZED_KV_BLOCK_TABLE),
    NKV_ENUM(NKV_KV_FORMAT_BFP),       NKV_ENUM(NKV_KV_VALUES_LIKE_KEYS),     NKV_ENUM(NKV_KV_VALUES_FP16),
    NKV_ENUM(NKV_ROTARY_NONE),         NKV_ENUM(NKV_ROTARY_HALVES),           NKV_ENUM(NKV_ROTARY_ADJACENT),
    NKV_ENUM(NKV_KV_MEMORY_ALLOCATED), NKV_ENUM(NKV_KV_MEMORY_VIRTUAL), NKV_ENUM(NKV_KV_MEMORY_PAGED),
};
#undef NKV_ENUM

// Kept in step with the exported symbols by tests/native/abi_test.cpp (which reads the .so's dynamic
// symbol table) and by the managed conformance test (which reads the [LibraryImport] declarations).
constexpr const char* kExportedFunctions[] = {
    "nkv_version",
    "nkv_abi_version",
    "nkv_last_error",
    "nkv_status_name",
    "nkv_dtype_size",
    "nkv_cuda_device_count",
    "nkv_cuda_device_properties",
    "nkv_context_create",
    "nkv_context_destroy",
    "nkv_context_backend",
    "nkv_context_device_ordinal",
    "nkv_context_stream",
    "nkv_context_synchronize",
    "nkv_buffer_create",
    "nkv_buffer_destroy",
    "nkv_buffer_data",
    "nkv_buffer_size",
    "nkv_buffer_device",
    "nkv_buffer_upload",
    "nkv_buffer_download",
    "nkv_buffer_copy",
    "nkv_buffer_memset",
    "nkv_int8_quantize",
    "nkv_int8_dequantize",
    "nkv_attention_plan_varlen",
    "nkv_attention_plan_decode",
    "nkv_attention_plan_destroy",
    "nkv_attention_plan_get_info",
    "nkv_attention_varlen",
    "nkv_attention_decode",
    "nkv_attention_decode_kv_pointers",
    "nkv_attention_decode_paged",
    "nkv_attention_varlen_paged",
    "nkv_pack_plan_create",
    "nkv_pack_plan_destroy",
    "nkv_pack_plan_get_info",
    "nkv_pack_plan_copy_array",
    "nkv_pack_plan_array_view",
    "nkv_pack_gather",
    "nkv_pack_scatter",
    "nkv_pack_gather_padded",
    "nkv_pack_scatter_padded",
    "nkv_paged_kv_cache_create",
    "nkv_paged_kv_cache_destroy",
    "nkv_paged_kv_cache_add_sequence",
    "nkv_paged_kv_cache_fork",
    "nkv_paged_kv_cache_truncate",
    "nkv_paged_kv_cache_free_sequence",
    "nkv_paged_kv_cache_append",
    "nkv_paged_kv_cache_write",
    "nkv_paged_kv_cache_view",
    "nkv_paged_kv_cache_get_info",
    "nkv_paged_kv_cache_sequence",
    "nkv_virtual_kv_cache_create",
    "nkv_virtual_kv_cache_destroy",
    "nkv_virtual_kv_cache_add_slot",
    "nkv_virtual_kv_cache_fork",
    "nkv_virtual_kv_cache_truncate",
    "nkv_virtual_kv_cache_free_slot",
    "nkv_virtual_kv_cache_ensure_capacity",
    "nkv_virtual_kv_cache_reserve_ahead",
    "nkv_virtual_kv_cache_trim",
    "nkv_virtual_kv_cache_append",
    "nkv_virtual_kv_cache_write",
    "nkv_virtual_kv_cache_view",
    "nkv_virtual_kv_cache_get_info",
    "nkv_virtual_kv_cache_slot",
    "nkv_quantized_kv_cache_create",
    "nkv_quantized_kv_cache_destroy",
    "nkv_quantized_kv_cache_add_slot",
    "nkv_quantized_kv_cache_free_slot",
    "nkv_quantized_kv_cache_append",
    "nkv_quantized_kv_cache_write",
    "nkv_quantized_kv_cache_view",
    "nkv_quantized_kv_cache_get_info",
    "nkv_quantized_kv_cache_slot",
    "nkv_attention_decode_quantized",
    "nkv_ksort_calibrate",
    "nkv_quantized_kv_cache_set_key_permutation",
    "nkv_struct_size",
    "nkv_struct_field_offset",
    "nkv_enum_value",
    "nkv_exported_functions",
    nullptr,
};

bool same(const char* a, const char* b) { return a != nullptr && b != nullptr && std::strcmp(a, b) == 0; }

}  // namespace

extern "C" {

NKV_API size_t nkv_struct_size(const char* struct_name) {
  for (const StructInfo& s : kStructs) {
    if (same(s.name, struct_name)) return s.size;
  }
  return 0;
}

NKV_API size_t nkv_struct_field_offset(const char* struct_name, const char* field_name) {
  for (const FieldInfo& f : kFields) {
    if (same(f.structure, struct_name) && same(f.field, field_name)) return f.offset;
  }
  return SIZE_MAX;
}

NKV_API nkv_status nkv_enum_value(const char* constant_name, int64_t* out_value) {
  return guard("nkv_enum_value", [&] {
    if (constant_name == nullptr) fail_argument("argument 'constant_name' must not be NULL");
    require_out(out_value, "out_value");
    for (const EnumInfo& e : kEnums) {
      if (same(e.name, constant_name)) {
        *out_value = e.value;
        return;
      }
    }
    fail_argument(std::string("argument 'constant_name': unknown constant '") + constant_name + "'");
  });
}

NKV_API const char* const* nkv_exported_functions(void) { return kExportedFunctions; }

}  // extern "C"
