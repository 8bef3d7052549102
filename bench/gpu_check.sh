#!/usr/bin/env bash
# `./build.sh gpu-check`, run on a GPU machine from the repository root: builds the CUDA backend, runs
# every ctest label, the managed tests against the CUDA build (from gpu-bundle/), compute-sanitizer
# memcheck over the GPU suites, and the benchmarks. Logs and results go to $OUT (else artifacts/gpu-check).
set -uo pipefail
ROOT="${1:-$(pwd)}"
OUT="${OUT:-$ROOT/artifacts/gpu-check}"
BUILD="${NKV_GPU_BUILD_DIR:-$ROOT/build-gpu}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
LOG="$OUT/gpu-check.log"          # every step's full output, in order (the device tool returns few files)
STEPS="$(mktemp -d)"
: >"$SUMMARY"; : >"$LOG"
failures=0
step() { printf '\n\033[1m[gpu-check] %s\033[0m\n' "$*"; }
record() {  # name, exit code; appends the step's log to $LOG
  [[ -f "$STEPS/$1.log" ]] && { printf '\n===== %s =====\n' "$1" >>"$LOG"; cat "$STEPS/$1.log" >>"$LOG"; }
  local verdict=PASS; [[ $2 -eq 0 ]] || { verdict="FAIL (exit $2)"; failures=$((failures + 1)); }
  printf '%-28s %s\n' "$1" "$verdict" | tee -a "$SUMMARY"
}
start=$(date +%s)

step "device"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv && nvcc --version | tail -n 2; } \
  2>&1 | tee "$STEPS/device.log"
record device "${PIPESTATUS[0]}"

step "build (CUDA archs: ${NKV_CUDA_ARCHITECTURES:-default 80-real;90a-real;90-virtual})"
archs=(); [[ -n "${NKV_CUDA_ARCHITECTURES:-}" ]] && archs=(-DCMAKE_CUDA_ARCHITECTURES="$NKV_CUDA_ARCHITECTURES")
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
rm -f "$BUILD/CMakeCache.txt"   # the architectures and compiler of this run, not of an earlier one
{ cmake -S "$ROOT" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "${archs[@]}" \
  && cmake --build "$BUILD" --parallel "$(nproc)"; } >"$STEPS/build.log" 2>&1
rc=$?; record build $rc
if [[ $rc -ne 0 ]]; then tail -n 60 "$STEPS/build.log"; exit 1; fi
grep -q "CUDA backend ON" "$STEPS/build.log" || { echo "the CUDA backend was not built"; record cuda-backend 1; exit 1; }

step "ctest (all labels)"
(cd "$BUILD" && ctest --output-on-failure --timeout 900 -j 4) >"$STEPS/ctest.log" 2>&1
rc=$?; tail -n 25 "$STEPS/ctest.log"
if grep -q '\*\*\*Skipped' "$STEPS/ctest.log"; then echo "GPU suites skipped on a GPU machine"; rc=1; fi
record ctest $rc

step "compute-sanitizer memcheck (GPU suites)"
san=0
set -f  # the gtest filters below are patterns for gtest, not for the shell
# The 256K-token decode and the 4097-token prefill run for minutes under memcheck; the other shapes
# cover the same code paths (partial tiles, splits, every head dim).
for run in "nkv_api_tests *Cuda*" "nkv_quant_tests *Cuda*" "nkv_attention_tests *Cuda*:-*256K*:*LongSequence*" \
           "nkv_pack_tests *Cuda*" "nkv_kvcache_tests *Cuda*" "nkv_virtual_kvcache_tests *Cuda*:-*Destroy*" \
           "nkv_kv_quant_tests *Cuda*"; do
  set -- $run
  suite=$1
  compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
    "$BUILD/bin/$suite" --gtest_filter="$2" >>"$STEPS/memcheck.log" 2>&1
  r=$?; tail -n 3 "$STEPS/memcheck.log"; [[ $r -eq 0 ]] || san=$r
