#!/usr/bin/env python3
"""Where a KIVI decode call's time goes, block by block: reads the lines a build with NKV_KIVI_TIMELINE=1 prints
(cuda/kv_quant/decode_kivi.cu: per block and launch, %globaltimer at its start, when its first chunk is in, after its
last warp step and at its end, with its SM and chunk count) and prints, for the last launches, the spread of each
phase across the blocks and when blocks finish by how many share their SM (bench/NOTES.md q11).

    cmake ... -DNKV_KIVI_TUNING="NKV_KIVI_TIMELINE=1"; build nativekv
    NATIVEKV_LIBRARY=.../libnativekv.so python3 bench/peers/kv_quant_bench.py --shape 8x32768 --reps 3 > timeline.txt
    python3 bench/kivi_timeline.py timeline.txt
"""
import re,sys,statistics as st
rows=[]
for line in open(sys.argv[1]):
    m=re.search(r'kivi-timeline bits (\d+) piece (\d+) rows (\d+) sm (\d+) chunks (\d+) start (\d+) first (\d+) loop (\d+) end (\d+)',line)
    if m:
        v=[int(x) for x in m.groups()]
        rows.append((v[0], v[1] * 1000 + v[2], *v[3:]))  # (bits, block: piece and row block, sm, chunks, the four times)
# %globaltimer's update step differs between GPUs and drivers: the smallest nonzero gap between any two stamps bounds it.
stamps=sorted({t for r in rows for t in r[4:8]})
gaps=[b-a for a,b in zip(stamps,stamps[1:]) if b>a]
if gaps: print(f"timer step <= {min(gaps)} ns ({len(stamps)} distinct stamps)")
launches=[]; cur=[]; seen=set()
for r in rows:
    key=(r[0],r[1])
    if key in seen or (cur and cur[-1][0]!=r[0]):
        launches.append(cur); cur=[]; seen=set()
    cur.append(r); seen.add(key)
if cur: launches.append(cur)
def q(xs): xs=sorted(xs); return f"min {xs[0]/1e3:6.1f} med {xs[len(xs)//2]/1e3:6.1f} p90 {xs[int(len(xs)*.9)]/1e3:6.1f} max {xs[-1]/1e3:6.1f}"
for L in launches[-6:]:
    bits=L[0][0]; t0=min(r[4] for r in L)
    span=max(r[7] for r in L)-t0
    print(f"bits {bits} blocks {len(L)} span {span/1e3:.1f} us")
    print("  start offset   ", q([r[4]-t0 for r in L]))
    print("  first chunk    ", q([r[5]-r[4] for r in L]))
    print("  loop           ", q([r[6]-r[5] for r in L]))
    print("  end (merge)    ", q([r[7]-r[6] for r in L]))
    print("  finish time    ", q([r[7]-t0 for r in L]))
    ch={}
    for r in L: ch.setdefault(r[3],[]).append((r[6]-r[5])/max(1,r[3]-1))
    print("  us per chunk by chunks:", {k: round(st.median(v)/1e3,3) for k,v in sorted(ch.items())})
    # blocks per sm
    sms={}
    for r in L: sms.setdefault(r[2],[]).append(r)
    per=[len(v) for v in sms.values()]
    print("  SMs", len(sms), "blocks per SM", {k:per.count(k) for k in sorted(set(per))})
    by={}
    for v in sms.values(): by.setdefault(len(v),[]).extend([r[7]-t0 for r in v])
    print("  finish by blocks/SM:", {k: round(st.median(v)/1e3,1) for k,v in by.items()})
    # Dispatch rounds (bench/NOTES.md q14, q15): blocks go to the SMs about in index order, so block b is in round
    # b // SMs; on an SM shared by several blocks, the later rounds' loops run slower. How often block b and block
    # b + SMs really share an SM (the plan's round model), how far apart an SM's blocks finish, and the SMs that end last.
    rounds={}
    for r in L: rounds.setdefault(r[1] // 1000 // len(sms),[]).append(r[6]-r[5])
    print("  loop by dispatch round:", {k: round(st.median(v)/1e3,1) for k,v in sorted(rounds.items())})
    spread=[max(r[6] for r in v)-min(r[6] for r in v) for v in sms.values() if len(v)>1]
    if spread: print("  loop ends on one SM, last - first:", q(spread))
    n=len(sms); sm_of={r[1]:r[2] for r in L}
    pairs=[b for b in sm_of if b+1000*n in sm_of]
    print(f"  block b and b + {n} on one SM: {sum(sm_of[b]==sm_of[b+1000*n] for b in pairs)} of {len(pairs)}")
    last=sorted(sms.values(), key=lambda v: max(r[6] for r in v))[-3:]
    for v in last:
        print("  late SM", v[0][2], "; ".join(f"block {r[1]//1000} round {r[1]//1000//n} chunks {r[3]} loop {(r[6]-r[5])/1e3:.1f} ends {(r[6]-t0)/1e3:.1f}"
                                           for r in sorted(v, key=lambda r: r[1])))
