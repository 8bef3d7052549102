"""Exploratory (bench/NOTES.md p6): decode over K/V with a token stride wider than a row, vs contiguous K/V, on one GPU.

  STRIDES_KIB=4,8,...   token strides in PyTorch (cudaMalloc) memory, K then V at OFFSET_KIB in each token's row
  LAYERS=32,8           token-major virtual caches of that many layers (view of layer 0), at each of SPLITS
  PAGE_LAYOUTS=1        the token-major cache's page layout in PyTorch memory (32 layers, 16 tokens per 2 MiB page, read
                        through 5-D views): each layer's K rows then its V rows (the cache's), or K|V rows per token
"""
import os, sys, torch
sys.path.insert(0, "bench/peers"); sys.path.insert(0, "tests/peer")
import attention_bench as ab
import nativekv_ctypes as nkv

timer = ab.Timer(reps=30, warmup=5)
env = lambda name, default: [x for x in os.environ.get(name, default).split(",") if x]
SHAPES = [tuple(int(x) for x in c.split("x")) for c in env("SHAPES", "64x4096,8x32768")]
STRIDES = [float(x) for x in env("STRIDES_KIB", "4,8,32,128,132,136")]
OFFSET_KIB = float(os.environ.get("OFFSET_KIB", "0"))
LAYERS = [int(x) for x in env("LAYERS", "32,8")]
SPLITS = [int(x) for x in env("SPLITS", "0,1,2,4,8")]
PAGE_LAYOUTS = os.environ.get("PAGE_LAYOUTS", "0") == "1"


def compare(label, plan_run, contiguous, reference, out):
    plan_run(); torch.cuda.synchronize()
    c_us, us = timer.interleaved_medians_us([lambda i: contiguous(), lambda i: plan_run()])
    print(f"{label}: contiguous {c_us:7.1f} us, strided {us:7.1f} us, ratio {c_us / us:.3f}, "
          f"bit-identical {torch.equal(out, reference)}", flush=True)


stream = torch.cuda.Stream()
with torch.cuda.stream(stream):
    side = ab.NativeKvSide(); side.check()
    for b, L in SHAPES:
        q = torch.randn(b, 1, 32, 128, device="cuda", dtype=ab.FP16)
        k = torch.randn(b, L, 8, 128, device="cuda", dtype=ab.FP16)
        v = torch.randn_like(k)
        plan = side.ctx.plan_decode(32, 8, 128, 1, [L] * b)
        reference = torch.empty_like(q)
        contiguous = plan.bind(q, k, v, reference)
        contiguous(); torch.cuda.synchronize()
        for kib in STRIDES:
            row, off = int(kib * 1024) // 2, int(OFFSET_KIB * 1024) // 2  # elements
            buf = torch.empty(b, L, row, device="cuda", dtype=ab.FP16)
            ks, vs = (buf[:, :, off + i * 1024:off + (i + 1) * 1024].view(b, L, 8, 128) for i in (0, 1))
            ks.copy_(k); vs.copy_(v)
            out = torch.empty_like(q)
            compare(f"b{b} L{L} token stride {kib:6.1f} KiB (cudaMalloc, offset {OFFSET_KIB} KiB)",
                    plan.bind(q, ks, vs, out), contiguous, reference, out)
            del buf, ks, vs; ab.free_memory()
        if PAGE_LAYOUTS:
            pages = b * L // 16
            for name, dims, pick in (("K rows then V rows", (pages, 32, 2, 16, 8, 128), lambda x, i: x[:, 0, i]),
                                     ("K|V rows per token", (pages, 32, 16, 2, 8, 128), lambda x, i: x[:, 0, :, i])):
                buf = torch.empty(dims, device="cuda", dtype=ab.FP16)
                ks, vs = (pick(buf, i).unflatten(0, (b, L // 16)) for i in (0, 1))
                ks.copy_(k.view(b, L // 16, 16, 8, 128)); vs.copy_(v.view(b, L // 16, 16, 8, 128))
                out = torch.empty_like(q)
                compare(f"b{b} L{L} pages of 16 tokens x 32 layers, {name}", plan.bind(q, ks, vs, out), contiguous, reference, out)
                del buf, ks, vs; ab.free_memory()
        for layers in LAYERS:
            with nkv.VirtualKvCache(side.ctx, layout=nkv.VirtualKvCache.TOKEN_MAJOR, num_layers=layers, num_heads_kv=8,
                                    head_dim=128, max_slots=b, max_tokens=L) as cache:
                cache.append([cache.add_slot() for _ in range(b)], [L] * b)
                cache.write(0, k.reshape(b * L, 8, 128), v.reshape(b * L, 8, 128))
                for splits in SPLITS:
                    with side.ctx.plan_decode(32, 8, 128, 1, [L] * b, num_splits=splits) as split_plan:
                        out = torch.empty_like(q)
                        compare(f"b{b} L{L} token-major cache, {layers} layers ({cache.info()['tokens_per_block']} tokens "
                                f"per page), splits {splits} (pieces {split_plan.info()['num_splits']})",
                                split_plan.bind(q, cache.view(cache.K, 0), cache.view(cache.V, 0), out), contiguous,
                                reference, out)
            ab.free_memory()
        plan.close(); del q, k, v; ab.free_memory()
