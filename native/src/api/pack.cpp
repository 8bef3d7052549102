#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string>

#include "core/api_guard.h"
#include "core/backends.h"
#include "core/context_memory.h"
#include "core/pack.h"
#include "core/tensor_checks.h"

using namespace nkv;

namespace {

const char* array_name(int32_t which) {
  switch (which) {
    case NKV_PACK_CU_SEQLENS: return "NKV_PACK_CU_SEQLENS";
    case NKV_PACK_POSITION_IDS: return "NKV_PACK_POSITION_IDS";
    case NKV_PACK_GATHER_INDEX: return "NKV_PACK_GATHER_INDEX";
    case NKV_PACK_SCATTER_INDEX: return "NKV_PACK_SCATTER_INDEX";
    case NKV_PACK_PROMPT_ORDER: return "NKV_PACK_PROMPT_ORDER";
    case NKV_PACK_ROW_STARTS: return "NKV_PACK_ROW_STARTS";
    default: return nullptr;
  }
}

// Owns a plan under construction or destruction: frees its device block (queued kernels must be done
// with it first) and the host side.
struct PlanDeleter {
  void operator()(nkv_pack_plan* plan) const noexcept {
    if (plan->device_block != nullptr) cuda::release(plan->context->device_ordinal, plan->device_block);
    delete plan;
  }
};
using PlanPtr = std::unique_ptr<nkv_pack_plan, PlanDeleter>;

const nkv_pack_plan& check_plan(const nkv_pack_plan* plan) {
  if (plan == nullptr) fail_argument("argument 'plan' must not be NULL");
  return *plan;
}

int32_t check_which(int32_t which) {
  if (array_name(which) == nullptr) {
    fail_argument("argument 'which': expected an nkv_pack_array value (NKV_PACK_CU_SEQLENS (0) .. NKV_PACK_ROW_STARTS (" +
                  std::to_string(NKV_PACK_ROW_STARTS) + ")), got " + std::to_string(which));
  }
  return which;
}

// Validates the prompt lengths and returns the longest; total tokens must be numbered by int32 indices.
int32_t check_prompt_lengths(const int32_t* prompt_lengths, int32_t prompt_count) {
  if (prompt_count <= 0) fail_argument("argument 'prompt_count': expected at least 1, got " + std::to_string(prompt_count));
  if (prompt_lengths == nullptr) fail_argument("argument 'prompt_lengths' must not be NULL");
  int32_t longest = 0;
  int64_t total = 0;
  for (int32_t p = 0; p < prompt_count; ++p) {
    if (prompt_lengths[p] <= 0) {
      fail_argument("argument 'prompt_lengths': expected every length >= 1, got " + std::to_string(prompt_lengths[p]) +
                    " at index " + std::to_string(p));
    }
    longest = std::max(longest, prompt_lengths[p]);
    total += prompt_lengths[p];
  }
  if (total > INT32_MAX) {
    fail(NKV_STATUS_NOT_SUPPORTED, "argument 'prompt_lengths': the prompts hold " + std::to_string(total) +
                                       " tokens in total; at most " + std::to_string(INT32_MAX) +
                                       " are supported (token indices are int32)");
  }
  return longest;
}

// A [rows >= total_tokens, hidden] matrix with unit last stride; hidden < 0 accepts any width.
const nkv_tensor& check_token_matrix(const char* name, const nkv_tensor* tensor, const nkv_pack_plan& plan,
                                     int64_t hidden) {
  const nkv_tensor& t = check_tensor(name, tensor, *plan.context);
  check_shape(name, t, {-1, hidden});
  if (t.shape[0] < plan.total_tokens) {
    fail_argument(std::string("argument '") + name + "': expected at least total_tokens (" +
                  std::to_string(plan.total_tokens) + ") rows, got shape " + shape_string(t));
  }
  check_unit_inner_stride(name, t);
  return t;
}

// The padded layout [prompt_count, longest_prompt, hidden]; its slots are numbered by int32 indices.
const nkv_tensor& check_padded(const char* name, const nkv_tensor* tensor, const nkv_pack_plan& plan, int64_t hidden) {
  if (plan.spans[kPackPaddedSlots].length != plan.total_tokens) {
    fail(NKV_STATUS_NOT_SUPPORTED, "the padded layout [" + std::to_string(plan.prompt_count) + ", " +
                                       std::to_string(plan.longest_prompt) + ", *] has more than " +
                                       std::to_string(INT32_MAX) + " slots (slot indices are int32)");
  }
  const nkv_tensor& t = check_tensor(name, tensor, *plan.context);
  check_shape(name, t, {plan.prompt_count, plan.longest_prompt, hidden});
  check_unit_inner_stride(name, t);
  return t;
}

RowLayout matrix_layout(const nkv_tensor& t) {
  RowLayout layout;
  layout.row_stride = t.strides[0];
  return layout;
}

RowLayout padded_layout(const nkv_tensor& t) {
  RowLayout layout;
  layout.row_stride = t.strides[1];
  layout.rows_per_group = t.shape[1];
  layout.group_stride = t.strides[0];
  return layout;
}

void run_gather_rows(const nkv_pack_plan& plan, const GatherRowsArgs& args) {
  if (plan.context->backend == NKV_BACKEND_CUDA) {
    cuda::gather_rows(args, *plan.context);
  } else {
    cpu::gather_rows(args);
  }
}

// Between two [rows >= total_tokens, hidden] matrices: destination[t] = source[index[t]].
void move_tokens(const nkv_pack_plan* plan, const char* source_name, const nkv_tensor* source,
                 const char* destination_name, const nkv_tensor* destination, int32_t index_array) {
  const nkv_pack_plan& p = check_plan(plan);
  const nkv_tensor& from = check_token_matrix(source_name, source, p, -1);
  const nkv_tensor& to = check_token_matrix(destination_name, destination, p, from.shape[1]);
  check_same_dtype(destination_name, to, source_name, from);
  check_rows_disjoint(destination_name, to);
  check_disjoint(destination_name, to, source_name, from);

  GatherRowsArgs args;
  args.source = from.data;
  args.source_layout = matrix_layout(from);
  args.destination = to.data;
  args.destination_layout = matrix_layout(to);
  args.rows = p.total_tokens;
  args.row_elements = from.shape[1];
  args.element_size = nkv_dtype_size(from.dtype);
  args.index = p.device_array(index_array);
  run_gather_rows(p, args);
}

}  // namespace

