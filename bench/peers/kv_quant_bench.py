#!/usr/bin/env python3
"""Decode attention over quantized KV caches next to NativeKv's own fp16 decode, in one process on one GPU.

Shapes (issue 5): fp16 queries, d128, 32 query heads over 8 KV heads, q_len 1, b8 x L32768 and b1 x L131072.
  fp16     nkv_attention_decode over contiguous K/V [b, L, 8, 128]
  KIVI-4   nkv_attention_decode_quantized over an nkv_quantized_kv_cache of 4-bit codes, G 32, R 128, holding
  KIVI-2   the same keys and values (2-bit codes)
  BFP12    the same over a block-floating-point cache: 4-bit mantissas, one exponent per 32 channels, keys and values
Each runs a plan made for it (options.kv_code_bits: the quantized kernel's pieces are sized for its own
occupancy), and all are timed interleaved, call by call (attention_bench.Timer),
so clock and temperature drift reach them alike. Each row also gives the bytes each variant reads (codes,
scales and minimums, fp16 residual), the effective bandwidth over them next to a device-to-device copy's,
and the relative difference of its output from the fp16 decode's over the unquantized K/V (quantization
error, not a kernel error: the kernel is tested against the CPU reference in tests/native/kv_quant_test.cpp).

    python3 bench/peers/kv_quant_bench.py [--quick] [--markdown PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_bench as ab  # noqa: E402
import nativekv_ctypes as nkv  # noqa: E402

GROUP, RESIDUAL, BLOCK = 32, 128, 32
FORMATS = (("KIVI-4", "kivi", 4), ("KIVI-2", "kivi", 2), ("BFP12", "bfp", 4))


def quantized_bytes(b: int, seqlen: int, channels: int, bits: int, fmt: str = "kivi") -> int:
    """Bytes a decode over one layer reads. KIVI: codes plus an fp16 scale and minimum per group of the quantized
    tokens, fp16 rows of the residual ones (keys T - T % R quantized, values T - R). BFP: m-bit mantissas and an
    8-bit exponent per block of every token's keys and values."""
    if fmt == "bfp":
        return int(b * 2 * seqlen * channels * (bits / 8 + 1 / BLOCK))
    keys_q = seqlen - seqlen % RESIDUAL
    values_q = max(0, seqlen - RESIDUAL)
    per_quantized = channels * (bits / 8 + 4 / GROUP)
    total = (keys_q + values_q) * per_quantized + ((seqlen - keys_q) + (seqlen - values_q)) * channels * 2
    return int(b * total)


