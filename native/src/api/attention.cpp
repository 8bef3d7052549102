#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <memory>
#include <string>

#include "core/api_guard.h"
#include "core/attention.h"
#include "core/backends.h"
#include "core/context_memory.h"
#include "core/quantized_kvcache.h"
#include "core/tensor_checks.h"

using namespace nkv;

namespace {

constexpr int32_t kMaxDecodeQueries = 16;
// Decode pieces hold whole key tiles of the CUDA kernel, and a piece shorter than this costs more in
// the merge than it gains in parallelism.
constexpr int32_t kDecodeKeyTile = 64;
constexpr int32_t kMinKeysPerPiece = 256;
// The most pieces the heuristic considers for one sequence.
constexpr int32_t kMaxDecodePieces = 256;
// What a thread block costs beyond its keys (Q load, pipeline fill, the warps' merge, the partial
// result and its share of the merge), in keys: without it the model preferred 103 pieces of 320 keys
// for b8 x L32768 on an H200 (25 waves; 317 µs) over 4 of 8192 (one wave).
constexpr int64_t kPieceOverheadKeys = 256;
// Quantized plans in one wave (plan_decode_splits): the share of keys a piece gains over the last dispatch
// round's, what the fp16 residual window costs the last piece, in tiles, and the quantized kernels' 128-key
// chunk, in tiles.
constexpr double kEarlierRoundsGain = 0.10;
constexpr int64_t kResidualTiles = 4;
constexpr int64_t kChunkTiles = 2;

// nkv_attention_options as first published (up to num_splits); later fields are read only when the
// caller's struct_size covers them.
constexpr size_t kOptionsFirstSize = offsetof(nkv_attention_options, kernel);

// Whether the caller's options struct (struct_size) includes the field at `offset`: fields added later read as 0.
bool has_field(const nkv_attention_options* options, size_t offset) {
  return options != nullptr && options->struct_size >= offset + sizeof(int32_t);
}

// A decode plan made for paged K/V (options.kv_page_size) runs only over pools of that page size, one made for
// quantized caches (options.kv_code_bits) only over those.
void check_kv_layout(const nkv_attention_plan& plan, int64_t page_size) {
  if (plan.kv_code_bits != 0) {
    fail_argument("argument 'plan': made for quantized caches of " + std::to_string(plan.kv_code_bits) +
                  "-bit codes (options.kv_code_bits); it runs only nkv_attention_decode_quantized");
  }
  if (plan.kv_page_size == 0 || plan.kv_page_size == page_size) return;
  fail_argument("argument 'plan': made for K/V pools of page size " + std::to_string(plan.kv_page_size) +
                " (options.kv_page_size), but the call reads " +
                (page_size == 0 ? std::string("contiguous K/V") : "pools of page size " + std::to_string(page_size)));
}

// The page sizes paged K/V may have.
bool is_page_size(int64_t page_size) { return page_size >= 1 && page_size <= 256 && (page_size & (page_size - 1)) == 0; }

// The page size a decode plan is made for (0: any K/V).
int32_t check_kv_page_size(const nkv_attention_options* options, bool decode) {
  if (!has_field(options, offsetof(nkv_attention_options, kv_page_size))) return 0;
  const int32_t page_size = options->kv_page_size;
  if (page_size == 0) return 0;
  if (!decode) fail_argument("argument 'options.kv_page_size': must be 0 for varlen plans, got " + std::to_string(page_size));
  if (!is_page_size(page_size)) {
    fail_argument("argument 'options.kv_page_size': expected 0 or a power of two <= 256, got " + std::to_string(page_size));
  }
  return page_size;
}

// The code bits of the quantized caches a decode plan is made for (0: any K/V).
int32_t check_kv_code_bits(const nkv_attention_options* options, bool decode, int32_t page_size) {
  if (!has_field(options, offsetof(nkv_attention_options, kv_code_bits))) return 0;
  const int32_t bits = options->kv_code_bits;
  if (bits == 0) return 0;
  if (!decode) fail_argument("argument 'options.kv_code_bits': must be 0 for varlen plans, got " + std::to_string(bits));
  if (bits != 2 && bits != 4 && bits != 8) fail_argument("argument 'options.kv_code_bits': expected 0, 2, 4 or 8, got " + std::to_string(bits));
  if (page_size != 0) fail_argument("argument 'options.kv_code_bits': a plan is made for paged or for quantized K/V, not both");
  return bits;
}


// The requested kernel family, after checking that the context can have it at all.
nkv_attention_kernel check_kernel(const nkv_attention_options* options, const nkv_context& context, bool decode) {
  if (!has_field(options, offsetof(nkv_attention_options, kernel))) return NKV_ATTENTION_KERNEL_AUTO;
  const int32_t kernel = options->kernel;
  if (kernel != NKV_ATTENTION_KERNEL_AUTO && kernel != NKV_ATTENTION_KERNEL_SM80 && kernel != NKV_ATTENTION_KERNEL_SM90) {
    fail_argument("argument 'options.kernel': expected NKV_ATTENTION_KERNEL_AUTO (0), _SM80 (1) or _SM90 (2), got " +
                  std::to_string(kernel));
  }
  if (kernel != NKV_ATTENTION_KERNEL_AUTO && context.backend != NKV_BACKEND_CUDA) {
    fail(NKV_STATUS_NOT_SUPPORTED, "argument 'options.kernel': the CPU backend has one implementation; pass "
                                   "NKV_ATTENTION_KERNEL_AUTO");
  }
  if (kernel == NKV_ATTENTION_KERNEL_SM90) {
    if (decode) {
      fail(NKV_STATUS_NOT_SUPPORTED, "argument 'options.kernel': NKV_ATTENTION_KERNEL_SM90 is not available for decode "
                                     "(memory-bound: it runs the SM80 family on every GPU)");
    }
    if (!context.hopper_kernels) {
      fail(NKV_STATUS_NOT_SUPPORTED,
           "argument 'options.kernel': NKV_ATTENTION_KERNEL_SM90 needs a Hopper GPU (compute capability 9.0) and a "
           "library built for sm_90a; this device has compute capability " + std::to_string(context.compute_capability / 10) +
               "." + std::to_string(context.compute_capability % 10));
    }
  }
  return static_cast<nkv_attention_kernel>(kernel);
}

// The CUDA kernels use mma.sync m16n8k16 with bf16 and cp.async: compute capability 8.0 and newer.
void check_device(const nkv_context& context) {
  if (context.backend == NKV_BACKEND_CUDA && context.compute_capability < 80) {
    fail(NKV_STATUS_NOT_SUPPORTED, "attention needs a GPU of compute capability 8.0 or newer; this one is " +
                                       std::to_string(context.compute_capability / 10) + "." +
                                       std::to_string(context.compute_capability % 10));
  }
}

// Grid limits of the CUDA kernels (sequences and heads along grid y/z) and tile rounding in int32.
constexpr int32_t kMaxGridExtent = 65535;
constexpr int64_t kMaxSequenceLength = std::numeric_limits<int32_t>::max() - 128;

void check_cuda_limits(const nkv_context& context, int32_t batch, int32_t num_heads_kv) {
  if (context.backend != NKV_BACKEND_CUDA) return;
  if (batch > kMaxGridExtent || num_heads_kv > kMaxGridExtent) {
    fail(NKV_STATUS_NOT_SUPPORTED, "attention on CUDA takes at most " + std::to_string(kMaxGridExtent) +
                                       " sequences and KV heads per plan, got " + std::to_string(batch) + " sequences and " +
                                       std::to_string(num_heads_kv) + " KV heads");
  }
}

// The sm_90a varlen kernels cover head_dim 64 and 128 so far, and put the query heads on the grid's y
// dimension.
void check_kernel_covers(nkv_attention_kernel kernel, int32_t head_dim, int32_t num_heads_q) {
  if (kernel != NKV_ATTENTION_KERNEL_SM90) return;
  if (head_dim != 64 && head_dim != 128) {
    fail(NKV_STATUS_NOT_SUPPORTED, "argument 'options.kernel': the NKV_ATTENTION_KERNEL_SM90 family covers head_dim 64 "
                                   "and 128, got " + std::to_string(head_dim) + " (NKV_ATTENTION_KERNEL_AUTO picks SM80 for it)");
  }
  if (num_heads_q > 65535) {
    fail(NKV_STATUS_NOT_SUPPORTED, "argument 'options.kernel': the NKV_ATTENTION_KERNEL_SM90 family takes at most 65535 "
                                   "query heads, got " + std::to_string(num_heads_q));
  }
}

AttentionMask check_options(const nkv_attention_options* options, int32_t head_dim, bool decode) {
  AttentionMask mask;
  mask.softmax_scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  if (options == nullptr) return mask;
  check_struct_size("options", options->struct_size, kOptionsFirstSize, "the first nkv_attention_options");
  if (options->causal != 0 && options->causal != 1) {
    fail_argument("argument 'options.causal': expected 0 or 1, got " + std::to_string(options->causal));
  }
  const float scale = options->softmax_scale;
  if (!std::isfinite(scale) || scale < 0.0f) {
    fail_argument("argument 'options.softmax_scale': expected 0 (1/sqrt(head_dim)) or a finite positive value, got " +
                  std::to_string(scale));
  }
  if (!std::isfinite(options->softcap) || options->softcap < 0.0f) {
    fail_argument("argument 'options.softcap': expected 0 (off) or a finite positive value, got " +
                  std::to_string(options->softcap));
  }
  if (options->window_left < -1) {
    fail_argument("argument 'options.window_left': expected -1 (unlimited) or >= 0, got " +
                  std::to_string(options->window_left));
  }
  if (options->num_splits < 0 || (!decode && options->num_splits != 0)) {
    fail_argument(std::string("argument 'options.num_splits': expected ") +
                  (decode ? ">= 0 (0: chosen from the device)" : "0 (splits apply to decode plans only)") +
                  ", got " + std::to_string(options->num_splits));
  }
  mask.causal = options->causal == 1;
  if (scale > 0.0f) mask.softmax_scale = scale;
  mask.softcap = options->softcap;
  mask.window_left = options->window_left;
  return mask;
}

void check_heads(int32_t num_heads_q, int32_t num_heads_kv, int32_t head_dim) {
  if (num_heads_q < 1) fail_argument("argument 'num_heads_q': expected >= 1, got " + std::to_string(num_heads_q));
  if (num_heads_kv < 1) fail_argument("argument 'num_heads_kv': expected >= 1, got " + std::to_string(num_heads_kv));
  if (num_heads_q % num_heads_kv != 0) {
    fail_argument("arguments 'num_heads_q' (" + std::to_string(num_heads_q) + ") and 'num_heads_kv' (" +
                  std::to_string(num_heads_kv) + "): num_heads_q must be a multiple of num_heads_kv (GQA/MQA groups)");
  }
  if (head_dim != 64 && head_dim != 96 && head_dim != 128 && head_dim != 256) {
    fail(NKV_STATUS_NOT_SUPPORTED,
         "argument 'head_dim': supported head dimensions are 64, 96, 128 and 256, got " + std::to_string(head_dim));
  }
}

// Checks cu_seqlens (batch + 1 host values from 0, non-decreasing) and copies them.
std::vector<int32_t> check_cu_seqlens(const char* name, const int32_t* cu, int32_t batch) {
  if (cu == nullptr) fail_argument(std::string("argument '") + name + "' must not be NULL");
  std::vector<int32_t> copy(cu, cu + batch + 1);
  if (copy[0] != 0) fail_argument(std::string("argument '") + name + "': entry 0 must be 0, got " + std::to_string(copy[0]));
  for (int32_t b = 0; b < batch; ++b) {
    if (copy[b + 1] < copy[b]) {
      fail_argument(std::string("argument '") + name + "': must be non-decreasing, but entry " + std::to_string(b + 1) +
                    " (" + std::to_string(copy[b + 1]) + ") is smaller than entry " + std::to_string(b) + " (" +
                    std::to_string(copy[b]) + ")");
    }
  }
  return copy;
}

int64_t max_length(const std::vector<int32_t>& cu) {
  int64_t longest = 0;
  for (size_t b = 0; b + 1 < cu.size(); ++b) longest = std::max<int64_t>(longest, cu[b + 1] - cu[b]);
  return longest;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Cuts each sequence's keys into pieces of whole tiles; every (sequence, KV head) pair's piece runs as its
// own thread block. Fixed (`fixed` > 0): at most `fixed`
// equal pieces per sequence, so results do not depend on the GPU. Otherwise one piece length for all
// sequences, chosen by a model of the GPU as `slots` blocks streaming at once: a length c makes
// blocks = sum over sequences of ceil(L / c) x KV heads, which run in ceil(blocks / slots) waves of
// about c + kPieceOverheadKeys keys each. The c with the fewest wave-keys wins, the longest on ties
// (fewer partial results to merge). Without a GPU model (`slots` == 0) every sequence is one piece.
// The pieces of a sequence are equal and every KV head gets the same cut, except in quantized plans
// whose blocks all run at once: those go out by dispatch round (below).
void plan_decode_splits(nkv_attention_plan& plan, int32_t fixed, int64_t slots) {
  const int64_t longest = std::max<int64_t>(plan.max_seqlen_k, 1);
  int64_t chunk = longest;
  if (fixed == 0 && slots > 0) {
    auto blocks_for = [&](int64_t c) {
      int64_t blocks = 0;
      for (int32_t length : plan.seqlens_k) blocks += std::max<int64_t>(1, ceil_div(length, c));
      return blocks * plan.num_heads_kv;
    };
    int64_t best_cost = std::numeric_limits<int64_t>::max();
    // Enough unsplit blocks for several full waves: splitting cannot help.
    const int64_t most_parts = blocks_for(chunk) >= 4 * slots ? 1 : kMaxDecodePieces;
    for (int64_t parts = 1; parts <= most_parts; ++parts) {
      const int64_t c = std::max<int64_t>(kMinKeysPerPiece, ceil_div(ceil_div(longest, parts), kDecodeKeyTile) * kDecodeKeyTile);
      const int64_t cost = ceil_div(blocks_for(c), slots) * (c + kPieceOverheadKeys);
      if (cost < best_cost) {
        best_cost = cost;
        chunk = c;
      }
      if (c == kMinKeysPerPiece) break;
    }
  }
  // Each sequence's cut: as many pieces as the chunk length asks for, then equal parts of whole tiles
  // (never one long piece and a short remainder). A sequence without keys still gets one (empty) piece:
  // it writes O = 0, LSE = -inf.
  const int64_t batch = plan.batch, heads = plan.num_heads_kv;
  std::vector<int64_t> tiles(batch), step(batch), pieces(batch), partial_first(batch + 1, 0);
  for (int64_t s = 0; s < batch; ++s) {
    tiles[s] = ceil_div(plan.seqlens_k[s], kDecodeKeyTile);
    const int64_t parts = fixed > 0 ? fixed : std::max<int64_t>(1, ceil_div(plan.seqlens_k[s], chunk));
    step[s] = std::max<int64_t>(1, ceil_div(tiles[s], parts));
    pieces[s] = std::max<int64_t>(1, ceil_div(tiles[s], step[s]));
    partial_first[s + 1] = partial_first[s] + pieces[s] * heads;  // a pair's partials: pieces[s] neighbours
  }
  plan.max_splits = batch > 0 ? static_cast<int32_t>(*std::max_element(pieces.begin(), pieces.end())) : 1;
  plan.splits.assign(static_cast<size_t>(partial_first[batch]), DecodeSplit{});
  auto place = [&](int64_t block, int64_t s, int64_t h, int64_t piece, int64_t begin_tile, int64_t end_tile) {
    plan.splits[static_cast<size_t>(block)] = {static_cast<int32_t>(s),
                                               static_cast<int32_t>(h),
                                               static_cast<int32_t>(begin_tile * kDecodeKeyTile),
                                               static_cast<int32_t>(std::min<int64_t>(plan.seqlens_k[s], end_tile * kDecodeKeyTile)),
                                               plan.seqlens_k[s],
                                               static_cast<int32_t>(pieces[s]),
                                               static_cast<int32_t>(partial_first[s] + h * pieces[s]),
                                               static_cast<int32_t>(piece)};
  };
  const int64_t blocks = partial_first[batch];
  const int64_t sms = plan.context != nullptr ? plan.context->multiprocessor_count : 0;
  const bool one_row_block = static_cast<int64_t>(plan.q_len) * (plan.num_heads_q / heads) <= kDecodeRowsPerTile;
  const bool by_round = plan.kv_code_bits > 0 && fixed == 0 && slots > 0 && plan.max_splits > 1 && blocks <= slots && sms > 0 && one_row_block;
  if (!by_round) {
    // (sequence, piece, KV head) order: the KV heads of one key range are neighbours in the grid.
    int64_t block = 0;
    for (int64_t s = 0; s < batch; ++s) {
      for (int64_t i = 0; i < pieces[s]; ++i) {
        for (int64_t h = 0; h < heads; ++h) place(block++, s, h, i, i * step[s], (i + 1) * step[s]);
      }
    }
    return;
  }
  // A quantized plan whose blocks all fit at once. The GPU hands blocks out in grid order, about one per SM per
  // round of `sms` blocks, and on an SM the blocks handed out earlier run faster (the schedulers favour older
  // warps: on an H200 at b8 x L32768, KIVI-2's blocks of the three rounds took 53, 57 and 61 us for the same keys,
  // bench/NOTES.md q15). So the pieces go out last piece first (by rank from the end, then sequence, then KV head),
  // and a pair's pieces share its tiles by their blocks' rounds: the last round's blocks, the youngest wherever
  // they land, take kEarlierRoundsGain less than the others; the last piece's fp16 residual counts as
  // kResidualTiles; boundaries fall on the quantized kernels' 128-key chunks. The earlier rounds are not told
  // apart: the hardware's map is not the model's (one GPC's SMs receive two blocks of the first round), and
  // weighting them apart lost there.
  std::vector<int64_t> block_of_piece(static_cast<size_t>(blocks));  // at the piece's partial index
  int64_t block = 0;
  for (int64_t rank = 0; rank < plan.max_splits; ++rank) {
    for (int64_t s = 0; s < batch; ++s) {
      if (pieces[s] <= rank) continue;
      for (int64_t h = 0; h < heads; ++h) block_of_piece[static_cast<size_t>(partial_first[s] + h * pieces[s] + pieces[s] - 1 - rank)] = block++;
    }
  }
  const int64_t last_round = (blocks - 1) / sms;
  auto weight = [&](int64_t b) { return b / sms < last_round ? 1.0 + kEarlierRoundsGain : 1.0; };
  for (int64_t s = 0; s < batch; ++s) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t* own = block_of_piece.data() + partial_first[s] + h * pieces[s];
      double total = 0.0;
      for (int64_t i = 0; i < pieces[s]; ++i) total += weight(own[i]);
      double share = 0.0;
      int64_t begin = 0;
      for (int64_t i = 0; i < pieces[s]; ++i) {
        share += weight(own[i]);
        const double end_tile = static_cast<double>(tiles[s] + kResidualTiles) * share / total;
        int64_t end = i + 1 == pieces[s] ? tiles[s] : std::llround(end_tile / kChunkTiles) * kChunkTiles;
        end = std::min(std::max(end, begin), tiles[s]);
        place(own[i], s, h, i, begin, end);
        begin = end;
      }
    }
  }
}

