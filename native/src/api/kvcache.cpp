// Paged KV cache: validation, the host bookkeeping, and the device mirrors it keeps in step.
#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <string>

#include "core/api_guard.h"
#include "core/context_memory.h"
#include "core/kvcache.h"
#include "core/tensor_checks.h"

using namespace nkv;

namespace {

constexpr int32_t kPageSizes[] = {1, 8, 16, 32, 64, 128, 256};

struct CacheDeleter {
  void operator()(nkv_paged_kv_cache* cache) const noexcept {
    const nkv_context& c = *cache->context;
    release_on(c, cache->pools);
    release_on(c, cache->device_block_table);
    release_on(c, cache->device_lengths);
    release_on(c, cache->device_step_slots);
    delete cache;
  }
};
using CachePtr = std::unique_ptr<nkv_paged_kv_cache, CacheDeleter>;

int32_t check_alive(const nkv_paged_kv_cache& cache, int32_t sequence, const char* name) {
  if (sequence < 0 || sequence >= cache.max_sequences) {
    fail_argument(std::string("argument '") + name + "': expected a sequence id in 0.." +
                  std::to_string(cache.max_sequences - 1) + ", got " + std::to_string(sequence));
  }
  if (!cache.alive[sequence]) {
    fail_argument(std::string("argument '") + name + "': sequence " + std::to_string(sequence) +
                  " is not alive (never added, or already freed)");
  }
  return sequence;
}

// The lowest sequence id not alive, the one handed out next; NKV_STATUS_OUT_OF_MEMORY when all are.
int32_t lowest_free_id(const nkv_paged_kv_cache& cache) {
  const auto free = std::find(cache.alive.begin(), cache.alive.end(), 0);
  if (free == cache.alive.end()) {
    fail(NKV_STATUS_OUT_OF_MEMORY, "all " + std::to_string(cache.max_sequences) + " sequence ids (options.max_sequences) are alive");
  }
  return static_cast<int32_t>(free - cache.alive.begin());
}

int64_t pages_for(const nkv_paged_kv_cache& cache, int64_t tokens) { return (tokens + cache.page_size - 1) / cache.page_size; }

int32_t* row_of(nkv_paged_kv_cache& cache, int32_t sequence) {
  return cache.block_table.data() + static_cast<int64_t>(sequence) * cache.pages_per_sequence;
}

// Brings the block-table rows and lengths of sequences first..last to the device mirrors, in one copy
// each (a step's sequences at once).
void publish_sequences(nkv_paged_kv_cache& cache, int32_t first, int32_t last) {
  const nkv_context& c = *cache.context;
  const int64_t row = static_cast<int64_t>(first) * cache.pages_per_sequence;
  const uint64_t rows = static_cast<uint64_t>(last - first + 1);
  upload_to(c, cache.device_block_table + row, cache.block_table.data() + row, rows * cache.pages_per_sequence * sizeof(int32_t));
  upload_to(c, cache.device_lengths + first, &cache.lengths[first], rows * sizeof(int32_t));
}
void publish_sequence(nkv_paged_kv_cache& cache, int32_t sequence) { publish_sequences(cache, sequence, sequence); }

// Gives a sequence's pages past its first `keep` back to the pool.
void release_pages(nkv_paged_kv_cache& cache, int32_t sequence, int64_t keep) {
  int32_t* row = row_of(cache, sequence);
  for (int64_t i = keep; i < cache.pages_per_sequence && row[i] >= 0; ++i) {
    if (--cache.page_references[row[i]] == 0) cache.free_pages.push_back(row[i]);
    row[i] = -1;
  }
}

// After pages were released: a step whose slots lie in a page no sequence holds any more is forgotten, so
// that a late nkv_paged_kv_cache_write cannot scribble over a page handed to another sequence.
void forget_stale_step(nkv_paged_kv_cache& cache) {
  for (int32_t slot : cache.step_slots) {
    if (cache.page_references[slot / cache.page_size] == 0) {
      cache.step_slots.clear();
      return;
    }
  }
}

uint8_t* page_of(const nkv_paged_kv_cache& cache, int32_t layer, int32_t pool, int32_t page) {
  const uint64_t pool_bytes = static_cast<uint64_t>(cache.num_pages) * cache.pool_page_bytes;
  return static_cast<uint8_t*>(cache.pools) + (static_cast<uint64_t>(layer) * 2 + pool) * pool_bytes +
         static_cast<uint64_t>(page) * cache.pool_page_bytes;
}

}  // namespace

