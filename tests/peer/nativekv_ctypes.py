"""A small ctypes binding of NativeKv's C ABI (native/include/nativekv/nativekv.h) for the Python peer
tests and benchmarks: contexts on PyTorch's stream, attention plans and runs, prepacking plans.

The library is found through $NATIVEKV_LIBRARY, else build-gpu/lib/libnativekv.so, else
build/lib/libnativekv.so (relative to the repository root, then to the working directory).

Loading checks the ABI version, every struct's size and field offsets (nkv_struct_size /
nkv_struct_field_offset) and the enum values this module hard-codes (nkv_enum_value), so a binding that
has drifted from the header fails at load with a message instead of corrupting memory at the first call.
Every call checks its status and raises NativeKvError carrying nkv_last_error().

This module imports torch only where a torch tensor or stream is handed to it, so the layout checks can
run on a machine without PyTorch (`python3 tests/peer/nativekv_ctypes.py` prints what it verified).
"""
from __future__ import annotations

import ctypes
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
ABI_VERSION = 1
MAX_DIMS = 6

# nkv_status
STATUS_SUCCESS = 0

# nkv_dtype / nkv_device_type / nkv_backend / nkv_attention_kind / nkv_attention_kernel / nkv_pack_array, mirrored 1:1
DTYPE_FLOAT32, DTYPE_FLOAT16, DTYPE_BFLOAT16, DTYPE_INT8, DTYPE_UINT8, DTYPE_INT32, DTYPE_INT64, DTYPE_FLOAT64 = range(8)
DEVICE_HOST, DEVICE_CUDA = 0, 1
BACKEND_AUTO, BACKEND_CPU, BACKEND_CUDA = 0, 1, 2
ATTENTION_VARLEN, ATTENTION_DECODE = 0, 1
ATTENTION_KERNEL_AUTO, ATTENTION_KERNEL_SM80, ATTENTION_KERNEL_SM90 = 0, 1, 2
(PACK_CU_SEQLENS, PACK_POSITION_IDS, PACK_GATHER_INDEX, PACK_SCATTER_INDEX, PACK_PROMPT_ORDER,
 PACK_ROW_STARTS) = range(6)

ENUMS = {
    "NKV_ABI_VERSION": ABI_VERSION, "NKV_MAX_DIMS": MAX_DIMS, "NKV_STATUS_SUCCESS": STATUS_SUCCESS,
    "NKV_DTYPE_FLOAT32": DTYPE_FLOAT32, "NKV_DTYPE_FLOAT16": DTYPE_FLOAT16, "NKV_DTYPE_BFLOAT16": DTYPE_BFLOAT16,
    "NKV_DTYPE_INT8": DTYPE_INT8, "NKV_DTYPE_UINT8": DTYPE_UINT8, "NKV_DTYPE_INT32": DTYPE_INT32,
    "NKV_DTYPE_INT64": DTYPE_INT64, "NKV_DTYPE_FLOAT64": DTYPE_FLOAT64,
    "NKV_DEVICE_HOST": DEVICE_HOST, "NKV_DEVICE_CUDA": DEVICE_CUDA,
    "NKV_BACKEND_AUTO": BACKEND_AUTO, "NKV_BACKEND_CPU": BACKEND_CPU, "NKV_BACKEND_CUDA": BACKEND_CUDA,
    "NKV_ATTENTION_VARLEN": ATTENTION_VARLEN, "NKV_ATTENTION_DECODE": ATTENTION_DECODE,
    "NKV_ATTENTION_KERNEL_AUTO": ATTENTION_KERNEL_AUTO, "NKV_ATTENTION_KERNEL_SM80": ATTENTION_KERNEL_SM80,
    "NKV_ATTENTION_KERNEL_SM90": ATTENTION_KERNEL_SM90,
    "NKV_PACK_CU_SEQLENS": PACK_CU_SEQLENS, "NKV_PACK_POSITION_IDS": PACK_POSITION_IDS,
    "NKV_PACK_GATHER_INDEX": PACK_GATHER_INDEX, "NKV_PACK_SCATTER_INDEX": PACK_SCATTER_INDEX,
    "NKV_PACK_PROMPT_ORDER": PACK_PROMPT_ORDER, "NKV_PACK_ROW_STARTS": PACK_ROW_STARTS,
    "NKV_KV_FORMAT_KIVI": 1,
}

# torch dtype (by its str(), so that this module does not need torch) -> nkv_dtype
TORCH_DTYPES = {
    "torch.float32": DTYPE_FLOAT32, "torch.float16": DTYPE_FLOAT16, "torch.bfloat16": DTYPE_BFLOAT16,
    "torch.int8": DTYPE_INT8, "torch.uint8": DTYPE_UINT8, "torch.int32": DTYPE_INT32,
    "torch.int64": DTYPE_INT64, "torch.float64": DTYPE_FLOAT64,
}


# --------------------------------------------------------------------------------------------------
# Structs: field for field the C declarations; verified against the library at load.
# --------------------------------------------------------------------------------------------------

class NkvTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int32),
        ("device", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("shape", ctypes.c_int64 * MAX_DIMS),
        ("strides", ctypes.c_int64 * MAX_DIMS),
    ]

    def __repr__(self) -> str:
        n = self.ndim
        return (f"NkvTensor(data=0x{self.data or 0:x}, dtype={self.dtype}, device={self.device}, "
                f"shape={list(self.shape[:n])}, strides={list(self.strides[:n])})")


