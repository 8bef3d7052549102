// Prepacking: the first-fit-decreasing plan against a naive reference and an exact optimum, the
// index arrays' mutual consistency, the four data-movement ops on the CPU against a host model, CUDA
// bit-exact against the CPU, and every bad-input path.
#include <algorithm>
#include <numeric>
#include <utility>

#include "test_support.h"

using namespace nkv_test;

namespace {

struct PlanDeleter {
  void operator()(nkv_pack_plan* p) const { nkv_pack_plan_destroy(p); }
};
using PlanPtr = std::unique_ptr<nkv_pack_plan, PlanDeleter>;

PlanPtr make_plan(nkv_context* context, const std::vector<int32_t>& lengths, int32_t row_capacity) {
  nkv_pack_plan* plan = nullptr;
  EXPECT_EQ(nkv_pack_plan_create(context, lengths.data(), static_cast<int32_t>(lengths.size()), row_capacity, &plan),
            NKV_STATUS_SUCCESS)
      << nkv_last_error();
  return PlanPtr(plan);
}

nkv_pack_plan_info info_of(const nkv_pack_plan* plan) {
  nkv_pack_plan_info info{};
  info.struct_size = sizeof info;
  EXPECT_EQ(nkv_pack_plan_get_info(plan, &info), NKV_STATUS_SUCCESS) << nkv_last_error();
  return info;
}

std::vector<int32_t> array_of(const nkv_pack_plan* plan, nkv_pack_array which) {
  const nkv_pack_plan_info info = info_of(plan);
  const int64_t lengths[] = {info.prompt_count + 1, info.total_tokens, info.total_tokens,
                             info.total_tokens,     info.prompt_count, info.row_count + 1};
  std::vector<int32_t> values(static_cast<size_t>(lengths[which]), -1);
  int64_t length = -1;
  EXPECT_EQ(nkv_pack_plan_copy_array(plan, which, values.data(), lengths[which], &length), NKV_STATUS_SUCCESS)
      << nkv_last_error();
  EXPECT_EQ(length, lengths[which]) << "array " << which;
  return values;
}

std::vector<int32_t> random_lengths(size_t count, int32_t longest) {
  std::uniform_int_distribution<int32_t> length(1, longest);
  std::vector<int32_t> lengths(count);
  for (auto& l : lengths) l = length(rng());
  return lengths;
}

// First fit decreasing as the header states it, written as plainly as possible: longest first (ties in
// caller order), each prompt into the first row with room, rows in opening order, prompts within a row
// in placement order.
std::pair<std::vector<int32_t>, std::vector<int32_t>> reference_packing(const std::vector<int32_t>& lengths,
                                                                        int32_t capacity) {
  std::vector<int32_t> by_length(lengths.size());
  std::iota(by_length.begin(), by_length.end(), 0);
  std::stable_sort(by_length.begin(), by_length.end(), [&](int32_t a, int32_t b) { return lengths[a] > lengths[b]; });
  std::vector<std::vector<int32_t>> rows;
  std::vector<int32_t> room;
  for (int32_t p : by_length) {
    size_t r = 0;
    while (r < rows.size() && room[r] < lengths[p]) ++r;
    if (r == rows.size()) {
      rows.emplace_back();
      room.push_back(capacity);
    }
    rows[r].push_back(p);
    room[r] -= lengths[p];
  }
  std::vector<int32_t> order, row_starts{0};
  for (const auto& row : rows) {
    order.insert(order.end(), row.begin(), row.end());
    row_starts.push_back(static_cast<int32_t>(order.size()));
  }
  return {order, row_starts};
}

// The fewest rows any packing needs (exact, by dynamic programming over subsets: for each set of
// prompts placed, the fewest rows and then the least-filled last row).
int32_t optimal_row_count(const std::vector<int32_t>& lengths, int32_t capacity) {
  const size_t n = lengths.size();
  std::vector<std::pair<int32_t, int32_t>> best(size_t{1} << n, {INT32_MAX, 0});
  best[0] = {1, 0};
  for (size_t placed = 0; placed < best.size(); ++placed) {
    for (size_t p = 0; p < n; ++p) {
      if (placed & (size_t{1} << p)) continue;
      const auto [rows, fill] = best[placed];
      const std::pair<int32_t, int32_t> next =
          fill + lengths[p] <= capacity ? std::make_pair(rows, fill + lengths[p]) : std::make_pair(rows + 1, lengths[p]);
      best[placed | (size_t{1} << p)] = std::min(best[placed | (size_t{1} << p)], next);
    }
  }
  return best.back().first;
}

std::vector<int32_t> caller_offsets_of(const std::vector<int32_t>& lengths) {
  std::vector<int32_t> offsets(lengths.size() + 1, 0);
  std::partial_sum(lengths.begin(), lengths.end(), offsets.begin() + 1);
  return offsets;
}

// Every property the header promises of a plan, checked from the lengths alone.
void expect_consistent_plan(const nkv_pack_plan* plan, const std::vector<int32_t>& lengths, int32_t capacity) {
  const nkv_pack_plan_info info = info_of(plan);
  const int32_t prompts = static_cast<int32_t>(lengths.size());
  const int32_t longest = *std::max_element(lengths.begin(), lengths.end());
  const int64_t total = std::accumulate(lengths.begin(), lengths.end(), int64_t{0});
  ASSERT_EQ(info.prompt_count, prompts);
  ASSERT_EQ(info.longest_prompt, longest);
  ASSERT_EQ(info.row_capacity, capacity == 0 ? longest : capacity);
  ASSERT_EQ(info.total_tokens, total);
  ASSERT_EQ(info.padding_tokens, int64_t{info.row_count} * info.row_capacity - total);
  ASSERT_EQ(info.unpacked_padding_tokens, int64_t{prompts} * longest - total);
  ASSERT_GE(int64_t{info.row_count} * info.row_capacity, total) << "fewer rows than the tokens need";

  const auto order = array_of(plan, NKV_PACK_PROMPT_ORDER);
  const auto row_starts = array_of(plan, NKV_PACK_ROW_STARTS);
  const auto cu_seqlens = array_of(plan, NKV_PACK_CU_SEQLENS);
  const auto positions = array_of(plan, NKV_PACK_POSITION_IDS);
  const auto gather = array_of(plan, NKV_PACK_GATHER_INDEX);
  const auto scatter = array_of(plan, NKV_PACK_SCATTER_INDEX);
  ASSERT_EQ(order.size(), lengths.size());
  ASSERT_EQ(row_starts.size(), static_cast<size_t>(info.row_count) + 1);
  ASSERT_EQ(cu_seqlens.size(), lengths.size() + 1);
  ASSERT_EQ(positions.size(), static_cast<size_t>(total));
  ASSERT_EQ(gather.size(), static_cast<size_t>(total));
  ASSERT_EQ(scatter.size(), static_cast<size_t>(total));

  // Every prompt in exactly one row; no row above capacity; rows never empty.
  std::vector<int32_t> seen(lengths.size(), 0);
  for (int32_t p : order) {
    ASSERT_TRUE(p >= 0 && p < prompts) << p;
    ++seen[static_cast<size_t>(p)];
  }
  for (size_t p = 0; p < seen.size(); ++p) ASSERT_EQ(seen[p], 1) << "prompt " << p;
  ASSERT_EQ(row_starts.front(), 0);
  ASSERT_EQ(row_starts.back(), prompts);
  for (int32_t r = 0; r < info.row_count; ++r) {
    ASSERT_LT(row_starts[static_cast<size_t>(r)], row_starts[static_cast<size_t>(r) + 1]) << "row " << r << " is empty";
    int64_t fill = 0;
    for (int32_t k = row_starts[static_cast<size_t>(r)]; k < row_starts[static_cast<size_t>(r) + 1]; ++k) {
      fill += lengths[static_cast<size_t>(order[static_cast<size_t>(k)])];
    }
    ASSERT_LE(fill, info.row_capacity) << "row " << r;
  }

  // cu_seqlens, position ids, gather and scatter describe the same packed order, and are inverse.
  const auto caller_offsets = caller_offsets_of(lengths);
  ASSERT_EQ(cu_seqlens.front(), 0);
  for (size_t k = 0; k < order.size(); ++k) {
    const auto prompt = static_cast<size_t>(order[k]);
    ASSERT_EQ(cu_seqlens[k + 1] - cu_seqlens[k], lengths[prompt]) << "packed prompt " << k;
    for (int32_t i = 0; i < lengths[prompt]; ++i) {
      const auto t = static_cast<size_t>(cu_seqlens[k] + i);
      ASSERT_EQ(positions[t], i) << "packed token " << t;
      ASSERT_EQ(gather[t], caller_offsets[prompt] + i) << "packed token " << t;
    }
  }
  for (size_t t = 0; t < gather.size(); ++t) {
    ASSERT_EQ(scatter[static_cast<size_t>(gather[t])], static_cast<int32_t>(t)) << "packed token " << t;
  }
}

}  // namespace

