#!/usr/bin/env bash
# NativeKv build driver. `./build.sh help` lists the subcommands.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_DIR="${NKV_BUILD_DIR:-$ROOT/build}"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/nativekv"
CUDA_VERSION_WANTED="12.4"
CUDA_CACHE="$CACHE_ROOT/cuda-$CUDA_VERSION_WANTED"
BUNDLE_DIR="$ROOT/gpu-bundle"
VERSION="$(sed -n 's/^project(NativeKv VERSION \([0-9.]*\).*/\1/p' "$ROOT/CMakeLists.txt")"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

log() { printf '\033[1m[nativekv]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[nativekv] error:\033[0m %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<USAGE
usage: ./build.sh <command>

  toolchain   find nvcc >= 12.0, or install CUDA $CUDA_VERSION_WANTED from Debian packages into
              $CUDA_CACHE (no system change); prints the nvcc path
  build       configure + build native (CPU backend, CUDA backend when a compiler is found) and managed
  test        build, then run ctest (GPU suites skip visibly without a GPU) and the xunit suite
  bench       the main job: kernel benchmarks on the best backend available, table + results file
  pack        NuGet packages NativeKv and NativeKv.Runtime.linux-x64 into artifacts/packages,
              then restore both from that local feed into a fresh console app and run it
  gpu-bundle  write gpu-bundle/ (compressed .NET runtime + published managed tests and benchmarks)
              for a GPU machine that has no .NET SDK
  gpu-check   on a GPU machine: build CUDA, run all ctest labels, managed tests, compute-sanitizer,
              benchmarks; logs and results to \$OUT (else artifacts/gpu-check)
  help        this text

environment: NKV_BUILD_DIR, NKV_CUDA_ARCHITECTURES (e.g. 90a-real for a faster local build),
             NKV_BUILD_TYPE (Release), CUDACXX (an explicit nvcc)
USAGE
}

nvcc_version_ok() { # $1 = nvcc path; true when its release is >= 12.0
  local v
  v="$("$1" --version 2>/dev/null | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1/p')"
  [[ -n "$v" && "$v" -ge 12 ]]
}

apt_mirror_uri() { # the Debian mirror the machine's own apt sources already name
  local uri
  uri="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)"
  [[ -z "$uri" ]] && uri="$(grep -hs '^deb ' /etc/apt/sources.list 2>/dev/null | grep -v security | awk '{for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' || true)"
  echo "${uri:-http://deb.debian.org/debian}"
}

install_cuda_from_debian() {
  local work="$CACHE_ROOT/cuda-download" stage
  command -v apt-get >/dev/null || die "no nvcc on PATH and no apt-get to fetch CUDA $CUDA_VERSION_WANTED; install the CUDA toolkit and set CUDACXX"
  rm -rf "$work"; mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/debs" "$work/stage"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(apt_mirror_uri) trixie main contrib non-free" >"$work/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/none"
              -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Dir::Cache::Archives=$work/archives"
              -o APT::Architecture=amd64 -o APT::Architectures=amd64 -o Debug::NoLocking=1
              -o APT::Sandbox::User=root)
  log "downloading CUDA $CUDA_VERSION_WANTED packages from Debian trixie/non-free (private apt lists in $work)"
  apt-get "${opts[@]}" -qq update
  (cd "$work/debs" && apt-get "${opts[@]}" -qq download nvidia-cuda-toolkit nvidia-cuda-dev libnvvm4 libcudart12 \
      libcu++-dev libcub-dev libthrust-dev)
  stage="$work/stage"
  for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$stage"; done
  local tk="$CUDA_CACHE.partial"
  rm -rf "$tk"; mkdir -p "$tk/bin" "$tk/nvvm/bin" "$tk/nvvm"
  cp -a "$stage/usr/lib/nvidia-cuda-toolkit/bin/nvcc" "$tk/bin/"
  cp -a "$stage/usr/lib/nvidia-cuda-toolkit/bin/crt" "$tk/bin/"
  for tool in ptxas fatbinary nvlink cudafe++ bin2c cuobjdump nvdisasm nvprune; do
    cp -a "$stage/usr/bin/$tool" "$tk/bin/"
  done
  cp -a "$stage/usr/lib/nvidia-cuda-toolkit/bin/cicc" "$tk/nvvm/bin/"
  cp -a "$stage/usr/lib/nvidia-cuda-toolkit/libdevice" "$tk/nvvm/libdevice"
  cp -a "$stage/usr/include" "$tk/include"
  cp -a "$stage/usr/lib/x86_64-linux-gnu" "$tk/lib64"
  if [[ -d "$stage/usr/lib/nvidia-cuda-toolkit/compute-sanitizer" ]]; then
    cp -a "$stage/usr/lib/nvidia-cuda-toolkit/compute-sanitizer" "$tk/compute-sanitizer"
  fi
  cat >"$tk/bin/nvcc.profile" <<'PROFILE'