class NkvDeviceProperties(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("ordinal", ctypes.c_int32),
        ("name", ctypes.c_char * 256),
        ("compute_capability_major", ctypes.c_int32),
        ("compute_capability_minor", ctypes.c_int32),
        ("multiprocessor_count", ctypes.c_int32),
        ("l2_cache_bytes", ctypes.c_int32),
        ("total_memory_bytes", ctypes.c_uint64),
        ("shared_memory_per_block_optin_bytes", ctypes.c_uint64),
        ("memory_bus_width_bits", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    ]


class NkvContextOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("backend", ctypes.c_int32),
        ("device_ordinal", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("stream", ctypes.c_void_p),
    ]


class NkvAttentionOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("causal", ctypes.c_int32),
        ("softmax_scale", ctypes.c_float),
        ("softcap", ctypes.c_float),
        ("window_left", ctypes.c_int32),
        ("num_splits", ctypes.c_int32),
        ("kernel", ctypes.c_int32),  # nkv_attention_kernel: 0 auto, 1 sm80, 2 sm90
        ("kv_page_size", ctypes.c_int32),  # decode: the page size of the pools it reads, 0 for any K/V
        ("kv_code_bits", ctypes.c_int32),  # decode: the code bits of the quantized caches it reads, 0 for any K/V
    ]


class NkvAttentionPlanInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("kind", ctypes.c_int32),
        ("batch", ctypes.c_int32),
        ("num_heads_q", ctypes.c_int32),
        ("num_heads_kv", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("q_len", ctypes.c_int32),
        ("num_splits", ctypes.c_int32),
        ("total_q", ctypes.c_int64),
        ("total_k", ctypes.c_int64),
        ("max_seqlen_q", ctypes.c_int64),
        ("max_seqlen_k", ctypes.c_int64),
        ("softmax_scale", ctypes.c_float),
        ("reserved", ctypes.c_int32),
    ]


class NkvPackPlanInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("prompt_count", ctypes.c_int32),
        ("row_count", ctypes.c_int32),
        ("row_capacity", ctypes.c_int32),
        ("longest_prompt", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("total_tokens", ctypes.c_int64),
        ("padding_tokens", ctypes.c_int64),
        ("unpacked_padding_tokens", ctypes.c_int64),
    ]


class NkvPagedKvCacheOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32)] + [(n, ctypes.c_int32) for n in (
        "dtype", "num_layers", "num_heads_kv", "head_dim", "page_size", "max_sequences", "max_sequence_length")] + [
        ("num_pages", ctypes.c_int64), ("byte_budget", ctypes.c_uint64)]


class NkvVirtualKvCacheOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("dtype", ctypes.c_int32),
        ("layout", ctypes.c_int32),  # 0 layer-major, 1 token-major
        ("num_layers", ctypes.c_int32),
        ("num_heads_kv", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("max_slots", ctypes.c_int32),
        ("max_tokens", ctypes.c_int32),
        ("byte_budget", ctypes.c_uint64),
    ]


class NkvVirtualKvCacheInfo(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32)] + [(n, ctypes.c_int32) for n in (
        "layout", "max_slots", "slots", "tokens_per_block", "max_blocks_per_slot")] + [
        ("page_bytes", ctypes.c_uint64), ("bytes_per_block", ctypes.c_uint64)] + [(n, ctypes.c_int64) for n in (
            "rows_per_slot", "tokens", "budget_pages", "mapped_pages", "pooled_pages", "shared_pages", "deferred_blocks",
            "empty_token_slots", "step_tokens", "blocks_mapped_ahead", "blocks_mapped_inline", "pages_created")]


class NkvQuantizedKvCacheOptions(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32 if name == "struct_size" else ctypes.c_int32) for name in (
        "struct_size", "format", "bits", "group_size", "residual", "num_layers", "num_heads_kv", "head_dim", "max_slots",
        "max_tokens", "value_format", "memory", "page_size", "max_pages")]


class NkvQuantizedKvCacheInfo(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("format", ctypes.c_int32), ("bits", ctypes.c_int32),
                ("group_size", ctypes.c_int32), ("residual", ctypes.c_int32), ("max_slots", ctypes.c_int32),
                ("slots", ctypes.c_int32), ("capacity", ctypes.c_int32), ("tokens", ctypes.c_int64),
                ("step_tokens", ctypes.c_int64), ("bytes", ctypes.c_uint64), ("mapped_bytes", ctypes.c_uint64),
                ("page_size", ctypes.c_int32), ("max_pages", ctypes.c_int32), ("free_pages", ctypes.c_int32),
                ("reserved", ctypes.c_int32)]


STRUCTS = {
    "nkv_tensor": NkvTensor,
    "nkv_device_properties": NkvDeviceProperties,
    "nkv_context_options": NkvContextOptions,
    "nkv_attention_options": NkvAttentionOptions,
    "nkv_attention_plan_info": NkvAttentionPlanInfo,
    "nkv_pack_plan_info": NkvPackPlanInfo,
    "nkv_paged_kv_cache_options": NkvPagedKvCacheOptions,
    "nkv_virtual_kv_cache_options": NkvVirtualKvCacheOptions,
    "nkv_virtual_kv_cache_info": NkvVirtualKvCacheInfo,
    "nkv_quantized_kv_cache_options": NkvQuantizedKvCacheOptions,
    "nkv_quantized_kv_cache_info": NkvQuantizedKvCacheInfo,
}


