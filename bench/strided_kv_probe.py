"""Exploratory: decode over K/V with a token stride wider than a row (the token-major cache's view), in
cudaMalloc memory (PyTorch) and in the virtual cache, vs contiguous K/V. STRIDES_KIB: token strides."""
import os, sys, torch
sys.path.insert(0, "bench/peers"); sys.path.insert(0, "tests/peer")
import attention_bench as ab
import nativekv_ctypes as nkv

timer = ab.Timer(reps=30, warmup=5)
SHAPES = [tuple(int(x) for x in c.split("x")) for c in os.environ.get("SHAPES", "64x4096,8x32768").split(",")]
STRIDES = [float(x) for x in os.environ.get("STRIDES_KIB", "4,8,32,128,132,136").split(",")]
OFFSET_KIB = float(os.environ.get("OFFSET_KIB", "0"))
stream = torch.cuda.Stream()
with torch.cuda.stream(stream):
    side = ab.NativeKvSide(); side.check()
    for b, L in SHAPES:
        q = torch.randn(b, 1, 32, 128, device="cuda", dtype=ab.FP16)
        k = torch.randn(b, L, 8, 128, device="cuda", dtype=ab.FP16)
        v = torch.randn_like(k)
        plan = side.ctx.plan_decode(32, 8, 128, 1, [L] * b)
        o_ref = torch.empty_like(q)
        contiguous = plan.bind(q, k, v, o_ref)
        contiguous(); torch.cuda.synchronize()
        for kib in STRIDES:
            row = int(kib * 1024) // 2  # elements per token
            off = int(OFFSET_KIB * 1024) // 2
            buf = torch.empty(b, L, row, device="cuda", dtype=ab.FP16)
            ks = buf[:, :, off:off + 1024].view(b, L, 8, 128)
            vs = buf[:, :, off + 1024:off + 2048].view(b, L, 8, 128) if kib >= 4 + OFFSET_KIB else None
            ks.copy_(k); vs.copy_(v)
            o = torch.empty_like(q)
            run = plan.bind(q, ks, vs, o)
            run(); torch.cuda.synchronize()
            same = torch.equal(o, o_ref)
            c_us, us = timer.interleaved_medians_us([lambda i: contiguous(), lambda i: run()])
            print(f"b{b} L{L} token stride {kib:6.1f} KiB (cudaMalloc, offset {OFFSET_KIB} KiB): contiguous {c_us:7.1f} us, "
                  f"strided {us:7.1f} us, ratio {c_us / us:.3f}, bit-identical {same}", flush=True)
            del buf, ks, vs; ab.free_memory()
        plan.close(); del q, k, v; ab.free_memory()