// Copies the plan's index arrays (and reserves the decode partials) in one device allocation. On the
// CPU backend the "device" pointers are the host vectors themselves.
void place_plan(nkv_attention_plan& plan) {
  const nkv_context& c = *plan.context;
  if (c.backend != NKV_BACKEND_CUDA) {
    plan.device_cu_seqlens_q = plan.cu_seqlens_q.data();
    plan.device_cu_seqlens_k = plan.cu_seqlens_k.data();
    plan.device_splits = plan.splits.data();
    return;
  }
  struct Part {
    const void* host;
    size_t bytes;
    size_t offset;
  };
  const bool decode = plan.kind == NKV_ATTENTION_DECODE;
  // Partial results and merge counters exist only where some pair has more than one piece. A counter
  // per (pair, row block of at least kDecodeRowsPerTile packed query rows), zero between runs.
  const bool merging = decode && plan.max_splits > 1;
  const int64_t packed_rows = static_cast<int64_t>(plan.q_len) * (decode ? plan.num_heads_q / plan.num_heads_kv : 0);
  const size_t partial_rows = merging ? plan.splits.size() * packed_rows : 0;
  const std::vector<int32_t> zero_counters(
      merging ? static_cast<size_t>(plan.batch) * plan.num_heads_kv * decode_merge_counters_per_pair(plan) : 0, 0);
  Part parts[] = {
      {plan.cu_seqlens_q.data(), plan.cu_seqlens_q.size() * sizeof(int32_t), 0},
      {plan.cu_seqlens_k.data(), plan.cu_seqlens_k.size() * sizeof(int32_t), 0},
      {plan.splits.data(), plan.splits.size() * sizeof(DecodeSplit), 0},
      {zero_counters.data(), zero_counters.size() * sizeof(int32_t), 0},
      {nullptr, partial_rows * plan.head_dim * sizeof(float), 0},
      {nullptr, partial_rows * sizeof(float), 0},
  };
  size_t total = 0;
  size_t uploaded = 0;  // the index arrays come first; the partials need no upload
  for (Part& p : parts) {
    p.offset = total;
    total += (p.bytes + 255) / 256 * 256;
    if (p.host != nullptr) uploaded = total;
  }
  // One staging copy and one upload for all index arrays.
  std::vector<char> staging(uploaded);
  for (const Part& p : parts) {
    if (p.host != nullptr && p.bytes > 0) std::memcpy(staging.data() + p.offset, p.host, p.bytes);
  }
  char* block = static_cast<char*>(cuda::allocate(c.device_ordinal, total));
  plan.device_block = block;
  if (uploaded > 0) cuda::upload(c.device_ordinal, c.stream, block, staging.data(), uploaded);
  plan.device_cu_seqlens_q = reinterpret_cast<const int32_t*>(block + parts[0].offset);
  plan.device_cu_seqlens_k = reinterpret_cast<const int32_t*>(block + parts[1].offset);
  plan.device_splits = reinterpret_cast<const DecodeSplit*>(block + parts[2].offset);
  plan.merge_counters = reinterpret_cast<int32_t*>(block + parts[3].offset);
  plan.partial_o = reinterpret_cast<float*>(block + parts[4].offset);
  plan.partial_lse = reinterpret_cast<float*>(block + parts[5].offset);
}

