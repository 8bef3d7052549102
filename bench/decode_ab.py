#!/usr/bin/env python3
"""Decode A/B of several NativeKv builds, on a GPU machine: each build's decode (fp16, d128, GQA 32/8) and
SDPA cuDNN are timed interleaved call by call (the order rotating), at the benchmark's three shapes, so a
kernel change is measured against the kept one and the peer in the same clock and thermal state
(bench/NOTES.md records what each change measured).

    LIBS=main=/tmp/b-main/lib/libnativekv.so,new=build-gpu/lib/libnativekv.so ROUNDS=3 python3 bench/decode_ab.py
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

SHAPES = {"b64": (64, 4096), "b8": (8, 32768), "b1": (1, 131072)}


def main() -> int:
    libs = [item.split("=", 1) for item in os.environ["LIBS"].split(",")]
    rounds = int(os.environ.get("ROUNDS", "3"))
    shapes = [SHAPES[s] for s in os.environ.get("SHAPES", "b64,b8,b1").split(",")]
    timer = ab.Timer(reps=int(os.environ.get("REPS", "40")), warmup=5)
    stream = torch.cuda.Stream()  # a context cannot be given torch's default (NULL) stream
    with torch.cuda.stream(stream):
        contexts = [(name, nkv.Library(path).cuda_context()) for name, path in libs]
        print(f"{torch.cuda.get_device_name()}; builds: {', '.join(name for name, _ in libs)}", flush=True)
        for b, seqlen in shapes:
            hq, hkv, d = 32, 8, 128
            kv_bytes = 2 * b * seqlen * hkv * d * 2
            sets = ab.rotation(kv_bytes)
            data = ab.decode_inputs(sets, b, seqlen, hq, hkv, d)
            peer_inputs = [(s["q"].transpose(1, 2), s["k_peer"], s["v_peer"]) for s in data]
            plans = [ctx.plan_decode(hq, hkv, d, 1, [seqlen] * b) for _, ctx in contexts]
            try:
                fns = []
                for plan in plans:
                    runs = [plan.bind(s["q"], s["k"], s["v"], s["o"]) for s in data]
                    fns.append(lambda i, runs=runs: runs[i % sets]())
                fns.append(lambda i: F.scaled_dot_product_attention(*peer_inputs[i % sets], enable_gqa=True))
                names = [name for name, _ in libs] + ["cudnn"]
                with sdpa_kernel(ab.SDPA_BACKENDS["cudnn"]):
                    for r in range(rounds):
                        us = timer.interleaved_medians_us(fns)
                        cells = ", ".join(f"{n} {t:.1f}" for n, t in zip(names, us))
                        ratios = ", ".join(f"{n} {us[-1] / t:.4f}" for n, t in zip(names[:-1], us[:-1]))
                        print(f"b{b} L{seqlen} round {r + 1}: us {cells}; cuDNN/ours {ratios}", flush=True)
            finally:
                for plan in plans:
                    plan.close()
            del data, peer_inputs
            ab.free_memory()
    return 0


if __name__ == "__main__":
    sys.exit(main())
