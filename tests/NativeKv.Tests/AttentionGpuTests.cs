using System.Runtime.InteropServices;

namespace NativeKv.Tests;

/// <summary>CUDA attention against the CPU backend on the same fresh random data. Skipped, visibly, without a GPU.</summary>
public sealed class AttentionGpuTests
{
    private const ushort Poison = 0xFFFF; // a NaN in both float16 and bfloat16
    private const int RowPadding = 64;    // strided cases: elements between rows that no op may touch

    public static TheoryData<DType, int, int, int, bool, int, float, bool> VarlenCases() => new()
    {
        // dtype, head dim, heads q, heads kv, causal, window left (-1: none), softcap, strided rows
        { DType.Float16, 64, 8, 8, true, -1, 0f, false },
        { DType.Float16, 64, 8, 1, true, -1, 0f, false },
        { DType.Float16, 96, 6, 2, false, -1, 0f, false },
        { DType.Float16, 128, 16, 4, true, 32, 0f, false },
        { DType.Float16, 128, 4, 4, true, -1, 30f, true },
        { DType.Float16, 256, 4, 2, true, -1, 0f, true },
        { DType.BFloat16, 64, 8, 2, true, -1, 0f, false },
        { DType.BFloat16, 128, 8, 8, false, -1, 0f, true },
        { DType.BFloat16, 256, 2, 1, true, 100, 0f, false },
    };

    [Theory]
    [MemberData(nameof(VarlenCases))]
    public void Varlen_matches_the_cpu_backend(DType dtype, int d, int hq, int hkv, bool causal, int window, float softcap, bool strided)
    {
        GpuTests.RequireGpu();
        Random random = TestSupport.NewRandom(out int seed);
        string what = $"seed {seed}, {dtype} d {d} heads {hq}/{hkv} causal {causal} window {window} softcap {softcap} strided {strided}";
        var options = new AttentionOptions { Causal = causal, WindowLeft = window >= 0 ? window : null, Softcap = softcap };

        // Awkward lengths: chunks over cached keys, an empty query block, a block with no keys at all.
        const int batch = 6;
        int[] cuQ = new int[batch + 1], cuK = new int[batch + 1];
        for (int b = 0; b < batch; b++)
        {
            int lq = b == 1 ? 0 : random.Next(1, 200);
            int lk = b == 4 ? 0 : lq + random.Next(0, 300);
            cuQ[b + 1] = cuQ[b] + lq;
            cuK[b + 1] = cuK[b] + lk;
        }
        int rowsQ = cuQ[^1] + 3, rowsK = cuK[^1] + 5;
        float[] q = AttentionCpuTests.Round(dtype, TestSupport.RandomFloats(random, rowsQ * hq * d));
        float[] k = AttentionCpuTests.Round(dtype, TestSupport.RandomFloats(random, rowsK * hkv * d));
        float[] v = AttentionCpuTests.Round(dtype, TestSupport.RandomFloats(random, rowsK * hkv * d));

        float[] expected, expectedLse = new float[hq * rowsQ];
        using (var cpu = Context.Cpu())
        using (var plan = Attention.PlanVarlen(cpu, hq, hkv, d, cuQ, cuK, options))
        {
            expected = dtype == DType.Float16
                ? RunCpu<Half>(x => (float)x, o => Attention.Varlen(plan, Narrow<Half>(q), Narrow<Half>(k), Narrow<Half>(v), o, expectedLse), q.Length)
                : RunCpu<BFloat16>(x => (float)x, o => Attention.Varlen(plan, Narrow<BFloat16>(q), Narrow<BFloat16>(k), Narrow<BFloat16>(v), o, expectedLse), q.Length);
        }

        using var context = Context.Cuda();
        using var cudaPlan = Attention.PlanVarlen(context, hq, hkv, d, cuQ, cuK, options);
        Assert.Equal(cuQ[^1], cudaPlan.Info.TotalQ);
        int padding = strided ? RowPadding : 0;
        using var qBuffer = Upload(context, dtype, q, rowsQ, hq * d, padding);
        using var kBuffer = Upload(context, dtype, k, rowsK, hkv * d, padding);
        using var vBuffer = Upload(context, dtype, v, rowsK, hkv * d, padding);
        using var oBuffer = DeviceBuffer<Half>.Allocate(context, (long)rowsQ * (hq * d + padding));
        using var lseBuffer = DeviceBuffer<float>.Allocate(context, hq * rowsQ);
        oBuffer.Fill(0xFF);
        lseBuffer.Fill(0xFF);
        Attention.Varlen(cudaPlan,
            View(qBuffer, dtype, [rowsQ, hq, d], padding), View(kBuffer, dtype, [rowsK, hkv, d], padding),
            View(vBuffer, dtype, [rowsK, hkv, d], padding), View(oBuffer, dtype, [rowsQ, hq, d], padding), lseBuffer.AsTensor(hq, rowsQ));
        context.Synchronize();

        ushort[] bits = Bits(oBuffer);
        var actual = new float[q.Length];
        for (int r = 0; r < rowsQ; r++)
        {
            for (int i = 0; i < hq * d; i++)
            {
                ushort x = bits[r * (hq * d + padding) + i];
                if (r >= cuQ[^1])
                {
                    Assert.True(x == Poison, $"{what}: o row {r} past total_q was written");
                    continue;
                }
                actual[r * hq * d + i] = Widen(dtype, x);
                Assert.True(float.IsFinite(actual[r * hq * d + i]), $"{what}: o[{r}, {i}] not written ({x:X4})");
            }
            for (int i = 0; i < padding; i++)
            {
                Assert.True(bits[r * (hq * d + padding) + hq * d + i] == Poison, $"{what}: padding after o row {r} was written");
            }
        }
        int written = cuQ[^1] * hq * d;
        double error = RelativeError(expected.AsSpan(0, written), actual.AsSpan(0, written));
        TestContext.Current.TestOutputHelper?.WriteLine($"{what}: relative error vs the CPU backend {error:E3}");
        Assert.True(error <= AttentionCpuTests.Tolerance(dtype), $"{what}: relative error {error:E3} vs the CPU backend");
        AssertLseClose(expectedLse, lseBuffer.ToArray(), hq, rowsQ, cuQ[^1], what);
    }

