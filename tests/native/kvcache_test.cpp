// Paged KV cache: bookkeeping (pages, reference counts, copy on write, all-or-nothing appends) and the
// step write, checked against a plain per-sequence model of what each sequence must hold.
#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "core/float_bits.h"
#include "test_support.h"

using namespace nkv_test;

namespace {

struct CacheDeleter {
  void operator()(nkv_paged_kv_cache* c) const { nkv_paged_kv_cache_destroy(c); }
};
using CachePtr = std::unique_ptr<nkv_paged_kv_cache, CacheDeleter>;

nkv_paged_kv_cache_options options(int32_t page_size, int64_t num_pages, int32_t layers = 2, int32_t heads = 2,
                                   int32_t head_dim = 16) {
  nkv_paged_kv_cache_options o{};
  o.struct_size = sizeof(o);
  o.dtype = NKV_DTYPE_FLOAT16;
  o.num_layers = layers;
  o.num_heads_kv = heads;
  o.head_dim = head_dim;
  o.page_size = page_size;
  o.max_sequences = 8;
  o.max_sequence_length = 1000;
  o.num_pages = num_pages;
  return o;
}

CachePtr make_cache(nkv_context* context, const nkv_paged_kv_cache_options& o) {
  nkv_paged_kv_cache* cache = nullptr;
  EXPECT_EQ(nkv_paged_kv_cache_create(context, &o, &cache), NKV_STATUS_SUCCESS) << nkv_last_error();
  return CachePtr(cache);
}

nkv_paged_kv_cache_info info_of(nkv_paged_kv_cache* cache) {
  nkv_paged_kv_cache_info info{};
  info.struct_size = sizeof(info);
  EXPECT_EQ(nkv_paged_kv_cache_get_info(cache, &info), NKV_STATUS_SUCCESS) << nkv_last_error();
  return info;
}

// What every sequence must hold: per layer, per token, the K and V rows (num_heads x head_dim uint16).
struct Model {
  int32_t layers, heads, head_dim;
  std::map<int32_t, std::vector<std::vector<uint16_t>>> k, v;  // sequence -> layer -> [token][head][d]
  size_t row() const { return static_cast<size_t>(heads) * head_dim; }
};

// Appends `counts` tokens to `sequences` as one step and writes random K/V for every layer, on the CPU
// backend (host pointers), mirroring them in the model.
nkv_status append_step(nkv_paged_kv_cache* cache, Model& model, const std::vector<int32_t>& sequences,
                       const std::vector<int32_t>& counts, nkv_context* cuda = nullptr) {
  const nkv_status status =
      nkv_paged_kv_cache_append(cache, sequences.data(), counts.data(), static_cast<int32_t>(sequences.size()));
  if (status != NKV_STATUS_SUCCESS) return status;
  int64_t tokens = 0;
  for (int32_t n : counts) tokens += n;
  for (int32_t layer = 0; layer < model.layers; ++layer) {
    std::vector<uint16_t> k(static_cast<size_t>(tokens) * model.row()), v(k.size());
    for (auto& x : k) x = static_cast<uint16_t>(rng()());
    for (auto& x : v) x = static_cast<uint16_t>(rng()());
    nkv_tensor kt = view(k.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {tokens, model.heads, model.head_dim});
    nkv_tensor vt = view(v.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {tokens, model.heads, model.head_dim});
    std::unique_ptr<Memory> kd, vd;
    if (cuda != nullptr && tokens > 0) {  // the same rows from device memory
      kd = std::make_unique<Memory>(cuda, k.size() * 2);
      vd = std::make_unique<Memory>(cuda, v.size() * 2);
      kd->upload(k);
      vd->upload(v);
      kt.data = kd->data();
      vt.data = vd->data();
      kt.device = vt.device = NKV_DEVICE_CUDA;
    }
    const nkv_status written = nkv_paged_kv_cache_write(cache, layer, &kt, &vt);
    if (written != NKV_STATUS_SUCCESS) return written;
    size_t offset = 0;
    for (size_t i = 0; i < sequences.size(); ++i) {
      auto& mk = model.k[sequences[i]];
      auto& mv = model.v[sequences[i]];
      mk.resize(static_cast<size_t>(model.layers));
      mv.resize(static_cast<size_t>(model.layers));
      const size_t n = static_cast<size_t>(counts[i]) * model.row();
      mk[layer].insert(mk[layer].end(), k.begin() + offset, k.begin() + offset + n);
      mv[layer].insert(mv[layer].end(), v.begin() + offset, v.begin() + offset + n);
      offset += n;
    }
  }
  return NKV_STATUS_SUCCESS;
}

// A copy on the host of a pool or table view of a CUDA cache: an identity gather (one prompt of all its
// rows) through the public API, into a buffer of the test's own.
std::vector<uint8_t> download_view(nkv_context* context, const nkv_tensor& t) {
  const int64_t rows = t.shape[0] * (t.ndim == 4 ? t.shape[1] : 1);
  const int64_t width = t.ndim == 4 ? t.shape[2] * t.shape[3] : (t.ndim == 2 ? t.shape[1] : 1);
  const size_t bytes = static_cast<size_t>(rows * width) * nkv_dtype_size(t.dtype);
  nkv_pack_plan* plan = nullptr;
  const int32_t length = static_cast<int32_t>(rows);
  EXPECT_EQ(nkv_pack_plan_create(context, &length, 1, 0, &plan), NKV_STATUS_SUCCESS) << nkv_last_error();
  Memory out(context, bytes);
  const nkv_tensor in = view(t.data, static_cast<nkv_dtype>(t.dtype), NKV_DEVICE_CUDA, {rows, width});
  const nkv_tensor copy = view(out.data(), static_cast<nkv_dtype>(t.dtype), NKV_DEVICE_CUDA, {rows, width});
  EXPECT_EQ(nkv_pack_gather(plan, &in, &copy), NKV_STATUS_SUCCESS) << nkv_last_error();
  nkv_pack_plan_destroy(plan);
  return out.download<uint8_t>(bytes);
}

// Every alive sequence of the model reads back, through the block table, exactly what the model holds.
void expect_contents(nkv_paged_kv_cache* cache, const Model& model, nkv_context* cuda = nullptr) {
  const nkv_paged_kv_cache_info info = info_of(cache);
  for (const auto& [sequence, layers] : model.k) {
    int32_t length = 0, page_count = 0;
    std::vector<int32_t> pages(static_cast<size_t>(info.max_pages_per_sequence));
    ASSERT_EQ(nkv_paged_kv_cache_sequence(cache, sequence, &length, pages.data(), info.max_pages_per_sequence, &page_count),
              NKV_STATUS_SUCCESS) << nkv_last_error();
    ASSERT_EQ(static_cast<size_t>(length) * model.row(), layers[0].size()) << "sequence " << sequence;
    for (int32_t layer = 0; layer < model.layers; ++layer) {
      nkv_tensor kp{}, vp{};
      ASSERT_EQ(nkv_paged_kv_cache_view(cache, NKV_PAGED_KV_K_POOL, layer, &kp), NKV_STATUS_SUCCESS) << nkv_last_error();
      ASSERT_EQ(nkv_paged_kv_cache_view(cache, NKV_PAGED_KV_V_POOL, layer, &vp), NKV_STATUS_SUCCESS) << nkv_last_error();
      std::vector<uint8_t> k_host, v_host;
      if (cuda != nullptr) {
        k_host = download_view(cuda, kp);
        v_host = download_view(cuda, vp);
        kp.data = k_host.data();
        vp.data = v_host.data();
      }
      for (int32_t t = 0; t < length; ++t) {
        const int64_t slot = static_cast<int64_t>(pages[t / info.page_size]) * info.page_size + t % info.page_size;
        const uint16_t* k = static_cast<const uint16_t*>(kp.data) + slot * static_cast<int64_t>(model.row());
        const uint16_t* v = static_cast<const uint16_t*>(vp.data) + slot * static_cast<int64_t>(model.row());
        ASSERT_EQ(std::memcmp(k, model.k.at(sequence)[layer].data() + t * model.row(), model.row() * 2), 0)
            << "K of sequence " << sequence << ", layer " << layer << ", token " << t;
        ASSERT_EQ(std::memcmp(v, model.v.at(sequence)[layer].data() + t * model.row(), model.row() * 2), 0)
            << "V of sequence " << sequence << ", layer " << layer << ", token " << t;
      }
    }
  }
}

}  // namespace

