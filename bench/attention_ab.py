#!/usr/bin/env python3
"""A/B of several NativeKv builds, on a GPU machine: each build and a PyTorch peer are timed interleaved call
by call (the order rotating), so a kernel change is measured against the kept one and the peer in the same
clock and thermal state (bench/NOTES.md records what each change measured). Cases: the benchmark's decode
shapes (fp16 d128 GQA 32/8, against SDPA cuDNN) and prefill shapes (fp16 b4 s8192, default kernel path,
against SDPA flash).

    LIBS=main=/tmp/b-main/lib/libnativekv.so,new=build-gpu/lib/libnativekv.so CASES=b64,d64c ROUNDS=3 \\
        python3 bench/attention_ab.py
"""
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import attention_bench as ab  # noqa: E402
import nativekv_ctypes as nkv  # noqa: E402

DECODE = {"b64": (64, 4096), "b8": (8, 32768), "b1": (1, 131072)}
PREFILL = {"d128": (32, 128, False), "d128c": (32, 128, True), "d64": (64, 64, False), "d64c": (64, 64, True)}


def decode_case(contexts, name: str):
    """(label, NativeKv calls per build, peer call, peer backend, plans to close) for a decode shape."""
    b, seqlen = DECODE[name]
    hq, hkv, d = 32, 8, 128
    sets = ab.rotation(2 * b * seqlen * hkv * d * 2)
    data = ab.decode_inputs(sets, b, seqlen, hq, hkv, d)
    peer_inputs = [(s["q"].transpose(1, 2), s["k_peer"], s["v_peer"]) for s in data]
    plans = [ctx.plan_decode(hq, hkv, d, 1, [seqlen] * b) for ctx in contexts]
    fns = []
    for plan in plans:
        runs = [plan.bind(s["q"], s["k"], s["v"], s["o"]) for s in data]
        fns.append(lambda i, runs=runs: runs[i % sets]())
    peer = lambda i: F.scaled_dot_product_attention(*peer_inputs[i % sets], enable_gqa=True)  # noqa: E731
    return f"decode b{b} L{seqlen}", fns, peer, "cudnn", plans


def prefill_case(contexts, name: str):
    h, d, causal = PREFILL[name]
    b, s = 4, 8192
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.float16) for _ in range(3))
    cu = [i * s for i in range(b + 1)]
    plans = [ctx.plan_varlen(h, h, d, cu, cu, causal=causal) for ctx in contexts]
    fns = []
    for plan in plans:
        run = plan.bind(*(x.view(b * s, h, d) for x in (q, k, v, torch.empty_like(q))))
        fns.append(lambda i, run=run: run())
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    peer = lambda i: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)  # noqa: E731
    return f"prefill b{b} h{h} s{s} d{d}{' causal' if causal else ''}", fns, peer, "flash", plans


def main() -> int:
    libs = [item.split("=", 1) for item in os.environ["LIBS"].split(",")]
    rounds = int(os.environ.get("ROUNDS", "3"))
    cases = os.environ.get("CASES", "b64,b8,b1").split(",")
    timer = ab.Timer(reps=int(os.environ.get("REPS", "20")), warmup=3)
    stream = torch.cuda.Stream()  # a context cannot be given torch's default (NULL) stream
    with torch.cuda.stream(stream):
        contexts = [nkv.Library(path).cuda_context() for _, path in libs]
        print(f"{torch.cuda.get_device_name()}; builds: {', '.join(name for name, _ in libs)}", flush=True)
        for case in cases:
            label, fns, peer, backend, plans = (decode_case if case in DECODE else prefill_case)(contexts, case)
            try:
                names = [name for name, _ in libs] + [backend]
                with sdpa_kernel(ab.SDPA_BACKENDS[backend]):
                    for r in range(rounds):
                        us = timer.interleaved_medians_us(fns + [peer])
                        cells = ", ".join(f"{n} {t:.1f}" for n, t in zip(names, us))
                        ratios = ", ".join(f"{n} {us[-1] / t:.4f}" for n, t in zip(names[:-1], us[:-1]))
                        print(f"{label} round {r + 1}: us {cells}; {backend}/ours {ratios}", flush=True)
            finally:
                for plan in plans:
                    plan.close()
            del fns, peer
            ab.free_memory()
    return 0


if __name__ == "__main__":
    sys.exit(main())
