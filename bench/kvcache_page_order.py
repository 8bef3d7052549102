"""Exploratory: paged decode time vs page order (identity, random within groups of G pages, random)."""
import sys, os, torch
sys.path.insert(0, "bench/peers")
import attention_bench as ab

def pools(k, v, page, order):
    b, L, hkv, d = k.shape
    n = b * L // page
    pools = []
    for x in (k, v):
        p = torch.empty(n, page, hkv, d, device="cuda", dtype=x.dtype)
        p[order] = x.reshape(n, page, hkv, d)
        pools.append(p)
    return pools[0], pools[1], order.to(torch.int32).reshape(b, L // page).contiguous()

def orders(n, page, gen):
    out = {"identity": torch.arange(n)}
    for group_bytes in (2 << 20, 32 << 20):
        g = max(1, group_bytes // (page * 2048))
        if g < n:
            o = torch.cat([torch.randperm(g, generator=gen) + s for s in range(0, n, g)])
            out[f"random within {group_bytes >> 20} MiB"] = o
    out["random"] = torch.randperm(n, generator=gen)
    return out

timer = ab.Timer(reps=30, warmup=5)
SHAPES = [tuple(int(x) for x in c.split("x")) for c in os.environ.get("SHAPES", "64x4096,8x32768").split(",")]
PAGES = [int(x) for x in os.environ.get("PAGES", "16,64").split(",")]
SPLITS = [int(x) for x in os.environ.get("SPLITS", "0").split(",")]
stream = torch.cuda.Stream()
with torch.cuda.stream(stream):
    side = ab.NativeKvSide(); side.check()
    gen = torch.Generator().manual_seed(0)
    for (b, L), splits in [(shape, n) for shape in SHAPES for n in SPLITS]:
        q = torch.randn(b, 1, 32, 128, device="cuda", dtype=ab.FP16)
        k = torch.randn(b, L, 8, 128, device="cuda", dtype=ab.FP16)
        v = torch.randn_like(k)
        plan = side.ctx.plan_decode(32, 8, 128, 1, [L] * b, num_splits=splits)
        print(f"b{b} L{L}: splits {plan.info()['num_splits']}", flush=True)
        for page in PAGES:
            n = b * L // page
            names, fns = ["contiguous"], [plan.bind(q, k, v, torch.empty_like(q))]
            keep = []
            for name, o in orders(n, page, gen).items():
                kp, vp, t = pools(k, v, page, o.cuda()); keep.append((kp, vp, t))
                names.append(f"page {page} {name}"); fns.append(plan.bind_paged(q, kp, vp, t, torch.empty_like(q)))
            med = timer.interleaved_medians_us([lambda i, f=f: f() for f in fns])
            for nm, us in zip(names, med):
                print(f"  {nm:34s} {us:7.1f} us  {med[0]/us:.3f}x", flush=True)
            del keep; ab.free_memory()
        plan.close(); del q, k, v; ab.free_memory()