TEST(PagedKvCache, AppendsWriteEverySequenceIntoItsOwnPages) {
  auto context = make_context(NKV_BACKEND_CPU);
  for (int32_t page_size : {1, 8, 16, 256}) {
    SCOPED_TRACE("page_size " + std::to_string(page_size));
    auto cache = make_cache(context.get(), options(page_size, 512));
    Model model{2, 2, 16, {}, {}};
    std::vector<int32_t> ids(3);
    for (auto& id : ids) NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &id));
    EXPECT_EQ(ids, (std::vector<int32_t>{0, 1, 2}));
    // A prefill step of different lengths, then decode steps of one token (and one sequence idle).
    ASSERT_EQ(append_step(cache.get(), model, ids, {17, 1, 40}), NKV_STATUS_SUCCESS) << nkv_last_error();
    for (int step = 0; step < 20; ++step) {
      ASSERT_EQ(append_step(cache.get(), model, {2, 0}, {1, 1}), NKV_STATUS_SUCCESS) << nkv_last_error();
    }
    expect_contents(cache.get(), model);
    const nkv_paged_kv_cache_info info = info_of(cache.get());
    EXPECT_EQ(info.sequences, 3);
    EXPECT_EQ(info.tokens, 37 + 1 + 60);
    const int64_t pages = (37 + page_size - 1) / page_size + 1 + (60 + page_size - 1) / page_size;
    EXPECT_EQ(info.free_pages, 512 - pages);
    EXPECT_EQ(info.step_tokens, 2);
  }
}

