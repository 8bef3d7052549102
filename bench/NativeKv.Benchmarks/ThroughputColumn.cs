using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace NativeKv.Benchmarks;

/// <summary>
/// Declares how many bytes one invocation moves: <see cref="BytesPerElement"/> times the benchmark's
/// <c>Count</c> parameter, or times <see cref="Elements"/> when the benchmark has no such parameter.
/// </summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class ThroughputAttribute(double bytesPerElement) : Attribute
{
    public double BytesPerElement { get; } = bytesPerElement;

    public long Elements { get; init; } = 1;
}

/// <summary>GB/s (10^9 bytes per second) from the mean time and the bytes a <see cref="ThroughputAttribute"/> declares.</summary>
public sealed class ThroughputColumn : IColumn
{
    public string Id => nameof(ThroughputColumn);
    public string ColumnName => "GB/s";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "Bytes read plus bytes written per invocation, divided by the mean time (10^9 bytes/s)";

    public bool IsAvailable(Summary summary) => true;

    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var throughput = (ThroughputAttribute?)Attribute.GetCustomAttribute(benchmarkCase.Descriptor.WorkloadMethod, typeof(ThroughputAttribute));
        double? meanNanoseconds = summary[benchmarkCase]?.ResultStatistics?.Mean;
        if (throughput is null || meanNanoseconds is not > 0)
        {
            return "-";
        }
        long elements = benchmarkCase.Parameters.Items.FirstOrDefault(p => p.Name == "Count")?.Value is int count ? count : throughput.Elements;
        return (throughput.BytesPerElement * elements / meanNanoseconds.Value).ToString("F2", style.CultureInfo);
    }

    public override string ToString() => ColumnName;
}