    public static TheoryData<DType, int, int, int, int, int, bool, int> DecodeCases() => new()
    {
        // dtype, head dim, heads q, heads kv, q_len, num_splits (0: from the device), causal, window left
        { DType.Float16, 128, 32, 8, 1, 0, true, -1 },
        { DType.Float16, 64, 8, 1, 4, 0, true, -1 },
        { DType.Float16, 256, 4, 4, 16, 3, true, -1 },
        { DType.BFloat16, 128, 8, 2, 1, 0, false, -1 },
        { DType.BFloat16, 96, 12, 4, 2, 1, true, 64 },
    };

    [Theory]
    [MemberData(nameof(DecodeCases))]
    public void Decode_matches_the_cpu_backend(DType dtype, int d, int hq, int hkv, int qLen, int numSplits, bool causal, int window)
    {
        GpuTests.RequireGpu();
        Random random = TestSupport.NewRandom(out int seed);
        string what = $"seed {seed}, {dtype} d {d} heads {hq}/{hkv} q_len {qLen} splits {numSplits} causal {causal} window {window}";
        var options = new AttentionOptions { Causal = causal, WindowLeft = window >= 0 ? window : null, NumSplits = numSplits };
        int[] seqlensK = [0, random.Next(1, 64), 2049, random.Next(1, 2000), qLen, random.Next(1, 2000), 257];
        int batch = seqlensK.Length, capacity = seqlensK.Max() + 3, layers = 2, layer = 1;
        int tokenElements = hkv * d;
        float[] q = AttentionCpuTests.Round(dtype, TestSupport.RandomFloats(random, batch * qLen * hq * d));
        // The caches interleave two layers per token: [batch, capacity, layers, heads_kv, d]; the op reads layer 1.
        float[] kCache = AttentionCpuTests.Round(dtype, TestSupport.RandomFloats(random, batch * capacity * layers * tokenElements));
        float[] vCache = AttentionCpuTests.Round(dtype, TestSupport.RandomFloats(random, batch * capacity * layers * tokenElements));
        float[] k = new float[batch * capacity * tokenElements], v = new float[k.Length];
        for (int token = 0; token < batch * capacity; token++)
        {
            Array.Copy(kCache, (token * layers + layer) * tokenElements, k, token * tokenElements, tokenElements);
            Array.Copy(vCache, (token * layers + layer) * tokenElements, v, token * tokenElements, tokenElements);
        }

        float[] expected, expectedLse = new float[batch * hq * qLen];
        using (var cpu = Context.Cpu())
        using (var plan = Attention.PlanDecode(cpu, hq, hkv, d, qLen, seqlensK, options))
        {
            expected = dtype == DType.Float16
                ? RunCpu<Half>(x => (float)x, o => Attention.Decode(plan, Narrow<Half>(q), Narrow<Half>(k), Narrow<Half>(v), o, expectedLse), q.Length)
                : RunCpu<BFloat16>(x => (float)x, o => Attention.Decode(plan, Narrow<BFloat16>(q), Narrow<BFloat16>(k), Narrow<BFloat16>(v), o, expectedLse), q.Length);
        }

        using var context = Context.Cuda();
        using var cudaPlan = Attention.PlanDecode(context, hq, hkv, d, qLen, seqlensK, options);
        if (numSplits > 0) Assert.True(cudaPlan.Info.NumSplits <= numSplits, what);
        TestContext.Current.TestOutputHelper?.WriteLine($"{what}: {cudaPlan.Info.NumSplits} splits at most");
        using var qBuffer = Upload(context, dtype, q, q.Length, 1, 0);
        using var kBuffer = Upload(context, dtype, kCache, kCache.Length, 1, 0);
        using var vBuffer = Upload(context, dtype, vCache, vCache.Length, 1, 0);
        using var oBuffer = DeviceBuffer<Half>.Allocate(context, q.Length);
        using var lseBuffer = DeviceBuffer<float>.Allocate(context, expectedLse.Length);
        oBuffer.Fill(0xFF);
        lseBuffer.Fill(0xFF);
        long[] cacheStrides = [(long)capacity * layers * tokenElements, layers * tokenElements, d, 1];
        Attention.Decode(cudaPlan,
            View(qBuffer, dtype, [batch, qLen, hq, d], 0),
            View(kBuffer, dtype, [batch, capacity, hkv, d], cacheStrides, layer * tokenElements),
            View(vBuffer, dtype, [batch, capacity, hkv, d], cacheStrides, layer * tokenElements),
            View(oBuffer, dtype, [batch, qLen, hq, d], 0), lseBuffer.AsTensor(batch, hq, qLen));
        context.Synchronize();

        ushort[] bits = Bits(oBuffer);
        float[] actual = Array.ConvertAll(bits, x => Widen(dtype, x));
        Assert.All(actual, x => Assert.True(float.IsFinite(x), $"{what}: an output element was not written"));
        double error = RelativeError(expected, actual);
        TestContext.Current.TestOutputHelper?.WriteLine($"{what}: relative error vs the CPU backend {error:E3}");
        Assert.True(error <= AttentionCpuTests.Tolerance(dtype), $"{what}: relative error {error:E3} vs the CPU backend");
        AssertLseClose(expectedLse, lseBuffer.ToArray(), 1, expectedLse.Length, expectedLse.Length, what);
    }