TOP              = $(_HERE_)/..

NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice

LD_LIBRARY_PATH += $(TOP)/lib64:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):

INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)

LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64/stubs" "-L$(TOP)/lib64"

CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
PROFILE
  nvcc_version_ok "$tk/bin/nvcc" || die "the assembled nvcc in $tk does not run"
  rm -rf "$CUDA_CACHE"; mv "$tk" "$CUDA_CACHE"; rm -rf "$work"
  log "CUDA $CUDA_VERSION_WANTED ready in $CUDA_CACHE"
}

find_nvcc() { # prints an nvcc path (>= 12.0) or nothing
  local c
  for c in "${CUDACXX:-}" "$(command -v nvcc 2>/dev/null || true)" /usr/local/cuda/bin/nvcc "$CUDA_CACHE/bin/nvcc"; do
    [[ -n "$c" && -x "$c" ]] && nvcc_version_ok "$c" && { echo "$c"; return; }
  done
  true
}

cmd_toolchain() {
  local nvcc; nvcc="$(find_nvcc)"
  if [[ -z "$nvcc" ]]; then install_cuda_from_debian; nvcc="$CUDA_CACHE/bin/nvcc"; fi
  log "nvcc: $nvcc ($("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'))"
  echo "$nvcc"
}

cmake_configure() {
  local nvcc; nvcc="$(cmd_toolchain)"
  local gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
  local archs=(); [[ -n "${NKV_CUDA_ARCHITECTURES:-}" ]] && archs=(-DCMAKE_CUDA_ARCHITECTURES="$NKV_CUDA_ARCHITECTURES")
  # CMake keeps its first answers in the cache: when any setting differs from the last configure, start over.
  local signature="nvcc=$nvcc archs=${NKV_CUDA_ARCHITECTURES:-default} type=${NKV_BUILD_TYPE:-Release} args=${NKV_CMAKE_ARGS:-}"
  if [[ -f "$BUILD_DIR/CMakeCache.txt" && "$(cat "$BUILD_DIR/.nkv-configure" 2>/dev/null)" != "$signature" ]]; then
    log "build settings changed ($signature): reconfiguring $BUILD_DIR"
    rm -rf "$BUILD_DIR/CMakeCache.txt" "$BUILD_DIR/CMakeFiles"
  fi
  if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" "${gen[@]}" -DCMAKE_BUILD_TYPE="${NKV_BUILD_TYPE:-Release}" \
      -DCMAKE_CUDA_COMPILER="$nvcc" "${archs[@]}" ${NKV_CMAKE_ARGS:-}
    echo "$signature" >"$BUILD_DIR/.nkv-configure"
  fi
}

build_native() {
  cmake_configure
  cmake --build "$BUILD_DIR" --parallel "$(nproc)"
}

dotnet_build() {
  command -v dotnet >/dev/null || die "the .NET 10 SDK is needed for the managed build (dotnet not on PATH)"
  dotnet build "$ROOT/NativeKv.sln" -c Release -nologo -v quiet -p:NativeKvLibDir="$BUILD_DIR/lib" -p:NativeKvVersion="$VERSION"
}

cmd_build() { build_native; dotnet_build; }

cmd_test() {
  build_native
  dotnet_build
  log "native tests (ctest)"
  local ctest_log="$BUILD_DIR/ctest.log"
  (cd "$BUILD_DIR" && ctest --output-on-failure --timeout 900 -j "$(nproc)" 2>&1) | tee "$ctest_log"
  local rc=${PIPESTATUS[0]}
  local suites tests
  suites="$(grep -c '\*\*\*Skipped' "$ctest_log" || true)"
  tests="$(grep -ho '\[  SKIPPED \] [0-9]* test' "$BUILD_DIR/Testing/Temporary/LastTest.log" 2>/dev/null | awk '{n += $4} END {print n + 0}')"
  log "ctest: $suites suite(s) skipped as a whole, $tests GoogleTest case(s) skipped in all (GPU tests without a GPU)"
  [[ $rc -eq 0 ]] || die "ctest failed"
  log "managed tests (xunit v3)"
  NATIVEKV_LIBRARY_PATH="$BUILD_DIR/lib" dotnet test --project "$ROOT/tests/NativeKv.Tests/NativeKv.Tests.csproj" \
    -c Release --no-build
}

cmd_bench() {
  build_native
  local out="${OUT:-$ROOT/bench/results}"
  python3 "$ROOT/bench/run.py" --build "$BUILD_DIR" --results "$out" --repo "$ROOT"
}

