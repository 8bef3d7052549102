/*
 * NativeKv — the C ABI. This header is the whole contract between the native library and its callers
 * (the C# façade, engines written in C or C++, benchmark scripts through ctypes).
 *
 * Rules every function follows:
 *  - returns nkv_status; on failure nkv_last_error() holds a message for the calling thread naming the
 *    function, the argument, the expected and the actual value, and every output is left untouched;
 *  - never throws, aborts or exits;
 *  - tensors are views of caller-owned memory; ops never allocate device memory per call;
 *  - parameter structs start with `struct_size`, set by the caller to sizeof(struct), so fields can be
 *    added at the end without breaking old callers.
 */
#ifndef NATIVEKV_NATIVEKV_H
#define NATIVEKV_NATIVEKV_H

#include <stddef.h>
#include <stdint.h>

#include "nativekv/export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------------
 * Versions
 * ------------------------------------------------------------------------------------------------- */

/* Incremented whenever a signature, a struct layout or an enum value changes incompatibly. */
#define NKV_ABI_VERSION 1

/* Library version as "major.minor.patch". */
NKV_API const char* nkv_version(void);
/* The ABI version the library was built with (compare with NKV_ABI_VERSION). */
NKV_API uint32_t nkv_abi_version(void);

/* ---------------------------------------------------------------------------------------------------
 * Status and errors
 * ------------------------------------------------------------------------------------------------- */

typedef enum nkv_status {
  NKV_STATUS_SUCCESS = 0,
  NKV_STATUS_INVALID_ARGUMENT = 1, /* a null pointer, wrong dtype, shape mismatch, value out of range */
  NKV_STATUS_NOT_SUPPORTED = 2,    /* a valid request this build or backend does not implement */
  NKV_STATUS_NO_DEVICE = 3,        /* CUDA asked for but no usable device (message gives the driver's reason) */
  NKV_STATUS_OUT_OF_MEMORY = 4,    /* host or device allocation failed */
  NKV_STATUS_DEVICE_ERROR = 5,     /* a CUDA call failed (message names the call and CUDA's error) */
  NKV_STATUS_INTERNAL = 6          /* a bug in NativeKv: please report the message */
} nkv_status;

/* The message of the last failed call on this thread; every function that returns nkv_status clears it
 * first, so it is "" after a success. One exception: nkv_cuda_device_count leaves the reason there when it reports 0 devices.
 * Valid until the next NativeKv call on this thread. */
NKV_API const char* nkv_last_error(void);
/* A constant name for a status, e.g. "NKV_STATUS_INVALID_ARGUMENT". */
NKV_API const char* nkv_status_name(nkv_status status);

/* ---------------------------------------------------------------------------------------------------
 * Tensors
 * ------------------------------------------------------------------------------------------------- */

typedef enum nkv_dtype {
  NKV_DTYPE_FLOAT32 = 0,
  NKV_DTYPE_FLOAT16 = 1,
  NKV_DTYPE_BFLOAT16 = 2,
  NKV_DTYPE_INT8 = 3,
  NKV_DTYPE_UINT8 = 4,
  NKV_DTYPE_INT32 = 5,
  NKV_DTYPE_INT64 = 6,
  NKV_DTYPE_FLOAT64 = 7
} nkv_dtype;

typedef enum nkv_device_type {
  NKV_DEVICE_HOST = 0, /* ordinary (or pinned) host memory */
  NKV_DEVICE_CUDA = 1  /* memory of the context's CUDA device */
} nkv_device_type;

#define NKV_MAX_DIMS 6

/* A view of caller-owned memory. Strides are in elements, not bytes; shape[i] >= 0. Entries past ndim
 * are ignored. `dtype` and `device` hold nkv_dtype and nkv_device_type values. `data` may be NULL only
 * when the view has no elements, and must be aligned to the element size. Every element's byte offset
 * must be addressable (no wrap-around). Negative strides are NKV_STATUS_NOT_SUPPORTED. An op's outputs
 * must not overlap its inputs or each other (NKV_STATUS_INVALID_ARGUMENT). */
typedef struct nkv_tensor {
  void* data;
  int32_t dtype;
  int32_t device;
  int32_t ndim;
  int32_t reserved; /* must be 0 */
  int64_t shape[NKV_MAX_DIMS];
  int64_t strides[NKV_MAX_DIMS];
} nkv_tensor;

/* Size of one element of `dtype` in bytes, 0 for an unknown dtype. */
NKV_API size_t nkv_dtype_size(int32_t dtype);

/* ---------------------------------------------------------------------------------------------------
 * Devices
 * ------------------------------------------------------------------------------------------------- */

/* Number of CUDA devices. 0 (with NKV_STATUS_SUCCESS) when the library has CUDA but the machine has no
 * driver or device; the reason is then in nkv_last_error(). */
NKV_API nkv_status nkv_cuda_device_count(int32_t* out_count);

typedef struct nkv_device_properties {
  uint32_t struct_size;
  int32_t ordinal;
  char name[256];
  int32_t compute_capability_major;
  int32_t compute_capability_minor;
  int32_t multiprocessor_count;
  int32_t l2_cache_bytes;
  uint64_t total_memory_bytes;
  uint64_t shared_memory_per_block_optin_bytes;
  int32_t memory_bus_width_bits;
  int32_t reserved;
} nkv_device_properties;

/* Fills `out` (whose struct_size the caller sets) for CUDA device `ordinal`. */
NKV_API nkv_status nkv_cuda_device_properties(int32_t ordinal, nkv_device_properties* out);

/* ---------------------------------------------------------------------------------------------------
 * Contexts
 * ------------------------------------------------------------------------------------------------- */

typedef enum nkv_backend {
  NKV_BACKEND_AUTO = 0, /* CUDA when a device is usable, else CPU; nkv_context_backend tells which */
  NKV_BACKEND_CPU = 1,
  NKV_BACKEND_CUDA = 2
} nkv_backend;

typedef struct nkv_context nkv_context;

typedef struct nkv_context_options {
  uint32_t struct_size;
  int32_t backend;        /* nkv_backend */
  int32_t device_ordinal; /* CUDA device, ignored on CPU */
  int32_t reserved;       /* must be 0 */
  void* stream;           /* caller-owned cudaStream_t to run on, or NULL for a stream the context owns */
} nkv_context_options;

/* `options` may be NULL for NKV_BACKEND_AUTO on device 0 with an owned stream. */
NKV_API nkv_status nkv_context_create(const nkv_context_options* options, nkv_context** out_context);
/* NULL is accepted and does nothing. Waits for the context's outstanding work first. Destroy every
 * buffer of the context before the context itself. */
NKV_API nkv_status nkv_context_destroy(nkv_context* context);
NKV_API nkv_status nkv_context_backend(const nkv_context* context, int32_t* out_backend);
/* The CUDA device ordinal; 0 on the CPU backend. */
NKV_API nkv_status nkv_context_device_ordinal(const nkv_context* context, int32_t* out_ordinal);
/* The cudaStream_t the context runs on (NULL on the CPU backend). */
NKV_API nkv_status nkv_context_stream(const nkv_context* context, void** out_stream);
/* Blocks until all work issued on the context's stream is done; reports asynchronous CUDA errors. */
NKV_API nkv_status nkv_context_synchronize(nkv_context* context);

/* ---------------------------------------------------------------------------------------------------
 * Buffers: memory owned by NativeKv on the context's device (256-byte aligned). Host memory on the
 * CPU backend, cudaMalloc memory on CUDA. Copies and memset are ordered on the context's stream;
 * upload and download return once the data has arrived.
 * ------------------------------------------------------------------------------------------------- */

typedef struct nkv_buffer nkv_buffer;

/* size_bytes may be 0 (a valid, empty buffer). */
NKV_API nkv_status nkv_buffer_create(nkv_context* context, uint64_t size_bytes, nkv_buffer** out_buffer);
/* NULL is accepted and does nothing. The buffer must not be used by work still in flight, and its
 * context must still exist. */
NKV_API nkv_status nkv_buffer_destroy(nkv_buffer* buffer);
NKV_API nkv_status nkv_buffer_data(const nkv_buffer* buffer, void** out_data);
NKV_API nkv_status nkv_buffer_size(const nkv_buffer* buffer, uint64_t* out_size_bytes);
/* The device type of the buffer's memory (nkv_device_type). */
NKV_API nkv_status nkv_buffer_device(const nkv_buffer* buffer, int32_t* out_device);
/* Host -> buffer, `size_bytes` at `offset_bytes`; returns when the copy is complete. */
NKV_API nkv_status nkv_buffer_upload(nkv_buffer* buffer, uint64_t offset_bytes, const void* host_source,
                                     uint64_t size_bytes);