void release_plan(nkv_attention_plan* plan) noexcept {
  if (plan->device_block != nullptr) cuda::release(plan->context->device_ordinal, plan->device_block);
  delete plan;
}

struct PlanDeleter {
  void operator()(nkv_attention_plan* plan) const noexcept { release_plan(plan); }
};
using PlanPtr = std::unique_ptr<nkv_attention_plan, PlanDeleter>;

nkv_attention_plan& check_plan(nkv_attention_plan* plan, nkv_attention_kind kind) {
  if (plan == nullptr) fail_argument("argument 'plan' must not be NULL");
  if (plan->kind != kind) {
    fail_argument(std::string("argument 'plan': a ") + (plan->kind == NKV_ATTENTION_VARLEN ? "varlen" : "decode") +
                  " plan was passed to the " + (kind == NKV_ATTENTION_VARLEN ? "varlen" : "decode") + " op");
  }
  return *plan;
}

// Common checks of Q/K/V/O: dtype, shape, unit last stride; on CUDA also 16-byte vectors (the kernels
// move 8 halves at a time). The CPU backend takes any element-aligned view.
void check_attention_tensor(const char* name, const nkv_tensor& t, std::initializer_list<int64_t> shape,
                            const nkv_context& context) {
  check_dtype(name, t, {NKV_DTYPE_FLOAT16, NKV_DTYPE_BFLOAT16});
  check_shape(name, t, shape);
  check_unit_inner_stride(name, t);
  if (context.backend == NKV_BACKEND_CUDA) check_vector_aligned(name, t, 8);
}