# The runtime package must carry what the design promises: sm_80 and sm_90a machine code plus PTX.
check_package_architectures() {
  local lib="$BUILD_DIR/lib/libnativekv.so" nvcc cuobjdump
  nvcc="$(find_nvcc)"; cuobjdump="$(dirname "$nvcc")/cuobjdump"
  [[ -x "$cuobjdump" ]] || die "cuobjdump not found next to $nvcc"
  local elf ptx; elf="$("$cuobjdump" --list-elf "$lib")"; ptx="$("$cuobjdump" --list-ptx "$lib" 2>&1 || true)"
  grep -q 'sm_80\.cubin' <<<"$elf" && grep -q 'sm_90a\.cubin' <<<"$elf" && grep -Eq '(sm|compute)_90\.ptx' <<<"$ptx" ||
    die "libnativekv.so lacks sm_80/sm_90a code or compute_90 PTX (built with NKV_CUDA_ARCHITECTURES=${NKV_CUDA_ARCHITECTURES:-default}?):
$elf
$ptx"
  log "libnativekv.so carries sm_80 + sm_90a code and compute_90 PTX"
}

cmd_pack() {
  build_native
  check_package_architectures
  local feed="$ROOT/artifacts/packages"
  rm -rf "$feed"; mkdir -p "$feed"
  dotnet pack "$ROOT/managed/NativeKv.Runtime.linux-x64/NativeKv.Runtime.linux-x64.csproj" -c Release -nologo -v quiet \
    -o "$feed" -p:NativeKvLibDir="$BUILD_DIR/lib" -p:NativeKvVersion="$VERSION"
  dotnet pack "$ROOT/managed/NativeKv/NativeKv.csproj" -c Release -nologo -v quiet -o "$feed" -p:NativeKvVersion="$VERSION"
  ls -l "$feed"
  "$ROOT/tests/packaging/consume.sh" "$feed" "$VERSION"
}

cmd_gpu_bundle() {
  command -v dotnet >/dev/null || die "gpu-bundle needs the .NET SDK"
  rm -rf "$BUNDLE_DIR"; mkdir -p "$BUNDLE_DIR"
  local dotnet_root; dotnet_root="$(dirname "$(readlink -f "$(command -v dotnet)")")"
  local fx; fx="$(ls "$dotnet_root/shared/Microsoft.NETCore.App" | sort -V | tail -n1)"
  log "packing .NET runtime $fx from $dotnet_root"
  tar -C "$dotnet_root" -cJf "$BUNDLE_DIR/dotnet-runtime.tar.xz" dotnet host/fxr "shared/Microsoft.NETCore.App/$fx"
  # Published folders travel compressed: the GPU machine's copy of the tree is size-limited.
  local staging; staging="$(mktemp -d)"
  dotnet publish "$ROOT/tests/NativeKv.Tests/NativeKv.Tests.csproj" -c Release -nologo -v quiet -o "$staging/tests" \
    -p:NativeKvSkipNativeCopy=true
  dotnet publish "$ROOT/bench/NativeKv.Benchmarks/NativeKv.Benchmarks.csproj" -c Release -nologo -v quiet \
    -o "$staging/benchmarks" -p:NativeKvSkipNativeCopy=true
  tar -C "$staging" -cJf "$BUNDLE_DIR/managed.tar.xz" tests benchmarks
  cmd_managed_fingerprint >"$BUNDLE_DIR/fingerprint"
  rm -rf "$staging"
  du -sh "$BUNDLE_DIR"/*
  log "gpu-bundle ready: carry 'gpu-bundle' to the GPU machine and run ./build.sh gpu-check there"
}

# A hash of every managed source, so gpu-check can tell a bundle built from other sources.
cmd_managed_fingerprint() {
  (cd "$ROOT" && find managed tests/NativeKv.Tests bench/NativeKv.Benchmarks Directory.Build.props \
      \( -name '*.cs' -o -name '*.csproj' -o -name '*.props' -o -name '*.nuspec' \) -not -path '*/obj/*' -not -path '*/bin/*' \
      -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
}

cmd_gpu_check() {
  "$ROOT/bench/gpu_check.sh" "$ROOT"
}

case "${1:-help}" in
  toolchain) cmd_toolchain >/dev/null ;;
  build) cmd_build ;;
  test) cmd_test ;;
  bench) cmd_bench ;;
  pack) cmd_pack ;;
  gpu-bundle) cmd_gpu_bundle ;;
  gpu-check) cmd_gpu_check ;;
  managed-fingerprint) cmd_managed_fingerprint ;;
  help|-h|--help) usage ;;
  *) usage; die "unknown command '$1'" ;;
esac
