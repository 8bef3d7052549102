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
