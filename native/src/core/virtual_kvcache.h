// The virtual-memory KV cache behind nkv_virtual_kv_cache: the reserved address space, the physical pages
// (reference-counted, pooled when unmapped), the slots' mapped blocks, and the background thread that maps
// blocks ahead of appends. Every field below `mutex` is guarded by it; the background thread makes its
// driver calls outside it, with the slot it maps marked `mapping`.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "core/handles.h"
#include "core/virtual_memory.h"
#include "nativekv/nativekv.h"

struct nkv_virtual_kv_cache {
  nkv_context* context = nullptr;
  std::unique_ptr<nkv::VirtualMemory> memory;
  nkv_dtype dtype = NKV_DTYPE_FLOAT16;
  nkv_virtual_kv_layout layout = NKV_VIRTUAL_KV_LAYER_MAJOR;
  int32_t num_layers = 0;
  int32_t num_heads_kv = 0;
  int32_t head_dim = 0;
  int32_t max_slots = 0;
  int32_t max_tokens = 0;
  uint64_t page_bytes = 0;   // one physical page, the mapping granularity
  int32_t regions = 0;       // pages per block: 2 x layers (layer-major) or 1 (token-major)
  uint64_t token_bytes = 0;  // one token in one region
  // Token-major: the whole tokens one page holds, [layer][K|V][token][head][d] within it (so one layer's
  // rows of them are one run); 0 for layer-major, where tokens follow each other across pages.
  int32_t tokens_per_page = 0;
  uint64_t block_payload = 0;  // bytes of tokens a page of a region holds (page_bytes for layer-major)
  uint64_t slot_extent = 0;  // a slot's share of a region: whole pages and whole tokens
  int64_t rows_per_slot = 0; // tokens a slot's extent holds; step rows count in them
  int32_t max_blocks = 0;    // blocks a slot of max_tokens needs
  int64_t budget_pages = 0;
  char* base = nullptr;      // the reservation: region r, slot s at base + (r * max_slots + s) * slot_extent
  uint64_t reserved_bytes = 0;
  int32_t* device_lengths = nullptr;
  int32_t* device_step_rows = nullptr;
  int64_t step_capacity = 0;

  std::mutex mutex;
  std::condition_variable changed;  // a slot finished mapping, or a request arrived, or stopping
  struct Slot {
    bool alive = false;
    bool mapping = false;       // the background thread is mapping its next block
    int32_t length = 0;
    int32_t mapped_blocks = 0;  // blocks 0 .. mapped_blocks - 1 are mapped in every region
    std::vector<int32_t> pages; // [block][region]: physical page id, -1 when unmapped
  };
  std::vector<Slot> slots;
  std::vector<uint64_t> page_handles;  // by page id
  std::vector<int32_t> page_references; // slots' blocks mapping each page; 0: pooled or released
  std::vector<int32_t> pooled;         // ids of held, unmapped pages
  std::vector<int32_t> unused_ids;     // ids whose page was released
  int64_t pages_in_creation = 0;       // being created by the background thread (counted in the budget)
  std::vector<int32_t> step_rows;      // the last append's rows (slot * rows_per_slot + token)
  std::deque<std::pair<int32_t, int32_t>> requests;  // (slot, tokens) for the background thread
  std::thread worker;
  bool stopping = false;
  int64_t blocks_mapped_ahead = 0;
  int64_t blocks_mapped_inline = 0;
  int64_t pages_created = 0;
};
