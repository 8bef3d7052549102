#!/usr/bin/env bash
# Tile-configuration experiments for the sm_80 varlen kernel, on a GPU machine: builds one library per
# variant (sm_90a only, in parallel, each from its own copy of native/ with the NKV_VARLEN_TILES_<d>
# defaults replaced) and runs the attention benchmark on each, peers included, so every variant is
# compared with the same SDPA run conditions. Results (Markdown) go to $OUT (else artifacts/tile-variants).
#
#   bench/tile_variants.sh [--only SUBSTRING] "128=4,2,64,false 64=8,2,64,true" "128=8,2,64,false" ...
#
# A variant is a space-separated list of head_dim=warps,m_tiles,block_n,q_in_registers. Library code
# only: what a variant measures goes to bench/NOTES.md, and a winner becomes the default in
# native/src/cuda/attention/varlen_sm80.cu.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/artifacts/tile-variants}"
WORK="$(mktemp -d)"
only="prefill"
if [[ "${1:-}" == "--only" ]]; then only="$2"; shift 2; fi
[[ $# -gt 0 ]] || { echo "usage: $0 [--only SUBSTRING] VARIANT..." >&2; exit 2; }
mkdir -p "$OUT"

variants=("$@")
for i in "${!variants[@]}"; do
  src="$WORK/src-$i"
  mkdir -p "$src"
  # The build needs the top-level CMake files and native/ (tests and benchmarks are off).
  cp -r "$ROOT/CMakeLists.txt" "$ROOT/cmake" "$ROOT/native" "$src/"
  for setting in ${variants[$i]}; do
    dim="${setting%%=*}"
    tiles="${setting#*=}"
    sed -i "s/^#define NKV_VARLEN_TILES_${dim} .*/#define NKV_VARLEN_TILES_${dim} ${tiles//,/, }/" \
      "$src/native/src/cuda/attention/varlen_sm80.cu"
  done
  grep -E "^#define NKV_VARLEN_TILES_" "$src/native/src/cuda/attention/varlen_sm80.cu" | sed "s/^/[variant $i] /"
  (cmake -S "$src" -B "$WORK/build-$i" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a-real \
     -DNKV_BUILD_TESTS=OFF -DNKV_BUILD_BENCH=OFF >"$WORK/build-$i.log" 2>&1 \
   && cmake --build "$WORK/build-$i" --parallel 8 --target nativekv >>"$WORK/build-$i.log" 2>&1) &
done
wait

status=0
for i in "${!variants[@]}"; do
  lib="$WORK/build-$i/lib/libnativekv.so"
  if [[ ! -f "$lib" ]]; then
    echo "[variant $i] build failed:"; tail -n 20 "$WORK/build-$i.log"; status=1; continue
  fi
  echo "=== variant $i: ${variants[$i]}"
  NATIVEKV_LIBRARY="$lib" python3 "$ROOT/bench/peers/attention_bench.py" --only "$only" \
    --markdown "$OUT/variant-$i.md" >"$OUT/variant-$i.jsonl" || status=1
  grep -E "^\| (prefill|packed|decode|chunked)" "$OUT/variant-$i.md" | cut -c1-200
done
rm -rf "$WORK"
exit $status
