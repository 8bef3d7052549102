#!/usr/bin/env python3
"""Decode split-count sweep, on a GPU machine: times NativeKv decode (fp16, d128, GQA 32/8) at the
benchmark's three shapes with the plan's own choice (num_splits 0) and with fixed split counts, next to
SDPA cuDNN and flash in the same process. For tuning the split model (bench/NOTES.md, a5).

    NATIVEKV_LIBRARY=build-gpu/lib/libnativekv.so SPLITS=0,1,2,16,32 python3 bench/decode_split_sweep.py
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import attention_bench as ab  # noqa: E402

SHAPES = ((64, 4096), (8, 32768), (1, 131072))


def main() -> int:
    splits_list = tuple(int(x) for x in os.environ.get("SPLITS", "0,1,2,16,32").split(","))
    timer = ab.Timer(reps=30, warmup=5)
    stream = torch.cuda.Stream()  # a context cannot be given torch's default (NULL) stream
    with torch.cuda.stream(stream):
        side = ab.NativeKvSide()
        side.check()
        copy = ab.copy_bandwidth(timer)
        print(f"{torch.cuda.get_device_name()}: device-to-device copy {copy['tbps']:.2f} TB/s")
        for b, seqlen in SHAPES:
            hq, hkv, d = 32, 8, 128
            kv_bytes = 2 * b * seqlen * hkv * d * 2
            sets = ab.rotation(kv_bytes)
            data = ab.decode_inputs(sets, b, seqlen, hq, hkv, d)
            for splits in splits_list:
                with side.ctx.plan_decode(hq, hkv, d, 1, [seqlen] * b, num_splits=splits) as plan:
                    chosen = plan.info()["num_splits"]
                    runs = [plan.bind(s["q"], s["k"], s["v"], s["o"]) for s in data]
                    us = timer.median_us(lambda i: runs[i % sets]())
                print(f"b{b} L{seqlen} num_splits={splits} (plan: {chosen}): {us:.1f} us, "
                      f"{kv_bytes / us / 1e6:.2f} TB/s", flush=True)
            inputs = [(s["q"].transpose(1, 2), s["k_peer"], s["v_peer"]) for s in data]
            for name in ("cudnn", "flash"):
                result, _ = ab.time_sdpa(timer, ab.SDPA_BACKENDS[name], inputs, enable_gqa=True)
                print(f"b{b} L{seqlen} sdpa_{name}: {result.get('us', result.get('error'))}", flush=True)
            del data, inputs
            ab.free_memory()
    return 0


if __name__ == "__main__":
    sys.exit(main())
