#!/usr/bin/env python3
"""NativeKv attention next to PyTorch's, side by side in one process on one GPU.

NativeKv runs through the ctypes binding (tests/peer/nativekv_ctypes.py) on torch's current stream, so
both sides are timed the same way: CUDA events around the call, warm-up first, the median of the
repetitions. Before each timed call a GPU spin (torch.cuda._sleep) keeps the GPU busy while the host
enqueues the work, so the events measure GPU time rather than Python or ctypes launch overhead.

Cases (the issue's shapes; --quick shrinks them):
  prefill   fp16 b4 s8192 h32 d128 and h64 d64, causal and not: NativeKv varlen vs SDPA flash / cuDNN /
            memory-efficient; TFLOP/s with FLOPs = 4 b h s^2 d (halved when causal)
  packed    64 prompts of 32 + int(4000 u^2) tokens (u uniform, seed 0), h32 d128 causal: NativeKv pack
            plan + varlen attention over the packed tokens vs SDPA on the padded batch and on jagged
            nested tensors (time of the attention only; the pack plan's host time reported beside it;
            TFLOP/s count the useful work, without padding, for every side)
  decode    fp16 d128 Hq32 Hkv8 q_len 1, b64 x L4096, b8 x L32768, b1 x L131072: NativeKv decode vs SDPA
            backends; TB/s of K/V read and its fraction of a device-to-device copy measured in this run
  chunked   512 new queries over 8K and 32K cached keys, b1 h32 d128 causal (bottom-right): NativeKv vs
            SDPA with an explicit bottom-right mask and with torch's causal_lower_right bias

Each side is first timed on its own, one after the other. The head-to-head comparisons the issue's musts
name (the sm_80 path vs SDPA flash in prefill, decode vs cuDNN) are then also timed interleaved, call by
call, so that clock and temperature drift during the run cannot favour either side ("head_to_head").

Output: one JSON object per line on stdout, a Markdown table on stderr (or --markdown PATH).
A NativeKv or peer failure is recorded in its row ("nativekv_error", a peer's "error") and the run goes on.

    python3 bench/peers/attention_bench.py [--quick] [--only SUBSTRING] [--markdown PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "peer"))
import nativekv_ctypes as nkv  # noqa: E402

FP16 = torch.float16
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}
SPIN_CYCLES = 2_000_000  # ~1 ms at 2 GHz: longer than any host-side enqueue measured here


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------

class Timer:
    def __init__(self, reps: int, warmup: int):
        self.reps, self.warmup = reps, warmup
        self.spin = getattr(torch.cuda, "_sleep", None)  # private but long-standing; without it, no spin

    def median_us(self, fn: Callable[[int], Any]) -> float:
        """Median GPU time of fn(i) in microseconds; i counts calls, for rotating input sets."""
        return self.interleaved_medians_us([fn])[0]

    def interleaved_medians_us(self, fns: list[Callable[[int], Any]]) -> list[float]:
        """Median GPU times of several functions timed call by call in turn (the order rotating every
        repetition), so that a drift of clocks or temperature during the run reaches them all alike; timed one
        after the other, the later side runs in the state the earlier one left. Each call: a GPU spin first
        (the host enqueues while the GPU is busy), then CUDA events around fn(i) alone."""
        for i in range(self.warmup):
            for fn in fns:
                fn(i)
        torch.cuda.synchronize()
        samples: list[list[float]] = [[] for _ in fns]
        for i in range(self.reps):
            for j in range(len(fns)):
                k = (i + j) % len(fns)
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                if self.spin is not None:
                    self.spin(SPIN_CYCLES)
                start.record()
                fns[k](self.warmup + i)
                stop.record()
                stop.synchronize()
                samples[k].append(start.elapsed_time(stop) * 1e3)
        return [statistics.median(x) for x in samples]


def l2_bytes() -> int:
    return int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 50 << 20))


def rotation(bytes_per_set: int) -> int:
    """Input sets to cycle through so that consecutive calls never find their inputs in L2: enough sets
    to cover 3x L2 (one set when a single set already does)."""
    return max(1, min(16, math.ceil(3 * l2_bytes() / max(1, bytes_per_set))))


def short_error(e: BaseException, caught: list | None = None) -> str:
    """One line for a table cell: the exception's first line plus PyTorch's warnings, where SDPA explains why
    a backend did not run (without the source locations, the per-backend headers and the "runtime disabled"
    lines that sdpa_kernel itself causes for the other backends)."""
    text = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    reasons = []
    for w in caught or []:
        for line in str(w.message).splitlines():
            line = re.sub(r"\s*\(Triggered internally at [^)]*\)\.?", "", line).strip()
            if not line or line.endswith("not used because:") or "runtime disabled" in line or line in reasons:
                continue
            reasons.append(line)
    if reasons:
        text += " [" + " | ".join(reasons) + "]"
    return text[:400]


def free_memory() -> None:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def rel_diff(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius difference, a sanity check that both sides computed the same attention."""
    ref = ref.float()
    return ((x.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def head_to_head(timer: Timer, row: dict, nativekv: str, run: Callable[[int], Any], peer: str,
                 backend: SDPBackend, inputs: list[tuple], **kwargs) -> None:
    """NativeKv and one SDPA backend timed interleaved (Timer.interleaved_medians_us), appended to the list
    row["head_to_head"]; skipped when either side did not run in the sequential measurement."""
    result = row["peer"].get(peer, {})
    if "us" not in result or "note" in result:  # a note: it ran only on K/V prepared for it
        return
    try:
        # The backend choice holds for the whole timing (NativeKv ignores it), as in time_sdpa: nothing but
        # the calls themselves between the events.
        with sdpa_kernel(backend):
            nkv_us, peer_us = timer.interleaved_medians_us(
                [run, lambda i: F.scaled_dot_product_attention(*inputs[i % len(inputs)], **kwargs)])
        row.setdefault("head_to_head", []).append({"nativekv": nativekv, "peer": peer, "nativekv_us": nkv_us,
                                                   "peer_us": peer_us, "peer_over_nativekv": peer_us / nkv_us})
    except Exception as e:
        row.setdefault("head_to_head", []).append({"nativekv": nativekv, "peer": peer, "error": short_error(e)})


def time_sdpa(timer: Timer, backend: SDPBackend | None, inputs: list[tuple], **kwargs) -> tuple[dict, Any]:
    """Times F.scaled_dot_product_attention under one backend (None: PyTorch's own choice), cycling through
    the (q, k, v) input sets. Returns ({"us": ...} or {"error": ...}, the output of a first untimed call on
    set 0)."""
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                out = F.scaled_dot_product_attention(*inputs[0], **kwargs)  # raises if the backend cannot run it
                torch.cuda.synchronize()
                us = timer.median_us(lambda i: F.scaled_dot_product_attention(*inputs[i % len(inputs)], **kwargs))
        return {"us": us}, out
    except Exception as e:  # "No available kernel", out of memory, ...: this peer is n/a for this shape
        return {"error": short_error(e, caught)}, None


class NativeKvSide:
    """The library and a context on torch's current stream, or the reason there are none (then every row
    records that reason as its nativekv_error and the peers still run)."""

    def __init__(self):
        self.lib = self.ctx = None
        self.error = None
        try:
            self.lib = nkv.load()
            self.ctx = self.lib.cuda_context()
        except Exception as e:
            self.error = short_error(e)

    def check(self) -> None:
        if self.error:
            raise RuntimeError(self.error)


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------

def causal_pairs(lq: int, lk: int) -> int:
    """Query-key pairs visible under the bottom-right causal mask (lk >= lq)."""
    return lq * (lk - lq) + lq * (lq + 1) // 2


def bench_prefill(timer: Timer, side: NativeKvSide, b: int, h: int, s: int, d: int, causal: bool) -> dict:
    row: dict[str, Any] = {"op": "prefill", "shape": f"b{b} h{h} s{s} d{d} {'causal' if causal else 'non-causal'}",
                           "dtype": "fp16", "causal": causal}
    flops = 4 * b * h * s * s * d / (2 if causal else 1)
    row["flops"] = flops
    # [b, s, h, d] storage: NativeKv's varlen layout ([b*s, h, d]) and, transposed to [b, h, s, d], the
    # layout FlashAttention itself works in; every side reads the same bytes.
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=FP16) for _ in range(3))
    o = torch.empty_like(q)
    cu = [i * s for i in range(b + 1)]
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    with contextlib.ExitStack() as open_plans:  # the plans live on for the interleaved timing
        try:
            side.check()
            plan = open_plans.enter_context(side.ctx.plan_varlen(h, h, d, cu, cu, causal=causal))
            run = plan.bind(*(x.view(b * s, h, d) for x in (q, k, v, o)))
            us = timer.median_us(lambda i: run())
            row["nativekv_us"], row["nativekv_tflops"] = us, flops / us / 1e6
        except Exception as e:
            row["nativekv_error"] = short_error(e)
        if torch.cuda.get_device_capability() == (9, 0):
            # The issue asks for the sm_80 (FlashAttention-2 design) path alone as well: on Hopper AUTO runs sm_90a.
            try:
                side.check()
                o80 = torch.empty_like(q)
                plan80 = open_plans.enter_context(
                    side.ctx.plan_varlen(h, h, d, cu, cu, causal=causal, kernel=nkv.ATTENTION_KERNEL_SM80))
                run_sm80 = plan80.bind(*(x.view(b * s, h, d) for x in (q, k, v, o80)))
                us = timer.median_us(lambda i: run_sm80())
                row["nativekv_sm80_us"], row["nativekv_sm80_tflops"] = us, flops / us / 1e6
                if "nativekv_us" in row:
                    row["sm80_vs_auto_rel_diff"] = rel_diff(o80, o)
            except Exception as e:
                row["nativekv_sm80_error"] = short_error(e)
        row["peer"] = {}
        for name, backend in SDPA_BACKENDS.items():
            result, out = time_sdpa(timer, backend, [(qt, kt, vt)], is_causal=causal)
            add_rates(row, result, flops=flops)
            if out is not None and "nativekv_us" in row and "check" not in row:
                row["check"] = {"vs": f"sdpa_{name}", "rel_diff": rel_diff(o, out.transpose(1, 2))}
            row["peer"][f"sdpa_{name}"] = result
            del out
        # The default path (sm_90a on Hopper) against SDPA-flash, call by call as well: prefill runs the GPU at
        # its power cap, so each side's clocks depend on what ran just before (bench/NOTES.md a11, s5).
        if "nativekv_us" in row:
            head_to_head(timer, row, "default path", lambda i: run(), "sdpa_flash", SDPA_BACKENDS["flash"],
                         [(qt, kt, vt)], is_causal=causal)
        if "nativekv_sm80_us" in row:  # the FlashAttention-2 design against FlashAttention-2, call by call
            head_to_head(timer, row, "sm_80 path", lambda i: run_sm80(), "sdpa_flash", SDPA_BACKENDS["flash"],
                         [(qt, kt, vt)], is_causal=causal)
    del q, k, v, o, qt, kt, vt
    free_memory()
    return row