void check_rows_at_least(const char* name, const nkv_tensor& t, int64_t rows, const char* what) {
  if (t.shape[0] < rows) {
    fail_argument(std::string("argument '") + name + "': " + std::to_string(t.shape[0]) + " rows, but the plan's " +
                  what + " needs " + std::to_string(rows));
  }
}

void check_outputs_disjoint(const nkv_tensor& o, const nkv_tensor* lse, const nkv_tensor& q, const nkv_tensor& k,
                            const nkv_tensor& v, const char* k_name = "k", const char* v_name = "v") {
  check_elements_disjoint("o", o);
  check_disjoint("o", o, "q", q);
  check_disjoint("o", o, k_name, k);
  check_disjoint("o", o, v_name, v);
  if (lse != nullptr) {
    check_elements_disjoint("lse", *lse);
    check_disjoint("lse", *lse, "q", q);
    check_disjoint("lse", *lse, k_name, k);
    check_disjoint("lse", *lse, v_name, v);
    check_disjoint("lse", *lse, "o", o);
  }
}

HeadMajorStrides strides_of(const nkv_tensor& t, int first) { return {t.strides[first], t.strides[first + 1]}; }

// The parts both decode entry points share: LSE [batch, heads, q_len] and the backend call.
void check_decode_lse(const nkv_tensor* lse, const nkv_context& c, const nkv_attention_plan& p) {
  if (lse == nullptr) return;
  const nkv_tensor& tl = check_tensor("lse", lse, c);
  check_dtype("lse", tl, {NKV_DTYPE_FLOAT32});
  check_shape("lse", tl, {p.batch, p.num_heads_q, p.q_len});
  check_unit_inner_stride("lse", tl);
}

const nkv_tensor& check_decode_q(const nkv_attention_plan& p, const nkv_tensor* q) {
  const nkv_tensor& tq = check_tensor("q", q, *p.context);
  check_attention_tensor("q", tq, {p.batch, p.q_len, p.num_heads_q, p.head_dim}, *p.context);
  return tq;
}

// O [batch, q_len, heads, head_dim] of q's dtype and the LSE; returns O.
const nkv_tensor& check_decode_outputs(const nkv_attention_plan& p, const nkv_tensor& tq, const nkv_tensor* o,
                                       const nkv_tensor* lse) {
  const nkv_context& c = *p.context;
  const nkv_tensor& to = check_tensor("o", o, c);
  check_attention_tensor("o", to, {p.batch, p.q_len, p.num_heads_q, p.head_dim}, c);
  check_same_dtype("o", to, "q", tq);
  check_decode_lse(lse, c, p);
  return to;
}

// Q, O and LSE of a decode call into its backend arguments (DecodeAttentionArgs, QuantizedDecodeArgs).
template <typename Args>
void set_decode_tensors(Args& a, const nkv_tensor& q, const nkv_tensor& o, const nkv_tensor* lse) {
  a.q = q.data;
  a.q_batch_stride = q.strides[0];
  a.q_strides = strides_of(q, 1);
  a.o = o.data;
  a.o_batch_stride = o.strides[0];
  a.o_strides = strides_of(o, 1);
  if (lse != nullptr) {
    a.lse = static_cast<float*>(lse->data);
    a.lse_batch_stride = lse->strides[0];
    a.lse_head_stride = lse->strides[1];
  }
}

void run_decode(const nkv_attention_plan& p, DecodeAttentionArgs& a, const nkv_tensor& q, const nkv_tensor& o,
                const nkv_tensor* lse) {
  a.dtype = static_cast<nkv_dtype>(q.dtype);
  set_decode_tensors(a, q, o, lse);
  if (p.batch == 0) return;
  if (p.context->backend == NKV_BACKEND_CUDA) {
    cuda::attention_decode(p, a);
  } else {
    cpu::attention_decode(p, a);
  }
}

