// Serving-trace simulation for the KV-cache managers (issue 4): how many sequences a fixed KV memory budget
// holds at once under static max-length reservation, the paged cache and the virtual-memory cache (both
// layouts), and how much of the allocated memory holds no token.
//
// The trace: a backlog of requests whose prompt lengths follow the attention benchmark's mix
// (L = 32 + floor(4000 u^2), u uniform, seed 0) and whose output lengths are uniform in 32..2048 (seed 1).
// An engine loop (run_engine), one decode step at a time, over each cache's real bookkeeping on the CPU
// backend (PagedCache, VirtualCache); bytes are reported for the modelled LLM (32 layers, 8 KV heads,
// head_dim 128, fp16: 128 KiB per token). Static reservation is arithmetic: each admitted request holds
// max_length tokens.
//
// Output: a Markdown table on stdout.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "nativekv/nativekv.h"

namespace {

constexpr int64_t kBytesPerToken = 32LL * 2 * 8 * 128 * 2;  // layers x (K, V) x KV heads x head_dim x fp16
constexpr uint64_t kBudgetBytes = 40ULL << 30;              // KV memory of the simulated GPU
constexpr int kRequests = 2000;
constexpr int kMaxPrompt = 32 + 4000;
constexpr int kMaxOutput = 2048;
constexpr int kMaxLength = kMaxPrompt + kMaxOutput;

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "nkv_serving_sim: %s\n", message.c_str());
  std::exit(1);
}

void check(nkv_status status, const char* what) {
  if (status != NKV_STATUS_SUCCESS) die(std::string(what) + ": " + nkv_last_error());
}

struct Request {
  int prompt;
  int output;
};

std::vector<Request> trace() {
  std::mt19937_64 prompts(0), outputs(1);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::uniform_int_distribution<int> out(32, kMaxOutput);
  std::vector<Request> requests(kRequests);
  for (Request& r : requests) {
    const double x = u(prompts);
    r.prompt = 32 + static_cast<int>(4000.0 * x * x);
    r.output = out(outputs);
  }
  return requests;
}

struct Result {
  std::string policy;
  int page_size = 0;
  int max_concurrent = 0;
  double mean_concurrent = 0.0;
  int64_t steps = 0;
  int64_t preemptions = 0;
  double mean_waste_tokens = 0.0;  // allocated but empty slots per running sequence, averaged over steps
  int64_t max_waste_tokens = 0;    // the most any sequence had at any step
  double mean_used_fraction = 0.0; // tokens held / budget, averaged over steps
  double mean_ahead_tokens = -1.0; // virtual memory: mapped past the slot's last block, reclaimable (-1: n/a)
};

// Every admitted request holds a slot of kMaxLength tokens of slot_bytes.
Result simulate_static(const std::vector<Request>& requests, uint64_t slot_bytes = static_cast<uint64_t>(kBytesPerToken) * kMaxLength,
                       const std::string& policy = "static max-length reservation") {
  Result r;
  r.policy = policy;
  const int64_t slots = static_cast<int64_t>(kBudgetBytes / slot_bytes);
  struct Running {
    int length, remaining;
  };
  std::vector<Running> running;
  size_t next = 0;
  double concurrent_sum = 0.0, waste_sum = 0.0, used_sum = 0.0;
  while (next < requests.size() || !running.empty()) {
    while (next < requests.size() && static_cast<int64_t>(running.size()) < slots) {
      running.push_back({requests[next].prompt, requests[next].output});
      ++next;
    }
    int64_t tokens = 0;
    for (Running& s : running) {
      ++s.length;
      --s.remaining;
      tokens += s.length;
      r.max_waste_tokens = std::max<int64_t>(r.max_waste_tokens, kMaxLength - s.length);
    }
    ++r.steps;
    r.max_concurrent = std::max(r.max_concurrent, static_cast<int>(running.size()));
    concurrent_sum += static_cast<double>(running.size());
    waste_sum += running.empty() ? 0.0 : static_cast<double>(static_cast<int64_t>(running.size()) * kMaxLength - tokens) / static_cast<double>(running.size());
    used_sum += static_cast<double>(tokens * kBytesPerToken) / static_cast<double>(kBudgetBytes);
    running.erase(std::remove_if(running.begin(), running.end(), [](const Running& s) { return s.remaining == 0; }), running.end());
  }
  const double steps = static_cast<double>(r.steps);
  r.mean_concurrent = concurrent_sum / steps;
  r.mean_waste_tokens = waste_sum / steps;
  r.mean_used_fraction = used_sum / steps;
  return r;
}

