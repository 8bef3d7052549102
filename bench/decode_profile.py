#!/usr/bin/env python3
"""One decode call (fp16, d128, GQA 32/8, q_len 1) by NativeKv or by a PyTorch SDPA backend, between
cudaProfilerStart/Stop, so that `ncu --profile-from-start off` sees only that call's kernels. For
comparing NativeKv's decode kernel with the peers' (bench/decode_profile.sh runs both).

    ncu --profile-from-start off --set full python3 bench/decode_profile.py --backend cudnn --batch 64 --seqlen 4096
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "peer"))
import nativekv_ctypes as nkv  # noqa: E402

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["nativekv", *BACKENDS], default="nativekv")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=4096)
    args = ap.parse_args()
    b, seqlen, hq, hkv, d = args.batch, args.seqlen, 32, 8, 128
    q = torch.randn(b, 1, hq, d, device="cuda", dtype=torch.float16)
    k = torch.randn(b, seqlen, hkv, d, device="cuda", dtype=torch.float16)
    v = torch.randn(b, seqlen, hkv, d, device="cuda", dtype=torch.float16)
    stream = torch.cuda.Stream()  # a NativeKv context cannot be given torch's default (NULL) stream
    with torch.cuda.stream(stream):
        if args.backend == "nativekv":
            o = torch.empty_like(q)
            with nkv.load().cuda_context(stream) as ctx, ctx.plan_decode(hq, hkv, d, 1, [seqlen] * b) as plan:
                run = plan.bind(q, k, v, o)
                run()  # warm-up, outside the profiled range
                torch.cuda.synchronize()
                torch.cuda.cudart().cudaProfilerStart()
                run()
                torch.cuda.synchronize()
                torch.cuda.cudart().cudaProfilerStop()
        else:
            qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
            with sdpa_kernel(BACKENDS[args.backend]):
                F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)
                torch.cuda.synchronize()
                torch.cuda.cudart().cudaProfilerStart()
                F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)
                torch.cuda.synchronize()
                torch.cuda.cudart().cudaProfilerStop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