// The checks and fields both plan kinds share, in the order the messages report them.
PlanPtr new_plan(nkv_context* context, nkv_attention_plan** out_plan, const nkv_attention_options* options,
                 nkv_attention_kind kind, int32_t num_heads_q, int32_t num_heads_kv, int32_t head_dim, int32_t batch) {
  const nkv_context& c = check_context(context);
  require_out(out_plan, "out_plan");
  check_heads(num_heads_q, num_heads_kv, head_dim);
  const bool decode = kind == NKV_ATTENTION_DECODE;
  const AttentionMask mask = check_options(options, head_dim, decode);
  const nkv_attention_kernel kernel = check_kernel(options, c, decode);
  const int32_t kv_page_size = check_kv_page_size(options, decode);
  const int32_t kv_code_bits = check_kv_code_bits(options, decode, kv_page_size);
  if (kv_code_bits != 0 && head_dim != 64 && head_dim != 128) {
    fail_argument("argument 'options.kv_code_bits': quantized caches hold head_dim 64 or 128, the plan's is " + std::to_string(head_dim));
  }
  check_device(c);
  if (batch < 0) fail_argument("argument 'batch': expected >= 0, got " + std::to_string(batch));
  check_cuda_limits(c, batch, num_heads_kv);
  PlanPtr plan(new nkv_attention_plan());
  plan->context = context;
  plan->kind = kind;
  plan->kernel = kernel;
  plan->kv_page_size = kv_page_size;
  plan->kv_code_bits = kv_code_bits;
  plan->batch = batch;
  plan->num_heads_q = num_heads_q;
  plan->num_heads_kv = num_heads_kv;
  plan->head_dim = head_dim;
  plan->mask = mask;
  return plan;
}

// Paged K/V of an attention call: pools [num_pages, page_size, num_heads_kv, head_dim] of q's dtype, contiguous,
// and an int32 block table [>= batch rows, >= the pages of the plan's longest sequence].
struct PagedKv {
  const nkv_tensor* k;
  const nkv_tensor* v;
  const nkv_tensor* table;
  int32_t page_shift;
};

PagedKv check_paged_kv(const nkv_attention_plan& p, const nkv_tensor& tq, const nkv_tensor* k_pool, const nkv_tensor* v_pool,
                       const nkv_tensor* block_table) {
  const nkv_context& c = *p.context;
  const int64_t b = p.batch, hkv = p.num_heads_kv, d = p.head_dim;
  const nkv_tensor& tk = check_tensor("k_pool", k_pool, c);
  check_attention_tensor("k_pool", tk, {-1, -1, hkv, d}, c);
  check_same_dtype("k_pool", tk, "q", tq);
  const nkv_tensor& tv = check_tensor("v_pool", v_pool, c);
  check_attention_tensor("v_pool", tv, {tk.shape[0], tk.shape[1], hkv, d}, c);
  check_same_dtype("v_pool", tv, "q", tq);
  const int64_t page_size = tk.shape[1];
  if (!is_page_size(page_size)) {
    fail_argument("argument 'k_pool': expected a page size (dimension 1) that is a power of two <= 256, got shape " +
                  shape_string(tk));
  }
  check_kv_layout(p, page_size);
  if (tk.shape[0] * page_size > std::numeric_limits<int32_t>::max()) {  // the kernel's row indices are 32-bit
    fail(NKV_STATUS_NOT_SUPPORTED, "argument 'k_pool': " + std::to_string(tk.shape[0] * page_size) +
                                       " token rows; at most " + std::to_string(std::numeric_limits<int32_t>::max()) + " per pool");
  }
  for (const nkv_tensor* pool : {&tk, &tv}) {
    const char* name = pool == &tk ? "k_pool" : "v_pool";
    if (pool->strides[2] != d || pool->strides[1] != hkv * d || pool->strides[0] != page_size * hkv * d) {
      fail_argument(std::string("argument '") + name + "': expected a contiguous [num_pages, page_size, num_heads_kv, "
                    "head_dim] pool, got shape " + shape_string(*pool));
    }
  }
  const nkv_tensor& table = check_tensor("block_table", block_table, c);
  check_dtype("block_table", table, {NKV_DTYPE_INT32});
  check_shape("block_table", table, {-1, -1});
  check_unit_inner_stride("block_table", table);
  check_rows_at_least("block_table", table, b, "batch");
  const int64_t pages_needed = (p.max_seqlen_k + page_size - 1) / page_size;
  if (table.shape[1] < pages_needed) {
    fail_argument("argument 'block_table': " + std::to_string(table.shape[1]) + " columns, but the plan's longest sequence (" +
                  std::to_string(p.max_seqlen_k) + " keys) needs " + std::to_string(pages_needed) + " pages of " +
                  std::to_string(page_size));
  }
  int32_t shift = 0;
  while ((int64_t{1} << shift) < page_size) ++shift;
  return {&tk, &tv, &table, shift};
}

// Batched K and V of q's dtype, as decode takes them and a virtual-memory cache's views are: [batch, capacity,
// heads, head_dim], or with the token dimension split in blocks, [batch, blocks, tokens, heads, head_dim]
// (KeyBlocks); sequence b's keys are the first tokens of entry b. Returns V (and the blocks in `blocks`).
const nkv_tensor& check_batched_kv(const nkv_attention_plan& p, const nkv_tensor& tq, const nkv_tensor& tk, const nkv_tensor* v,
                                   KeyBlocks& blocks) {
  const nkv_context& c = *p.context;
  const int64_t b = p.batch, hkv = p.num_heads_kv, d = p.head_dim;
  const bool split = tk.ndim == 5;
  if (split) {
    check_attention_tensor("k", tk, {b, -1, -1, hkv, d}, c);
  } else {
    check_attention_tensor("k", tk, {b, -1, hkv, d}, c);
  }
  check_same_dtype("k", tk, "q", tq);
  const nkv_tensor& tv = check_tensor("v", v, c);
  if (split) {
    check_attention_tensor("v", tv, {b, tk.shape[1], tk.shape[2], hkv, d}, c);
  } else {
    check_attention_tensor("v", tv, {b, tk.shape[1], hkv, d}, c);
  }
  check_same_dtype("v", tv, "q", tq);
  if (split && (tk.shape[2] < 1 || tk.shape[2] > std::numeric_limits<int32_t>::max())) {
    fail_argument("arguments 'k' and 'v': expected 1 .. 2^31 - 1 tokens per block (dimension 2), got " + std::to_string(tk.shape[2]));
  }
  // Blocks beyond what any sequence may hold change nothing: capped, the product cannot overflow.
  const int64_t capacity = split ? std::min<int64_t>(tk.shape[1], kMaxSequenceLength) * tk.shape[2] : tk.shape[1];
  if (capacity < p.max_seqlen_k) {
    fail_argument("arguments 'k' and 'v': capacity of " + std::to_string(capacity) +
                  " tokens per sequence, but the plan's longest sequence has " + std::to_string(p.max_seqlen_k) + " keys");
  }
  blocks = KeyBlocks{};
  if (split) {
    blocks = key_blocks(static_cast<int32_t>(tk.shape[2]), tk.strides[1], tv.strides[1], tk.strides[2], tv.strides[2]);
  }
  return tv;
}

