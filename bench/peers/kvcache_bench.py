#!/usr/bin/env python3
"""Attention over KV caches next to attention over contiguous K/V, in one process on one GPU.

Cases (issue 4's shapes; --quick shrinks them):
  decode  fp16 d128 Hq32 Hkv8 q_len 1, b64 x L4096 and b8 x L32768: the contiguous decode of [b, L, Hkv, d]
          and the paged decode (nkv_attention_decode_paged) over the same keys and values stored in page
          pools of 16, 64 and 256 tokens. A pool's pages are handed out in a random order, as a cache's
          free list hands them out after a while of serving, so no sequence's pages are adjacent. Then the
          virtual-memory cache (nkv_virtual_kv_cache) of a 32-layer model in both layouts, holding the same
          keys and values in layer 0, read by the unchanged contiguous kernel through its strided view.

The contiguous and paged variants are timed interleaved, call by call (attention_bench.Timer), so clock and
temperature drift reach all of them alike; each virtual-memory cache (one at a time: 32 GiB each) is timed
interleaved with the contiguous decode again. The ratio is contiguous time / variant time (>= 1: no slower).
Every variant's output is compared bit for bit with the contiguous one first: the paged loads must read
exactly the same keys in the same order.

Output: one JSON object per line on stdout, a Markdown section on stderr (or --markdown PATH, appended to).

    python3 bench/peers/kvcache_bench.py [--quick] [--markdown PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_bench as ab  # noqa: E402  (Timer, rotation, NativeKvSide, copy_bandwidth, short_error)
import nativekv_ctypes as nkv  # noqa: E402

PAGE_SIZES = (16, 64, 256)
AHEAD, TOP_UP = 64, 128  # the step-latency benchmark's reservation policy
VIRTUAL_LAYERS = 32  # a Llama-3-8B-like model: the token-major stride is 32 x 2 x 8 x 128 x 2 bytes = 128 KiB


def paged_copy(k: torch.Tensor, v: torch.Tensor, page_size: int, generator: torch.Generator):
    """k, v [b, L, Hkv, d] stored in pools [b*L/page_size, page_size, Hkv, d] whose pages are handed out in a
    random order; returns (k_pool, v_pool, block_table [b, L/page_size] int32)."""
    b, seqlen, hkv, d = k.shape
    pages_per_sequence = seqlen // page_size
    num_pages = b * pages_per_sequence
    order = torch.randperm(num_pages, generator=generator).to(k.device)
    pools = []
    for x in (k, v):
        pool = torch.empty(num_pages, page_size, hkv, d, device=x.device, dtype=x.dtype)
        pool[order] = x.reshape(num_pages, page_size, hkv, d)
        pools.append(pool)
    block_table = order.to(torch.int32).reshape(b, pages_per_sequence).contiguous()
    return pools[0], pools[1], block_table


def plan_run(plan, s: dict, page: int | None, name: str):
    """A bound call of `plan` on input set s, over its contiguous K/V (page None) or its pools of `page`; the
    output goes to s["o"][name]."""
    s["o"][name] = torch.empty_like(s["q"])
    if page is None:
        return plan.bind(s["q"], s["k"], s["v"], s["o"][name])
    k_pool, v_pool, table = s[page]
    return plan.bind_paged(s["q"], k_pool, v_pool, table, s["o"][name])


def bench_decode(timer: ab.Timer, side: ab.NativeKvSide, copy_tbps: float | None, b: int, seqlen: int,
                 hq: int = 32, hkv: int = 8, d: int = 128) -> dict:
    kv_bytes = 2 * b * seqlen * hkv * d * 2
    row: dict[str, Any] = {"op": "kvcache_decode", "shape": f"b{b} L{seqlen} Hq{hq} Hkv{hkv} d{d} q_len1",
                           "dtype": "fp16", "kv_bytes": kv_bytes, "copy_tbps": copy_tbps, "variants": {}}
    side.check()
    sets = ab.rotation(kv_bytes)
    row["input_sets"] = sets
    generator = torch.Generator().manual_seed(0)
    data = []
    for _ in range(sets):
        q = torch.randn(b, 1, hq, d, device="cuda", dtype=ab.FP16)
        k = torch.randn(b, seqlen, hkv, d, device="cuda", dtype=ab.FP16)
        v = torch.randn(b, seqlen, hkv, d, device="cuda", dtype=ab.FP16)
        entry = {"q": q, "k": k, "v": v, "o": {}}
        for page in PAGE_SIZES:
            entry[page] = paged_copy(k, v, page, generator)
        data.append(entry)
    names = ["contiguous"]
    with contextlib.ExitStack() as open_plans:
        def plan(**kw):
            return open_plans.enter_context(side.ctx.plan_decode(hq, hkv, d, 1, [seqlen] * b, causal=False, **kw))

        contiguous = plan()
        row["nativekv_splits"] = {"contiguous": contiguous.info()["num_splits"]}
        runs = {"contiguous": [plan_run(contiguous, s, None, "contiguous") for s in data]}
        for page in PAGE_SIZES:
            paged = plan(kv_page_size=page)
            row["nativekv_splits"][f"paged {page}"] = paged.info()["num_splits"]
            names += [f"paged {page}", f"paged {page}, contiguous plan"]
            for name, p in ((f"paged {page}", paged), (f"paged {page}, contiguous plan", contiguous)):
                runs[name] = [plan_run(p, s, page, name) for s in data]
            # Same pieces (a fixed split count), same keys: the paged loads must give the contiguous bits.
            fixed_contiguous, fixed_paged = plan(num_splits=4), plan(num_splits=4, kv_page_size=page)
            outputs = [torch.full_like(data[0]["q"], float("nan")) for _ in range(2)]
            fixed_contiguous.run(data[0]["q"], data[0]["k"], data[0]["v"], outputs[0])
            k_pool, v_pool, table = data[0][page]
            fixed_paged.bind_paged(data[0]["q"], k_pool, v_pool, table, outputs[1])()
            torch.cuda.synchronize()
            row["variants"][f"paged {page}"] = {"bit_identical": bool(torch.equal(outputs[0], outputs[1]))}
            row["variants"][f"paged {page}, contiguous plan"] = {}
        row["variants"]["contiguous"] = {}
        for name in names:
            runs[name][0]()
        torch.cuda.synchronize()
        reference = data[0]["o"]["contiguous"]
        for name in names[1:]:
            row["variants"][name]["rel_diff"] = ab.rel_diff(data[0]["o"][name], reference)
        fns = [lambda i, name=name: runs[name][i % sets]() for name in names]
        medians = timer.interleaved_medians_us(fns)
        for name, us in zip(names, medians):
            entry = row["variants"][name]
            entry["us"] = us
            entry["tbps"] = kv_bytes / us / 1e6
            if copy_tbps:
                entry["fraction_of_copy"] = entry["tbps"] / copy_tbps
            entry["contiguous_over_variant"] = medians[0] / us
        # Virtual-memory caches, one at a time (32 layers of this shape take 32 GiB each), each timed
        # interleaved with the contiguous decode: the same kernel and plan over the cache's strided view.
        for layout, name in ((nkv.VirtualKvCache.LAYER_MAJOR, "virtual, layer-major"),
                             (nkv.VirtualKvCache.TOKEN_MAJOR, "virtual, token-major")):
            try:
                row["variants"][name] = bench_virtual(timer, side, contiguous, data[0], runs["contiguous"][0], layout,
                                                      VIRTUAL_LAYERS, kv_bytes, copy_tbps)
            except Exception as e:
                row["variants"][name] = {"error": ab.short_error(e)}
            ab.free_memory()
    del data
    ab.free_memory()
    return row


def bench_virtual(timer: ab.Timer, side: ab.NativeKvSide, plan, s: dict, contiguous_run, layout: int, layers: int,
                  kv_bytes: int, copy_tbps: float | None) -> dict:
    """Decode over a virtual-memory cache of `layers` layers holding s's K/V in layer 0, timed interleaved with
    contiguous_run; the output must equal the contiguous one bit for bit (same plan, same keys)."""
    b, seqlen, hkv, d = s["k"].shape
    with nkv.VirtualKvCache(side.ctx, layout=layout, num_layers=layers, num_heads_kv=hkv, head_dim=d, max_slots=b,
                            max_tokens=seqlen) as cache:
        slots = [cache.add_slot() for _ in range(b)]
        cache.append(slots, [seqlen] * b)
        cache.write(0, s["k"].reshape(b * seqlen, hkv, d), s["v"].reshape(b * seqlen, hkv, d))
        info = cache.info()
        k_view, v_view = cache.view(cache.K, 0), cache.view(cache.V, 0)
        out = torch.full_like(s["q"], float("nan"))
        run = plan.bind(s["q"], k_view, v_view, out)
        run()
        torch.cuda.synchronize()
        entry: dict[str, Any] = {"bit_identical": bool(torch.equal(out, s["o"]["contiguous"])), "layers": layers,
                                 "mapped_gib": info["mapped_pages"] * info["page_bytes"] / 2**30,
                                 "tokens_per_block": info["tokens_per_block"]}
        contiguous_us, us = timer.interleaved_medians_us([lambda i: contiguous_run(), lambda i: run()])
        entry.update({"us": us, "contiguous_us": contiguous_us, "tbps": kv_bytes / us / 1e6,
                      "contiguous_over_variant": contiguous_us / us})
        if copy_tbps:
            entry["fraction_of_copy"] = entry["tbps"] / copy_tbps
        return entry


def bench_step_latency(timer: ab.Timer, side: ab.NativeKvSide, copy_tbps: float | None, layout: int, steps: int = 512,
                       rounds: int = 3, b: int = 32, start: int = 1024, layers: int = 32, hq: int = 32, hkv: int = 8,
                       d: int = 128) -> dict:
    """Host time of whole decode steps on a virtual-memory cache (append one token to each of b slots, then per
    layer the write and the decode attention, then wait for the GPU) while the slots grow across block
    boundaries: slot i starts at start + i * tokens_per_block / b tokens, so slots cross into new blocks at
    different steps. Three runs of the same steps: every block mapped beforehand (steps that map nothing),
    blocks mapped inline by the appends, and blocks requested ahead from the background thread (reserve_ahead:
    at least AHEAD tokens ahead, topped up TOP_UP tokens at a time so that the thread maps several blocks per
    call; the first reservation made before the steps, as an engine does when it admits a sequence). The runs
    take turns for `rounds` rounds, the order rotating, and each run's percentiles pool its rounds' steps, so
    that the machine's own hiccups (ms-long stalls in about 1% of steps, seen with nothing mapped) reach all
    runs alike. The plan covers the starting lengths (the keys read per step stay fixed)."""
    name = "layer-major" if layout == nkv.VirtualKvCache.LAYER_MAJOR else "token-major"
    row: dict[str, Any] = {"op": "kvcache_step_latency",
                           "shape": f"{name}, b{b} from L{start}, {layers} layers, {rounds} x {steps} steps", "runs": {}}
    side.check()
    q = torch.randn(b, 1, hq, d, device="cuda", dtype=ab.FP16)
    o = torch.empty_like(q)
    k_step = torch.randn(b, hkv, d, device="cuda", dtype=ab.FP16)
    v_step = torch.randn_like(k_step)
    ones = [1] * b
    runs = ["premapped", "inline", "reserve_ahead"]
    samples: dict[str, list[float]] = {run: [] for run in runs}
    counts = {run: {"blocks_mapped_inline": 0, "blocks_mapped_ahead": 0} for run in runs}
    per_block = 0
    for round_ in range(rounds):
        for run in runs[round_ % 3:] + runs[:round_ % 3]:
            with nkv.VirtualKvCache(side.ctx, layout=layout, num_layers=layers, num_heads_kv=hkv, head_dim=d, max_slots=b,
                                    max_tokens=start + 2 * steps + 4096) as cache:
                per_block = cache.info()["tokens_per_block"]
                slots = [cache.add_slot() for _ in range(b)]
                lengths = [start + i * per_block // b for i in range(b)]
                cache.append(slots, lengths)  # maps their blocks (not timed)
                reserved = [x + AHEAD + TOP_UP for x in lengths]
                if run == "premapped":
                    for slot, length in zip(slots, lengths):
                        cache.ensure_capacity(slot, length + steps)
                elif run == "reserve_ahead":
                    for slot, tokens in zip(slots, reserved):
                        cache.reserve_ahead(slot, tokens)
                    wait_for_mapping(cache, slots, reserved)
                with side.ctx.plan_decode(hq, hkv, d, 1, lengths) as plan:
                    decodes = [plan.bind(q, cache.view(cache.K, layer), cache.view(cache.V, layer), o) for layer in range(layers)]
                    before = cache.info()
                    gc.collect()
                    gc.disable()  # a collection pause inside a step is the interpreter's latency, not the cache's
                    try:
                        for step in range(steps):
                            t0 = time.perf_counter()
                            if run == "reserve_ahead":  # keep AHEAD tokens reserved, topped up TOP_UP at a time
                                for i, (slot, length) in enumerate(zip(slots, lengths)):
                                    if length + AHEAD > reserved[i]:
                                        reserved[i] = length + AHEAD + TOP_UP
                                        cache.reserve_ahead(slot, reserved[i])
                            cache.append(slots, ones)
                            for layer in range(layers):
                                cache.write(layer, k_step, v_step)
                                decodes[layer]()
                            torch.cuda.synchronize()
                            samples[run].append((time.perf_counter() - t0) * 1e6)
                            lengths = [x + 1 for x in lengths]
                    finally:
                        gc.enable()
                    after = cache.info()
                for key in counts[run]:
                    counts[run][key] += after[key] - before[key]
            ab.free_memory()
    for run in runs:
        times = sorted(samples[run])
        row["runs"][run] = {"p50_us": times[len(times) // 2], "p99_us": times[int(len(times) * 0.99)], "max_us": times[-1],
                            "mean_us": sum(times) / len(times), "tokens_per_block": per_block, **counts[run]}
    base = row["runs"]["premapped"]
    for run in row["runs"].values():
        run["p99_over_premapped"] = run["p99_us"] / base["p99_us"]
        run["p50_over_premapped"] = run["p50_us"] / base["p50_us"]
    return row


def bench_prefill(timer: ab.Timer, side: ab.NativeKvSide, copy_tbps: float | None, prompts: int = 16, length: int = 2048,
                  hq: int = 32, hkv: int = 8, d: int = 128) -> dict:
    """Causal prefill of `prompts` prompts of `length` tokens into a KV cache, fp16 d128 GQA 32/8, one layer.
    Attention alone (GPU time, interleaved): varlen over the packed K/V with the default kernel (sm_90a on
    Hopper) and with the SM80 family, and varlen through a paged cache's block table (SM80 family; pages in
    the order the cache hands them out) at pages 16, 64, 256, and varlen over a virtual-memory cache's views of
    layer 0 of a 32-layer model (batched K/V, SM80 family) in both layouts; the cache outputs must equal the SM80
    contiguous output bit for bit. Including the append (host time of the whole prefill of one layer: append
    the prompts and write their K/V, then attention, then wait): the caches against copying K/V into a
    contiguous cache [prompts, length, Hkv, d] and running the default kernel. Between repetitions the caches'
    prompts are truncated away, so the paged cache's pages go back to its free list and the virtual cache's
    slots keep their blocks mapped (as a freed slot's blocks are kept for the next request)."""
    total = prompts * length
    flops = 4 * prompts * hq * d * (length * (length + 1) // 2)
    row: dict[str, Any] = {"op": "kvcache_prefill", "shape": f"{prompts} x {length} h{hq}/{hkv} d{d} causal", "variants": {}}
    side.check()
    q = torch.randn(total, hq, d, device="cuda", dtype=ab.FP16)
    k = torch.randn(total, hkv, d, device="cuda", dtype=ab.FP16)
    v = torch.randn_like(k)
    cu = [i * length for i in range(prompts + 1)]
    outputs = {}
    runs = {}
    with contextlib.ExitStack() as stack:
        auto = stack.enter_context(side.ctx.plan_varlen(hq, hkv, d, cu, cu, causal=True))
        sm80 = stack.enter_context(side.ctx.plan_varlen(hq, hkv, d, cu, cu, causal=True, kernel=nkv.ATTENTION_KERNEL_SM80))
        for name, plan in (("contiguous, default kernel", auto), ("contiguous, SM80 family", sm80)):
            outputs[name] = torch.empty_like(q)
            runs[name] = plan.bind(q, k, v, outputs[name])
        caches = {}

        def add_cache(name, cache, ids, bind):
            """Fills the cache with the prompts' K/V and registers its SM80 run (bind(output) -> run)."""
            cache.append(ids, [length] * prompts)
            cache.write(0, k, v)
            caches[name] = (cache, ids)
            outputs[name] = torch.empty_like(q)
            runs[name] = bind(outputs[name])

        for page in PAGE_SIZES:
            cache = stack.enter_context(nkv.PagedKvCache(side.ctx, num_layers=1, num_heads_kv=hkv, head_dim=d, page_size=page,
                                                         max_sequences=prompts, max_sequence_length=length,
                                                         num_pages=prompts * length // page))
            add_cache(f"paged {page}", cache, [cache.add_sequence() for _ in range(prompts)],
                      lambda out, c=cache: sm80.bind_paged(q, c.view(c.K_POOL), c.view(c.V_POOL), c.view(c.BLOCK_TABLE), out))
        for layout, layout_name in ((nkv.VirtualKvCache.LAYER_MAJOR, "layer-major"), (nkv.VirtualKvCache.TOKEN_MAJOR, "token-major")):
            cache = stack.enter_context(nkv.VirtualKvCache(side.ctx, layout=layout, num_layers=VIRTUAL_LAYERS, num_heads_kv=hkv,
                                                           head_dim=d, max_slots=prompts, max_tokens=length))
            add_cache(f"virtual, {layout_name}", cache, [cache.add_slot() for _ in range(prompts)],
                      lambda out, c=cache: sm80.bind(q, c.view(c.K, 0), c.view(c.V, 0), out))
        for run in runs.values():
            run()
        torch.cuda.synchronize()
        names = list(runs)
        medians = timer.interleaved_medians_us([lambda i, name=name: runs[name]() for name in names])
        for name, us in zip(names, medians):
            entry = {"us": us, "tflops": flops / us / 1e6, "sm80_over_variant": medians[1] / us,
                     "default_over_variant": medians[0] / us}
            if name.startswith(("paged", "virtual")):
                entry["bit_identical"] = bool(torch.equal(outputs[name], outputs["contiguous, SM80 family"]))
            row["variants"][name] = entry
        # Including the append: host time of whole one-layer prefills, median of the repetitions.
        contiguous_cache = torch.empty(prompts, length, hkv, d, device="cuda", dtype=ab.FP16)
        v_cache = torch.empty_like(contiguous_cache)
        view_k = contiguous_cache.view(total, hkv, d)
        view_v = v_cache.view(total, hkv, d)
        out = torch.empty_like(q)
        into_contiguous = auto.bind(q, view_k, view_v, out)

        def contiguous_prefill():
            view_k.copy_(k)
            view_v.copy_(v)
            into_contiguous()

        def reset(name):  # untimed: the caches' prompts are truncated away before each prefill
            if name in caches:
                cache, ids = caches[name]
                for sequence in ids:
                    cache.truncate(sequence, 0)

        def cache_prefill(name):
            cache, ids = caches[name]
            cache.append(ids, [length] * prompts)
            cache.write(0, k, v)
            runs[name]()

        prefills = {"contiguous, default kernel": contiguous_prefill}
        prefills.update({name: (lambda name=name: cache_prefill(name)) for name in caches})
        samples = {name: [] for name in prefills}
        for _ in range(3):
            for name, fn in prefills.items():
                reset(name)
                fn()
        torch.cuda.synchronize()
        order = list(prefills)
        for rep in range(timer.reps):
            for j in range(len(order)):
                name = order[(rep + j) % len(order)]
                reset(name)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                prefills[name]()
                torch.cuda.synchronize()
                samples[name].append((time.perf_counter() - t0) * 1e6)
        for name, times in samples.items():
            row["variants"][name]["with_append_us"] = sorted(times)[len(times) // 2]
        base = row["variants"]["contiguous, default kernel"]["with_append_us"]
        for name in samples:
            row["variants"][name]["with_append_contiguous_over_variant"] = base / row["variants"][name]["with_append_us"]
    del q, k, v
    ab.free_memory()
    return row


def prefill_markdown(rows: list[dict]) -> str:
    lines = ["", "Prefill into a KV cache (one layer, causal; over the caches the SM80 kernel family runs; with append: "
             "host time of append + write + attention + wait, median).", "",
             "| shape | variant | attention | TFLOP/s | SM80 contiguous / variant | default contiguous / variant | "
             "with append | contiguous / variant, with append | output |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | error: {ab.cell(r['error'])} | | | | | | | |")
            continue
        first = True
        for name, v in r["variants"].items():
            with_append = f"{v['with_append_us']:.0f} µs" if "with_append_us" in v else "—"
            ratio = f"{v['with_append_contiguous_over_variant']:.3f}×" if "with_append_contiguous_over_variant" in v else "—"
            check = "—" if "bit_identical" not in v else ("bit-identical to SM80 contiguous" if v["bit_identical"]
                                                          else "**DIFFERENT BITS**")
            lines.append(f"| {r['shape'] if first else ''} | {name} | {v['us']:.1f} µs | {v['tflops']:.0f} | "
                         f"{v['sm80_over_variant']:.3f}× | {v['default_over_variant']:.3f}× | {with_append} | {ratio} | {check} |")
            first = False
    return "\n".join(lines) + "\n"


def wait_for_mapping(cache, slots: list[int], tokens: list[int], timeout_s: float = 10.0) -> None:
    """Until every slot's mapped blocks hold `tokens` (the background thread's work), or the timeout."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if all(cache.mapped_tokens(slot) >= n for slot, n in zip(slots, tokens)):
            return
        time.sleep(0.001)
    raise TimeoutError("reserve_ahead did not map the requested blocks in time")


def step_markdown(rows: list[dict]) -> str:
    lines = ["", "Decode step latency on the virtual-memory cache while slots grow across blocks (host time of append + "
             "per-layer write and decode + wait; must: with reserve_ahead, p99 within 5% of steps that map nothing).", "",
             "| cache | run | p50 | p99 | max | p50 / premapped | p99 / premapped | blocks mapped inline / ahead |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | error: {ab.cell(r['error'])} | | | | | | |")
            continue
        first = True
        for name, v in r["runs"].items():
            lines.append(f"| {r['shape'] if first else ''} | {name} | {v['p50_us']:.0f} µs | {v['p99_us']:.0f} µs | "
                         f"{v['max_us']:.0f} µs | {v['p50_over_premapped']:.3f}× | {v['p99_over_premapped']:.3f}× | "
                         f"{v['blocks_mapped_inline']} / {v['blocks_mapped_ahead']} |")
            first = False
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], env: dict) -> str:
    lines = [f"## Attention over KV caches — {env.get('device')}", "",
             "Decode, fp16: the contiguous kernel on [b, L, Hkv, d] and the same kernel reading through a block "
             "table (pages handed out in random order). All variants timed interleaved, call by call; "
             "ratio = contiguous time / variant time (must: paged ≥ 0.95 at page ≥ 16). "
             "A paged plan (options.kv_page_size) cuts the keys into more pieces than a contiguous one; \"contiguous "
             "plan\": the paged call with the contiguous plan. Bit-identical: with the same split count, the paged "
             "output equals the contiguous output bit for bit. Virtual: a 32-layer nkv_virtual_kv_cache holding the "
             "keys in layer 0, read through its strided view by the contiguous kernel and plan; each timed "
             "interleaved with the contiguous decode on its own (must: ≥ 0.99).", "",
             "| op | shape | variant | pieces per sequence | time | TB/s (K/V read) | of copy | contiguous / variant | "
             "output vs contiguous |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['shape']} | error: {ab.cell(r['error'])} | | | | | | |")
            continue
        first = True
        for name, v in r["variants"].items():
            if "error" in v:
                lines.append(f"| {r['op'] if first else ''} | {r['shape'] if first else ''} | {name} | | error: "
                             f"{ab.cell(v['error'])} | | | | |")
                first = False
                continue
            frac = f"{100 * v['fraction_of_copy']:.0f}%" if v.get("fraction_of_copy") else "—"
            check = "—"
            if name.startswith("virtual"):
                check = ("bit-identical (same plan)" if v.get("bit_identical") else "**DIFFERENT BITS**") + \
                        f"; {v['layers']} layers, {v['tokens_per_block']} tokens per 2 MiB page"
            elif "bit_identical" in v:
                check = ("bit-identical" if v["bit_identical"] else "**DIFFERENT BITS**") + \
                        f" at 4 pieces; rel. diff {v['rel_diff']:.1e}"
            elif "rel_diff" in v:
                check = "bit-identical (same plan)" if v["rel_diff"] == 0 else f"rel. diff {v['rel_diff']:.1e}"
            plan_name = name.split(",")[0] if "contiguous plan" not in name and "virtual" not in name else "contiguous"
            splits = r.get("nativekv_splits", {}).get(plan_name, "?")
            lines.append(f"| {r['op'] if first else ''} | {r['shape'] if first else ''} | {name} | {splits} | "
                         f"{v['us']:.1f} µs | {v['tbps']:.2f} | {frac} | {v['contiguous_over_variant']:.3f}× | {check} |")
            first = False
    return "\n".join(lines) + "\n"


def cases(quick: bool):
    scale = 8 if quick else 1
    out = []
    for b, seqlen in ((64, 4096), (8, 32768)):
        seqlen //= scale
        out.append((f"kvcache_decode b{b} L{seqlen}",
                    lambda t, n, c, b=b, seqlen=seqlen: bench_decode(t, n, c, b, seqlen)))
    out.append((f"kvcache_prefill 16 x {2048 // scale}",
                lambda t, n, c: bench_prefill(t, n, c, length=2048 // scale)))
    for layout, name in ((nkv.VirtualKvCache.TOKEN_MAJOR, "token-major"), (nkv.VirtualKvCache.LAYER_MAJOR, "layer-major")):
        out.append((f"kvcache_step_latency {name}",
                    lambda t, n, c, layout=layout: bench_step_latency(t, n, c, layout, steps=64 if quick else 512)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown", metavar="PATH", help="append the Markdown section to this file")
    parser.add_argument("--reps", type=int)
    parser.add_argument("--only", default="", help="run only the cases whose name contains this substring")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("PyTorch has no CUDA device here: nothing to measure", file=sys.stderr)
        return 77
    reps = args.reps or (10 if args.quick else 30)
    timer = ab.Timer(reps=reps, warmup=3 if args.quick else 5)
    stream = torch.cuda.Stream()
    rows: list[dict] = []
    failed = False
    with torch.cuda.stream(stream):
        side = ab.NativeKvSide()
        env = {"op": "kvcache_environment", "device": torch.cuda.get_device_name(), "reps": reps,
               "nativekv": side.lib.version() if side.lib else None, "nativekv_error": side.error}
        print(json.dumps(env), flush=True)
        copy = ab.copy_bandwidth(timer)
        for name, fn in [(name, fn) for name, fn in cases(args.quick) if args.only in name]:
            print(f"[kvcache_bench] {name}", file=sys.stderr, flush=True)
            try:
                row = fn(timer, side, copy["tbps"])
                failed |= any(v.get("bit_identical") is False or "error" in v for v in row.get("variants", {}).values())
            except Exception as e:
                traceback.print_exc(file=sys.stderr)
                op, _, shape = name.partition(" ")
                row = {"op": op, "shape": shape, "error": ab.short_error(e)}
                failed = True
                ab.free_memory()
            rows.append(row)
            print(json.dumps(row), flush=True)
        if side.ctx is not None:
            side.ctx.close()
    text = markdown([r for r in rows if r["op"] == "kvcache_decode"], env) + \
        prefill_markdown([r for r in rows if r["op"] == "kvcache_prefill"]) + \
        step_markdown([r for r in rows if r["op"] == "kvcache_step_latency"])
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    else:
        print(text, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
