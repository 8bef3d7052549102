// Virtual-memory KV cache: validation, the slots' blocks and the physical pages behind them, and the
// background thread of nkv_virtual_kv_cache_reserve_ahead.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>

#include "core/api_guard.h"
#include "core/context_memory.h"
#include "core/kvcache.h"
#include "core/tensor_checks.h"
#include "core/virtual_kvcache.h"

using namespace nkv;
using Cache = nkv_virtual_kv_cache;
using Lock = std::unique_lock<std::mutex>;

namespace {

int32_t check_alive(const Cache& cache, int32_t slot, const char* name) {
  if (slot < 0 || slot >= cache.max_slots) {
    fail_argument(std::string("argument '") + name + "': expected a slot in 0.." + std::to_string(cache.max_slots - 1) +
                  ", got " + std::to_string(slot));
  }
  if (!cache.slots[slot].alive) {
    fail_argument(std::string("argument '") + name + "': slot " + std::to_string(slot) + " is not alive (never added, or already freed)");
  }
  return slot;
}

void check_tokens(const Cache& cache, int64_t tokens, const char* name) {
  if (tokens < 0 || tokens > cache.max_tokens) {
    fail_argument(std::string("argument '") + name + "': expected 0.." + std::to_string(cache.max_tokens) +
                  " (options.max_tokens), got " + std::to_string(tokens));
  }
}

int32_t blocks_for(const Cache& cache, int64_t tokens) {
  return static_cast<int32_t>((static_cast<uint64_t>(tokens) * cache.token_bytes + cache.block_payload - 1) / cache.block_payload);
}

// Whole tokens the first `blocks` blocks hold.
int64_t tokens_in(const Cache& cache, int32_t blocks) {
  return std::min<int64_t>(cache.max_tokens, static_cast<int64_t>(static_cast<uint64_t>(blocks) * cache.block_payload / cache.token_bytes));
}

// Where one layer's K (kv 0) or V (kv 1) of slot 0's token 0 lies.
char* layer_base(const Cache& cache, int32_t layer, int32_t kv) {
  if (cache.layout == NKV_VIRTUAL_KV_LAYER_MAJOR) return cache.base + static_cast<uint64_t>(2 * layer + kv) * cache.max_slots * cache.slot_extent;
  return cache.base + static_cast<uint64_t>(2 * layer + kv) * cache.tokens_per_page * cache.num_heads_kv * cache.head_dim * 2;
}

char* address_of(const Cache& cache, int32_t slot, int32_t region, int32_t block) {
  return cache.base + (static_cast<uint64_t>(region) * cache.max_slots + slot) * cache.slot_extent +
         static_cast<uint64_t>(block) * cache.page_bytes;
}

int32_t& page_at(Cache::Slot& slot, const Cache& cache, int32_t block, int32_t region) {
  return slot.pages[static_cast<size_t>(block) * cache.regions + region];
}

int64_t held_pages(const Cache& cache) {
  return static_cast<int64_t>(cache.page_handles.size() - cache.unused_ids.size()) + cache.pages_in_creation;
}

void wait_until_idle(Cache& cache, Lock& lock, int32_t slot) {
  cache.changed.wait(lock, [&] { return !cache.slots[slot].mapping; });
}

// Whether the background thread is mapping a block of slot s that the first `blocks` blocks include: only
// then must a caller that needs them wait (a block mapped further ahead does not concern it).
bool mapping_within(const Cache& cache, int32_t s, int32_t blocks) {
  return cache.slots[s].mapping && cache.slots[s].mapped_blocks < blocks;
}

// Registers a page created outside the bookkeeping; returns its id.
int32_t add_page(Cache& cache, uint64_t handle) {
  ++cache.pages_created;
  if (!cache.unused_ids.empty()) {
    const int32_t id = cache.unused_ids.back();
    cache.unused_ids.pop_back();
    cache.page_handles[id] = handle;
    return id;
  }
  cache.page_handles.push_back(handle);
  cache.page_references.push_back(0);
  return static_cast<int32_t>(cache.page_handles.size() - 1);
}

// Unmaps one block of a slot; its pages no other block maps go to the pool. The caller made sure no
// queued kernel reads it (the context's stream is synchronized, or the block was just mapped).
void unmap_block(Cache& cache, int32_t s, int32_t block) {
  Cache::Slot& slot = cache.slots[s];
  for (int32_t r = 0; r < cache.regions; ++r) {
    int32_t& id = page_at(slot, cache, block, r);
    if (id < 0) continue;
    cache.memory->unmap(address_of(cache, s, r, block));
    if (--cache.page_references[id] == 0) cache.pooled.push_back(id);
    id = -1;
  }
}

void unmap_blocks_from(Cache& cache, int32_t s, int32_t first_block) {
  Cache::Slot& slot = cache.slots[s];
  for (int32_t b = slot.mapped_blocks - 1; b >= first_block; --b) unmap_block(cache, s, b);
  slot.mapped_blocks = std::min(slot.mapped_blocks, first_block);
}

// The blocks each slot needs now: its length's for a live slot, none for a freed one. Callers raise the
// entries of slots about to grow.
std::vector<int32_t> blocks_in_use(const Cache& cache) {
  std::vector<int32_t> keep(static_cast<size_t>(cache.max_slots), 0);
  for (int32_t s = 0; s < cache.max_slots; ++s) {
    if (cache.slots[s].alive) keep[s] = blocks_for(cache, cache.slots[s].length);
  }
  return keep;
}

// Reclamation under memory pressure: the blocks freed slots kept mapped (deferred reclamation) and the
// blocks live slots have mapped past `keep` (ahead of their tokens) go back to the pool. Skips a slot the
// background thread is mapping; never releases the lock.
bool reclaim(Cache& cache, const std::vector<int32_t>& keep) {
  bool any = false;
  for (int32_t s = 0; s < cache.max_slots; ++s) any |= !cache.slots[s].mapping && cache.slots[s].mapped_blocks > keep[s];
  if (!any) return false;
  synchronize_on(*cache.context);  // a kernel queued earlier may still read them
  for (int32_t s = 0; s < cache.max_slots; ++s) {
    if (!cache.slots[s].mapping && cache.slots[s].mapped_blocks > keep[s]) unmap_blocks_from(cache, s, keep[s]);
  }
  return true;
}

// `count` pages to map: pooled ones first, then new ones within the budget, then the pages reclaim(keep)
// returns. NKV_STATUS_OUT_OF_MEMORY leaves any page it got in the pool. Holds the lock throughout.
std::vector<int32_t> acquire_pages(Cache& cache, int64_t count, const std::vector<int32_t>& keep) {
  std::vector<int32_t> got;
  auto give_back = [&] {
    for (int32_t id : got) cache.pooled.push_back(id);
    got.clear();
  };
  bool reclaimed = false;
  while (static_cast<int64_t>(got.size()) < count) {
    if (!cache.pooled.empty()) {
      got.push_back(cache.pooled.back());
      cache.pooled.pop_back();
      continue;
    }
    if (held_pages(cache) < cache.budget_pages) {
      try {
        got.push_back(add_page(cache, cache.memory->create_page()));
        continue;
      } catch (const Error& e) {
        if (e.status() != NKV_STATUS_OUT_OF_MEMORY || reclaimed) {
          give_back();
          throw;
        }
      }
    }
    if (!reclaimed) {
      reclaimed = true;
      if (reclaim(cache, keep)) continue;
    }
    const int64_t missing = count - static_cast<int64_t>(got.size());
    give_back();
    fail(NKV_STATUS_OUT_OF_MEMORY, "the virtual KV cache needs " + std::to_string(missing) + " more pages of " +
                                       std::to_string(cache.page_bytes) + " bytes; it holds " + std::to_string(held_pages(cache)) +
                                       " of its budget of " + std::to_string(cache.budget_pages) + "; nothing was changed");
  }
  return got;
}

// Maps `pages` (one per region, references already counted by the caller) as block `block` of slot s.
// On failure nothing stays mapped.
void map_block(Cache& cache, int32_t s, int32_t block, const int32_t* pages, const std::vector<uint64_t>& handles) {
  int32_t r = 0;
  try {
    for (; r < cache.regions; ++r) cache.memory->map(address_of(cache, s, r, block), &handles[pages[r]], 1);
  } catch (...) {
    while (r-- > 0) cache.memory->unmap(address_of(cache, s, r, block));
    throw;
  }
}

// Maps `pages` ([block][region], acquired and not yet referenced) as blocks mapped_blocks .. blocks - 1 of
// slot s, on the calling thread. All or nothing: on failure the blocks it mapped are unmapped again, all
// of its pages are back in the pool, and it throws.
void map_new_blocks(Cache& cache, int32_t s, int32_t blocks, const int32_t* pages) {
  Cache::Slot& slot = cache.slots[s];
  const int32_t first = slot.mapped_blocks;
  if (blocks <= first) return;
  int32_t b = first;
  try {
    for (; b < blocks; ++b) {
      const int32_t* block_pages = pages + static_cast<size_t>(b - first) * cache.regions;
      map_block(cache, s, b, block_pages, cache.page_handles);
      for (int32_t r = 0; r < cache.regions; ++r) {
        page_at(slot, cache, b, r) = block_pages[r];
        cache.page_references[block_pages[r]] = 1;
      }
      slot.mapped_blocks = b + 1;
    }
  } catch (...) {
    unmap_blocks_from(cache, s, first);  // freshly mapped: no kernel reads them yet; their pages are pooled
    const int32_t* end = pages + static_cast<size_t>(blocks - first) * cache.regions;
    cache.pooled.insert(cache.pooled.end(), pages + static_cast<size_t>(b - first) * cache.regions, end);
    throw;
  }
  cache.blocks_mapped_inline += blocks - first;
}

// Grows slot s to `blocks` mapped blocks on the calling thread. All or nothing.
void grow_inline(Cache& cache, int32_t s, int32_t blocks) {
  const int32_t first = cache.slots[s].mapped_blocks;
  if (blocks <= first) return;
  std::vector<int32_t> keep = blocks_in_use(cache);
  keep[s] = std::max(keep[s], blocks);
  const std::vector<int32_t> pages = acquire_pages(cache, static_cast<int64_t>(blocks - first) * cache.regions, keep);
  map_new_blocks(cache, s, blocks, pages.data());
}

void publish_lengths(Cache& cache) {
  std::vector<int32_t> lengths(static_cast<size_t>(cache.max_slots));
  for (int32_t s = 0; s < cache.max_slots; ++s) lengths[s] = cache.slots[s].alive ? cache.slots[s].length : 0;
  upload_to(*cache.context, cache.device_lengths, lengths.data(), lengths.size() * sizeof(int32_t));
}

// Forgets the last step when it holds tokens of slot s at or past `length` (truncated away, or freed).
void forget_step_past(Cache& cache, int32_t s, int32_t length) {
  for (int32_t row : cache.step_rows) {
    if (row / cache.rows_per_slot == s && row % cache.rows_per_slot >= length) {
      cache.step_rows.clear();
      return;
    }
  }
}

// Blocks the background thread maps for a slot in one go (one mapping call per region).
constexpr int32_t kBlocksPerMapping = 16;

// The background thread: maps blocks for the (slot, tokens) requests, up to kBlocksPerMapping at a time, the driver
// calls outside the lock. It never unmaps (that needs the stream), so it gives up on a request that
// needs pages beyond the budget; the append then maps them itself.
void map_ahead(Cache& cache) {
  Lock lock(cache.mutex);
  while (true) {
    cache.changed.wait(lock, [&] { return cache.stopping || !cache.requests.empty(); });
    if (cache.stopping) return;
    // The request whose slot has the fewest mapped tokens left past its length: the one an append needs first.
    auto headroom = [&](const std::pair<int32_t, int32_t>& r) {
      const Cache::Slot& x = cache.slots[r.first];
      return tokens_in(cache, x.mapped_blocks) - x.length;
    };
    std::iter_swap(cache.requests.begin(), std::min_element(cache.requests.begin(), cache.requests.end(),
                                                            [&](const auto& a, const auto& b) { return headroom(a) < headroom(b); }));
    const auto [s, tokens] = cache.requests.front();
    Cache::Slot& slot = cache.slots[s];
    const int32_t first = slot.mapped_blocks;
    const int32_t wanted = slot.alive ? std::min(blocks_for(cache, tokens), first + kBlocksPerMapping) : first;
    // Pages for blocks first .. first + n - 1, [block][region]: pooled ones, then new ones within the budget.
    const int64_t available = static_cast<int64_t>(cache.pooled.size()) + std::max<int64_t>(0, cache.budget_pages - held_pages(cache));
    const int32_t n = static_cast<int32_t>(std::min<int64_t>(wanted - first, available / cache.regions));
    if (n <= 0) {  // nothing to do, or the budget is reached: left to the append
      cache.requests.pop_front();
      continue;
    }
    const size_t count = static_cast<size_t>(n) * cache.regions;
    std::vector<int32_t> pooled;
    while (pooled.size() < count && !cache.pooled.empty()) {
      pooled.push_back(cache.pooled.back());
      cache.pooled.pop_back();
    }
    const int64_t create = static_cast<int64_t>(count - pooled.size());
    cache.pages_in_creation += create;
    slot.mapping = true;
    std::vector<uint64_t> handles(count);  // the driver calls must not read the shared vectors unlocked
    for (size_t i = 0; i < pooled.size(); ++i) handles[i] = cache.page_handles[pooled[i]];
    lock.unlock();
    // Each region's n pages are consecutive in its range: one mapping call (one cuMemSetAccess) each. After
    // each call the thread rests as long as the call took: the driver's page-table changes slow the calling
    // thread's launches and the running kernels, and 64 pages mapped back to back (2.4 ms) slowed the
    // decode steps they overlapped by up to 14% (bench/NOTES.md p4).
    std::vector<uint8_t> held(count, 0);  // handles[i] is a page (pooled, or created here)
    std::fill(held.begin(), held.begin() + static_cast<std::ptrdiff_t>(pooled.size()), 1);
    int32_t r = 0;
    bool mapped = false;
    try {
      for (; r < cache.regions; ++r) {
        const auto start = std::chrono::steady_clock::now();
        std::vector<uint64_t> range(static_cast<size_t>(n));
        for (int32_t b = 0; b < n; ++b) {
          const size_t i = static_cast<size_t>(b) * cache.regions + r;
          // Pooled pages fill the first slots of `handles` in [block][region] order; new ones the rest.
          if (!held[i]) {
            handles[i] = cache.memory->create_page();
            held[i] = 1;
          }
          range[b] = handles[i];
        }
        cache.memory->map(address_of(cache, s, r, first), range.data(), range.size());
        std::this_thread::sleep_for(std::chrono::steady_clock::now() - start);
      }
      mapped = true;
    } catch (...) {  // out of device memory, or the driver refused: undo; the append will report it
      while (r-- > 0) {
        for (int32_t b = 0; b < n; ++b) cache.memory->unmap(address_of(cache, s, r, first + b));
      }
    }
    lock.lock();
    cache.pages_in_creation -= create;
    std::vector<int32_t> ids = pooled;
    for (size_t i = pooled.size(); i < count; ++i) ids.push_back(held[i] ? add_page(cache, handles[i]) : -1);
    if (mapped) {
      for (int32_t b = 0; b < n; ++b) {
        for (int32_t rr = 0; rr < cache.regions; ++rr) {
          const int32_t id = ids[static_cast<size_t>(b) * cache.regions + rr];
          page_at(slot, cache, first + b, rr) = id;
          cache.page_references[id] = 1;
        }
      }
      slot.mapped_blocks = first + n;
      cache.blocks_mapped_ahead += n;
    } else {
      for (int32_t id : ids) {
        if (id >= 0) cache.pooled.push_back(id);
      }
      cache.requests.pop_front();
    }
    slot.mapping = false;
    cache.changed.notify_all();
  }
}

void stop_worker(Cache& cache) {
  {
    std::lock_guard<std::mutex> guard(cache.mutex);
    cache.stopping = true;
  }
  cache.changed.notify_all();
  if (cache.worker.joinable()) cache.worker.join();
}

struct CacheDeleter {
  void operator()(Cache* cache) const noexcept {
    stop_worker(*cache);
    const nkv_context& c = *cache->context;
    try {
      synchronize_on(*cache->context);
    } catch (...) {
    }
    if (cache->base != nullptr) {
      for (int32_t s = 0; s < cache->max_slots; ++s) {
        for (int32_t b = 0; b < cache->slots[s].mapped_blocks; ++b) {
          for (int32_t r = 0; r < cache->regions; ++r) {
            try {
              cache->memory->unmap(address_of(*cache, s, r, b));
            } catch (...) {
            }
          }
        }
      }
      std::vector<uint8_t> released(cache->page_handles.size(), 0);
      for (int32_t id : cache->unused_ids) released[id] = 1;
      for (size_t id = 0; id < cache->page_handles.size(); ++id) {
        if (!released[id]) cache->memory->release_page(cache->page_handles[id]);
      }
      cache->memory->free_reservation(cache->base, cache->reserved_bytes);
    }
    release_on(c, cache->device_lengths);
    release_on(c, cache->device_step_rows);
    delete cache;
  }
};
using CachePtr = std::unique_ptr<Cache, CacheDeleter>;

}  // namespace