/* Buffer -> host; waits for earlier work on the context's stream, returns when the copy is complete. */
NKV_API nkv_status nkv_buffer_download(const nkv_buffer* buffer, uint64_t offset_bytes, void* host_destination,
                                       uint64_t size_bytes);
/* Buffer -> buffer of the same context, stream-ordered. Two ranges of one buffer must not overlap. */
NKV_API nkv_status nkv_buffer_copy(nkv_buffer* destination, uint64_t destination_offset_bytes,
                                   const nkv_buffer* source, uint64_t source_offset_bytes, uint64_t size_bytes);
/* Sets `size_bytes` bytes at `offset_bytes` to `value` (0..255), stream-ordered. */
NKV_API nkv_status nkv_buffer_memset(nkv_buffer* buffer, uint64_t offset_bytes, int32_t value, uint64_t size_bytes);

/* ---------------------------------------------------------------------------------------------------
 * Quantization: int8 vector-wise (LLM.int8() first half, bitsandbytes' int8_vectorwise_quant semantics)
 *
 * For a [rows, cols] float32/float16/bfloat16 matrix and axis ROW (one scale per row; COLUMN: per column):
 *   absmax = max |x| over the vector, ignoring outliers (|x| >= outlier_threshold, when a threshold is set)
 *   scale  = absmax / 127                                    (float32)
 *   code   = round_half_to_even(x / scale), clamped to [-127, 127]   (IEEE float32 division; int8;
 *            0 for outliers; the CUDA backend returns exactly the CPU reference's codes and scales,
 *            except that a NaN scale's payload bits may differ)
 * A vector whose absmax is 0 gets scale 0 and codes 0. Non-finite input: NaN anywhere in a vector makes
 * its scale NaN and its codes 0; an infinity (not excluded as an outlier) makes its scale +inf and its
 * codes 0. Dequantization computes code * scale (float32) and rounds to the output dtype.
 * The outlier columns (indices of columns holding any outlier) are written in ascending order.
 * Input and output matrices need unit stride along columns; the row stride is free (views of a larger
 * matrix are accepted). Scales and outlier outputs must be contiguous.
 * ------------------------------------------------------------------------------------------------- */

typedef enum nkv_quant_axis {
  NKV_QUANT_AXIS_ROW = 0,   /* one scale per row: scales has shape [rows] */
  NKV_QUANT_AXIS_COLUMN = 1 /* one scale per column: scales has shape [cols] */
} nkv_quant_axis;

typedef struct nkv_int8_quant_params {
  uint32_t struct_size;
  int32_t axis;            /* nkv_quant_axis */
  float outlier_threshold; /* 0 disables outlier handling; otherwise > 0 (and may be +inf) */
  int32_t reserved;        /* must be 0 */
} nkv_int8_quant_params;

/*
 * input:                [rows, cols] float32/float16/bfloat16
 * codes:                [rows, cols] int8
 * scales:               [rows] (ROW) or [cols] (COLUMN) float32
 * outlier_columns:      [cols] int32 when outlier_threshold > 0, and must be NULL when it is 0;
 *                       entries past the count are set to -1
 * outlier_column_count: [1] int32 when outlier_threshold > 0, and must be NULL when it is 0
 * All tensors live on the context's device. Runs asynchronously on the context's stream.
 */
NKV_API nkv_status nkv_int8_quantize(nkv_context* context, const nkv_int8_quant_params* params,
                                     const nkv_tensor* input, const nkv_tensor* codes, const nkv_tensor* scales,
                                     const nkv_tensor* outlier_columns, const nkv_tensor* outlier_column_count);

/* codes [rows, cols] int8, scales as above, output [rows, cols] float32/float16/bfloat16. The outlier
 * threshold in `params` is ignored. */
NKV_API nkv_status nkv_int8_dequantize(nkv_context* context, const nkv_int8_quant_params* params,
                                       const nkv_tensor* codes, const nkv_tensor* scales, const nkv_tensor* output);

/* ---------------------------------------------------------------------------------------------------
 * Attention (FlashAttention semantics)
 *
 * For one sequence with lq queries, lk keys and head h (query head h reads key/value head
 * h / (num_heads_q / num_heads_kv), so GQA and MQA need num_heads_q % num_heads_kv == 0):
 *   s[i][j] = softmax_scale * dot(Q[i], K[j])
 *   s[i][j] = softcap * tanh(s[i][j] / softcap)                            (when softcap > 0)
 *   key j is visible to query i when   j <= i + (lk - lq)                  (when causal)
 *                                 and  j >= i + (lk - lq) - window_left    (when window_left >= 0)
 *   O[i] = sum_j softmax_j(s[i]) V[j] over the visible keys;  LSE[i] = log(sum_j exp(s[i][j])) (natural log)
 * The causal mask is aligned to the bottom-right corner: the last query sees every key, so a chunk of
 * lq new queries over lk = cached + lq keys sees the whole cache plus its own causal part (chunked prefill).
 * A query that sees no key (lk == 0, or masked out entirely) gets O = 0 and LSE = -inf.
 * Q, K, V, O are float16 or bfloat16 (all the same); head_dim is 64, 96, 128 or 256; LSE is float32.
 * Accumulation is float32 on CUDA and float64 on the CPU backend.
 *
 * The CUDA backend needs compute capability 8.0 or newer and takes at most 65535 sequences and 65535 KV
 * heads per plan (NKV_STATUS_NOT_SUPPORTED otherwise); it computes scores in float32, so a softmax_scale or
 * soft-cap large enough to overflow float32 scores gives non-finite results there. Destroy every plan
 * before its context.
 *
 * Work is described once by a plan, made on the host from host-side lengths (validated and copied
 * there; the plan's device copies are complete when plan creation returns), and run any number of times
 * (e.g. once per layer) on the plan's context's stream. A plan runs one op at a time; it must outlive the
 * work it launched (destroy waits for the context's stream). The same plan on the same inputs gives
 * bit-identical results, with or without an LSE output.
 * ------------------------------------------------------------------------------------------------- */

/* Which kernel family runs a plan (FlashInfer's backend="fa2"/"fa3"). */
typedef enum nkv_attention_kernel {
  NKV_ATTENTION_KERNEL_AUTO = 0, /* the best one available for the device and the plan */
  NKV_ATTENTION_KERNEL_SM80 = 1, /* FlashAttention-2 design (mma.sync, cp.async): every CUDA GPU, compute capability >= 8.0 */
  NKV_ATTENTION_KERNEL_SM90 = 2  /* FlashAttention-3 design (wgmma, TMA): Hopper (sm_90a) only; NKV_STATUS_NOT_SUPPORTED
                                    where the device, this build or the plan's shape has no such kernel */
} nkv_attention_kernel;

typedef struct nkv_attention_options {
  uint32_t struct_size;
  int32_t causal;        /* 0 or 1 */
  float softmax_scale;   /* > 0, or 0 for 1/sqrt(head_dim) */
  float softcap;         /* 0 (off) or > 0 */
  int32_t window_left;   /* -1 (unlimited) or >= 0 */
  int32_t num_splits;    /* decode: 0 picks one piece length for all sequences from a model of the device (its
                            SM count and the blocks per SM that keep enough loads in flight) and cuts each
                            sequence's keys into equal parts of at most that length, so results depend on the
                            GPU; n >= 1 cuts every sequence into at most n equal parts of whole 64-key tiles,
                            making results independent of the GPU. Varlen: must be 0. */
  int32_t kernel;        /* nkv_attention_kernel. Only AUTO on the CPU backend; decode runs the SM80 family on every
                            GPU. Callers built against a header without this field (struct_size 24) get AUTO. */
  int32_t kv_page_size;  /* decode: 0, or the page size of the pools this plan reads with nkv_attention_decode_paged
                            (a power of two <= 256). Small pages scattered over a pool cost the loads address
                            translation, so a plan for pages under 256 tokens cuts the keys into more pieces to
                            keep more loads in flight. A plan with
                            kv_page_size > 0 runs only nkv_attention_decode_paged over pools of that page size; one
                            with 0 runs every decode entry point. Varlen: must be 0. (This field was `reserved`,
                            which had to be 0.) */
  int32_t kv_code_bits;  /* decode: 0, or the code bits (2, 4, 8) of the quantized caches this plan reads with
                            nkv_attention_decode_quantized: that kernel does more arithmetic per byte than the fp16
                            decode, so its plan cuts the keys into pieces for as many blocks as fit the GPU at once.
                            A plan with kv_code_bits > 0 runs only nkv_attention_decode_quantized over caches of those
                            bits; one with 0 runs every decode entry point. Varlen: must be 0. Callers built against a
                            header without this field (struct_size 32) get 0. */
} nkv_attention_options;