TEST(PagedKvCache, ForkSharesPagesAndCopiesAPartlyFilledLastPageBeforeWriting) {
  auto context = make_context(NKV_BACKEND_CPU);
  auto cache = make_cache(context.get(), options(16, 64));
  Model model{2, 2, 16, {}, {}};
  int32_t parent = -1, child = -1;
  NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &parent));
  ASSERT_EQ(append_step(cache.get(), model, {parent}, {40}), NKV_STATUS_SUCCESS);  // pages: 16 + 16 + 8
  NKV_ASSERT_OK(nkv_paged_kv_cache_fork(cache.get(), parent, &child));
  model.k[child] = model.k[parent];
  model.v[child] = model.v[parent];
  EXPECT_EQ(info_of(cache.get()).free_pages, 64 - 3);
  EXPECT_EQ(info_of(cache.get()).shared_pages, 3);
  EXPECT_EQ(info_of(cache.get()).empty_slots, 16 - 8);  // one shared, partly filled last page counts once
  // Both append into the shared, partly filled third page: each gets its own copy of it (one page each,
  // the last holder keeps the original).
  ASSERT_EQ(append_step(cache.get(), model, {child, parent}, {3, 5}), NKV_STATUS_SUCCESS) << nkv_last_error();
  expect_contents(cache.get(), model);
  EXPECT_EQ(info_of(cache.get()).free_pages, 64 - 4);
  EXPECT_EQ(info_of(cache.get()).shared_pages, 2);
  EXPECT_EQ(info_of(cache.get()).empty_slots, (16 - 11) + (16 - 13));  // the child's copy and the parent's page
  // Freeing the parent leaves the child whole; freeing the child returns every page.
  NKV_ASSERT_OK(nkv_paged_kv_cache_free_sequence(cache.get(), parent));
  model.k.erase(parent);
  model.v.erase(parent);
  expect_contents(cache.get(), model);
  EXPECT_EQ(info_of(cache.get()).free_pages, 64 - 3);
  NKV_ASSERT_OK(nkv_paged_kv_cache_free_sequence(cache.get(), child));
  EXPECT_EQ(info_of(cache.get()).free_pages, 64);
  EXPECT_EQ(info_of(cache.get()).shared_pages, 0);
}

TEST(PagedKvCache, TruncateReleasesPagesAndTheNextAppendOverwrites) {
  auto context = make_context(NKV_BACKEND_CPU);
  auto cache = make_cache(context.get(), options(8, 32));
  Model model{2, 2, 16, {}, {}};
  int32_t s = -1, fork = -1;
  NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &s));
  ASSERT_EQ(append_step(cache.get(), model, {s}, {30}), NKV_STATUS_SUCCESS);  // 4 pages
  NKV_ASSERT_OK(nkv_paged_kv_cache_fork(cache.get(), s, &fork));
  model.k[fork] = model.k[s];
  model.v[fork] = model.v[s];
  // Roll the fork back into its second page (shared, now partly filled), then write new tokens there.
  NKV_ASSERT_OK(nkv_paged_kv_cache_truncate(cache.get(), fork, 11));
  for (int32_t layer = 0; layer < 2; ++layer) {
    model.k[fork][layer].resize(11 * model.row());
    model.v[fork][layer].resize(11 * model.row());
  }
  EXPECT_EQ(info_of(cache.get()).free_pages, 32 - 4);
  ASSERT_EQ(append_step(cache.get(), model, {fork}, {9}), NKV_STATUS_SUCCESS);  // copy of page 2 + one new page
  expect_contents(cache.get(), model);
  EXPECT_EQ(info_of(cache.get()).free_pages, 32 - 6);
  NKV_ASSERT_OK(nkv_paged_kv_cache_truncate(cache.get(), s, 0));
  model.k[s] = {{}, {}};
  model.v[s] = {{}, {}};
  expect_contents(cache.get(), model);
  EXPECT_EQ(info_of(cache.get()).free_pages, 32 - 3);
}

TEST(PagedKvCache, RunningOutOfPagesChangesNothing) {
  auto context = make_context(NKV_BACKEND_CPU);
  auto cache = make_cache(context.get(), options(16, 4));
  Model model{2, 2, 16, {}, {}};
  int32_t a = -1, b = -1;
  NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &a));
  NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &b));
  ASSERT_EQ(append_step(cache.get(), model, {a, b}, {20, 10}), NKV_STATUS_SUCCESS);  // 3 of 4 pages
  const nkv_paged_kv_cache_info before = info_of(cache.get());
  // a needs one page more (33 > 32 tokens), b one (27 > 16): two pages, one is free.
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_append(cache.get(), std::vector<int32_t>{a, b}.data(),
                                              std::vector<int32_t>{13, 17}.data(), 2),
                    NKV_STATUS_OUT_OF_MEMORY, "needs 2 pages");
  const nkv_paged_kv_cache_info after = info_of(cache.get());
  EXPECT_EQ(after.free_pages, before.free_pages);
  EXPECT_EQ(after.tokens, before.tokens);
  EXPECT_EQ(after.step_tokens, before.step_tokens);
  expect_contents(cache.get(), model);
  // A fork appending into the shared last page needs a copy: with no page free, that fails alike.
  ASSERT_EQ(append_step(cache.get(), model, {a, b}, {12, 10}), NKV_STATUS_SUCCESS);  // 32 and 20 tokens: 4 pages
  EXPECT_EQ(info_of(cache.get()).free_pages, 0);
  int32_t c = -1;
  NKV_ASSERT_OK(nkv_paged_kv_cache_fork(cache.get(), b, &c));
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_append(cache.get(), &c, std::vector<int32_t>{1}.data(), 1),
                    NKV_STATUS_OUT_OF_MEMORY, "needs 1 pages");
  expect_contents(cache.get(), model);
}

