// Virtual-memory KV cache: blocks mapped on demand, deferred reclamation, forks sharing pages by mapping,
// copy on write, all-or-nothing appends under a budget, the background mapping thread, and teardown that
// gives every page back; contents checked against a per-slot model, through the views the contiguous
// kernels read. Every test runs on the CPU backend (mmap of a memory file) and on CUDA (the VMM API).
#include <dirent.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "core/float_bits.h"
#include "test_support.h"

using namespace nkv_test;

namespace {

struct CacheDeleter {
  void operator()(nkv_virtual_kv_cache* c) const { nkv_virtual_kv_cache_destroy(c); }
};
using CachePtr = std::unique_ptr<nkv_virtual_kv_cache, CacheDeleter>;

// 4 layers of 8 x 128 fp16: 2 KiB per token and region, so a 2 MiB page holds 1024 tokens of one layer's
// K or V (layer-major), or 128 tokens of every layer (token-major).
nkv_virtual_kv_cache_options options(nkv_virtual_kv_layout layout, int32_t max_slots = 4, int32_t max_tokens = 3000,
                                     uint64_t byte_budget = 0) {
  nkv_virtual_kv_cache_options o{};
  o.struct_size = sizeof(o);
  o.dtype = NKV_DTYPE_FLOAT16;
  o.layout = layout;
  o.num_layers = 4;
  o.num_heads_kv = 8;
  o.head_dim = 128;
  o.max_slots = max_slots;
  o.max_tokens = max_tokens;
  o.byte_budget = byte_budget;
  return o;
}

CachePtr make_cache(nkv_context* context, const nkv_virtual_kv_cache_options& o) {
  nkv_virtual_kv_cache* cache = nullptr;
  EXPECT_EQ(nkv_virtual_kv_cache_create(context, &o, &cache), NKV_STATUS_SUCCESS) << nkv_last_error();
  return CachePtr(cache);
}

nkv_virtual_kv_cache_info info_of(nkv_virtual_kv_cache* cache) {
  nkv_virtual_kv_cache_info info{};
  info.struct_size = sizeof(info);
  EXPECT_EQ(nkv_virtual_kv_cache_get_info(cache, &info), NKV_STATUS_SUCCESS) << nkv_last_error();
  return info;
}

// What every slot must hold: per layer the K and V rows of its tokens ([token][head][d] uint16).
struct Model {
  int32_t layers = 4, heads = 8, head_dim = 128;
  std::map<int32_t, std::vector<std::vector<uint16_t>>> k, v;
  size_t row() const { return static_cast<size_t>(heads) * head_dim; }
  void add(int32_t slot) {
    k[slot].assign(static_cast<size_t>(layers), {});
    v[slot].assign(static_cast<size_t>(layers), {});
  }
  void truncate(int32_t slot, int32_t length) {
    for (auto* side : {&k, &v}) {
      for (auto& rows : (*side)[slot]) rows.resize(static_cast<size_t>(length) * row());
    }
  }
};

// One step: appends and writes random K/V for every layer (from device memory on CUDA).
nkv_status append_step(nkv_context* context, nkv_virtual_kv_cache* cache, Model& model, const std::vector<int32_t>& slots,
                       const std::vector<int32_t>& counts) {
  const nkv_status status = nkv_virtual_kv_cache_append(cache, slots.data(), counts.data(), static_cast<int32_t>(slots.size()));
  if (status != NKV_STATUS_SUCCESS) return status;
  int64_t tokens = 0;
  for (int32_t n : counts) tokens += n;
  const nkv_device_type device = device_of(context);
  for (int32_t layer = 0; layer < model.layers; ++layer) {
    std::vector<uint16_t> k(static_cast<size_t>(tokens) * model.row()), v(k.size());
    for (auto& x : k) x = static_cast<uint16_t>(rng()());
    for (auto& x : v) x = static_cast<uint16_t>(rng()());
    Memory kd(context, std::max<size_t>(k.size(), 1) * 2), vd(context, std::max<size_t>(v.size(), 1) * 2);
    kd.upload(k);
    vd.upload(v);
    const nkv_tensor kt = view(kd.data(), NKV_DTYPE_FLOAT16, device, {tokens, model.heads, model.head_dim});
    const nkv_tensor vt = view(vd.data(), NKV_DTYPE_FLOAT16, device, {tokens, model.heads, model.head_dim});
    const nkv_status written = nkv_virtual_kv_cache_write(cache, layer, &kt, &vt);
    if (written != NKV_STATUS_SUCCESS) return written;
    EXPECT_EQ(nkv_context_synchronize(context), NKV_STATUS_SUCCESS);  // the staging buffers go out of scope
    size_t offset = 0;
    for (size_t i = 0; i < slots.size(); ++i) {
      const size_t n = static_cast<size_t>(counts[i]) * model.row();
      auto& mk = model.k[slots[i]][layer];
      auto& mv = model.v[slots[i]][layer];
      mk.insert(mk.end(), k.begin() + offset, k.begin() + offset + n);
      mv.insert(mv.end(), v.begin() + offset, v.begin() + offset + n);
      offset += n;
    }
  }
  return NKV_STATUS_SUCCESS;
}

// Rows [0, length) of one slot of a K or V view, on the host: each run of rows (the whole slot of a 4-D
// view, a block of a 5-D one) as a strided matrix, gathered by an identity pack plan into a buffer of the
// test's own (the view is the cache's memory, maybe a device's).
std::vector<uint16_t> read_rows(nkv_context* context, const nkv_tensor& kv, int32_t slot, int32_t length) {
  const bool blocked = kv.ndim == 5;
  const int64_t width = kv.shape[kv.ndim - 2] * kv.shape[kv.ndim - 1];
  const int64_t row_stride = kv.strides[kv.ndim - 3];
  const int32_t run = blocked ? static_cast<int32_t>(kv.shape[2]) : std::max(length, 1);
  std::vector<uint16_t> out(static_cast<size_t>(length * width));
  for (int32_t first_row = 0; first_row < length; first_row += run) {
    const int32_t rows = std::min(run, length - first_row);
    const uint16_t* first = static_cast<const uint16_t*>(kv.data) + slot * kv.strides[0] +
                            (blocked ? first_row / run * kv.strides[1] : first_row * row_stride);
    uint16_t* to_host = out.data() + first_row * width;
    if (device_of(context) == NKV_DEVICE_HOST) {
      for (int32_t t = 0; t < rows; ++t) std::memcpy(to_host + t * width, first + t * row_stride, width * 2);
      continue;
    }
    nkv_pack_plan* plan = nullptr;
    int32_t count = rows;
    EXPECT_EQ(nkv_pack_plan_create(context, &count, 1, 0, &plan), NKV_STATUS_SUCCESS) << nkv_last_error();
    Memory copy(context, static_cast<size_t>(rows * width) * 2);
    const nkv_tensor in = view(const_cast<uint16_t*>(first), NKV_DTYPE_FLOAT16, NKV_DEVICE_CUDA, {rows, width}, {row_stride, 1});
    const nkv_tensor to = view(copy.data(), NKV_DTYPE_FLOAT16, NKV_DEVICE_CUDA, {rows, width});
    EXPECT_EQ(nkv_pack_gather(plan, &in, &to), NKV_STATUS_SUCCESS) << nkv_last_error();
    nkv_pack_plan_destroy(plan);
    const std::vector<uint16_t> rows_back = copy.download<uint16_t>(static_cast<size_t>(rows * width));
    std::copy(rows_back.begin(), rows_back.end(), to_host);
  }
  return out;
}

void expect_contents(nkv_context* context, nkv_virtual_kv_cache* cache, const Model& model) {
  for (const auto& [slot, layers] : model.k) {
    int32_t length = -1;
    int64_t mapped = -1;
    ASSERT_EQ(nkv_virtual_kv_cache_slot(cache, slot, &length, &mapped), NKV_STATUS_SUCCESS) << nkv_last_error();
    ASSERT_EQ(static_cast<size_t>(length) * model.row(), layers[0].size()) << "slot " << slot;
    ASSERT_GE(mapped, length);
    for (int32_t layer = 0; layer < model.layers; ++layer) {
      for (int32_t which : {NKV_VIRTUAL_KV_K, NKV_VIRTUAL_KV_V}) {
        nkv_tensor kv{};
        ASSERT_EQ(nkv_virtual_kv_cache_view(cache, which, layer, &kv), NKV_STATUS_SUCCESS) << nkv_last_error();
        const auto& expected = (which == NKV_VIRTUAL_KV_K ? model.k : model.v).at(slot)[layer];
        ASSERT_TRUE(read_rows(context, kv, slot, length) == expected)
            << (which == NKV_VIRTUAL_KV_K ? "K" : "V") << " of slot " << slot << ", layer " << layer;
      }
    }
  }
}

int32_t add_slot(nkv_virtual_kv_cache* cache, Model& model) {
  int32_t slot = -1;
  EXPECT_EQ(nkv_virtual_kv_cache_add_slot(cache, &slot), NKV_STATUS_SUCCESS) << nkv_last_error();
  model.add(slot);
  return slot;
}

// Slots grow across block boundaries, fork (whole pages shared, the last copied), write after the fork
// (copy on write), truncate, free and come back on the freed slots' still-mapped blocks.
void expect_model_semantics(nkv_backend backend, nkv_virtual_kv_layout layout) {
  auto context = make_context(backend);
  auto cache = make_cache(context.get(), options(layout));
  const nkv_virtual_kv_cache_info empty = info_of(cache.get());
  const int32_t per_block = empty.tokens_per_block;
  EXPECT_EQ(per_block, layout == NKV_VIRTUAL_KV_LAYER_MAJOR ? 1024 : 128);
  EXPECT_EQ(empty.page_bytes, 2u << 20);
  EXPECT_EQ(empty.mapped_pages, 0);
  Model model;
  const int32_t a = add_slot(cache.get(), model);
  const int32_t b = add_slot(cache.get(), model);
  NKV_ASSERT_OK(append_step(context.get(), cache.get(), model, {a, b}, {per_block + 5, 7}));
  NKV_ASSERT_OK(append_step(context.get(), cache.get(), model, {b, a}, {1, 1}));
  expect_contents(context.get(), cache.get(), model);
  nkv_virtual_kv_cache_info info = info_of(cache.get());
  EXPECT_EQ(info.tokens, per_block + 6 + 8);
  EXPECT_EQ(info.mapped_pages, 3 * (layout == NKV_VIRTUAL_KV_LAYER_MAJOR ? 8 : 1));  // a: 2 blocks, b: 1
  EXPECT_EQ(info.empty_token_slots, 3 * per_block - info.tokens);

  // Fork: a's first block is shared by mapping, its second (partly filled) copied.
  int32_t child = -1;
  NKV_ASSERT_OK(nkv_virtual_kv_cache_fork(cache.get(), a, &child));
  model.k[child] = model.k[a];
  model.v[child] = model.v[a];
  info = info_of(cache.get());
  EXPECT_EQ(info.shared_pages, layout == NKV_VIRTUAL_KV_LAYER_MAJOR ? 8 : 1);
  expect_contents(context.get(), cache.get(), model);
  // Both write on; then the child is truncated into the shared block and writes there: copy on write.
  NKV_ASSERT_OK(append_step(context.get(), cache.get(), model, {child, a}, {3, 2}));
  NKV_ASSERT_OK(nkv_virtual_kv_cache_truncate(cache.get(), child, 10));
  model.truncate(child, 10);
  NKV_ASSERT_OK(append_step(context.get(), cache.get(), model, {child}, {4}));
  expect_contents(context.get(), cache.get(), model);
  EXPECT_EQ(info_of(cache.get()).shared_pages, 0);

  // Free b: its block stays mapped (deferred) and serves the next slot added.
  const int64_t created = info_of(cache.get()).pages_created;
  NKV_ASSERT_OK(nkv_virtual_kv_cache_free_slot(cache.get(), b));
  model.k.erase(b);
  model.v.erase(b);
  EXPECT_EQ(info_of(cache.get()).deferred_blocks, 1);
  const int32_t c = add_slot(cache.get(), model);
  EXPECT_EQ(c, b);
  NKV_ASSERT_OK(append_step(context.get(), cache.get(), model, {c}, {per_block}));
  EXPECT_EQ(info_of(cache.get()).pages_created, created);
  expect_contents(context.get(), cache.get(), model);

  // Argument errors change nothing.
  const int32_t twice[] = {a, a}, ones[] = {1, 1};
  NKV_EXPECT_STATUS(nkv_virtual_kv_cache_append(cache.get(), twice, ones, 2), NKV_STATUS_INVALID_ARGUMENT, "twice");
  const int32_t too_many[] = {3000};
  NKV_EXPECT_STATUS(nkv_virtual_kv_cache_append(cache.get(), &a, too_many, 1), NKV_STATUS_INVALID_ARGUMENT, "max_tokens");
  NKV_EXPECT_STATUS(nkv_virtual_kv_cache_free_slot(cache.get(), 3), NKV_STATUS_INVALID_ARGUMENT, "not alive");
  NKV_EXPECT_STATUS(nkv_virtual_kv_cache_truncate(cache.get(), a, 1 << 20), NKV_STATUS_INVALID_ARGUMENT, "length");
  expect_contents(context.get(), cache.get(), model);

  // Trim: blocks past the live lengths and pooled pages go back.
  NKV_ASSERT_OK(nkv_virtual_kv_cache_truncate(cache.get(), a, 3));
  model.truncate(a, 3);
  NKV_ASSERT_OK(nkv_virtual_kv_cache_trim(cache.get()));
  info = info_of(cache.get());
  EXPECT_EQ(info.pooled_pages, 0);
  EXPECT_EQ(info.deferred_blocks, 0);
  EXPECT_EQ(info.empty_token_slots, 3 * per_block - info.tokens);  // a, child and c: one block each
  expect_contents(context.get(), cache.get(), model);
}

// A budget of three blocks: a step that needs a fourth fails as a whole, nothing changes; freeing a slot
// lets the next step take its (deferred) blocks.
void expect_budget(nkv_backend backend) {
  auto context = make_context(backend);
  const uint64_t block = 8u * (2u << 20);
  auto cache = make_cache(context.get(), options(NKV_VIRTUAL_KV_LAYER_MAJOR, 4, 3000, 3 * block + block / 2));
  EXPECT_EQ(info_of(cache.get()).budget_pages, 24);
  Model model;
  const int32_t a = add_slot(cache.get(), model), b = add_slot(cache.get(), model);
  NKV_ASSERT_OK(append_step(context.get(), cache.get(), model, {a, b}, {1500, 10}));
  NKV_EXPECT_STATUS(nkv_virtual_kv_cache_append(cache.get(), std::vector<int32_t>{a, b}.data(), std::vector<int32_t>{1, 1100}.data(), 2),
                    NKV_STATUS_OUT_OF_MEMORY, "nothing was changed");
  NKV_EXPECT_STATUS(nkv_virtual_kv_cache_ensure_capacity(cache.get(), b, 2048), NKV_STATUS_OUT_OF_MEMORY, "budget");
  expect_contents(context.get(), cache.get(), model);
  EXPECT_EQ(info_of(cache.get()).step_tokens, 1510);  // the failed step did not replace the last one
  NKV_ASSERT_OK(nkv_virtual_kv_cache_free_slot(cache.get(), a));
  model.k.erase(a);
  model.v.erase(a);
  NKV_ASSERT_OK(append_step(context.get(), cache.get(), model, {b}, {2000}));
  expect_contents(context.get(), cache.get(), model);
  EXPECT_EQ(info_of(cache.get()).deferred_blocks, 0);
}

// reserve_ahead: the background thread maps the blocks, and the append that follows maps nothing itself.
void expect_reserve_ahead(nkv_backend backend, nkv_virtual_kv_layout layout) {
  auto context = make_context(backend);
  auto cache = make_cache(context.get(), options(layout));
  Model model;
  const int32_t a = add_slot(cache.get(), model);
  const int32_t per_block = info_of(cache.get()).tokens_per_block;
  NKV_ASSERT_OK(nkv_virtual_kv_cache_reserve_ahead(cache.get(), a, 2 * per_block + 1));
  int64_t mapped = 0;
  for (int i = 0; i < 2000 && mapped < 2 * per_block + 1; ++i) {
    int32_t length = 0;
    NKV_ASSERT_OK(nkv_virtual_kv_cache_slot(cache.get(), a, &length, &mapped));
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_GE(mapped, 2 * per_block + 1);
  EXPECT_EQ(info_of(cache.get()).blocks_mapped_ahead, 3);
  NKV_ASSERT_OK(append_step(context.get(), cache.get(), model, {a}, {2 * per_block + 1}));
  EXPECT_EQ(info_of(cache.get()).blocks_mapped_inline, 0);
  expect_contents(context.get(), cache.get(), model);
  // Requests racing with appends and frees: whatever the thread did, the contents hold.
  const int32_t b = add_slot(cache.get(), model);
  for (int step = 0; step < 20; ++step) {
    NKV_ASSERT_OK(nkv_virtual_kv_cache_reserve_ahead(cache.get(), b, std::min(2999, (step + 2) * 100)));
    NKV_ASSERT_OK(append_step(context.get(), cache.get(), model, {b}, {100}));
  }
  NKV_ASSERT_OK(nkv_virtual_kv_cache_reserve_ahead(cache.get(), b, 2999));
  NKV_ASSERT_OK(nkv_virtual_kv_cache_free_slot(cache.get(), b));
  model.k.erase(b);
  model.v.erase(b);
  expect_contents(context.get(), cache.get(), model);
}

int count_entries(const char* directory) {
  DIR* d = opendir(directory);
  if (d == nullptr) return -1;
  int n = 0;
  while (readdir(d) != nullptr) ++n;
  closedir(d);
  return n;
}

// Prefill and chunked prefill through the views: varlen over the cache's K and V views (batched K/V, batch
// entry b = slot b, narrowed to the plan's batch) equals varlen over the same keys packed, bit for bit (the
// SM80 kernel family on CUDA). Slot 1 is freed before the call, so its entry is a sequence without keys.
void expect_prefill_through_views(nkv_backend backend, nkv_virtual_kv_layout layout) {
  auto context = make_context(backend);
  const nkv_device_type device = device_of(context.get());
  auto cache = make_cache(context.get(), options(layout));
  const int32_t hq = 16, hkv = 8, d = 128;
  const size_t row = static_cast<size_t>(hkv) * d;
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  auto random_halves = [&](size_t count) {
    std::vector<uint16_t> x(count);
    for (auto& h : x) h = nkv::float_to_half(uniform(rng()));
    return x;
  };
  std::vector<std::vector<uint16_t>> keys(3), values(3);  // per slot, [token][head][d]
  auto append = [&](const std::vector<int32_t>& slots, const std::vector<int32_t>& counts) {
    NKV_ASSERT_OK(nkv_virtual_kv_cache_append(cache.get(), slots.data(), counts.data(), static_cast<int32_t>(slots.size())));
    int64_t tokens = 0;
    for (int32_t n : counts) tokens += n;
    const std::vector<uint16_t> k = random_halves(static_cast<size_t>(tokens) * row), v = random_halves(k.size());
    Memory km(context.get(), k.size() * 2), vm(context.get(), v.size() * 2);
    km.upload(k);
    vm.upload(v);
    const nkv_tensor kt = view(km.data(), NKV_DTYPE_FLOAT16, device, {tokens, hkv, d});
    const nkv_tensor vt = view(vm.data(), NKV_DTYPE_FLOAT16, device, {tokens, hkv, d});
    NKV_ASSERT_OK(nkv_virtual_kv_cache_write(cache.get(), 0, &kt, &vt));
    NKV_ASSERT_OK(nkv_context_synchronize(context.get()));
    size_t offset = 0;
    for (size_t i = 0; i < slots.size(); ++i) {
      const size_t n = static_cast<size_t>(counts[i]) * row;
      keys[slots[i]].insert(keys[slots[i]].end(), k.begin() + offset, k.begin() + offset + n);
      values[slots[i]].insert(values[slots[i]].end(), v.begin() + offset, v.begin() + offset + n);
      offset += n;
    }
  };
  for (int i = 0; i < 3; ++i) {
    int32_t slot = -1;
    NKV_ASSERT_OK(nkv_virtual_kv_cache_add_slot(cache.get(), &slot));
    ASSERT_EQ(slot, i);
  }
  append({0, 1, 2}, {300, 50, 1200});
  append({2}, {100});  // a chunk after a cached prefix
  NKV_ASSERT_OK(nkv_virtual_kv_cache_free_slot(cache.get(), 1));
  const std::vector<int32_t> cu_k = {0, 300, 300, 1600}, cu_q = {0, 300, 300, 400};  // slot 2: the chunk's queries

  std::vector<uint16_t> packed_k, packed_v;
  for (int32_t slot : {0, 2}) {
    packed_k.insert(packed_k.end(), keys[slot].begin(), keys[slot].end());
    packed_v.insert(packed_v.end(), values[slot].begin(), values[slot].end());
  }
  const std::vector<uint16_t> q = random_halves(static_cast<size_t>(cu_q.back()) * hq * d);
  Memory qm(context.get(), q.size() * 2), km(context.get(), packed_k.size() * 2), vm(context.get(), packed_v.size() * 2);
  Memory o1(context.get(), q.size() * 2), o2(context.get(), q.size() * 2);
  qm.upload(q);
  km.upload(packed_k);
  vm.upload(packed_v);
  const nkv_tensor qt = view(qm.data(), NKV_DTYPE_FLOAT16, device, {cu_q.back(), hq, d});
  const nkv_tensor kt = view(km.data(), NKV_DTYPE_FLOAT16, device, {cu_k.back(), hkv, d});
  const nkv_tensor vt = view(vm.data(), NKV_DTYPE_FLOAT16, device, {cu_k.back(), hkv, d});
  const nkv_tensor ot1 = view(o1.data(), NKV_DTYPE_FLOAT16, device, {cu_q.back(), hq, d});
  const nkv_tensor ot2 = view(o2.data(), NKV_DTYPE_FLOAT16, device, {cu_q.back(), hq, d});
  const nkv_attention_kernel kernel = backend == NKV_BACKEND_CUDA ? NKV_ATTENTION_KERNEL_SM80 : NKV_ATTENTION_KERNEL_AUTO;
  const nkv_attention_options opts{sizeof(nkv_attention_options), 1, 0.0f, 0.0f, -1, 0, kernel, 0, 0};
  nkv_attention_plan* plan = nullptr;
  NKV_ASSERT_OK(nkv_attention_plan_varlen(context.get(), &opts, hq, hkv, d, 3, cu_q.data(), cu_k.data(), &plan));
  NKV_ASSERT_OK(nkv_attention_varlen(plan, &qt, &kt, &vt, &ot1, nullptr));
  nkv_tensor k_view{}, v_view{};
  NKV_ASSERT_OK(nkv_virtual_kv_cache_view(cache.get(), NKV_VIRTUAL_KV_K, 0, &k_view));
  NKV_ASSERT_OK(nkv_virtual_kv_cache_view(cache.get(), NKV_VIRTUAL_KV_V, 0, &v_view));
  k_view.shape[0] = v_view.shape[0] = 3;
  o2.fill(0xFF, q.size() * 2);
  NKV_ASSERT_OK(nkv_attention_varlen(plan, &qt, &k_view, &v_view, &ot2, nullptr));
  EXPECT_TRUE(o1.download<uint16_t>(q.size()) == o2.download<uint16_t>(q.size()));
  nkv_attention_plan_destroy(plan);
}

}  // namespace

TEST(VirtualKvCache, LayerMajorFollowsTheModel) { expect_model_semantics(NKV_BACKEND_CPU, NKV_VIRTUAL_KV_LAYER_MAJOR); }
TEST(VirtualKvCache, TokenMajorFollowsTheModel) { expect_model_semantics(NKV_BACKEND_CPU, NKV_VIRTUAL_KV_TOKEN_MAJOR); }
TEST(VirtualKvCache, BudgetFailuresChangeNothing) { expect_budget(NKV_BACKEND_CPU); }
TEST(VirtualKvCache, ReserveAheadMapsOnTheBackgroundThread) {
  expect_reserve_ahead(NKV_BACKEND_CPU, NKV_VIRTUAL_KV_LAYER_MAJOR);
  expect_reserve_ahead(NKV_BACKEND_CPU, NKV_VIRTUAL_KV_TOKEN_MAJOR);
}

TEST(VirtualKvCache, PrefillThroughTheViewsMatchesPackedKeys) {
  expect_prefill_through_views(NKV_BACKEND_CPU, NKV_VIRTUAL_KV_LAYER_MAJOR);
  expect_prefill_through_views(NKV_BACKEND_CPU, NKV_VIRTUAL_KV_TOKEN_MAJOR);
}

TEST(VirtualKvCache, OptionsAreChecked) {
  auto context = make_context(NKV_BACKEND_CPU);
  nkv_virtual_kv_cache* cache = nullptr;
  nkv_virtual_kv_cache_options o = options(NKV_VIRTUAL_KV_LAYER_MAJOR);
  o.head_dim = 12;
  NKV_EXPECT_STATUS(nkv_virtual_kv_cache_create(context.get(), &o, &cache), NKV_STATUS_INVALID_ARGUMENT, "head_dim");
  o = options(NKV_VIRTUAL_KV_LAYER_MAJOR);
  o.layout = 7;
  NKV_EXPECT_STATUS(nkv_virtual_kv_cache_create(context.get(), &o, &cache), NKV_STATUS_INVALID_ARGUMENT, "layout");
  o = options(NKV_VIRTUAL_KV_LAYER_MAJOR);
  o.struct_size = 8;
  NKV_EXPECT_STATUS(nkv_virtual_kv_cache_create(context.get(), &o, &cache), NKV_STATUS_INVALID_ARGUMENT, "struct_size");
  EXPECT_EQ(cache, nullptr);
  NKV_ASSERT_OK(nkv_virtual_kv_cache_destroy(nullptr));
}

// Creating, filling and destroying caches in a loop leaves no file descriptor and no mapping behind.
TEST(VirtualKvCache, DestroyReleasesEverything) {
  auto context = make_context(NKV_BACKEND_CPU);
  auto round = [&] {
    auto cache = make_cache(context.get(), options(NKV_VIRTUAL_KV_TOKEN_MAJOR, 4, 3000));
    Model model;
    const int32_t a = add_slot(cache.get(), model);
    NKV_ASSERT_OK(nkv_virtual_kv_cache_reserve_ahead(cache.get(), a, 2000));
    NKV_ASSERT_OK(append_step(context.get(), cache.get(), model, {a}, {1000}));
  };
  round();
  const int fds = count_entries("/proc/self/fd");
  const int maps = count_entries("/proc/self/map_files");
  for (int i = 0; i < 20; ++i) round();
  EXPECT_EQ(count_entries("/proc/self/fd"), fds);
  EXPECT_EQ(count_entries("/proc/self/map_files"), maps);
}

TEST(VirtualKvCacheCuda, LayerMajorFollowsTheModel) {
  NKV_REQUIRE_CUDA();
  expect_model_semantics(NKV_BACKEND_CUDA, NKV_VIRTUAL_KV_LAYER_MAJOR);
}
TEST(VirtualKvCacheCuda, TokenMajorFollowsTheModel) {
  NKV_REQUIRE_CUDA();
  expect_model_semantics(NKV_BACKEND_CUDA, NKV_VIRTUAL_KV_TOKEN_MAJOR);
}
TEST(VirtualKvCacheCuda, PrefillThroughTheViewsMatchesPackedKeys) {
  NKV_REQUIRE_CUDA();
  expect_prefill_through_views(NKV_BACKEND_CUDA, NKV_VIRTUAL_KV_LAYER_MAJOR);
  expect_prefill_through_views(NKV_BACKEND_CUDA, NKV_VIRTUAL_KV_TOKEN_MAJOR);
}
TEST(VirtualKvCacheCuda, BudgetFailuresChangeNothing) {
  NKV_REQUIRE_CUDA();
  expect_budget(NKV_BACKEND_CUDA);
}
TEST(VirtualKvCacheCuda, ReserveAheadMapsOnTheBackgroundThread) {
  NKV_REQUIRE_CUDA();
  expect_reserve_ahead(NKV_BACKEND_CUDA, NKV_VIRTUAL_KV_LAYER_MAJOR);
  expect_reserve_ahead(NKV_BACKEND_CUDA, NKV_VIRTUAL_KV_TOKEN_MAJOR);
}

// Caches that map 60% of the device's memory, created and destroyed in a loop: a page or range left
// behind by one round would make a later round run out of memory.
TEST(VirtualKvCacheCuda, DestroyReleasesEverything) {
  NKV_REQUIRE_CUDA();
  auto context = make_context(NKV_BACKEND_CUDA);
  nkv_device_properties p{};
  p.struct_size = sizeof(p);
  NKV_ASSERT_OK(nkv_cuda_device_properties(0, &p));
  const uint64_t block = 8u * (2u << 20);
  const int32_t tokens_per_slot = 1024 * 64;  // 64 blocks = 1 GiB
  const int32_t slots = static_cast<int32_t>(p.total_memory_bytes * 6 / 10 / (64 * block));
  for (int round = 0; round < 4; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    auto cache = make_cache(context.get(), options(NKV_VIRTUAL_KV_LAYER_MAJOR, slots, tokens_per_slot));
    for (int32_t s = 0; s < slots; ++s) {
      int32_t slot = -1;
      NKV_ASSERT_OK(nkv_virtual_kv_cache_add_slot(cache.get(), &slot));
      NKV_ASSERT_OK(nkv_virtual_kv_cache_ensure_capacity(cache.get(), slot, tokens_per_slot));
    }
    EXPECT_EQ(info_of(cache.get()).mapped_pages, static_cast<int64_t>(slots) * 64 * 8);
  }
}