typedef struct nkv_attention_plan nkv_attention_plan;

typedef enum nkv_attention_kind {
  NKV_ATTENTION_VARLEN = 0,
  NKV_ATTENTION_DECODE = 1
} nkv_attention_kind;

/*
 * Varlen (packed) attention: sequence b owns query rows [cu_seqlens_q[b], cu_seqlens_q[b+1]) and key rows
 * [cu_seqlens_k[b], cu_seqlens_k[b+1]). Both arrays are HOST memory of batch + 1 int32 values, starting at
 * 0 and non-decreasing; they are copied, so the caller may free them on return. Lengths may differ between
 * Q and K and may be 0. `options` may be NULL (non-causal, default scale, no soft-cap, no window).
 */
NKV_API nkv_status nkv_attention_plan_varlen(nkv_context* context, const nkv_attention_options* options,
                                             int32_t num_heads_q, int32_t num_heads_kv, int32_t head_dim,
                                             int32_t batch, const int32_t* cu_seqlens_q, const int32_t* cu_seqlens_k,
                                             nkv_attention_plan** out_plan);

/*
 * Decode attention over a KV cache (flash-decoding): every sequence has q_len (1..16) new queries, and
 * seqlens_k[b] keys (HOST memory, batch values, each >= 0), which include the new tokens' own keys. The
 * keys of each sequence may be split across thread blocks; the block that finishes a sequence's last
 * part merges the partial results, in a fixed order (no second kernel). The plan owns the partial
 * results and the merge counters, so a plan runs one op at a time. seqlens_k is copied.
 */
NKV_API nkv_status nkv_attention_plan_decode(nkv_context* context, const nkv_attention_options* options,
                                             int32_t num_heads_q, int32_t num_heads_kv, int32_t head_dim,
                                             int32_t batch, int32_t q_len, const int32_t* seqlens_k,
                                             nkv_attention_plan** out_plan);

/* NULL is accepted and does nothing. Waits for the context's outstanding work first. */
NKV_API nkv_status nkv_attention_plan_destroy(nkv_attention_plan* plan);

typedef struct nkv_attention_plan_info {
  uint32_t struct_size;
  int32_t kind; /* nkv_attention_kind */
  int32_t batch;
  int32_t num_heads_q;
  int32_t num_heads_kv;
  int32_t head_dim;
  int32_t q_len;          /* decode: queries per sequence; varlen: 0 */
  int32_t num_splits;     /* decode: the most pieces any (sequence, KV head) pair is cut into; varlen: 1 */
  int64_t total_q;        /* varlen: cu_seqlens_q[batch]; decode: batch * q_len */
  int64_t total_k;        /* varlen: cu_seqlens_k[batch]; decode: sum of seqlens_k */
  int64_t max_seqlen_q;
  int64_t max_seqlen_k;
  float softmax_scale;    /* the scale in effect */
  int32_t reserved;
} nkv_attention_plan_info;

/* The caller sets out_info->struct_size; on return it holds the size this library filled in. */
NKV_API nkv_status nkv_attention_plan_get_info(const nkv_attention_plan* plan, nkv_attention_plan_info* out_info);

/*
 * On CUDA, Q, K, V and O start on 16-byte boundaries and every stride but the last is a multiple of 8
 * elements (the kernels move 16-byte vectors); the CPU backend takes any element-aligned view.
 * q:   [rows_q, num_heads_q, head_dim]    rows_q >= total_q; any row and head strides, unit last stride
 * k,v: [rows_k, num_heads_kv, head_dim]   rows_k >= total_k; likewise
 *   or [batch, capacity, num_heads_kv, head_dim] (batched, as nkv_attention_decode takes them and a virtual-
 *      memory cache's views are): sequence b's cu_seqlens_k[b + 1] - cu_seqlens_k[b] keys are the first tokens
 *      of entry b, capacity >= each; any batch, token and head strides; or in blocks, [batch, blocks,
 *      block_tokens, num_heads_kv, head_dim] (capacity blocks x block_tokens, token t of an entry being token
 *      t % block_tokens of its block t / block_tokens; any block stride). Batched K/V run on the SM80 kernel
 *      family (a plan made with NKV_ATTENTION_KERNEL_SM90 is refused): the Hopper kernel's tensor-map loads
 *      read whole tiles past a sequence's last key, which a cache may not have mapped.
 * o:   [rows_q, num_heads_q, head_dim]    rows past total_q are left untouched
 * lse: [num_heads_q, rows_q] float32, unit last stride; may be NULL; columns past total_q are left untouched
 * All on the plan's context's device. Asynchronous on the context's stream.
 */
NKV_API nkv_status nkv_attention_varlen(nkv_attention_plan* plan, const nkv_tensor* q, const nkv_tensor* k,
                                        const nkv_tensor* v, const nkv_tensor* o, const nkv_tensor* lse);

/*
 * q:   [batch, q_len, num_heads_q, head_dim]
 * k,v: [batch, capacity, num_heads_kv, head_dim] with capacity >= every seqlens_k[b]; any batch, token and
 *      head strides (the token stride may exceed num_heads_kv * head_dim, e.g. layers interleaved), unit
 *      last stride; or in blocks of tokens, [batch, blocks, block_tokens, num_heads_kv, head_dim] with
 *      capacity = blocks x block_tokens: token t is token t % block_tokens of block t / block_tokens (the
 *      token-major virtual cache's views: a block per page)
 * o:   [batch, q_len, num_heads_q, head_dim]
 * lse: [batch, num_heads_q, q_len] float32, unit last stride; may be NULL
 * Query t of sequence b is query row t of lq = q_len over lk = seqlens_k[b] keys in the formulas above.
 */
NKV_API nkv_status nkv_attention_decode(nkv_attention_plan* plan, const nkv_tensor* q, const nkv_tensor* k,
                                        const nkv_tensor* v, const nkv_tensor* o, const nkv_tensor* lse);

/*
 * Decode with each sequence's K and V wherever the engine keeps them (a base-pointer table):
 * k_pointers, v_pointers: [batch] int64 on the context's device, the address of token 0, KV head 0,
 *      element 0 of sequence b's keys / values (memory of the context's device; 16-byte aligned on CUDA)
 * token_stride, head_stride: elements between consecutive tokens and between KV heads, the same for every
 *      sequence, >= 0 (multiples of 8 on CUDA); K and V have q's dtype and unit last stride
 * q, o, lse as in nkv_attention_decode. The library cannot check the addresses in the tables: sequence b
 * must have seqlens_k[b] readable tokens there, not overlapping o or lse.
 */
NKV_API nkv_status nkv_attention_decode_kv_pointers(nkv_attention_plan* plan, const nkv_tensor* q,
                                                    const nkv_tensor* k_pointers, const nkv_tensor* v_pointers,
                                                    int64_t token_stride, int64_t head_stride, const nkv_tensor* o,
                                                    const nkv_tensor* lse);

/*
 * Decode over a paged KV cache (vLLM's layout: an nkv_paged_kv_cache's pools and block table, or an
 * engine's own of the same layout):
 * k_pool, v_pool: [num_pages, page_size, num_heads_kv, head_dim] of q's dtype, contiguous; page_size a power
 *      of two <= 256 (16-byte aligned on CUDA)
 * block_table: int32 [rows >= batch, columns], unit last stride: row b lists sequence b's pages in token
 *      order, at least ceil(seqlens_k[b] / page_size) of them, each in 0 .. num_pages - 1 (the library cannot
 *      check device contents). With a cache's NKV_PAGED_KV_BLOCK_TABLE view, batch entry b is sequence id b.
 * q, o, lse as in nkv_attention_decode; the result equals nkv_attention_decode on the same keys laid out
 * contiguously.
 */
NKV_API nkv_status nkv_attention_decode_paged(nkv_attention_plan* plan, const nkv_tensor* q, const nkv_tensor* k_pool,
                                              const nkv_tensor* v_pool, const nkv_tensor* block_table, const nkv_tensor* o,
                                              const nkv_tensor* lse);

/*
 * Varlen (prefill, chunked prefill) over a paged KV cache (FlashInfer's BatchPrefillWithPagedKVCache): as
 * nkv_attention_varlen, except that sequence b's keys and values, cu_seqlens_k[b + 1] - cu_seqlens_k[b] of
 * them, are the first tokens of its pages block_table[b][0..] in k_pool and v_pool (shapes and rules as for
 * nkv_attention_decode_paged). For chunked prefill, append the chunk's K/V to the cache first: its queries
 * then see the cached prefix and themselves through the bottom-right causal mask. Runs the SM80 kernel
 * family on every GPU (a plan made with NKV_ATTENTION_KERNEL_SM90 is refused).
 */
