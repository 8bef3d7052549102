using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Filters;

namespace NativeKv.Benchmarks;

/// <summary>Shared configuration: in-process runs, the GB/s column, and GPU benchmarks only where a GPU is.</summary>
public static class BenchmarkConfig
{
    /// <summary>The category of benchmarks that need a CUDA device.</summary>
    public const string Gpu = "gpu";

    private static readonly Lazy<bool> s_hasGpu = new(() => Devices.CudaDeviceCount > 0);
    private static readonly HashSet<string> s_reportedSkips = [];

    /// <summary>
    /// Runs every job in this process (BenchmarkDotNet's --inProcess): the native library is found exactly as the app
    /// finds it, the GPU context lives here, and no SDK is needed to build child processes (the GPU machine has none).
    /// </summary>
    public static string[] WithInProcess(string[] args) =>
        args.Contains("--inProcess", StringComparer.OrdinalIgnoreCase) ? args : [.. args, "--inProcess"];

    public static IConfig Create() =>
        ManualConfig.Create(DefaultConfig.Instance)
            .AddColumn(new ThroughputColumn())
            .AddFilter(new SimpleFilter(benchmark =>
            {
                bool needsGpu = benchmark.Descriptor.Categories.Contains(Gpu);
                if (needsGpu && !s_hasGpu.Value)
                {
                    if (s_reportedSkips.Add(benchmark.Descriptor.DisplayInfo))
                    {
                        Console.WriteLine($"// skipped {benchmark.Descriptor.DisplayInfo}: no CUDA device ({Devices.CudaUnavailableReason})");
                    }
                    return false;
                }
                return true;
            }));
}