// check_outputs_disjoint over paged K/V: the pools and the block table.
void check_paged_outputs_disjoint(const nkv_tensor& o, const nkv_tensor* lse, const nkv_tensor& q, const PagedKv& kv) {
  check_outputs_disjoint(o, lse, q, *kv.k, *kv.v, "k_pool", "v_pool");
  if (lse != nullptr) check_disjoint("lse", *lse, "block_table", *kv.table);
  check_disjoint("o", o, "block_table", *kv.table);
}

const nkv_tensor& check_varlen_q(const nkv_attention_plan& p, const nkv_tensor* q) {
  const nkv_tensor& tq = check_tensor("q", q, *p.context);
  check_attention_tensor("q", tq, {-1, p.num_heads_q, p.head_dim}, *p.context);
  check_rows_at_least("q", tq, p.total_q, "cu_seqlens_q");
  return tq;
}

// The rest of a varlen call once Q, K and V are checked: O and LSE, then the kernel. `paged`: K and V are
// pools read through its block table (rows of tk and tv: tokens within a page). Otherwise 4-D and 5-D K and
// V are batched (check_batched_kv, which gave `blocks`), 3-D ones packed rows.
void run_varlen(const nkv_attention_plan& p, const nkv_tensor& tq, const nkv_tensor& tk, const nkv_tensor& tv,
                const nkv_tensor* o, const nkv_tensor* lse, const PagedKv* paged, const KeyBlocks& blocks = KeyBlocks{}) {
  const nkv_context& c = *p.context;
  const int64_t hq = p.num_heads_q, d = p.head_dim;
  const nkv_tensor& to = check_tensor("o", o, c);
  check_attention_tensor("o", to, {tq.shape[0], hq, d}, c);
  check_same_dtype("o", to, "q", tq);
  if (lse != nullptr) {
    const nkv_tensor& tl = check_tensor("lse", lse, c);
    check_dtype("lse", tl, {NKV_DTYPE_FLOAT32});
    check_shape("lse", tl, {hq, tq.shape[0]});
    check_unit_inner_stride("lse", tl);
  }
  if (paged != nullptr) {
    check_paged_outputs_disjoint(to, lse, tq, *paged);
  } else {
    check_outputs_disjoint(to, lse, tq, tk, tv);
  }
  if (p.total_q > std::numeric_limits<int32_t>::max() || p.total_k > std::numeric_limits<int32_t>::max()) {
    fail(NKV_STATUS_NOT_SUPPORTED, "varlen attention over more than 2^31 - 1 query or key rows");
  }

  VarlenAttentionArgs a;
  a.dtype = static_cast<nkv_dtype>(tq.dtype);
  a.q = tq.data;
  a.q_strides = strides_of(tq, 0);
  const int key_row_dim = tk.ndim - 3;  // [.., rows, heads, d]: rows of pages, sequences or blocks of sequences
  a.k = tk.data;
  a.k_strides = strides_of(tk, key_row_dim);
  a.v = tv.data;
  a.v_strides = strides_of(tv, key_row_dim);
  a.o = to.data;
  a.o_strides = strides_of(to, 0);
  if (lse != nullptr) {
    a.lse = static_cast<float*>(lse->data);
    a.lse_head_stride = lse->strides[0];
  }
  if (paged == nullptr && tk.ndim >= 4) {
    a.batched_kv = true;
    a.k_batch_stride = tk.strides[0];
    a.v_batch_stride = tv.strides[0];
    a.key_blocks = blocks;
  }
  if (paged != nullptr) {
    a.block_table = static_cast<const int32_t*>(paged->table->data);
    a.block_table_stride = paged->table->strides[0];
    a.page_shift = paged->page_shift;
  }
  if (p.batch == 0 || p.total_q == 0) return;
  if (c.backend == NKV_BACKEND_CUDA) {
    cuda::attention_varlen(p, a);
  } else {
    cpu::attention_varlen(p, a);
  }
}

}  // namespace

extern "C" {

NKV_API nkv_status nkv_attention_plan_varlen(nkv_context* context, const nkv_attention_options* options,
                                             int32_t num_heads_q, int32_t num_heads_kv, int32_t head_dim,
                                             int32_t batch, const int32_t* cu_seqlens_q, const int32_t* cu_seqlens_k,
                                             nkv_attention_plan** out_plan) {
  return guard("nkv_attention_plan_varlen", [&] {
    PlanPtr plan = new_plan(context, out_plan, options, NKV_ATTENTION_VARLEN, num_heads_q, num_heads_kv, head_dim, batch);
    check_kernel_covers(plan->kernel, head_dim, num_heads_q);
    plan->cu_seqlens_q = check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, batch);
    plan->cu_seqlens_k = check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, batch);
    plan->total_q = plan->cu_seqlens_q[batch];
    plan->total_k = plan->cu_seqlens_k[batch];
    plan->max_seqlen_q = max_length(plan->cu_seqlens_q);
    plan->max_seqlen_k = max_length(plan->cu_seqlens_k);
    if (std::max(plan->max_seqlen_q, plan->max_seqlen_k) > kMaxSequenceLength) {
      fail(NKV_STATUS_NOT_SUPPORTED, "a sequence of " + std::to_string(std::max(plan->max_seqlen_q, plan->max_seqlen_k)) +
                                         " rows: at most " + std::to_string(kMaxSequenceLength) + " per sequence");
    }
    place_plan(*plan);
    *out_plan = plan.release();
  });
}

NKV_API nkv_status nkv_attention_plan_decode(nkv_context* context, const nkv_attention_options* options,
                                             int32_t num_heads_q, int32_t num_heads_kv, int32_t head_dim,
                                             int32_t batch, int32_t q_len, const int32_t* seqlens_k,
                                             nkv_attention_plan** out_plan) {
  return guard("nkv_attention_plan_decode", [&] {
    PlanPtr plan = new_plan(context, out_plan, options, NKV_ATTENTION_DECODE, num_heads_q, num_heads_kv, head_dim, batch);
    const nkv_context& c = *context;
    if (q_len < 1 || q_len > kMaxDecodeQueries) {
      fail_argument("argument 'q_len': expected 1.." + std::to_string(kMaxDecodeQueries) + " queries per sequence, got " +
                    std::to_string(q_len));
    }
    if (seqlens_k == nullptr && batch > 0) fail_argument("argument 'seqlens_k' must not be NULL");
    plan->q_len = q_len;
    if (batch > 0) plan->seqlens_k.assign(seqlens_k, seqlens_k + batch);
    int64_t total_k = 0;
    for (int32_t b = 0; b < batch; ++b) {
      if (seqlens_k[b] < 0) {
        fail_argument("argument 'seqlens_k': entry " + std::to_string(b) + " is negative (" +
                      std::to_string(seqlens_k[b]) + ")");
      }
      if (seqlens_k[b] > kMaxSequenceLength) {
        fail(NKV_STATUS_NOT_SUPPORTED, "argument 'seqlens_k': entry " + std::to_string(b) + " (" +
                                           std::to_string(seqlens_k[b]) + ") exceeds the " +
                                           std::to_string(kMaxSequenceLength) + " keys a sequence may have");
      }
      total_k += seqlens_k[b];
      plan->max_seqlen_k = std::max<int64_t>(plan->max_seqlen_k, seqlens_k[b]);
    }
    if (total_k > std::numeric_limits<int32_t>::max() ||
        static_cast<int64_t>(batch) * q_len * num_heads_q > std::numeric_limits<int32_t>::max()) {
      fail(NKV_STATUS_NOT_SUPPORTED, "decode plan of " + std::to_string(total_k) + " keys and " +
                                         std::to_string(static_cast<int64_t>(batch) * q_len * num_heads_q) +
                                         " output rows: at most " + std::to_string(std::numeric_limits<int32_t>::max()) +
                                         " of each per plan");
    }
    plan->total_q = static_cast<int64_t>(batch) * q_len;
    plan->total_k = total_k;
    plan->max_seqlen_q = batch > 0 ? q_len : 0;
    int64_t slots = 0;
    if (c.backend == NKV_BACKEND_CUDA) slots = plan->kv_code_bits > 0 ? cuda::quantized_decode_block_slots(*plan) : cuda::decode_block_slots(*plan);
    plan_decode_splits(*plan, options != nullptr ? options->num_splits : 0, slots);
    place_plan(*plan);
    *out_plan = plan.release();
  });
}

