using BenchmarkDotNet.Attributes;
using NativeKv.Interop;

namespace NativeKv.Benchmarks;

/// <summary>The fixed cost of crossing into the native library.</summary>
public class InteropBenchmarks
{
    private Context _context = null!;

    [GlobalSetup]
    public void Setup() => _context = Context.Cpu();

    [GlobalCleanup]
    public void Cleanup() => _context.Dispose();

    /// <summary>A call with no arguments: the bare P/Invoke transition.</summary>
    [Benchmark(Baseline = true)]
    public uint AbiVersion() => NativeMethods.nkv_abi_version();

    /// <summary>A SafeHandle argument (AddRef/Release) and an out parameter.</summary>
    [Benchmark]
    public int ContextBackend()
    {
        NativeStatus.Check(NativeMethods.nkv_context_backend(_context.Handle, out int backend));
        return backend;
    }

    /// <summary>The same through the public API, including the status check.</summary>
    [Benchmark]
    public void Synchronize() => _context.Synchronize();
}
