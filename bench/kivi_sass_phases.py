#!/usr/bin/env python3
"""Instruction mix of the KIVI decode's key and value phases, per warp and 32 keys, from its SASS (bench/NOTES.md
q10, q11). A phase is found by its operand masks (the LOP3 constants of 2- and 4-bit codes) and widened to whole basic
blocks; the first cluster of masks is the key phase, the second the value phase (the loop's coded path).

    nvcc -std=c++17 -O3 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Inative/src -Inative/include \\
         -I<build>/native/generated -cubin -o kivi.cubin native/src/cuda/kv_quant/decode_kivi.cu
    cuobjdump -sass kivi.cubin > kivi.sass
    python3 bench/kivi_sass_phases.py kivi.sass ILi2ELi128ELi1ELb0     # 2 bits, d128, one tile, not paged
"""
import collections
import re
import sys

MASKS = re.compile(r"0xf000f\b|0xf000f0\b|0x30003\b|0xc000c\b|0x300030\b|0xc000c0\b")


def opcode(line: str) -> str:
    words = line.split()
    op = words[2] if words[1].startswith("@") else words[1]
    return op.split(".")[0]


def phases(instructions: list[str]) -> list[tuple[int, int]]:
    address = {int(re.match(r"\s+/\*([0-9a-f]+)\*/", l).group(1), 16): i for i, l in enumerate(instructions)}
    leaders = {0}
    for i, line in enumerate(instructions):
        branch = re.search(r"BRA(?:\.\w+)*\s+(?:[^,]*,\s*)?(0x[0-9a-f]+)", line)
        if branch:
            target = int(branch.group(1), 16)
            if target in address:
                leaders.add(address[target])
            leaders.add(i + 1)
        if "EXIT" in line or "BSYNC" in line:
            leaders.add(i + 1)
    starts = sorted(leaders)
    masks = [i for i, line in enumerate(instructions) if MASKS.search(line)]
    clusters: list[list[int]] = []
    for i in masks:
        if clusters and i - clusters[-1][1] < 80:
            clusters[-1][1] = i
        else:
            clusters.append([i, i])
    out = []
    for first, last in clusters:
        begin = max(s for s in starts if s <= first)
        end = min([s for s in starts if s > last] + [len(instructions)])
        out.append((begin, end))
    return out


def main() -> None:
    text, kernel = open(sys.argv[1]).read(), sys.argv[2]
    for function in re.split(r"\n\s+Function : ", text)[1:]:
        name = function.split("\n")[0]
        if kernel not in name:
            continue
        instructions = [l for l in function.split("\n") if re.match(r"\s+/\*[0-9a-f]{4,}\*/", l)]
        print(name)
        for label, (begin, end) in zip(("keys", "values", "more"), phases(instructions)):
            mix = collections.Counter(opcode(instructions[i]) for i in range(begin, end))
            print(f"  {label:6} {end - begin:4} instructions: " + ", ".join(f"{n} {op}" for op, n in mix.most_common(12)))


if __name__ == "__main__":
    main()