TEST(PagedKvCache, BadArgumentsAreRejectedWithoutChanges) {
  auto context = make_context(NKV_BACKEND_CPU);
  nkv_paged_kv_cache* raw = nullptr;
  auto o = options(12, 8);
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_create(context.get(), &o, &raw), NKV_STATUS_INVALID_ARGUMENT, "page_size");
  o = options(16, 0);
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_create(context.get(), &o, &raw), NKV_STATUS_INVALID_ARGUMENT, "byte_budget");
  o.byte_budget = 3 * 2 * 2 * 16 * 2 * 16 * 2;  // three pages of 2 layers x K/V x 16 tokens x 2 heads x 16 d
  auto budgeted = make_cache(context.get(), o);
  EXPECT_EQ(info_of(budgeted.get()).num_pages, 3);
  o = options(16, 8);
  o.dtype = NKV_DTYPE_FLOAT32;
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_create(context.get(), &o, &raw), NKV_STATUS_INVALID_ARGUMENT, "dtype");

  auto cache = make_cache(context.get(), options(16, 8));
  int32_t s = -1;
  NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &s));
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_truncate(cache.get(), s, 1), NKV_STATUS_INVALID_ARGUMENT, "length");
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_free_sequence(cache.get(), 5), NKV_STATUS_INVALID_ARGUMENT, "not alive");
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_free_sequence(cache.get(), 99), NKV_STATUS_INVALID_ARGUMENT, "0..7");
  const int32_t twice[] = {s, s};
  const int32_t counts[] = {1, 1};
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_append(cache.get(), twice, counts, 2), NKV_STATUS_INVALID_ARGUMENT, "twice");
  const int32_t too_many[] = {1001};
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_append(cache.get(), &s, too_many, 1), NKV_STATUS_INVALID_ARGUMENT,
                    "max_sequence_length");
  EXPECT_EQ(info_of(cache.get()).tokens, 0);
  // The write takes exactly the last step's tokens.
  const int32_t two[] = {2};
  NKV_ASSERT_OK(nkv_paged_kv_cache_append(cache.get(), &s, two, 1));
  std::vector<uint16_t> rows(3 * 2 * 16);
  const nkv_tensor three = view(rows.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {3, 2, 16});
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_write(cache.get(), 0, &three, &three), NKV_STATUS_INVALID_ARGUMENT, "shape");
  const nkv_tensor good = view(rows.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {2, 2, 16});
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_write(cache.get(), 2, &good, &good), NKV_STATUS_INVALID_ARGUMENT, "layer");
  NKV_ASSERT_OK(nkv_paged_kv_cache_free_sequence(cache.get(), s));
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_free_sequence(cache.get(), s), NKV_STATUS_INVALID_ARGUMENT, "not alive");
  // Every id alive: adding one more is out of memory.
  for (int i = 0; i < 8; ++i) NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &s));
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_add_sequence(cache.get(), &s), NKV_STATUS_OUT_OF_MEMORY, "max_sequences");
  EXPECT_EQ(nkv_paged_kv_cache_destroy(nullptr), NKV_STATUS_SUCCESS);
}

TEST(PagedKvCache, FreeingASequenceOfTheStepForgetsTheStep) {
  auto context = make_context(NKV_BACKEND_CPU);
  auto cache = make_cache(context.get(), options(8, 16));
  Model model{2, 2, 16, {}, {}};
  int32_t a = -1, b = -1, c = -1;
  NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &a));
  NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &b));
  NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &c));
  ASSERT_EQ(append_step(cache.get(), model, {a}, {8}), NKV_STATUS_SUCCESS);
  const int32_t one = 1;
  NKV_ASSERT_OK(nkv_paged_kv_cache_append(cache.get(), &b, &one, 1));
  // Freeing a sequence outside the step keeps the step; freeing the step's own sequence forgets it, and the
  // page it held, handed to c, cannot be written through the old step.
  NKV_ASSERT_OK(nkv_paged_kv_cache_free_sequence(cache.get(), a));
  EXPECT_EQ(info_of(cache.get()).step_tokens, 1);
  NKV_ASSERT_OK(nkv_paged_kv_cache_free_sequence(cache.get(), b));
  EXPECT_EQ(info_of(cache.get()).step_tokens, 0);
  model.k.erase(a);
  model.v.erase(a);
  ASSERT_EQ(append_step(cache.get(), model, {c}, {3}), NKV_STATUS_SUCCESS);
  NKV_ASSERT_OK(nkv_paged_kv_cache_truncate(cache.get(), c, 1));  // the page stays: the step stays
  EXPECT_EQ(info_of(cache.get()).step_tokens, 3);
  NKV_ASSERT_OK(nkv_paged_kv_cache_truncate(cache.get(), c, 0));
  EXPECT_EQ(info_of(cache.get()).step_tokens, 0);
  std::vector<uint16_t> rows(2 * 16);
  const nkv_tensor stale = view(rows.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_HOST, {1, 2, 16});
  NKV_EXPECT_STATUS(nkv_paged_kv_cache_write(cache.get(), 0, &stale, &stale), NKV_STATUS_INVALID_ARGUMENT, "shape");
}