namespace nkv {

void check_step_entry(std::vector<uint8_t>& seen, int32_t index, int32_t id, int32_t count, int64_t length, int64_t limit,
                      const char* ids, const char* noun, const char* limit_option) {
  if (seen[static_cast<size_t>(id)]) fail_argument(std::string("argument '") + ids + "': " + noun + " " + std::to_string(id) + " appears twice");
  seen[static_cast<size_t>(id)] = 1;
  const std::string counts = "argument 'token_counts[" + std::to_string(index) + "]': ";
  if (count < 0) fail_argument(counts + "expected >= 0, got " + std::to_string(count));
  if (length + count > limit) {
    fail_argument(counts + noun + " " + std::to_string(id) + " has " + std::to_string(length) + " tokens; " + std::to_string(count) +
                  " more exceed options." + limit_option + " (" + std::to_string(limit) + ")");
  }
}

nkv_tensor contiguous_view(void* data, int32_t dtype, nkv_device_type device, std::initializer_list<int64_t> shape) {
  nkv_tensor t{};
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.ndim = static_cast<int32_t>(shape.size());
  int i = 0;
  for (int64_t extent : shape) t.shape[i++] = extent;
  int64_t stride = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    t.strides[d] = stride;
    stride *= t.shape[d];
  }
  return t;
}

uint64_t checked_product(std::initializer_list<uint64_t> factors, const char* what) {
  uint64_t product = 1;
  for (uint64_t f : factors) {
    if (f != 0 && product > std::numeric_limits<uint64_t>::max() / f) fail(NKV_STATUS_NOT_SUPPORTED, std::string(what) + " overflows 64 bits");
    product *= f;
  }
  return product;
}

void reserve_step_array(const nkv_context& c, int32_t*& array, int64_t& capacity, int64_t count) {
  if (count <= capacity) return;
  const int64_t grown_capacity = std::max<int64_t>(count, 2 * capacity);
  int32_t* grown = static_cast<int32_t*>(allocate_on(c, static_cast<uint64_t>(grown_capacity) * sizeof(int32_t)));
  synchronize_on(c);
  release_on(c, array);
  array = grown;
  capacity = grown_capacity;
}

void write_step(const nkv_context& c, nkv_dtype dtype, int64_t tokens, int32_t num_heads_kv, int32_t head_dim,
                const nkv_tensor* k, const nkv_tensor* v, void* k_pool, void* v_pool, const int32_t* slots,
                int64_t slot_stride, int32_t block_slots, int64_t block_stride) {
  for (const auto& [name, t] : {std::pair<const char*, const nkv_tensor*>{"k", k}, {"v", v}}) {
    const nkv_tensor& x = check_tensor(name, t, c);
    check_dtype(name, x, {dtype});
    check_shape(name, x, {tokens, num_heads_kv, head_dim});
    check_unit_inner_stride(name, x);
    if (c.backend == NKV_BACKEND_CUDA) check_vector_aligned(name, x, 8);  // the kernel moves 16-byte chunks
  }
  if (tokens == 0) return;
  PagedKvWriteArgs a{};
  a.k = k->data;
  a.v = v->data;
  a.k_row_stride = k->strides[0];
  a.k_head_stride = k->strides[1];
  a.v_row_stride = v->strides[0];
  a.v_head_stride = v->strides[1];
  a.k_pool = k_pool;
  a.v_pool = v_pool;
  a.slots = slots;
  a.slot_stride = slot_stride;
  a.block_slots = block_slots;
  a.block_stride = block_stride;
  a.tokens = tokens;
  a.num_heads_kv = num_heads_kv;
  a.head_dim = head_dim;
  if (c.backend == NKV_BACKEND_CUDA) {
    cuda::paged_kv_write(a, c);
  } else {
    cpu::paged_kv_write(a);
  }
}

}  // namespace nkv

