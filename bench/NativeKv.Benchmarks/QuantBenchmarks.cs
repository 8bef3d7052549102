using BenchmarkDotNet.Attributes;

namespace NativeKv.Benchmarks;

/// <summary>Int8 quantization on the CPU reference backend, through the host-span overload.</summary>
public class QuantCpuBenchmarks
{
    private const int Rows = 1024, Cols = 1024;
    private Context _context = null!;
    private Half[] _input = [];
    private readonly sbyte[] _codes = new sbyte[Rows * Cols];
    private readonly float[] _scales = new float[Rows];
    private readonly int[] _outlierColumns = new int[Cols];

    [GlobalSetup]
    public void Setup()
    {
        _context = Context.Cpu();
        var random = new Random(42);
        _input = Enumerable.Range(0, Rows * Cols).Select(_ => (Half)(random.NextDouble() * 8 - 4)).ToArray();
    }

    [GlobalCleanup]
    public void Cleanup() => _context.Dispose();

    /// <summary>fp16 in (2 bytes), int8 out (1 byte) per element.</summary>
    [Benchmark(Baseline = true), Throughput(3, Elements = Rows * Cols)]
    public int Int8Quantize1024Fp16() => Quant.Int8Quantize(_context, _input, Rows, Cols, _codes, _scales);

    [Benchmark, Throughput(3, Elements = Rows * Cols)]
    public int Int8Quantize1024Fp16Outliers() =>
        Quant.Int8Quantize(_context, _input, Rows, Cols, _codes, _scales, QuantAxis.Row, 3.5f, _outlierColumns);
}
