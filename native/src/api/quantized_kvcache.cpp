// Quantized KV cache (KIVI, BFP): validation, the slots' bookkeeping (and, paged, their pages), the last step and its
// device copy.
#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <string>

#include "core/api_guard.h"
#include "core/context_memory.h"
#include "core/kv_quant.h"
#include "core/kvcache.h"
#include "core/quantized_kvcache.h"
#include "core/tensor_checks.h"
#include "core/virtual_memory.h"

using namespace nkv;
using Cache = nkv_quantized_kv_cache;

namespace {

constexpr int32_t kDefaultResidual = 128;

// Where share `share` (a slot's, or a page's in a paged cache's token-indexed arrays) of one array of one layer starts.
char* share_of(const Cache& k, int32_t share, uint64_t layer, int array) {
  return static_cast<char*>(k.memory) + layer * k.layer_bytes + k.offsets[array] + static_cast<uint64_t>(share) * k.slot_bytes[array];
}

// Unmaps and returns the pages of one slot (virtual memory); the caller has waited for the stream.
void release_slot_pages(Cache& k, int32_t slot) noexcept {
  for (size_t region = 0; region < k.pages[slot].size(); ++region) {
    std::vector<uint64_t>& mapped = k.pages[slot][region];
    char* first = share_of(k, slot, region / 6, static_cast<int>(region % 6));
    for (size_t p = 0; p < mapped.size(); ++p) {
      try {
        k.virtual_memory->unmap(first + p * k.page_bytes);
      } catch (...) {  // a failed unmap leaves the page mapped; it is not returned
        continue;
      }
      k.virtual_memory->release_page(mapped[p]);
      --k.mapped_pages;
    }
    mapped.clear();
  }
}

struct CacheDeleter {
  void operator()(Cache* cache) const noexcept {
    const nkv_context& c = *cache->context;
    if (cache->memory_kind == NKV_KV_MEMORY_VIRTUAL) {
      if (cache->memory != nullptr) {
        for (int32_t s = 0; s < static_cast<int32_t>(cache->pages.size()); ++s) release_slot_pages(*cache, s);
        cache->virtual_memory->free_reservation(cache->memory, cache->bytes);
      }
    } else {
      release_on(c, cache->memory);
    }
    release_on(c, cache->device_lengths);
    release_on(c, cache->device_step);
    if (cache->device_block_table != nullptr) release_on(c, cache->device_block_table);
    if (cache->device_key_permutations != nullptr) release_on(c, cache->device_key_permutations);
    delete cache;
  }
};
using CachePtr = std::unique_ptr<Cache, CacheDeleter>;

int32_t check_alive(const Cache& cache, int32_t slot, const char* name) {
  if (slot < 0 || slot >= cache.max_slots) {
    fail_argument(std::string("argument '") + name + "': expected a slot in 0.." + std::to_string(cache.max_slots - 1) +
                  ", got " + std::to_string(slot));
  }
  if (!cache.alive[slot]) {
    fail_argument(std::string("argument '") + name + "': slot " + std::to_string(slot) + " is not alive (never added, or already freed)");
  }
  return slot;
}

void check_layer(const Cache& cache, int32_t layer) {
  if (layer < 0 || layer >= cache.num_layers) {
    fail_argument("argument 'layer': expected 0.." + std::to_string(cache.num_layers - 1) + ", got " + std::to_string(layer));
  }
}

uint64_t round_up(uint64_t bytes, uint64_t alignment) { return (bytes + alignment - 1) / alignment * alignment; }

// The per-slot element counts of the six arrays, in their order: key codes (words), key groups (KIVI: scale and
// minimum pairs; BFP: int8 exponents), key residual (halves), value codes, value groups, value residual.
struct SlotExtents {
  int64_t key_codes, key_groups, key_residual, value_codes, value_groups, value_residual;
};

// `tokens`: what a share of the token-indexed arrays holds (the capacity, or a page's tokens), rounded up to whole
// layout blocks.
SlotExtents slot_extents(const Cache& k, int64_t tokens) {
  tokens = (tokens + (int64_t{1} << k.block_shift) - 1) >> k.block_shift << k.block_shift;
  const int64_t channels = static_cast<int64_t>(k.num_heads_kv) * k.head_dim;
  const int64_t per_word = codes_per_word(k.bits);
  if (k.format == NKV_KV_FORMAT_BFP) {  // per token along the channels, no residual window
    const bool coded_values = k.value_format == NKV_KV_VALUES_LIKE_KEYS;
    const int64_t codes = tokens * (channels / per_word), exponents = tokens * (channels / k.group);
    return {codes, exponents, 0, coded_values ? codes : 0, coded_values ? exponents : 0, coded_values ? 0 : tokens * channels};
  }
  return {tokens / per_word * channels, tokens / k.group * channels, static_cast<int64_t>(k.residual) * channels,
          tokens * (channels / per_word), tokens * (channels / k.group), static_cast<int64_t>(k.residual) * channels};
}

// Whether array i holds tokens by their index (codes, groups, BFP's fp16 values), not a per-slot residual window.
bool token_indexed(const Cache& k, int array) { return array != 2 && (array != 5 || k.format == NKV_KV_FORMAT_BFP); }

void publish_block_table(Cache& k) {
  if (k.device_block_table != nullptr) upload_to(*k.context, k.device_block_table, k.block_table.data(), k.block_table.size() * sizeof(int32_t));
}

// Paged: the pages a slot of `length` tokens holds: those of its coded tokens (KIVI: keys up to the last flush,
// values up to the window; the residual windows are per slot; BFP: every token).
int64_t pages_for(const Cache& k, int64_t length) {
  const int64_t coded = k.format == NKV_KV_FORMAT_BFP
                            ? length
                            : std::max(kivi::quantized_keys(length, k.residual), kivi::quantized_values(length, k.residual));
  return (coded + k.page_size - 1) >> k.page_shift;
}

// Paged: gives every entry's slot the pages its new length needs from the pool, all or nothing.
void take_pages(Cache& k, const std::vector<QuantizedKvStepEntry>& step) {
  int64_t wanted = 0;
  for (const QuantizedKvStepEntry& e : step) {
    const int64_t needed = pages_for(k, static_cast<int64_t>(e.old_length) + e.count);
    wanted += std::max<int64_t>(0, needed - k.slot_page_counts[e.slot]);
  }
  if (wanted > static_cast<int64_t>(k.free_pages.size())) {
    fail(NKV_STATUS_OUT_OF_MEMORY, "the step needs " + std::to_string(wanted) + " more pages of " + std::to_string(k.page_size) +
                                       " tokens; " + std::to_string(k.free_pages.size()) + " of the pool's " + std::to_string(k.max_pages) +
                                       " (options.max_pages) are free");
  }
  if (wanted == 0) return;
  const std::vector<int32_t> counts = k.slot_page_counts;
  for (const QuantizedKvStepEntry& e : step) {
    const int32_t needed = static_cast<int32_t>(pages_for(k, static_cast<int64_t>(e.old_length) + e.count));
    for (int32_t& held = k.slot_page_counts[e.slot]; held < needed; ++held) {
      k.block_table[static_cast<size_t>(e.slot) * k.pages_per_slot + held] = k.free_pages.back();
      k.free_pages.pop_back();
    }
  }
  try {
    publish_block_table(k);
  } catch (...) {  // the pages go back (in the order they came), so the host table matches the device's again
    for (auto e = step.rbegin(); e != step.rend(); ++e) {
      for (int32_t& held = k.slot_page_counts[e->slot]; held > counts[e->slot]; --held) {
        int32_t& entry = k.block_table[static_cast<size_t>(e->slot) * k.pages_per_slot + held - 1];
        k.free_pages.push_back(entry);
        entry = 0;
      }
    }
    throw;
  }
}

// Paged: returns a slot's pages to the pool (its row keeps page 0, which nothing reads).
void return_pages(Cache& k, int32_t slot) {
  int32_t* row = k.block_table.data() + static_cast<size_t>(slot) * k.pages_per_slot;
  for (int32_t i = k.slot_page_counts[slot] - 1; i >= 0; --i) {
    k.free_pages.push_back(row[i]);
    row[i] = 0;
  }
  k.slot_page_counts[slot] = 0;
}

// Bytes of one element of each array.
constexpr uint64_t kElementBytes[2][6] = {{4, 4, 2, 4, 4, 2},   // KIVI
                                          {4, 1, 2, 4, 1, 2}};  // BFP

// Bytes of a slot's share of each array that `tokens` tokens use, kernels' reads included: a decode stage reads the
// 128 tokens of a chunk that starts below the coded ones at a multiple of 64 (so up to T rounded up to 64, plus 63)
// and KIVI's keys flush up to the next multiple of R, so the mapping covers tokens rounded up to 64, plus R and 64
// more, within the capacity; then whole layout blocks (a block holds every head's part of its tokens); residual
// windows whole.
uint64_t bytes_used(const Cache& k, int array, int64_t tokens) {
  const int64_t channels = static_cast<int64_t>(k.num_heads_kv) * k.head_dim;
  const int64_t per_word = codes_per_word(k.bits);
  const int64_t block = int64_t{1} << k.block_shift;
  const int64_t t = (std::min<int64_t>(k.capacity, (tokens + 63) / 64 * 64 + k.residual + 64) + block - 1) / block * block;
  const SlotExtents e = slot_extents(k, k.capacity);
  const bool bfp = k.format == NKV_KV_FORMAT_BFP;
  int64_t elements = 0;
  switch (array) {
    case 0: elements = bfp ? t * (channels / per_word) : (t + per_word - 1) / per_word * channels; break;
    case 1: elements = bfp ? t * (channels / k.group) : (t + k.group - 1) / k.group * channels; break;
    case 2: elements = e.key_residual; break;
    case 3: elements = e.value_codes == 0 ? 0 : t * (channels / per_word); break;
    case 4: elements = e.value_groups == 0 ? 0 : t * (channels / k.group); break;
    default: elements = bfp ? (e.value_residual == 0 ? 0 : t * channels) : e.value_residual; break;
  }
  return std::min<uint64_t>(k.slot_bytes[array], static_cast<uint64_t>(elements) * kElementBytes[bfp ? 1 : 0][array]);
}

// Maps the pages `tokens` tokens of each slot need (virtual memory), all or nothing: on failure the pages mapped
// here are unmapped and returned, and the failure is rethrown.
void map_for(Cache& k, const std::vector<std::pair<int32_t, int64_t>>& slot_tokens) {
  struct Mapped {
    char* address;
    int32_t slot;
    size_t region;
  };
  std::vector<Mapped> mapped;
  try {
    for (const auto& [slot, tokens] : slot_tokens) {
      for (int32_t layer = 0; layer < k.num_layers; ++layer) {
        for (int array = 0; array < 6; ++array) {
          const size_t region = static_cast<size_t>(layer) * 6 + array;
          std::vector<uint64_t>& pages = k.pages[slot][region];
          const uint64_t needed = (bytes_used(k, array, tokens) + k.page_bytes - 1) / k.page_bytes;
          char* first = share_of(k, slot, static_cast<uint64_t>(layer), array);
          while (pages.size() < needed) {
            const uint64_t page = k.virtual_memory->create_page();
            try {
              k.virtual_memory->map(first + pages.size() * k.page_bytes, &page, 1);
            } catch (...) {
              k.virtual_memory->release_page(page);
              throw;
            }
            mapped.push_back({first + pages.size() * k.page_bytes, slot, region});
            pages.push_back(page);
            ++k.mapped_pages;
          }
        }
      }
    }
  } catch (...) {
    for (auto it = mapped.rbegin(); it != mapped.rend(); ++it) {
      std::vector<uint64_t>& pages = k.pages[it->slot][it->region];
      k.virtual_memory->unmap(it->address);
      k.virtual_memory->release_page(pages.back());
      pages.pop_back();
      --k.mapped_pages;
    }
    throw;
  }
}

void publish_lengths(Cache& k) {
  upload_to(*k.context, k.device_lengths, k.lengths.data(), k.lengths.size() * sizeof(int32_t));
}

void forget_step(Cache& k) {
  k.step.clear();
  k.step_key_groups = k.step_value_tokens = k.step_tokens = 0;
  std::fill(k.written.begin(), k.written.end(), uint8_t{0});
}

}  // namespace

