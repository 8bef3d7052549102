// Prepacking on the host: the first-fit-decreasing plan (shared by both backends) and the CPU
// gather_rows reference.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/pack.h"

namespace nkv {

namespace {

// The room left in every row that could ever open (at most one per prompt) as a max tree, so that
// "the first row with room for n tokens" is one descent: O(log rows) per prompt instead of a scan
// over every open row. Rows that have not opened yet have the whole capacity, so the first row with
// room is either an open one or the next new one, exactly as first fit opens rows.
class FirstFitRows {
 public:
  FirstFitRows(int32_t max_rows, int32_t capacity) {
    while (leaves_ < static_cast<size_t>(max_rows)) leaves_ *= 2;
    room_.assign(2 * leaves_, 0);  // leaves past max_rows keep 0 room: no prompt (length >= 1) fits there
    std::fill(room_.begin() + static_cast<std::ptrdiff_t>(leaves_),
              room_.begin() + static_cast<std::ptrdiff_t>(leaves_) + max_rows, capacity);
    for (size_t node = leaves_ - 1; node >= 1; --node) room_[node] = std::max(room_[2 * node], room_[2 * node + 1]);
  }

  // Puts `tokens` into the first row with room for them and returns that row's index.
  int32_t place(int32_t tokens) {
    size_t node = 1;
    while (node < leaves_) node = room_[2 * node] >= tokens ? 2 * node : 2 * node + 1;
    room_[node] -= tokens;
    for (size_t parent = node / 2; parent >= 1; parent /= 2) {
      room_[parent] = std::max(room_[2 * parent], room_[2 * parent + 1]);
    }
    return static_cast<int32_t>(node - leaves_);
  }

 private:
  size_t leaves_ = 1;
  std::vector<int32_t> room_;  // heap order: node n has children 2n and 2n + 1; leaves from leaves_
};

}  // namespace

void plan_packing(const int32_t* prompt_lengths, int32_t prompt_count, int32_t row_capacity, nkv_pack_plan& plan) {
  const auto prompts = static_cast<size_t>(prompt_count);

  // First fit decreasing: longest first, ties in caller order.
  std::vector<int32_t> by_length(prompts);
  std::iota(by_length.begin(), by_length.end(), 0);
  std::stable_sort(by_length.begin(), by_length.end(),
                   [&](int32_t a, int32_t b) { return prompt_lengths[a] > prompt_lengths[b]; });
  FirstFitRows rows(prompt_count, row_capacity);
  std::vector<int32_t> row_of_placed(prompts);  // row of the k-th prompt placed
  int32_t row_count = 0;
  for (size_t k = 0; k < prompts; ++k) {
    row_of_placed[k] = rows.place(prompt_lengths[by_length[k]]);
    row_count = std::max(row_count, row_of_placed[k] + 1);
  }

  int64_t total_tokens = 0;
  for (size_t p = 0; p < prompts; ++p) total_tokens += prompt_lengths[p];
  plan.prompt_count = prompt_count;
  plan.row_count = row_count;
  plan.row_capacity = row_capacity;
  plan.longest_prompt = prompt_lengths[by_length[0]];
  plan.total_tokens = total_tokens;

  const int64_t padded_slots = int64_t{plan.prompt_count} * plan.longest_prompt;
  const bool padded_slots_fit = padded_slots <= INT32_MAX;
  int64_t lengths[kPackArrayCount] = {};
  lengths[NKV_PACK_CU_SEQLENS] = prompt_count + 1;
  lengths[NKV_PACK_POSITION_IDS] = total_tokens;
  lengths[NKV_PACK_GATHER_INDEX] = total_tokens;
  lengths[NKV_PACK_SCATTER_INDEX] = total_tokens;
  lengths[NKV_PACK_PROMPT_ORDER] = prompt_count;
  lengths[NKV_PACK_ROW_STARTS] = row_count + 1;
  lengths[kPackCallerOffsets] = prompt_count + 1;
  lengths[kPackPaddedSlots] = padded_slots_fit ? total_tokens : 0;
  int64_t block_length = 0;
  for (int32_t which = 0; which < kPackArrayCount; ++which) {
    plan.spans[which] = {block_length, lengths[which]};
    block_length += lengths[which];
  }
  plan.host_block.assign(static_cast<size_t>(block_length), 0);
  auto array = [&plan](int32_t which) { return plan.host_block.data() + plan.spans[which].offset; };

  // Packed order: rows in the order they opened, prompts within a row in the order they were placed
  // (a stable counting sort of the placements by row).
  int32_t* row_starts = array(NKV_PACK_ROW_STARTS);
  for (int32_t row : row_of_placed) ++row_starts[row + 1];
  std::partial_sum(row_starts, row_starts + row_count + 1, row_starts);
  std::vector<int32_t> next_in_row(row_starts, row_starts + row_count);
  int32_t* order = array(NKV_PACK_PROMPT_ORDER);
  for (size_t k = 0; k < prompts; ++k) order[next_in_row[static_cast<size_t>(row_of_placed[k])]++] = by_length[k];

  // Token offsets of the prompts in caller order and in packed order.
  int32_t* caller_offsets = array(kPackCallerOffsets);
  std::partial_sum(prompt_lengths, prompt_lengths + prompt_count, caller_offsets + 1);
  int32_t* cu_seqlens = array(NKV_PACK_CU_SEQLENS);
  for (size_t k = 0; k < prompts; ++k) cu_seqlens[k + 1] = cu_seqlens[k] + prompt_lengths[order[k]];

  int32_t* position_ids = array(NKV_PACK_POSITION_IDS);
  int32_t* gather = array(NKV_PACK_GATHER_INDEX);
  int32_t* scatter = array(NKV_PACK_SCATTER_INDEX);
  for (size_t k = 0; k < prompts; ++k) {
    const int32_t prompt = order[k];
    for (int32_t i = 0; i < prompt_lengths[prompt]; ++i) {
      const int32_t packed_token = cu_seqlens[k] + i;
      const int32_t caller_token = caller_offsets[prompt] + i;
      position_ids[packed_token] = i;
      gather[packed_token] = caller_token;
      scatter[caller_token] = packed_token;
    }
  }

  if (padded_slots_fit) {
    int32_t* slots = array(kPackPaddedSlots);
    for (int32_t p = 0; p < prompt_count; ++p) {
      for (int32_t i = 0; i < prompt_lengths[p]; ++i) slots[caller_offsets[p] + i] = p * plan.longest_prompt + i;
    }
  }
}

namespace cpu {

void gather_rows(const GatherRowsArgs& args) {
  const size_t row_bytes = static_cast<size_t>(args.row_elements) * args.element_size;
  if (row_bytes == 0) return;
  const auto* source = static_cast<const unsigned char*>(args.source);
  auto* destination = static_cast<unsigned char*>(args.destination);
  for (int64_t row = 0; row < args.rows; ++row) {
    unsigned char* to = destination + static_cast<size_t>(args.destination_layout.offset(row)) * args.element_size;
    const int64_t from = args.source_row(row);
    if (from < 0) {
      std::memset(to, 0, row_bytes);
    } else {
      std::memcpy(to, source + static_cast<size_t>(args.source_layout.offset(from)) * args.element_size, row_bytes);
    }
  }
}

}  // namespace cpu

}  // namespace nkv
