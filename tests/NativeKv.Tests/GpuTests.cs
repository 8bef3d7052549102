namespace NativeKv.Tests;

/// <summary>The CUDA backend against the CPU backend and the float64 reference. Skipped, visibly, without a GPU.</summary>
public sealed class GpuTests
{
    private const byte CodePoison = 0x80; // -128, never a code
    private const byte ScalePoison = 0xFF; // a NaN pattern with every payload bit set, distinct from a computed NaN

    /// <summary>Skips without a device, unless NATIVEKV_REQUIRE_GPU=1 (set by the GPU check) makes that a failure.</summary>
    internal static void RequireGpu()
    {
        if (Environment.GetEnvironmentVariable("NATIVEKV_REQUIRE_GPU") == "1")
        {
            Assert.True(Devices.CudaDeviceCount > 0, $"NATIVEKV_REQUIRE_GPU=1 but no CUDA device: {Devices.CudaUnavailableReason}");
        }
        Assert.SkipUnless(Devices.CudaDeviceCount > 0, "no CUDA device");
    }

    [Fact]
    public void Cuda_context_reports_device_and_stream()
    {
        RequireGpu();
        using var context = Context.Cuda();
        Assert.Equal(Backend.Cuda, context.Backend);
        Assert.Equal(0, context.DeviceOrdinal);
        Assert.NotEqual(0, context.Stream);
        DeviceProperties properties = Devices.GetProperties(0);
        Assert.False(string.IsNullOrWhiteSpace(properties.Name));
        Assert.True(properties.ComputeCapabilityMajor >= 7, properties.ToString());
        Assert.True(properties.TotalMemoryBytes > 1L << 30);
        Assert.True(properties.MultiprocessorCount > 0);
        TestContext.Current.TestOutputHelper?.WriteLine(properties.ToString());
    }

    [Fact]
    public void Device_buffers_round_trip()
    {
        RequireGpu();
        Random random = TestSupport.NewRandom(out _);
        using var context = Context.Cuda();
        float[] values = TestSupport.RandomFloats(random, 100_003);
        using var a = DeviceBuffer<float>.Allocate(context, values.Length);
        using var b = DeviceBuffer<float>.Allocate(context, values.Length);
        Assert.Equal(DeviceType.Cuda, a.Device);
        Assert.Equal(0, a.Pointer % 256);
        a.CopyFrom(values);
        b.Fill(0xFF);
        b.CopyFrom(a, sourceIndex: 1, destinationIndex: 0, length: values.Length - 1);
        float[] back = b.ToArray();
        Assert.Equal(values[1..], back[..^1]);
        Assert.True(float.IsNaN(back[^1]));
        b.Clear();
        Assert.All(b.ToArray(), v => Assert.Equal(0f, v));
    }

