#!/usr/bin/env pwsh
# NativeKv build driver for PowerShell 7 (Windows, Linux, macOS): the same subcommands as build.sh.
# `./build.ps1 help` lists them.
[CmdletBinding()]
param([Parameter(Position = 0)][string]$Command = 'help')

$ErrorActionPreference = 'Stop'
$Root = $PSScriptRoot
$BuildDir = if ($env:NKV_BUILD_DIR) { $env:NKV_BUILD_DIR } else { Join-Path $Root 'build' }
$env:DOTNET_CLI_TELEMETRY_OPTOUT = '1'
$env:DOTNET_NOLOGO = '1'

function Write-Step([string]$Message) { Write-Host "[nativekv] $Message" -ForegroundColor Cyan }
function Invoke-Checked([string]$Exe, [string[]]$Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "$Exe $($Arguments -join ' ') failed with exit code $LASTEXITCODE" }
}

function Show-Usage {
    @'
usage: ./build.ps1 <command>

  toolchain   find nvcc >= 12.0 (CUDACXX, PATH, CUDA_PATH); on Linux without one, build.sh installs
              CUDA 12.4 from Debian packages into the user cache
  build       configure + build native (CPU backend, CUDA when a compiler is found) and managed
  test        build, then ctest (GPU suites skip visibly without a GPU) and the xunit suite
  bench       kernel benchmarks on the best backend available
  pack        NuGet packages into artifacts/packages and the local-feed consumption test (Linux)
  gpu-bundle  .NET runtime + published tests for a GPU machine without the SDK (Linux, via build.sh)
  gpu-check   the GPU machine's full check (Linux, via build.sh)
  help        this text
'@ | Write-Host
}

function Test-NvccVersion([string]$Nvcc) {
    if (-not $Nvcc -or -not (Test-Path $Nvcc)) { return $false }
    $text = & $Nvcc --version 2>$null | Out-String
    return ($text -match 'release (\d+)\.' -and [int]$Matches[1] -ge 12)
}

function Find-Nvcc {
    $exe = if ($IsWindows) { 'nvcc.exe' } else { 'nvcc' }
    $candidates = @($env:CUDACXX)
    $onPath = Get-Command $exe -ErrorAction SilentlyContinue
    if ($onPath) { $candidates += $onPath.Source }
    if ($env:CUDA_PATH) { $candidates += (Join-Path $env:CUDA_PATH "bin/$exe") }
    if (-not $IsWindows) {
        $cache = if ($env:XDG_CACHE_HOME) { $env:XDG_CACHE_HOME } else { Join-Path $HOME '.cache' }
        $candidates += '/usr/local/cuda/bin/nvcc', (Join-Path $cache 'nativekv/cuda-12.4/bin/nvcc')
    }
    foreach ($c in $candidates) { if (Test-NvccVersion $c) { return $c } }
    return $null
}

function Invoke-Toolchain {
    $nvcc = Find-Nvcc
    if (-not $nvcc -and -not $IsWindows) {
        Invoke-Checked 'bash' @((Join-Path $Root 'build.sh'), 'toolchain')
        $nvcc = Find-Nvcc
    }
    if ($nvcc) { Write-Step "nvcc: $nvcc" } else { Write-Step 'no nvcc >= 12.0 found: building the CPU backend only' }
    return $nvcc
}

function Invoke-NativeBuild {
    $nvcc = Invoke-Toolchain
    if (-not (Test-Path (Join-Path $BuildDir 'CMakeCache.txt'))) {
        $configure = @('-S', $Root, '-B', $BuildDir, "-DCMAKE_BUILD_TYPE=$(if ($env:NKV_BUILD_TYPE) { $env:NKV_BUILD_TYPE } else { 'Release' })")
        if (Get-Command ninja -ErrorAction SilentlyContinue) { $configure += '-G', 'Ninja' }
        if ($nvcc) { $configure += "-DCMAKE_CUDA_COMPILER=$nvcc" }
        if ($env:NKV_CUDA_ARCHITECTURES) { $configure += "-DCMAKE_CUDA_ARCHITECTURES=$($env:NKV_CUDA_ARCHITECTURES)" }
        Invoke-Checked 'cmake' $configure
    }
    Invoke-Checked 'cmake' @('--build', $BuildDir, '--parallel', "$([Environment]::ProcessorCount)", '--config', 'Release')
}

function Invoke-ManagedBuild {
    Invoke-Checked 'dotnet' @('build', (Join-Path $Root 'NativeKv.sln'), '-c', 'Release', '-nologo', '-v', 'quiet',
        "-p:NativeKvLibDir=$(Join-Path $BuildDir 'lib')")
}

function Invoke-Test {
    Invoke-NativeBuild
    Invoke-ManagedBuild
    Write-Step 'native tests (ctest)'
    Push-Location $BuildDir
    try {
        & ctest --output-on-failure --timeout 900 -C Release -j ([Environment]::ProcessorCount) 2>&1 | Tee-Object -Variable ctestOutput | Out-Host
        $ctestExit = $LASTEXITCODE
    } finally { Pop-Location }
    $skipped = @($ctestOutput | Select-String -SimpleMatch '***Skipped').Count
    Write-Step "ctest: $skipped test(s) skipped (GPU suites without a GPU)"
    if ($ctestExit -ne 0) { throw 'ctest failed' }
    Write-Step 'managed tests (xunit v3)'
    $env:NATIVEKV_LIBRARY_PATH = Join-Path $BuildDir 'lib'
    Invoke-Checked 'dotnet' @('test', '--project', (Join-Path $Root 'tests/NativeKv.Tests/NativeKv.Tests.csproj'), '-c', 'Release', '--no-build')
}

function Invoke-Bench {
    Invoke-NativeBuild
    $results = if ($env:OUT) { $env:OUT } else { Join-Path $Root 'bench/results' }
    $python = if (Get-Command python3 -ErrorAction SilentlyContinue) { 'python3' } else { 'python' }
    Invoke-Checked $python @((Join-Path $Root 'bench/run.py'), '--build', $BuildDir, '--results', $results, '--repo', $Root)
}

function Invoke-ViaBash([string]$Sub) {
    if ($IsWindows) { throw "'$Sub' runs on Linux only (it needs bash and the Linux CUDA/.NET layout)" }
    Invoke-Checked 'bash' @((Join-Path $Root 'build.sh'), $Sub)
}

switch ($Command) {
    'toolchain' { $null = Invoke-Toolchain }
    'build' { Invoke-NativeBuild; Invoke-ManagedBuild }
    'test' { Invoke-Test }
    'bench' { Invoke-Bench }
    'pack' { Invoke-ViaBash 'pack' }
    'gpu-bundle' { Invoke-ViaBash 'gpu-bundle' }
    'gpu-check' { Invoke-ViaBash 'gpu-check' }
    { $_ -in 'help', '-h', '--help' } { Show-Usage }
    default { Show-Usage; throw "unknown command '$Command'" }
}
