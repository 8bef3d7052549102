namespace NativeKv.Tests;

/// <summary>The CPU backend's int8 quantization against <see cref="QuantReference"/> (float64, from the header).</summary>
public sealed class QuantCpuTests
{
    private const sbyte CodePoison = -128; // never a code: they are clamped to [-127, 127]
    private const float ScalePoison = -12345f;
    private const int ColumnPoison = 777;

    public static TheoryData<int, int, DType, QuantAxis, float> Cases()
    {
        var data = new TheoryData<int, int, DType, QuantAxis, float>();
        (int, int)[] shapes = [(1, 1), (1, 4097), (4097, 3), (0, 5), (5, 0), (0, 0), (33, 65), (3, 1000)];
        foreach ((int rows, int cols) in shapes)
        {
            foreach (DType dtype in new[] { DType.Float32, DType.Float16, DType.BFloat16 })
            {
                foreach (QuantAxis axis in new[] { QuantAxis.Row, QuantAxis.Column })
                {
                    data.Add(rows, cols, dtype, axis, 0f);
                    data.Add(rows, cols, dtype, axis, 2.5f);
                }
            }
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Quantize_matches_the_float64_reference(int rows, int cols, DType dtype, QuantAxis axis, float threshold)
    {
        Random random = TestSupport.NewRandom(out int seed);
        float[] values = RoundTo(dtype, TestSupport.RandomFloats(random, rows * cols));
        Check(values, rows, cols, dtype, axis, threshold, $"seed {seed}, [{rows}, {cols}] {dtype} {axis} threshold {threshold}");
    }

    [Fact]
    public void Ties_round_to_even()
    {
        float[] row = [127f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -126.5f, 3.5f];
        using var context = Context.Cpu();
        var codes = new sbyte[row.Length];
        var scales = new float[1];
        Quant.Int8Quantize(context, row, 1, row.Length, codes, scales);
        Assert.Equal(1f, scales[0]);
        Assert.Equal([127, 0, 2, 2, 0, -2, -2, 126, -126, 4], codes.Select(c => (int)c));
    }

    [Fact]
    public void NaN_and_infinity_follow_the_header()
    {
        float nan = float.NaN, inf = float.PositiveInfinity;
        float[] input =
        [
            1f, nan, 3f, 4f,       // NaN anywhere: scale NaN, codes 0
            1f, 2f, -inf, 4f,      // an infinity: scale +inf, codes 0
            0f, 0f, 0f, -0f,       // absmax 0: scale 0, codes 0
            -127f, 63.5f, 1f, 0f,  // ordinary
        ];
        using var context = Context.Cpu();
        var codes = new sbyte[16];
        var scales = new float[4];
        Quant.Int8Quantize(context, input, 4, 4, codes, scales);
        Assert.True(float.IsNaN(scales[0]));
        Assert.Equal(float.PositiveInfinity, scales[1]);
        Assert.Equal(0f, scales[2]);
        Assert.Equal(1f, scales[3]);
        Assert.Equal([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -127, 64, 1, 0], codes.Select(c => (int)c));
        Check(input, 4, 4, DType.Float32, QuantAxis.Column, 0f, "NaN/inf by column");
        Check(input, 4, 4, DType.Float32, QuantAxis.Row, 100f, "NaN/inf with threshold 100");
    }

    [Fact]
    public void An_infinite_threshold_makes_infinities_outliers()
    {
        float[] input = [1f, float.PositiveInfinity, 2f, float.NegativeInfinity, -4f, 0.5f]; // [2, 3]
        using var context = Context.Cpu();
        var codes = new sbyte[6];
        var scales = new float[2];
        var columns = new int[3];
        int count = Quant.Int8Quantize(context, input, 2, 3, codes, scales, QuantAxis.Row, float.PositiveInfinity, columns);
        Assert.Equal(2, count);
        Assert.Equal([0, 1, -1], columns);
        Assert.Equal(2f / 127f, scales[0]);
        Assert.Equal(4f / 127f, scales[1]);
        Assert.Equal([64, 0, 127, 0, -127, 16], codes.Select(c => (int)c));
    }

    [Fact]
    public void Outlier_columns_are_ascending_and_excluded_from_absmax()
    {
        float[] input =
        [
            0.5f, 9f, 1f, -7f, 0.25f,
            -8f, 1f, 0.5f, 1f, 2f,
        ];
        using var context = Context.Cpu();
        var codes = new sbyte[10];
        var scales = new float[2];
        int[] columns = [ColumnPoison, ColumnPoison, ColumnPoison, ColumnPoison, ColumnPoison, 12];
        int count = Quant.Int8Quantize(context, input, 2, 5, codes, scales, QuantAxis.Row, 6f, columns);
        Assert.Equal(3, count);
        Assert.Equal([0, 1, 3, -1, -1, 12], columns); // entries past cols are not the library's
        Assert.Equal(1f / 127f, scales[0]);
        Assert.Equal(2f / 127f, scales[1]);
        Assert.Equal([64, 0, 127, 0, 32, 0, 64, 32, 64, 127], codes.Select(c => (int)c));
    }

    [Fact]
    public void Dequantize_is_code_times_scale_in_float32_rounded_to_the_output_dtype()
    {
        Random random = TestSupport.NewRandom(out int seed);
        const int rows = 37, cols = 101;
        var codes = new sbyte[rows * cols];
        for (int i = 0; i < codes.Length; i++) codes[i] = (sbyte)random.Next(-127, 128);
        foreach (QuantAxis axis in new[] { QuantAxis.Row, QuantAxis.Column })
        {
            float[] scales = TestSupport.RandomFloats(random, axis == QuantAxis.Row ? rows : cols, 0.05f);
            scales[0] = float.NaN;
            scales[1] = 0f;
            scales[2] = 600f; // code * 600 overflows float16
            float[] expected = new float[codes.Length];
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < cols; c++)
                    expected[r * cols + c] = codes[r * cols + c] * scales[axis == QuantAxis.Row ? r : c];

            using var context = Context.Cpu();
            var single = new float[codes.Length];
            var half = new Half[codes.Length];
            var bfloat = new BFloat16[codes.Length];
            Quant.Int8Dequantize(context, codes, scales, rows, cols, single, axis);
            Quant.Int8Dequantize(context, codes, scales, rows, cols, half, axis);
            Quant.Int8Dequantize(context, codes, scales, rows, cols, bfloat, axis);
            TestSupport.EqualBits(expected, single, $"seed {seed} {axis} float32");
            TestSupport.EqualBits(expected.Select(v => (float)(Half)v).ToArray(), half.Select(v => (float)v).ToArray(), $"seed {seed} {axis} float16");
            TestSupport.EqualBits(expected.Select(v => (float)(BFloat16)v).ToArray(), bfloat.Select(v => (float)v).ToArray(), $"seed {seed} {axis} bfloat16");
        }
    }

    [Fact]
    public void Buffer_overloads_work_on_the_cpu_backend()
    {
        Random random = TestSupport.NewRandom(out int seed);
        const int rows = 19, cols = 301;
        float[] values = TestSupport.RandomFloats(random, rows * cols);
        values[5 * cols + 17] = 40f;
        values[11 * cols + 3] = -50f;
        using var context = Context.Cpu();
        using var input = DeviceBuffer<float>.Allocate(context, values.Length);
        using var codes = DeviceBuffer<sbyte>.Allocate(context, values.Length);
        using var scales = DeviceBuffer<float>.Allocate(context, rows);
        using var columns = DeviceBuffer<int>.Allocate(context, cols);
        input.CopyFrom(values);

        int count = Quant.Int8Quantize(context, input, rows, cols, codes, scales, QuantAxis.Row, 10f, columns);

        var expected = QuantReference.Quantize(values, rows, cols, QuantAxis.Row, 10f);
        QuantReference.AssertMatches(expected, codes.ToArray(), scales.ToArray(), $"seed {seed}");
        Assert.Equal(2, count);
        Assert.Equal([3, 17], columns.ToArray()[..count]);

        using var output = DeviceBuffer<Half>.Allocate(context, values.Length);
        Quant.Int8Dequantize(context, codes, scales, rows, cols, output);
        context.Synchronize();
        Half[] dequantized = output.ToArray();
        Assert.Equal((Half)(codes.ToArray()[7] * scales.ToArray()[0]), dequantized[7]);
    }

    [Fact]
    public void A_strided_view_of_a_wider_matrix_quantizes_like_the_contiguous_one()
    {
        Random random = TestSupport.NewRandom(out int seed);
        const int rows = 9, cols = 70, pitch = 96;
        float[] wide = TestSupport.RandomFloats(random, rows * pitch);
        float[] packed = new float[rows * cols];
        for (int r = 0; r < rows; r++) Array.Copy(wide, r * pitch, packed, r * cols, cols);

        using var context = Context.Cpu();
        using var input = DeviceBuffer<float>.Allocate(context, wide.Length);
        using var codes = DeviceBuffer<sbyte>.Allocate(context, rows * pitch);
        using var scales = DeviceBuffer<float>.Allocate(context, rows);
        input.CopyFrom(wide);
        codes.Fill(0x7F);
        Quant.Int8Quantize(context, TensorView.FromBuffer(input, [rows, cols], [pitch, 1]), TensorView.FromBuffer(codes, [rows, cols], [pitch, 1]),
            scales.AsTensor(rows));
        context.Synchronize();

        var expected = QuantReference.Quantize(packed, rows, cols, QuantAxis.Row);
        sbyte[] all = codes.ToArray();
        var written = new sbyte[rows * cols];
        for (int r = 0; r < rows; r++)
        {
            Array.Copy(all, r * pitch, written, r * cols, cols);
            Assert.All(all[(r * pitch + cols)..((r + 1) * pitch)], code => Assert.Equal(0x7F, code)); // the gap is untouched
        }
        QuantReference.AssertMatches(expected, written, scales.ToArray(), $"seed {seed}");
    }

    private static void Check(float[] values, int rows, int cols, DType dtype, QuantAxis axis, float threshold, string what)
    {
        using var context = Context.Cpu();
        int scaleCount = axis == QuantAxis.Row ? rows : cols;
        sbyte[] codes = Enumerable.Repeat(CodePoison, rows * cols).ToArray();
        float[] scales = Enumerable.Repeat(ScalePoison, scaleCount).ToArray();
        int[] columns = Enumerable.Repeat(ColumnPoison, cols).ToArray();

        int count = dtype switch
        {
            DType.Float32 => Quant.Int8Quantize(context, values, rows, cols, codes, scales, axis, threshold, columns),
            DType.Float16 => Quant.Int8Quantize(context, TestSupport.ToHalves(values), rows, cols, codes, scales, axis, threshold, columns),
            _ => Quant.Int8Quantize(context, TestSupport.ToBFloat16s(values), rows, cols, codes, scales, axis, threshold, columns),
        };

        QuantReference.Result expected = QuantReference.Quantize(values, rows, cols, axis, threshold);
        QuantReference.AssertMatches(expected, codes, scales, what);
        if (threshold == 0f)
        {
            Assert.Equal(0, count);
            Assert.All(columns, column => Assert.Equal(ColumnPoison, column));
            return;
        }
        Assert.Equal(expected.OutlierColumns.Length, count);
        Assert.Equal(expected.OutlierColumns, columns[..count]);
        Assert.All(columns[count..], column => Assert.Equal(-1, column));
    }

    private static float[] RoundTo(DType dtype, float[] values) => dtype switch
    {
        DType.Float16 => values.Select(v => (float)(Half)v).ToArray(),
        DType.BFloat16 => values.Select(v => (float)(BFloat16)v).ToArray(),
        _ => values,
    };
}