NKV_API nkv_status nkv_attention_varlen_paged(nkv_attention_plan* plan, const nkv_tensor* q, const nkv_tensor* k_pool,
                                              const nkv_tensor* v_pool, const nkv_tensor* block_table, const nkv_tensor* o,
                                              const nkv_tensor* lse);

/* ---------------------------------------------------------------------------------------------------
 * Prepacking ("Prepacking: A Simple Method for Fast Prefilling and Increased Throughput", Zhao et al.)
 *
 * Prompts of different lengths are bin-packed into rows of at most row_capacity tokens (first-fit
 * decreasing), so that a batch holds few padding tokens. The packed order lists the prompts row by row;
 * packed hidden states hold every prompt's tokens back to back in that order (no padding between them),
 * which is exactly the varlen attention layout: cu_seqlens of the plan make each prompt its own causal
 * block, and the position ids restart at 0 for every prompt. Caller order: the prompts as given,
 * concatenated.
 * ------------------------------------------------------------------------------------------------- */

typedef struct nkv_pack_plan nkv_pack_plan;

/* Destroy every pack plan before its context.
 * prompt_lengths: HOST memory, prompt_count values >= 1. row_capacity: >= the longest prompt, or 0 for
 * the longest prompt. Every index array is computed on the host and kept in the context's device memory.
 * NKV_STATUS_NOT_SUPPORTED when the prompts hold more than INT32_MAX tokens (indices are int32). */
NKV_API nkv_status nkv_pack_plan_create(nkv_context* context, const int32_t* prompt_lengths, int32_t prompt_count,
                                        int32_t row_capacity, nkv_pack_plan** out_plan);
/* NULL is accepted and does nothing. Waits for the context's outstanding work first. */
NKV_API nkv_status nkv_pack_plan_destroy(nkv_pack_plan* plan);

typedef struct nkv_pack_plan_info {
  uint32_t struct_size;
  int32_t prompt_count;
  int32_t row_count;
  int32_t row_capacity;
  int32_t longest_prompt;
  int32_t reserved;
  int64_t total_tokens;              /* sum of the prompt lengths */
  int64_t padding_tokens;            /* row_count * row_capacity - total_tokens: padding of the packed rows */
  int64_t unpacked_padding_tokens;   /* prompt_count * longest_prompt - total_tokens: plain padded batching */
} nkv_pack_plan_info;

/* The caller sets out_info->struct_size; on return it holds the size this library filled in. */
NKV_API nkv_status nkv_pack_plan_get_info(const nkv_pack_plan* plan, nkv_pack_plan_info* out_info);

typedef enum nkv_pack_array {
  NKV_PACK_CU_SEQLENS = 0,    /* [prompt_count + 1]: token offset of each packed prompt, then total_tokens */
  NKV_PACK_POSITION_IDS = 1,  /* [total_tokens]: position of each packed token within its prompt */
  NKV_PACK_GATHER_INDEX = 2,  /* [total_tokens]: packed token t is caller token gather[t] */
  NKV_PACK_SCATTER_INDEX = 3, /* [total_tokens]: caller token t is packed token scatter[t] */
  NKV_PACK_PROMPT_ORDER = 4,  /* [prompt_count]: packed prompt p is caller prompt order[p] */
  NKV_PACK_ROW_STARTS = 5     /* [row_count + 1]: packed prompt index where each row starts, then prompt_count */
} nkv_pack_array;

/* Copies an index array (int32) to host memory `destination` of `capacity` values (>= the array's
 * length). out_length (may be NULL) receives the length. */
NKV_API nkv_status nkv_pack_plan_copy_array(const nkv_pack_plan* plan, int32_t which, int32_t* destination,
                                            int64_t capacity, int64_t* out_length);
/* A view of an index array in the plan's device memory (int32, 1-D), valid while the plan lives; read it,
 * never write it (the plan's own ops use it). */
NKV_API nkv_status nkv_pack_plan_array_view(const nkv_pack_plan* plan, int32_t which, nkv_tensor* out_view);

/* packed[t] = input[gather[t]]: input [rows >= total_tokens, hidden] in caller order, packed
 * [rows >= total_tokens, hidden]; any dtype (both the same), unit last stride. Rows past total_tokens are
 * left untouched. Asynchronous on the context's stream. */
NKV_API nkv_status nkv_pack_gather(const nkv_pack_plan* plan, const nkv_tensor* input, const nkv_tensor* packed);
/* output[t] = packed[scatter[t]]: the inverse of nkv_pack_gather. */
NKV_API nkv_status nkv_pack_scatter(const nkv_pack_plan* plan, const nkv_tensor* packed, const nkv_tensor* output);

/* The dense padded-batch layout that plain batching uses, for comparison: padded[p, i] = token i of caller
 * prompt p for i < its length, zeros after it; padded is [prompt_count, longest_prompt, hidden] with any
 * non-overlapping strides (unit last stride). NKV_STATUS_NOT_SUPPORTED when prompt_count * longest_prompt
 * exceeds INT32_MAX. */
NKV_API nkv_status nkv_pack_gather_padded(const nkv_pack_plan* plan, const nkv_tensor* input, const nkv_tensor* padded);
/* output[caller token] = padded[p, i]: the inverse of nkv_pack_gather_padded (padding is not read). */
NKV_API nkv_status nkv_pack_scatter_padded(const nkv_pack_plan* plan, const nkv_tensor* padded, const nkv_tensor* output);

/* ---------------------------------------------------------------------------------------------------
 * Paged KV cache (vLLM's PagedAttention layout)
 *
 * One pool of pages for every layer: per layer a K pool and a V pool [num_pages, page_size, num_heads_kv,
 * head_dim], contiguous, in the context's memory. A sequence is a list of pages (its row of the block
 * table) and a length in tokens; token t of a sequence lives in page block_table[sequence][t / page_size]
 * at offset t % page_size, its slot being page * page_size + offset. Pages are reference-counted: a fork
 * shares its parent's pages, and a sequence that appends into a shared, partly filled last page gets a
 * copy of it first (every layer's K and V), so no sequence ever sees another's writes.
 * Bookkeeping runs on the host; the block table and the lengths have device mirrors that each call
 * updates on the context's stream before it returns, so kernels queued after it see them.
 * ------------------------------------------------------------------------------------------------- */

typedef struct nkv_paged_kv_cache nkv_paged_kv_cache;

typedef struct nkv_paged_kv_cache_options {
  uint32_t struct_size;
  int32_t dtype;               /* NKV_DTYPE_FLOAT16 or NKV_DTYPE_BFLOAT16 */
  int32_t num_layers;          /* >= 1 */
  int32_t num_heads_kv;        /* >= 1 */
  int32_t head_dim;            /* >= 1, a multiple of 8 (16-byte rows) */
  int32_t page_size;           /* tokens per page: 1, 8, 16, 32, 64, 128 or 256 */
  int32_t max_sequences;       /* sequences alive at once: ids 0 .. max_sequences - 1 */
  int32_t max_sequence_length; /* tokens per sequence; the block table has ceil(this / page_size) columns */
  int64_t num_pages;           /* pages in the pool; 0: as many as byte_budget holds */
  uint64_t byte_budget;        /* with num_pages 0: bytes for the pages of all layers, K and V */
} nkv_paged_kv_cache_options;

/* Allocates the pools (uninitialized) and the device mirrors. Destroy every cache before its context. */
NKV_API nkv_status nkv_paged_kv_cache_create(nkv_context* context, const nkv_paged_kv_cache_options* options,
                                             nkv_paged_kv_cache** out_cache);
/* NULL is accepted and does nothing. Waits for the context's outstanding work first. */
NKV_API nkv_status nkv_paged_kv_cache_destroy(nkv_paged_kv_cache* cache);

/* A new, empty sequence; NKV_STATUS_OUT_OF_MEMORY when max_sequences are alive. */
NKV_API nkv_status nkv_paged_kv_cache_add_sequence(nkv_paged_kv_cache* cache, int32_t* out_sequence);
/* A new sequence with the parent's tokens, sharing its pages (prefix sharing; nothing is copied now). */
NKV_API nkv_status nkv_paged_kv_cache_fork(nkv_paged_kv_cache* cache, int32_t parent, int32_t* out_sequence);
/* Shortens a sequence to `length` tokens (0 <= length <= its length), releasing the pages past it
 * (speculative-decoding rollback). Truncating or freeing a sequence whose released pages hold tokens of the
 * last step forgets that step (its step tokens become 0). */
