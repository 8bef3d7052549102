#!/usr/bin/env python3
"""NativeKv attention (CUDA, through the C ABI) against an fp64 reference and against PyTorch's SDPA.

For every case the same fp16/bf16 inputs go to
  * the reference: float64 matmul + softmax on the GPU, with nativekv.h's bottom-right causal mask;
  * NativeKv: nkv_attention_varlen / nkv_attention_decode through tests/peer/nativekv_ctypes.py;
  * the peer: torch.nn.functional.scaled_dot_product_attention, per sequence, in the inputs' dtype.
The design's accuracy rule (DESIGN.md, Testing) is checked on the relative Frobenius error against the
reference: NativeKv <= max(1.2 x PyTorch, 1e-4) and <= 1e-3 (fp16) / 8e-3 (bf16), both over the whole case
and for its worst sequence (a short sequence's error hides in the total), and the LSE (natural log) within
1e-3 absolute. Outputs are poisoned with NaN before each run, so an unwritten element fails.

Run on a GPU machine after building the CUDA backend:
    python3 tests/peer/test_attention_peer.py [--only SUBSTRING]
Exit status: 0 all passed, 1 a case failed, 77 skipped (no PyTorch or no CUDA device; ctest's skip code).
"""
from __future__ import annotations

import argparse
import math
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the peer test needs PyTorch; say so and skip instead of failing
    print("PyTorch is not installed: skipping the attention peer test")
    sys.exit(77)

import nativekv_ctypes as nkv

HQ, HKV = 8, 2                     # GQA: 4 query heads per key/value head
HEAD_DIMS = (64, 96, 128, 256)     # every head_dim the header supports
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {"fp16": 1e-3, "bf16": 8e-3}  # relative Frobenius error against fp64 (DESIGN.md)
PEER_FACTOR, PEER_FLOOR = 1.2, 1e-4
LSE_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------------
# Reference and peer
# --------------------------------------------------------------------------------------------------

def visible_mask(lq: int, lk: int, device) -> torch.Tensor:
    """[lq, lk] bool, True where key j is visible to query i under nativekv.h's bottom-right causal mask."""
    i = torch.arange(lq, device=device)[:, None]
    j = torch.arange(lk, device=device)[None, :]
    return j <= i + (lk - lq)


def reference(q, k, v, causal: bool, scale: float):
    """fp64 attention of one sequence. q [lq, Hq, d], k/v [lk, Hkv, d] -> (o [lq, Hq, d], lse [Hq, lq]) float64.
    A query that sees no key gets O = 0 and LSE = -inf, as the header specifies."""
    lq, hq, d = q.shape
    lk, hkv = k.shape[0], k.shape[1]
    if lk == 0 or lq == 0:
        return (torch.zeros(lq, hq, d, dtype=torch.float64, device=q.device),
                torch.full((hq, lq), -math.inf, dtype=torch.float64, device=q.device))
    group = hq // hkv
    q64 = q.to(torch.float64).transpose(0, 1)                                   # [Hq, lq, d]
    k64 = k.to(torch.float64).repeat_interleave(group, dim=1).transpose(0, 1)   # [Hq, lk, d]
    v64 = v.to(torch.float64).repeat_interleave(group, dim=1).transpose(0, 1)
    s = torch.matmul(q64, k64.transpose(1, 2)) * scale                          # [Hq, lq, lk]
    if causal:
        s = s.masked_fill(~visible_mask(lq, lk, q.device), -math.inf)
    lse = torch.logsumexp(s, dim=-1)                                            # -inf where nothing is visible
    # Subtracting 0 instead of -inf on empty rows makes their probabilities exp(-inf) = 0, not NaN.
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])
    o = torch.matmul(p, v64)                                                    # [Hq, lq, d]
    return o.transpose(0, 1).contiguous(), lse