    public static TheoryData<int, int, DType, QuantAxis, float> Cases()
    {
        var data = new TheoryData<int, int, DType, QuantAxis, float>();
        (int, int)[] shapes = [(1, 1), (1, 4097), (4097, 3), (0, 5), (5, 0), (33, 65), (129, 1031), (1000, 4096)];
        foreach ((int rows, int cols) in shapes)
            foreach (DType dtype in new[] { DType.Float32, DType.Float16, DType.BFloat16 })
                foreach (QuantAxis axis in new[] { QuantAxis.Row, QuantAxis.Column })
                    foreach (float threshold in new[] { 0f, 2.5f })
                        data.Add(rows, cols, dtype, axis, threshold);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Quantize_matches_the_cpu_backend(int rows, int cols, DType dtype, QuantAxis axis, float threshold)
    {
        RequireGpu();
        Random random = TestSupport.NewRandom(out int seed);
        float[] values = TestSupport.RandomFloats(random, rows * cols);
        if (values.Length > 10)
        {
            values[random.Next(values.Length)] = float.NaN;
            values[random.Next(values.Length)] = float.PositiveInfinity;
        }
        CompareWithCpu(values, rows, cols, dtype, axis, threshold, $"seed {seed}, [{rows}, {cols}] {dtype} {axis} threshold {threshold}");
    }

    [Fact]
    public void Quantize_8192_square_float16()
    {
        RequireGpu();
        Random random = TestSupport.NewRandom(out int seed);
        const int n = 8192;
        float[] values = TestSupport.RandomFloats(random, n * n);
        CompareWithCpu(values, n, n, DType.Float16, QuantAxis.Row, 4f, $"seed {seed}, [8192, 8192] fp16 row threshold 4");
    }

    [Fact]
    public void Dequantize_matches_the_cpu_backend()
    {
        RequireGpu();
        Random random = TestSupport.NewRandom(out int seed);
        const int rows = 257, cols = 1025;
        var codes = new sbyte[rows * cols];
        for (int i = 0; i < codes.Length; i++) codes[i] = (sbyte)random.Next(-127, 128);
        float[] scales = TestSupport.RandomFloats(random, cols, 0.01f);
        var expected = new Half[codes.Length];
        using (var cpu = Context.Cpu())
        {
            Quant.Int8Dequantize(cpu, codes, scales, rows, cols, expected, QuantAxis.Column);
        }

        using var context = Context.Cuda();
        using var deviceCodes = DeviceBuffer<sbyte>.Allocate(context, codes.Length);
        using var deviceScales = DeviceBuffer<float>.Allocate(context, cols);
        using var output = DeviceBuffer<Half>.Allocate(context, codes.Length);
        deviceCodes.CopyFrom(codes);
        deviceScales.CopyFrom(scales);
        output.Fill(0xFF);
        Quant.Int8Dequantize(context, deviceCodes, deviceScales, rows, cols, output, QuantAxis.Column);
        context.Synchronize();
        Half[] actual = output.ToArray();
        for (int i = 0; i < actual.Length; i++)
        {
            Assert.True(BitConverter.HalfToUInt16Bits(expected[i]) == BitConverter.HalfToUInt16Bits(actual[i]), $"seed {seed}: [{i}] {expected[i]} vs {actual[i]}");
        }
    }

    [Fact]
    public void Strided_views_on_the_device()
    {
        RequireGpu();
        Random random = TestSupport.NewRandom(out int seed);
        const int rows = 50, cols = 300, pitch = 320;
        float[] wide = TestSupport.RandomFloats(random, rows * pitch);
        float[] packed = new float[rows * cols];
        for (int r = 0; r < rows; r++) Array.Copy(wide, r * pitch, packed, r * cols, cols);

        using var context = Context.Cuda();
        using var input = DeviceBuffer<float>.Allocate(context, wide.Length);
        using var codes = DeviceBuffer<sbyte>.Allocate(context, rows * pitch);
        using var scales = DeviceBuffer<float>.Allocate(context, rows);
        input.CopyFrom(wide);
        codes.Fill(CodePoison);
        Quant.Int8Quantize(context, TensorView.FromBuffer(input, [rows, cols], [pitch, 1]), TensorView.FromBuffer(codes, [rows, cols], [pitch, 1]),
            scales.AsTensor(rows));
        context.Synchronize();

        sbyte[] all = codes.ToArray();
        var written = new sbyte[rows * cols];
        for (int r = 0; r < rows; r++)
        {
            Array.Copy(all, r * pitch, written, r * cols, cols);
            Assert.All(all[(r * pitch + cols)..((r + 1) * pitch)], code => Assert.Equal(unchecked((sbyte)CodePoison), code));
        }
        QuantReference.AssertMatches(QuantReference.Quantize(packed, rows, cols, QuantAxis.Row), written, scales.ToArray(), $"seed {seed}");
    }

    private static void CompareWithCpu(float[] values, int rows, int cols, DType dtype, QuantAxis axis, float threshold, string what)
    {
        int scaleCount = axis == QuantAxis.Row ? rows : cols;
        bool outliers = threshold != 0f;
        var expectedCodes = new sbyte[values.Length];
        var expectedScales = new float[scaleCount];
        var expectedColumns = new int[cols];
        float[] rounded;
        int expectedCount;
        using (var cpu = Context.Cpu())
        {
            (rounded, expectedCount) = dtype switch
            {
                DType.Float16 => Run(TestSupport.ToHalves(values), h => (float)h),
                DType.BFloat16 => Run(TestSupport.ToBFloat16s(values), b => (float)b),
                _ => Run(values, v => v),
            };

            (float[], int) Run<T>(T[] input, Func<T, float> widen) where T : unmanaged
            {
                int count = input switch
                {
                    Half[] h => Quant.Int8Quantize(cpu, h, rows, cols, expectedCodes, expectedScales, axis, threshold, expectedColumns),
                    BFloat16[] b => Quant.Int8Quantize(cpu, b, rows, cols, expectedCodes, expectedScales, axis, threshold, expectedColumns),
                    _ => Quant.Int8Quantize(cpu, (float[])(object)input, rows, cols, expectedCodes, expectedScales, axis, threshold, expectedColumns),
                };
                return (Array.ConvertAll(input, x => widen(x)), count);
            }
        }

        using var context = Context.Cuda();
        using var codes = DeviceBuffer<sbyte>.Allocate(context, values.Length);
        using var scales = DeviceBuffer<float>.Allocate(context, scaleCount);
        using var columns = DeviceBuffer<int>.Allocate(context, cols);
        codes.Fill(CodePoison);
        scales.Fill(ScalePoison);
        columns.Fill(0x11);
        int actualCount = dtype switch
        {
            DType.Float16 => Upload(TestSupport.ToHalves(values)),
            DType.BFloat16 => Upload(TestSupport.ToBFloat16s(values)),
            _ => Upload(values),
        };

        int Upload<T>(T[] host) where T : unmanaged
        {
            using var input = DeviceBuffer<T>.Allocate(context, host.Length);
            input.CopyFrom(host);
            int count = Quant.Int8Quantize(context, input, rows, cols, codes, scales, axis, threshold, outliers ? columns : null);
            context.Synchronize();
            return count;
        }

        sbyte[] actualCodes = codes.ToArray();
        float[] actualScales = scales.ToArray();
        TestSupport.EqualArrays<sbyte>(expectedCodes, actualCodes, what + " codes (CUDA vs CPU)");
        TestSupport.EqualBits(expectedScales, actualScales, what + " scales (CUDA vs CPU)");
        QuantReference.AssertMatches(QuantReference.Quantize(rounded, rows, cols, axis, threshold), actualCodes, actualScales, what);
        if (outliers)
        {
            Assert.Equal(expectedCount, actualCount);
            Assert.Equal(expectedColumns, columns.ToArray());
        }
    }
}