NKV_API nkv_status nkv_paged_kv_cache_truncate(nkv_paged_kv_cache* cache, int32_t sequence, int32_t length);
/* Releases a sequence and its pages; its id may be handed out again. */
NKV_API nkv_status nkv_paged_kv_cache_free_sequence(nkv_paged_kv_cache* cache, int32_t sequence);

/* One step: sequences[i] (HOST, distinct, alive) grows by token_counts[i] >= 0 tokens, pages allocated
 * (and shared last pages copied) as needed. All or nothing: NKV_STATUS_OUT_OF_MEMORY when the pool lacks
 * the pages, and every argument error, leave every sequence, the pool and the last step as they were.
 * The step's tokens, in argument order, are what nkv_paged_kv_cache_write stores. */
NKV_API nkv_status nkv_paged_kv_cache_append(nkv_paged_kv_cache* cache, const int32_t* sequences,
                                             const int32_t* token_counts, int32_t count);
/* Stores the last step's K and V of one layer into their slots (vLLM's reshape_and_cache): k and v are
 * [step tokens, num_heads_kv, head_dim] of the cache's dtype in the context's memory, unit last stride; on
 * CUDA their data and strides 16-byte aligned. */
NKV_API nkv_status nkv_paged_kv_cache_write(nkv_paged_kv_cache* cache, int32_t layer, const nkv_tensor* k,
                                            const nkv_tensor* v);

typedef enum nkv_paged_kv_view {
  NKV_PAGED_KV_K_POOL = 0,           /* [num_pages, page_size, num_heads_kv, head_dim] of `layer` */
  NKV_PAGED_KV_V_POOL = 1,           /* the same for V */
  NKV_PAGED_KV_BLOCK_TABLE = 2,      /* int32 [max_sequences, ceil(max_sequence_length / page_size)] */
  NKV_PAGED_KV_SEQUENCE_LENGTHS = 3, /* int32 [max_sequences]: 0 for ids not alive */
  NKV_PAGED_KV_STEP_SLOTS = 4        /* int32 [last step's tokens]: their slots, in the step's order */
} nkv_paged_kv_view;

/* A view of the cache's own memory (the context's), valid until the cache is destroyed; its contents
 * change with the calls above. Block-table entries past a sequence's pages are -1. `layer` is ignored
 * except for the pools. */
NKV_API nkv_status nkv_paged_kv_cache_view(const nkv_paged_kv_cache* cache, int32_t which, int32_t layer,
                                           nkv_tensor* out_view);

typedef struct nkv_paged_kv_cache_info {
  uint32_t struct_size;
  int32_t page_size;
  int32_t max_sequences;
  int32_t sequences;         /* alive now */
  int32_t max_pages_per_sequence;
  int32_t reserved;          /* 0 */
  int64_t num_pages;
  int64_t free_pages;
  int64_t tokens;            /* sum of the alive sequences' lengths */
  int64_t shared_pages;      /* pages held by more than one sequence */
  uint64_t bytes_per_page;   /* one page of every layer, K and V */
  int64_t step_tokens;       /* tokens of the last nkv_paged_kv_cache_append */
  int64_t empty_slots;       /* slots of held pages that hold no token of any sequence (internal fragmentation) */
} nkv_paged_kv_cache_info;

NKV_API nkv_status nkv_paged_kv_cache_get_info(const nkv_paged_kv_cache* cache, nkv_paged_kv_cache_info* out_info);
/* A sequence's length in tokens and its pages (block-table row) into pages[capacity] (HOST); out_page_count
 * receives how many it has (also when capacity is smaller, then only that many are written). */
NKV_API nkv_status nkv_paged_kv_cache_sequence(const nkv_paged_kv_cache* cache, int32_t sequence, int32_t* out_length,
                                               int32_t* pages, int32_t capacity, int32_t* out_page_count);

/* ---------------------------------------------------------------------------------------------------
 * Virtual-memory KV cache (vAttention's design: contiguous virtual memory, physical pages on demand)
 *
 * At creation the cache reserves virtual address space for max_slots slots of max_tokens tokens each;
 * physical memory is mapped in pages of the backend's granularity (2 MiB on CUDA GPUs; the CPU backend
 * uses the same size) as slots grow. A slot's K and V are virtually contiguous, so the unchanged
 * contiguous kernels (nkv_attention_decode, nkv_attention_varlen) read them through the views below.
 * Layouts:
 *   LAYER_MAJOR  one region per layer and K/V (vAttention's): [layer][K|V][slot][token][head][d]; a page
 *                holds page_bytes / (num_heads_kv * head_dim * 2) tokens of one layer's K or V.
 *   TOKEN_MAJOR  one region: [slot][block][layer][K|V][token][head][d], a block being one page that holds
 *                page_bytes / (num_layers * 2 * num_heads_kv * head_dim * 2) whole tokens of every layer (16
 *                for 32 layers of 8 x 128 fp16), so a slot wastes less than a small page, as a paged cache
 *                does. Within a page one layer's K (and V) rows of its tokens are one run: decode reads 16
 *                tokens' K and V as 64 KiB, not as 16 rows 128 KiB apart (2-3% slower from HBM). A token of
 *                every layer must fit a page (else NKV_STATUS_NOT_SUPPORTED).
 * A "block" is page i of every region of a slot: slots grow and shrink by whole blocks.
 * Physical pages are recycled: a freed slot keeps its blocks mapped for the next slot handed out
 * (deferred reclamation) until nkv_virtual_kv_cache_trim or memory pressure (a step that needs pages
 * while none are free unmaps a freed slot's blocks). Forks share whole filled pages by mapping the same
 * physical page into both slots (reference-counted); the partly filled last page is copied, and any
 * shared page a slot is about to write into is copied first (copy on write), so no slot sees another's
 * writes. Unmapping waits for the context's stream (queued kernels may still read the pages); mapping
 * never does. Appends map what their tokens need on the calling thread unless nkv_virtual_kv_cache_
 * reserve_ahead had a background thread map it beforehand.
 * ------------------------------------------------------------------------------------------------- */

typedef struct nkv_virtual_kv_cache nkv_virtual_kv_cache;

typedef enum nkv_virtual_kv_layout {
  NKV_VIRTUAL_KV_LAYER_MAJOR = 0,
  NKV_VIRTUAL_KV_TOKEN_MAJOR = 1
} nkv_virtual_kv_layout;

typedef struct nkv_virtual_kv_cache_options {
  uint32_t struct_size;
  int32_t dtype;             /* NKV_DTYPE_FLOAT16 or NKV_DTYPE_BFLOAT16 */
  int32_t layout;            /* nkv_virtual_kv_layout */
  int32_t num_layers;        /* >= 1 */
  int32_t num_heads_kv;      /* >= 1 */
  int32_t head_dim;          /* >= 1, a multiple of 8 (16-byte rows) */
  int32_t max_slots;         /* slots alive at once: ids 0 .. max_slots - 1 */
  int32_t max_tokens;        /* tokens per slot */
  uint64_t byte_budget;      /* physical bytes the cache may hold (mapped or pooled), rounded down to whole
                                blocks; 0: no limit but the device's memory */
} nkv_virtual_kv_cache_options;

/* Reserves the address space (no physical memory yet) and the device mirrors. NKV_STATUS_NOT_SUPPORTED
 * when the device has no virtual memory management. Destroy every cache before its context. */
NKV_API nkv_status nkv_virtual_kv_cache_create(nkv_context* context, const nkv_virtual_kv_cache_options* options,
                                               nkv_virtual_kv_cache** out_cache);
/* NULL is accepted and does nothing. Stops the background thread, waits for the context's outstanding
 * work, unmaps and releases every physical page and frees the address space. */
NKV_API nkv_status nkv_virtual_kv_cache_destroy(nkv_virtual_kv_cache* cache);

/* A new, empty slot (preferring a freed slot that still has blocks mapped); NKV_STATUS_OUT_OF_MEMORY when
 * max_slots are alive. */
NKV_API nkv_status nkv_virtual_kv_cache_add_slot(nkv_virtual_kv_cache* cache, int32_t* out_slot);
/* A new slot with the parent's tokens: its filled pages are mapped, shared, into the new slot; the partly
 * filled last page is copied. NKV_STATUS_OUT_OF_MEMORY (nothing changed) when that copy finds no page. */