// ---- the plan ----

TEST(PackPlan, SmallExampleByHand) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  // Decreasing: 7(p1) 5(p3) 4(p5) 3(p0) 2(p2) 1(p4). Rows of 8: [7, 1] [5, 3] [4, 2].
  const std::vector<int32_t> lengths{3, 7, 2, 5, 1, 4};
  PlanPtr plan = make_plan(cpu.get(), lengths, 8);
  const nkv_pack_plan_info info = info_of(plan.get());
  EXPECT_EQ(info.row_count, 3);
  EXPECT_EQ(info.total_tokens, 22);
  EXPECT_EQ(info.padding_tokens, 2);
  EXPECT_EQ(info.unpacked_padding_tokens, 6 * 7 - 22);
  EXPECT_EQ(array_of(plan.get(), NKV_PACK_PROMPT_ORDER), (std::vector<int32_t>{1, 4, 3, 0, 5, 2}));
  EXPECT_EQ(array_of(plan.get(), NKV_PACK_ROW_STARTS), (std::vector<int32_t>{0, 2, 4, 6}));
  EXPECT_EQ(array_of(plan.get(), NKV_PACK_CU_SEQLENS), (std::vector<int32_t>{0, 7, 8, 13, 16, 20, 22}));
  // Caller offsets: p0 0, p1 3, p2 10, p3 12, p4 17, p5 18.
  EXPECT_EQ(array_of(plan.get(), NKV_PACK_GATHER_INDEX),
            (std::vector<int32_t>{3, 4, 5, 6, 7, 8, 9, 17, 12, 13, 14, 15, 16, 0, 1, 2, 18, 19, 20, 21, 10, 11}));
  EXPECT_EQ(array_of(plan.get(), NKV_PACK_POSITION_IDS),
            (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 0, 0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 0, 1}));
  expect_consistent_plan(plan.get(), lengths, 8);
}

TEST(PackPlan, EqualLengthsKeepCallerOrder) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  PlanPtr plan = make_plan(cpu.get(), {2, 2, 2, 3, 2}, 4);
  // 3(p3) opens row 0; 2(p0) opens row 1; 2(p1) joins it; 2(p2) and 2(p4) share row 2.
  EXPECT_EQ(array_of(plan.get(), NKV_PACK_PROMPT_ORDER), (std::vector<int32_t>{3, 0, 1, 2, 4}));
  EXPECT_EQ(array_of(plan.get(), NKV_PACK_ROW_STARTS), (std::vector<int32_t>{0, 1, 3, 5}));
}