def _struct_to_dict(s: ctypes.Structure) -> dict[str, Any]:
    return {name: getattr(s, name) for name, _ in s._fields_ if name not in ("struct_size", "reserved")}


# --------------------------------------------------------------------------------------------------
# Errors and loading
# --------------------------------------------------------------------------------------------------

class NativeKvError(RuntimeError):
    """A NativeKv call returned a status other than NKV_STATUS_SUCCESS."""

    def __init__(self, function: str, status: int, status_name: str, message: str):
        super().__init__(f"{function} failed with {status_name} ({status}): {message or '(no message)'}")
        self.function = function
        self.status = status
        self.status_name = status_name
        self.message = message


def library_candidates() -> list[Path]:
    env = os.environ.get("NATIVEKV_LIBRARY")
    if env:
        return [Path(env)]  # an explicit choice is never silently replaced by another build
    relative = [Path("build-gpu/lib/libnativekv.so"), Path("build/lib/libnativekv.so")]
    seen, out = set(), []
    for base in (REPO_ROOT, Path.cwd()):
        for rel in relative:
            p = Path(os.path.abspath(base / rel))  # not resolve(): report the path as tried, not the link's target
            if p not in seen:
                seen.add(p)
                out.append(p)
    return out


_S = ctypes.c_int32          # nkv_status
_P = ctypes.c_void_p         # opaque handles and raw pointers
_T = ctypes.POINTER(NkvTensor)
_I32P = ctypes.POINTER(ctypes.c_int32)

# name: (restype, argtypes). Functions returning nkv_status are checked by Library.call.
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "nkv_version": (ctypes.c_char_p, []),
    "nkv_abi_version": (ctypes.c_uint32, []),
    "nkv_last_error": (ctypes.c_char_p, []),
    "nkv_status_name": (ctypes.c_char_p, [ctypes.c_int32]),
    "nkv_struct_size": (ctypes.c_size_t, [ctypes.c_char_p]),
    "nkv_struct_field_offset": (ctypes.c_size_t, [ctypes.c_char_p, ctypes.c_char_p]),
    "nkv_enum_value": (_S, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int64)]),
    "nkv_cuda_device_count": (_S, [_I32P]),
    "nkv_cuda_device_properties": (_S, [ctypes.c_int32, ctypes.POINTER(NkvDeviceProperties)]),
    "nkv_context_create": (_S, [ctypes.POINTER(NkvContextOptions), ctypes.POINTER(_P)]),
    "nkv_context_destroy": (_S, [_P]),
    "nkv_context_stream": (_S, [_P, ctypes.POINTER(_P)]),
    "nkv_context_synchronize": (_S, [_P]),
    "nkv_attention_plan_varlen": (_S, [_P, ctypes.POINTER(NkvAttentionOptions), ctypes.c_int32, ctypes.c_int32,
                                       ctypes.c_int32, ctypes.c_int32, _I32P, _I32P, ctypes.POINTER(_P)]),
    "nkv_attention_plan_decode": (_S, [_P, ctypes.POINTER(NkvAttentionOptions), ctypes.c_int32, ctypes.c_int32,
                                       ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _I32P, ctypes.POINTER(_P)]),
    "nkv_attention_plan_destroy": (_S, [_P]),
    "nkv_attention_plan_get_info": (_S, [_P, ctypes.POINTER(NkvAttentionPlanInfo)]),
    "nkv_attention_varlen": (_S, [_P, _T, _T, _T, _T, _T]),
    "nkv_attention_decode": (_S, [_P, _T, _T, _T, _T, _T]),
    "nkv_attention_decode_paged": (_S, [_P, _T, _T, _T, _T, _T, _T]),
    "nkv_attention_varlen_paged": (_S, [_P, _T, _T, _T, _T, _T, _T]),
    "nkv_paged_kv_cache_create": (_S, [_P, ctypes.POINTER(NkvPagedKvCacheOptions), ctypes.POINTER(_P)]),
    "nkv_paged_kv_cache_destroy": (_S, [_P]),
    "nkv_paged_kv_cache_add_sequence": (_S, [_P, _I32P]),
    "nkv_paged_kv_cache_truncate": (_S, [_P, ctypes.c_int32, ctypes.c_int32]),
    "nkv_paged_kv_cache_append": (_S, [_P, _I32P, _I32P, ctypes.c_int32]),
    "nkv_paged_kv_cache_write": (_S, [_P, ctypes.c_int32, _T, _T]),
    "nkv_paged_kv_cache_view": (_S, [_P, ctypes.c_int32, ctypes.c_int32, _T]),
    "nkv_pack_plan_create": (_S, [_P, _I32P, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(_P)]),
    "nkv_pack_plan_destroy": (_S, [_P]),
    "nkv_pack_plan_get_info": (_S, [_P, ctypes.POINTER(NkvPackPlanInfo)]),
    "nkv_pack_plan_copy_array": (_S, [_P, ctypes.c_int32, _I32P, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)]),
    "nkv_pack_plan_array_view": (_S, [_P, ctypes.c_int32, _T]),
    "nkv_pack_gather": (_S, [_P, _T, _T]),
    "nkv_pack_scatter": (_S, [_P, _T, _T]),
    "nkv_pack_gather_padded": (_S, [_P, _T, _T]),
    "nkv_pack_scatter_padded": (_S, [_P, _T, _T]),
    "nkv_virtual_kv_cache_create": (_S, [_P, ctypes.POINTER(NkvVirtualKvCacheOptions), ctypes.POINTER(_P)]),
    "nkv_virtual_kv_cache_destroy": (_S, [_P]),
    "nkv_virtual_kv_cache_add_slot": (_S, [_P, _I32P]),
    "nkv_virtual_kv_cache_free_slot": (_S, [_P, ctypes.c_int32]),
    "nkv_virtual_kv_cache_ensure_capacity": (_S, [_P, ctypes.c_int32, ctypes.c_int32]),
    "nkv_virtual_kv_cache_reserve_ahead": (_S, [_P, ctypes.c_int32, ctypes.c_int32]),
    "nkv_virtual_kv_cache_trim": (_S, [_P]),
    "nkv_virtual_kv_cache_append": (_S, [_P, _I32P, _I32P, ctypes.c_int32]),
    "nkv_virtual_kv_cache_write": (_S, [_P, ctypes.c_int32, _T, _T]),
    "nkv_virtual_kv_cache_view": (_S, [_P, ctypes.c_int32, ctypes.c_int32, _T]),
    "nkv_virtual_kv_cache_get_info": (_S, [_P, ctypes.POINTER(NkvVirtualKvCacheInfo)]),
    "nkv_virtual_kv_cache_slot": (_S, [_P, ctypes.c_int32, _I32P, ctypes.POINTER(ctypes.c_int64)]),
    "nkv_quantized_kv_cache_create": (_S, [_P, ctypes.POINTER(NkvQuantizedKvCacheOptions), ctypes.POINTER(_P)]),
    "nkv_quantized_kv_cache_destroy": (_S, [_P]),
    "nkv_quantized_kv_cache_add_slot": (_S, [_P, _I32P]),
    "nkv_quantized_kv_cache_free_slot": (_S, [_P, ctypes.c_int32]),
    "nkv_quantized_kv_cache_append": (_S, [_P, _I32P, _I32P, ctypes.c_int32]),
    "nkv_quantized_kv_cache_write": (_S, [_P, ctypes.c_int32, _T, _T]),
    "nkv_quantized_kv_cache_view": (_S, [_P, ctypes.c_int32, ctypes.c_int32, _T]),
    "nkv_quantized_kv_cache_get_info": (_S, [_P, ctypes.POINTER(NkvQuantizedKvCacheInfo)]),
    "nkv_attention_decode_quantized": (_S, [_P, _T, _P, ctypes.c_int32, _T, _T]),
}