extern "C" {

NKV_API nkv_status nkv_virtual_kv_cache_create(nkv_context* context, const nkv_virtual_kv_cache_options* options,
                                               nkv_virtual_kv_cache** out_cache) {
  return guard("nkv_virtual_kv_cache_create", [&] {
    const nkv_context& c = check_context(context);
    require_out(out_cache, "out_cache");
    if (options == nullptr) fail_argument("argument 'options' must not be NULL");
    check_struct_size("options", options->struct_size, sizeof(nkv_virtual_kv_cache_options), "nkv_virtual_kv_cache_options");
    const nkv_virtual_kv_cache_options& o = *options;
    if (o.dtype != NKV_DTYPE_FLOAT16 && o.dtype != NKV_DTYPE_BFLOAT16) {
      fail_argument("argument 'options.dtype': expected NKV_DTYPE_FLOAT16 or NKV_DTYPE_BFLOAT16, got " + std::to_string(o.dtype));
    }
    if (o.layout != NKV_VIRTUAL_KV_LAYER_MAJOR && o.layout != NKV_VIRTUAL_KV_TOKEN_MAJOR) {
      fail_argument("argument 'options.layout': expected NKV_VIRTUAL_KV_LAYER_MAJOR (0) or _TOKEN_MAJOR (1), got " +
                    std::to_string(o.layout));
    }
    for (const auto& [name, value] : {std::pair<const char*, int32_t>{"num_layers", o.num_layers}, {"num_heads_kv", o.num_heads_kv},
                                      {"head_dim", o.head_dim}, {"max_slots", o.max_slots}, {"max_tokens", o.max_tokens}}) {
      if (value < 1) fail_argument(std::string("argument 'options.") + name + "': expected >= 1, got " + std::to_string(value));
    }
    if (o.head_dim % 8 != 0) fail_argument("argument 'options.head_dim': expected a multiple of 8, got " + std::to_string(o.head_dim));
    CachePtr cache(new Cache());
    cache->context = context;
    cache->memory = c.backend == NKV_BACKEND_CUDA ? cuda::virtual_memory(c.device_ordinal) : cpu::virtual_memory();
    cache->dtype = static_cast<nkv_dtype>(o.dtype);
    cache->layout = static_cast<nkv_virtual_kv_layout>(o.layout);
    cache->num_layers = o.num_layers;
    cache->num_heads_kv = o.num_heads_kv;
    cache->head_dim = o.head_dim;
    cache->max_slots = o.max_slots;
    cache->max_tokens = o.max_tokens;
    cache->page_bytes = cache->memory->page_bytes();
    const uint64_t row_bytes = checked_product({static_cast<uint64_t>(o.num_heads_kv), static_cast<uint64_t>(o.head_dim), 2}, "a token's bytes");
    const bool layer_major = o.layout == NKV_VIRTUAL_KV_LAYER_MAJOR;
    cache->regions = layer_major ? 2 * o.num_layers : 1;
    cache->token_bytes = layer_major ? row_bytes : checked_product({row_bytes, 2, static_cast<uint64_t>(o.num_layers)}, "a token's bytes");
    if (layer_major) {
      cache->block_payload = cache->page_bytes;
      // Slots start on whole pages and whole tokens, so that a slot's rows continue the previous slot's.
      const uint64_t align = std::lcm(cache->page_bytes, cache->token_bytes);
      const uint64_t slot_bytes = checked_product({static_cast<uint64_t>(o.max_tokens), cache->token_bytes}, "a slot's bytes");
      cache->slot_extent = (slot_bytes + align - 1) / align * align;
      cache->rows_per_slot = static_cast<int64_t>(cache->slot_extent / cache->token_bytes);
    } else {
      // Whole tokens per page, each layer's rows of them together: decode reads one layer's K and V of 16
      // tokens (32 layers of 8 x 128 fp16) as one 64 KiB run instead of 16 runs of 4 KiB 128 KiB apart, which
      // an H200 serves 3% slower (an H100 loses as much to the page count either way; bench/NOTES.md p7).
      if (cache->token_bytes > cache->page_bytes) {
        fail(NKV_STATUS_NOT_SUPPORTED, "token-major layout: one token of every layer takes " + std::to_string(cache->token_bytes) +
                                           " bytes, more than a page (" + std::to_string(cache->page_bytes) + "); use NKV_VIRTUAL_KV_LAYER_MAJOR");
      }
      cache->tokens_per_page = static_cast<int32_t>(cache->page_bytes / cache->token_bytes);
      cache->block_payload = static_cast<uint64_t>(cache->tokens_per_page) * cache->token_bytes;
      const uint64_t blocks = (static_cast<uint64_t>(o.max_tokens) + cache->tokens_per_page - 1) / cache->tokens_per_page;
      cache->slot_extent = checked_product({blocks, cache->page_bytes}, "a slot's bytes");
      cache->rows_per_slot = static_cast<int64_t>(blocks) * cache->tokens_per_page;
    }
    if (cache->rows_per_slot * o.max_slots > std::numeric_limits<int32_t>::max()) {
      fail(NKV_STATUS_NOT_SUPPORTED, "max_slots x " + std::to_string(cache->rows_per_slot) +
                                         " rows per slot exceed the 2^31 rows a step may address");
    }
    cache->max_blocks = blocks_for(*cache, o.max_tokens);
    const uint64_t block_bytes = cache->page_bytes * static_cast<uint64_t>(cache->regions);
    cache->budget_pages = o.byte_budget == 0 ? std::numeric_limits<int64_t>::max()
                                             : static_cast<int64_t>(o.byte_budget / block_bytes) * cache->regions;
    cache->reserved_bytes = checked_product({static_cast<uint64_t>(cache->regions), static_cast<uint64_t>(o.max_slots), cache->slot_extent},
                                            "the reservation");
    cache->slots.resize(static_cast<size_t>(o.max_slots));
    for (auto& slot : cache->slots) slot.pages.assign(static_cast<size_t>(cache->max_blocks) * cache->regions, -1);
    cache->device_lengths = static_cast<int32_t*>(allocate_on(c, static_cast<uint64_t>(o.max_slots) * sizeof(int32_t)));
    cache->base = static_cast<char*>(cache->memory->reserve(cache->reserved_bytes));
    publish_lengths(*cache);
    *out_cache = cache.release();
  });
}

NKV_API nkv_status nkv_virtual_kv_cache_destroy(nkv_virtual_kv_cache* cache) {
  return guard("nkv_virtual_kv_cache_destroy", [&] {
    if (cache == nullptr) return;
    CachePtr owned(cache);
  });
}

NKV_API nkv_status nkv_virtual_kv_cache_add_slot(nkv_virtual_kv_cache* cache, int32_t* out_slot) {
  return guard("nkv_virtual_kv_cache_add_slot", [&] {
    Cache& k = require_handle(cache, "cache");
    require_out(out_slot, "out_slot");
    Lock lock(k.mutex);
    // The freed slot with the most blocks still mapped: its pages serve the new tokens without a driver call.
    int32_t best = -1;
    for (int32_t s = 0; s < k.max_slots; ++s) {
      if (!k.slots[s].alive && (best < 0 || k.slots[s].mapped_blocks > k.slots[best].mapped_blocks)) best = s;
    }
    if (best < 0) fail(NKV_STATUS_OUT_OF_MEMORY, "all " + std::to_string(k.max_slots) + " slots are alive");
    k.slots[best].alive = true;
    k.slots[best].length = 0;
    publish_lengths(k);
    *out_slot = best;
  });
}

NKV_API nkv_status nkv_virtual_kv_cache_fork(nkv_virtual_kv_cache* cache, int32_t parent, int32_t* out_slot) {
  return guard("nkv_virtual_kv_cache_fork", [&] {
    Cache& k = require_handle(cache, "cache");
    require_out(out_slot, "out_slot");
    Lock lock(k.mutex);
    check_alive(k, parent, "parent");  // read only up to its length: a block being mapped past it does not matter
    // The freed slot with the fewest blocks mapped: they are unmapped, the parent's pages take their place.
    int32_t target = -1;
    for (int32_t s = 0; s < k.max_slots; ++s) {
      if (!k.slots[s].alive && (target < 0 || k.slots[s].mapped_blocks < k.slots[target].mapped_blocks)) target = s;
    }
    if (target < 0) fail(NKV_STATUS_OUT_OF_MEMORY, "all " + std::to_string(k.max_slots) + " slots are alive");
    const int32_t length = k.slots[parent].length;
    const uint64_t used_bytes = static_cast<uint64_t>(length) * k.token_bytes;
    const int32_t full = static_cast<int32_t>(used_bytes / k.block_payload);
    const bool partial = used_bytes % k.block_payload != 0;
    Cache::Slot& from = k.slots[parent];
    Cache::Slot& to = k.slots[target];
    if (to.mapped_blocks > 0) {
      synchronize_on(*k.context);
      unmap_blocks_from(k, target, 0);
    }
    std::vector<int32_t> copies = acquire_pages(k, partial ? k.regions : 0, blocks_in_use(k));
    bool copies_mapped = false;
    try {
      for (int32_t b = 0; b < full; ++b) {
        map_block(k, target, b, &page_at(from, k, b, 0), k.page_handles);
        for (int32_t r = 0; r < k.regions; ++r) ++k.page_references[page_at(to, k, b, r) = page_at(from, k, b, r)];
        to.mapped_blocks = b + 1;
      }
      if (partial) {
        map_block(k, target, full, copies.data(), k.page_handles);
        copies_mapped = true;
        for (int32_t r = 0; r < k.regions; ++r) {
          page_at(to, k, full, r) = copies[r];
          k.page_references[copies[r]] = 1;
        }
        to.mapped_blocks = full + 1;  // before the copies: a failed copy unmaps this block with the others
        ++k.blocks_mapped_inline;
        for (int32_t r = 0; r < k.regions; ++r) {
          copy_within(*k.context, address_of(k, target, r, full), address_of(k, parent, r, full), k.page_bytes);
        }
      }
    } catch (...) {
      unmap_blocks_from(k, target, 0);  // just mapped: no kernel reads them
      if (!copies_mapped) k.pooled.insert(k.pooled.end(), copies.begin(), copies.end());
      throw;
    }
    to.alive = true;
    to.length = length;
    publish_lengths(k);
    *out_slot = target;
  });
}

NKV_API nkv_status nkv_virtual_kv_cache_truncate(nkv_virtual_kv_cache* cache, int32_t slot, int32_t length) {
  return guard("nkv_virtual_kv_cache_truncate", [&] {
    Cache& k = require_handle(cache, "cache");
    Lock lock(k.mutex);
    check_alive(k, slot, "slot");
    if (length < 0 || length > k.slots[slot].length) {
      fail_argument("argument 'length': expected 0.." + std::to_string(k.slots[slot].length) + " (the slot's length), got " +
                    std::to_string(length));
    }
    k.slots[slot].length = length;
    forget_step_past(k, slot, length);
    publish_lengths(k);
  });
}

NKV_API nkv_status nkv_virtual_kv_cache_free_slot(nkv_virtual_kv_cache* cache, int32_t slot) {
  return guard("nkv_virtual_kv_cache_free_slot", [&] {
    Cache& k = require_handle(cache, "cache");
    Lock lock(k.mutex);
    check_alive(k, slot, "slot");
    wait_until_idle(k, lock, slot);
    forget_step_past(k, slot, 0);
    k.slots[slot].alive = false;
    k.slots[slot].length = 0;
    publish_lengths(k);
  });
}

NKV_API nkv_status nkv_virtual_kv_cache_ensure_capacity(nkv_virtual_kv_cache* cache, int32_t slot, int32_t tokens) {
  return guard("nkv_virtual_kv_cache_ensure_capacity", [&] {
    Cache& k = require_handle(cache, "cache");
    Lock lock(k.mutex);
    check_alive(k, slot, "slot");
    check_tokens(k, tokens, "tokens");
    const int32_t blocks = blocks_for(k, tokens);
    k.changed.wait(lock, [&] { return !mapping_within(k, slot, blocks); });
    grow_inline(k, slot, blocks);
  });
}

NKV_API nkv_status nkv_virtual_kv_cache_reserve_ahead(nkv_virtual_kv_cache* cache, int32_t slot, int32_t tokens) {
  return guard("nkv_virtual_kv_cache_reserve_ahead", [&] {
    Cache& k = require_handle(cache, "cache");
    {
      Lock lock(k.mutex);
      check_alive(k, slot, "slot");
      check_tokens(k, tokens, "tokens");
      if (blocks_for(k, tokens) <= k.slots[slot].mapped_blocks) return;
      k.requests.emplace_back(slot, tokens);
      if (!k.worker.joinable()) k.worker = std::thread(map_ahead, std::ref(k));
    }
    k.changed.notify_all();
  });
}

NKV_API nkv_status nkv_virtual_kv_cache_trim(nkv_virtual_kv_cache* cache) {
  return guard("nkv_virtual_kv_cache_trim", [&] {
    Cache& k = require_handle(cache, "cache");
    Lock lock(k.mutex);
    k.changed.wait(lock, [&] { return std::none_of(k.slots.begin(), k.slots.end(), [](const Cache::Slot& x) { return x.mapping; }); });
    synchronize_on(*k.context);
    for (int32_t s = 0; s < k.max_slots; ++s) {
      unmap_blocks_from(k, s, k.slots[s].alive ? blocks_for(k, k.slots[s].length) : 0);
    }
    for (int32_t id : k.pooled) {
      k.memory->release_page(k.page_handles[id]);
      k.unused_ids.push_back(id);
    }
    k.pooled.clear();
  });
}

NKV_API nkv_status nkv_virtual_kv_cache_append(nkv_virtual_kv_cache* cache, const int32_t* slots, const int32_t* token_counts,
                                               int32_t count) {
  return guard("nkv_virtual_kv_cache_append", [&] {
    Cache& k = require_handle(cache, "cache");
    if (count < 0) fail_argument("argument 'count': expected >= 0, got " + std::to_string(count));
    if (count > 0 && slots == nullptr) fail_argument("argument 'slots' must not be NULL");
    if (count > 0 && token_counts == nullptr) fail_argument("argument 'token_counts' must not be NULL");
    Lock lock(k.mutex);
    // Validate and count the pages first: a failure changes no slot.
    std::vector<uint8_t> seen(static_cast<size_t>(k.max_slots), 0);
    int64_t new_pages = 0;
    std::vector<std::pair<int32_t, int32_t>> shared;  // (slot, block) written into while a page of it is shared
    int64_t step_tokens = 0;
    for (int32_t i = 0; i < count; ++i) {
      const std::string name = "slots[" + std::to_string(i) + "]";
      const int32_t s = check_alive(k, slots[i], name.c_str());
      const int32_t n = token_counts[i];
      const int64_t length = k.slots[s].length;
      check_step_entry(seen, i, s, n, length, k.max_tokens, "slots", "slot", "max_tokens");
      if (n == 0) continue;
      step_tokens += n;
    }
    // No slot of the step has a block it needs still being mapped by the background thread (the wait
    // returns holding the lock, and nothing below releases it); then the pages the step needs are counted.
    k.changed.wait(lock, [&] {
      for (int32_t i = 0; i < count; ++i) {
        if (mapping_within(k, slots[i], blocks_for(k, k.slots[slots[i]].length + token_counts[i]))) return false;
      }
      return true;
    });
    for (int32_t i = 0; i < count; ++i) {
      const int32_t s = slots[i];
      const int32_t n = token_counts[i];
      if (n == 0) continue;
      const int64_t length = k.slots[s].length;
      const Cache::Slot& slot = k.slots[s];
      const int32_t needed = blocks_for(k, length + n);
      new_pages += static_cast<int64_t>(std::max(0, needed - slot.mapped_blocks)) * k.regions;
      const int32_t first = static_cast<int32_t>(static_cast<uint64_t>(length) * k.token_bytes / k.block_payload);
      for (int32_t b = first; b < std::min(needed, slot.mapped_blocks); ++b) {
        for (int32_t r = 0; r < k.regions; ++r) {
          if (k.page_references[slot.pages[static_cast<size_t>(b) * k.regions + r]] > 1) {
            shared.emplace_back(s, b);
            new_pages += k.regions;
            break;
          }
        }
      }
    }
    const nkv_context& c = *k.context;
    reserve_step_array(c, k.device_step_rows, k.step_capacity, step_tokens);  // before any change: it may fail
    std::vector<int32_t> keep = blocks_in_use(k);
    for (int32_t i = 0; i < count; ++i) keep[slots[i]] = std::max(keep[slots[i]], blocks_for(k, k.slots[slots[i]].length + token_counts[i]));
    const std::vector<int32_t> pages = acquire_pages(k, new_pages, keep);
    size_t next = 0;
    // Copy on write first: for each shared page the step writes into, the stream is synchronized (queued
    // kernels may read the slot's mapping), the page unmapped from the slot, a fresh page mapped in its
    // place and filled from another slot that still maps the original.
    if (!shared.empty()) synchronize_on(*k.context);
    for (const auto& [s, b] : shared) {
      Cache::Slot& slot = k.slots[s];
      for (int32_t r = 0; r < k.regions; ++r) {
        int32_t& id = page_at(slot, k, b, r);
        const int32_t original = id;
        const int32_t copy = pages[next++];
        if (k.page_references[original] == 1) {  // its other mapping was reclaimed above: no copy needed
          k.pooled.push_back(copy);
          continue;
        }
        // Another block mapping the original page: the source of the copy.
        char* source = nullptr;
        for (int32_t other = 0; other < k.max_slots && source == nullptr; ++other) {
          if (other == s) continue;
          for (int32_t ob = 0; ob < k.slots[other].mapped_blocks; ++ob) {
            if (page_at(k.slots[other], k, ob, r) == original) {
              source = address_of(k, other, r, ob);
              break;
            }
          }
        }
        k.memory->unmap(address_of(k, s, r, b));
        try {
          k.memory->map(address_of(k, s, r, b), &k.page_handles[copy], 1);
        } catch (...) {
          // The shared page goes back where it was, the unused pages to the pool; the blocks copied before
          // this one hold the same contents as their originals.
          k.memory->map(address_of(k, s, r, b), &k.page_handles[original], 1);
          k.pooled.insert(k.pooled.end(), pages.begin() + static_cast<std::ptrdiff_t>(next - 1), pages.end());
          throw;
        }
        --k.page_references[original];
        id = copy;
        k.page_references[copy] = 1;
        if (source != nullptr) copy_within(*k.context, address_of(k, s, r, b), source, k.page_bytes);
      }
    }
    // The new blocks of every slot, all or nothing: a failed mapping unmaps what this step mapped before it.
    std::vector<int32_t> mapped_before(static_cast<size_t>(count));
    for (int32_t i = 0; i < count; ++i) {
      const int32_t s = slots[i];
      Cache::Slot& slot = k.slots[s];
      mapped_before[i] = slot.mapped_blocks;
      const int32_t needed = blocks_for(k, slot.length + token_counts[i]);
      const size_t slice = static_cast<size_t>(std::max(0, needed - slot.mapped_blocks)) * k.regions;
      try {
        map_new_blocks(k, s, needed, pages.data() + next);
      } catch (...) {
        for (int32_t j = 0; j < i; ++j) unmap_blocks_from(k, slots[j], mapped_before[j]);
        k.pooled.insert(k.pooled.end(), pages.begin() + static_cast<std::ptrdiff_t>(next + slice), pages.end());
        throw;
      }
      next += slice;
    }
    k.pooled.insert(k.pooled.end(), pages.begin() + static_cast<std::ptrdiff_t>(next), pages.end());
    k.step_rows.clear();
    for (int32_t i = 0; i < count; ++i) {
      Cache::Slot& slot = k.slots[slots[i]];
      for (int32_t t = slot.length; t < slot.length + token_counts[i]; ++t) {
        k.step_rows.push_back(static_cast<int32_t>(slots[i] * k.rows_per_slot + t));
      }
      slot.length += token_counts[i];
    }
    publish_lengths(k);
    if (c.backend == NKV_BACKEND_CUDA && !k.step_rows.empty()) {
      upload_to(c, k.device_step_rows, k.step_rows.data(), k.step_rows.size() * sizeof(int32_t));
    }
  });
}

NKV_API nkv_status nkv_virtual_kv_cache_write(nkv_virtual_kv_cache* cache, int32_t layer, const nkv_tensor* k,
                                              const nkv_tensor* v) {
  return guard("nkv_virtual_kv_cache_write", [&] {
    Cache& x = require_handle(cache, "cache");
    if (layer < 0 || layer >= x.num_layers) {
      fail_argument("argument 'layer': expected 0.." + std::to_string(x.num_layers - 1) + ", got " + std::to_string(layer));
    }
    Lock lock(x.mutex);
    const nkv_context& c = *x.context;
    const bool layer_major = x.layout == NKV_VIRTUAL_KV_LAYER_MAJOR;
    write_step(c, x.dtype, static_cast<int64_t>(x.step_rows.size()), x.num_heads_kv, x.head_dim, k, v, layer_base(x, layer, 0),
               layer_base(x, layer, 1), c.backend == NKV_BACKEND_CUDA ? x.device_step_rows : x.step_rows.data(),
               layer_major ? static_cast<int64_t>(x.token_bytes / 2) : static_cast<int64_t>(x.num_heads_kv) * x.head_dim,
               x.tokens_per_page, static_cast<int64_t>(x.page_bytes / 2));
  });
}

NKV_API nkv_status nkv_virtual_kv_cache_view(const nkv_virtual_kv_cache* cache, int32_t which, int32_t layer,
                                             nkv_tensor* out_view) {
  return guard("nkv_virtual_kv_cache_view", [&] {
    require_out(out_view, "out_view");
    const Cache& k = require_handle(cache, "cache");
    nkv_tensor t{};
    t.device = device_type_of(*k.context);
    switch (which) {
      case NKV_VIRTUAL_KV_K:
      case NKV_VIRTUAL_KV_V: {
        if (layer < 0 || layer >= k.num_layers) {
          fail_argument("argument 'layer': expected 0.." + std::to_string(k.num_layers - 1) + ", got " + std::to_string(layer));
        }
        t.data = layer_base(k, layer, which == NKV_VIRTUAL_KV_K ? 0 : 1);
        t.dtype = k.dtype;
        const int64_t slot_stride = static_cast<int64_t>(k.slot_extent / 2);
        if (k.layout == NKV_VIRTUAL_KV_LAYER_MAJOR) {
          t.ndim = 4;
          const int64_t shape[4] = {k.max_slots, k.max_tokens, k.num_heads_kv, k.head_dim};
          const int64_t strides[4] = {slot_stride, static_cast<int64_t>(k.token_bytes / 2), k.head_dim, 1};
          std::copy(shape, shape + 4, t.shape);
          std::copy(strides, strides + 4, t.strides);
        } else {
          t.ndim = 5;
          const int64_t shape[5] = {k.max_slots, k.max_blocks, k.tokens_per_page, k.num_heads_kv, k.head_dim};
          const int64_t strides[5] = {slot_stride, static_cast<int64_t>(k.page_bytes / 2),
                                      static_cast<int64_t>(k.num_heads_kv) * k.head_dim, k.head_dim, 1};
          std::copy(shape, shape + 5, t.shape);
          std::copy(strides, strides + 5, t.strides);
        }
        break;
      }
      case NKV_VIRTUAL_KV_SLOT_LENGTHS:
        t.data = k.device_lengths;
        t.dtype = NKV_DTYPE_INT32;
        t.ndim = 1;
        t.shape[0] = k.max_slots;
        t.strides[0] = 1;
        break;
      case NKV_VIRTUAL_KV_STEP_ROWS:
        t.data = k.context->backend == NKV_BACKEND_CUDA ? static_cast<void*>(k.device_step_rows)
                                                         : const_cast<int32_t*>(k.step_rows.data());
        t.dtype = NKV_DTYPE_INT32;
        t.ndim = 1;
        t.shape[0] = static_cast<int64_t>(k.step_rows.size());
        t.strides[0] = 1;
        break;
      default:
        fail_argument("argument 'which': expected an nkv_virtual_kv_view value (NKV_VIRTUAL_KV_K (0) .. "
                      "NKV_VIRTUAL_KV_STEP_ROWS (3)), got " + std::to_string(which));
    }
    *out_view = t;
  });
}

NKV_API nkv_status nkv_virtual_kv_cache_get_info(const nkv_virtual_kv_cache* cache, nkv_virtual_kv_cache_info* out_info) {
  return guard("nkv_virtual_kv_cache_get_info", [&] {
    require_out(out_info, "out_info");
    Cache& k = const_cast<Cache&>(require_handle(cache, "cache"));  // the lock, not the cache, changes
    Lock lock(k.mutex);
    nkv_virtual_kv_cache_info info{};
    info.layout = k.layout;
    info.max_slots = k.max_slots;
    info.tokens_per_block = static_cast<int32_t>(k.block_payload / k.token_bytes);
    info.max_blocks_per_slot = k.max_blocks;
    info.page_bytes = k.page_bytes;
    info.bytes_per_block = k.page_bytes * static_cast<uint64_t>(k.regions);
    info.rows_per_slot = k.rows_per_slot;
    info.budget_pages = k.budget_pages;
    info.pooled_pages = static_cast<int64_t>(k.pooled.size());
    for (size_t id = 0; id < k.page_references.size(); ++id) {
      info.mapped_pages += k.page_references[id] > 0;
      info.shared_pages += k.page_references[id] > 1;
    }
    for (int32_t s = 0; s < k.max_slots; ++s) {
      const Cache::Slot& slot = k.slots[s];
      if (slot.alive) {
        ++info.slots;
        info.tokens += slot.length;
        info.empty_token_slots += tokens_in(k, slot.mapped_blocks) - slot.length;
      } else {
        info.deferred_blocks += slot.mapped_blocks;
      }
    }
    info.step_tokens = static_cast<int64_t>(k.step_rows.size());
    info.blocks_mapped_ahead = k.blocks_mapped_ahead;
    info.blocks_mapped_inline = k.blocks_mapped_inline;
    info.pages_created = k.pages_created;
    write_sized_struct(out_info, info, "out_info", sizeof(nkv_virtual_kv_cache_info), "sizeof(nkv_virtual_kv_cache_info)");
  });
}

NKV_API nkv_status nkv_virtual_kv_cache_slot(const nkv_virtual_kv_cache* cache, int32_t slot, int32_t* out_length,
                                             int64_t* out_mapped_tokens) {
  return guard("nkv_virtual_kv_cache_slot", [&] {
    Cache& k = const_cast<Cache&>(require_handle(cache, "cache"));
    Lock lock(k.mutex);
    check_alive(k, slot, "slot");
    if (out_length != nullptr) *out_length = k.slots[slot].length;
    if (out_mapped_tokens != nullptr) *out_mapped_tokens = tokens_in(k, k.slots[slot].mapped_blocks);
  });
}

}  // extern "C"