NKV_API nkv_status nkv_attention_plan_destroy(nkv_attention_plan* plan) {
  return guard("nkv_attention_plan_destroy", [&] {
    if (plan == nullptr) return;
    const nkv_context& c = *plan->context;
    synchronize_on(c);
    release_plan(plan);
  });
}

NKV_API nkv_status nkv_attention_plan_get_info(const nkv_attention_plan* plan, nkv_attention_plan_info* out_info) {
  return guard("nkv_attention_plan_get_info", [&] {
    if (plan == nullptr) fail_argument("argument 'plan' must not be NULL");
    require_out(out_info, "out_info");
    nkv_attention_plan_info info{};
    info.kind = plan->kind;
    info.batch = plan->batch;
    info.num_heads_q = plan->num_heads_q;
    info.num_heads_kv = plan->num_heads_kv;
    info.head_dim = plan->head_dim;
    info.q_len = plan->q_len;
    info.num_splits = plan->kind == NKV_ATTENTION_DECODE ? plan->max_splits : 1;
    info.total_q = plan->total_q;
    info.total_k = plan->total_k;
    info.max_seqlen_q = plan->max_seqlen_q;
    info.max_seqlen_k = plan->max_seqlen_k;
    info.softmax_scale = plan->mask.softmax_scale;
    // The layout of the first release; fields appended later are filled only for callers that have them.
    write_sized_struct(out_info, info, "out_info", offsetof(nkv_attention_plan_info, reserved) + sizeof(int32_t),
                       "the first nkv_attention_plan_info");
  });
}

NKV_API nkv_status nkv_attention_varlen(nkv_attention_plan* plan, const nkv_tensor* q, const nkv_tensor* k,
                                        const nkv_tensor* v, const nkv_tensor* o, const nkv_tensor* lse) {
  return guard("nkv_attention_varlen", [&] {
    const nkv_attention_plan& p = check_plan(plan, NKV_ATTENTION_VARLEN);
    const nkv_context& c = *p.context;
    const int64_t hkv = p.num_heads_kv, d = p.head_dim;
    const nkv_tensor& tq = check_varlen_q(p, q);
    const nkv_tensor& tk = check_tensor("k", k, c);
    if (tk.ndim >= 4) {  // batched: [batch, capacity, num_heads_kv, head_dim], or in blocks of tokens
      if (p.kernel == NKV_ATTENTION_KERNEL_SM90) {
        fail(NKV_STATUS_NOT_SUPPORTED, "argument 'plan': batched K/V ([batch, capacity, num_heads_kv, head_dim]) run on "
                                       "the SM80 kernel family; make the plan with NKV_ATTENTION_KERNEL_AUTO or _SM80");
      }
      KeyBlocks blocks;
      const nkv_tensor& tv = check_batched_kv(p, tq, tk, v, blocks);
      return run_varlen(p, tq, tk, tv, o, lse, nullptr, blocks);
    }
    check_attention_tensor("k", tk, {-1, hkv, d}, c);
    check_same_dtype("k", tk, "q", tq);
    check_rows_at_least("k", tk, p.total_k, "cu_seqlens_k");
    const nkv_tensor& tv = check_tensor("v", v, c);
    check_attention_tensor("v", tv, {-1, hkv, d}, c);
    check_same_dtype("v", tv, "q", tq);
    check_rows_at_least("v", tv, p.total_k, "cu_seqlens_k");
    run_varlen(p, tq, tk, tv, o, lse, nullptr);
  });
}

NKV_API nkv_status nkv_attention_varlen_paged(nkv_attention_plan* plan, const nkv_tensor* q, const nkv_tensor* k_pool,
                                              const nkv_tensor* v_pool, const nkv_tensor* block_table, const nkv_tensor* o,
                                              const nkv_tensor* lse) {
  return guard("nkv_attention_varlen_paged", [&] {
    const nkv_attention_plan& p = check_plan(plan, NKV_ATTENTION_VARLEN);
    if (p.kernel == NKV_ATTENTION_KERNEL_SM90) {
      fail(NKV_STATUS_NOT_SUPPORTED, "argument 'plan': paged K/V run on the SM80 kernel family; make the plan with "
                                     "NKV_ATTENTION_KERNEL_AUTO or _SM80");
    }
    const nkv_tensor& tq = check_varlen_q(p, q);
    const PagedKv kv = check_paged_kv(p, tq, k_pool, v_pool, block_table);
    run_varlen(p, tq, *kv.k, *kv.v, o, lse, &kv);
  });
}

NKV_API nkv_status nkv_attention_decode(nkv_attention_plan* plan, const nkv_tensor* q, const nkv_tensor* k,
                                        const nkv_tensor* v, const nkv_tensor* o, const nkv_tensor* lse) {
  return guard("nkv_attention_decode", [&] {
    const nkv_attention_plan& p = check_plan(plan, NKV_ATTENTION_DECODE);
    check_kv_layout(p, 0);
    const nkv_tensor& tq = check_decode_q(p, q);
    const nkv_tensor& tk = check_tensor("k", k, *p.context);
    DecodeAttentionArgs a;
    const nkv_tensor& tv = check_batched_kv(p, tq, tk, v, a.key_blocks);
    const nkv_tensor& to = check_decode_outputs(p, tq, o, lse);
    check_outputs_disjoint(to, lse, tq, tk, tv);

    a.k = tk.data;
    a.k_batch_stride = tk.strides[0];
    a.k_strides = strides_of(tk, tk.ndim - 3);
    a.v = tv.data;
    a.v_batch_stride = tv.strides[0];
    a.v_strides = strides_of(tv, tv.ndim - 3);
    run_decode(p, a, tq, to, lse);
  });
}