class Library:
    """The loaded, verified library. One per process is enough (see `load()`)."""

    def __init__(self, path: str | os.PathLike | None = None):
        candidates = [Path(path)] if path is not None else library_candidates()
        attempts = []
        for candidate in candidates:
            if not candidate.exists():
                attempts.append(f"{candidate}: not found")
                continue
            try:
                self.dll = ctypes.CDLL(str(candidate))
                self.path = candidate
                break
            except OSError as e:  # e.g. missing libcuda for a build that needs it, wrong architecture
                attempts.append(f"{candidate}: {e}")
        else:
            raise OSError("could not load libnativekv.so; set NATIVEKV_LIBRARY or build it "
                          "(cmake -S . -B build-gpu && cmake --build build-gpu). Tried:\n  " + "\n  ".join(attempts))
        missing = []
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self.dll, name, None)
            if fn is None:
                missing.append(name)
                continue
            fn.restype, fn.argtypes = restype, argtypes
        if missing:
            raise OSError(f"{self.path} does not export {', '.join(missing)}: a build older than the attention ABI?")
        self._verify()

    # -- checks ---------------------------------------------------------------------------------------

    def _verify(self) -> None:
        problems = []
        abi = self.dll.nkv_abi_version()
        if abi != ABI_VERSION:
            problems.append(f"nkv_abi_version() is {abi}, this binding was written for {ABI_VERSION}")
        size_max = ctypes.c_size_t(-1).value
        for cname, cls in STRUCTS.items():
            native = self.dll.nkv_struct_size(cname.encode())
            if native != ctypes.sizeof(cls):
                problems.append(f"sizeof({cname}) is {native} in the library, {ctypes.sizeof(cls)} here")
            for field, _ in cls._fields_:
                off = self.dll.nkv_struct_field_offset(cname.encode(), field.encode())
                ours = getattr(cls, field).offset
                if off != ours:
                    shown = "unknown" if off == size_max else off
                    problems.append(f"offsetof({cname}, {field}) is {shown} in the library, {ours} here")
        for cname, ours in ENUMS.items():
            value = ctypes.c_int64()
            if self.dll.nkv_enum_value(cname.encode(), ctypes.byref(value)) != STATUS_SUCCESS:
                problems.append(f"the library does not know {cname}")
            elif value.value != ours:
                problems.append(f"{cname} is {value.value} in the library, {ours} here")
        if problems:
            raise OSError(f"{self.path} does not match this binding:\n  " + "\n  ".join(problems))

    def last_error(self) -> str:
        msg = self.dll.nkv_last_error()
        return msg.decode(errors="replace") if msg else ""

    def call(self, name: str, *args) -> None:
        """Calls a status-returning function and raises NativeKvError unless it succeeded."""
        status = getattr(self.dll, name)(*args)
        if status != STATUS_SUCCESS:
            # nkv_last_error first: it is the message of the failed call only until the next NativeKv call.
            message = self.last_error()
            status_name = (self.dll.nkv_status_name(status) or b"?").decode()
            raise NativeKvError(name, status, status_name, message)

    # -- small queries --------------------------------------------------------------------------------

    def version(self) -> str:
        return self.dll.nkv_version().decode()

    def cuda_device_count(self) -> int:
        count = ctypes.c_int32()
        self.call("nkv_cuda_device_count", ctypes.byref(count))
        return count.value

    def cuda_device_properties(self, ordinal: int = 0) -> dict[str, Any]:
        props = NkvDeviceProperties(struct_size=ctypes.sizeof(NkvDeviceProperties))
        self.call("nkv_cuda_device_properties", ordinal, ctypes.byref(props))
        out = _struct_to_dict(props)
        out["name"] = props.name.decode(errors="replace")
        return out

    def cuda_context(self, stream: Any = None, device_ordinal: int | None = None) -> "Context":
        return Context(self, stream, device_ordinal)