TEST(PackPlan, MatchesTheReferenceFirstFitDecreasing) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  for (int trial = 0; trial < 200; ++trial) {
    const size_t count = 1 + rng()() % 300;
    const int32_t longest = 1 + static_cast<int32_t>(rng()() % 700);
    const auto lengths = random_lengths(count, longest);
    const int32_t real_longest = *std::max_element(lengths.begin(), lengths.end());
    const int32_t capacity = trial % 4 == 0 ? 0 : real_longest + static_cast<int32_t>(rng()() % 2000);
    SCOPED_TRACE(testing::Message() << "trial " << trial << ": " << count << " prompts, capacity " << capacity);
    PlanPtr plan = make_plan(cpu.get(), lengths, capacity);
    const auto [order, row_starts] = reference_packing(lengths, capacity == 0 ? real_longest : capacity);
    ASSERT_EQ(array_of(plan.get(), NKV_PACK_PROMPT_ORDER), order);
    ASSERT_EQ(array_of(plan.get(), NKV_PACK_ROW_STARTS), row_starts);
    expect_consistent_plan(plan.get(), lengths, capacity);
  }
}

// First fit decreasing never needs fewer rows than the optimum, and at most 11/9 OPT + 6/9 (Dosa 2007).
TEST(PackPlan, RowCountIsWithinTheFirstFitDecreasingBoundOfTheOptimum) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  for (int trial = 0; trial < 300; ++trial) {
    const size_t count = 1 + rng()() % 11;
    const int32_t capacity = 2 + static_cast<int32_t>(rng()() % 30);
    const auto lengths = random_lengths(count, capacity);
    SCOPED_TRACE(testing::Message() << "trial " << trial << ", capacity " << capacity);
    PlanPtr plan = make_plan(cpu.get(), lengths, capacity);
    const int32_t rows = info_of(plan.get()).row_count;
    const int32_t optimum = optimal_row_count(lengths, capacity);
    ASSERT_GE(rows, optimum);
    ASSERT_LE(9 * rows, 11 * optimum + 6);
    expect_consistent_plan(plan.get(), lengths, capacity);
  }
}

TEST(PackPlan, DefaultCapacityIsTheLongestPrompt) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  const std::vector<int32_t> lengths{5, 9, 4, 1, 8, 3};
  PlanPtr by_default = make_plan(cpu.get(), lengths, 0);
  PlanPtr explicit_longest = make_plan(cpu.get(), lengths, 9);
  EXPECT_EQ(info_of(by_default.get()).row_capacity, 9);
  EXPECT_EQ(info_of(by_default.get()).row_count, 4);  // [9] [8, 1] [5, 4] [3]
  for (auto which : {NKV_PACK_CU_SEQLENS, NKV_PACK_POSITION_IDS, NKV_PACK_GATHER_INDEX, NKV_PACK_SCATTER_INDEX,
                     NKV_PACK_PROMPT_ORDER, NKV_PACK_ROW_STARTS}) {
    EXPECT_EQ(array_of(by_default.get(), which), array_of(explicit_longest.get(), which)) << "array " << which;
  }
}

TEST(PackPlan, OnePromptAndManyPrompts) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  PlanPtr single = make_plan(cpu.get(), {17}, 0);
  EXPECT_EQ(info_of(single.get()).row_count, 1);
  EXPECT_EQ(info_of(single.get()).padding_tokens, 0);
  expect_consistent_plan(single.get(), {17}, 0);
  // Many short prompts: first fit leaves almost no room in any row.
  const auto lengths = random_lengths(200000, 64);
  PlanPtr many = make_plan(cpu.get(), lengths, 4096);
  expect_consistent_plan(many.get(), lengths, 4096);
  EXPECT_LE(info_of(many.get()).padding_tokens, int64_t{4096} * 2) << "short prompts should fill rows almost fully";
}

TEST(PackPlan, CopyArrayAndViewAgree) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  const auto lengths = random_lengths(50, 40);
  PlanPtr plan = make_plan(cpu.get(), lengths, 64);
  const nkv_pack_plan_info info = info_of(plan.get());
  const int64_t expected_lengths[] = {51, info.total_tokens, info.total_tokens, info.total_tokens, 50,
                                      info.row_count + 1};
  for (int32_t which = 0; which <= NKV_PACK_ROW_STARTS; ++which) {
    std::vector<int32_t> copy(static_cast<size_t>(expected_lengths[which]), -7);
    NKV_ASSERT_OK(nkv_pack_plan_copy_array(plan.get(), which, copy.data(), expected_lengths[which], nullptr));
    nkv_tensor view{};
    NKV_ASSERT_OK(nkv_pack_plan_array_view(plan.get(), which, &view));
    EXPECT_EQ(view.dtype, NKV_DTYPE_INT32);
    EXPECT_EQ(view.device, NKV_DEVICE_HOST);
    EXPECT_EQ(view.ndim, 1);
    EXPECT_EQ(view.reserved, 0);
    EXPECT_EQ(view.shape[0], expected_lengths[which]);
    EXPECT_EQ(view.strides[0], 1);
    const auto* data = static_cast<const int32_t*>(view.data);
    EXPECT_EQ(std::vector<int32_t>(data, data + view.shape[0]), copy) << "array " << which;
  }
}

// ---- the data-movement ops: every op on any backend, outputs poisoned first ----

namespace {

constexpr uint8_t kPoison = 0x5A;
using PackOp = nkv_status (*)(const nkv_pack_plan*, const nkv_tensor*, const nkv_tensor*);

// A strided view's geometry; data comes from the context the op runs on.
struct Geometry {
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  size_t bytes(nkv_dtype dtype) const {
    int64_t last = 0;
    for (size_t d = 0; d < shape.size(); ++d) last += (shape[d] - 1) * strides[d];
    return static_cast<size_t>(last + 1) * nkv_dtype_size(dtype);
  }
};

Geometry matrix(int64_t rows, int64_t hidden, int64_t row_stride) { return {{rows, hidden}, {row_stride, 1}}; }

// padded [prompts, longest, hidden], each slot `slot_stride` elements apart; `prompt_major` false puts
// the prompts of one position next to each other ([longest, prompts] in memory).
Geometry padded_geometry(int64_t prompts, int64_t longest, int64_t hidden, int64_t slot_stride, bool prompt_major) {
  if (prompt_major) return {{prompts, longest, hidden}, {longest * slot_stride, slot_stride, 1}};
  return {{prompts, longest, hidden}, {slot_stride, prompts * slot_stride, 1}};
}

std::vector<uint8_t> random_bytes(size_t count) {
  std::vector<uint8_t> bytes(count);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng()());
  return bytes;
}

