"""Exploratory: decode over the token-major virtual cache vs contiguous, by split count and layer count
(tokens per 2 MiB page = 2 MiB / (layers x 2 x Hkv x d x 2 bytes))."""
import os, sys, torch
sys.path.insert(0, "bench/peers"); sys.path.insert(0, "tests/peer")
import attention_bench as ab
import nativekv_ctypes as nkv

timer = ab.Timer(reps=30, warmup=5)
SHAPES = [tuple(int(x) for x in c.split("x")) for c in os.environ.get("SHAPES", "64x4096,8x32768").split(",")]
SPLITS = [int(x) for x in os.environ.get("SPLITS", "0,1,2,4,8").split(",")]
LAYERS = [int(x) for x in os.environ.get("LAYERS", "32,8").split(",")]
stream = torch.cuda.Stream()
with torch.cuda.stream(stream):
    side = ab.NativeKvSide(); side.check()
    for b, L in SHAPES:
        q = torch.randn(b, 1, 32, 128, device="cuda", dtype=ab.FP16)
        k = torch.randn(b, L, 8, 128, device="cuda", dtype=ab.FP16)
        v = torch.randn_like(k)
        base = side.ctx.plan_decode(32, 8, 128, 1, [L] * b)
        contiguous = base.bind(q, k, v, torch.empty_like(q))
        for layers in LAYERS:
            with nkv.VirtualKvCache(side.ctx, layout=nkv.VirtualKvCache.TOKEN_MAJOR, num_layers=layers, num_heads_kv=8,
                                    head_dim=128, max_slots=b, max_tokens=L) as cache:
                slots = [cache.add_slot() for _ in range(b)]
                cache.append(slots, [L] * b)
                cache.write(0, k.reshape(b * L, 8, 128), v.reshape(b * L, 8, 128))
                kv, vv = cache.view(cache.K, 0), cache.view(cache.V, 0)
                for splits in SPLITS:
                    plan = side.ctx.plan_decode(32, 8, 128, 1, [L] * b, num_splits=splits)
                    run = plan.bind(q, kv, vv, torch.empty_like(q))
                    c_us, us = timer.interleaved_medians_us([lambda i: contiguous(), lambda i: run()])
                    print(f"b{b} L{L} layers {layers:2d} tokens/page {cache.info()['tokens_per_block']:4d} splits {splits} "
                          f"(pieces {plan.info()['num_splits']}): contiguous {c_us:7.1f} us, token-major {us:7.1f} us, "
                          f"ratio {c_us / us:.3f}", flush=True)
                    plan.close()
            ab.free_memory()
        base.close(); del q, k, v; ab.free_memory()