TEST(PagedKvCache, BlockTableAndLengthViewsFollowTheSequences) {
  auto context = make_context(NKV_BACKEND_CPU);
  auto cache = make_cache(context.get(), options(8, 16));
  Model model{2, 2, 16, {}, {}};
  int32_t a = -1, b = -1;
  NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &a));
  NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &b));
  ASSERT_EQ(append_step(cache.get(), model, {a, b}, {9, 3}), NKV_STATUS_SUCCESS);
  nkv_tensor table{}, lengths{}, slots{};
  NKV_ASSERT_OK(nkv_paged_kv_cache_view(cache.get(), NKV_PAGED_KV_BLOCK_TABLE, 0, &table));
  NKV_ASSERT_OK(nkv_paged_kv_cache_view(cache.get(), NKV_PAGED_KV_SEQUENCE_LENGTHS, 0, &lengths));
  NKV_ASSERT_OK(nkv_paged_kv_cache_view(cache.get(), NKV_PAGED_KV_STEP_SLOTS, 0, &slots));
  ASSERT_EQ(table.ndim, 2);
  EXPECT_EQ(table.shape[0], 8);
  EXPECT_EQ(table.shape[1], 125);  // ceil(1000 / 8)
  EXPECT_EQ(slots.shape[0], 12);
  const int32_t* t = static_cast<const int32_t*>(table.data);
  const int32_t* l = static_cast<const int32_t*>(lengths.data);
  const int32_t* sl = static_cast<const int32_t*>(slots.data);
  EXPECT_EQ(l[a], 9);
  EXPECT_EQ(l[b], 3);
  EXPECT_EQ(l[2], 0);
  EXPECT_GE(t[a * 125 + 1], 0);
  EXPECT_EQ(t[a * 125 + 2], -1);
  EXPECT_EQ(t[b * 125 + 1], -1);
  for (int32_t i = 0; i < 9; ++i) EXPECT_EQ(sl[i], t[a * 125 + i / 8] * 8 + i % 8) << i;
  for (int32_t i = 0; i < 3; ++i) EXPECT_EQ(sl[9 + i], t[b * 125] * 8 + i) << i;
}

TEST(PagedKvCacheCuda, MatchesTheModelAndItsDeviceTablesMatchTheHost) {
  NKV_REQUIRE_CUDA();
  auto context = make_context(NKV_BACKEND_CUDA);
  for (int32_t page_size : {1, 16, 64}) {
    SCOPED_TRACE("page_size " + std::to_string(page_size));
    auto cache = make_cache(context.get(), options(page_size, 400, 3, 4, 64));
    Model model{3, 4, 64, {}, {}};
    int32_t a = -1, b = -1, c = -1;
    NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &a));
    NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &b));
    ASSERT_EQ(append_step(cache.get(), model, {a, b}, {70, 33}, context.get()), NKV_STATUS_SUCCESS) << nkv_last_error();
    NKV_ASSERT_OK(nkv_paged_kv_cache_fork(cache.get(), b, &c));
    model.k[c] = model.k[b];
    model.v[c] = model.v[b];
    for (int step = 0; step < 5; ++step) {
      ASSERT_EQ(append_step(cache.get(), model, {c, a, b}, {1, 2, 3}, context.get()), NKV_STATUS_SUCCESS) << nkv_last_error();
    }
    NKV_ASSERT_OK(nkv_paged_kv_cache_truncate(cache.get(), a, 50));
    for (int32_t layer = 0; layer < 3; ++layer) {
      model.k[a][layer].resize(50 * model.row());
      model.v[a][layer].resize(50 * model.row());
    }
    ASSERT_EQ(append_step(cache.get(), model, {a}, {7}, context.get()), NKV_STATUS_SUCCESS) << nkv_last_error();
    expect_contents(cache.get(), model, context.get());
    // The device mirrors hold what the host bookkeeping says.
    const nkv_paged_kv_cache_info info = info_of(cache.get());
    nkv_tensor table{}, lengths{};
    NKV_ASSERT_OK(nkv_paged_kv_cache_view(cache.get(), NKV_PAGED_KV_BLOCK_TABLE, 0, &table));
    NKV_ASSERT_OK(nkv_paged_kv_cache_view(cache.get(), NKV_PAGED_KV_SEQUENCE_LENGTHS, 0, &lengths));
    const std::vector<uint8_t> table_bytes = download_view(context.get(), table);
    const std::vector<uint8_t> length_bytes = download_view(context.get(), lengths);
    const int32_t* device_table = reinterpret_cast<const int32_t*>(table_bytes.data());
    const int32_t* device_lengths = reinterpret_cast<const int32_t*>(length_bytes.data());
    for (int32_t s : {a, b, c}) {
      int32_t length = 0, page_count = 0;
      std::vector<int32_t> pages(static_cast<size_t>(info.max_pages_per_sequence));
      NKV_ASSERT_OK(nkv_paged_kv_cache_sequence(cache.get(), s, &length, pages.data(), info.max_pages_per_sequence, &page_count));
      EXPECT_EQ(device_lengths[s], length) << "sequence " << s;
      for (int32_t i = 0; i < info.max_pages_per_sequence; ++i) {
        EXPECT_EQ(device_table[s * info.max_pages_per_sequence + i], i < page_count ? pages[i] : -1) << "sequence " << s << " page " << i;
      }
    }
  }
}