NKV_API nkv_status nkv_virtual_kv_cache_fork(nkv_virtual_kv_cache* cache, int32_t parent, int32_t* out_slot);
/* Shortens a slot to `length` tokens (0 <= length <= its length); its blocks stay mapped. Truncating a
 * slot below tokens of the last step forgets that step. */
NKV_API nkv_status nkv_virtual_kv_cache_truncate(nkv_virtual_kv_cache* cache, int32_t slot, int32_t length);
/* Releases a slot; its blocks stay mapped for the next slot handed out. Forgets the last step if the slot
 * was in it. */
NKV_API nkv_status nkv_virtual_kv_cache_free_slot(nkv_virtual_kv_cache* cache, int32_t slot);

/* Maps the blocks `tokens` tokens of the slot need, on the calling thread (for a prefill about to
 * append them). All or nothing: NKV_STATUS_OUT_OF_MEMORY (budget or device) leaves the slot's mapping and
 * contents as they were. */
NKV_API nkv_status nkv_virtual_kv_cache_ensure_capacity(nkv_virtual_kv_cache* cache, int32_t slot, int32_t tokens);
/* Asks a background thread to map the blocks `tokens` tokens of the slot need, and returns at once: a
 * decode step that then appends into them finds them mapped and makes no driver call. Pages the thread
 * cannot get (budget reached) are left to the append. */
NKV_API nkv_status nkv_virtual_kv_cache_reserve_ahead(nkv_virtual_kv_cache* cache, int32_t slot, int32_t tokens);
/* Unmaps every block that holds no token of a live slot (freed slots' blocks, blocks past a live slot's
 * length) and returns every pooled physical page to the device. Waits for the context's stream first. */
NKV_API nkv_status nkv_virtual_kv_cache_trim(nkv_virtual_kv_cache* cache);

/* One step: slots[i] (HOST, distinct, alive) grows by token_counts[i] >= 0 tokens; blocks are mapped and
 * shared pages copied as needed. All or nothing: NKV_STATUS_OUT_OF_MEMORY, and every argument error, leave
 * every slot's length, mapping and contents and the last step as they were. */
NKV_API nkv_status nkv_virtual_kv_cache_append(nkv_virtual_kv_cache* cache, const int32_t* slots,
                                               const int32_t* token_counts, int32_t count);
/* Stores the last step's K and V of one layer (as nkv_paged_kv_cache_write): k and v are [step tokens,
 * num_heads_kv, head_dim] of the cache's dtype in the context's memory, unit last stride; on CUDA their
 * data and strides 16-byte aligned. */
NKV_API nkv_status nkv_virtual_kv_cache_write(nkv_virtual_kv_cache* cache, int32_t layer, const nkv_tensor* k,
                                              const nkv_tensor* v);

typedef enum nkv_virtual_kv_view {
  NKV_VIRTUAL_KV_K = 0,          /* [max_slots, max_tokens, num_heads_kv, head_dim] of `layer`, strided
                                    (layer-major), or [max_slots, max_blocks_per_slot, tokens_per_block,
                                    num_heads_kv, head_dim] (token-major): the layouts of nkv_attention_decode's k
                                    and nkv_attention_varlen's batched k, batch entry b = slot b (narrow
                                    dimension 0 to the plan's batch) */
  NKV_VIRTUAL_KV_V = 1,          /* the same for V */
  NKV_VIRTUAL_KV_SLOT_LENGTHS = 2, /* int32 [max_slots]: 0 for slots not alive */
  NKV_VIRTUAL_KV_STEP_ROWS = 3   /* int32 [last step's tokens]: each token's row, slot * rows_per_slot + token,
                                    in the step's order. Layer-major: the row of the K/V views seen as
                                    [max_slots * rows_per_slot, num_heads_kv, head_dim]; token-major: row r is
                                    token r % tokens_per_block of block r / tokens_per_block of those views seen
                                    as [max_slots * max_blocks_per_slot, tokens_per_block, heads, d] */
} nkv_virtual_kv_view;

/* A view of the cache's memory, valid until the cache is destroyed. Only mapped tokens may be read. */
NKV_API nkv_status nkv_virtual_kv_cache_view(const nkv_virtual_kv_cache* cache, int32_t which, int32_t layer,
                                             nkv_tensor* out_view);

typedef struct nkv_virtual_kv_cache_info {
  uint32_t struct_size;
  int32_t layout;
  int32_t max_slots;
  int32_t slots;                /* alive now */
  int32_t tokens_per_block;     /* whole tokens one block holds (layer-major: a token may straddle two blocks;
                                   token-major: blocks hold whole tokens) */
  int32_t max_blocks_per_slot;
  uint64_t page_bytes;          /* one physical page (the mapping granularity) */
  uint64_t bytes_per_block;     /* page_bytes x pages per block (2 x layers, or 1) */
  int64_t rows_per_slot;        /* see NKV_VIRTUAL_KV_STEP_ROWS */
  int64_t tokens;               /* sum of the alive slots' lengths */
  int64_t budget_pages;         /* physical pages the cache may hold */
  int64_t mapped_pages;         /* distinct physical pages mapped into some slot */
  int64_t pooled_pages;         /* held, unmapped, ready to map */
  int64_t shared_pages;         /* mapped into more than one slot */
  int64_t deferred_blocks;      /* blocks still mapped in freed slots */
  int64_t empty_token_slots;    /* token places of live slots' mapped blocks past their lengths (fragmentation) */
  int64_t step_tokens;          /* tokens of the last append */
  int64_t blocks_mapped_ahead;  /* by the background thread, since creation */
  int64_t blocks_mapped_inline; /* by the calling thread of an append, ensure_capacity or fork */
  int64_t pages_created;        /* physical pages created since creation (cuMemCreate) */
} nkv_virtual_kv_cache_info;

NKV_API nkv_status nkv_virtual_kv_cache_get_info(const nkv_virtual_kv_cache* cache, nkv_virtual_kv_cache_info* out_info);
/* A slot's length and the tokens its mapped blocks hold. */
NKV_API nkv_status nkv_virtual_kv_cache_slot(const nkv_virtual_kv_cache* cache, int32_t slot, int32_t* out_length,
                                             int64_t* out_mapped_tokens);