_LIBRARY: Library | None = None


def load(path: str | os.PathLike | None = None) -> Library:
    """The process-wide Library (loaded and verified on first use)."""
    global _LIBRARY
    if _LIBRARY is None or path is not None:
        _LIBRARY = Library(path)
    return _LIBRARY


# --------------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------------

def tensor(t: Any) -> NkvTensor | None:
    """An nkv_tensor view of a torch tensor (None stays None: an optional argument passed as NULL).

    Only a view: the torch tensor must stay alive (and unchanged in place) while NativeKv uses it.
    """
    if t is None or isinstance(t, NkvTensor):
        return t
    dtype = TORCH_DTYPES.get(str(t.dtype))
    if dtype is None:
        raise TypeError(f"NativeKv has no dtype for {t.dtype}")
    if t.dim() > MAX_DIMS:
        raise ValueError(f"a NativeKv tensor has at most {MAX_DIMS} dimensions, got {t.dim()}")
    if t.device.type == "cuda":
        device = DEVICE_CUDA
    elif t.device.type == "cpu":
        device = DEVICE_HOST
    else:
        raise ValueError(f"NativeKv cannot address memory on {t.device}")
    view = NkvTensor(data=t.data_ptr() or None, dtype=dtype, device=device, ndim=t.dim(), reserved=0)
    for i, (n, s) in enumerate(zip(t.shape, t.stride())):
        view.shape[i] = n
        view.strides[i] = s  # torch strides are in elements, as nkv_tensor's are
    return view


def _ptr(view: NkvTensor | None):
    return None if view is None else ctypes.byref(view)


def _int32_array(values: Sequence[int]):
    values = [int(v) for v in values]
    return (ctypes.c_int32 * max(1, len(values)))(*values)


# --------------------------------------------------------------------------------------------------
# Context, attention plans, pack plans
# --------------------------------------------------------------------------------------------------

def torch_stream_handle(stream: Any = None) -> int:
    """The cudaStream_t of a torch stream (default: torch's current stream) as an integer."""
    import torch

    stream = torch.cuda.current_stream() if stream is None else stream
    return int(stream.cuda_stream)


class Context:
    """A CUDA context that runs on a caller's stream (by default torch's current stream).

    NativeKv work is then ordered with torch work on that stream, so torch.cuda.Event timing and torch
    tensors produced or consumed around NativeKv calls need no extra synchronization.
    """

    def __init__(self, lib: Library, stream: Any = None, device_ordinal: int | None = None):
        self.lib = lib
        self.handle = _P()
        if stream is None or not isinstance(stream, int):
            import torch

            stream_obj = torch.cuda.current_stream() if stream is None else stream
            handle = int(stream_obj.cuda_stream)
            if device_ordinal is None:
                device_ordinal = stream_obj.device.index if stream_obj.device.index is not None else 0
        else:
            handle = stream
        if handle == 0:
            # torch's default stream is the legacy NULL stream; nkv_context_options.stream == NULL means
            # "a stream the context owns", which would NOT be ordered with torch's work. Refuse rather than race.
            raise ValueError("torch's current stream is the default (NULL) stream, which nkv_context_options "
                             "cannot name (NULL asks for an owned stream); run under "
                             "`with torch.cuda.stream(torch.cuda.Stream()):`")
        options = NkvContextOptions(struct_size=ctypes.sizeof(NkvContextOptions), backend=BACKEND_CUDA,
                                    device_ordinal=device_ordinal or 0, reserved=0, stream=handle)
        lib.call("nkv_context_create", ctypes.byref(options), ctypes.byref(self.handle))
        self.stream = handle
        self.device_ordinal = device_ordinal or 0

    def synchronize(self) -> None:
        self.lib.call("nkv_context_synchronize", self.handle)

    def close(self) -> None:
        if self.handle:
            self.lib.call("nkv_context_destroy", self.handle)
            self.handle = _P()

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- attention ------------------------------------------------------------------------------------

    def plan_varlen(self, num_heads_q: int, num_heads_kv: int, head_dim: int, cu_seqlens_q: Sequence[int],
                    cu_seqlens_k: Sequence[int], *, causal: bool = False, softmax_scale: float = 0.0,
                    softcap: float = 0.0, window_left: int = -1,
                    kernel: int = ATTENTION_KERNEL_AUTO) -> "AttentionPlan":
        if len(cu_seqlens_q) != len(cu_seqlens_k) or len(cu_seqlens_q) < 1:
            raise ValueError("cu_seqlens_q and cu_seqlens_k need the same length, batch + 1 >= 1")
        options = attention_options(causal, softmax_scale, softcap, window_left, num_splits=0, kernel=kernel)
        handle = _P()
        self.lib.call("nkv_attention_plan_varlen", self.handle, ctypes.byref(options), num_heads_q, num_heads_kv,
                      head_dim, len(cu_seqlens_q) - 1, _int32_array(cu_seqlens_q), _int32_array(cu_seqlens_k),
                      ctypes.byref(handle))
        return AttentionPlan(self, handle, ATTENTION_VARLEN)

    def plan_decode(self, num_heads_q: int, num_heads_kv: int, head_dim: int, q_len: int, seqlens_k: Sequence[int],
                    *, causal: bool = False, softmax_scale: float = 0.0, softcap: float = 0.0,
                    window_left: int = -1, num_splits: int = 0, kv_page_size: int = 0, kv_code_bits: int = 0) -> "AttentionPlan":
        options = attention_options(causal, softmax_scale, softcap, window_left, num_splits, kv_page_size=kv_page_size,
                                    kv_code_bits=kv_code_bits)
        handle = _P()
        self.lib.call("nkv_attention_plan_decode", self.handle, ctypes.byref(options), num_heads_q, num_heads_kv,
                      head_dim, len(seqlens_k), q_len, _int32_array(seqlens_k), ctypes.byref(handle))
        return AttentionPlan(self, handle, ATTENTION_DECODE)

    # -- prepacking -----------------------------------------------------------------------------------

    def pack_plan(self, prompt_lengths: Sequence[int], row_capacity: int = 0) -> "PackPlan":
        handle = _P()
        self.lib.call("nkv_pack_plan_create", self.handle, _int32_array(prompt_lengths), len(prompt_lengths),
                      row_capacity, ctypes.byref(handle))
        return PackPlan(self, handle)