namespace nkv {

QuantizedKvLayer quantized_kv_layer(const nkv_quantized_kv_cache& k, int32_t layer) {
  QuantizedKvLayer l;
  l.format = k.format;
  l.value_format = k.value_format;
  l.bits = k.bits;
  const size_t permutation_offset = static_cast<size_t>(layer) * k.num_heads_kv * k.head_dim;
  if (!k.key_permutations.empty()) {  // CUDA: the device copy, which set_key_permutation makes before the host one
    l.key_permutation = k.context->backend == NKV_BACKEND_CUDA ? k.device_key_permutations + permutation_offset
                                                               : k.key_permutations.data() + permutation_offset;
  }
  l.group = k.group;
  while ((1 << l.group_shift) < k.group) ++l.group_shift;
  l.residual = k.residual;
  l.heads = k.num_heads_kv;
  l.head_dim = k.head_dim;
  l.capacity = k.capacity;
  if (k.memory_kind == NKV_KV_MEMORY_PAGED) {
    l.block_table = k.device_block_table != nullptr ? k.device_block_table : k.block_table.data();
    l.block_table_stride = k.pages_per_slot;
    l.page_shift = k.page_shift;
  }
  l.block_shift = k.block_shift;
  l.key_codes = reinterpret_cast<uint32_t*>(share_of(k, 0, layer, 0));
  l.key_groups = reinterpret_cast<uint32_t*>(share_of(k, 0, layer, 1));
  l.key_residual = reinterpret_cast<uint16_t*>(share_of(k, 0, layer, 2));
  l.value_codes = reinterpret_cast<uint32_t*>(share_of(k, 0, layer, 3));
  l.value_groups = reinterpret_cast<uint32_t*>(share_of(k, 0, layer, 4));
  l.value_residual = reinterpret_cast<uint16_t*>(share_of(k, 0, layer, 5));
  // Per-share strides in elements: the arrays' extents (a slot's, or a page's), whole 2 MiB pages of them with virtual memory.
  const uint64_t* element = kElementBytes[k.format == NKV_KV_FORMAT_BFP ? 1 : 0];
  l.key_codes_slot = static_cast<int64_t>(k.slot_bytes[0] / element[0]);
  l.key_groups_slot = static_cast<int64_t>(k.slot_bytes[1] / element[1]);
  l.residual_slot = static_cast<int64_t>(k.slot_bytes[2] / element[2]);
  l.value_codes_slot = static_cast<int64_t>(k.slot_bytes[3] / element[3]);
  l.value_groups_slot = static_cast<int64_t>(k.slot_bytes[4] / element[4]);
  l.value_residual_slot = static_cast<int64_t>(k.slot_bytes[5] / element[5]);
  return l;
}

}  // namespace nkv

