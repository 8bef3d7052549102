namespace NativeKv.Tests;

/// <summary>The CPU backend's attention against <see cref="AttentionReference"/> (float64, from the header), and the façade's contract.</summary>
public sealed class AttentionCpuTests
{
    private const float LsePoison = -12345f;

    // Six sequences, every shape the header talks about:
    //   5 queries over 9 keys (a chunk after a 4-token cache), 0 queries over 3 keys, 7 over 7, 1 over 21 (decode-like),
    //   4 over 2 (the first two queries see no key when causal), 3 over 0 (no keys at all: O = 0, LSE = -inf).
    private static readonly int[] CuQ = [0, 5, 5, 12, 13, 17, 20];
    private static readonly int[] CuK = [0, 9, 12, 19, 40, 42, 42];
    private const int ExtraRows = 2; // rows past the totals: never read (k, v) or written (o, lse)

    public static TheoryData<int, int, int, bool, int, float, float, DType> Cases() => new()
    {
        // heads q, heads kv, head dim, causal, window left, softcap, softmax scale (0: default), dtype
        { 4, 2, 64, true, -1, 0f, 0f, DType.Float16 },
        { 4, 2, 64, false, -1, 0f, 0f, DType.Float16 },
        { 8, 1, 64, true, -1, 0f, 0f, DType.Float16 },
        { 3, 3, 128, true, 4, 0f, 0f, DType.Float16 },
        { 4, 4, 64, false, 2, 0f, 0f, DType.Float16 },
        { 4, 2, 96, true, -1, 5f, 0.2f, DType.Float16 },
        { 6, 2, 96, true, -1, 0f, 0f, DType.BFloat16 },
        { 2, 1, 256, false, -1, 0f, 0f, DType.BFloat16 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Varlen_matches_the_float64_reference(int hq, int hkv, int d, bool causal, int window, float softcap, float scale, DType dtype)
    {
        Random random = TestSupport.NewRandom(out int seed);
        string what = $"seed {seed}, heads {hq}/{hkv}, d {d}, causal {causal}, window {window}, softcap {softcap}, scale {scale}, {dtype}";
        var options = new AttentionOptions
        {
            Causal = causal,
            WindowLeft = window >= 0 ? window : null,
            Softcap = softcap,
            SoftmaxScale = scale != 0f ? scale : null,
        };
        int rowsQ = CuQ[^1] + ExtraRows, rowsK = CuK[^1] + ExtraRows;
        float[] q = Round(dtype, TestSupport.RandomFloats(random, rowsQ * hq * d));
        float[] k = Round(dtype, TestSupport.RandomFloats(random, rowsK * hkv * d));
        float[] v = Round(dtype, TestSupport.RandomFloats(random, rowsK * hkv * d));
        float[] lse = Enumerable.Repeat(LsePoison, hq * rowsQ).ToArray();

        using var context = Context.Cpu();
        using var plan = Attention.PlanVarlen(context, hq, hkv, d, CuQ, CuK, options);
        float[] o = RunVarlen(plan, dtype, q, k, v, lse);

        AttentionReference.Result expected = AttentionReference.Varlen(q, k, v, CuQ, CuK, hq, hkv, d, options);
        int written = CuQ[^1] * hq * d;
        Assert.All(o[..written], x => Assert.True(float.IsFinite(x), what + ": an output element was not written"));
        Assert.All(o[written..], x => Assert.True(float.IsNaN(x), what + ": a row past total_q was written"));
        double error = AttentionReference.RelativeError(expected.O, o);
        Assert.True(error <= Tolerance(dtype), $"{what}: relative error {error:E3}");
        AttentionReference.AssertLseClose(expected, lse, hq, rowsQ, 1e-5, what);
        for (int h = 0; h < hq; h++)
        {
            Assert.All(lse[(h * rowsQ + CuQ[^1])..((h + 1) * rowsQ)], x => Assert.Equal(LsePoison, x));
        }
    }

    [Fact]
    public void Causal_mask_is_aligned_bottom_right_and_the_window_counts_from_the_diagonal()
    {
        // Q = 0 makes every visible score 0, so O is the mean of the visible V rows and LSE = ln(their count).
        // V row j holds j: 3 queries over 5 keys, causal, see keys 0..i+2.
        const int d = 64, lq = 3, lk = 5;
        var q = new Half[lq * d];
        var v = new Half[lk * d];
        for (int j = 0; j < lk; j++) Array.Fill(v, (Half)j, j * d, d);
        var k = TestSupport.ToHalves(TestSupport.RandomFloats(new Random(1), lk * d));
        using var context = Context.Cpu();

        using (var plan = Attention.PlanVarlen(context, 1, 1, d, [0, lq], [0, lk], new AttentionOptions { Causal = true }))
        {
            var o = new Half[lq * d];
            var lse = new float[lq];
            Attention.Varlen(plan, q, k, v, o, lse);
            Assert.Equal([1f, 1.5f, 2f], [(float)o[0], (float)o[d], (float)o[2 * d]]);
            Assert.Equal([MathF.Log(3), MathF.Log(4), MathF.Log(5)], lse, (a, b) => MathF.Abs(a - b) < 1e-6f);
        }

        using (var plan = Attention.PlanVarlen(context, 1, 1, d, [0, lq], [0, lk], new AttentionOptions { Causal = true, WindowLeft = 1 }))
        {
            var o = new Half[lq * d];
            var lse = new float[lq];
            Attention.Varlen(plan, q, k, v, o, lse);
            Assert.Equal([1.5f, 2.5f, 3.5f], [(float)o[0], (float)o[d], (float)o[2 * d]]); // keys i+1 and i+2
            Assert.All(lse, x => Assert.Equal(MathF.Log(2), x, 1e-6f));
        }
    }

    [Fact]
    public void Queries_that_see_no_key_get_zero_output_and_negative_infinite_lse()
    {
        const int hq = 2, d = 64;
        int[] cuQ = [0, 3, 5], cuK = [0, 0, 1]; // 3 queries over no key; 2 queries over 1 key, causal: the first sees nothing
        Half[] q = TestSupport.ToHalves(TestSupport.RandomFloats(new Random(2), 5 * hq * d));
        Half[] kv = TestSupport.ToHalves(TestSupport.RandomFloats(new Random(3), hq * d));
        Half[] o = Enumerable.Repeat(Half.NaN, q.Length).ToArray();
        float[] lse = Enumerable.Repeat(LsePoison, hq * 5).ToArray();
        using var context = Context.Cpu();
        using var plan = Attention.PlanVarlen(context, hq, hq, d, cuQ, cuK, new AttentionOptions { Causal = true });
        Attention.Varlen(plan, q, kv, kv, o, lse);

        Assert.All(o[..(4 * hq * d)], x => Assert.Equal(0, BitConverter.HalfToUInt16Bits(x) & 0x7FFF));
        Assert.Equal(kv, o[(4 * hq * d)..]); // one visible key: O is its V row
        for (int h = 0; h < hq; h++)
        {
            Assert.All(lse[(h * 5)..(h * 5 + 4)], x => Assert.Equal(float.NegativeInfinity, x));
            Assert.True(float.IsFinite(lse[h * 5 + 4]));
        }
    }

    [Fact]
    public void A_batch_without_queries_writes_nothing()
    {
        using var context = Context.Cpu();
        using var plan = Attention.PlanVarlen(context, 2, 2, 64, [0, 0, 0], [0, 4, 4]);
        Assert.Equal(0, plan.Info.TotalQ);
        var o = Enumerable.Repeat(Half.One, 2 * 64).ToArray(); // one spare row
        Attention.Varlen(plan, new Half[2 * 64], new Half[4 * 2 * 64], new Half[4 * 2 * 64], o);
        Assert.All(o, x => Assert.Equal(Half.One, x));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    public void Decode_equals_varlen_on_the_same_data(int numSplits)
    {
        Random random = TestSupport.NewRandom(out int seed);
        const int hq = 4, hkv = 2, d = 64, qLen = 2, capacity = 40;
        int[] seqlensK = [7, 0, 33, 2];
        int batch = seqlensK.Length;
        var options = new AttentionOptions { Causal = true, NumSplits = numSplits };
        Half[] q = TestSupport.ToHalves(TestSupport.RandomFloats(random, batch * qLen * hq * d));
        Half[] kCache = TestSupport.ToHalves(TestSupport.RandomFloats(random, batch * capacity * hkv * d));
        Half[] vCache = TestSupport.ToHalves(TestSupport.RandomFloats(random, batch * capacity * hkv * d));
        var o = new Half[q.Length];
        var lse = new float[batch * hq * qLen];

        using var context = Context.Cpu();
        using (var plan = Attention.PlanDecode(context, hq, hkv, d, qLen, seqlensK, options))
        {
            Assert.Equal(AttentionKind.Decode, plan.Info.Kind);
            Assert.Equal(qLen, plan.Info.QLen);
            Assert.Equal(seqlensK.Sum(), plan.Info.TotalK);
            Attention.Decode(plan, q, kCache, vCache, o, lse);
        }

        // The same work as varlen: each sequence's cached keys packed back to back.
        int[] cuQ = Enumerable.Range(0, batch + 1).Select(b => b * qLen).ToArray();
        int[] cuK = new int[batch + 1];
        for (int b = 0; b < batch; b++) cuK[b + 1] = cuK[b] + seqlensK[b];
        var k = new Half[cuK[^1] * hkv * d];
        var v = new Half[k.Length];
        for (int b = 0; b < batch; b++)
        {
            Array.Copy(kCache, b * capacity * hkv * d, k, cuK[b] * hkv * d, seqlensK[b] * hkv * d);
            Array.Copy(vCache, b * capacity * hkv * d, v, cuK[b] * hkv * d, seqlensK[b] * hkv * d);
        }
        var oVarlen = new Half[q.Length];
        var lseVarlen = new float[hq * batch * qLen];
        using (var plan = Attention.PlanVarlen(context, hq, hkv, d, cuQ, cuK, options with { NumSplits = 0 }))
        {
            Attention.Varlen(plan, q, k, v, oVarlen, lseVarlen);
        }

        Assert.True(o.SequenceEqual(oVarlen), $"seed {seed}: decode and varlen outputs differ");
        for (int b = 0; b < batch; b++)
            for (int h = 0; h < hq; h++)
                for (int t = 0; t < qLen; t++)
                    Assert.Equal(lseVarlen[h * batch * qLen + b * qLen + t], lse[(b * hq + h) * qLen + t]);
        Assert.All(o.AsSpan((qLen * hq * d)..(2 * qLen * hq * d)).ToArray(), x => Assert.Equal(Half.Zero, x)); // sequence 1 has no keys
    }

    [Fact]
    public void Views_of_a_fused_qkv_buffer_match_contiguous_spans()
    {
        Random random = TestSupport.NewRandom(out int seed);
        const int hq = 4, hkv = 2, d = 64, width = hq + 2 * hkv;
        int rows = CuQ[^1];
        int[] cu = CuQ; // self-attention: the same rows are queries and keys
        float[] fused = TestSupport.RandomFloats(random, rows * width * d);
        Half[] q = new Half[rows * hq * d], k = new Half[rows * hkv * d], v = new Half[rows * hkv * d];
        for (int r = 0; r < rows; r++)
        {
            for (int i = 0; i < hq * d; i++) q[r * hq * d + i] = (Half)fused[r * width * d + i];
            for (int i = 0; i < hkv * d; i++) k[r * hkv * d + i] = (Half)fused[r * width * d + hq * d + i];
            for (int i = 0; i < hkv * d; i++) v[r * hkv * d + i] = (Half)fused[r * width * d + (hq + hkv) * d + i];
        }
        using var context = Context.Cpu();
        using var plan = Attention.PlanVarlen(context, hq, hkv, d, cu, cu, new AttentionOptions { Causal = true });
        var expected = new Half[q.Length];
        var expectedLse = new float[hq * rows];
        Attention.Varlen(plan, q, k, v, expected, expectedLse);

        using var qkv = DeviceBuffer<Half>.Allocate(context, fused.Length);
        using var o = DeviceBuffer<Half>.Allocate(context, q.Length);
        using var lse = DeviceBuffer<float>.Allocate(context, hq * rows);
        qkv.CopyFrom(TestSupport.ToHalves(fused));
        long[] strides = [width * d, d, 1];
        Attention.Varlen(plan,
            TensorView.FromBuffer(qkv, [rows, hq, d], strides),
            TensorView.FromBuffer(qkv, [rows, hkv, d], strides, elementOffset: hq * d),
            TensorView.FromBuffer(qkv, [rows, hkv, d], strides, elementOffset: (hq + hkv) * d),
            o.AsTensor(rows, hq, d), lse.AsTensor(hq, rows));
        context.Synchronize();
        Assert.True(expected.SequenceEqual(o.ToArray()), $"seed {seed}: strided views differ from contiguous spans");
        Assert.Equal(expectedLse, lse.ToArray());
    }

    [Fact]
    public void Host_spans_at_every_alignment_give_the_same_result()
    {
        // Managed memory is 8-byte aligned at best and a slice can start anywhere; the CPU backend takes any element-aligned
        // view, so every offset must give the same bits.
        Random random = TestSupport.NewRandom(out int seed);
        const int hq = 2, d = 64, rows = 5, n = rows * hq * d;
        int[] cu = [0, 2, 5];
        Half[] source = TestSupport.ToHalves(TestSupport.RandomFloats(random, 3 * n));
        Half[] memory = GC.AllocateArray<Half>(4 * n + 64, pinned: true);
        using var context = Context.Cpu();
        using var plan = Attention.PlanVarlen(context, hq, hq, d, cu, cu, new AttentionOptions { Causal = true });
        Half[]? first = null;
        for (int shift = 0; shift < 8; shift++) // 2-byte steps through every residue modulo 16 bytes
        {
            Span<Half> q = memory.AsSpan(shift, n), k = memory.AsSpan(n + 8 + shift, n), v = memory.AsSpan(2 * n + 16 + shift, n);
            Span<Half> o = memory.AsSpan(3 * n + 24 + shift, n);
            source.AsSpan(0, n).CopyTo(q);
            source.AsSpan(n, n).CopyTo(k);
            source.AsSpan(2 * n, n).CopyTo(v);
            o.Fill(Half.NaN);
            Attention.Varlen(plan, q, k, v, o);
            first ??= o.ToArray();
            Assert.True(o.SequenceEqual(first), $"seed {seed}: shift {shift} differs");
        }
        Assert.All(first!, x => Assert.False(Half.IsNaN(x)));
    }

    [Fact]
    public void Outputs_overlapping_inputs_are_refused()
    {
        using var context = Context.Cpu();
        using var plan = Attention.PlanVarlen(context, 1, 1, 64, [0, 2], [0, 2]);
        var qkv = new Half[2 * 64];
        var error = Assert.Throws<NativeKvInvalidArgumentException>(() => Attention.Varlen(plan, qkv, qkv, qkv, qkv));
        Assert.Contains("overlap", error.Message);
        var o = new Half[2 * 64];
        error = Assert.Throws<NativeKvInvalidArgumentException>(() => Attention.Varlen(plan, qkv, qkv, qkv, o,
            System.Runtime.InteropServices.MemoryMarshal.Cast<Half, float>(o.AsSpan(0, 4))));
        Assert.Contains("overlap", error.Message);
    }

    [Fact]
    public void Decode_through_a_pointer_table_equals_decode_over_the_batch_layout()
    {
        Random random = TestSupport.NewRandom(out int seed);
        const int hq = 4, hkv = 2, d = 64, qLen = 1, capacity = 24;
        int[] seqlensK = [5, 24, 0];
        int batch = seqlensK.Length;
        Half[] q = TestSupport.ToHalves(TestSupport.RandomFloats(random, batch * qLen * hq * d));
        Half[] kCache = TestSupport.ToHalves(TestSupport.RandomFloats(random, batch * capacity * hkv * d));
        Half[] vCache = TestSupport.ToHalves(TestSupport.RandomFloats(random, batch * capacity * hkv * d));
        using var context = Context.Cpu();
        using var plan = Attention.PlanDecode(context, hq, hkv, d, qLen, seqlensK, new AttentionOptions { Causal = true });
        var expected = new Half[q.Length];
        Attention.Decode(plan, q, kCache, vCache, expected);

        // The same caches in buffers of the context, addressed per sequence, the last sequence first.
        using var k = DeviceBuffer<Half>.Allocate(context, kCache.Length);
        using var v = DeviceBuffer<Half>.Allocate(context, vCache.Length);
        long sequenceElements = (long)capacity * hkv * d;
        var kTable = new long[batch];
        var vTable = new long[batch];
        for (int b = 0; b < batch; b++)
        {
            long at = (batch - 1 - b) * sequenceElements;
            k.CopyFrom(kCache.AsSpan((int)(b * sequenceElements), (int)sequenceElements), at);
            v.CopyFrom(vCache.AsSpan((int)(b * sequenceElements), (int)sequenceElements), at);
            kTable[b] = k.Pointer + (nint)(at * 2);
            vTable[b] = v.Pointer + (nint)(at * 2);
        }
        using var kPointers = DeviceBuffer<long>.Allocate(context, batch);
        using var vPointers = DeviceBuffer<long>.Allocate(context, batch);
        kPointers.CopyFrom(kTable);
        vPointers.CopyFrom(vTable);
        using var qBuffer = DeviceBuffer<Half>.Allocate(context, q.Length);
        using var o = DeviceBuffer<Half>.Allocate(context, q.Length);
        qBuffer.CopyFrom(q);
        Attention.DecodeWithKvPointers(plan, qBuffer.AsTensor(batch, qLen, hq, d), kPointers.AsTensor(batch), vPointers.AsTensor(batch),
            hkv * d, d, o.AsTensor(batch, qLen, hq, d));
        context.Synchronize();
        Assert.True(expected.SequenceEqual(o.ToArray()), $"seed {seed}: pointer-table decode differs from the batch layout");
    }

    [Fact]
    public void Views_of_another_contexts_buffers_are_refused()
    {
        using var planContext = Context.Cpu();
        using var otherContext = Context.Cpu();
        using var plan = Attention.PlanVarlen(planContext, 1, 1, 64, [0, 2], [0, 2]);
        using var mine = DeviceBuffer<Half>.Allocate(planContext, 2 * 64);
        using var theirs = DeviceBuffer<Half>.Allocate(otherContext, 2 * 64);
        TensorView Rows(DeviceBuffer<Half> buffer) => buffer.AsTensor(2, 1, 64);
        var error = Assert.Throws<ArgumentException>("k", () => Attention.Varlen(plan, Rows(mine), Rows(theirs), Rows(mine), Rows(mine)));
        Assert.Contains("belongs to", error.Message);
    }

    [Fact]
    public void Kernel_families_are_a_CUDA_choice()
    {
        using var context = Context.Cpu();
        var error = Assert.Throws<NativeKvNotSupportedException>(() =>
            Attention.PlanVarlen(context, 1, 1, 64, [0, 2], [0, 2], new AttentionOptions { Kernel = AttentionKernel.Sm80 }));
        Assert.Contains("options.kernel", error.Message);
        using var plan = Attention.PlanVarlen(context, 1, 1, 64, [0, 2], [0, 2], new AttentionOptions { Kernel = AttentionKernel.Auto });
        Assert.Equal(AttentionKind.Varlen, plan.Info.Kind);
    }

    [Fact]
    public void Info_describes_the_plan()
    {
        using var context = Context.Cpu();
        using var varlen = Attention.PlanVarlen(context, 8, 2, 128, CuQ, CuK);
        Assert.Equal(new AttentionPlanInfo
        {
            Kind = AttentionKind.Varlen, Batch = 6, NumHeadsQ = 8, NumHeadsKv = 2, HeadDim = 128, QLen = 0, NumSplits = 1,
            TotalQ = 20, TotalK = 42, MaxSeqlenQ = 7, MaxSeqlenK = 21, SoftmaxScale = 1f / MathF.Sqrt(128),
        }, varlen.Info);

        using var decode = Attention.PlanDecode(context, 4, 4, 64, 3, [100, 5], new AttentionOptions { SoftmaxScale = 0.5f, NumSplits = 1 });
        Assert.Equal(AttentionKind.Decode, decode.Info.Kind);
        Assert.Equal((2, 3, 6L, 105L, 3L, 100L, 1, 0.5f),
            (decode.Info.Batch, decode.Info.QLen, decode.Info.TotalQ, decode.Info.TotalK, decode.Info.MaxSeqlenQ, decode.Info.MaxSeqlenK,
             decode.Info.NumSplits, decode.Info.SoftmaxScale));
        Assert.Same(context, decode.Context);
    }

    public static TheoryData<string, bool> BadOptions() => new()
    {
        // a description of the options, whether the plan is a decode plan; the expected name in the message follows
        { "softcap", false }, { "window_left", false }, { "softmax_scale", false }, { "num_splits", false }, { "num_splits", true },
    };

    [Theory]
    [MemberData(nameof(BadOptions))]
    public void Invalid_options_come_back_as_the_librarys_exception_naming_the_option(string field, bool decode)
    {
        AttentionOptions options = field switch
        {
            "softcap" => new AttentionOptions { Softcap = -1f },
            "window_left" => new AttentionOptions { WindowLeft = -2 },
            "softmax_scale" => new AttentionOptions { SoftmaxScale = float.NaN },
            _ => new AttentionOptions { NumSplits = decode ? -1 : 2 }, // varlen plans take no split
        };
        using var context = Context.Cpu();
        var error = Assert.Throws<NativeKvInvalidArgumentException>(() => decode
            ? Attention.PlanDecode(context, 2, 2, 64, 1, [3], options)
            : Attention.PlanVarlen(context, 2, 2, 64, [0, 3], [0, 3], options));
        Assert.Equal(NkvStatus.InvalidArgument, error.Status);
        Assert.Contains("options." + field, error.NativeMessage);
        Assert.Contains(decode ? "nkv_attention_plan_decode" : "nkv_attention_plan_varlen", error.NativeMessage);
        Assert.Contains(error.NativeMessage, error.Message);
    }

    [Fact]
    public void Invalid_plan_arguments_name_the_argument()
    {
        using var context = Context.Cpu();
        var unsupported = Assert.Throws<NativeKvNotSupportedException>(() => Attention.PlanVarlen(context, 2, 2, 80, [0, 1], [0, 1]));
        Assert.Contains("head_dim", unsupported.NativeMessage);
        Assert.Contains("num_heads_q", Assert.Throws<NativeKvInvalidArgumentException>(
            () => Attention.PlanVarlen(context, 6, 4, 64, [0, 1], [0, 1])).NativeMessage);
        Assert.Contains("cu_seqlens_q", Assert.Throws<NativeKvInvalidArgumentException>(
            () => Attention.PlanVarlen(context, 2, 2, 64, [0, 5, 3], [0, 1, 2])).NativeMessage);
        Assert.Contains("cu_seqlens_k", Assert.Throws<NativeKvInvalidArgumentException>(
            () => Attention.PlanVarlen(context, 2, 2, 64, [0, 1], [1, 2])).NativeMessage);
        Assert.Contains("q_len", Assert.Throws<NativeKvInvalidArgumentException>(
            () => Attention.PlanDecode(context, 2, 2, 64, 17, [20])).NativeMessage);
        Assert.Contains("seqlens_k", Assert.Throws<NativeKvInvalidArgumentException>(
            () => Attention.PlanDecode(context, 2, 2, 64, 1, [4, -1])).NativeMessage);

        // What only the façade can see: the lengths of the spans.
        Assert.Throws<ArgumentException>("cuSeqlensQ", () => Attention.PlanVarlen(context, 2, 2, 64, [], []));
        Assert.Throws<ArgumentException>("cuSeqlensK", () => Attention.PlanVarlen(context, 2, 2, 64, [0, 1], [0, 1, 2]));
    }

    [Fact]
    public void Invalid_run_arguments_leave_the_outputs_alone()
    {
        const int hq = 2, d = 64;
        using var context = Context.Cpu();
        using var plan = Attention.PlanVarlen(context, hq, hq, d, [0, 3], [0, 3]);
        var qkv = new Half[3 * hq * d];
        var o = Enumerable.Repeat(Half.One, 2 * hq * d).ToArray(); // one row short
        var lse = Enumerable.Repeat(7f, hq * 3).ToArray();
        var error = Assert.Throws<NativeKvInvalidArgumentException>(() => Attention.Varlen(plan, qkv, qkv, qkv, o, lse));
        Assert.Contains("'o'", error.NativeMessage);
        Assert.All(o, x => Assert.Equal(Half.One, x));
        Assert.All(lse, x => Assert.Equal(7f, x));

        using var decodePlan = Attention.PlanDecode(context, hq, hq, d, 3, [3]);
        var wrongKind = Assert.Throws<NativeKvInvalidArgumentException>(
            () => Attention.Varlen(decodePlan, qkv, qkv, qkv, new Half[qkv.Length]));
        Assert.Contains("plan", wrongKind.NativeMessage);

        Assert.Throws<ArgumentException>("k", () => Attention.Varlen(plan, qkv, qkv.AsSpan(1), qkv, new Half[qkv.Length]));
        Assert.Throws<ArgumentException>("lse", () => Attention.Varlen(plan, qkv, qkv, qkv, new Half[qkv.Length], new float[5]));
    }

    [Fact]
    public void A_disposed_plan_is_refused()
    {
        using var context = Context.Cpu();
        var plan = Attention.PlanVarlen(context, 2, 2, 64, [0, 1], [0, 1]);
        var row = new Half[2 * 64];
        Attention.Varlen(plan, row, row, row, new Half[row.Length]);
        plan.Dispose();
        plan.Dispose(); // a second dispose is harmless
        Assert.Throws<ObjectDisposedException>(() => Attention.Varlen(plan, row, row, row, new Half[row.Length]));
        using var buffer = DeviceBuffer<Half>.Allocate(context, row.Length);
        TensorView view = buffer.AsTensor(1, 2, 64);
        Assert.Throws<ObjectDisposedException>(() => Attention.Varlen(plan, view, view, view, view));
        Assert.Equal(2, plan.Info.NumHeadsQ); // what was read at creation stays readable
    }

    [Fact]
    public void A_plan_keeps_its_context_alive_but_a_disposed_context_makes_no_plan()
    {
        var context = Context.Cpu();
        using var plan = Attention.PlanDecode(context, 2, 1, 64, 1, [2]);
        context.Dispose();
        var o = new Half[2 * 64];
        Half[] q = Enumerable.Repeat(Half.One, 2 * 64).ToArray(), kv = Enumerable.Repeat(Half.One, 2 * 64).ToArray();
        Attention.Decode(plan, q, kv, kv, o);
        Assert.All(o, x => Assert.Equal(Half.One, x));
        Assert.Throws<ObjectDisposedException>(() => Attention.PlanDecode(context, 2, 1, 64, 1, [2]));
    }

    private static float[] RunVarlen(AttentionPlan plan, DType dtype, float[] q, float[] k, float[] v, float[] lse)
    {
        if (dtype == DType.Float16)
        {
            Half[] o = Enumerable.Repeat(Half.NaN, q.Length).ToArray();
            Attention.Varlen(plan, TestSupport.ToHalves(q), TestSupport.ToHalves(k), TestSupport.ToHalves(v), o, lse);
            return Array.ConvertAll(o, x => (float)x);
        }
        BFloat16[] ob = Enumerable.Repeat(BFloat16.NaN, q.Length).ToArray();
        Attention.Varlen(plan, TestSupport.ToBFloat16s(q), TestSupport.ToBFloat16s(k), TestSupport.ToBFloat16s(v), ob, lse);
        return Array.ConvertAll(ob, x => (float)x);
    }

    internal static float[] Round(DType dtype, float[] values) => dtype switch
    {
        DType.Float16 => values.Select(x => (float)(Half)x).ToArray(),
        DType.BFloat16 => values.Select(x => (float)(BFloat16)x).ToArray(),
        _ => values,
    };

    internal static double Tolerance(DType dtype) => dtype == DType.BFloat16 ? 8e-3 : 1e-3;
}
