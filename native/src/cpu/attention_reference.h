// The reference attention of one (sequence, head): the formulas of nativekv.h evaluated directly, scores
// and sums in float64, over K and V rows from any reader (plain, paged or blocked rows in cpu/attention.cpp,
// dequantized rows in cpu/kv_quant.cpp); and the host thread pool the references share.
#pragma once

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

namespace nkv::cpu::reference {

inline double load(const void* base, nkv_dtype dtype, int64_t index) {
  const uint16_t bits = static_cast<const uint16_t*>(base)[index];
  return dtype == NKV_DTYPE_BFLOAT16 ? bfloat16_to_float(bits) : half_to_float(bits);
}

inline void store(void* base, nkv_dtype dtype, int64_t index, double value) {
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

// Rows of K or V stored as q's 2-byte type, wherever RowsOfHead puts them.
struct StoredRows {
  RowsOfHead rows;
  nkv_dtype dtype;
  void operator()(int64_t j, int32_t head_dim, double* out) const {
    const int64_t at = rows.offset(j);
    for (int32_t d = 0; d < head_dim; ++d) out[d] = load(rows.base, dtype, at + d);
  }
};

// One head of one sequence: lq queries against lk keys. key(j, head_dim, out) and value(j, head_dim, out)
// write row j of K and V as float64.
template <typename KeyRows, typename ValueRows>
void attend(const AttentionMask& mask, nkv_dtype dtype, int32_t head_dim, int64_t lq, int64_t lk, RowsOfHead q,
            const KeyRows& key_rows, const ValueRows& value_rows, OutputRowsOfHead o) {
  std::vector<double> scores;
  std::vector<double> query(static_cast<size_t>(head_dim));
  std::vector<double> out(static_cast<size_t>(head_dim));
  std::vector<double> row(static_cast<size_t>(head_dim));
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
      key_rows(j, head_dim, row.data());
      for (int32_t d = 0; d < head_dim; ++d) dot += query[d] * row[d];
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
      value_rows(j, head_dim, row.data());
      for (int32_t d = 0; d < head_dim; ++d) out[d] += p * row[d];
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
inline void parallel_for(int64_t count, Task&& task) {
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

}  // namespace nkv::cpu::reference