    [Fact]
    public void Host_span_overloads_refuse_a_cuda_plan()
    {
        GpuTests.RequireGpu();
        using var context = Context.Cuda();
        using var varlen = Attention.PlanVarlen(context, 1, 1, 64, [0, 1], [0, 1]);
        using var decode = Attention.PlanDecode(context, 1, 1, 64, 1, [1]);
        var row = new Half[64];
        Assert.Throws<ArgumentException>("plan", () => Attention.Varlen(varlen, row, row, row, new Half[64]));
        Assert.Throws<ArgumentException>("plan", () => Attention.Decode(decode, row, row, row, new Half[64]));
        var bfloat = new BFloat16[64];
        Assert.Throws<ArgumentException>("plan", () => Attention.Varlen(varlen, bfloat, bfloat, bfloat, new BFloat16[64]));
    }

    private static float[] RunCpu<T>(Func<T, float> widen, Action<T[]> run, int length) where T : unmanaged
    {
        var o = new T[length];
        run(o);
        return Array.ConvertAll(o, x => widen(x));
    }

    private static T[] Narrow<T>(float[] values) where T : unmanaged =>
        typeof(T) == typeof(Half) ? (T[])(object)TestSupport.ToHalves(values) : (T[])(object)TestSupport.ToBFloat16s(values);

