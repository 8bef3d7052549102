#!/usr/bin/env bash
# Consumes the NativeKv packages from a local feed exactly as a user would: checks their contents, then restores
# them into a fresh console app in a temporary folder and runs it. NATIVEKV_LIBRARY_PATH is unset, so the app can
# only find libnativekv.so through the runtime package's runtimes/linux-x64/native asset.
#
# usage: tests/packaging/consume.sh FEED VERSION      (build.sh pack calls it with artifacts/packages)
set -euo pipefail

[[ $# -eq 2 ]] || { echo "usage: $0 FEED VERSION" >&2; exit 2; }
FEED="$(cd "$1" && pwd)"
VERSION="$2"
unset NATIVEKV_LIBRARY_PATH
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

fail() { printf '\033[31m[consume] FAILED:\033[0m %s\n' "$*" >&2; exit 1; }
log() { printf '\033[1m[consume]\033[0m %s\n' "$*" >&2; }

RUNTIME_PKG="$FEED/NativeKv.Runtime.linux-x64.$VERSION.nupkg"
MANAGED_PKG="$FEED/NativeKv.$VERSION.nupkg"
[[ -f "$RUNTIME_PKG" ]] || fail "missing $RUNTIME_PKG"
[[ -f "$MANAGED_PKG" ]] || fail "missing $MANAGED_PKG"

# --- package contents ---------------------------------------------------------------------------------------
has_entry() { unzip -l "$1" | awk '{print $4}' | grep -qx "$2"; }
has_entry "$RUNTIME_PKG" runtimes/linux-x64/native/libnativekv.so || fail "runtime package lacks runtimes/linux-x64/native/libnativekv.so"
[[ "$(unzip -p "$RUNTIME_PKG" runtimes/linux-x64/native/libnativekv.so | head -c 4 | od -An -c | tr -d ' ')" == '177ELF' ]] ||
  fail "runtimes/linux-x64/native/libnativekv.so in the runtime package is not an ELF file (a packed symlink?)"
if unzip -l "$RUNTIME_PKG" | awk '{print $4}' | grep -q '^lib/'; then fail "the runtime package must not carry lib/ assemblies"; fi
has_entry "$MANAGED_PKG" lib/net10.0/NativeKv.dll || fail "managed package lacks lib/net10.0/NativeKv.dll"
has_entry "$MANAGED_PKG" lib/net10.0/NativeKv.xml || fail "managed package lacks lib/net10.0/NativeKv.xml"
unzip -p "$MANAGED_PKG" NativeKv.nuspec | tr -d '\r' |
  grep -Eq "<dependency id=\"NativeKv.Runtime.linux-x64\" version=\"(\[$VERSION\]|$VERSION)\"" ||
  fail "NativeKv.nuspec does not depend on NativeKv.Runtime.linux-x64 $VERSION"
log "package contents OK"

# --- a fresh consumer ---------------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/nativekv-consume.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# A private package folder: a NativeKv $VERSION cached from an earlier pack must not stand in for this one.
export NUGET_PACKAGES="$WORK/packages"

cd "$WORK"
# The local feed is added to the sources the machine already has (nuget.org by default), so anything else the
# SDK needs still resolves.
cat >nuget.config <<CONFIG
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <add key="nativekv-local" value="$FEED" />
  </packageSources>
</configuration>
CONFIG

dotnet new console --name Consumer --output app --framework net10.0 >/dev/null
cd app
dotnet add package NativeKv --version "$VERSION" >/dev/null || fail "dotnet add package NativeKv --version $VERSION"

cat >Program.cs <<'PROGRAM'
using System.Globalization;
using NativeKv;

// [2, 4], one scale per row: row 0 has absmax 4 (ties at -63.5 after division), row 1 absmax 127 (scale 1).
float[] matrix = [1f, -2f, 0.5f, 4f, -127f, 63.5f, 0f, 2.5f];
sbyte[] expectedCodes = [32, -64, 16, 127, -127, 64, 0, 2];
float[] expectedScales = [4f / 127f, 1f];

using var context = Context.Cpu();
var codes = new sbyte[8];
var scales = new float[2];
Quant.Int8Quantize(context, matrix, rows: 2, cols: 4, codes, scales);
var restored = new float[8];
Quant.Int8Dequantize(context, codes, scales, rows: 2, cols: 4, restored);

Console.WriteLine($"native {NativeLibraryInfo.Version} (ABI {NativeLibraryInfo.AbiVersion}) from {NativeLibraryInfo.LibraryPath}");
Console.WriteLine("codes: " + string.Join(' ', codes));
Console.WriteLine("scales: " + string.Join(' ', scales.Select(s => s.ToString("R", CultureInfo.InvariantCulture))));
Console.WriteLine("restored: " + string.Join(' ', restored.Select(s => s.ToString("R", CultureInfo.InvariantCulture))));

bool ok = codes.SequenceEqual(expectedCodes) && scales.SequenceEqual(expectedScales) &&
          matrix.Select((x, i) => Math.Abs(x - restored[i]) <= scales[i / 4] / 2).All(close => close);
Console.WriteLine(ok ? "consume: OK" : "consume: MISMATCH");
return ok ? 0 : 1;
PROGRAM

OUTPUT="$(dotnet run 2>&1)" || { echo "$OUTPUT" >&2; fail "the consumer app failed"; }
echo "$OUTPUT"
grep -q '^consume: OK$' <<<"$OUTPUT" || fail "unexpected quantization results"
grep -q '^codes: 32 -64 16 127 -127 64 0 2$' <<<"$OUTPUT" || fail "unexpected codes"
grep -q 'from .*/runtimes/linux-x64/native/libnativekv.so$' <<<"$OUTPUT" ||
  fail "the native library was not loaded from the package's runtimes/linux-x64/native asset"
log "NativeKv $VERSION from $FEED works in a fresh console app"