// Runs `op` on `context` with the source uploaded and the destination poisoned; returns the
// destination's bytes afterwards.
std::vector<uint8_t> run_op(nkv_context* context, const nkv_pack_plan* plan, PackOp op, nkv_dtype dtype,
                            const Geometry& source, const std::vector<uint8_t>& source_bytes,
                            const Geometry& destination) {
  const nkv_device_type device = device_of(context);
  const size_t destination_bytes = destination.bytes(dtype);
  Memory from(context, source_bytes.size()), to(context, destination_bytes);
  from.upload(source_bytes);
  to.fill(kPoison, destination_bytes);
  const nkv_tensor in = view(from.data(), dtype, device, source.shape, source.strides);
  const nkv_tensor out = view(to.data(), dtype, device, destination.shape, destination.strides);
  EXPECT_EQ(op(plan, &in, &out), NKV_STATUS_SUCCESS) << nkv_last_error();
  return to.download<uint8_t>(destination_bytes);
}

// The host model of all four ops: destination row r = source row index(r) (nullopt-like -1: zeros);
// every byte outside the written rows keeps the poison.
struct RowMap {
  std::vector<int64_t> destination_offsets;  // element offset of each destination row
  std::vector<int64_t> source_offsets;       // element offset of its source row, -1 for zeros
};

std::vector<uint8_t> model(const RowMap& map, const std::vector<uint8_t>& source, size_t destination_bytes,
                           int64_t hidden, size_t element_size) {
  std::vector<uint8_t> out(destination_bytes, kPoison);
  const size_t row_bytes = static_cast<size_t>(hidden) * element_size;
  for (size_t r = 0; r < map.destination_offsets.size(); ++r) {
    uint8_t* to = out.data() + static_cast<size_t>(map.destination_offsets[r]) * element_size;
    if (map.source_offsets[r] < 0) {
      std::memset(to, 0, row_bytes);
    } else {
      std::memcpy(to, source.data() + static_cast<size_t>(map.source_offsets[r]) * element_size, row_bytes);
    }
  }
  return out;
}

struct Case {
  std::vector<int32_t> lengths;
  int32_t capacity;
  nkv_dtype dtype;
  int64_t hidden;
  int64_t row_padding;  // extra elements between rows of every tensor
  int64_t extra_rows;   // rows past total_tokens in the token matrices
  bool prompt_major;    // padded layout
};

std::string describe(const Case& c) {
  return testing::PrintToString(c.lengths.size()) + " prompts, dtype " + std::to_string(c.dtype) + ", hidden " +
         std::to_string(c.hidden) + ", row padding " + std::to_string(c.row_padding) + ", extra rows " +
         std::to_string(c.extra_rows) + (c.prompt_major ? "" : ", position-major padded");
}

// Every op of `c` on every context, from the same random sources, against the host model: so the
// contexts agree byte for byte, padding between rows and rows past total_tokens included.
void check_ops(const std::vector<nkv_context*>& contexts, const Case& c) {
  std::vector<PlanPtr> plans;
  for (nkv_context* context : contexts) {
    plans.push_back(make_plan(context, c.lengths, c.capacity));
    ASSERT_NE(plans.back(), nullptr);
  }
  const nkv_pack_plan_info info = info_of(plans[0].get());
  const int64_t tokens = info.total_tokens, prompts = info.prompt_count, longest = info.longest_prompt;
  const int64_t stride = c.hidden + c.row_padding;
  const Geometry tokens_matrix = matrix(tokens + c.extra_rows, c.hidden, stride);
  const Geometry padded = padded_geometry(prompts, longest, c.hidden, stride, c.prompt_major);

  // Row maps from the plan's (separately verified) gather and scatter arrays and the caller offsets.
  const auto gather = array_of(plans[0].get(), NKV_PACK_GATHER_INDEX);
  const auto scatter = array_of(plans[0].get(), NKV_PACK_SCATTER_INDEX);
  const auto offsets = caller_offsets_of(c.lengths);
  RowMap pack, unpack, pad, unpad;
  for (int64_t t = 0; t < tokens; ++t) {
    pack.destination_offsets.push_back(t * stride);
    pack.source_offsets.push_back(gather[static_cast<size_t>(t)] * stride);
    unpack.destination_offsets.push_back(t * stride);
    unpack.source_offsets.push_back(scatter[static_cast<size_t>(t)] * stride);
  }
  for (int64_t p = 0; p < prompts; ++p) {
    for (int64_t i = 0; i < longest; ++i) {
      const int64_t slot = p * padded.strides[0] + i * padded.strides[1];
      const bool token = i < c.lengths[static_cast<size_t>(p)];
      pad.destination_offsets.push_back(slot);
      pad.source_offsets.push_back(token ? (offsets[static_cast<size_t>(p)] + i) * stride : -1);
      if (token) {
        unpad.destination_offsets.push_back((offsets[static_cast<size_t>(p)] + i) * stride);
        unpad.source_offsets.push_back(slot);
      }
    }
  }

  struct Step {
    const char* name;
    PackOp op;
    const Geometry& source;
    const Geometry& destination;
    const RowMap& map;
  };
  const Step steps[] = {{"nkv_pack_gather", nkv_pack_gather, tokens_matrix, tokens_matrix, pack},
                        {"nkv_pack_scatter", nkv_pack_scatter, tokens_matrix, tokens_matrix, unpack},
                        {"nkv_pack_gather_padded", nkv_pack_gather_padded, tokens_matrix, padded, pad},
                        {"nkv_pack_scatter_padded", nkv_pack_scatter_padded, padded, tokens_matrix, unpad}};
  for (const Step& step : steps) {
    SCOPED_TRACE(step.name);
    const auto source = random_bytes(step.source.bytes(c.dtype));
    const auto wanted = model(step.map, source, step.destination.bytes(c.dtype), c.hidden, nkv_dtype_size(c.dtype));
    for (size_t k = 0; k < contexts.size(); ++k) {
      SCOPED_TRACE(device_of(contexts[k]) == NKV_DEVICE_CUDA ? "cuda" : "cpu");
      const auto result = run_op(contexts[k], plans[k].get(), step.op, c.dtype, step.source, source, step.destination);
      ASSERT_EQ(result.size(), wanted.size());
      for (size_t b = 0; b < wanted.size(); ++b) ASSERT_EQ(result[b], wanted[b]) << "byte " << b;
    }
  }
}