namespace {

// Decode through the paged cache must equal decode over the same keys laid out contiguously: the same
// kernel over the same tiles, so bit for bit. Sequences of awkward lengths (0, 1, a page boundary, several
// tiles), GQA 8/2, split into pieces so the merge runs too.
void expect_paged_decode_matches_contiguous(nkv_backend backend) {
  auto context = make_context(backend);
  const nkv_device_type device = device_of(context.get());
  const int32_t hq = 8, hkv = 2, d = 64, q_len = 2;
  const std::vector<int32_t> lengths = {0, 1, 64, 200, 1000};
  const int32_t batch = static_cast<int32_t>(lengths.size());
  const int32_t capacity = 1000;
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  auto random_halves = [&](size_t count) {
    std::vector<uint16_t> v(count);
    for (auto& x : v) x = nkv::float_to_half(uniform(rng()));
    return v;
  };
  for (int32_t page_size : {1, 16, 64, 256}) {
    SCOPED_TRACE("page_size " + std::to_string(page_size));
    nkv_paged_kv_cache_options o = options(page_size, (capacity + page_size - 1) / page_size * batch + 4, 1, hkv, d);
    o.max_sequences = batch;
    o.max_sequence_length = capacity;
    auto cache = make_cache(context.get(), o);
    // Contiguous K/V [batch, capacity, hkv, d] and the same rows appended to the cache, one sequence per step.
    const size_t row = static_cast<size_t>(hkv) * d;
    std::vector<uint16_t> k = random_halves(batch * capacity * row), v = random_halves(k.size());
    for (int32_t b = 0; b < batch; ++b) {
      int32_t id = -1;
      NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &id));
      ASSERT_EQ(id, b);
      NKV_ASSERT_OK(nkv_paged_kv_cache_append(cache.get(), &b, &lengths[b], 1));
      const size_t n = static_cast<size_t>(lengths[b]) * row;
      Memory ks(context.get(), std::max<size_t>(n, 1) * 2), vs(context.get(), std::max<size_t>(n, 1) * 2);
      ks.upload(k.data() + b * capacity * row, n * 2);
      vs.upload(v.data() + b * capacity * row, n * 2);
      const nkv_tensor kt = view(ks.data(), NKV_DTYPE_FLOAT16, device, {lengths[b], hkv, d});
      const nkv_tensor vt = view(vs.data(), NKV_DTYPE_FLOAT16, device, {lengths[b], hkv, d});
      NKV_ASSERT_OK(nkv_paged_kv_cache_write(cache.get(), 0, &kt, &vt));
    }
    const std::vector<uint16_t> q = random_halves(batch * q_len * hq * d);
    Memory qm(context.get(), q.size() * 2), km(context.get(), k.size() * 2), vm(context.get(), v.size() * 2);
    Memory o1(context.get(), q.size() * 2), o2(context.get(), q.size() * 2);
    Memory l1(context.get(), batch * hq * q_len * 4), l2(context.get(), batch * hq * q_len * 4);
    qm.upload(q);
    km.upload(k);
    vm.upload(v);
    nkv_attention_options opts{sizeof(nkv_attention_options), 1, 0.0f, 0.0f, -1, 3, NKV_ATTENTION_KERNEL_AUTO, 0, 0};
    nkv_attention_plan* plan = nullptr;
    NKV_ASSERT_OK(nkv_attention_plan_decode(context.get(), &opts, hq, hkv, d, batch, q_len, lengths.data(), &plan));
    const nkv_tensor qt = view(qm.data(), NKV_DTYPE_FLOAT16, device, {batch, q_len, hq, d});
    const nkv_tensor kt = view(km.data(), NKV_DTYPE_FLOAT16, device, {batch, capacity, hkv, d});
    const nkv_tensor vt = view(vm.data(), NKV_DTYPE_FLOAT16, device, {batch, capacity, hkv, d});
    const nkv_tensor ot1 = view(o1.data(), NKV_DTYPE_FLOAT16, device, {batch, q_len, hq, d});
    const nkv_tensor ot2 = view(o2.data(), NKV_DTYPE_FLOAT16, device, {batch, q_len, hq, d});
    const nkv_tensor lt1 = view(l1.data(), NKV_DTYPE_FLOAT32, device, {batch, hq, q_len});
    const nkv_tensor lt2 = view(l2.data(), NKV_DTYPE_FLOAT32, device, {batch, hq, q_len});
    nkv_tensor k_pool{}, v_pool{}, table{};
    NKV_ASSERT_OK(nkv_paged_kv_cache_view(cache.get(), NKV_PAGED_KV_K_POOL, 0, &k_pool));
    NKV_ASSERT_OK(nkv_paged_kv_cache_view(cache.get(), NKV_PAGED_KV_V_POOL, 0, &v_pool));
    NKV_ASSERT_OK(nkv_paged_kv_cache_view(cache.get(), NKV_PAGED_KV_BLOCK_TABLE, 0, &table));
    o2.fill(0xFF, q.size() * 2);
    NKV_ASSERT_OK(nkv_attention_decode(plan, &qt, &kt, &vt, &ot1, &lt1));
    NKV_ASSERT_OK(nkv_attention_decode_paged(plan, &qt, &k_pool, &v_pool, &table, &ot2, &lt2));
    const auto a = o1.download<uint16_t>(q.size()), b = o2.download<uint16_t>(q.size());
    EXPECT_EQ(a, b);
    EXPECT_EQ(l1.download<float>(batch * hq * q_len), l2.download<float>(batch * hq * q_len));
    // A block table too narrow for the longest sequence is refused before anything runs.
    nkv_tensor narrow = table;
    narrow.shape[1] = (lengths.back() + page_size - 1) / page_size - 1;
    NKV_EXPECT_STATUS(nkv_attention_decode_paged(plan, &qt, &k_pool, &v_pool, &narrow, &ot2, &lt2),
                      NKV_STATUS_INVALID_ARGUMENT, "block_table");
    nkv_attention_plan_destroy(plan);
    // A plan made for this page size (same split count, so the same pieces): the same bits; it refuses
    // contiguous K/V and pools of another page size.
    opts.kv_page_size = page_size;
    NKV_ASSERT_OK(nkv_attention_plan_decode(context.get(), &opts, hq, hkv, d, batch, q_len, lengths.data(), &plan));
    o2.fill(0xFF, q.size() * 2);
    NKV_ASSERT_OK(nkv_attention_decode_paged(plan, &qt, &k_pool, &v_pool, &table, &ot2, &lt2));
    EXPECT_EQ(a, o2.download<uint16_t>(q.size()));
    NKV_EXPECT_STATUS(nkv_attention_decode(plan, &qt, &kt, &vt, &ot1, &lt1), NKV_STATUS_INVALID_ARGUMENT, "kv_page_size");
    nkv_tensor other_k = k_pool, other_v = v_pool;
    other_k.shape[0] = other_v.shape[0] = 1;
    other_k.shape[1] = other_v.shape[1] = page_size == 256 ? 128 : page_size * 2;
    other_k.strides[0] = other_v.strides[0] = other_k.shape[1] * hkv * d;
    NKV_EXPECT_STATUS(nkv_attention_decode_paged(plan, &qt, &other_k, &other_v, &table, &ot2, &lt2),
                      NKV_STATUS_INVALID_ARGUMENT, "kv_page_size");
    nkv_attention_plan_destroy(plan);
    opts.kv_page_size = 0;
  }
}