/* ---------------------------------------------------------------------------------------------------
 * Quantized KV cache (KIVI: "A Tuning-Free Asymmetric 2bit Quantization for KV Cache", Liu et al.)
 *
 * Slots of up to max_tokens tokens, each layer's K and V kept as b-bit codes of groups with an fp16 scale
 * and minimum, in the context's memory. A group is G values: G consecutive tokens of one key channel (keys
 * per channel), or G consecutive channels of one value token (values per token, within one head):
 *   mn = fp16(min),  s = fp16((max - mn) / (2^b - 1)),  q = round_half_even((x - mn) / s) clamped to
 *   [0, 2^b - 1],  x^ = q * s + mn (one float32 fused multiply-add).
 * A group whose scale rounds to 0 (constant) gets codes 0 and x^ = mn. K and V must be finite and within
 * fp16's range. Each slot keeps its newest tokens in fp16, a residual window of R tokens (R a multiple of G):
 * of a slot's T tokens, keys 0 .. T - T % R - 1 are quantized (a key waits in the residual until R keys are
 * there, so no group is quantized from fewer than G tokens) and values 0 .. T - R - 1 (a value is
 * quantized once R newer tokens follow it). Whether a slot's tokens came in one append or in many, its codes
 * are the same bit for bit.
 * Layouts of one layer (views below), codes packed 32 / b to an int32 word with the first in the least significant
 * bits, capacity = max_tokens rounded up to a multiple of R. The arrays that hold tokens by index (codes and groups)
 * keep a slot's tokens in layout blocks of B tokens (B = 64, or G for G = 128; a paged cache's block is its page),
 * each block head-major: one head's part of a block is contiguous, so a decode reads long runs per head. With
 * blocks = ceil(capacity / B), token t of a slot is row t % B (or its word row, its group, its unit of 8 value groups)
 * of block t / B:
 *   KEY_CODES      int32 [max_slots, blocks, num_heads_kv, B / (32 / b), head_dim]: word w of a channel holds
 *                  the block's tokens w * (32 / b) .. w * (32 / b) + 32 / b - 1
 *   KEY_GROUPS     fp16 [max_slots, blocks, num_heads_kv, B / G, head_dim / 2, 4]: the groups of the block's tokens
 *                  g * G .. g * G + G - 1 by channel pair p: {scale of 2p, scale of 2p + 1, minimum of 2p, minimum of
 *                  2p + 1}
 *   KEY_RESIDUAL   fp16 [max_slots, R, num_heads_kv, head_dim]: row i holds token T - T % R + i
 *   VALUE_CODES    int32 [max_slots, blocks, num_heads_kv, B, head_dim / (32 / b)]: a token's head row of words,
 *                  word w holding its channels w * (32 / b) ..; at 4 and 8 bits word w is entry w, at 2 bits the
 *                  even words come first, then the odd ones (head_dim 128: words 0 2 4 6 1 3 5 7)
 *   VALUE_GROUPS   fp16 [max_slots, blocks, num_heads_kv, head_dim / G, B / 8, 16]: the groups of channels
 *                  g * G .. of the block's tokens, group-major (one group of the block's tokens is contiguous), in
 *                  units of 8 tokens: the scales of the unit's tokens 0 4 1 5 2 6 3 7, then their minimums in
 *                  that order
 *   VALUE_RESIDUAL fp16 [max_slots, R, num_heads_kv, head_dim]: token t (T - R <= t < T) at row t % R
 * Block floating point (BFP; "Accurate Block Quantization in LLMs with Outliers"): each token's keys and values
 * (per head) are blocks of n consecutive channels sharing an exponent E = floor(log2(max |x|)) (int8; -128 for a
 * block of zeros) and keeping m-bit signed mantissas round_half_even(x / 2^(E + 2 - m)) clipped to
 * +-(2^(m-1) - 1); x^ = mantissa * 2^(E + 2 - m). m + 8 / n bits per element (BFP12, n = 32: 4.25). Tokens are
 * quantized as they are written (no residual window); capacity = max_tokens. Layouts of a BFP layer (layout blocks
 * of B = 64 tokens as KIVI's, blocks = ceil(capacity / 64)):
 *   KEY_CODES      int32 [max_slots, blocks, num_heads_kv, B, head_dim / (32 / m)]: m-bit two's complement
 *                  mantissas, the first in the least significant bits, channels in the layer's key order (K-sort)
 *   KEY_GROUPS     int8 [max_slots, blocks, num_heads_kv, B, head_dim / n]: the blocks' exponents
 *   KEY_RESIDUAL   fp16 [max_slots, 0, num_heads_kv, head_dim]
 *   VALUE_CODES, VALUE_GROUPS as the keys' (channels in their own order), or with NKV_KV_VALUES_FP16 of extent 0,
 *   VALUE_RESIDUAL then fp16 [max_slots, blocks, num_heads_kv, B, head_dim] holding every value.
 * K-sort (nkv_ksort_calibrate, nkv_quantized_kv_cache_set_key_permutation) orders each head's key channels so
 * that channels of similar magnitude share blocks (KIVI caches take an order too: their keys and key residual are
 * stored in it).
 * Paged caches (options.memory NKV_KV_MEMORY_PAGED) have the same layouts with max_pages pages of one block of
 * B = page_size tokens in place of max_slots slots in every array that holds tokens by index (codes, groups, BFP's
 * fp16 values); KIVI's residual windows stay [max_slots, R, ...]; NKV_QUANTIZED_KV_BLOCK_TABLE gives each slot's
 * pages.
 * Steps work as in the other caches: nkv_quantized_kv_cache_append grows slots, then
 * nkv_quantized_kv_cache_write stores (and quantizes) the step's K and V, once per layer.
 * ------------------------------------------------------------------------------------------------- */

typedef struct nkv_quantized_kv_cache nkv_quantized_kv_cache;

typedef enum nkv_kv_format {
  NKV_KV_FORMAT_KIVI = 1, /* KIVI asymmetric min/max groups: keys per channel, values per token */
  NKV_KV_FORMAT_BFP = 2   /* block floating point, keys and values per token (below) */
} nkv_kv_format;

/* Where a quantized cache's memory comes from. */
typedef enum nkv_kv_memory {
  NKV_KV_MEMORY_ALLOCATED = 0, /* every slot's memory allocated at creation */
  NKV_KV_MEMORY_VIRTUAL = 1,   /* vAttention's design: address space reserved for every slot, physical pages (2 MiB on
                                  CUDA GPUs; CUDA's virtual memory management, a memory file on the CPU backend) mapped as
                                  slots grow and returned when they are freed; the layouts and kernels are the same */
  NKV_KV_MEMORY_PAGED = 2      /* vLLM's design: the coded arrays (and BFP's fp16 values) are pools of max_pages pages of
                                  page_size tokens; a slot's token t is token t % page_size of the page that its row of the
                                  block table lists at t / page_size. Pages come from the pool as slots grow (every layer
                                  uses the same page ids) and return to it when they are freed: a slot holds the pages of
                                  its coded tokens (KIVI: keys up to the last flush, values up to the window; BFP: all).
                                  KIVI's residual windows stay per slot. */
} nkv_kv_memory;

/* What a block-floating-point cache keeps its values in. */
typedef enum nkv_kv_value_format {
  NKV_KV_VALUES_LIKE_KEYS = 0, /* the cache's format (the only choice for KIVI) */
  NKV_KV_VALUES_FP16 = 1       /* float16, as written (BFP caches) */
} nkv_kv_value_format;

typedef struct nkv_quantized_kv_cache_options {
  uint32_t struct_size;
  int32_t format;       /* nkv_kv_format */
  int32_t bits;         /* KIVI: code bits 2 or 4 (8 for testing); BFP: mantissa bits m, 4 (BFP12) or 8 (BFP16) */
  int32_t group_size;   /* KIVI: G, 32, 64 or 128, at most head_dim; BFP: block n, 16, 32 or 64, at most head_dim */
  int32_t residual;     /* KIVI: R, a positive multiple of G, or 0 for 128; BFP: must be 0 (no residual) */
  int32_t num_layers;   /* >= 1 */
  int32_t num_heads_kv; /* >= 1 */
  int32_t head_dim;     /* 64 or 128 */
  int32_t max_slots;    /* slots alive at once: ids 0 .. max_slots - 1 */
  int32_t max_tokens;   /* tokens per slot, >= 1; on CUDA every array's share of a slot (capacity in whole layout blocks
                           x num_heads_kv x its elements per token, e.g. head_dim x bits / 32 code words) < 2^32 */
  int32_t value_format; /* nkv_kv_value_format: 0, or NKV_KV_VALUES_FP16 for BFP caches (this field was `reserved`, 0) */
  int32_t memory;       /* nkv_kv_memory */
  int32_t page_size;    /* NKV_KV_MEMORY_PAGED: tokens per page, a power of two from 16 to 4096 (KIVI: a multiple of G);
                           otherwise 0. Callers built against a header without this field get 0. */
  int32_t max_pages;    /* NKV_KV_MEMORY_PAGED: pages in the pool, or 0 for enough to fill every slot to max_tokens;
                           otherwise 0 */
} nkv_quantized_kv_cache_options;

/* Allocates (or, with NKV_KV_MEMORY_VIRTUAL, reserves) every layer's codes, groups and residuals (uninitialized) in
 * the context's memory. K and V are float16. Destroy every cache before its context. With virtual memory, an append
 * maps the pages its slots' new tokens need, all or nothing (NKV_STATUS_OUT_OF_MEMORY leaves every slot as it was),
 * and freeing a slot waits for the context's stream, then unmaps and returns its pages. With NKV_KV_MEMORY_PAGED an
 * append takes the pages its slots' new tokens need from the pool, all or nothing (NKV_STATUS_OUT_OF_MEMORY when the
 * pool runs out), and freeing a slot returns its pages (work queued on the stream before is ordered before any reuse). */
NKV_API nkv_status nkv_quantized_kv_cache_create(nkv_context* context, const nkv_quantized_kv_cache_options* options,
                                                 nkv_quantized_kv_cache** out_cache);
/* NULL is accepted and does nothing. Waits for the context's outstanding work first. */
NKV_API nkv_status nkv_quantized_kv_cache_destroy(nkv_quantized_kv_cache* cache);
/* A new, empty slot (the lowest free id); NKV_STATUS_OUT_OF_MEMORY when max_slots are alive. */
NKV_API nkv_status nkv_quantized_kv_cache_add_slot(nkv_quantized_kv_cache* cache, int32_t* out_slot);
/* Releases a slot; forgets the last step if the slot was in it, which needs every layer of that step written
 * first (NKV_STATUS_INVALID_ARGUMENT otherwise: the step's other slots would keep unwritten tokens). */
NKV_API nkv_status nkv_quantized_kv_cache_free_slot(nkv_quantized_kv_cache* cache, int32_t slot);
/* One step: slots[i] (HOST, distinct, alive) grows by token_counts[i] >= 0 tokens. Every argument error
 * leaves every slot and the last step as they were. */