// A cache under simulation, in its own units of allocation (pages, or blocks of pages).
class SimulatedCache {
 public:
  virtual ~SimulatedCache() = default;
  virtual std::string policy() const = 0;
  virtual int tokens_per_unit() const = 0;
  virtual int64_t units_for(int64_t tokens) const = 0;
  // Units free for new tokens now (the virtual cache counts blocks mapped past any live slot's tokens as
  // free: it reclaims them under pressure).
  virtual int64_t free_units(const std::vector<int32_t>& live) = 0;
  virtual int32_t add(int32_t prompt) = 0;  // a new sequence holding its prompt
  virtual nkv_status step(const std::vector<int32_t>& ids) = 0;  // one token more for each
  virtual void free(int32_t id) = 0;
  struct Occupancy {
    int64_t length;  // tokens
    int64_t held;    // token places of the units holding its tokens
    int64_t mapped;  // token places mapped for it, held ones and any mapped ahead
  };
  virtual Occupancy occupancy(int32_t id) = 0;
  virtual bool maps_ahead() const { return false; }  // whether mapped can pass held
};

// The engine loop: every running sequence grows by one token per step, finished ones are freed, then waiting
// requests are admitted first come first served while their prompt's units plus one unit per running
// sequence are free (so the next step cannot run out; if it still does, the newest sequence is preempted
// back to the queue, as vLLM does).
Result run_engine(const std::vector<Request>& requests, SimulatedCache& cache) {
  Result r;
  r.policy = cache.policy();
  r.page_size = cache.tokens_per_unit();
  struct Running {
    int32_t id;
    int request, remaining;
  };
  std::vector<Running> running;
  std::deque<int> waiting;
  for (int i = 0; i < static_cast<int>(requests.size()); ++i) waiting.push_back(i);
  std::vector<int32_t> ids;
  double concurrent_sum = 0.0, waste_sum = 0.0, used_sum = 0.0, ahead_sum = 0.0;
  auto live_ids = [&] {
    ids.clear();
    for (const Running& x : running) ids.push_back(x.id);
    return ids;
  };
  while (!waiting.empty() || !running.empty()) {
    while (!waiting.empty()) {
      const Request& q = requests[waiting.front()];
      const int64_t needed = cache.units_for(q.prompt) + static_cast<int64_t>(running.size()) + 1;
      if (needed > cache.free_units(live_ids())) break;
      running.push_back({cache.add(q.prompt), waiting.front(), q.output});
      waiting.pop_front();
    }
    if (running.empty()) die("a request does not fit the budget on its own");
    for (;;) {
      const nkv_status status = cache.step(live_ids());
      if (status == NKV_STATUS_SUCCESS) break;
      if (status != NKV_STATUS_OUT_OF_MEMORY) check(status, "decode append");
      const Running victim = running.back();
      running.pop_back();
      cache.free(victim.id);
      waiting.push_front(victim.request);  // recomputed from its prompt when admitted again
      ++r.preemptions;
    }
    ++r.steps;
    r.max_concurrent = std::max(r.max_concurrent, static_cast<int>(running.size()));
    concurrent_sum += static_cast<double>(running.size());
    int64_t tokens = 0, waste = 0, ahead = 0;
    for (Running& x : running) {
      const SimulatedCache::Occupancy o = cache.occupancy(x.id);
      r.max_waste_tokens = std::max(r.max_waste_tokens, o.held - o.length);
      waste += o.held - o.length;
      ahead += o.mapped - o.held;
      tokens += o.length;
      --x.remaining;
    }
    const double n = static_cast<double>(running.size());
    waste_sum += static_cast<double>(waste) / n;
    ahead_sum += static_cast<double>(ahead) / n;
    used_sum += static_cast<double>(tokens * kBytesPerToken) / static_cast<double>(kBudgetBytes);
    for (size_t i = 0; i < running.size();) {
      if (running[i].remaining == 0) {
        cache.free(running[i].id);
        running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
  }
  const double steps = static_cast<double>(r.steps);
  r.mean_concurrent = concurrent_sum / steps;
  r.mean_waste_tokens = waste_sum / steps;
  r.mean_used_fraction = used_sum / steps;
  r.mean_ahead_tokens = cache.maps_ahead() ? ahead_sum / steps : -1.0;
  return r;
}

// The paged cache's real bookkeeping (CPU backend). Its pools are created for a 1-layer, 1-head, 8-wide
// stand-in with the same page count and page size, since the simulation never touches K/V.
class PagedCache final : public SimulatedCache {
 public:
  PagedCache(nkv_context* context, int page_size) : page_size_(page_size) {
    nkv_paged_kv_cache_options o{};
    o.struct_size = sizeof(o);
    o.dtype = NKV_DTYPE_FLOAT16;
    o.num_layers = 1;
    o.num_heads_kv = 1;
    o.head_dim = 8;
    o.page_size = page_size;
    o.max_sequences = 4096;
    o.max_sequence_length = kMaxLength;
    o.num_pages = static_cast<int64_t>(kBudgetBytes / kBytesPerToken) / page_size;
    check(nkv_paged_kv_cache_create(context, &o, &cache_), "nkv_paged_kv_cache_create");
  }
  ~PagedCache() override { check(nkv_paged_kv_cache_destroy(cache_), "nkv_paged_kv_cache_destroy"); }
  std::string policy() const override { return "paged (nkv_paged_kv_cache)"; }
  int tokens_per_unit() const override { return page_size_; }
  int64_t units_for(int64_t tokens) const override { return (tokens + page_size_ - 1) / page_size_; }
  int64_t free_units(const std::vector<int32_t>&) override {
    nkv_paged_kv_cache_info info{};
    info.struct_size = sizeof(info);
    check(nkv_paged_kv_cache_get_info(cache_, &info), "nkv_paged_kv_cache_get_info");
    return info.free_pages;
  }
  int32_t add(int32_t prompt) override {
    int32_t id = -1;
    check(nkv_paged_kv_cache_add_sequence(cache_, &id), "nkv_paged_kv_cache_add_sequence");
    check(nkv_paged_kv_cache_append(cache_, &id, &prompt, 1), "prefill append");
    return id;
  }
  nkv_status step(const std::vector<int32_t>& ids) override {
    ones_.assign(ids.size(), 1);
    return nkv_paged_kv_cache_append(cache_, ids.data(), ones_.data(), static_cast<int32_t>(ids.size()));
  }
  void free(int32_t id) override { check(nkv_paged_kv_cache_free_sequence(cache_, id), "nkv_paged_kv_cache_free_sequence"); }
  Occupancy occupancy(int32_t id) override {
    int32_t length = 0, pages = 0;
    check(nkv_paged_kv_cache_sequence(cache_, id, &length, nullptr, 0, &pages), "nkv_paged_kv_cache_sequence");
    const int64_t held = static_cast<int64_t>(pages) * page_size_;
    return {length, held, held};
  }

 private:
  int page_size_;
  nkv_paged_kv_cache* cache_ = nullptr;
  std::vector<int32_t> ones_;
};

// The virtual-memory cache in the modelled LLM's shape: slots of max-length virtual ranges, 2 MiB pages
// mapped as they grow (the real nkv_virtual_kv_cache on the CPU backend, mmap of a memory file: nothing is
// written, so no memory is committed). Its unit is a block (one page per region).
class VirtualCache final : public SimulatedCache {
 public:
  VirtualCache(nkv_context* context, nkv_virtual_kv_layout layout) : layout_(layout) {
    nkv_virtual_kv_cache_options o{};
    o.struct_size = sizeof(o);
    o.dtype = NKV_DTYPE_FLOAT16;
    o.layout = layout;
    o.num_layers = 32;
    o.num_heads_kv = 8;
    o.head_dim = 128;
    o.max_slots = 1024;
    o.max_tokens = kMaxLength;
    o.byte_budget = kBudgetBytes;
    check(nkv_virtual_kv_cache_create(context, &o, &cache_), "nkv_virtual_kv_cache_create");
    nkv_virtual_kv_cache_info info{};
    info.struct_size = sizeof(info);
    check(nkv_virtual_kv_cache_get_info(cache_, &info), "nkv_virtual_kv_cache_get_info");
    block_bytes_ = static_cast<int64_t>(info.bytes_per_block);
    tokens_per_block_ = info.tokens_per_block;
    budget_blocks_ = info.budget_pages / static_cast<int64_t>(info.bytes_per_block / info.page_bytes);
  }
  ~VirtualCache() override { check(nkv_virtual_kv_cache_destroy(cache_), "nkv_virtual_kv_cache_destroy"); }
  std::string policy() const override {
    return layout_ == NKV_VIRTUAL_KV_LAYER_MAJOR ? "virtual memory, layer-major (vAttention)" : "virtual memory, token-major";
  }
  int tokens_per_unit() const override { return tokens_per_block_; }
  int64_t units_for(int64_t tokens) const override { return (tokens * kBytesPerToken + block_bytes_ - 1) / block_bytes_; }
  int64_t free_units(const std::vector<int32_t>& live) override {
    int64_t in_use = 0;
    for (int32_t id : live) in_use += units_for(occupancy(id).length);
    return budget_blocks_ - in_use;
  }
  int32_t add(int32_t prompt) override {
    int32_t id = -1;
    check(nkv_virtual_kv_cache_add_slot(cache_, &id), "nkv_virtual_kv_cache_add_slot");
    check(nkv_virtual_kv_cache_append(cache_, &id, &prompt, 1), "prefill append");
    return id;
  }
  nkv_status step(const std::vector<int32_t>& ids) override {
    ones_.assign(ids.size(), 1);
    return nkv_virtual_kv_cache_append(cache_, ids.data(), ones_.data(), static_cast<int32_t>(ids.size()));
  }
  void free(int32_t id) override { check(nkv_virtual_kv_cache_free_slot(cache_, id), "nkv_virtual_kv_cache_free_slot"); }
  // Held: the token places of the blocks the slot's tokens occupy (their empty ones are the internal
  // fragmentation); blocks mapped beyond them are reclaimable and reported apart.
  Occupancy occupancy(int32_t id) override {
    int32_t length = 0;
    int64_t mapped = 0;
    check(nkv_virtual_kv_cache_slot(cache_, id, &length, &mapped), "nkv_virtual_kv_cache_slot");
    const int64_t held = units_for(length) * tokens_per_block_;
    return {length, held, std::max(mapped, held)};
  }
  bool maps_ahead() const override { return true; }

 private:
  nkv_virtual_kv_layout layout_;
  nkv_virtual_kv_cache* cache_ = nullptr;
  int64_t block_bytes_ = 0;
  int tokens_per_block_ = 0;
  int64_t budget_blocks_ = 0;
  std::vector<int32_t> ones_;
};

// KV formats (issue 5): the bytes of the modelled LLM's nkv_quantized_kv_cache (32 layers, 8 x 128; its real layout:
// codes, groups or exponents, the fp16 residuals, alignment) with `slots` slots of kMaxLength tokens, or, with
// pages > 0, paged: `pages` pages of kQuantizedPage tokens. KIVI: G 32, R 128; BFP: blocks of 32 channels, values
// like keys, no residual.
constexpr int kQuantizedPage = 32;  // a multiple of KIVI's G
uint64_t quantized_cache_bytes(nkv_context* context, nkv_kv_format format, int bits, int slots = 1, int pages = 0) {
  const int residual = format == NKV_KV_FORMAT_KIVI ? 128 : 0;
  nkv_quantized_kv_cache_options o{sizeof(o), format, bits, 32, residual, 32, 8, 128, slots, kMaxLength, 0,
                                   pages > 0 ? NKV_KV_MEMORY_PAGED : NKV_KV_MEMORY_ALLOCATED, pages > 0 ? kQuantizedPage : 0, pages};
  nkv_quantized_kv_cache* cache = nullptr;
  check(nkv_quantized_kv_cache_create(context, &o, &cache), "nkv_quantized_kv_cache_create");
  nkv_quantized_kv_cache_info info{};
  info.struct_size = sizeof(info);
  check(nkv_quantized_kv_cache_get_info(cache, &info), "nkv_quantized_kv_cache_get_info");
  check(nkv_quantized_kv_cache_destroy(cache), "nkv_quantized_kv_cache_destroy");
  return info.bytes;
}

// The paged quantized cache (NKV_KV_MEMORY_PAGED) with the real bookkeeping: slots take pages of 32 coded tokens from
// the pool as they grow (KIVI: keys up to the last flush, values up to the window) and each of the `slots` slots has
// its KIVI residual windows (R = 128 fp16 tokens of K and V) allocated with the cache. The pool is what the budget
// holds after those windows, at the modelled LLM's bytes per page; the cache itself runs in a 1 x 64 shape (one
// layer written per step) so that nothing of that size is allocated.
class QuantizedPagedCache final : public SimulatedCache {
 public:
  QuantizedPagedCache(nkv_context* context, std::string name, nkv_kv_format format, int bits, int slots) : name_(std::move(name)) {
    const uint64_t base = quantized_cache_bytes(context, format, bits, 1, 1);
    const uint64_t page_bytes = quantized_cache_bytes(context, format, bits, 1, 2) - base;
    const uint64_t slot_bytes = quantized_cache_bytes(context, format, bits, 2, 1) - base;  // the windows
    const uint64_t windows = slot_bytes * static_cast<uint64_t>(slots);
    pages_ = windows < kBudgetBytes ? static_cast<int32_t>((kBudgetBytes - windows) / page_bytes) : 0;
    residual_ = format == NKV_KV_FORMAT_KIVI ? 128 : 0;
    kivi_ = format == NKV_KV_FORMAT_KIVI;
    nkv_quantized_kv_cache_options o{sizeof(o), format, bits, 32, residual_, 1, 1, 64, slots, kMaxLength, 0, NKV_KV_MEMORY_PAGED,
                                     kQuantizedPage, pages_};
    check(nkv_quantized_kv_cache_create(context, &o, &cache_), "nkv_quantized_kv_cache_create (simulated)");
    slots_ = slots;
    policy_ = name_ + ", nkv_quantized_kv_cache paged (" + std::to_string(slots) + " slots" +
              (kivi_ ? ", " + std::to_string(static_cast<long long>(windows >> 30)) + " GiB of windows)" : ")");
  }
  ~QuantizedPagedCache() override { check(nkv_quantized_kv_cache_destroy(cache_), "nkv_quantized_kv_cache_destroy"); }
  std::string policy() const override { return policy_; }
  int tokens_per_unit() const override { return kQuantizedPage; }
  int64_t units_for(int64_t tokens) const override {
    const int64_t coded = kivi_ ? std::max(tokens - tokens % residual_, tokens - residual_) : tokens;
    return (std::max<int64_t>(0, coded) + kQuantizedPage - 1) / kQuantizedPage;
  }
  int64_t free_units(const std::vector<int32_t>& live) override {
    if (static_cast<int>(live.size()) >= slots_) return 0;  // no slot for another sequence
    nkv_quantized_kv_cache_info info{};
    info.struct_size = sizeof(info);
    check(nkv_quantized_kv_cache_get_info(cache_, &info), "nkv_quantized_kv_cache_get_info");
    return info.free_pages;
  }
  int32_t add(int32_t prompt) override {
    int32_t slot = -1;
    check(nkv_quantized_kv_cache_add_slot(cache_, &slot), "nkv_quantized_kv_cache_add_slot");
    check(nkv_quantized_kv_cache_append(cache_, &slot, &prompt, 1), "prefill append");
    write(prompt);
    return slot;
  }
  nkv_status step(const std::vector<int32_t>& ids) override {
    ones_.assign(ids.size(), 1);
    const nkv_status status = nkv_quantized_kv_cache_append(cache_, ids.data(), ones_.data(), static_cast<int32_t>(ids.size()));
    if (status == NKV_STATUS_SUCCESS) write(static_cast<int64_t>(ids.size()));
    return status;
  }
  void free(int32_t id) override { check(nkv_quantized_kv_cache_free_slot(cache_, id), "nkv_quantized_kv_cache_free_slot"); }
  // Token places held: the pages of the coded tokens, and KIVI's windows.
  Occupancy occupancy(int32_t id) override {
    int32_t length = 0;
    check(nkv_quantized_kv_cache_slot(cache_, id, &length), "nkv_quantized_kv_cache_slot");
    const int64_t held = units_for(length) * kQuantizedPage + residual_;
    return {length, held, held};
  }

 private:
  // The step's K and V (zeros) through the one layer: a slot in the step can be freed only once it is written.
  void write(int64_t tokens) {
    rows_.assign(static_cast<size_t>(tokens) * 64, 0);
    nkv_tensor t{};
    t.data = rows_.data();
    t.dtype = NKV_DTYPE_FLOAT16;
    t.device = NKV_DEVICE_HOST;
    t.ndim = 3;
    t.shape[0] = tokens;
    t.shape[1] = 1;
    t.shape[2] = 64;
    t.strides[0] = 64;
    t.strides[1] = 64;
    t.strides[2] = 1;
    check(nkv_quantized_kv_cache_write(cache_, 0, &t, &t), "nkv_quantized_kv_cache_write");
  }
  std::string name_, policy_;
  int32_t residual_ = 0, pages_ = 0, slots_ = 0;
  bool kivi_ = false;
  nkv_quantized_kv_cache* cache_ = nullptr;
  std::vector<int32_t> ones_;
  std::vector<uint16_t> rows_;
};

}  // namespace

int main() {
  nkv_context_options options{sizeof(nkv_context_options), NKV_BACKEND_CPU, 0, 0, nullptr};
  nkv_context* context = nullptr;
  check(nkv_context_create(&options, &context), "nkv_context_create");
  const std::vector<Request> requests = trace();
  std::vector<Result> results = {simulate_static(requests)};
  for (int page_size : {16, 64, 256}) {
    std::fprintf(stderr, "nkv_serving_sim: paged, page size %d\n", page_size);
    PagedCache cache(context, page_size);
    results.push_back(run_engine(requests, cache));
  }
  for (nkv_virtual_kv_layout layout : {NKV_VIRTUAL_KV_TOKEN_MAJOR, NKV_VIRTUAL_KV_LAYER_MAJOR}) {
    std::fprintf(stderr, "nkv_serving_sim: virtual memory, layout %d\n", layout);
    VirtualCache cache(context, layout);
    results.push_back(run_engine(requests, cache));
  }
  // Formats: the quantized cache with max-length slots, and paged.
  struct Format {
    const char* name;
    nkv_kv_format format;
    int bits;
  };
  const Format formats[] = {{"KIVI-4", NKV_KV_FORMAT_KIVI, 4}, {"KIVI-2", NKV_KV_FORMAT_KIVI, 2}, {"BFP16", NKV_KV_FORMAT_BFP, 8},
                            {"BFP12", NKV_KV_FORMAT_BFP, 4}};
  std::vector<std::pair<std::string, double>> stored_bits;  // bits per cached element, everything a slot holds included
  for (const Format& f : formats) {
    const uint64_t bytes = quantized_cache_bytes(context, f.format, f.bits);
    stored_bits.emplace_back(f.name, 8.0 * static_cast<double>(bytes) / (static_cast<double>(kMaxLength) * (kBytesPerToken / 2)));
    results.push_back(simulate_static(requests, bytes, std::string(f.name) + ", nkv_quantized_kv_cache (max-length slots)"));
  }
  for (const Format& f : formats) {
    // KIVI's windows are allocated per slot: more slots, fewer pages (the trade-off, three ways); BFP has none.
    for (int slots : f.format == NKV_KV_FORMAT_KIVI ? std::vector<int>{256, 512, 768} : std::vector<int>{2048}) {
      std::fprintf(stderr, "nkv_serving_sim: %s, paged, %d slots\n", f.name, slots);
      QuantizedPagedCache cache(context, f.name, f.format, f.bits, slots);
      results.push_back(run_engine(requests, cache));
    }
  }
  check(nkv_context_destroy(context), "nkv_context_destroy");

  std::printf("# KV-cache serving simulation (NativeKv %s)\n\n", nkv_version());
  std::printf("%d requests, prompts 32 + floor(4000 u^2) (seed 0), outputs uniform 32..%d (seed 1); %.0f GiB of KV for a "
              "32-layer, 8 x 128 fp16 model (%lld KiB per token, %lld tokens); static reservation holds %d tokens per request.\n\n",
              kRequests, kMaxOutput, static_cast<double>(kBudgetBytes) / (1 << 30), static_cast<long long>(kBytesPerToken / 1024),
              static_cast<long long>(kBudgetBytes / kBytesPerToken), kMaxLength);
  std::printf("| policy | page (tokens) | max concurrent | mean concurrent | vs static | steps to drain | preemptions | "
              "empty slots per sequence, mean / max | budget holding tokens (mean) | mapped ahead, reclaimable (mean tokens per sequence) |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  const double baseline = results.front().mean_concurrent;
  // Printed after the table: the KIVI rows' notes.
  for (const Result& r : results) {
    const std::string ahead = r.mean_ahead_tokens < 0 ? "—" : std::to_string(static_cast<long long>(std::lround(r.mean_ahead_tokens)));
    std::printf("| %s | %s | %d | %.1f | %.2fx | %lld | %lld | %.1f / %lld | %.1f%% | %s |\n", r.policy.c_str(),
                r.page_size > 0 ? std::to_string(r.page_size).c_str() : "—", r.max_concurrent, r.mean_concurrent,
                r.mean_concurrent / baseline, static_cast<long long>(r.steps), static_cast<long long>(r.preemptions),
                r.mean_waste_tokens, static_cast<long long>(r.max_waste_tokens), 100.0 * r.mean_used_fraction, ahead.c_str());
  }
  std::printf("\nKIVI and BFP rows (issue 5; KIVI G 32, R 128; BFP blocks of 32 channels, values like keys, no residual): "
              "\"budget holding tokens\" counts their tokens at fp16 size, so it passes 100%% where the format holds more "
              "tokens than fp16 could. The nkv_quantized_kv_cache rows use its real bytes per slot (codes, groups or "
              "exponents, KIVI's fp16 residuals, alignment) with max-length slots; the paged rows run the paged "
              "nkv_quantized_kv_cache's bookkeeping (pages of 32 coded tokens from a pool; KIVI's residual windows, 128 "
              "fp16 tokens of K and V, allocated for every slot at creation, so the pool is the budget less the windows "
              "and a sequence's held places count its window).\n");
  std::printf("\nBits per cached element of a full slot (%d tokens; the codes, the groups or exponents, KIVI's fp16 residual "
              "windows and the layout's alignment, from nkv_quantized_kv_cache_get_info's bytes): fp16 16",
              kMaxLength);
  for (const auto& [name, bits] : stored_bits) std::printf(", %s %.2f", name.c_str(), bits);
  std::printf(".\n");
  return 0;
}
