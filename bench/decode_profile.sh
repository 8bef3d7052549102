#!/usr/bin/env bash
# Profiles one decode call of NativeKv and of SDPA's cuDNN backend at the same shape with ncu, on a GPU
# machine, so their kernels can be compared section by section (grid, occupancy, DRAM throughput, L2
# traffic, stall reasons). Text reports go to $OUT (else artifacts/decode-profile).
#
#   NATIVEKV_LIBRARY=build-gpu/lib/libnativekv.so bench/decode_profile.sh [batch seqlen]   (default 64 4096)
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/artifacts/decode-profile}"
mkdir -p "$OUT"
batch="${1:-64}"
seqlen="${2:-4096}"
for backend in nativekv cudnn; do
  ncu --profile-from-start off --section SpeedOfLight --section LaunchStats --section Occupancy \
      --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats --page details \
      python3 "$ROOT/bench/decode_profile.py" --backend "$backend" --batch "$batch" --seqlen "$seqlen" \
      >"$OUT/ncu-decode-$backend-b$batch-L$seqlen.txt" 2>&1
  echo "$backend: $OUT/ncu-decode-$backend-b$batch-L$seqlen.txt (exit $?)"
done