NKV_API nkv_status nkv_attention_decode_kv_pointers(nkv_attention_plan* plan, const nkv_tensor* q,
                                                    const nkv_tensor* k_pointers, const nkv_tensor* v_pointers,
                                                    int64_t token_stride, int64_t head_stride, const nkv_tensor* o,
                                                    const nkv_tensor* lse) {
  return guard("nkv_attention_decode_kv_pointers", [&] {
    const nkv_attention_plan& p = check_plan(plan, NKV_ATTENTION_DECODE);
    check_kv_layout(p, 0);
    const nkv_context& c = *p.context;
    const nkv_tensor& tq = check_decode_q(p, q);
    const char* table_names[] = {"k_pointers", "v_pointers"};
    const nkv_tensor* tables[] = {k_pointers, v_pointers};
    for (int i = 0; i < 2; ++i) {
      const nkv_tensor& table = check_tensor(table_names[i], tables[i], c);
      check_dtype(table_names[i], table, {NKV_DTYPE_INT64});
      check_shape(table_names[i], table, {p.batch});
      check_unit_inner_stride(table_names[i], table);
    }
    const char* stride_names[] = {"token_stride", "head_stride"};
    const int64_t strides[] = {token_stride, head_stride};
    for (int i = 0; i < 2; ++i) {
      if (strides[i] < 0) {
        fail_argument(std::string("argument '") + stride_names[i] + "': expected >= 0, got " + std::to_string(strides[i]));
      }
      if (c.backend == NKV_BACKEND_CUDA && strides[i] % 8 != 0) {
        fail_argument(std::string("argument '") + stride_names[i] + "': must be a multiple of 8 elements (16-byte vectors) on "
                      "CUDA, got " + std::to_string(strides[i]));
      }
    }
    const nkv_tensor& to = check_decode_outputs(p, tq, o, lse);
    // The tables stand in for K and V in the overlap rule (the memory they point to is the caller's to keep apart).
    check_outputs_disjoint(to, lse, tq, *k_pointers, *v_pointers, "k_pointers", "v_pointers");

    DecodeAttentionArgs a;
    a.k_pointers = static_cast<const int64_t*>(k_pointers->data);
    a.v_pointers = static_cast<const int64_t*>(v_pointers->data);
    a.k_strides = {token_stride, head_stride};
    a.v_strides = {token_stride, head_stride};
    run_decode(p, a, tq, to, lse);
  });
}

NKV_API nkv_status nkv_attention_decode_paged(nkv_attention_plan* plan, const nkv_tensor* q, const nkv_tensor* k_pool,
                                              const nkv_tensor* v_pool, const nkv_tensor* block_table, const nkv_tensor* o,
                                              const nkv_tensor* lse) {
  return guard("nkv_attention_decode_paged", [&] {
    const nkv_attention_plan& p = check_plan(plan, NKV_ATTENTION_DECODE);
    const nkv_tensor& tq = check_decode_q(p, q);
    const PagedKv kv = check_paged_kv(p, tq, k_pool, v_pool, block_table);
    const nkv_tensor &tk = *kv.k, &tv = *kv.v, &table = *kv.table;
    const nkv_tensor& to = check_decode_outputs(p, tq, o, lse);
    check_paged_outputs_disjoint(to, lse, tq, kv);

    DecodeAttentionArgs a;
    a.k = tk.data;
    a.k_strides = strides_of(tk, 1);  // row = token within the page, head
    a.v = tv.data;
    a.v_strides = strides_of(tv, 1);
    a.block_table = static_cast<const int32_t*>(table.data);
    a.block_table_stride = table.strides[0];
    a.page_shift = kv.page_shift;
    run_decode(p, a, tq, to, lse);
  });
}

NKV_API nkv_status nkv_attention_decode_quantized(nkv_attention_plan* plan, const nkv_tensor* q,
                                                  const nkv_quantized_kv_cache* cache, int32_t layer, const nkv_tensor* o,
                                                  const nkv_tensor* lse) {
  return guard("nkv_attention_decode_quantized", [&] {
    const nkv_attention_plan& p = check_plan(plan, NKV_ATTENTION_DECODE);
    if (p.kv_page_size != 0) {
      fail_argument("argument 'plan': made for K/V pools of page size " + std::to_string(p.kv_page_size) + " (options.kv_page_size)");
    }
    const nkv_quantized_kv_cache& x = require_handle(cache, "cache");
    if (p.kv_code_bits != 0 && p.kv_code_bits != x.bits) {
      fail_argument("argument 'plan': made for " + std::to_string(p.kv_code_bits) + "-bit codes (options.kv_code_bits), the cache holds " +
                    std::to_string(x.bits) + "-bit codes");
    }
    if (x.context != p.context) fail_argument("argument 'cache': made on another context than the plan");
    if (layer < 0 || layer >= x.num_layers) {
      fail_argument("argument 'layer': expected 0.." + std::to_string(x.num_layers - 1) + ", got " + std::to_string(layer));
    }
    if (x.step_tokens > 0 && !x.written[layer]) {
      fail_argument("argument 'layer': layer " + std::to_string(layer) + " is not written since the last append (its new tokens' K/V are missing)");
    }
    if (p.num_heads_kv != x.num_heads_kv || p.head_dim != x.head_dim) {
      fail_argument("argument 'plan': made for " + std::to_string(p.num_heads_kv) + " KV heads of head_dim " + std::to_string(p.head_dim) +
                    ", the cache holds " + std::to_string(x.num_heads_kv) + " of " + std::to_string(x.head_dim));
    }
    if (p.batch > x.max_slots) {
      fail_argument("argument 'plan': batch " + std::to_string(p.batch) + " exceeds the cache's max_slots (" + std::to_string(x.max_slots) + ")");
    }
    for (int32_t b = 0; b < p.batch; ++b) {
      const int32_t length = x.alive[b] ? x.lengths[b] : 0;
      if (p.seqlens_k[b] != length) {
        fail_argument("argument 'plan': seqlens_k[" + std::to_string(b) + "] is " + std::to_string(p.seqlens_k[b]) + " but slot " +
                      std::to_string(b) + " holds " + std::to_string(length) + " tokens" + (x.alive[b] ? "" : " (not alive)"));
      }
    }
    const nkv_tensor& tq = check_decode_q(p, q);
    check_dtype("q", tq, {NKV_DTYPE_FLOAT16});
    const nkv_tensor& to = check_decode_outputs(p, tq, o, lse);
    const QuantizedKvLayer l = quantized_kv_layer(x, layer);
    nkv_tensor cache_memory{};
    cache_memory.data = x.memory;
    cache_memory.dtype = NKV_DTYPE_UINT8;
    cache_memory.device = device_type_of(*x.context);
    cache_memory.ndim = 1;
    cache_memory.shape[0] = static_cast<int64_t>(x.bytes);
    cache_memory.strides[0] = 1;
    check_outputs_disjoint(to, lse, tq, cache_memory, cache_memory, "cache", "cache");

    QuantizedDecodeArgs a;
    set_decode_tensors(a, tq, to, lse);
    a.kv = l;
    if (p.batch == 0) return;
    if (p.context->backend == NKV_BACKEND_CUDA) {
      cuda::attention_decode_quantized(p, a);
    } else {
      cpu::attention_decode_quantized(p, a);
    }
  });
}

}  // extern "C"