std::vector<Case> cases(bool large) {
  std::vector<Case> all;
  const nkv_dtype dtypes[] = {NKV_DTYPE_FLOAT16, NKV_DTYPE_FLOAT32, NKV_DTYPE_INT8};
  const int64_t hiddens[] = {1, 7, 4096, 4099};
  for (nkv_dtype dtype : dtypes)
    for (int64_t hidden : hiddens)
      for (int64_t row_padding : {int64_t{0}, int64_t{8}, int64_t{3}}) {
        const bool wide = hidden >= 4096;
        auto lengths = random_lengths(wide ? 9 : 37, wide ? 24 : 50);
        all.push_back({lengths, 0, dtype, hidden, row_padding, 3, (hidden + row_padding) % 2 == 0});
      }
  if (large) {  // more rows than one wave of the grid holds, and long rows
    all.push_back({random_lengths(400, 100), 512, NKV_DTYPE_FLOAT16, 64, 0, 1, true});
    all.push_back({random_lengths(300, 120), 512, NKV_DTYPE_INT8, 7, 0, 0, false});
    all.push_back({random_lengths(12, 40), 0, NKV_DTYPE_FLOAT32, 16384, 4, 2, true});
  }
  return all;
}

}  // namespace

TEST(PackOps, CpuMatchesTheHostModel) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  for (const Case& c : cases(false)) {
    SCOPED_TRACE(describe(c));
    check_ops({cpu.get()}, c);
  }
}

TEST(PackOps, GatherThenScatterRestoresTheInput) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  const auto lengths = random_lengths(20, 30);
  PlanPtr plan = make_plan(cpu.get(), lengths, 45);
  const int64_t tokens = info_of(plan.get()).total_tokens, hidden = 5;
  std::vector<float> input(static_cast<size_t>(tokens * hidden)), packed(input.size()), restored(input.size());
  std::iota(input.begin(), input.end(), 1.0f);
  const nkv_tensor in = view(input.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {tokens, hidden});
  const nkv_tensor pk = view(packed.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {tokens, hidden});
  const nkv_tensor out = view(restored.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {tokens, hidden});
  NKV_ASSERT_OK(nkv_pack_gather(plan.get(), &in, &pk));
  EXPECT_NE(packed, input);
  NKV_ASSERT_OK(nkv_pack_scatter(plan.get(), &pk, &out));
  EXPECT_EQ(restored, input);

  const nkv_pack_plan_info info = info_of(plan.get());
  std::vector<float> padded(static_cast<size_t>(info.prompt_count * info.longest_prompt * hidden), -1.0f);
  std::fill(restored.begin(), restored.end(), 0.0f);
  const nkv_tensor pd = view(padded.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {info.prompt_count, info.longest_prompt, hidden});
  NKV_ASSERT_OK(nkv_pack_gather_padded(plan.get(), &in, &pd));
  EXPECT_EQ(std::count(padded.begin(), padded.end(), 0.0f), info.unpacked_padding_tokens * hidden);
  NKV_ASSERT_OK(nkv_pack_scatter_padded(plan.get(), &pd, &out));
  EXPECT_EQ(restored, input);
}

// ---- bad input: every path returns its status, names the argument, leaves outputs untouched ----

class PackBadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    context_ = make_context(NKV_BACKEND_CPU);
    plan_ = make_plan(context_.get(), lengths_, 0);  // rows [4] [3, 1]: 8 tokens
    input_.assign(static_cast<size_t>(tokens_ * hidden_), 1.0f);
    output_.assign(input_.size(), 42.0f);
    padded_.assign(static_cast<size_t>(3 * 4 * hidden_), 42.0f);
    in_ = view(input_.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {tokens_, hidden_});
    out_ = view(output_.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {tokens_, hidden_});
    pad_ = view(padded_.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {3, 4, hidden_});
  }
  void TearDown() override {
    for (float v : output_) ASSERT_EQ(v, 42.0f) << "output was written by a failing call";
    for (float v : padded_) ASSERT_EQ(v, 42.0f) << "padded output was written by a failing call";
    for (float v : shared_) ASSERT_EQ(v, 9.0f) << "memory shared by input and output was written by a failing call";
  }

  const std::vector<int32_t> lengths_{3, 4, 1};
  const int64_t tokens_ = 8, hidden_ = 6;
  ContextPtr context_;
  PlanPtr plan_;
  std::vector<float> input_, output_, padded_;
  std::vector<float> shared_ = std::vector<float>(static_cast<size_t>(tokens_ * hidden_ + hidden_), 9.0f);
  nkv_tensor in_{}, out_{}, pad_{};
};