NKV_API nkv_status nkv_quantized_kv_cache_append(nkv_quantized_kv_cache* cache, const int32_t* slots,
                                                 const int32_t* token_counts, int32_t count);
/* Stores the last step's K and V of one layer: k and v are float16 [step tokens, num_heads_kv, head_dim] in
 * the context's memory, unit last stride (16-byte aligned rows on CUDA), the step's tokens in argument order.
 * Keys whose residual fills and values that leave the window are quantized now. Once per layer and step:
 * a second write of the same layer in one step is NKV_STATUS_INVALID_ARGUMENT (the first has already moved
 * its tokens). A layer not written in a step holds unspecified values for that step's tokens. */
NKV_API nkv_status nkv_quantized_kv_cache_write(nkv_quantized_kv_cache* cache, int32_t layer, const nkv_tensor* k,
                                                const nkv_tensor* v);

typedef enum nkv_quantized_kv_view {
  NKV_QUANTIZED_KV_KEY_CODES = 0,      /* the layouts above, of `layer` */
  NKV_QUANTIZED_KV_KEY_GROUPS = 1,
  NKV_QUANTIZED_KV_KEY_RESIDUAL = 2,
  NKV_QUANTIZED_KV_VALUE_CODES = 3,
  NKV_QUANTIZED_KV_VALUE_GROUPS = 4,
  NKV_QUANTIZED_KV_VALUE_RESIDUAL = 5,
  NKV_QUANTIZED_KV_SLOT_LENGTHS = 6,   /* int32 [max_slots]: 0 for slots not alive; `layer` is ignored */
  NKV_QUANTIZED_KV_BLOCK_TABLE = 7     /* NKV_KV_MEMORY_PAGED: int32 [max_slots, pages per slot], the page of each slot's
                                          page_size tokens (entries past a slot's length are unspecified); `layer` is
                                          ignored. Paged caches view the coded arrays (and BFP's fp16 values) with
                                          pages in place of slots, each one layout block of page_size tokens. */
} nkv_quantized_kv_view;

/* A view of the cache's memory, valid until the cache is destroyed; read it, never write it. */
NKV_API nkv_status nkv_quantized_kv_cache_view(const nkv_quantized_kv_cache* cache, int32_t which, int32_t layer,
                                               nkv_tensor* out_view);

typedef struct nkv_quantized_kv_cache_info {
  uint32_t struct_size;
  int32_t format;
  int32_t bits;
  int32_t group_size;
  int32_t residual;
  int32_t max_slots;
  int32_t slots;          /* alive now */
  int32_t capacity;       /* tokens the layout of a slot holds (max_tokens rounded up to R) */
  int64_t tokens;         /* sum of the alive slots' lengths */
  int64_t step_tokens;    /* tokens of the last append */
  uint64_t bytes;         /* the cache's layout, every layer and slot (with virtual memory: its address space) */
  uint64_t mapped_bytes;  /* physical memory held: `bytes` when allocated or paged (the pool is allocated at creation),
                             the mapped pages with virtual memory */
  int32_t page_size;      /* NKV_KV_MEMORY_PAGED: tokens per page, else 0 */
  int32_t max_pages;      /* NKV_KV_MEMORY_PAGED: pages in the pool, else 0 */
  int32_t free_pages;     /* NKV_KV_MEMORY_PAGED: pages no slot holds, else 0 */
  int32_t reserved;
} nkv_quantized_kv_cache_info;

NKV_API nkv_status nkv_quantized_kv_cache_get_info(const nkv_quantized_kv_cache* cache,
                                                   nkv_quantized_kv_cache_info* out_info);
/* A slot's length in tokens. */
NKV_API nkv_status nkv_quantized_kv_cache_slot(const nkv_quantized_kv_cache* cache, int32_t slot, int32_t* out_length);

/* The rotary-embedding pairs of a head's channels that K-sort keeps together. */
typedef enum nkv_rotary_pairs {
  NKV_ROTARY_NONE = 0,     /* no pairs: channels move one by one */
  NKV_ROTARY_HALVES = 1,   /* (i, i + head_dim / 2), GPT-NeoX / Llama */
  NKV_ROTARY_ADJACENT = 2  /* (2i, 2i + 1), GPT-J */
} nkv_rotary_pairs;

/*
 * K-sort calibration: from a sample of one layer's keys (HOST float16 or float32 [tokens >= 1, num_heads_kv,
 * head_dim], unit last stride; head_dim even with rotary pairs), per KV head the order of its channels by their
 * root-mean-square over the sample, largest first, so that channels of similar magnitude share BFP blocks.
 * With rotary pairs, pairs move as wholes, ordered by the pair's RMS, and keep their rotary layout: pair k of
 * the order takes positions (k, k + head_dim / 2) (HALVES) or (2k, 2k + 1) (ADJACENT). permutation: HOST int32
 * [num_heads_kv * head_dim]; entry h * head_dim + j is the channel of head h that goes to position j.
 * Contract: keys are permuted after rotary embedding (as written to the cache) and queries likewise at attention
 * time; q.k is then the same sum of the same products (exact up to the order of float additions).
 */
NKV_API nkv_status nkv_ksort_calibrate(const nkv_tensor* keys, int32_t rotary_pairs, int32_t* permutation);

/* Stores `layer`'s keys with their channels in this order from now on: position j of head h holds written channel
 * permutation[h * head_dim + j] (HOST int32 [num_heads_kv * head_dim], a permutation of 0 .. head_dim - 1 per head);
 * nkv_attention_decode_quantized orders the queries alike. Only while the cache holds no tokens (set it before the
 * first append). The identity until set. */
NKV_API nkv_status nkv_quantized_kv_cache_set_key_permutation(nkv_quantized_kv_cache* cache, int32_t layer,
                                                              const int32_t* permutation);

/*
 * Decode attention over one layer of a quantized cache, read in place (nothing dequantized to memory):
 * logits over the quantized keys and the fp16 residual, one softmax, and P.V over the quantized and fp16
 * values. The plan's sequence b is slot b (plan batch <= max_slots), and seqlens_k[b] must equal slot b's
 * length now (0 for a slot not alive). After an append, `layer` must have been written (its new tokens).
 * q, o: float16 [batch, q_len, num_heads_q, head_dim] as in nkv_attention_decode (head_dim and num_heads_kv those
 * of the cache); lse as there. The plan must have kv_page_size 0, and kv_code_bits 0 or the cache's bits (the
 * latter sizes its pieces for this kernel).
 * The result is that of nkv_attention_decode over the dequantized keys and values (KIVI: float32 q * s + mn; BFP:
 * mantissa x 2^(E + 2 - m), and under K-sort q.k in the stored channel order, the same products). The CPU
 * backend computes exactly that (float64). On CUDA, KIVI forms q * s (keys) and P * s (values) as float16
 * products before its float32 MMAs, so groups of very small scale (below about 2^-14 / |q| or 2^-14 / P) lose
 * precision there, as the probabilities' own float16 rounding does in nkv_attention_decode; BFP values enter the
 * MMAs as float16 numbers, exact except in blocks whose step 2^(E + 2 - m) is below 2^-24 (largest magnitude under
 * 2^-18 for BFP16, 2^-22 for BFP12: float16 inputs that small are themselves subnormal), which decode as zeros.
 */
NKV_API nkv_status nkv_attention_decode_quantized(nkv_attention_plan* plan, const nkv_tensor* q,
                                                  const nkv_quantized_kv_cache* cache, int32_t layer,
                                                  const nkv_tensor* o, const nkv_tensor* lse);

/* ---------------------------------------------------------------------------------------------------
 * Introspection, for binding generators and the managed conformance test
 * ------------------------------------------------------------------------------------------------- */

/* sizeof() of a public struct by its C name ("nkv_tensor", ...); 0 for an unknown name. */
NKV_API size_t nkv_struct_size(const char* struct_name);
/* offsetof() of a field, e.g. ("nkv_tensor", "strides"); SIZE_MAX for an unknown struct or field. */
NKV_API size_t nkv_struct_field_offset(const char* struct_name, const char* field_name);
/* Value of a public enum constant or integer macro (NKV_MAX_DIMS, NKV_ABI_VERSION) by its C name
 * ("NKV_DTYPE_BFLOAT16", ...); writes it to out_value, NKV_STATUS_INVALID_ARGUMENT for an unknown name. */
NKV_API nkv_status nkv_enum_value(const char* constant_name, int64_t* out_value);
/* Names of every exported function, NULL-terminated. */
NKV_API const char* const* nkv_exported_functions(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* NATIVEKV_NATIVEKV_H */