extern "C" {

NKV_API nkv_status nkv_paged_kv_cache_create(nkv_context* context, const nkv_paged_kv_cache_options* options,
                                             nkv_paged_kv_cache** out_cache) {
  return guard("nkv_paged_kv_cache_create", [&] {
    require_out(out_cache, "out_cache");
    const nkv_context& c = check_context(context);
    if (options == nullptr) fail_argument("argument 'options' must not be NULL");
    check_struct_size("options", options->struct_size, sizeof(nkv_paged_kv_cache_options), "nkv_paged_kv_cache_options");
    const nkv_paged_kv_cache_options& o = *options;
    if (o.dtype != NKV_DTYPE_FLOAT16 && o.dtype != NKV_DTYPE_BFLOAT16) {
      fail_argument("argument 'options.dtype': expected NKV_DTYPE_FLOAT16 or NKV_DTYPE_BFLOAT16, got " + std::to_string(o.dtype));
    }
    auto positive = [](const char* name, int64_t value) {
      if (value < 1) fail_argument(std::string("argument 'options.") + name + "': expected >= 1, got " + std::to_string(value));
    };
    positive("num_layers", o.num_layers);
    positive("num_heads_kv", o.num_heads_kv);
    positive("head_dim", o.head_dim);
    positive("max_sequences", o.max_sequences);
    positive("max_sequence_length", o.max_sequence_length);
    if (o.head_dim % 8 != 0) {
      fail_argument("argument 'options.head_dim': expected a multiple of 8 (16-byte rows), got " + std::to_string(o.head_dim));
    }
    if (std::find(std::begin(kPageSizes), std::end(kPageSizes), o.page_size) == std::end(kPageSizes)) {
      fail_argument("argument 'options.page_size': expected 1, 8, 16, 32, 64, 128 or 256, got " + std::to_string(o.page_size));
    }
    const uint64_t pool_page_bytes = checked_product(
        {static_cast<uint64_t>(o.page_size), static_cast<uint64_t>(o.num_heads_kv), static_cast<uint64_t>(o.head_dim), 2},
        "a page's bytes");
    const uint64_t bytes_per_page = checked_product({pool_page_bytes, 2, static_cast<uint64_t>(o.num_layers)}, "a page's bytes");
    int64_t num_pages = o.num_pages;
    if (num_pages < 0) fail_argument("argument 'options.num_pages': expected >= 0, got " + std::to_string(num_pages));
    if (num_pages == 0) num_pages = static_cast<int64_t>(o.byte_budget / bytes_per_page);
    if (num_pages < 1) {
      fail_argument("argument 'options': num_pages is 0 and byte_budget (" + std::to_string(o.byte_budget) +
                    " bytes) holds no page of " + std::to_string(bytes_per_page) + " bytes (all layers, K and V)");
    }
    if (num_pages * o.page_size > INT32_MAX) {  // a step's slots (page x page_size + token) are int32
      fail(NKV_STATUS_NOT_SUPPORTED, "argument 'options': " + std::to_string(num_pages) + " pages of " +
                                         std::to_string(o.page_size) + " tokens; at most " + std::to_string(INT32_MAX) +
                                         " token slots are supported (slots are int32)");
    }
    const uint64_t pool_bytes = checked_product({bytes_per_page, static_cast<uint64_t>(num_pages)}, "the pools' bytes");
    const int64_t pages_per_sequence = (static_cast<int64_t>(o.max_sequence_length) + o.page_size - 1) / o.page_size;
    CachePtr cache(new nkv_paged_kv_cache());
    cache->context = context;
    cache->dtype = static_cast<nkv_dtype>(o.dtype);
    cache->num_layers = o.num_layers;
    cache->num_heads_kv = o.num_heads_kv;
    cache->head_dim = o.head_dim;
    cache->page_size = o.page_size;
    cache->max_sequences = o.max_sequences;
    cache->max_sequence_length = o.max_sequence_length;
    cache->pages_per_sequence = static_cast<int32_t>(pages_per_sequence);
    cache->num_pages = num_pages;
    cache->pool_page_bytes = pool_page_bytes;
    const size_t table_entries = static_cast<size_t>(o.max_sequences) * static_cast<size_t>(pages_per_sequence);
    cache->block_table.assign(table_entries, -1);
    cache->lengths.assign(static_cast<size_t>(o.max_sequences), 0);
    cache->alive.assign(static_cast<size_t>(o.max_sequences), 0);
    cache->page_references.assign(static_cast<size_t>(num_pages), 0);
    cache->free_pages.reserve(static_cast<size_t>(num_pages));
    for (int64_t page = num_pages - 1; page >= 0; --page) cache->free_pages.push_back(static_cast<int32_t>(page));
    cache->pools = allocate_on(c, pool_bytes);
    cache->device_block_table = static_cast<int32_t*>(allocate_on(c, table_entries * sizeof(int32_t)));
    cache->device_lengths = static_cast<int32_t*>(allocate_on(c, cache->lengths.size() * sizeof(int32_t)));
    upload_to(c, cache->device_block_table, cache->block_table.data(), table_entries * sizeof(int32_t));
    upload_to(c, cache->device_lengths, cache->lengths.data(), cache->lengths.size() * sizeof(int32_t));
    *out_cache = cache.release();
  });
}

NKV_API nkv_status nkv_paged_kv_cache_destroy(nkv_paged_kv_cache* cache) {
  return guard("nkv_paged_kv_cache_destroy", [&] {
    if (cache == nullptr) return;
    const nkv_context& c = *cache->context;
    synchronize_on(c);
    CacheDeleter()(cache);
  });
}

NKV_API nkv_status nkv_paged_kv_cache_add_sequence(nkv_paged_kv_cache* cache, int32_t* out_sequence) {
  return guard("nkv_paged_kv_cache_add_sequence", [&] {
    require_out(out_sequence, "out_sequence");
    nkv_paged_kv_cache& k = require_handle(cache, "cache");
    const int32_t sequence = lowest_free_id(k);
    k.alive[sequence] = 1;
    k.lengths[sequence] = 0;
    publish_sequence(k, sequence);
    *out_sequence = sequence;
  });
}

NKV_API nkv_status nkv_paged_kv_cache_fork(nkv_paged_kv_cache* cache, int32_t parent, int32_t* out_sequence) {
  return guard("nkv_paged_kv_cache_fork", [&] {
    require_out(out_sequence, "out_sequence");
    nkv_paged_kv_cache& k = require_handle(cache, "cache");
    check_alive(k, parent, "parent");
    const int32_t child = lowest_free_id(k);
    k.alive[child] = 1;
    k.lengths[child] = k.lengths[parent];
    const int32_t* from = row_of(k, parent);
    int32_t* to = row_of(k, child);
    for (int32_t i = 0; i < k.pages_per_sequence && from[i] >= 0; ++i) {
      to[i] = from[i];
      ++k.page_references[from[i]];
    }
    publish_sequence(k, child);
    *out_sequence = child;
  });
}

NKV_API nkv_status nkv_paged_kv_cache_truncate(nkv_paged_kv_cache* cache, int32_t sequence, int32_t length) {
  return guard("nkv_paged_kv_cache_truncate", [&] {
    nkv_paged_kv_cache& k = require_handle(cache, "cache");
    check_alive(k, sequence, "sequence");
    if (length < 0 || length > k.lengths[sequence]) {
      fail_argument("argument 'length': expected 0.." + std::to_string(k.lengths[sequence]) + " (sequence " +
                    std::to_string(sequence) + "'s length), got " + std::to_string(length));
    }
    release_pages(k, sequence, pages_for(k, length));
    forget_stale_step(k);
    k.lengths[sequence] = length;
    publish_sequence(k, sequence);
  });
}

NKV_API nkv_status nkv_paged_kv_cache_free_sequence(nkv_paged_kv_cache* cache, int32_t sequence) {
  return guard("nkv_paged_kv_cache_free_sequence", [&] {
    nkv_paged_kv_cache& k = require_handle(cache, "cache");
    check_alive(k, sequence, "sequence");
    release_pages(k, sequence, 0);
    forget_stale_step(k);
    k.lengths[sequence] = 0;
    k.alive[sequence] = 0;
    publish_sequence(k, sequence);
  });
}

NKV_API nkv_status nkv_paged_kv_cache_append(nkv_paged_kv_cache* cache, const int32_t* sequences,
                                             const int32_t* token_counts, int32_t count) {
  return guard("nkv_paged_kv_cache_append", [&] {
    nkv_paged_kv_cache& k = require_handle(cache, "cache");
    if (count < 0) fail_argument("argument 'count': expected >= 0, got " + std::to_string(count));
    if (count > 0 && sequences == nullptr) fail_argument("argument 'sequences' must not be NULL");
    if (count > 0 && token_counts == nullptr) fail_argument("argument 'token_counts' must not be NULL");
    // Validate everything and count the pages first: a failure changes nothing.
    std::vector<uint8_t> seen(static_cast<size_t>(k.max_sequences), 0);
    int64_t pages_needed = 0;
    int64_t step_tokens = 0;
    for (int32_t i = 0; i < count; ++i) {
      const std::string name = "sequences[" + std::to_string(i) + "]";
      const int32_t s = check_alive(k, sequences[i], name.c_str());
      const int32_t n = token_counts[i];
      const int64_t length = k.lengths[s];
      check_step_entry(seen, i, s, n, length, k.max_sequence_length, "sequences", "sequence", "max_sequence_length");
      if (n == 0) continue;
      pages_needed += pages_for(k, length + n) - pages_for(k, length);
      // A partly filled last page held by another sequence too is copied before this one writes into it.
      if (length % k.page_size != 0 && k.page_references[row_of(k, s)[length / k.page_size]] > 1) ++pages_needed;
      step_tokens += n;
    }
    if (pages_needed > static_cast<int64_t>(k.free_pages.size())) {
      fail(NKV_STATUS_OUT_OF_MEMORY, "the step needs " + std::to_string(pages_needed) + " pages, " +
                                         std::to_string(k.free_pages.size()) + " of " + std::to_string(k.num_pages) +
                                         " are free; no sequence was changed");
    }
    const nkv_context& c = *k.context;
    reserve_step_array(c, k.device_step_slots, k.step_capacity, step_tokens);
    k.step_slots.clear();
    int32_t first_changed = k.max_sequences, last_changed = -1;
    for (int32_t i = 0; i < count; ++i) {
      const int32_t s = sequences[i];
      const int32_t n = token_counts[i];
      if (n == 0) continue;
      int32_t* row = row_of(k, s);
      const int64_t length = k.lengths[s];
      if (length % k.page_size != 0) {
        int32_t& last = row[length / k.page_size];
        if (k.page_references[last] > 1) {  // copy on write, every layer's K and V
          const int32_t copy = k.free_pages.back();
          k.free_pages.pop_back();
          for (int32_t layer = 0; layer < k.num_layers; ++layer) {
            for (int32_t pool = 0; pool < 2; ++pool) copy_within(c, page_of(k, layer, pool, copy), page_of(k, layer, pool, last), k.pool_page_bytes);
          }
          --k.page_references[last];
          k.page_references[copy] = 1;
          last = copy;
        }
      }
      for (int64_t t = length; t < length + n; ++t) {
        int32_t& page = row[t / k.page_size];
        if (t % k.page_size == 0) {
          page = k.free_pages.back();
          k.free_pages.pop_back();
          k.page_references[page] = 1;
        }
        k.step_slots.push_back(static_cast<int32_t>(static_cast<int64_t>(page) * k.page_size + t % k.page_size));
      }
      k.lengths[s] = static_cast<int32_t>(length + n);
      first_changed = std::min(first_changed, s);
      last_changed = std::max(last_changed, s);
    }
    if (last_changed >= 0) publish_sequences(k, first_changed, last_changed);
    if (c.backend == NKV_BACKEND_CUDA && !k.step_slots.empty()) {  // the CPU backend reads step_slots itself
      upload_to(c, k.device_step_slots, k.step_slots.data(), k.step_slots.size() * sizeof(int32_t));
    }
  });
}

NKV_API nkv_status nkv_paged_kv_cache_write(nkv_paged_kv_cache* cache, int32_t layer, const nkv_tensor* k,
                                            const nkv_tensor* v) {
  return guard("nkv_paged_kv_cache_write", [&] {
    nkv_paged_kv_cache& cache_ = require_handle(cache, "cache");
    if (layer < 0 || layer >= cache_.num_layers) {
      fail_argument("argument 'layer': expected 0.." + std::to_string(cache_.num_layers - 1) + ", got " + std::to_string(layer));
    }
    const nkv_context& c = *cache_.context;
    write_step(c, cache_.dtype, static_cast<int64_t>(cache_.step_slots.size()), cache_.num_heads_kv, cache_.head_dim, k, v,
               page_of(cache_, layer, 0, 0), page_of(cache_, layer, 1, 0),
               c.backend == NKV_BACKEND_CUDA ? cache_.device_step_slots : cache_.step_slots.data(),
               static_cast<int64_t>(cache_.num_heads_kv) * cache_.head_dim);
  });
}

NKV_API nkv_status nkv_paged_kv_cache_view(const nkv_paged_kv_cache* cache, int32_t which, int32_t layer,
                                           nkv_tensor* out_view) {
  return guard("nkv_paged_kv_cache_view", [&] {
    require_out(out_view, "out_view");
    const nkv_paged_kv_cache& k = require_handle(cache, "cache");
    nkv_tensor t{};
    auto set = [&](void* data, int32_t dtype, std::initializer_list<int64_t> shape) {
      t = contiguous_view(data, dtype, device_type_of(*k.context), shape);
    };
    switch (which) {
      case NKV_PAGED_KV_K_POOL:
      case NKV_PAGED_KV_V_POOL:
        if (layer < 0 || layer >= k.num_layers) {
          fail_argument("argument 'layer': expected 0.." + std::to_string(k.num_layers - 1) + ", got " + std::to_string(layer));
        }
        set(page_of(k, layer, which == NKV_PAGED_KV_K_POOL ? 0 : 1, 0), k.dtype, {k.num_pages, k.page_size, k.num_heads_kv, k.head_dim});
        break;
      case NKV_PAGED_KV_BLOCK_TABLE: set(k.device_block_table, NKV_DTYPE_INT32, {k.max_sequences, k.pages_per_sequence}); break;
      case NKV_PAGED_KV_SEQUENCE_LENGTHS: set(k.device_lengths, NKV_DTYPE_INT32, {k.max_sequences}); break;
      case NKV_PAGED_KV_STEP_SLOTS:
        set(k.device_step_slots, NKV_DTYPE_INT32, {static_cast<int64_t>(k.step_slots.size())});
        if (k.context->backend != NKV_BACKEND_CUDA) t.data = const_cast<int32_t*>(k.step_slots.data());
        break;
      default:
        fail_argument("argument 'which': expected an nkv_paged_kv_view value (NKV_PAGED_KV_K_POOL (0) .. "
                      "NKV_PAGED_KV_STEP_SLOTS (4)), got " + std::to_string(which));
    }
    *out_view = t;
  });
}

NKV_API nkv_status nkv_paged_kv_cache_get_info(const nkv_paged_kv_cache* cache, nkv_paged_kv_cache_info* out_info) {
  return guard("nkv_paged_kv_cache_get_info", [&] {
    require_out(out_info, "out_info");
    const nkv_paged_kv_cache& k = require_handle(cache, "cache");
    nkv_paged_kv_cache_info info{};
    info.page_size = k.page_size;
    info.max_sequences = k.max_sequences;
    info.max_pages_per_sequence = k.pages_per_sequence;
    info.num_pages = k.num_pages;
    info.free_pages = static_cast<int64_t>(k.free_pages.size());
    for (int32_t s = 0; s < k.max_sequences; ++s) {
      info.sequences += k.alive[s];
      info.tokens += k.lengths[s];
    }
    for (int32_t references : k.page_references) info.shared_pages += references > 1;
    // A held page is full unless it is some sequence's partly filled last page; a shared one holds as many
    // tokens as its fullest holder.
    std::vector<std::pair<int32_t, int32_t>> last_pages;  // (page, tokens in it)
    for (int32_t s = 0; s < k.max_sequences; ++s) {
      const int32_t in_last = k.lengths[s] % k.page_size;
      if (k.alive[s] && in_last != 0) {
        last_pages.emplace_back(k.block_table[static_cast<size_t>(s) * k.pages_per_sequence + k.lengths[s] / k.page_size], in_last);
      }
    }
    std::sort(last_pages.begin(), last_pages.end());
    for (size_t i = 0; i < last_pages.size(); ++i) {
      if (i + 1 < last_pages.size() && last_pages[i + 1].first == last_pages[i].first) continue;  // the fullest holder is last
      info.empty_slots += k.page_size - last_pages[i].second;
    }
    info.bytes_per_page = k.pool_page_bytes * 2 * static_cast<uint64_t>(k.num_layers);
    info.step_tokens = static_cast<int64_t>(k.step_slots.size());
    write_sized_struct(out_info, info, "out_info", sizeof(nkv_paged_kv_cache_info), "nkv_paged_kv_cache_info");
  });
}

NKV_API nkv_status nkv_paged_kv_cache_sequence(const nkv_paged_kv_cache* cache, int32_t sequence, int32_t* out_length,
                                               int32_t* pages, int32_t capacity, int32_t* out_page_count) {
  return guard("nkv_paged_kv_cache_sequence", [&] {
    require_out(out_length, "out_length");
    require_out(out_page_count, "out_page_count");
    const nkv_paged_kv_cache& k = require_handle(cache, "cache");
    check_alive(k, sequence, "sequence");
    if (capacity < 0) fail_argument("argument 'capacity': expected >= 0, got " + std::to_string(capacity));
    if (capacity > 0 && pages == nullptr) fail_argument("argument 'pages' must not be NULL when capacity > 0");
    const int32_t page_count = static_cast<int32_t>(pages_for(k, k.lengths[sequence]));
    const int32_t* row = k.block_table.data() + static_cast<int64_t>(sequence) * k.pages_per_sequence;
    std::copy(row, row + std::min(page_count, capacity), pages);
    *out_length = k.lengths[sequence];
    *out_page_count = page_count;
  });
}

}  // extern "C"