done
record memcheck $san
race=0
for run in "nkv_quant_tests QuantCuda.NonFinite*" "nkv_attention_tests AttentionCuda.VarlenGqa*:AttentionCuda.DecodeWindow*" \
           "nkv_kv_quant_tests QuantizedKvCacheCuda.DecodeMatches*"; do
  set -- $run
  compute-sanitizer --tool racecheck --error-exitcode 9 "$BUILD/bin/$1" --gtest_filter="$2" >>"$STEPS/racecheck.log" 2>&1
  r=$?; tail -n 2 "$STEPS/racecheck.log"; [[ $r -eq 0 ]] || race=$r
done
record racecheck $race
set +f

step "peer test: attention against PyTorch SDPA"
NATIVEKV_LIBRARY="$BUILD/lib/libnativekv.so" python3 "$ROOT/tests/peer/test_attention_peer.py" >"$STEPS/peer.log" 2>&1
rc=$?; tail -n 15 "$STEPS/peer.log"; record peer-attention $rc

step "managed tests against the CUDA build"
if [[ -f "$ROOT/gpu-bundle/managed.tar.xz" ]] && ! "$ROOT/build.sh" managed-fingerprint | cmp -s - "$ROOT/gpu-bundle/fingerprint"; then
  echo "gpu-bundle/ was built from other managed sources than this tree: run ./build.sh gpu-bundle again"
  record managed-tests 1
elif [[ -f "$ROOT/gpu-bundle/dotnet-runtime.tar.xz" && -f "$ROOT/gpu-bundle/managed.tar.xz" ]]; then
  DOTNET_DIR="$(mktemp -d)"; MANAGED_DIR="$(mktemp -d)"
  tar -C "$DOTNET_DIR" -xJf "$ROOT/gpu-bundle/dotnet-runtime.tar.xz"
  tar -C "$MANAGED_DIR" -xJf "$ROOT/gpu-bundle/managed.tar.xz"
  (cd "$MANAGED_DIR/tests" && DOTNET_ROOT="$DOTNET_DIR" DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1 \
     NATIVEKV_LIBRARY_PATH="$BUILD/lib" NATIVEKV_REQUIRE_GPU=1 "$DOTNET_DIR/dotnet" NativeKv.Tests.dll) \
     >"$STEPS/managed-tests.log" 2>&1
  rc=$?; tail -n 8 "$STEPS/managed-tests.log"; record managed-tests $rc
else
  echo "gpu-bundle/ is missing: run ./build.sh gpu-bundle on a machine with the .NET SDK and carry it"
  record managed-tests 1
fi

step "benchmarks"
python3 "$ROOT/bench/run.py" --build "$BUILD" --results "$OUT" --repo "$ROOT" 2>&1 | tee "$STEPS/bench.log"
record bench "${PIPESTATUS[0]}"
# NKV_GPU_CHECK_SKIP_BDN=1 leaves out the BenchmarkDotNet run (about 100 s) when device time is short.
if [[ -z "${NKV_GPU_CHECK_SKIP_BDN:-}" && -n "${MANAGED_DIR:-}" && -f "$MANAGED_DIR/benchmarks/NativeKv.Benchmarks.dll" ]]; then
  (cd "$MANAGED_DIR/benchmarks" && DOTNET_ROOT="$DOTNET_DIR" DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1 \
     NATIVEKV_LIBRARY_PATH="$BUILD/lib" timeout 240 "$DOTNET_DIR/dotnet" NativeKv.Benchmarks.dll --filter '*' --job short \
     --artifacts "$STEPS/bdn") >"$STEPS/benchmarkdotnet.log" 2>&1
  rc=$?; grep -E '^\|' "$STEPS/benchmarkdotnet.log" | tail -n 30
  cat "$STEPS"/bdn/results/*-report-github.md >"$OUT/benchmarkdotnet-report.md" 2>/dev/null
  record benchmarkdotnet $rc
fi

step "summary ($(( $(date +%s) - start )) s)"
cat "$SUMMARY"
exit $(( failures > 0 ))
