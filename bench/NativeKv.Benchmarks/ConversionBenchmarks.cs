using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;

namespace NativeKv.Benchmarks;

/// <summary>Span conversions between float32 and the 16-bit formats: vectorized against the scalar reference.</summary>
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class ConversionBenchmarks
{
    private float[] _singles = [];
    private Half[] _halves = [];
    private BFloat16[] _bfloats = [];

    /// <summary>Elements per call: one that stays in L1/L2 and one that streams from memory.</summary>
    [Params(4096, 4 << 20)]
    public int Count { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(42);
        _singles = Enumerable.Range(0, Count).Select(_ => (float)(random.NextDouble() * 200 - 100)).ToArray();
        _halves = new Half[Count];
        _bfloats = new BFloat16[Count];
        FloatConversions.ToHalf(_singles, _halves);
    }

    [Benchmark, BenchmarkCategory("ToHalf"), Throughput(6)]
    public void ToHalf() => FloatConversions.ToHalf(_singles, _halves);

    [Benchmark(Baseline = true), BenchmarkCategory("ToHalf"), Throughput(6)]
    public void ToHalfScalar() => FloatConversions.ToHalfScalar(_singles, _halves);

    [Benchmark, BenchmarkCategory("ToHalf"), Throughput(6)]
    public void ToHalfRuntimeCast()
    {
        for (int i = 0; i < _singles.Length; i++)
        {
            _halves[i] = (Half)_singles[i];
        }
    }

    [Benchmark, BenchmarkCategory("HalfToSingle"), Throughput(6)]
    public void HalfToSingle() => FloatConversions.ToSingle(_halves, _singles);

    [Benchmark(Baseline = true), BenchmarkCategory("HalfToSingle"), Throughput(6)]
    public void HalfToSingleScalar() => FloatConversions.ToSingleScalar(_halves, _singles);

    [Benchmark, BenchmarkCategory("ToBFloat16"), Throughput(6)]
    public void ToBFloat16() => FloatConversions.ToBFloat16(_singles, _bfloats);

    [Benchmark(Baseline = true), BenchmarkCategory("ToBFloat16"), Throughput(6)]
    public void ToBFloat16Scalar() => FloatConversions.ToBFloat16Scalar(_singles, _bfloats);
}
