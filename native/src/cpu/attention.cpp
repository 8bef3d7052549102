// Reference attention: the formulas of nativekv.h evaluated directly, scores and sums in float64.
// Written for clarity; the CUDA kernels are tested against it. Independent (sequence, head) pairs are
// spread over the host's threads so that long-sequence tests stay practical.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "core/attention.h"
#include "core/float_bits.h"

namespace nkv::cpu {
namespace {

double load(const void* base, nkv_dtype dtype, int64_t index) {
  const uint16_t bits = static_cast<const uint16_t*>(base)[index];
  return dtype == NKV_DTYPE_BFLOAT16 ? bfloat16_to_float(bits) : half_to_float(bits);
}

void store(void* base, nkv_dtype dtype, int64_t index, double value) {
  const float f = static_cast<float>(value);
  static_cast<uint16_t*>(base)[index] = dtype == NKV_DTYPE_BFLOAT16 ? float_to_bfloat16(f) : float_to_half(f);
}

// Where one head's rows live: element (row, d) is at base + offset(row) + d: row * row_stride, through a
// page table (row r is row pages[r >> page_shift] << page_shift | r % page size), or in blocks of
// block_tokens rows block_stride apart.
struct RowsOfHead {
  const void* base = nullptr;
  int64_t row_stride = 0;
  const int32_t* pages = nullptr;
  int32_t page_shift = 0;
  int64_t block_tokens = 0;
  int64_t block_stride = 0;
  int64_t offset(int64_t row) const {
    if (block_tokens > 0) return row / block_tokens * block_stride + row % block_tokens * row_stride;
    if (pages == nullptr) return row * row_stride;
    const int64_t page = pages[row >> page_shift];
    return ((page << page_shift) | (row & ((int64_t{1} << page_shift) - 1))) * row_stride;
  }
};

struct OutputRowsOfHead {
  void* base = nullptr;
  int64_t row_stride = 0;
  float* lse = nullptr;  // lse[row * lse_row_stride], or null
  int64_t lse_row_stride = 0;
};

// One head of one sequence: lq queries against lk keys.
void attend(const AttentionMask& mask, nkv_dtype dtype, int32_t head_dim, int64_t lq, int64_t lk, RowsOfHead q,
            RowsOfHead k, RowsOfHead v, OutputRowsOfHead o) {
  std::vector<double> scores;
  std::vector<double> query(static_cast<size_t>(head_dim));
  std::vector<double> out(static_cast<size_t>(head_dim));
  for (int64_t i = 0; i < lq; ++i) {
    // Visible keys: [first, last] by the bottom-right aligned causal mask and the left window.
    const int64_t diagonal = i + lk - lq;
    const int64_t last = mask.causal ? std::min(diagonal, lk - 1) : lk - 1;
    const int64_t first = mask.window_left >= 0 ? std::max<int64_t>(0, diagonal - mask.window_left) : 0;
    for (int32_t d = 0; d < head_dim; ++d) query[d] = load(q.base, dtype, i * q.row_stride + d);
    double max_score = -std::numeric_limits<double>::infinity();
    scores.resize(static_cast<size_t>(std::max<int64_t>(0, last - first + 1)));
    for (int64_t j = first; j <= last; ++j) {
      double dot = 0.0;
      const int64_t key = k.offset(j);
      for (int32_t d = 0; d < head_dim; ++d) dot += query[d] * load(k.base, dtype, key + d);
      double s = static_cast<double>(mask.softmax_scale) * dot;
      if (mask.softcap > 0.0f) s = mask.softcap * std::tanh(s / mask.softcap);
      scores[j - first] = s;
      max_score = std::max(max_score, s);
    }
    std::fill(out.begin(), out.end(), 0.0);
    double sum = 0.0;
    for (int64_t j = first; j <= last; ++j) {
      const double p = std::exp(scores[j - first] - max_score);
      sum += p;
      const int64_t value = v.offset(j);
      for (int32_t d = 0; d < head_dim; ++d) out[d] += p * load(v.base, dtype, value + d);
    }
    const bool sees_keys = first <= last;
    for (int32_t d = 0; d < head_dim; ++d) store(o.base, dtype, i * o.row_stride + d, sees_keys ? out[d] / sum : 0.0);
    if (o.lse != nullptr) {
      o.lse[i * o.lse_row_stride] =
          sees_keys ? static_cast<float>(max_score + std::log(sum)) : -std::numeric_limits<float>::infinity();
    }
  }
}

// Runs task(0..count-1) on the host's threads. An exception in a task (std::bad_alloc for a very long
// sequence) stops the others from taking new tasks and is rethrown here, on the calling thread, so it
// reaches the API guard instead of terminating the process.
template <typename Task>
void parallel_for(int64_t count, Task&& task) {
  const int64_t workers = std::min<int64_t>(count, std::max(1u, std::thread::hardware_concurrency()));
  if (workers <= 1) {
    for (int64_t i = 0; i < count; ++i) task(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto work = [&] {
    try {
      for (int64_t i = next++; i < count; i = next++) task(i);
    } catch (...) {
      const std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
      next = count;
    }
  };
  std::vector<std::thread> threads;
  try {
    for (int64_t w = 1; w < workers; ++w) threads.emplace_back(work);
  } catch (...) {  // no more threads: the ones running and this one finish the tasks
  }
  work();
  for (std::thread& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
}

// Q, K, V and O are 2-byte types.
const void* at(const void* base, int64_t element) { return static_cast<const char*>(base) + element * 2; }
void* at(void* base, int64_t element) { return static_cast<char*>(base) + element * 2; }

}  // namespace

void attention_varlen(const nkv_attention_plan& plan, const VarlenAttentionArgs& a) {
  const int32_t group = plan.num_heads_q / plan.num_heads_kv;
  parallel_for(static_cast<int64_t>(plan.batch) * plan.num_heads_q, [&](int64_t task) {
    const int32_t b = static_cast<int32_t>(task / plan.num_heads_q);
    const int32_t h = static_cast<int32_t>(task % plan.num_heads_q);
    const int64_t q0 = plan.cu_seqlens_q[b];
    const int64_t k0 = plan.cu_seqlens_k[b];
    const int64_t lq = plan.cu_seqlens_q[b + 1] - q0;
    const int64_t lk = plan.cu_seqlens_k[b + 1] - k0;
    const int32_t hk = h / group;
    RowsOfHead q{at(a.q, q0 * a.q_strides.row + h * a.q_strides.head), a.q_strides.row};
    const int32_t* pages = a.block_table != nullptr ? a.block_table + b * a.block_table_stride : nullptr;
    // Paged: the sequence's keys start on its first page. Batched: at row 0 of its batch entry.
    const int64_t k_row0 = pages != nullptr || a.batched_kv ? 0 : k0;
    RowsOfHead k{at(a.k, b * a.k_batch_stride + k_row0 * a.k_strides.row + hk * a.k_strides.head), a.k_strides.row, pages,
                 a.page_shift, a.key_blocks.tokens, a.key_blocks.k_stride};
    RowsOfHead v{at(a.v, b * a.v_batch_stride + k_row0 * a.v_strides.row + hk * a.v_strides.head), a.v_strides.row, pages,
                 a.page_shift, a.key_blocks.tokens, a.key_blocks.v_stride};
    OutputRowsOfHead o{at(a.o, q0 * a.o_strides.row + h * a.o_strides.head), a.o_strides.row,
                       a.lse != nullptr ? a.lse + h * a.lse_head_stride + q0 : nullptr, 1};
    attend(plan.mask, a.dtype, plan.head_dim, lq, lk, q, k, v, o);
  });
}

void attention_decode(const nkv_attention_plan& plan, const DecodeAttentionArgs& a) {
  const int32_t group = plan.num_heads_q / plan.num_heads_kv;
  parallel_for(static_cast<int64_t>(plan.batch) * plan.num_heads_q, [&](int64_t task) {
    const int32_t b = static_cast<int32_t>(task / plan.num_heads_q);
    const int32_t h = static_cast<int32_t>(task % plan.num_heads_q);
    const int32_t hk = h / group;
    RowsOfHead q{at(a.q, b * a.q_batch_stride + h * a.q_strides.head), a.q_strides.row};
    const void* k_base = a.k_pointers != nullptr ? reinterpret_cast<const void*>(a.k_pointers[b]) : at(a.k, b * a.k_batch_stride);
    const void* v_base = a.v_pointers != nullptr ? reinterpret_cast<const void*>(a.v_pointers[b]) : at(a.v, b * a.v_batch_stride);
    const int32_t* pages = a.block_table != nullptr ? a.block_table + b * a.block_table_stride : nullptr;
    RowsOfHead k{at(k_base, hk * a.k_strides.head), a.k_strides.row, pages, a.page_shift, a.key_blocks.tokens,
                 a.key_blocks.k_stride};
    RowsOfHead v{at(v_base, hk * a.v_strides.head), a.v_strides.row, pages, a.page_shift, a.key_blocks.tokens,
                 a.key_blocks.v_stride};
    OutputRowsOfHead o{at(a.o, b * a.o_batch_stride + h * a.o_strides.head), a.o_strides.row,
                       a.lse != nullptr ? a.lse + b * a.lse_batch_stride + h * a.lse_head_stride : nullptr, 1};
    attend(plan.mask, a.dtype, plan.head_dim, plan.q_len, plan.seqlens_k[b], q, k, v, o);
  });
}

}  // namespace nkv::cpu