def sdpa_peer(q, k, v, causal: bool, scale: float) -> torch.Tensor:
    """PyTorch SDPA (default backend choice) on one sequence, in the inputs' dtype. Needs lk >= lq when
    causal (no fully masked rows, which SDPA does not define as NativeKv does)."""
    lq, hq, _ = q.shape
    lk, hkv = k.shape[0], k.shape[1]
    group = hq // hkv
    # repeat_interleave is exactly GQA's head mapping and works with every SDPA backend and mask.
    qt = q.transpose(0, 1).unsqueeze(0)                                         # [1, Hq, lq, d]
    kt = k.repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0)
    vt = v.repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0)
    mask, is_causal = None, False
    if causal and lq == lk:
        is_causal = True  # top-left and bottom-right alignment coincide for a square mask
    elif causal:
        mask = visible_mask(lq, lk, q.device)  # SDPA's is_causal is top-left aligned: spell the mask out
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=is_causal, scale=scale)
    return out.squeeze(0).transpose(0, 1)                                       # [lq, Hq, d]


def rel_frobenius(x: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (x.to(torch.float64) - ref).norm().item()
    norm = ref.norm().item()
    return diff / norm if norm > 0 else diff


def worse(a: float, b: float) -> float:
    """max() that keeps a NaN (Python's max(0.0, nan) is 0.0)."""
    return b if math.isnan(b) or b > a else a


def lse_error(lse: torch.Tensor, ref: torch.Tensor) -> tuple[float, str]:
    """Max abs error over the entries the reference gives a finite LSE; -inf entries must match exactly."""
    lse = lse.to(torch.float64)
    finite = torch.isfinite(ref)
    problems = []
    if (~finite).any() and not torch.isneginf(lse[~finite]).all():
        problems.append("LSE not -inf for a query that sees no key")
    if not torch.isfinite(lse[finite]).all():
        problems.append("non-finite LSE where the reference is finite")
    err = (lse[finite] - ref[finite]).abs().max().item() if finite.any() else 0.0
    return err, "; ".join(problems)


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    kind: str                  # "varlen" or "decode"
    dtype: str
    head_dim: int
    causal: bool
    lens_q: list[int] = field(default_factory=list)   # varlen
    lens_k: list[int] = field(default_factory=list)   # varlen
    fused_qkv: bool = False    # varlen: q, k, v as strided views of one [tokens, Hq + 2 Hkv, d] projection
    q_len: int = 1             # decode
    seqlens: list[int] = field(default_factory=list)  # decode
    num_splits: int = 0        # decode
    peer: bool = True          # False where SDPA cannot express the case (queries that see no key)
    kernel: int = nkv.ATTENTION_KERNEL_AUTO  # varlen: the kernel family (AUTO is the Hopper one on Hopper)


@dataclass
class Result:
    case: Case
    nkv_err: float = math.nan
    torch_err: float = math.nan
    lse_err: float = math.nan
    worst_seq_err: float = math.nan        # the largest error of one sequence (short outputs can hide in the total)
    worst_seq_torch_err: float = math.nan
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def make_cases() -> list[Case]:
    cases = []
    hopper = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
    for dtype in DTYPES:
        for d in HEAD_DIMS:
            for causal in (False, True):
                tag = f"{dtype} d{d} {'causal' if causal else 'full'}"
                cases.append(Case(f"varlen {tag} q=k=[1,63,129,1000]", "varlen", dtype, d, causal,
                                  lens_q=[1, 63, 129, 1000], lens_k=[1, 63, 129, 1000], fused_qkv=True))
                # chunked prefill: each chunk of new queries over its cache plus itself (lk > lq)
                cases.append(Case(f"chunked {tag} q=[1,63,129,300] k=[700,64,1129,1300]", "varlen", dtype, d,
                                  causal, lens_q=[1, 63, 129, 300], lens_k=[700, 64, 1129, 1300]))
                if hopper and d in (64, 128):  # on Hopper AUTO is the sm_90a family: the sm_80 one explicitly too
                    cases.append(Case(f"varlen {tag} q=k=[1,63,129,1000] sm80", "varlen", dtype, d, causal,
                                      lens_q=[1, 63, 129, 1000], lens_k=[1, 63, 129, 1000], fused_qkv=True,
                                      kernel=nkv.ATTENTION_KERNEL_SM80))
                for q_len in (1, 4):
                    # seqlens_k include the new tokens' own keys, so a sequence holds at least q_len keys
                    seqlens = [max(q_len, s) for s in (1, 700, 4097)]
                    cases.append(Case(f"decode {tag} q_len={q_len} k={seqlens}", "decode", dtype, d, causal,
                                      q_len=q_len, seqlens=seqlens))
                if d == 128:  # a fixed split count (results then independent of the SM count)
                    cases.append(Case(f"decode {tag} q_len=4 k=[4,700,4097] splits=3", "decode", dtype, d, causal,
                                      q_len=4, seqlens=[4, 700, 4097], num_splits=3))
    # Edge cases the peer cannot express: empty sequences (lq or lk = 0) and, when causal, queries that
    # see no key (lq > lk): O = 0 and LSE = -inf there.
    for causal in (False, True):
        tag = f"fp16 d64 {'causal' if causal else 'full'}"
        cases.append(Case(f"edge {tag} q=[3,0,5,2] k=[0,4,2,6]", "varlen", "fp16", 64, causal,
                          lens_q=[3, 0, 5, 2], lens_k=[0, 4, 2, 6], peer=False))
    return cases


def cumulative(lengths: list[int]) -> list[int]:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return out


def run_varlen(ctx: nkv.Context, case: Case, result: Result) -> list[tuple]:
    """Runs NativeKv; returns per-sequence (q, k, v, o_nkv, lse_nkv) views for the comparison."""
    dt, d = DTYPES[case.dtype], case.head_dim
    cu_q, cu_k = cumulative(case.lens_q), cumulative(case.lens_k)
    total_q, total_k = cu_q[-1], cu_k[-1]
    spare = 3  # rows past total_q that the op must leave untouched
    if case.fused_qkv:
        assert case.lens_q == case.lens_k
        qkv = torch.randn(total_q + spare, HQ + 2 * HKV, d, device="cuda", dtype=dt)
        q, k, v = qkv[:, :HQ], qkv[:, HQ:HQ + HKV], qkv[:, HQ + HKV:]           # row stride (Hq + 2 Hkv) d
    else:
        q = torch.randn(total_q + spare, HQ, d, device="cuda", dtype=dt)
        k = torch.randn(total_k, HKV, d, device="cuda", dtype=dt)
        v = torch.randn(total_k, HKV, d, device="cuda", dtype=dt)
    sentinel = 7.0
    o = torch.full((total_q + spare, HQ, d), math.nan, device="cuda", dtype=dt)
    o[total_q:] = sentinel
    lse = torch.full((HQ, total_q + spare), math.nan, device="cuda", dtype=torch.float32)

    with ctx.plan_varlen(HQ, HKV, d, cu_q, cu_k, causal=case.causal, kernel=case.kernel) as plan:
        info = plan.info()
        expected = {"kind": nkv.ATTENTION_VARLEN, "batch": len(case.lens_q), "num_heads_q": HQ, "num_heads_kv": HKV,
                    "head_dim": d, "total_q": total_q, "total_k": total_k,
                    "max_seqlen_q": max(case.lens_q), "max_seqlen_k": max(case.lens_k)}
        for key, want in expected.items():
            if info[key] != want:
                result.failures.append(f"plan info {key} = {info[key]}, expected {want}")
        if abs(info["softmax_scale"] - 1 / math.sqrt(d)) > 1e-6:
            result.failures.append(f"plan info softmax_scale = {info['softmax_scale']}, expected 1/sqrt({d})")
        plan.run(q, k, v, o, lse)
        torch.cuda.synchronize()

    if not (o[total_q:] == sentinel).all():
        result.failures.append("rows of o past total_q were written")
    seqs = []
    for b in range(len(case.lens_q)):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        seqs.append((q[qs], k[ks], v[ks], o[qs], lse[:, qs]))
    return seqs


def run_decode(ctx: nkv.Context, case: Case, result: Result) -> list[tuple]:
    dt, d, b = DTYPES[case.dtype], case.head_dim, len(case.seqlens)
    capacity = max(case.seqlens) + 5
    q = torch.randn(b, case.q_len, HQ, d, device="cuda", dtype=dt)
    k = torch.randn(b, capacity, HKV, d, device="cuda", dtype=dt)
    v = torch.randn(b, capacity, HKV, d, device="cuda", dtype=dt)
    for i, n in enumerate(case.seqlens):  # poison the cache past each sequence: reading it shows as NaN
        k[i, n:] = math.nan
        v[i, n:] = math.nan
    o = torch.full((b, case.q_len, HQ, d), math.nan, device="cuda", dtype=dt)
    lse = torch.full((b, HQ, case.q_len), math.nan, device="cuda", dtype=torch.float32)

    with ctx.plan_decode(HQ, HKV, d, case.q_len, case.seqlens, causal=case.causal,
                         num_splits=case.num_splits) as plan:
        info = plan.info()
        if info["kind"] != nkv.ATTENTION_DECODE or info["total_k"] != sum(case.seqlens) \
                or info["total_q"] != b * case.q_len or info["q_len"] != case.q_len:
            result.failures.append(f"unexpected plan info {info}")
        if case.num_splits and info["num_splits"] > case.num_splits:
            result.failures.append(f"plan info num_splits = {info['num_splits']} > requested {case.num_splits}")
        plan.run(q, k, v, o, lse)
        # lse may be NULL: a second run without it must give the same output (the header does not promise
        # bitwise reproducibility, so allow a tenth of the tolerance)
        o2 = torch.full_like(o, math.nan)
        plan.run(q, k, v, o2, None)
        torch.cuda.synchronize()
    diff = rel_frobenius(o2, o.to(torch.float64))
    if not diff <= TOLERANCE[case.dtype] / 10:
        result.failures.append(f"output with lse = NULL differs from the one with lse by {diff:.3g}")
    return [(q[i], k[i, :n], v[i, :n], o[i], lse[i]) for i, n in enumerate(case.seqlens)]


def run_case(ctx: nkv.Context, case: Case, seed: int) -> Result:
    result = Result(case)
    torch.manual_seed(seed)
    seqs = run_varlen(ctx, case, result) if case.kind == "varlen" else run_decode(ctx, case, result)
    scale = 1 / math.sqrt(case.head_dim)
    refs, outs, peers, lse_refs, lses = [], [], [], [], []
    worst = worst_torch = 0.0
    for q, k, v, o, lse in seqs:
        if q.shape[0] == 0:
            continue
        ref_o, ref_lse = reference(q, k, v, case.causal, scale)
        has_key = torch.isfinite(ref_lse).transpose(0, 1)  # [lq, Hq]: rows whose output is defined as nonzero
        if not torch.isfinite(o).all():
            result.failures.append("NaN/inf in the output (an element not written, or cache past seqlen read)")
        elif (o[~has_key] != 0).any():
            result.failures.append("nonzero output for a query that sees no key")
        refs.append(ref_o)
        outs.append(o)
        lse_refs.append(ref_lse)
        lses.append(lse)
        if ref_o.norm() > 0:
            worst = worse(worst, rel_frobenius(o, ref_o))
        if case.peer:
            peers.append(sdpa_peer(q, k, v, case.causal, scale))
            worst_torch = worse(worst_torch, rel_frobenius(peers[-1], ref_o))
    ref_all, out_all = torch.cat(refs), torch.cat(outs)
    result.nkv_err = rel_frobenius(out_all, ref_all)
    result.worst_seq_err = worst
    result.lse_err, lse_problem = lse_error(torch.cat(lses, dim=1), torch.cat(lse_refs, dim=1))
    if lse_problem:
        result.failures.append(lse_problem)

    tol = TOLERANCE[case.dtype]
    if not result.nkv_err <= tol:  # "not <=" so that NaN fails
        result.failures.append(f"error {result.nkv_err:.3g} > {tol:g}")
    if not worst <= tol:
        result.failures.append(f"one sequence's error {worst:.3g} > {tol:g}")
    if case.peer:
        result.torch_err = rel_frobenius(torch.cat(peers), ref_all)
        bound = max(PEER_FACTOR * result.torch_err, PEER_FLOOR)
        if not result.nkv_err <= bound:
            result.failures.append(f"error {result.nkv_err:.3g} > {PEER_FACTOR} x PyTorch's {result.torch_err:.3g}")
        result.worst_seq_torch_err = worst_torch
        if not worst <= max(PEER_FACTOR * worst_torch, PEER_FLOOR):
            result.failures.append(f"worst sequence's error {worst:.3g} > {PEER_FACTOR} x PyTorch's {worst_torch:.3g}")
    if not result.lse_err <= LSE_TOLERANCE:
        result.failures.append(f"LSE error {result.lse_err:.3g} > {LSE_TOLERANCE:g}")
    return result


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------

def fmt(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.2e}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="run only the cases whose name contains this substring")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("PyTorch has no CUDA device here: skipping the attention peer test")
        return 77
    lib = nkv.load()  # raises with every probed path, or with every layout mismatch
    print(f"NativeKv {lib.version()} from {lib.path}; PyTorch {torch.__version__} (CUDA {torch.version.cuda}) "
          f"on {torch.cuda.get_device_name()}")

    cases = [c for c in make_cases() if args.only in c.name]
    # NativeKv runs on a non-default torch stream: the context can name it, and torch work on the same
    # stream is ordered with NativeKv's (the legacy default stream cannot be passed, see nativekv_ctypes).
    stream = torch.cuda.Stream()
    results = []
    with torch.cuda.stream(stream), lib.cuda_context() as ctx:
        for i, case in enumerate(cases):
            try:
                results.append(run_case(ctx, case, seed=1000 + i))
            except Exception as e:  # a failing call is this case's failure; the other cases still run
                results.append(Result(case, failures=[f"{type(e).__name__}: {e}"]))
                traceback.print_exc(file=sys.stderr)

    width = max(len(r.case.name) for r in results) if results else 10
    print(f"\n{'':<{width}}  {'total':^27}  {'worst sequence':^20}")
    print(f"{'case':<{width}}  {'NativeKv':>9}  {'PyTorch':>9}  {'ratio':>5}  {'NativeKv':>9}  {'PyTorch':>9}  "
          f"{'LSE abs':>9}  result")
    for r in results:
        ratio = r.nkv_err / r.torch_err if r.torch_err and not math.isnan(r.torch_err) else math.nan
        ratio_s = "—" if math.isnan(ratio) else f"{ratio:.2f}"
        verdict = "ok" if r.ok else "FAIL: " + "; ".join(dict.fromkeys(r.failures))  # each message once
        print(f"{r.case.name:<{width}}  {fmt(r.nkv_err):>9}  {fmt(r.torch_err):>9}  {ratio_s:>5}  "
              f"{fmt(r.worst_seq_err):>9}  {fmt(r.worst_seq_torch_err):>9}  {fmt(r.lse_err):>9}  {verdict}")
    failed = sum(not r.ok for r in results)
    print(f"\n{len(results) - failed} passed, {failed} failed (errors: relative Frobenius vs fp64; "
          f"limits fp16 {TOLERANCE['fp16']:g}, bf16 {TOLERANCE['bf16']:g}, <= max({PEER_FACTOR} x PyTorch, "
          f"{PEER_FLOOR:g}); LSE <= {LSE_TOLERANCE:g})")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