TEST_F(PackBadInput, CreateRejectsBadArguments) {
  nkv_pack_plan* const untouched = reinterpret_cast<nkv_pack_plan*>(0x1);
  nkv_pack_plan* plan = untouched;
  const int32_t* lengths = lengths_.data();
  NKV_EXPECT_STATUS(nkv_pack_plan_create(nullptr, lengths, 3, 0, &plan), NKV_STATUS_INVALID_ARGUMENT, "argument 'context'");
  NKV_EXPECT_STATUS(nkv_pack_plan_create(context_.get(), nullptr, 3, 0, &plan), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'prompt_lengths' must not be NULL");
  NKV_EXPECT_STATUS(nkv_pack_plan_create(context_.get(), lengths, 0, 0, &plan), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'prompt_count': expected at least 1, got 0");
  NKV_EXPECT_STATUS(nkv_pack_plan_create(context_.get(), lengths, -2, 0, &plan), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'prompt_count': expected at least 1, got -2");
  const int32_t with_empty[] = {3, 0, 2};
  NKV_EXPECT_STATUS(nkv_pack_plan_create(context_.get(), with_empty, 3, 0, &plan), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'prompt_lengths': expected every length >= 1, got 0 at index 1");
  const int32_t with_negative[] = {3, 2, -5};
  NKV_EXPECT_STATUS(nkv_pack_plan_create(context_.get(), with_negative, 3, 0, &plan), NKV_STATUS_INVALID_ARGUMENT,
                    "got -5 at index 2");
  NKV_EXPECT_STATUS(nkv_pack_plan_create(context_.get(), lengths, 3, 3, &plan), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'row_capacity': expected 0 (the longest prompt) or at least the longest prompt (4), got 3");
  NKV_EXPECT_STATUS(nkv_pack_plan_create(context_.get(), lengths, 3, -1, &plan), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'row_capacity'");
  NKV_EXPECT_STATUS(nkv_pack_plan_create(context_.get(), lengths, 3, 0, nullptr), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'out_plan' must not be NULL");
  const int32_t too_many_tokens[] = {INT32_MAX, 1};
  NKV_EXPECT_STATUS(nkv_pack_plan_create(context_.get(), too_many_tokens, 2, 0, &plan), NKV_STATUS_NOT_SUPPORTED,
                    "the prompts hold 2147483648 tokens in total; at most 2147483647 are supported");
  EXPECT_EQ(plan, untouched);
  EXPECT_EQ(nkv_pack_plan_destroy(nullptr), NKV_STATUS_SUCCESS);
}

TEST_F(PackBadInput, InfoAndArrayQueriesRejectBadArguments) {
  nkv_pack_plan_info info{};
  info.struct_size = sizeof info;
  info.row_count = -9;
  NKV_EXPECT_STATUS(nkv_pack_plan_get_info(nullptr, &info), NKV_STATUS_INVALID_ARGUMENT, "argument 'plan' must not be NULL");
  NKV_EXPECT_STATUS(nkv_pack_plan_get_info(plan_.get(), nullptr), NKV_STATUS_INVALID_ARGUMENT, "argument 'out_info'");
  info.struct_size = 8;
  NKV_EXPECT_STATUS(nkv_pack_plan_get_info(plan_.get(), &info), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'out_info': struct_size 8 is smaller than");
  EXPECT_EQ(info.row_count, -9);

  std::vector<int32_t> destination(16, -3);
  int64_t length = -4;
  NKV_EXPECT_STATUS(nkv_pack_plan_copy_array(nullptr, NKV_PACK_CU_SEQLENS, destination.data(), 16, &length),
                    NKV_STATUS_INVALID_ARGUMENT, "argument 'plan'");
  NKV_EXPECT_STATUS(nkv_pack_plan_copy_array(plan_.get(), 6, destination.data(), 16, &length), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'which': expected an nkv_pack_array value (NKV_PACK_CU_SEQLENS (0) .. NKV_PACK_ROW_STARTS (5)), got 6");
  NKV_EXPECT_STATUS(nkv_pack_plan_copy_array(plan_.get(), -1, destination.data(), 16, &length), NKV_STATUS_INVALID_ARGUMENT,
                    "got -1");
  NKV_EXPECT_STATUS(nkv_pack_plan_copy_array(plan_.get(), NKV_PACK_GATHER_INDEX, nullptr, 16, &length),
                    NKV_STATUS_INVALID_ARGUMENT, "argument 'destination' must not be NULL");
  NKV_EXPECT_STATUS(nkv_pack_plan_copy_array(plan_.get(), NKV_PACK_GATHER_INDEX, destination.data(), 7, &length),
                    NKV_STATUS_INVALID_ARGUMENT, "argument 'capacity': NKV_PACK_GATHER_INDEX holds 8 values, got capacity 7");
  for (int32_t v : destination) EXPECT_EQ(v, -3);
  EXPECT_EQ(length, -4);

  nkv_tensor view_out{};
  view_out.ndim = 77;
  NKV_EXPECT_STATUS(nkv_pack_plan_array_view(nullptr, NKV_PACK_CU_SEQLENS, &view_out), NKV_STATUS_INVALID_ARGUMENT, "argument 'plan'");
  NKV_EXPECT_STATUS(nkv_pack_plan_array_view(plan_.get(), 9, &view_out), NKV_STATUS_INVALID_ARGUMENT, "argument 'which'");
  NKV_EXPECT_STATUS(nkv_pack_plan_array_view(plan_.get(), NKV_PACK_CU_SEQLENS, nullptr), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'out_view' must not be NULL");
  EXPECT_EQ(view_out.ndim, 77);
}

TEST_F(PackBadInput, NullPointers) {
  NKV_EXPECT_STATUS(nkv_pack_gather(nullptr, &in_, &out_), NKV_STATUS_INVALID_ARGUMENT, "argument 'plan' must not be NULL");
  NKV_EXPECT_STATUS(nkv_pack_gather(plan_.get(), nullptr, &out_), NKV_STATUS_INVALID_ARGUMENT, "argument 'input' must not be NULL");
  NKV_EXPECT_STATUS(nkv_pack_gather(plan_.get(), &in_, nullptr), NKV_STATUS_INVALID_ARGUMENT, "argument 'packed' must not be NULL");
  NKV_EXPECT_STATUS(nkv_pack_scatter(plan_.get(), nullptr, &out_), NKV_STATUS_INVALID_ARGUMENT, "argument 'packed' must not be NULL");
  NKV_EXPECT_STATUS(nkv_pack_scatter(plan_.get(), &in_, nullptr), NKV_STATUS_INVALID_ARGUMENT, "argument 'output' must not be NULL");
  NKV_EXPECT_STATUS(nkv_pack_gather_padded(plan_.get(), &in_, nullptr), NKV_STATUS_INVALID_ARGUMENT, "argument 'padded' must not be NULL");
  NKV_EXPECT_STATUS(nkv_pack_scatter_padded(plan_.get(), nullptr, &out_), NKV_STATUS_INVALID_ARGUMENT, "argument 'padded' must not be NULL");
  NKV_EXPECT_STATUS(nkv_pack_scatter_padded(nullptr, &pad_, &out_), NKV_STATUS_INVALID_ARGUMENT, "argument 'plan' must not be NULL");
  in_.data = nullptr;
  NKV_EXPECT_STATUS(nkv_pack_gather(plan_.get(), &in_, &out_), NKV_STATUS_INVALID_ARGUMENT, "argument 'input': data must not be NULL");
}

TEST_F(PackBadInput, WrongShapes) {
  nkv_tensor three_d = view(input_.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {2, 4, hidden_});
  NKV_EXPECT_STATUS(nkv_pack_gather(plan_.get(), &three_d, &out_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'input': expected shape [*, *], got [2, 4, 6]");
  in_.shape[0] = 7;
  NKV_EXPECT_STATUS(nkv_pack_gather(plan_.get(), &in_, &out_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'input': expected at least total_tokens (8) rows, got shape [7, 6]");
  in_.shape[0] = tokens_;
  out_.shape[1] = 5;
  NKV_EXPECT_STATUS(nkv_pack_gather(plan_.get(), &in_, &out_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'packed': expected shape [*, 6], got [8, 5]");
  NKV_EXPECT_STATUS(nkv_pack_scatter(plan_.get(), &in_, &out_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'output': expected shape [*, 6], got [8, 5]");
  out_.shape[1] = hidden_;
  out_.shape[0] = 2;
  NKV_EXPECT_STATUS(nkv_pack_scatter(plan_.get(), &in_, &out_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'output': expected at least total_tokens (8) rows");
  out_.shape[0] = tokens_;
  pad_.shape[1] = 3;
  NKV_EXPECT_STATUS(nkv_pack_gather_padded(plan_.get(), &in_, &pad_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'padded': expected shape [3, 4, 6], got [3, 3, 6]");
  NKV_EXPECT_STATUS(nkv_pack_scatter_padded(plan_.get(), &pad_, &out_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'padded': expected shape [3, 4, *], got [3, 3, 6]");
  pad_.shape[1] = 4;
  pad_.shape[2] = 2;
  NKV_EXPECT_STATUS(nkv_pack_scatter_padded(plan_.get(), &pad_, &out_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'output': expected shape [*, 2], got [8, 6]");
}

TEST_F(PackBadInput, MismatchedDtypes) {
  std::vector<uint16_t> halves(static_cast<size_t>(tokens_ * hidden_), 1);
  nkv_tensor half_input = view(halves.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {tokens_, hidden_});
  NKV_EXPECT_STATUS(nkv_pack_gather(plan_.get(), &half_input, &out_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'packed': expected dtype float16 (that of 'input'), got float32");
  NKV_EXPECT_STATUS(nkv_pack_scatter(plan_.get(), &half_input, &out_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'output': expected dtype float16 (that of 'packed'), got float32");
  NKV_EXPECT_STATUS(nkv_pack_gather_padded(plan_.get(), &half_input, &pad_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'padded': expected dtype float16 (that of 'input'), got float32");
  nkv_tensor half_output = view(halves.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {tokens_, hidden_});
  NKV_EXPECT_STATUS(nkv_pack_scatter_padded(plan_.get(), &pad_, &half_output), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'output': expected dtype float32 (that of 'padded'), got float16");
  in_.dtype = 99;
  NKV_EXPECT_STATUS(nkv_pack_gather(plan_.get(), &in_, &out_), NKV_STATUS_INVALID_ARGUMENT, "unknown dtype value 99");
}

TEST_F(PackBadInput, StridesAndOverlap) {
  in_.strides[1] = 2;
  NKV_EXPECT_STATUS(nkv_pack_gather(plan_.get(), &in_, &out_), NKV_STATUS_NOT_SUPPORTED,
                    "argument 'input': expected stride 1 along the last dimension");
  in_.strides[1] = 1;
  pad_.strides[2] = 3;
  NKV_EXPECT_STATUS(nkv_pack_scatter_padded(plan_.get(), &pad_, &out_), NKV_STATUS_NOT_SUPPORTED,
                    "argument 'padded': expected stride 1 along the last dimension");
  pad_.strides[2] = 1;
  out_.strides[0] = 4;  // output rows overlap each other
  NKV_EXPECT_STATUS(nkv_pack_gather(plan_.get(), &in_, &out_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'packed': row stride 4 is smaller than the row length 6, so output rows would overlap");
  out_.strides[0] = hidden_;
  pad_.strides[0] = 2 * hidden_;  // prompt p's slots overlap prompt p + 1's
  NKV_EXPECT_STATUS(nkv_pack_gather_padded(plan_.get(), &in_, &pad_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'padded': stride 12 of dimension 0 is smaller than");
  pad_.strides[0] = 4 * hidden_;

  nkv_tensor shifted_input = view(shared_.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {tokens_, hidden_});
  nkv_tensor packed_over_input = view(shared_.data() + hidden_, NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {tokens_, hidden_});
  NKV_EXPECT_STATUS(nkv_pack_gather(plan_.get(), &shifted_input, &packed_over_input), NKV_STATUS_INVALID_ARGUMENT,
                    "arguments 'packed' and 'input' overlap");
  NKV_EXPECT_STATUS(nkv_pack_scatter(plan_.get(), &shifted_input, &packed_over_input), NKV_STATUS_INVALID_ARGUMENT,
                    "arguments 'output' and 'packed' overlap");
  // Interleaved: the padded slots take the even floats of `shared`, the tokens the odd ones.
  nkv_tensor padded_over_input = view(shared_.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {3, 4, 1}, {8, 2, 1});
  nkv_tensor narrow_input = view(shared_.data() + 1, NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {tokens_, 1}, {2, 1});
  NKV_EXPECT_STATUS(nkv_pack_gather_padded(plan_.get(), &narrow_input, &padded_over_input), NKV_STATUS_INVALID_ARGUMENT,
                    "arguments 'padded' and 'input' overlap");
  NKV_EXPECT_STATUS(nkv_pack_scatter_padded(plan_.get(), &padded_over_input, &narrow_input), NKV_STATUS_INVALID_ARGUMENT,
                    "arguments 'output' and 'padded' overlap");
}

TEST_F(PackBadInput, DeviceMemoryOnACpuContext) {
  in_.device = NKV_DEVICE_CUDA;
  NKV_EXPECT_STATUS(nkv_pack_gather(plan_.get(), &in_, &out_), NKV_STATUS_INVALID_ARGUMENT,
                    "argument 'input': expected memory on device 'host'");
}

TEST(PackPlan, PaddedLayoutBeyondInt32SlotsIsNotSupported) {
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  std::vector<int32_t> lengths(70000, 1);
  lengths[5] = 40000;  // 70000 * 40000 padded slots > INT32_MAX, yet only ~110k tokens
  PlanPtr plan = make_plan(cpu.get(), lengths, 0);
  expect_consistent_plan(plan.get(), lengths, 0);
  const int64_t tokens = info_of(plan.get()).total_tokens;
  std::vector<int8_t> input(static_cast<size_t>(tokens), 1), output(static_cast<size_t>(tokens), 3);
  int8_t padded_byte = 5;
  const nkv_tensor in = view(input.data(), NKV_DTYPE_INT8, NKV_DEVICE_HOST, {tokens, 1});
  const nkv_tensor out = view(output.data(), NKV_DTYPE_INT8, NKV_DEVICE_HOST, {tokens, 1});
  const nkv_tensor padded = view(&padded_byte, NKV_DTYPE_INT8, NKV_DEVICE_HOST, {70000, 40000, 1}, {0, 0, 1});
  NKV_EXPECT_STATUS(nkv_pack_gather_padded(plan.get(), &in, &padded), NKV_STATUS_NOT_SUPPORTED,
                    "the padded layout [70000, 40000, *] has more than 2147483647 slots");
  NKV_EXPECT_STATUS(nkv_pack_scatter_padded(plan.get(), &padded, &out), NKV_STATUS_NOT_SUPPORTED, "slot indices are int32");
  EXPECT_EQ(padded_byte, 5);
  for (int8_t v : output) ASSERT_EQ(v, 3);
  NKV_ASSERT_OK(nkv_pack_gather(plan.get(), &in, &out));  // packing itself is unaffected
}

// ---- CUDA: byte for byte against the CPU ----

TEST(PackCuda, OpsMatchCpuOnRandomData) {
  NKV_REQUIRE_CUDA();
  ContextPtr cpu = make_context(NKV_BACKEND_CPU);
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  for (const Case& c : cases(true)) {
    SCOPED_TRACE(describe(c));
    check_ops({cpu.get(), gpu.get()}, c);
  }
}

TEST(PackCuda, PlanArraysLiveOnTheDevice) {
  NKV_REQUIRE_CUDA();
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  const auto lengths = random_lengths(100, 64);
  PlanPtr plan = make_plan(gpu.get(), lengths, 128);
  expect_consistent_plan(plan.get(), lengths, 128);
  for (int32_t which = 0; which <= NKV_PACK_ROW_STARTS; ++which) {
    nkv_tensor device_view{};
    NKV_ASSERT_OK(nkv_pack_plan_array_view(plan.get(), which, &device_view));
    EXPECT_EQ(device_view.device, NKV_DEVICE_CUDA);
    EXPECT_EQ(device_view.dtype, NKV_DTYPE_INT32);
    const auto expected = array_of(plan.get(), static_cast<nkv_pack_array>(which));
    ASSERT_EQ(device_view.shape[0], static_cast<int64_t>(expected.size()));
    // Read the device array back through a gather with a one-prompt plan (identity gather index).
    const int64_t length = device_view.shape[0];
    PlanPtr identity = make_plan(gpu.get(), {static_cast<int32_t>(length)}, 0);
    Memory copy(gpu.get(), expected.size() * sizeof(int32_t));
    const nkv_tensor source = view(device_view.data, NKV_DTYPE_INT32, NKV_DEVICE_CUDA, {length, 1});
    const nkv_tensor destination = view(copy.data(), NKV_DTYPE_INT32, NKV_DEVICE_CUDA, {length, 1});
    NKV_ASSERT_OK(nkv_pack_gather(identity.get(), &source, &destination));
    EXPECT_EQ(copy.download<int32_t>(expected.size()), expected) << "array " << which;
  }
}

TEST(PackCuda, HostTensorOnACudaContextIsRejected) {
  NKV_REQUIRE_CUDA();
  ContextPtr gpu = make_context(NKV_BACKEND_CUDA);
  PlanPtr plan = make_plan(gpu.get(), {2, 3}, 0);
  std::vector<float> input(10, 1.0f), packed(10, 7.0f);
  const nkv_tensor in = view(input.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {5, 2});
  const nkv_tensor out = view(packed.data(), NKV_DTYPE_FLOAT32, NKV_DEVICE_HOST, {5, 2});
  NKV_EXPECT_STATUS(nkv_pack_gather(plan.get(), &in, &out), NKV_STATUS_INVALID_ARGUMENT, "expected memory on device 'cuda'");
  for (float v : packed) EXPECT_EQ(v, 7.0f);
}