def prompt_lengths(count: int, extra: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(count, generator=g, dtype=torch.float64)
    return [32 + int(extra * x * x) for x in u.tolist()]


def bench_packed(timer: Timer, side: NativeKvSide, count: int, extra: int, h: int, d: int) -> dict:
    lengths = prompt_lengths(count, extra)
    total, longest = sum(lengths), max(lengths)
    flops = sum(4 * h * d * causal_pairs(n, n) for n in lengths)  # useful work only
    row: dict[str, Any] = {"op": "packed", "shape": f"{count} prompts 32+int({extra}u^2) h{h} d{d} causal",
                           "dtype": "fp16", "prompts": count, "total_tokens": total, "longest": longest,
                           "flops": flops}
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    # caller order: the prompts as given, concatenated
    q, k, v = (torch.randn(total, h, d, device="cuda", dtype=FP16) for _ in range(3))
    o_caller = None
    try:
        side.check()
        plan_us = []
        for _ in range(5):  # host work (first-fit decreasing) + uploading the index arrays
            start = time.perf_counter()
            pack = side.ctx.pack_plan(lengths)
            side.ctx.synchronize()
            plan_us.append((time.perf_counter() - start) * 1e6)
            if len(plan_us) < 5:
                pack.close()
        with pack:
            row["pack_plan_us"] = statistics.median(plan_us)
            info = pack.info()
            row["pack_info"] = info
            cu = pack.copy_array(nkv.PACK_CU_SEQLENS)
            packed = [torch.empty_like(x) for x in (q, k, v, q)]  # q, k, v, o in packed order
            for src, dst in zip((q, k, v), packed):
                pack.gather(src.view(total, h * d), dst.view(total, h * d))
            with side.ctx.plan_varlen(h, h, d, cu, cu, causal=True) as plan:
                run = plan.bind(*packed)
                us = timer.median_us(lambda i: run())
            o_caller = torch.empty_like(q)
            pack.scatter(packed[3].view(total, h * d), o_caller.view(total, h * d))
            torch.cuda.synchronize()
            del packed
        row["nativekv_us"], row["nativekv_tflops"] = us, flops / us / 1e6
    except Exception as e:
        row["nativekv_error"] = short_error(e)

    row["peer"] = {}
    # Padded batch [count, longest, h, d], zeros after each prompt; top-left causal is right for every
    # prompt's rows since each prompt starts at position 0. The padding is computed, as plain batching does.
    padded = [torch.zeros(count, longest, h, d, device="cuda", dtype=FP16) for _ in range(3)]
    for p, n in enumerate(lengths):
        for src, dst in zip((q, k, v), padded):
            dst[p, :n] = src[offsets[p]:offsets[p + 1]]
    pq, pk, pv = (x.transpose(1, 2) for x in padded)
    for name, backend in SDPA_BACKENDS.items():
        result, out = time_sdpa(timer, backend, [(pq, pk, pv)], is_causal=True)
        add_rates(row, result, flops=flops)
        if out is not None and o_caller is not None and "check" not in row:
            out = out.transpose(1, 2)
            unpadded = torch.cat([out[p, :n] for p, n in enumerate(lengths)])
            row["check"] = {"vs": f"padded_sdpa_{name}", "rel_diff": rel_diff(o_caller, unpadded)}
        row["peer"][f"padded_sdpa_{name}"] = result
        del out
    del padded, pq, pk, pv
    free_memory()

    # Jagged nested tensors: [count, j, h, d] -> [count, h, j, d], as PyTorch's NJT tutorial does.
    try:
        nested = [torch.nested.nested_tensor([x[offsets[p]:offsets[p + 1]] for p in range(count)],
                                             layout=torch.jagged).transpose(1, 2) for x in (q, k, v)]
    except Exception as e:
        nested = None
        row["peer"]["nested_sdpa"] = {"error": short_error(e)}
    if nested is not None:
        for name, backend in [("default", None)] + list(SDPA_BACKENDS.items()):
            result, out = time_sdpa(timer, backend, [tuple(nested)], is_causal=True)
            add_rates(row, result, flops=flops)
            if out is not None and o_caller is not None and "check_nested" not in row:
                try:
                    values = out.transpose(1, 2).contiguous().values()
                    row["check_nested"] = {"vs": f"nested_sdpa_{name}", "rel_diff": rel_diff(o_caller, values)}
                except Exception as e:
                    row["check_nested"] = {"error": short_error(e)}
            row["peer"][f"nested_sdpa_{name}"] = result
            del out
        del nested
    del q, k, v, o_caller
    free_memory()
    return row


def decode_inputs(sets: int, b: int, seqlen: int, hq: int, hkv: int, d: int) -> list[dict]:
    """`sets` random decode input sets (q_len 1, fp16): q, k, v in NativeKv's [b, L, Hkv, d], an output o, and
    k_peer, v_peer: the same K/V in SDPA's canonical [b, Hkv, L, d], contiguous."""
    data = []
    for _ in range(sets):
        q = torch.randn(b, 1, hq, d, device="cuda", dtype=FP16)
        k = torch.randn(b, seqlen, hkv, d, device="cuda", dtype=FP16)
        v = torch.randn(b, seqlen, hkv, d, device="cuda", dtype=FP16)
        data.append({"q": q, "k": k, "v": v, "o": torch.empty_like(q),
                     "k_peer": k.transpose(1, 2).contiguous(), "v_peer": v.transpose(1, 2).contiguous()})
    return data


def bench_decode(timer: Timer, side: NativeKvSide, copy_tbps: float | None, b: int, seqlen: int,
                 hq: int = 32, hkv: int = 8, d: int = 128) -> dict:
    kv_bytes = 2 * b * seqlen * hkv * d * 2
    row: dict[str, Any] = {"op": "decode", "shape": f"b{b} L{seqlen} Hq{hq} Hkv{hkv} d{d} q_len1", "dtype": "fp16",
                           "kv_bytes": kv_bytes, "copy_tbps": copy_tbps}
    sets = rotation(kv_bytes)
    row["input_sets"] = sets
    # NativeKv reads its documented layout [b, L, Hkv, d] (FlashAttention's / vLLM's); the peers get the
    # same values in SDPA's canonical [b, Hkv, L, d], contiguous, so no backend pays for a layout it
    # dislikes. NativeKv is also timed on a strided view of the peers' tensors (nativekv_bhld_us).
    data = decode_inputs(sets, b, seqlen, hq, hkv, d)
    with contextlib.ExitStack() as open_plans:  # the plan lives on for the interleaved timing
        try:
            side.check()
            # q_len 1: the causal mask hides nothing, so non-causal matches the peers' call exactly
            plan = open_plans.enter_context(side.ctx.plan_decode(hq, hkv, d, 1, [seqlen] * b, causal=False))
            row["nativekv_splits"] = plan.info()["num_splits"]
            runs = [plan.bind(s["q"], s["k"], s["v"], s["o"]) for s in data]
            us = timer.median_us(lambda i: runs[i % sets]())
            row["nativekv_us"] = us
            row["nativekv_tbps"] = kv_bytes / us / 1e6
            if copy_tbps:
                row["nativekv_fraction_of_copy"] = row["nativekv_tbps"] / copy_tbps
            try:  # the peers' layout, as a [b, L, Hkv, d] view with token stride d and head stride L*d
                runs_bhld = [plan.bind(s["q"], s["k_peer"].transpose(1, 2), s["v_peer"].transpose(1, 2), s["o"])
                             for s in data]
                row["nativekv_bhld_us"] = timer.median_us(lambda i: runs_bhld[i % sets]())
            except Exception as e:
                row["nativekv_bhld_error"] = short_error(e)
            runs[0]()  # leave set 0's output for the check below
        except Exception as e:
            row["nativekv_error"] = short_error(e)

        row["peer"] = {}
        group = hq // hkv
        for name, backend in SDPA_BACKENDS.items():
            inputs = [(s["q"].transpose(1, 2), s["k_peer"], s["v_peer"]) for s in data]
            result, out = time_sdpa(timer, backend, inputs, enable_gqa=True)
            if "error" in result:
                # This backend does not take GQA: repeat the K/V heads beforehand (not timed) and say so.
                gqa_error = result["error"]
                inputs = [(qq, kk.repeat_interleave(group, dim=1), vv.repeat_interleave(group, dim=1))
                          for qq, kk, vv in inputs]
                result, out = time_sdpa(timer, backend, inputs)
                result["note"] = (f"enable_gqa failed ({gqa_error}); K/V heads repeated {group}x beforehand, "
                                  f"so it read {group}x the K/V bytes")
                del inputs
            add_rates(row, result, kv_bytes=kv_bytes, copy_tbps=copy_tbps)
            if out is not None and "nativekv_us" in row and "check" not in row:
                row["check"] = {"vs": f"sdpa_{name}", "rel_diff": rel_diff(data[0]["o"], out.transpose(1, 2))}
            row["peer"][f"sdpa_{name}"] = result
            del out
            free_memory()
        if "nativekv_us" in row:  # against the fastest PyTorch decode here (cuDNN), call by call
            head_to_head(timer, row, "decode", lambda i: runs[i % sets](), "sdpa_cudnn", SDPA_BACKENDS["cudnn"],
                         [(s["q"].transpose(1, 2), s["k_peer"], s["v_peer"]) for s in data], enable_gqa=True)
    del data
    free_memory()
    return row


def bench_chunked(timer: Timer, side: NativeKvSide, cached: int, chunk: int = 512, h: int = 32,
                  d: int = 128) -> dict:
    lq, lk = chunk, cached + chunk
    flops = 4 * h * d * causal_pairs(lq, lk)
    kv_bytes = 2 * lk * h * d * 2
    row: dict[str, Any] = {"op": "chunked", "shape": f"b1 h{h} d{d} chunk {lq} over {cached} cached (lk {lk}) causal",
                           "dtype": "fp16", "flops": flops}
    sets = rotation(kv_bytes)
    row["input_sets"] = sets
    data = []
    for _ in range(sets):  # [1, tokens, h, d]: NativeKv's layout; SDPA gets the [1, h, tokens, d] views
        q = torch.randn(1, lq, h, d, device="cuda", dtype=FP16)
        k = torch.randn(1, lk, h, d, device="cuda", dtype=FP16)
        v = torch.randn(1, lk, h, d, device="cuda", dtype=FP16)
        data.append({"q": q, "k": k, "v": v, "o": torch.empty_like(q)})
    try:
        side.check()
        with side.ctx.plan_varlen(h, h, d, [0, lq], [0, lk], causal=True) as plan:
            runs = [plan.bind(s["q"][0], s["k"][0], s["v"][0], s["o"][0]) for s in data]
            us = timer.median_us(lambda i: runs[i % sets]())
            runs[0]()
        row["nativekv_us"], row["nativekv_tflops"] = us, flops / us / 1e6
    except Exception as e:
        row["nativekv_error"] = short_error(e)

    inputs = [tuple(s[n].transpose(1, 2) for n in ("q", "k", "v")) for s in data]
    # SDPA's is_causal is aligned top-left, which for lq < lk hides the cache: not the same attention.
    # Peers therefore get (a) an explicit bottom-right boolean mask (only backends that take a mask run it)
    # and (b) torch.nn.attention.bias.causal_lower_right, which flash / efficient run without a mask tensor.
    i = torch.arange(lq, device="cuda")[:, None]
    j = torch.arange(lk, device="cuda")[None, :]
    mask = j <= i + (lk - lq)
    variants: list[tuple[str, Any]] = [("mask", mask)]
    try:
        from torch.nn.attention.bias import causal_lower_right
        variants.append(("lower_right", causal_lower_right(lq, lk)))
    except Exception as e:
        row["lower_right_error"] = short_error(e)
    row["peer"] = {}
    for variant, attn_mask in variants:
        for name, backend in SDPA_BACKENDS.items():
            result, out = time_sdpa(timer, backend, inputs, attn_mask=attn_mask)
            add_rates(row, result, flops=flops)
            if out is not None and "nativekv_us" in row and "check" not in row:
                row["check"] = {"vs": f"sdpa_{name}+{variant}", "rel_diff": rel_diff(data[0]["o"], out.transpose(1, 2))}
            row["peer"][f"sdpa_{name}+{variant}"] = result
            del out
    del data, inputs, mask, variants
    free_memory()
    return row


def add_rates(row: dict, result: dict, *, flops: float | None = None, kv_bytes: int | None = None,
              copy_tbps: float | None = None) -> None:
    """Adds a peer's rate and its ratio to NativeKv (peer time / NativeKv time: > 1 means NativeKv is faster,
    which for a FLOP rate is NativeKv TFLOP/s / peer TFLOP/s)."""
    if "us" not in result:
        return
    us = result["us"]
    if flops is not None:
        result["tflops"] = flops / us / 1e6
    if kv_bytes is not None:
        result["tbps"] = kv_bytes / us / 1e6
        if copy_tbps:
            result["fraction_of_copy"] = result["tbps"] / copy_tbps
    if row.get("nativekv_us"):
        result["peer_over_nativekv"] = us / row["nativekv_us"]


def copy_bandwidth(timer: Timer, gib: float = 1.0) -> dict:
    """A device-to-device copy of >= 1 GiB: the memory-bound ceiling (bytes read + written) on this GPU."""
    n = int(gib * (1 << 30)) // 2
    src = torch.randn(n, device="cuda", dtype=FP16)  # not zeros: never time zeros
    dst = torch.empty_like(src)
    us = timer.median_us(lambda i: dst.copy_(src))
    nbytes = 2 * n
    del src, dst
    free_memory()
    return {"op": "copy", "shape": f"{nbytes / (1 << 30):.2f} GiB fp16", "us": us, "tbps": 2 * nbytes / us / 1e6}


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

def describe(entry: dict, prefix: str = "") -> str:
    us = entry.get(prefix + "us")
    if us is None:
        return "—"
    text = f"{us / 1e3:.2f} ms" if us >= 1e4 else f"{us:.1f} µs"
    if entry.get(prefix + "tflops") is not None:
        text += f" · {entry[prefix + 'tflops']:.0f} TFLOP/s"
    if entry.get(prefix + "tbps") is not None:
        text += f" · {entry[prefix + 'tbps']:.2f} TB/s"
    frac = entry.get(prefix + "fraction_of_copy")
    if frac is not None:
        text += f" ({100 * frac:.0f}% of copy)"
    return text


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[dict], env: dict) -> str:
    lines = [f"# NativeKv attention vs PyTorch — {env.get('device')}", "",
             f"PyTorch {env.get('torch')} (CUDA {env.get('cuda')}), NativeKv {env.get('nativekv')}, "
             f"{env.get('reps')} repetitions (median), warm-up {env.get('warmup')}.", ""]
    for r in rows:
        if r["op"] == "copy":
            lines.append(f"Device-to-device copy of {r['shape']}: {r['us']:.1f} µs, {r['tbps']:.2f} TB/s "
                         f"(read + written).")
            lines.append("")
    lines += ["| op | shape | NativeKv | peer | peer result | peer time / NativeKv time |",
              "|---|---|---|---|---|---:|"]
    for r in rows:
        if r["op"] == "copy":
            continue
        nkv_text = describe(r, "nativekv_")
        if "nativekv_error" in r or "error" in r:
            nkv_text = "error: " + r.get("nativekv_error", r.get("error"))
        extras = []
        if r.get("pack_plan_us") is not None:
            info = r.get("pack_info", {})
            extras.append(f"pack plan {r['pack_plan_us']:.0f} µs (host); {info.get('row_count', '?')} rows, "
                          f"padding {info.get('padding_tokens', '?')} vs {info.get('unpacked_padding_tokens', '?')} "
                          f"tokens unpacked")
        if r.get("nativekv_splits") is not None:
            extras.append(f"{r['nativekv_splits']} split(s) per sequence")
        if r.get("nativekv_sm80_us") is not None:
            extras.append(f"sm_80 path alone: {describe(r, 'nativekv_sm80_')}, "
                          f"{r['nativekv_sm80_us'] / r['nativekv_us']:.2f}x the time of the default path")
        if r.get("nativekv_sm80_error"):
            extras.append(f"sm_80 path alone: error {r['nativekv_sm80_error']}")
        if r.get("nativekv_bhld_us") is not None:
            extras.append(f"on [b,Hkv,L,d]: {r['nativekv_bhld_us']:.1f} µs")
        for h2h in r.get("head_to_head", []):
            if "error" in h2h:
                extras.append(f"{h2h['nativekv']} interleaved with {h2h['peer']}: error {h2h['error']}")
            else:
                extras.append(f"{h2h['nativekv']} and {h2h['peer']} timed interleaved, call by call: "
                              f"{h2h['nativekv_us']:.1f} vs {h2h['peer_us']:.1f} µs, {h2h['peer_over_nativekv']:.3f}×")
        for check in (r.get("check"), r.get("check_nested")):
            if check and "rel_diff" in check:
                extras.append(f"rel. diff vs {check['vs']}: {check['rel_diff']:.1e}")
            elif check:
                extras.append(f"check failed: {check.get('error')}")
        if extras:
            nkv_text += " (" + "; ".join(extras) + ")"
        first = True
        for name, peer in r.get("peer", {}).items():
            result = describe(peer) if "us" in peer else "n/a: " + peer.get("error", "?")
            if peer.get("note"):
                result += f" — {peer['note']}"
            ratio = f"{peer['peer_over_nativekv']:.2f}×" if peer.get("peer_over_nativekv") else "—"
            lines.append(f"| {r['op'] if first else ''} | {cell(r['shape']) if first else ''} | "
                         f"{cell(nkv_text) if first else ''} | {name} | {cell(result)} | {ratio} |")
            first = False
        if first:  # no peer entries at all
            lines.append(f"| {r['op']} | {cell(r['shape'])} | {cell(nkv_text)} | — | — | — |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------

def cases(quick: bool) -> list[tuple[str, Callable]]:
    """(name for --only, function(timer, side, copy) -> row) in run order."""
    s = 2048 if quick else 8192
    out = []
    for h, d in ((32, 128), (64, 64)):
        for causal in (False, True):
            name = f"prefill b4 h{h} s{s} d{d} {'causal' if causal else 'non-causal'}"
            out.append((name, lambda t, n, c, h=h, d=d, causal=causal: bench_prefill(t, n, 4, h, s, d, causal)))
    count, extra = (16, 1000) if quick else (64, 4000)
    out.append((f"packed {count} prompts 32+int({extra}u^2) h32 d128 causal",
                lambda t, n, c: bench_packed(t, n, count, extra, 32, 128)))
    scale = 8 if quick else 1
    for b, seqlen in ((64, 4096), (8, 32768), (1, 131072)):
        seqlen //= scale
        out.append((f"decode b{b} L{seqlen} Hq32 Hkv8 d128 q_len1",
                    lambda t, n, c, b=b, seqlen=seqlen: bench_decode(t, n, c, b, seqlen)))
    for cached in ((2048,) if quick else (8192, 32768)):
        out.append((f"chunked b1 h32 d128 chunk 512 over {cached} cached",
                    lambda t, n, c, cached=cached: bench_chunked(t, n, cached)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer repetitions (a smoke test)")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this substring")
    parser.add_argument("--markdown", metavar="PATH", help="write the Markdown table here instead of stderr")
    parser.add_argument("--reps", type=int, help="timed repetitions (default 30, --quick 10)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("PyTorch has no CUDA device here: nothing to measure", file=sys.stderr)
        return 77
    reps = args.reps or (10 if args.quick else 30)
    timer = Timer(reps=reps, warmup=3 if args.quick else 5)

    # Everything runs on one non-default stream: the NativeKv context is created on it (torch's legacy
    # default stream has no handle a context can be given), and torch's events and kernels use it too.
    stream = torch.cuda.Stream()
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    with torch.cuda.stream(stream):
        side = NativeKvSide()
        env = {"op": "environment", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "cuda": torch.version.cuda, "l2_bytes": l2_bytes(), "reps": reps, "warmup": timer.warmup,
               "gpu_spin": timer.spin is not None, "quick": args.quick,
               "nativekv": side.lib.version() if side.lib else None,
               "nativekv_library": str(side.lib.path) if side.lib else None, "nativekv_error": side.error}
        print(json.dumps(env), flush=True)
        selected = [(name, fn) for name, fn in cases(args.quick) if args.only in name]
        copy = copy_bandwidth(timer)
        emit(copy)
        for name, fn in selected:
            print(f"[attention_bench] {name}", file=sys.stderr, flush=True)
            try:
                emit(fn(timer, side, copy["tbps"]))
            except Exception as e:  # e.g. out of memory making the inputs: record it, go on
                traceback.print_exc(file=sys.stderr)
                op, _, shape = name.partition(" ")
                emit({"op": op, "shape": shape, "error": short_error(e)})
                free_memory()
        if side.ctx is not None:
            side.ctx.close()

    table = markdown(rows, env)
    if args.markdown:
        Path(args.markdown).write_text(table, encoding="utf-8")
        print(f"[attention_bench] table written to {args.markdown}", file=sys.stderr)
    else:
        print(table, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