class PagedKvCache:
    """nkv_paged_kv_cache on a context (vLLM's layout), for benchmarks: sequences, appends, writes, views."""

    K_POOL, V_POOL, BLOCK_TABLE = 0, 1, 2

    def __init__(self, context: "Context", *, num_layers: int, num_heads_kv: int, head_dim: int, page_size: int,
                 max_sequences: int, max_sequence_length: int, num_pages: int, dtype: int = DTYPE_FLOAT16):
        self.context, self.lib = context, context.lib
        self.handle = _P()
        options = NkvPagedKvCacheOptions(struct_size=ctypes.sizeof(NkvPagedKvCacheOptions), dtype=dtype, num_layers=num_layers,
                                         num_heads_kv=num_heads_kv, head_dim=head_dim, page_size=page_size,
                                         max_sequences=max_sequences, max_sequence_length=max_sequence_length,
                                         num_pages=num_pages, byte_budget=0)
        self.lib.call("nkv_paged_kv_cache_create", context.handle, ctypes.byref(options), ctypes.byref(self.handle))

    def add_sequence(self) -> int:
        sequence = ctypes.c_int32()
        self.lib.call("nkv_paged_kv_cache_add_sequence", self.handle, ctypes.byref(sequence))
        return sequence.value

    def truncate(self, sequence: int, length: int) -> None:
        self.lib.call("nkv_paged_kv_cache_truncate", self.handle, sequence, length)

    def append(self, sequences: Sequence[int], counts: Sequence[int]) -> None:
        self.lib.call("nkv_paged_kv_cache_append", self.handle, _int32_array(sequences), _int32_array(counts), len(sequences))

    def write(self, layer: int, k, v) -> None:
        kt, vt = tensor(k), tensor(v)
        self.lib.call("nkv_paged_kv_cache_write", self.handle, layer, ctypes.byref(kt), ctypes.byref(vt))

    def view(self, which: int, layer: int = 0) -> NkvTensor:
        out = NkvTensor()
        self.lib.call("nkv_paged_kv_cache_view", self.handle, which, layer, ctypes.byref(out))
        return out

    def close(self) -> None:
        if self.handle:
            self.lib.call("nkv_paged_kv_cache_destroy", self.handle)
            self.handle = _P()

    def __enter__(self) -> "PagedKvCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class QuantizedKvCache:
    """nkv_quantized_kv_cache on a context (KIVI codes with fp16 residuals, or block floating point): slots, appends,
    writes, info. BFP: bits are the mantissa bits (4: BFP12, 8: BFP16), group_size the block, residual 0."""

    KIVI, BFP = 1, 2
    VALUES_LIKE_KEYS, VALUES_FP16 = 0, 1

    def __init__(self, context: "Context", *, bits: int, group_size: int = 32, residual: int | None = None, num_layers: int,
                 num_heads_kv: int, head_dim: int, max_slots: int, max_tokens: int, format: int = KIVI,
                 value_format: int = VALUES_LIKE_KEYS):
        self.context, self.lib = context, context.lib
        self.handle = _P()
        if residual is None:
            residual = 0 if format == self.BFP else 128
        options = NkvQuantizedKvCacheOptions(struct_size=ctypes.sizeof(NkvQuantizedKvCacheOptions), format=format, bits=bits,
                                             group_size=group_size, residual=residual, num_layers=num_layers,
                                             num_heads_kv=num_heads_kv, head_dim=head_dim, max_slots=max_slots,
                                             max_tokens=max_tokens, value_format=value_format, memory=0)
        self.lib.call("nkv_quantized_kv_cache_create", context.handle, ctypes.byref(options), ctypes.byref(self.handle))

    def add_slot(self) -> int:
        slot = ctypes.c_int32()
        self.lib.call("nkv_quantized_kv_cache_add_slot", self.handle, ctypes.byref(slot))
        return slot.value

    def append(self, slots: Sequence[int], counts: Sequence[int]) -> None:
        self.lib.call("nkv_quantized_kv_cache_append", self.handle, _int32_array(slots), _int32_array(counts), len(slots))

    def write(self, layer: int, k, v) -> None:
        kt, vt = tensor(k), tensor(v)
        self.lib.call("nkv_quantized_kv_cache_write", self.handle, layer, ctypes.byref(kt), ctypes.byref(vt))

    def info(self) -> dict[str, Any]:
        info = NkvQuantizedKvCacheInfo(struct_size=ctypes.sizeof(NkvQuantizedKvCacheInfo))
        self.lib.call("nkv_quantized_kv_cache_get_info", self.handle, ctypes.byref(info))
        return _struct_to_dict(info)

    def close(self) -> None:
        if self.handle:
            self.lib.call("nkv_quantized_kv_cache_destroy", self.handle)
            self.handle = _P()

    def __enter__(self) -> "QuantizedKvCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VirtualKvCache:
    """nkv_virtual_kv_cache on a context: slots in contiguous virtual memory, pages mapped on demand."""

    LAYER_MAJOR, TOKEN_MAJOR = 0, 1
    K, V, SLOT_LENGTHS, STEP_ROWS = 0, 1, 2, 3

    def __init__(self, context: "Context", *, layout: int, num_layers: int, num_heads_kv: int, head_dim: int,
                 max_slots: int, max_tokens: int, byte_budget: int = 0, dtype: int = DTYPE_FLOAT16):
        self.context, self.lib = context, context.lib
        self.handle = _P()
        options = NkvVirtualKvCacheOptions(struct_size=ctypes.sizeof(NkvVirtualKvCacheOptions), dtype=dtype, layout=layout,
                                           num_layers=num_layers, num_heads_kv=num_heads_kv, head_dim=head_dim,
                                           max_slots=max_slots, max_tokens=max_tokens, byte_budget=byte_budget)
        self.lib.call("nkv_virtual_kv_cache_create", context.handle, ctypes.byref(options), ctypes.byref(self.handle))

    def add_slot(self) -> int:
        slot = ctypes.c_int32()
        self.lib.call("nkv_virtual_kv_cache_add_slot", self.handle, ctypes.byref(slot))
        return slot.value

    def free_slot(self, slot: int) -> None:
        self.lib.call("nkv_virtual_kv_cache_free_slot", self.handle, slot)

    def truncate(self, slot: int, length: int) -> None:
        self.lib.call("nkv_virtual_kv_cache_truncate", self.handle, slot, length)

    def ensure_capacity(self, slot: int, tokens: int) -> None:
        self.lib.call("nkv_virtual_kv_cache_ensure_capacity", self.handle, slot, tokens)

    def reserve_ahead(self, slot: int, tokens: int) -> None:
        self.lib.call("nkv_virtual_kv_cache_reserve_ahead", self.handle, slot, tokens)

    def trim(self) -> None:
        self.lib.call("nkv_virtual_kv_cache_trim", self.handle)

    def append(self, slots: Sequence[int], counts: Sequence[int]) -> None:
        self.lib.call("nkv_virtual_kv_cache_append", self.handle, _int32_array(slots), _int32_array(counts), len(slots))

    def write(self, layer: int, k, v) -> None:
        kt, vt = tensor(k), tensor(v)
        self.lib.call("nkv_virtual_kv_cache_write", self.handle, layer, ctypes.byref(kt), ctypes.byref(vt))

    def view(self, which: int, layer: int = 0) -> NkvTensor:
        out = NkvTensor()
        self.lib.call("nkv_virtual_kv_cache_view", self.handle, which, layer, ctypes.byref(out))
        return out

    def mapped_tokens(self, slot: int) -> int:
        length, mapped = ctypes.c_int32(), ctypes.c_int64()
        self.lib.call("nkv_virtual_kv_cache_slot", self.handle, slot, ctypes.byref(length), ctypes.byref(mapped))
        return mapped.value

    def info(self) -> dict[str, Any]:
        info = NkvVirtualKvCacheInfo(struct_size=ctypes.sizeof(NkvVirtualKvCacheInfo))
        self.lib.call("nkv_virtual_kv_cache_get_info", self.handle, ctypes.byref(info))
        return _struct_to_dict(info)

    def close(self) -> None:
        if self.handle:
            self.lib.call("nkv_virtual_kv_cache_destroy", self.handle)
            self.handle = _P()

    def __enter__(self) -> "VirtualKvCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def attention_options(causal: bool = False, softmax_scale: float = 0.0, softcap: float = 0.0,
                      window_left: int = -1, num_splits: int = 0,
                      kernel: int = ATTENTION_KERNEL_AUTO, kv_page_size: int = 0, kv_code_bits: int = 0) -> NkvAttentionOptions:
    return NkvAttentionOptions(struct_size=ctypes.sizeof(NkvAttentionOptions), causal=int(bool(causal)),
                               softmax_scale=softmax_scale, softcap=softcap, window_left=window_left,
                               num_splits=num_splits, kernel=kernel, kv_page_size=kv_page_size, kv_code_bits=kv_code_bits)


