#!/usr/bin/env python3
"""Layout probe for the sm_90a varlen kernel, on a GPU machine: inputs built so that a wrong operand
layout shows up as a readable map instead of a large relative error.

  * P probe: V = identity (L = head_dim keys), so O = softmax(QK^T) row by row; checks the QK^T
    descriptors and the accumulator -> register-A mapping of P.
  * V probe: Q and K one-hot (scale 1, logit 30 on the diagonal), so row r attends to key r alone and
    O[r] = V[r]; V filled with its row index, then its column index, tells which V element landed where.

    NATIVEKV_LIBRARY=build/lib/libnativekv.so python3 bench/sm90_layout_probe.py [--kernel sm90|sm80]
Exit status 0 when every probe matches, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "peer"))
import nativekv_ctypes as nkv  # noqa: E402

KERNELS = {"sm90": nkv.ATTENTION_KERNEL_SM90, "sm80": nkv.ATTENTION_KERNEL_SM80, "auto": nkv.ATTENTION_KERNEL_AUTO}


def run(ctx, q, k, v, kernel, scale=0.0):
    L, d = q.shape[0], q.shape[-1]
    o = torch.full_like(q, float("nan"))
    with ctx.plan_varlen(1, 1, d, [0, L], [0, k.shape[0]], softmax_scale=scale, kernel=kernel) as plan:
        plan.run(q, k, v, o)
    torch.cuda.synchronize()
    return o[:, 0, :].float()


def show_mismatch(name, got, want, tolerance):
    bad = (got - want).abs() > tolerance
    bad |= ~torch.isfinite(got)
    if not bad.any():
        print(f"{name}: OK")
        return True
    rows, cols = got.shape
    print(f"{name}: {int(bad.sum())} of {bad.numel()} elements wrong")
    # One character per 8x8 block: '.' right, '#' wrong.
    for r in range(0, rows, 8):
        print("  " + "".join("#" if bad[r:r + 8, c:c + 8].any() else "." for c in range(0, cols, 8)))
    return False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", default="sm90", choices=KERNELS)
    args = ap.parse_args()
    kernel = KERNELS[args.kernel]
    lib = nkv.load()
    ok = True
    stream = torch.cuda.Stream()  # a context cannot be given torch's default (NULL) stream
    with torch.cuda.stream(stream), lib.cuda_context(stream) as ctx:
        for d in (64, 128):
            torch.manual_seed(0)
            L = 128
            dev = "cuda"
            # P probe (L keys, V = identity over the first min(L, d) columns).
            q = torch.randn(L, 1, d, device=dev, dtype=torch.float16)
            k = torch.randn(L, 1, d, device=dev, dtype=torch.float16)
            v = torch.zeros(L, 1, d, device=dev, dtype=torch.float16)
            n = min(L, d)
            v[:n, 0, :n] = torch.eye(n, device=dev, dtype=torch.float16)
            p = torch.softmax(q[:, 0].double() @ k[:, 0].double().T / d ** 0.5, dim=-1)
            got = run(ctx, q, k, v, kernel)
            ok &= show_mismatch(f"d{d} P probe (O = P[:, :{n}])", got[:, :n], p[:, :n].float(), 2e-3)
            # V probe: row r sees key r only (L = d rows, so every key has its own channel).
            lv = min(L, d)
            q = torch.zeros(lv, 1, d, device=dev, dtype=torch.float16)
            k = torch.zeros(lv, 1, d, device=dev, dtype=torch.float16)
            idx = torch.arange(lv, device=dev)
            q[idx, 0, idx] = 30.0
            k[idx, 0, idx] = 1.0
            rows = torch.arange(lv, device=dev, dtype=torch.float16)[:, None].expand(lv, d)
            cols = torch.arange(d, device=dev, dtype=torch.float16)[None, :].expand(lv, d)
            for name, fill in (("row", rows), ("column", cols)):
                v = fill.contiguous().view(lv, 1, d)
                got = run(ctx, q, k, v, kernel, scale=1.0)
                if not show_mismatch(f"d{d} V probe ({name} index)", got, fill.float(), 0.05):
                    ok = False
                    print(f"  first rows of O (V = {name} index):")
                    for r in range(0, 24, 8):
                        print("   ", [round(x, 1) for x in got[r, :16].tolist()])
            # Random end-to-end case.
            q = torch.randn(L, 1, d, device=dev, dtype=torch.float16)
            k = torch.randn(L, 1, d, device=dev, dtype=torch.float16)
            v = torch.randn(L, 1, d, device=dev, dtype=torch.float16)
            ref = torch.softmax(q[:, 0].double() @ k[:, 0].double().T / d ** 0.5, -1) @ v[:, 0].double()
            got = run(ctx, q, k, v, kernel)
            ok &= show_mismatch(f"d{d} random", got, ref.float(), 5e-3)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
