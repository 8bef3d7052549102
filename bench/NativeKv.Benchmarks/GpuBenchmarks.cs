using BenchmarkDotNet.Attributes;

namespace NativeKv.Benchmarks;

/// <summary>
/// Device transfers and GPU quantization. Every benchmark ends with the stream synchronized, so the time is that
/// of the work, not of queuing it. Filtered out (with a note) where there is no CUDA device.
/// </summary>
[BenchmarkCategory(BenchmarkConfig.Gpu)]
public class GpuBenchmarks
{
    // 128 MiB of fp16 input plus 64 MiB of codes: well past L2 (50 MiB on H100/H200), so every run reads HBM.
    private const int Rows = 8192, Cols = 8192;
    private const int TransferBytes = 64 << 20;
    private Context _context = null!;
    private byte[] _host = [];
    private DeviceBuffer<byte> _transfer = null!;
    private DeviceBuffer<Half> _input = null!;
    private DeviceBuffer<sbyte> _codes = null!;
    private DeviceBuffer<float> _scales = null!;
    private TensorView _inputView = null!, _codesView = null!, _scalesView = null!;

    [GlobalSetup]
    public void Setup()
    {
        _context = Context.Cuda();
        _host = new byte[TransferBytes];
        new Random(42).NextBytes(_host);
        _transfer = DeviceBuffer<byte>.Allocate(_context, TransferBytes);

        var random = new Random(7);
        var values = new Half[Rows * Cols];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (Half)(random.NextSingle() * 8 - 4); // never time zeros
        }
        _input = DeviceBuffer<Half>.Allocate(_context, values.Length);
        _input.CopyFrom(values);
        _codes = DeviceBuffer<sbyte>.Allocate(_context, values.Length);
        _scales = DeviceBuffer<float>.Allocate(_context, Rows);
        _inputView = _input.AsTensor(Rows, Cols);
        _codesView = _codes.AsTensor(Rows, Cols);
        _scalesView = _scales.AsTensor(Rows);
        _context.Synchronize();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _context.Synchronize();
        _transfer.Dispose();
        _input.Dispose();
        _codes.Dispose();
        _scales.Dispose();
        _context.Dispose();
    }

    /// <summary>Pageable host memory to the device (returns once the data has arrived).</summary>
    [Benchmark, Throughput(1, Elements = TransferBytes)]
    public void Upload64MiB() => _transfer.CopyFrom(_host);

    /// <summary>Device to pageable host memory.</summary>
    [Benchmark, Throughput(1, Elements = TransferBytes)]
    public void Download64MiB() => _transfer.CopyTo(_host);

    /// <summary>fp16 in, int8 out: HBM-bound, so GB/s compares with the GPU's memory bandwidth.</summary>
    [Benchmark(Baseline = true), Throughput(3, Elements = (long)Rows * Cols)]
    public void Int8Quantize8192Fp16()
    {
        Quant.Int8Quantize(_context, _inputView, _codesView, _scalesView);
        _context.Synchronize();
    }
}