class AttentionPlan:
    """nkv_attention_plan: made once from host-side lengths, run any number of times on the context's stream."""

    def __init__(self, context: Context, handle: ctypes.c_void_p, kind: int):
        self.context = context  # keeps the context alive at least as long as the plan
        self.lib = context.lib
        self.handle = handle
        self.kind = kind

    def info(self) -> dict[str, Any]:
        info = NkvAttentionPlanInfo(struct_size=ctypes.sizeof(NkvAttentionPlanInfo))
        self.lib.call("nkv_attention_plan_get_info", self.handle, ctypes.byref(info))
        return _struct_to_dict(info)

    def bind(self, q, k, v, o, lse=None) -> Callable[[], None]:
        """A zero-argument function that runs the plan on these tensors: the nkv_tensor views are made once,
        so a timing loop measures the library call, not Python building structs. Keeps the tensors alive."""
        fn_name = "nkv_attention_varlen" if self.kind == ATTENTION_VARLEN else "nkv_attention_decode"
        return self._bind(fn_name, (q, k, v, o, lse))

    def bind_paged(self, q, k_pool, v_pool, block_table, o, lse=None) -> Callable[[], None]:
        """As bind, over paged K/V: pools [pages, page_size, Hkv, d] and an int32 block table [batch, pages per
        sequence] (nkv_attention_decode_paged, nkv_attention_varlen_paged)."""
        fn_name = "nkv_attention_varlen_paged" if self.kind == ATTENTION_VARLEN else "nkv_attention_decode_paged"
        return self._bind(fn_name, (q, k_pool, v_pool, block_table, o, lse))

    def bind_quantized(self, q, cache: "QuantizedKvCache", layer: int, o, lse=None) -> Callable[[], None]:
        """As bind, over one layer of a quantized cache (nkv_attention_decode_quantized; sequence b is slot b)."""
        views = [tensor(t) for t in (q, o, lse)]
        args = [self.handle, _ptr(views[0]), cache.handle, layer, _ptr(views[1]), _ptr(views[2])]
        keep_alive = ((q, o, lse), views, cache)
        call = self.lib.call

        def run() -> None:
            _ = keep_alive
            call("nkv_attention_decode_quantized", *args)

        return run

    def _bind(self, fn_name: str, tensors: tuple) -> Callable[[], None]:
        views = [tensor(t) for t in tensors]
        args = [self.handle] + [_ptr(x) for x in views]
        keep_alive = (tensors, views)
        call = self.lib.call

        def run() -> None:
            _ = keep_alive
            call(fn_name, *args)

        return run

    def run(self, q, k, v, o, lse=None) -> None:
        self.bind(q, k, v, o, lse)()

    def close(self) -> None:
        if self.handle:
            self.lib.call("nkv_attention_plan_destroy", self.handle)
            self.handle = _P()

    def __enter__(self) -> "AttentionPlan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PackPlan:
    """nkv_pack_plan: prompts bin-packed into rows (first-fit decreasing); index arrays on the device."""

    def __init__(self, context: Context, handle: ctypes.c_void_p):
        self.context = context
        self.lib = context.lib
        self.handle = handle

    def info(self) -> dict[str, Any]:
        info = NkvPackPlanInfo(struct_size=ctypes.sizeof(NkvPackPlanInfo))
        self.lib.call("nkv_pack_plan_get_info", self.handle, ctypes.byref(info))
        return _struct_to_dict(info)

    def array_length(self, which: int) -> int:
        info = self.info()
        return {PACK_CU_SEQLENS: info["prompt_count"] + 1, PACK_POSITION_IDS: info["total_tokens"],
                PACK_GATHER_INDEX: info["total_tokens"], PACK_SCATTER_INDEX: info["total_tokens"],
                PACK_PROMPT_ORDER: info["prompt_count"], PACK_ROW_STARTS: info["row_count"] + 1}[which]

    def copy_array(self, which: int) -> list[int]:
        capacity = self.array_length(which)
        buffer = (ctypes.c_int32 * max(1, capacity))()
        length = ctypes.c_int64()
        self.lib.call("nkv_pack_plan_copy_array", self.handle, which, buffer, capacity, ctypes.byref(length))
        return list(buffer[: length.value])

    def array_view(self, which: int) -> NkvTensor:
        view = NkvTensor()
        self.lib.call("nkv_pack_plan_array_view", self.handle, which, ctypes.byref(view))
        return view

    def gather(self, input, packed) -> None:
        self._move("nkv_pack_gather", input, packed)

    def scatter(self, packed, output) -> None:
        self._move("nkv_pack_scatter", packed, output)

    def gather_padded(self, input, padded) -> None:
        self._move("nkv_pack_gather_padded", input, padded)

    def scatter_padded(self, padded, output) -> None:
        self._move("nkv_pack_scatter_padded", padded, output)

    def _move(self, name: str, source, destination) -> None:
        src, dst = tensor(source), tensor(destination)
        self.lib.call(name, self.handle, _ptr(src), _ptr(dst))

    def close(self) -> None:
        if self.handle:
            self.lib.call("nkv_pack_plan_destroy", self.handle)
            self.handle = _P()

    def __enter__(self) -> "PackPlan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def default_softmax_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


if __name__ == "__main__":
    # Loads and verifies the library: a quick check that this binding matches the build at hand.
    lib = load()
    print(f"{lib.path}: NativeKv {lib.version()}, ABI {ABI_VERSION}; struct layouts and "
          f"{len(ENUMS)} enum values match ({', '.join(f'{n} {ctypes.sizeof(c)} B' for n, c in STRUCTS.items())})")