// Varlen through the paged cache (chunked prefill: each sequence's last queries over all its keys, causal)
// must equal varlen over the same keys packed contiguously, bit for bit (the same SM80 kernel on CUDA).
void expect_paged_varlen_matches_contiguous(nkv_backend backend) {
  auto context = make_context(backend);
  const nkv_device_type device = device_of(context.get());
  const int32_t hq = 8, hkv = 2, d = 64;
  const std::vector<int32_t> lengths = {0, 1, 64, 200, 1000};
  const std::vector<int32_t> queries = {0, 1, 64, 37, 300};
  const int32_t batch = static_cast<int32_t>(lengths.size());
  std::vector<int32_t> cu_k{0}, cu_q{0};
  for (int32_t b = 0; b < batch; ++b) {
    cu_k.push_back(cu_k.back() + lengths[b]);
    cu_q.push_back(cu_q.back() + queries[b]);
  }
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  auto random_halves = [&](size_t count) {
    std::vector<uint16_t> v(count);
    for (auto& x : v) x = nkv::float_to_half(uniform(rng()));
    return v;
  };
  const size_t row = static_cast<size_t>(hkv) * d;
  const std::vector<uint16_t> k = random_halves(cu_k.back() * row), v = random_halves(k.size());
  const std::vector<uint16_t> q = random_halves(static_cast<size_t>(cu_q.back()) * hq * d);
  Memory qm(context.get(), q.size() * 2), km(context.get(), k.size() * 2), vm(context.get(), v.size() * 2);
  Memory o1(context.get(), q.size() * 2), o2(context.get(), q.size() * 2);
  Memory l1(context.get(), static_cast<size_t>(hq) * cu_q.back() * 4), l2(context.get(), static_cast<size_t>(hq) * cu_q.back() * 4);
  qm.upload(q);
  km.upload(k);
  vm.upload(v);
  const nkv_tensor qt = view(qm.data(), NKV_DTYPE_FLOAT16, device, {cu_q.back(), hq, d});
  const nkv_tensor kt = view(km.data(), NKV_DTYPE_FLOAT16, device, {cu_k.back(), hkv, d});
  const nkv_tensor vt = view(vm.data(), NKV_DTYPE_FLOAT16, device, {cu_k.back(), hkv, d});
  const nkv_tensor ot1 = view(o1.data(), NKV_DTYPE_FLOAT16, device, {cu_q.back(), hq, d});
  const nkv_tensor ot2 = view(o2.data(), NKV_DTYPE_FLOAT16, device, {cu_q.back(), hq, d});
  const nkv_tensor lt1 = view(l1.data(), NKV_DTYPE_FLOAT32, device, {hq, cu_q.back()});
  const nkv_tensor lt2 = view(l2.data(), NKV_DTYPE_FLOAT32, device, {hq, cu_q.back()});
  const nkv_attention_kernel kernel = backend == NKV_BACKEND_CUDA ? NKV_ATTENTION_KERNEL_SM80 : NKV_ATTENTION_KERNEL_AUTO;
  const nkv_attention_options opts{sizeof(nkv_attention_options), 1, 0.0f, 0.0f, -1, 0, kernel, 0, 0};
  nkv_attention_plan* plan = nullptr;
  NKV_ASSERT_OK(nkv_attention_plan_varlen(context.get(), &opts, hq, hkv, d, batch, cu_q.data(), cu_k.data(), &plan));
  NKV_ASSERT_OK(nkv_attention_varlen(plan, &qt, &kt, &vt, &ot1, &lt1));
  const auto expected_o = o1.download<uint16_t>(q.size());
  const auto expected_lse = l1.download<float>(static_cast<size_t>(hq) * cu_q.back());
  for (int32_t page_size : {1, 16, 64, 256}) {
    SCOPED_TRACE("page_size " + std::to_string(page_size));
    nkv_paged_kv_cache_options o = options(page_size, (1000 + page_size - 1) / page_size * batch + 4, 1, hkv, d);
    o.max_sequences = batch;
    auto cache = make_cache(context.get(), o);
    for (int32_t b = 0; b < batch; ++b) {
      int32_t id = -1;
      NKV_ASSERT_OK(nkv_paged_kv_cache_add_sequence(cache.get(), &id));
      NKV_ASSERT_OK(nkv_paged_kv_cache_append(cache.get(), &b, &lengths[b], 1));
      nkv_tensor ks = kt, vs = vt;
      ks.shape[0] = vs.shape[0] = lengths[b];
      ks.data = static_cast<uint16_t*>(km.data()) + cu_k[b] * row;
      vs.data = static_cast<uint16_t*>(vm.data()) + cu_k[b] * row;
      NKV_ASSERT_OK(nkv_paged_kv_cache_write(cache.get(), 0, &ks, &vs));
    }
    nkv_tensor k_pool{}, v_pool{}, table{};
    NKV_ASSERT_OK(nkv_paged_kv_cache_view(cache.get(), NKV_PAGED_KV_K_POOL, 0, &k_pool));
    NKV_ASSERT_OK(nkv_paged_kv_cache_view(cache.get(), NKV_PAGED_KV_V_POOL, 0, &v_pool));
    NKV_ASSERT_OK(nkv_paged_kv_cache_view(cache.get(), NKV_PAGED_KV_BLOCK_TABLE, 0, &table));
    o2.fill(0xFF, q.size() * 2);
    NKV_ASSERT_OK(nkv_attention_varlen_paged(plan, &qt, &k_pool, &v_pool, &table, &ot2, &lt2));
    EXPECT_EQ(expected_o, o2.download<uint16_t>(q.size()));
    EXPECT_EQ(expected_lse, l2.download<float>(static_cast<size_t>(hq) * cu_q.back()));
    nkv_tensor narrow = table;
    narrow.shape[1] = (lengths.back() + page_size - 1) / page_size - 1;
    NKV_EXPECT_STATUS(nkv_attention_varlen_paged(plan, &qt, &k_pool, &v_pool, &narrow, &ot2, &lt2),
                      NKV_STATUS_INVALID_ARGUMENT, "block_table");
  }
  nkv_attention_plan_destroy(plan);
}

}  // namespace

TEST(PagedKvCache, VarlenThroughTheBlockTableMatchesContiguousVarlen) { expect_paged_varlen_matches_contiguous(NKV_BACKEND_CPU); }

TEST(PagedKvCacheCuda, VarlenThroughTheBlockTableMatchesContiguousVarlen) {
  NKV_REQUIRE_CUDA();
  expect_paged_varlen_matches_contiguous(NKV_BACKEND_CUDA);
}

TEST(PagedKvCache, DecodeThroughTheBlockTableMatchesContiguousDecode) { expect_paged_decode_matches_contiguous(NKV_BACKEND_CPU); }

TEST(PagedKvCacheCuda, DecodeThroughTheBlockTableMatchesContiguousDecode) {
  NKV_REQUIRE_CUDA();
  expect_paged_decode_matches_contiguous(NKV_BACKEND_CUDA);
}