extern "C" {

NKV_API nkv_status nkv_pack_plan_create(nkv_context* context, const int32_t* prompt_lengths, int32_t prompt_count,
                                        int32_t row_capacity, nkv_pack_plan** out_plan) {
  return guard("nkv_pack_plan_create", [&] {
    const nkv_context& c = check_context(context);
    const int32_t longest = check_prompt_lengths(prompt_lengths, prompt_count);
    if (row_capacity < 0 || (row_capacity > 0 && row_capacity < longest)) {
      fail_argument("argument 'row_capacity': expected 0 (the longest prompt) or at least the longest prompt (" +
                    std::to_string(longest) + "), got " + std::to_string(row_capacity));
    }
    require_out(out_plan, "out_plan");

    PlanPtr plan(new nkv_pack_plan());
    plan->context = context;
    plan_packing(prompt_lengths, prompt_count, row_capacity == 0 ? longest : row_capacity, *plan);
    if (c.backend == NKV_BACKEND_CUDA) {
      const uint64_t bytes = plan->host_block.size() * sizeof(int32_t);
      plan->device_block = cuda::allocate(c.device_ordinal, bytes);
      cuda::upload(c.device_ordinal, c.stream, plan->device_block, plan->host_block.data(), bytes);
    }
    *out_plan = plan.release();
  });
}

NKV_API nkv_status nkv_pack_plan_destroy(nkv_pack_plan* plan) {
  return guard("nkv_pack_plan_destroy", [&] {
    if (plan == nullptr) return;
    PlanPtr owned(plan);  // freed even when waiting fails: the failed work no longer runs
    const nkv_context& c = *plan->context;
    // Kernels queued on the context's stream may still read the index arrays.
    synchronize_on(c);
  });
}

NKV_API nkv_status nkv_pack_plan_get_info(const nkv_pack_plan* plan, nkv_pack_plan_info* out_info) {
  return guard("nkv_pack_plan_get_info", [&] {
    const nkv_pack_plan& p = check_plan(plan);
    require_out(out_info, "out_info");
    nkv_pack_plan_info info{};
    info.prompt_count = p.prompt_count;
    info.row_count = p.row_count;
    info.row_capacity = p.row_capacity;
    info.longest_prompt = p.longest_prompt;
    info.total_tokens = p.total_tokens;
    info.padding_tokens = int64_t{p.row_count} * p.row_capacity - p.total_tokens;
    info.unpacked_padding_tokens = int64_t{p.prompt_count} * p.longest_prompt - p.total_tokens;
    // The layout of the first release; fields appended later are filled only for callers that have them.
    write_sized_struct(out_info, info, "out_info", offsetof(nkv_pack_plan_info, unpacked_padding_tokens) + sizeof(int64_t),
                       "the first nkv_pack_plan_info");
  });
}

NKV_API nkv_status nkv_pack_plan_copy_array(const nkv_pack_plan* plan, int32_t which, int32_t* destination,
                                            int64_t capacity, int64_t* out_length) {
  return guard("nkv_pack_plan_copy_array", [&] {
    const nkv_pack_plan& p = check_plan(plan);
    const int64_t length = p.spans[check_which(which)].length;
    if (destination == nullptr) fail_argument("argument 'destination' must not be NULL");
    if (capacity < length) {
      fail_argument("argument 'capacity': " + std::string(array_name(which)) + " holds " + std::to_string(length) +
                    " values, got capacity " + std::to_string(capacity));
    }
    std::memcpy(destination, p.host_array(which), static_cast<size_t>(length) * sizeof(int32_t));
    if (out_length != nullptr) *out_length = length;
  });
}

NKV_API nkv_status nkv_pack_plan_array_view(const nkv_pack_plan* plan, int32_t which, nkv_tensor* out_view) {
  return guard("nkv_pack_plan_array_view", [&] {
    const nkv_pack_plan& p = check_plan(plan);
    check_which(which);
    require_out(out_view, "out_view");
    nkv_tensor view{};
    view.data = const_cast<int32_t*>(p.device_array(which));
    view.dtype = NKV_DTYPE_INT32;
    view.device = device_type_of(*p.context);
    view.ndim = 1;
    view.shape[0] = p.spans[which].length;
    view.strides[0] = 1;
    *out_view = view;
  });
}

NKV_API nkv_status nkv_pack_gather(const nkv_pack_plan* plan, const nkv_tensor* input, const nkv_tensor* packed) {
  return guard("nkv_pack_gather", [&] {
    move_tokens(plan, "input", input, "packed", packed, NKV_PACK_GATHER_INDEX);
  });
}

NKV_API nkv_status nkv_pack_scatter(const nkv_pack_plan* plan, const nkv_tensor* packed, const nkv_tensor* output) {
  return guard("nkv_pack_scatter", [&] {
    move_tokens(plan, "packed", packed, "output", output, NKV_PACK_SCATTER_INDEX);
  });
}

NKV_API nkv_status nkv_pack_gather_padded(const nkv_pack_plan* plan, const nkv_tensor* input, const nkv_tensor* padded) {
  return guard("nkv_pack_gather_padded", [&] {
    const nkv_pack_plan& p = check_plan(plan);
    const nkv_tensor& from = check_token_matrix("input", input, p, -1);
    const nkv_tensor& to = check_padded("padded", padded, p, from.shape[1]);
    check_same_dtype("padded", to, "input", from);
    check_elements_disjoint("padded", to);
    check_disjoint("padded", to, "input", from);

    GatherRowsArgs args;
    args.source = from.data;
    args.source_layout = matrix_layout(from);
    args.destination = to.data;
    args.destination_layout = padded_layout(to);
    args.rows = int64_t{p.prompt_count} * p.longest_prompt;
    args.row_elements = from.shape[1];
    args.element_size = nkv_dtype_size(from.dtype);
    args.runs = p.device_array(kPackCallerOffsets);
    run_gather_rows(p, args);
  });
}

NKV_API nkv_status nkv_pack_scatter_padded(const nkv_pack_plan* plan, const nkv_tensor* padded, const nkv_tensor* output) {
  return guard("nkv_pack_scatter_padded", [&] {
    const nkv_pack_plan& p = check_plan(plan);
    const nkv_tensor& from = check_padded("padded", padded, p, -1);
    const nkv_tensor& to = check_token_matrix("output", output, p, from.shape[2]);
    check_same_dtype("output", to, "padded", from);
    check_rows_disjoint("output", to);
    check_disjoint("output", to, "padded", from);

    GatherRowsArgs args;
    args.source = from.data;
    args.source_layout = padded_layout(from);
    args.destination = to.data;
    args.destination_layout = matrix_layout(to);
    args.rows = p.total_tokens;
    args.row_elements = from.shape[2];
    args.element_size = nkv_dtype_size(from.dtype);
    args.index = p.device_array(kPackPaddedSlots);
    run_gather_rows(p, args);
  });
}

}  // extern "C"