    private static float Widen(DType dtype, ushort bits) =>
        dtype == DType.Float16 ? (float)BitConverter.UInt16BitsToHalf(bits) : (float)BFloat16.FromRawValue(bits);

    // [rows, rowElements] values as float16/bfloat16 bits, each row followed by `padding` poison elements. The buffers hold
    // 2-byte elements as Half whatever the dtype; the views say which it is.
    private static DeviceBuffer<Half> Upload(Context context, DType dtype, float[] values, int rows, int rowElements, int padding)
    {
        var bits = new ushort[(long)rows * (rowElements + padding)];
        Array.Fill(bits, Poison);
        for (int r = 0; r < rows; r++)
        {
            for (int i = 0; i < rowElements; i++)
            {
                float x = values[r * rowElements + i];
                bits[r * (rowElements + padding) + i] = dtype == DType.Float16
                    ? BitConverter.HalfToUInt16Bits((Half)x)
                    : ((BFloat16)x).RawValue;
            }
        }
        var buffer = DeviceBuffer<Half>.Allocate(context, bits.Length);
        buffer.CopyFrom(MemoryMarshal.Cast<ushort, Half>(bits));
        return buffer;
    }

    private static ushort[] Bits(DeviceBuffer<Half> buffer) => MemoryMarshal.Cast<Half, ushort>(buffer.ToArray()).ToArray();

    // A [rows, heads, d] (or any row-major) view of 2-byte elements whose rows are `padding` elements apart.
    private static TensorView View(DeviceBuffer<Half> buffer, DType dtype, long[] shape, int padding)
    {
        var strides = new long[shape.Length];
        strides[^1] = 1;
        for (int i = shape.Length - 2; i >= 0; i--) strides[i] = strides[i + 1] * shape[i + 1];
        strides[0] += padding;
        return View(buffer, dtype, shape, strides, 0);
    }

    private static TensorView View(DeviceBuffer<Half> buffer, DType dtype, long[] shape, long[] strides, long offset)
    {
        TensorView raw = TensorView.FromBuffer(buffer, shape, strides, offset); // checks the reach within the buffer
        return TensorView.FromPointer(raw.Data, dtype, raw.Device, shape, strides);
    }

    private static double RelativeError(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        double difference = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double delta = (double)actual[i] - expected[i];
            difference += delta * delta;
            norm += (double)expected[i] * expected[i];
        }
        return norm == 0 ? Math.Sqrt(difference) : Math.Sqrt(difference / norm);
    }

    // [heads, rows] log-sum-exps within 1e-3 of the CPU backend's, -inf exactly where it has -inf; rows past `total` untouched.
    private static void AssertLseClose(float[] expected, float[] actual, int heads, int rows, int total, string what)
    {
        for (int h = 0; h < heads; h++)
        {
            for (int r = 0; r < rows; r++)
            {
                float want = expected[h * rows + r], got = actual[h * rows + r];
                if (r >= total)
                {
                    Assert.True(BitConverter.SingleToUInt32Bits(got) == 0xFFFFFFFF, $"{what}: lse[{h}][{r}] past total_q was written");
                    continue;
                }
                bool close = float.IsNegativeInfinity(want) ? float.IsNegativeInfinity(got) : Math.Abs(got - want) <= 1e-3f;
                Assert.True(close, $"{what}: lse[{h}][{r}] = {got:R}, CPU backend {want:R}");
            }
        }
    }
}