def bench_decode(timer: ab.Timer, side: ab.NativeKvSide, copy_tbps: float | None, b: int, seqlen: int, hq: int = 32,
                 hkv: int = 8, d: int = 128, splits: tuple[int, ...] = ()) -> dict:
    fp16_bytes = 2 * b * seqlen * hkv * d * 2
    row: dict[str, Any] = {"op": "kv_quant_decode", "shape": f"b{b} L{seqlen} Hq{hq} Hkv{hkv} d{d} q_len1",
                           "copy_tbps": copy_tbps, "variants": {}}
    side.check()
    torch.manual_seed(0)
    q = torch.randn(b, 1, hq, d, device="cuda", dtype=ab.FP16)
    k = torch.randn(b, seqlen, hkv, d, device="cuda", dtype=ab.FP16)
    v = torch.randn_like(k)
    k[..., 3::16] += 4.0  # outlier channels, as LLM keys have them
    plan = side.ctx.plan_decode(hq, hkv, d, 1, [seqlen] * b)
    row["pieces"] = plan.info()["num_splits"]
    outputs = {"fp16": torch.full_like(q, float("nan"))}
    runs = {"fp16": plan.bind(q, k, v, outputs["fp16"])}
    sizes = {"fp16": fp16_bytes}
    caches, plans = [], []
    try:
        for name, fmt, bits in FORMATS:
            if fmt == "bfp":
                cache = nkv.QuantizedKvCache(side.ctx, bits=bits, group_size=BLOCK, residual=0, num_layers=1, num_heads_kv=hkv,
                                             head_dim=d, max_slots=b, max_tokens=seqlen, format=nkv.QuantizedKvCache.BFP)
            else:
                cache = nkv.QuantizedKvCache(side.ctx, bits=bits, group_size=GROUP, residual=RESIDUAL, num_layers=1,
                                             num_heads_kv=hkv, head_dim=d, max_slots=b, max_tokens=seqlen)
            caches.append(cache)
            slots = [cache.add_slot() for _ in range(b)]
            cache.append(slots, [seqlen] * b)
            cache.write(0, k.reshape(b * seqlen, hkv, d), v.reshape(b * seqlen, hkv, d))
            # A plan made for the cache's bits: pieces sized for the quantized kernel.
            own = side.ctx.plan_decode(hq, hkv, d, 1, [seqlen] * b, kv_code_bits=bits)
            plans.append(own)
            outputs[name] = torch.full_like(q, float("nan"))
            runs[name] = own.bind_quantized(q, cache, 0, outputs[name])
            sizes[name] = quantized_bytes(b, seqlen, hkv * d, bits, fmt)
            row["variants"][name] = {"cache_bytes": cache.info()["bytes"], "pieces": own.info()["num_splits"]}
            for n in splits:  # the same cache under plans of a fixed piece count (tuning sweeps)
                fixed = side.ctx.plan_decode(hq, hkv, d, 1, [seqlen] * b, num_splits=n, kv_code_bits=bits)
                plans.append(fixed)
                variant = f"{name}, {n} pieces"
                outputs[variant] = torch.full_like(q, float("nan"))
                runs[variant] = fixed.bind_quantized(q, cache, 0, outputs[variant])
                sizes[variant] = sizes[name]
                row["variants"][variant] = {}
        row["variants"]["fp16"] = {}
        for run in runs.values():
            run()
        torch.cuda.synchronize()
        for name in runs:
            if name != "fp16":
                row["variants"][name]["rel_diff_vs_fp16"] = ab.rel_diff(outputs[name], outputs["fp16"])
        names = list(runs)
        medians = timer.interleaved_medians_us([lambda i, n=n: runs[n]() for n in names])
        for name, us in zip(names, medians):
            entry = row["variants"][name]
            entry.update({"us": us, "bytes_read": sizes[name], "bits_per_element": 8 * sizes[name] / (2 * b * seqlen * hkv * d),
                          "tbps": sizes[name] / us / 1e6, "speedup_vs_fp16": medians[0] / us})
            if copy_tbps:
                entry["fraction_of_copy"] = entry["tbps"] / copy_tbps
    finally:
        for cache in caches:
            cache.close()
        for p in plans:
            p.close()
        plan.close()
    del q, k, v, outputs, runs
    ab.free_memory()
    return row


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"### Decode over quantized KV caches ({device})", "",
             "fp16 d128, 32 query heads over 8 KV heads, q_len 1; KIVI G 32, R 128; BFP12 blocks of 32 (keys and values); "
             "each with its own plan, timed interleaved "
             "(median of the calls). Effective bandwidth = bytes read / time; copy = device-to-device copy (read + "
             "write) in the same run.", "",
             "| shape | variant | bits / element | µs | speedup vs fp16 | TB/s over its bytes | of copy | rel. diff vs fp16 |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | error: {r['error']} | | | | | | |")
            continue
        for name, e in r["variants"].items():
            frac = f"{e['fraction_of_copy']:.2f}" if "fraction_of_copy" in e else ""
            diff = f"{e['rel_diff_vs_fp16']:.2e}" if "rel_diff_vs_fp16" in e else ""
            lines.append(f"| {r['shape']} | {name} | {e['bits_per_element']:.2f} | {e['us']:.1f} | {e['speedup_vs_fp16']:.2f}x | "
                         f"{e['tbps']:.2f} | {frac} | {diff} |")
    copy = next((r.get("copy_tbps") for r in rows if r.get("copy_tbps")), None)
    if copy:
        lines += ["", f"Device-to-device copy in this run: {copy:.2f} TB/s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short sequences and few repetitions")
    parser.add_argument("--markdown", type=Path, help="append the Markdown section to this file (else stderr)")
    parser.add_argument("--splits", type=int, nargs="*", default=[], help="also time plans of these fixed piece counts")
    parser.add_argument("--shape", action="append", default=[], help="BxL (e.g. 8x32768) instead of the issue's two shapes")
    parser.add_argument("--reps", type=int, default=0, help="timed repetitions (default 30, --quick 5)")
    args = parser.parse_args()
    torch.cuda.set_stream(torch.cuda.Stream())  # NativeKv's context runs on torch's stream, which must be named
    timer = ab.Timer(reps=args.reps or (5 if args.quick else 30), warmup=2 if args.quick else 5)
    side = ab.NativeKvSide()
    copy_tbps = ab.copy_bandwidth(timer)["tbps"]
    shapes = [(2, 4096)] if args.quick else [(8, 32768), (1, 131072)]
    if args.shape:
        shapes = [tuple(int(x) for x in shape.split("x")) for shape in args.shape]
    rows = []
    for b, seqlen in shapes:
        try:
            rows.append(bench_decode(timer, side, copy_tbps, b, seqlen, splits=tuple(args.splits)))
        except Exception as e:
            traceback.print_exc()
            rows.append({"op": "kv_quant_decode", "shape": f"b{b} L{seqlen}", "error": ab.short_error(e)})
        print(json.dumps(rows[-1]), flush=True)
    text = markdown(rows, torch.cuda.get_device_name())
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(text)
    else:
        sys.stderr.write(text)


if __name__ == "__main__":
    main()
