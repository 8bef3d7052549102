#!/usr/bin/env python3
"""A KIVI decode's ncu source page, summed: warp-stall samples by reason and by opcode, instructions per warp step
(per 32 keys of one KV head) and shared-memory wavefronts per step (bench/NOTES.md q12). Instructions executed at least
`--loop` times (default: 90% of the most frequent count) are the loop's; the rest is reported as one line.

    ncu --kernel-name-base demangled -k "regex:decode_kivi_kernel<.int.2" --launch-skip 3 --launch-count 1 \\
        --section WarpStateStats --section SourceCounters -o kivi2 python3 bench/peers/kv_quant_bench.py --shape 8x32768 --reps 1
    ncu -i kivi2.ncu-rep --page source --csv --print-source sass > kivi2.csv
    python3 bench/kivi_ncu_source.py kivi2.csv --steps 65536      # b8 x L32768 x 8 KV heads / 32 keys
"""
import argparse
import collections
import csv

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("csv")
parser.add_argument("--steps", type=int, required=True, help="warp steps of the launch (keys x KV heads / 32)")
parser.add_argument("--loop", type=int, default=0, help="executions that mark an instruction as the loop's")
args = parser.parse_args()

rows = list(csv.reader(open(args.csv)))
header = rows[1]
column = {name: i for i, name in enumerate(header)}
stalls = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]


def number(row, name):
    text = row[column[name]] if name in column else ""
    return int(text) if text not in ("", "-") else 0


body = [r for r in rows[2:] if len(r) > 1 and r[1].split()]
loop_floor = args.loop or int(0.9 * max(number(r, "Instructions Executed") for r in body))
reasons = collections.Counter()
by_op = collections.defaultdict(collections.Counter)
samples = collections.Counter()
executed = collections.Counter()
wavefronts = ideal = 0
for r in body:
    words = r[1].split()
    op = (words[1] if words[0].startswith("@") else words[0]).split(".")[0]
    count = number(r, "Instructions Executed")
    if count < loop_floor:
        op = "(outside the loop)"
    executed[op] += count
    wavefronts += number(r, "L1 Wavefronts Shared")
    ideal += number(r, "L1 Wavefronts Shared Ideal")
    for s in stalls:
        n = number(r, s)
        reasons[s] += n
        by_op[op][s] += n
        samples[op] += n
total = sum(reasons.values())
print(f"warp-stall samples {total}; loop: instructions executed >= {loop_floor}")
print("\n| reason | samples | share |\n|---|---:|---:|")
for s, n in reasons.most_common():
    if n:
        print(f"| {s[6:]} | {n} | {n / total:.1%} |")
print("\n| opcode | samples | share | per warp step | top reasons |\n|---|---:|---:|---:|---|")
for op, n in samples.most_common(22):
    top = ", ".join(f"{k[6:]} {v}" for k, v in by_op[op].most_common(3))
    print(f"| {op} | {n} | {n / total:.1%} | {executed[op] / args.steps:.1f} | {top} |")
print(f"\ninstructions per warp step: {sum(executed.values()) / args.steps:.1f}; shared-memory wavefronts per warp step: "
      f"{wavefronts / args.steps:.1f} (ideal {ideal / args.steps:.1f})")