extern "C" {

NKV_API nkv_status nkv_quantized_kv_cache_create(nkv_context* context, const nkv_quantized_kv_cache_options* options,
                                                 nkv_quantized_kv_cache** out_cache) {
  return guard("nkv_quantized_kv_cache_create", [&] {
    const nkv_context& c = check_context(context);
    require_out(out_cache, "out_cache");
    if (options == nullptr) fail_argument("argument 'options' must not be NULL");
    check_struct_size("options", options->struct_size, offsetof(nkv_quantized_kv_cache_options, page_size),
                      "nkv_quantized_kv_cache_options up to memory");
    nkv_quantized_kv_cache_options o{};  // fields past the caller's struct_size read as 0
    std::memcpy(&o, options, std::min<size_t>(options->struct_size, sizeof(o)));
    if (o.format != NKV_KV_FORMAT_KIVI && o.format != NKV_KV_FORMAT_BFP) {
      fail_argument("argument 'options.format': expected NKV_KV_FORMAT_KIVI (1) or NKV_KV_FORMAT_BFP (2), got " + std::to_string(o.format));
    }
    const bool bfp = o.format == NKV_KV_FORMAT_BFP;
    if (bfp) {
      if (o.bits != 4 && o.bits != 8) fail_argument("argument 'options.bits': BFP mantissas of 4 (BFP12) or 8 (BFP16) bits, got " + std::to_string(o.bits));
      if (o.group_size != 16 && o.group_size != 32 && o.group_size != 64) {
        fail_argument("argument 'options.group_size': BFP blocks of 16, 32 or 64 channels, got " + std::to_string(o.group_size));
      }
      if (o.residual != 0) fail_argument("argument 'options.residual': BFP caches have no residual window (0), got " + std::to_string(o.residual));
      if (o.value_format != NKV_KV_VALUES_LIKE_KEYS && o.value_format != NKV_KV_VALUES_FP16) {
        fail_argument("argument 'options.value_format': expected NKV_KV_VALUES_LIKE_KEYS (0) or NKV_KV_VALUES_FP16 (1), got " +
                      std::to_string(o.value_format));
      }
    } else {
      if (o.bits != 2 && o.bits != 4 && o.bits != 8) fail_argument("argument 'options.bits': expected 2, 4 or 8, got " + std::to_string(o.bits));
      if (o.group_size != 32 && o.group_size != 64 && o.group_size != 128) {
        fail_argument("argument 'options.group_size': expected 32, 64 or 128, got " + std::to_string(o.group_size));
      }
      if (o.value_format != NKV_KV_VALUES_LIKE_KEYS) {
        fail_argument("argument 'options.value_format': KIVI caches keep their values as KIVI codes (0), got " + std::to_string(o.value_format));
      }
    }
    for (const auto& [name, value] : {std::pair<const char*, int32_t>{"num_layers", o.num_layers}, {"num_heads_kv", o.num_heads_kv},
                                      {"max_slots", o.max_slots}, {"max_tokens", o.max_tokens}}) {
      if (value < 1) fail_argument(std::string("argument 'options.") + name + "': expected >= 1, got " + std::to_string(value));
    }
    if (o.head_dim != 64 && o.head_dim != 128) fail_argument("argument 'options.head_dim': expected 64 or 128, got " + std::to_string(o.head_dim));
    if (o.group_size > o.head_dim) {
      fail_argument("argument 'options.group_size': value groups lie within one head, so G must be at most head_dim (" +
                    std::to_string(o.head_dim) + "), got " + std::to_string(o.group_size));
    }
    const int32_t residual = bfp ? 1 : o.residual == 0 ? kDefaultResidual : o.residual;  // BFP: capacity = max_tokens
    if (!bfp && (residual < 0 || residual % o.group_size != 0)) {
      fail_argument("argument 'options.residual': expected 0 or a positive multiple of group_size (" + std::to_string(o.group_size) +
                    "), got " + std::to_string(o.residual));
    }
    if (o.memory != NKV_KV_MEMORY_ALLOCATED && o.memory != NKV_KV_MEMORY_VIRTUAL && o.memory != NKV_KV_MEMORY_PAGED) {
      fail_argument("argument 'options.memory': expected NKV_KV_MEMORY_ALLOCATED (0), NKV_KV_MEMORY_VIRTUAL (1) or NKV_KV_MEMORY_PAGED (2), got " +
                    std::to_string(o.memory));
    }
    const bool paged = o.memory == NKV_KV_MEMORY_PAGED;
    if (paged) {
      if (o.page_size < 16 || o.page_size > 4096 || (o.page_size & (o.page_size - 1)) != 0) {
        fail_argument("argument 'options.page_size': expected a power of two from 16 to 4096 tokens, got " + std::to_string(o.page_size));
      }
      if (!bfp && o.page_size % o.group_size != 0) {
        fail_argument("argument 'options.page_size': KIVI key groups lie within one page, so it must be a multiple of group_size (" +
                      std::to_string(o.group_size) + "), got " + std::to_string(o.page_size));
      }
      if (o.max_pages < 0) fail_argument("argument 'options.max_pages': expected >= 0, got " + std::to_string(o.max_pages));
    } else if (o.page_size != 0 || o.max_pages != 0) {
      fail_argument("argument 'options.page_size': must be 0 (and max_pages 0) unless memory is NKV_KV_MEMORY_PAGED, got " +
                    std::to_string(o.page_size) + " and " + std::to_string(o.max_pages));
    }
    const int64_t capacity = (static_cast<int64_t>(o.max_tokens) + residual - 1) / residual * residual;
    if (capacity > std::numeric_limits<int32_t>::max() - 128) {
      fail(NKV_STATUS_NOT_SUPPORTED, "argument 'options.max_tokens': rounded up to the residual window, " + std::to_string(capacity) +
                                         " exceeds 2^31 - 129");
    }
    CachePtr cache(new Cache());
    cache->context = context;
    cache->format = static_cast<nkv_kv_format>(o.format);
    cache->value_format = static_cast<nkv_kv_value_format>(o.value_format);
    cache->bits = o.bits;
    cache->group = o.group_size;
    cache->residual = bfp ? 0 : residual;
    cache->num_layers = o.num_layers;
    cache->num_heads_kv = o.num_heads_kv;
    cache->head_dim = o.head_dim;
    cache->max_slots = o.max_slots;
    cache->max_tokens = o.max_tokens;
    cache->capacity = static_cast<int32_t>(capacity);
    if (paged) {
      cache->memory_kind = NKV_KV_MEMORY_PAGED;
      cache->page_size = o.page_size;
      while ((1 << cache->page_shift) < o.page_size) ++cache->page_shift;
      cache->pages_per_slot = static_cast<int32_t>((capacity + o.page_size - 1) / o.page_size);
      const int64_t filled = static_cast<int64_t>(cache->pages_per_slot) * o.max_slots;
      if (o.max_pages == 0 && filled > std::numeric_limits<int32_t>::max()) {
        fail(NKV_STATUS_NOT_SUPPORTED, "argument 'options.max_pages': 0 asks for " + std::to_string(filled) + " pages, more than 2^31 - 1");
      }
      cache->max_pages = o.max_pages == 0 ? static_cast<int32_t>(filled) : o.max_pages;
    }
    if (paged) {
      cache->block_shift = cache->page_shift;
    } else {
      cache->block_shift = 6;
      while (!bfp && (1 << cache->block_shift) < o.group_size) ++cache->block_shift;
    }
    // The CUDA decodes address a slot's share of an array with 32-bit element offsets: every share, in whole layout
    // blocks (head-major, so the last head's rows of the last block lie near the share's end), must fit them.
    const SlotExtents full = slot_extents(*cache, cache->capacity);
    for (int64_t elements : {full.key_codes, full.key_groups, full.key_residual, full.value_codes, full.value_groups, full.value_residual}) {
      if (c.backend == NKV_BACKEND_CUDA && elements > static_cast<int64_t>(std::numeric_limits<uint32_t>::max())) {
        fail(NKV_STATUS_NOT_SUPPORTED, "argument 'options.max_tokens': a slot's share of an array (" + std::to_string(elements) +
                                           " elements: max_tokens in whole layout blocks x num_heads_kv x the array's elements per token) "
                                           "exceeds 2^32 - 1, the CUDA kernels' 32-bit offsets");
      }
    }
    const SlotExtents e = slot_extents(*cache, paged ? cache->page_size : cache->capacity);
    const uint64_t slots = static_cast<uint64_t>(o.max_slots);
    const int64_t extents[6] = {e.key_codes, e.key_groups, e.key_residual, e.value_codes, e.value_groups, e.value_residual};
    for (int i = 0; i < 6; ++i) cache->shares[i] = paged && token_indexed(*cache, i) ? static_cast<uint64_t>(cache->max_pages) : slots;
    // Each array holds every slot's share; with virtual memory a share is whole pages, so that each slot's pages
    // map and unmap on their own.
    const bool virtual_memory = o.memory == NKV_KV_MEMORY_VIRTUAL;
    if (virtual_memory) {
      cache->memory_kind = NKV_KV_MEMORY_VIRTUAL;
      cache->virtual_memory = c.backend == NKV_BACKEND_CUDA ? cuda::virtual_memory(c.device_ordinal) : cpu::virtual_memory();
      cache->page_bytes = cache->virtual_memory->page_bytes();
      cache->pages.assign(slots, std::vector<std::vector<uint64_t>>(static_cast<size_t>(o.num_layers) * 6));
    }
    uint64_t array_bytes[6];
    for (int i = 0; i < 6; ++i) {
      const uint64_t share = checked_product({static_cast<uint64_t>(extents[i]), kElementBytes[bfp ? 1 : 0][i]},
                                             "argument 'options' (max_tokens x num_heads_kv x head_dim): a slot's bytes");
      // Shares start on 16-byte boundaries: the decodes copy 16-byte pieces of a head's part of a layout block (BFP's
      // exponents of 16 / (d / n) tokens; every other array's share is a multiple of 16 bytes already).
      cache->slot_bytes[i] = virtual_memory ? round_up(share, cache->page_bytes) : round_up(share, 16);
      array_bytes[i] = checked_product({cache->shares[i], cache->slot_bytes[i]}, "argument 'options.max_slots' (or max_pages): an array's bytes");
    }
    uint64_t offset = 0;
    for (int i = 0; i < 6; ++i) {
      cache->offsets[i] = offset;
      offset = round_up(offset + array_bytes[i], virtual_memory ? cache->page_bytes : 256);
      if (offset < array_bytes[i]) fail(NKV_STATUS_NOT_SUPPORTED, "argument 'options': a layer's bytes overflow 64 bits");
    }
    cache->layer_bytes = offset;
    cache->bytes = checked_product({offset, static_cast<uint64_t>(o.num_layers)}, "argument 'options.num_layers': the cache's bytes");
    cache->memory = virtual_memory ? cache->virtual_memory->reserve(cache->bytes) : allocate_on(c, cache->bytes);
    cache->lengths.assign(slots, 0);
    cache->alive.assign(slots, 0);
    cache->written.assign(static_cast<size_t>(o.num_layers), 0);
    cache->device_lengths = static_cast<int32_t*>(allocate_on(c, slots * sizeof(int32_t)));
    cache->device_step = static_cast<QuantizedKvStepEntry*>(allocate_on(c, slots * sizeof(QuantizedKvStepEntry)));
    if (paged) {
      cache->block_table.assign(slots * static_cast<size_t>(cache->pages_per_slot), 0);
      cache->slot_page_counts.assign(slots, 0);
      cache->free_pages.resize(static_cast<size_t>(cache->max_pages));
      for (int32_t i = 0; i < cache->max_pages; ++i) cache->free_pages[static_cast<size_t>(i)] = cache->max_pages - 1 - i;  // page 0 first
      if (c.backend == NKV_BACKEND_CUDA) {
        cache->device_block_table = static_cast<int32_t*>(allocate_on(c, cache->block_table.size() * sizeof(int32_t)));
      }
      publish_block_table(*cache);
    }
    publish_lengths(*cache);
    *out_cache = cache.release();
  });
}

NKV_API nkv_status nkv_quantized_kv_cache_destroy(nkv_quantized_kv_cache* cache) {
  return guard("nkv_quantized_kv_cache_destroy", [&] {
    if (cache == nullptr) return;
    CachePtr owned(cache);
    synchronize_on(*cache->context);
  });
}

NKV_API nkv_status nkv_quantized_kv_cache_add_slot(nkv_quantized_kv_cache* cache, int32_t* out_slot) {
  return guard("nkv_quantized_kv_cache_add_slot", [&] {
    Cache& k = require_handle(cache, "cache");
    require_out(out_slot, "out_slot");
    const auto free = std::find(k.alive.begin(), k.alive.end(), 0);
    if (free == k.alive.end()) {
      fail(NKV_STATUS_OUT_OF_MEMORY, "all " + std::to_string(k.max_slots) + " slots (options.max_slots) are alive");
    }
    const int32_t slot = static_cast<int32_t>(free - k.alive.begin());
    k.alive[slot] = 1;
    k.lengths[slot] = 0;
    *out_slot = slot;
  });
}

NKV_API nkv_status nkv_quantized_kv_cache_free_slot(nkv_quantized_kv_cache* cache, int32_t slot) {
  return guard("nkv_quantized_kv_cache_free_slot", [&] {
    Cache& k = require_handle(cache, "cache");
    check_alive(k, slot, "slot");
    if (std::any_of(k.step.begin(), k.step.end(), [&](const QuantizedKvStepEntry& e) { return e.slot == slot; })) {
      // The step's other slots have grown: forgetting it before every layer holds their tokens would leave
      // unwritten residual rows to be quantized later.
      const auto unwritten = std::find(k.written.begin(), k.written.end(), 0);
      if (unwritten != k.written.end()) {
        fail_argument("argument 'slot': slot " + std::to_string(slot) + " is in the last step, whose layer " +
                      std::to_string(unwritten - k.written.begin()) + " is not written yet; write every layer first");
      }
      forget_step(k);
    }
    if (k.memory_kind == NKV_KV_MEMORY_VIRTUAL) {
      synchronize_on(*k.context);  // queued kernels may still read the slot's pages
      release_slot_pages(k, slot);
    }
    if (k.memory_kind == NKV_KV_MEMORY_PAGED) {
      // Work queued before reads the pages in stream order, ahead of any write that reuses them; the device table
      // keeps the slot's old row until the next append changes it, and nothing reads a free slot's row.
      return_pages(k, slot);
    }
    k.alive[slot] = 0;
    k.lengths[slot] = 0;
    publish_lengths(k);
  });
}

NKV_API nkv_status nkv_quantized_kv_cache_append(nkv_quantized_kv_cache* cache, const int32_t* slots, const int32_t* token_counts,
                                                 int32_t count) {
  return guard("nkv_quantized_kv_cache_append", [&] {
    Cache& k = require_handle(cache, "cache");
    if (count < 0) fail_argument("argument 'count': expected >= 0, got " + std::to_string(count));
    if (count > 0 && slots == nullptr) fail_argument("argument 'slots' must not be NULL");
    if (count > 0 && token_counts == nullptr) fail_argument("argument 'token_counts' must not be NULL");
    std::vector<uint8_t> seen(static_cast<size_t>(k.max_slots), 0);
    std::vector<QuantizedKvStepEntry> step;
    int64_t key_groups = 0, value_tokens = 0, tokens = 0;
    for (int32_t i = 0; i < count; ++i) {
      const std::string name = "slots[" + std::to_string(i) + "]";
      const int32_t s = check_alive(k, slots[i], name.c_str());
      const int32_t n = token_counts[i];
      const int64_t length = k.lengths[s];
      check_step_entry(seen, i, s, n, length, k.max_tokens, "slots", "slot", "max_tokens");
      if (n == 0) continue;
      QuantizedKvStepEntry e;
      e.slot = s;
      e.old_length = static_cast<int32_t>(length);
      e.count = n;
      e.input_row = static_cast<int32_t>(tokens);
      e.key_groups_before = static_cast<int32_t>(key_groups);
      e.value_tokens_before = static_cast<int32_t>(value_tokens);
      e.new_tokens_before = static_cast<int32_t>(tokens);
      step.push_back(e);
      if (k.format == NKV_KV_FORMAT_KIVI) {
        key_groups += (kivi::quantized_keys(length + n, k.residual) - kivi::quantized_keys(length, k.residual)) / k.group;
        value_tokens += kivi::quantized_values(length + n, k.residual) - kivi::quantized_values(length, k.residual);
      }
      tokens += n;
      if (tokens > std::numeric_limits<int32_t>::max()) {
        fail(NKV_STATUS_NOT_SUPPORTED, "argument 'token_counts': a step of more than 2^31 - 1 tokens");
      }
    }
    const nkv_context& c = *k.context;
    if (k.memory_kind == NKV_KV_MEMORY_VIRTUAL && !step.empty()) {
      std::vector<std::pair<int32_t, int64_t>> grown;
      for (const QuantizedKvStepEntry& e : step) grown.emplace_back(e.slot, static_cast<int64_t>(e.old_length) + e.count);
      map_for(k, grown);  // all or nothing; before anything below changes
    }
    if (k.memory_kind == NKV_KV_MEMORY_PAGED && !step.empty()) take_pages(k, step);  // all or nothing, likewise
    // Ordered on the stream after the writes queued for the last step, which read the entries it replaces.
    if (c.backend == NKV_BACKEND_CUDA && !step.empty()) {
      upload_to(c, k.device_step, step.data(), step.size() * sizeof(QuantizedKvStepEntry));
    }
    for (const QuantizedKvStepEntry& e : step) k.lengths[e.slot] += e.count;
    k.step = std::move(step);
    k.step_key_groups = key_groups;
    k.step_value_tokens = value_tokens;
    k.step_tokens = tokens;
    std::fill(k.written.begin(), k.written.end(), uint8_t{0});
    publish_lengths(k);
  });
}

NKV_API nkv_status nkv_quantized_kv_cache_write(nkv_quantized_kv_cache* cache, int32_t layer, const nkv_tensor* k,
                                                const nkv_tensor* v) {
  return guard("nkv_quantized_kv_cache_write", [&] {
    Cache& x = require_handle(cache, "cache");
    check_layer(x, layer);
    const nkv_context& c = *x.context;
    for (const auto& [name, t] : {std::pair<const char*, const nkv_tensor*>{"k", k}, {"v", v}}) {
      const nkv_tensor& tensor = check_tensor(name, t, c);
      check_dtype(name, tensor, {NKV_DTYPE_FLOAT16});
      check_shape(name, tensor, {x.step_tokens, x.num_heads_kv, x.head_dim});
      check_unit_inner_stride(name, tensor);
      if (c.backend == NKV_BACKEND_CUDA) check_vector_aligned(name, tensor, 8);
    }
    if (x.written[layer]) {
      fail_argument("argument 'layer': layer " + std::to_string(layer) + " was already written in this step (its residual has moved on)");
    }
    if (x.step_tokens == 0) return;
    const QuantizedKvLayer l = quantized_kv_layer(x, layer);
    QuantizedKvInput input;
    input.k = static_cast<const uint16_t*>(k->data);
    input.v = static_cast<const uint16_t*>(v->data);
    input.k_row_stride = k->strides[0];
    input.k_head_stride = k->strides[1];
    input.v_row_stride = v->strides[0];
    input.v_head_stride = v->strides[1];
    QuantizedKvStep step;
    step.entries = c.backend == NKV_BACKEND_CUDA ? x.device_step : x.step.data();
    step.count = static_cast<int32_t>(x.step.size());
    step.key_groups = x.step_key_groups;
    step.value_tokens = x.step_value_tokens;
    step.new_tokens = x.step_tokens;
    if (c.backend == NKV_BACKEND_CUDA) {
      cuda::quantized_kv_write(c.device_ordinal, c.stream, l, step, input);
    } else {
      cpu::quantized_kv_write(l, step, input);
    }
    x.written[layer] = 1;
  });
}

NKV_API nkv_status nkv_quantized_kv_cache_view(const nkv_quantized_kv_cache* cache, int32_t which, int32_t layer,
                                               nkv_tensor* out_view) {
  return guard("nkv_quantized_kv_cache_view", [&] {
    require_out(out_view, "out_view");
    const Cache& k = require_handle(cache, "cache");
    if (which < NKV_QUANTIZED_KV_KEY_CODES || which > NKV_QUANTIZED_KV_BLOCK_TABLE) {
      fail_argument("argument 'which': expected an nkv_quantized_kv_view value (NKV_QUANTIZED_KV_KEY_CODES (0) .. "
                    "NKV_QUANTIZED_KV_BLOCK_TABLE (7)), got " + std::to_string(which));
    }
    const bool paged = k.memory_kind == NKV_KV_MEMORY_PAGED;
    if (which == NKV_QUANTIZED_KV_BLOCK_TABLE && !paged) {
      fail_argument("argument 'which': NKV_QUANTIZED_KV_BLOCK_TABLE views a paged cache's table (options.memory NKV_KV_MEMORY_PAGED)");
    }
    nkv_tensor t{};
    auto set = [&](void* data, int32_t dtype, std::initializer_list<int64_t> shape) {
      t = contiguous_view(data, dtype, device_type_of(*k.context), shape);
    };
    if (which == NKV_QUANTIZED_KV_SLOT_LENGTHS) {
      set(k.device_lengths, NKV_DTYPE_INT32, {k.max_slots});
    } else if (which == NKV_QUANTIZED_KV_BLOCK_TABLE) {
      set(k.device_block_table != nullptr ? k.device_block_table : const_cast<int32_t*>(k.block_table.data()), NKV_DTYPE_INT32,
          {k.max_slots, k.pages_per_slot});
    } else {
      check_layer(k, layer);
      const QuantizedKvLayer l = quantized_kv_layer(k, layer);
      const int64_t per_word = codes_per_word(k.bits);
      const int64_t h = k.num_heads_kv, d = k.head_dim;
      // Shares of the token-indexed arrays: slots of `capacity` tokens, or pages of page_size tokens, in layout
      // blocks of B tokens (a page when paged), each block head-major.
      const int64_t s = paged ? k.max_pages : k.max_slots, slots = k.max_slots;
      const int64_t b = int64_t{1} << k.block_shift, blocks = paged ? 1 : (k.capacity + b - 1) / b;
      if (k.format == NKV_KV_FORMAT_BFP) {
        const bool coded = k.value_format == NKV_KV_VALUES_LIKE_KEYS;
        switch (which) {
          case NKV_QUANTIZED_KV_KEY_CODES: set(l.key_codes, NKV_DTYPE_INT32, {s, blocks, h, b, d / per_word}); break;
          case NKV_QUANTIZED_KV_KEY_GROUPS: set(l.key_groups, NKV_DTYPE_INT8, {s, blocks, h, b, d / k.group}); break;
          case NKV_QUANTIZED_KV_KEY_RESIDUAL: set(l.key_residual, NKV_DTYPE_FLOAT16, {slots, 0, h, d}); break;
          case NKV_QUANTIZED_KV_VALUE_CODES: set(l.value_codes, NKV_DTYPE_INT32, {s, coded ? blocks : 0, h, b, d / per_word}); break;
          case NKV_QUANTIZED_KV_VALUE_GROUPS: set(l.value_groups, NKV_DTYPE_INT8, {s, coded ? blocks : 0, h, b, d / k.group}); break;
          default: set(l.value_residual, NKV_DTYPE_FLOAT16, {s, coded ? 0 : blocks, h, b, d}); break;
        }
        t.strides[0] = static_cast<int64_t>(k.slot_bytes[which] / nkv_dtype_size(t.dtype));
        *out_view = t;
        return;
      }
      switch (which) {
        case NKV_QUANTIZED_KV_KEY_CODES: set(l.key_codes, NKV_DTYPE_INT32, {s, blocks, h, b / per_word, d}); break;
        case NKV_QUANTIZED_KV_KEY_GROUPS: set(l.key_groups, NKV_DTYPE_FLOAT16, {s, blocks, h, b / k.group, d / 2, 4}); break;
        case NKV_QUANTIZED_KV_KEY_RESIDUAL: set(l.key_residual, NKV_DTYPE_FLOAT16, {slots, k.residual, h, d}); break;
        case NKV_QUANTIZED_KV_VALUE_CODES: set(l.value_codes, NKV_DTYPE_INT32, {s, blocks, h, b, d / per_word}); break;
        case NKV_QUANTIZED_KV_VALUE_GROUPS: set(l.value_groups, NKV_DTYPE_FLOAT16, {s, blocks, h, d / k.group, b / 8, 16}); break;
        default: set(l.value_residual, NKV_DTYPE_FLOAT16, {slots, k.residual, h, d}); break;
      }
      t.strides[0] = static_cast<int64_t>(k.slot_bytes[which] / nkv_dtype_size(t.dtype));  // whole pages with virtual memory
    }
    *out_view = t;
  });
}

NKV_API nkv_status nkv_quantized_kv_cache_get_info(const nkv_quantized_kv_cache* cache, nkv_quantized_kv_cache_info* out_info) {
  return guard("nkv_quantized_kv_cache_get_info", [&] {
    require_out(out_info, "out_info");
    const Cache& k = require_handle(cache, "cache");
    nkv_quantized_kv_cache_info info{};
    info.format = k.format;
    info.bits = k.bits;
    info.group_size = k.group;
    info.residual = k.residual;
    info.max_slots = k.max_slots;
    info.capacity = k.capacity;
    for (int32_t s = 0; s < k.max_slots; ++s) {
      if (!k.alive[s]) continue;
      ++info.slots;
      info.tokens += k.lengths[s];
    }
    info.step_tokens = k.step_tokens;
    info.bytes = k.bytes;
    info.mapped_bytes = k.memory_kind == NKV_KV_MEMORY_VIRTUAL ? k.mapped_pages * k.page_bytes : k.bytes;
    if (k.memory_kind == NKV_KV_MEMORY_PAGED) {
      info.page_size = k.page_size;
      info.max_pages = k.max_pages;
      info.free_pages = static_cast<int32_t>(k.free_pages.size());
    }
    write_sized_struct(out_info, info, "out_info", offsetof(nkv_quantized_kv_cache_info, page_size),
                       "nkv_quantized_kv_cache_info up to mapped_bytes");
  });
}

NKV_API nkv_status nkv_quantized_kv_cache_slot(const nkv_quantized_kv_cache* cache, int32_t slot, int32_t* out_length) {
  return guard("nkv_quantized_kv_cache_slot", [&] {
    const Cache& k = require_handle(cache, "cache");
    require_out(out_length, "out_length");
    check_alive(k, slot, "slot");
    *out_length = k.lengths[slot];
  });
}

NKV_API nkv_status nkv_quantized_kv_cache_set_key_permutation(nkv_quantized_kv_cache* cache, int32_t layer,
                                                              const int32_t* permutation) {
  return guard("nkv_quantized_kv_cache_set_key_permutation", [&] {
    Cache& k = require_handle(cache, "cache");
    check_layer(k, layer);
    if (permutation == nullptr) fail_argument("argument 'permutation' must not be NULL");
    for (int32_t s = 0; s < k.max_slots; ++s) {
      if (k.alive[s] && k.lengths[s] > 0) {
        fail_argument("argument 'cache': slot " + std::to_string(s) + " holds tokens; set key permutations before the first append");
      }
    }
    for (int32_t h = 0; h < k.num_heads_kv; ++h) {
      std::vector<uint8_t> seen(static_cast<size_t>(k.head_dim), 0);
      for (int32_t j = 0; j < k.head_dim; ++j) {
        const int32_t c = permutation[h * k.head_dim + j];
        if (c < 0 || c >= k.head_dim || seen[c]) {
          fail_argument("argument 'permutation': head " + std::to_string(h) + " is not a permutation of 0.." + std::to_string(k.head_dim - 1) +
                        " (entry " + std::to_string(j) + " is " + std::to_string(c) + ")");
        }
        seen[c] = 1;
      }
    }
    // The new orders first (the identity for layers never set), on the device too, and only then the cache's: a failed
    // allocation or upload leaves the cache as it was.
    const size_t per_layer = static_cast<size_t>(k.num_heads_kv) * k.head_dim;
    std::vector<int32_t> orders = k.key_permutations;
    if (orders.empty()) {
      orders.resize(per_layer * k.num_layers);
      for (size_t i = 0; i < orders.size(); ++i) orders[i] = static_cast<int32_t>(i % k.head_dim);
    }
    std::copy(permutation, permutation + per_layer, orders.begin() + static_cast<std::ptrdiff_t>(per_layer * layer));
    if (k.context->backend == NKV_BACKEND_CUDA) {
      if (k.device_key_permutations == nullptr) {
        k.device_key_permutations = static_cast<int32_t*>(allocate_on(*k.context, orders.size() * sizeof(int32_t)));
      }
      upload_to(*k.context, k.device_key_permutations, orders.data(), orders.size() * sizeof(int32_t));
    }
    k.key_permutations = std::move(orders);
  });
}

NKV_API nkv_status nkv_ksort_calibrate(const nkv_tensor* keys, int32_t rotary_pairs, int32_t* permutation) {
  return guard("nkv_ksort_calibrate", [&] {
    if (keys == nullptr) fail_argument("argument 'keys' must not be NULL");
    if (permutation == nullptr) fail_argument("argument 'permutation' must not be NULL");
    const nkv_tensor& x = *keys;
    if (x.device != NKV_DEVICE_HOST) fail_argument("argument 'keys': expected host memory (NKV_DEVICE_HOST), got device " + std::to_string(x.device));
    check_dtype("keys", x, {NKV_DTYPE_FLOAT16, NKV_DTYPE_FLOAT32});
    if (x.ndim != 3) fail_argument("argument 'keys': expected [tokens, num_heads_kv, head_dim], got " + std::to_string(x.ndim) + " dimensions");
    check_unit_inner_stride("keys", x);
    if (x.shape[0] < 1 || x.shape[1] < 1 || x.shape[2] < 1) fail_argument("argument 'keys': expected every extent >= 1, got " + shape_string(x));
    if (x.data == nullptr) fail_argument("argument 'keys': data must not be NULL");
    if (x.reserved != 0) fail_argument("argument 'keys': reserved must be 0, got " + std::to_string(x.reserved));
    if (x.strides[0] < 0 || x.strides[1] < 0) fail(NKV_STATUS_NOT_SUPPORTED, "argument 'keys': negative strides");
    if (reinterpret_cast<uintptr_t>(x.data) % nkv_dtype_size(x.dtype) != 0) fail_argument("argument 'keys': data is not aligned to its element size");
    if (rotary_pairs < NKV_ROTARY_NONE || rotary_pairs > NKV_ROTARY_ADJACENT) {
      fail_argument("argument 'rotary_pairs': expected an nkv_rotary_pairs value (0 .. 2), got " + std::to_string(rotary_pairs));
    }
    const int64_t d = x.shape[2];
    if (rotary_pairs != NKV_ROTARY_NONE && d % 2 != 0) fail_argument("argument 'keys': rotary pairs need an even head_dim, got " + std::to_string(d));
    cpu::ksort_order(x, static_cast<nkv_rotary_pairs>(rotary_pairs), permutation);
  });
}

}  // extern "C"
