namespace NativeKv.Tests;

/// <summary>Pack plans on the CPU backend: what the header promises of the plan, its arrays and the moves between layouts.</summary>
public sealed class PrepackerTests
{
    private static readonly int[] Lengths = [5, 3, 8, 2, 6, 1, 7];

    [Fact]
    public void Plan_properties_follow_first_fit_decreasing()
    {
        using var context = Context.Cpu();
        // Longest first into rows of 8: [8], [7, 1], [6, 2], [5, 3]: four full rows.
        using var plan = Prepacker.Plan(context, Lengths);
        Assert.Equal(7, plan.PromptCount);
        Assert.Equal(4, plan.RowCount);
        Assert.Equal(8, plan.RowCapacity);
        Assert.Equal(8, plan.LongestPrompt);
        Assert.Equal(32, plan.TotalTokens);
        Assert.Equal(0, plan.PaddingTokens);
        Assert.Equal(7 * 8 - 32, plan.UnpackedPaddingTokens);
        Assert.Same(context, plan.Context);

        using var wide = Prepacker.Plan(context, Lengths, rowCapacity: 16);
        Assert.Equal(2, wide.RowCount);
        Assert.Equal(16, wide.RowCapacity);
        Assert.Equal(2 * 16 - 32, wide.PaddingTokens);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(8)]
    [InlineData(13)]
    [InlineData(100)]
    public void Index_arrays_are_consistent_and_mutually_inverse(int rowCapacity)
    {
        Random random = TestSupport.NewRandom(out int seed);
        int[] lengths = Enumerable.Range(0, 40).Select(_ => random.Next(1, 9)).ToArray();
        using var context = Context.Cpu();
        using var plan = Prepacker.Plan(context, lengths, rowCapacity);
        int[] callerOffsets = Offsets(lengths);
        int[] cu = plan.CuSeqlens(), positions = plan.PositionIds(), gather = plan.GatherIndex(), scatter = plan.ScatterIndex();
        int[] order = plan.PromptOrder(), rowStarts = plan.RowStarts();
        string what = $"seed {seed}, capacity {rowCapacity}";

        Assert.Equal(plan.PromptCount + 1, cu.Length);
        Assert.Equal(plan.TotalTokens, gather.Length);
        Assert.Equal(plan.RowCount + 1, rowStarts.Length);
        Assert.Equal(Enumerable.Range(0, lengths.Length), order.Order()); // a permutation of the prompts
        Assert.Equal(0, cu[0]);
        Assert.Equal(plan.TotalTokens, cu[^1]);
        for (int t = 0; t < gather.Length; t++)
        {
            Assert.True(scatter[gather[t]] == t, $"{what}: scatter[gather[{t}]] != {t}");
            Assert.True(gather[scatter[t]] == t, $"{what}: gather[scatter[{t}]] != {t}");
        }
        for (int p = 0; p < order.Length; p++)
        {
            int caller = order[p];
            Assert.Equal(lengths[caller], cu[p + 1] - cu[p]);
            for (int i = 0; i < lengths[caller]; i++)
            {
                Assert.Equal(i, positions[cu[p] + i]);                        // positions restart per prompt
                Assert.Equal(callerOffsets[caller] + i, gather[cu[p] + i]);   // tokens keep their order inside a prompt
            }
        }
        Assert.Equal(0, rowStarts[0]);
        Assert.Equal(plan.PromptCount, rowStarts[^1]);
        for (int r = 0; r < plan.RowCount; r++)
        {
            Assert.True(rowStarts[r] < rowStarts[r + 1], $"{what}: row {r} is empty");
            Assert.True(cu[rowStarts[r + 1]] - cu[rowStarts[r]] <= plan.RowCapacity, $"{what}: row {r} overflows");
        }
        Assert.Equal((long)plan.RowCount * plan.RowCapacity - plan.TotalTokens, plan.PaddingTokens);
    }

    [Fact]
    public void Gather_and_scatter_round_trip_host_data()
    {
        Random random = TestSupport.NewRandom(out int seed);
        const int hidden = 3, spare = 2;
        using var context = Context.Cpu();
        using var plan = Prepacker.Plan(context, Lengths);
        int rows = (int)plan.TotalTokens + spare;
        float[] input = TestSupport.RandomFloats(random, rows * hidden);
        int[] gather = plan.GatherIndex();

        float[] packed = Enumerable.Repeat(-1f, rows * hidden).ToArray();
        plan.Gather<float>(input, packed, hidden);
        for (int t = 0; t < plan.TotalTokens; t++)
        {
            Assert.Equal(input.AsSpan(gather[t] * hidden, hidden), packed.AsSpan(t * hidden, hidden));
        }
        Assert.All(packed[^(spare * hidden)..], x => Assert.Equal(-1f, x)); // rows past total_tokens are left alone

        float[] back = Enumerable.Repeat(-1f, rows * hidden).ToArray();
        plan.Scatter<float>(packed, back, hidden);
        Assert.Equal(input[..^(spare * hidden)], back[..^(spare * hidden)]);
        Assert.All(back[^(spare * hidden)..], x => Assert.Equal(-1f, x));

        // Any element type: two-byte halves and one-byte codes move the same way.
        Half[] halves = TestSupport.ToHalves(input);
        var packedHalves = new Half[halves.Length];
        var backHalves = new Half[halves.Length];
        plan.Gather<Half>(halves, packedHalves, hidden);
        plan.Scatter<Half>(packedHalves, backHalves, hidden);
        Assert.Equal(halves[..^(spare * hidden)], backHalves[..^(spare * hidden)]);
        sbyte[] bytes = input.Select(x => (sbyte)(x * 10)).ToArray();
        var packedBytes = new sbyte[bytes.Length];
        plan.Gather<sbyte>(bytes, packedBytes, hidden);
        Assert.Equal(bytes.AsSpan(gather[0] * hidden, hidden), packedBytes.AsSpan(0, hidden));
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
    }

    [Fact]
    public void Padded_batch_holds_each_prompt_then_zeros_and_scatters_back()
    {
        Random random = TestSupport.NewRandom(out _);
        const int hidden = 4;
        using var context = Context.Cpu();
        using var plan = Prepacker.Plan(context, Lengths);
        int[] offsets = Offsets(Lengths);
        float[] input = TestSupport.RandomFloats(random, (int)plan.TotalTokens * hidden);
        float[] padded = Enumerable.Repeat(float.NaN, plan.PromptCount * plan.LongestPrompt * hidden).ToArray();
        plan.GatherPadded<float>(input, padded, hidden);
        for (int p = 0; p < Lengths.Length; p++)
        {
            for (int i = 0; i < plan.LongestPrompt; i++)
            {
                Span<float> slot = padded.AsSpan((p * plan.LongestPrompt + i) * hidden, hidden);
                if (i < Lengths[p])
                {
                    Assert.Equal(input.AsSpan((offsets[p] + i) * hidden, hidden), slot);
                }
                else
                {
                    Assert.All(slot.ToArray(), x => Assert.Equal(0f, x));
                }
            }
        }
        var back = new float[input.Length];
        plan.ScatterPadded<float>(padded, back, hidden);
        Assert.Equal(input, back);
    }

    [Fact]
    public void Array_views_show_the_plans_memory()
    {
        using var context = Context.Cpu();
        using var plan = Prepacker.Plan(context, Lengths);
        foreach (PackArray which in Enum.GetValues<PackArray>())
        {
            TensorView view = plan.ArrayView(which);
            Assert.Equal(DType.Int32, view.DType);
            Assert.Equal(DeviceType.Host, view.Device); // the CPU backend keeps the arrays in host memory
            Assert.Equal(1, view.Rank);
            int[] copy = which switch
            {
                PackArray.CuSeqlens => plan.CuSeqlens(),
                PackArray.PositionIds => plan.PositionIds(),
                PackArray.GatherIndex => plan.GatherIndex(),
                PackArray.ScatterIndex => plan.ScatterIndex(),
                PackArray.PromptOrder => plan.PromptOrder(),
                _ => plan.RowStarts(),
            };
            Assert.Equal(copy.Length, view.Shape[0]);
            unsafe
            {
                Assert.Equal(copy, new ReadOnlySpan<int>((void*)view.Data, copy.Length).ToArray());
            }
        }
    }

    [Fact]
    public void Tensor_view_overloads_move_buffers_and_check_shapes_natively()
    {
        const int hidden = 8;
        using var context = Context.Cpu();
        using var plan = Prepacker.Plan(context, Lengths);
        int tokens = (int)plan.TotalTokens;
        float[] data = Enumerable.Range(0, tokens * hidden).Select(i => (float)i).ToArray();
        using var input = DeviceBuffer<float>.Allocate(context, data.Length);
        using var packed = DeviceBuffer<float>.Allocate(context, data.Length);
        using var output = DeviceBuffer<float>.Allocate(context, data.Length);
        using var padded = DeviceBuffer<float>.Allocate(context, plan.PromptCount * plan.LongestPrompt * hidden);
        input.CopyFrom(data);
        plan.Gather(input.AsTensor(tokens, hidden), packed.AsTensor(tokens, hidden));
        plan.Scatter(packed.AsTensor(tokens, hidden), output.AsTensor(tokens, hidden));
        context.Synchronize();
        Assert.Equal(data, output.ToArray());
        output.Clear();
        plan.GatherPadded(input.AsTensor(tokens, hidden), padded.AsTensor(plan.PromptCount, plan.LongestPrompt, hidden));
        plan.ScatterPadded(padded.AsTensor(plan.PromptCount, plan.LongestPrompt, hidden), output.AsTensor(tokens, hidden));
        context.Synchronize();
        Assert.Equal(data, output.ToArray());

        packed.Fill(0x7F);
        var tooShort = Assert.Throws<NativeKvInvalidArgumentException>(
            () => plan.Gather(input.AsTensor(tokens - 1, hidden), packed.AsTensor(tokens, hidden)));
        Assert.Contains("'input'", tooShort.NativeMessage);
        Assert.Contains("nkv_pack_gather", tooShort.NativeMessage);
        using var halves = DeviceBuffer<Half>.Allocate(context, data.Length);
        var wrongDtype = Assert.Throws<NativeKvInvalidArgumentException>(
            () => plan.Gather(input.AsTensor(tokens, hidden), halves.AsTensor(tokens, hidden)));
        Assert.Contains("'packed'", wrongDtype.NativeMessage);
        var wrongPadded = Assert.Throws<NativeKvInvalidArgumentException>(
            () => plan.GatherPadded(input.AsTensor(tokens, hidden), padded.AsTensor(plan.PromptCount - 1, plan.LongestPrompt, hidden)));
        Assert.Contains("'padded'", wrongPadded.NativeMessage);
        Assert.All(packed.ToArray(), x => Assert.Equal(BitConverter.Int32BitsToSingle(0x7F7F7F7F), x)); // outputs untouched
    }

    [Fact]
    public void Invalid_plans_come_back_as_the_librarys_exceptions()
    {
        using var context = Context.Cpu();
        Assert.Contains("prompt_count", Assert.Throws<NativeKvInvalidArgumentException>(() => Prepacker.Plan(context, [])).NativeMessage);
        var zero = Assert.Throws<NativeKvInvalidArgumentException>(() => Prepacker.Plan(context, [3, 0, 2]));
        Assert.Contains("prompt_lengths", zero.NativeMessage);
        Assert.Contains("nkv_pack_plan_create", zero.NativeMessage);
        Assert.Contains("row_capacity", Assert.Throws<NativeKvInvalidArgumentException>(
            () => Prepacker.Plan(context, [3, 9, 2], rowCapacity: 8)).NativeMessage);
        Assert.Contains("row_capacity", Assert.Throws<NativeKvInvalidArgumentException>(
            () => Prepacker.Plan(context, [3], rowCapacity: -1)).NativeMessage);

        using var plan = Prepacker.Plan(context, [3, 2]);
        Assert.Contains("which", Assert.Throws<NativeKvInvalidArgumentException>(() => plan.ArrayView((PackArray)9)).NativeMessage);
        // What only the façade sees: spans that are not whole rows, and a row length that is not positive.
        Assert.Throws<ArgumentException>("input", () => plan.Gather<float>(new float[11], new float[10], 2));
        Assert.Throws<ArgumentException>("padded", () => plan.GatherPadded<float>(new float[10], new float[11], 2));
        Assert.Throws<ArgumentOutOfRangeException>("hidden", () => plan.Scatter<float>(new float[10], new float[10], 0));
        Assert.Contains("'output'", Assert.Throws<NativeKvInvalidArgumentException>(
            () => plan.Scatter<float>(new float[10], new float[8], 2)).NativeMessage);
    }

    [Fact]
    public void A_disposed_plan_and_views_of_its_arrays_are_refused()
    {
        using var context = Context.Cpu();
        var plan = Prepacker.Plan(context, [4, 4]);
        TensorView positions = plan.ArrayView(PackArray.PositionIds);
        plan.Dispose();
        plan.Dispose();
        Assert.Throws<ObjectDisposedException>(() => plan.CuSeqlens());
        Assert.Throws<ObjectDisposedException>(() => plan.ArrayView(PackArray.GatherIndex));
        Assert.Throws<ObjectDisposedException>(() => plan.Gather<int>(new int[8], new int[8], 1));
        using var other = Prepacker.Plan(context, [4, 4]);
        using var destination = DeviceBuffer<int>.Allocate(context, 8);
        Assert.Throws<ObjectDisposedException>(() => other.Gather(positions, destination.AsTensor(8, 1))); // the array is gone
        Assert.Equal(8, plan.TotalTokens); // properties were read at creation
    }

    [Fact]
    public void Packed_varlen_attention_scattered_back_equals_attention_in_caller_order()
    {
        Random random = TestSupport.NewRandom(out int seed);
        const int heads = 2, d = 64, hidden = heads * d;
        int[] lengths = [9, 3, 14, 6, 1, 8];
        using var context = Context.Cpu();
        using var pack = Prepacker.Plan(context, lengths);
        int tokens = (int)pack.TotalTokens;
        Half[] q = TestSupport.ToHalves(TestSupport.RandomFloats(random, tokens * hidden));
        Half[] k = TestSupport.ToHalves(TestSupport.RandomFloats(random, tokens * hidden));
        Half[] v = TestSupport.ToHalves(TestSupport.RandomFloats(random, tokens * hidden));
        var causal = new AttentionOptions { Causal = true };

        // Caller order: the prompts as given, one causal block each.
        int[] callerCu = Offsets(lengths);
        var expected = new Half[q.Length];
        using (var plan = Attention.PlanVarlen(context, heads, heads, d, callerCu, callerCu, causal))
        {
            Attention.Varlen(plan, q, k, v, expected);
        }

        // Packed order: gather, attend with the pack plan's cu_seqlens, scatter back.
        Half[] packedQ = new Half[q.Length], packedK = new Half[q.Length], packedV = new Half[q.Length], packedO = new Half[q.Length];
        pack.Gather<Half>(q, packedQ, hidden);
        pack.Gather<Half>(k, packedK, hidden);
        pack.Gather<Half>(v, packedV, hidden);
        int[] cu = pack.CuSeqlens();
        using (var plan = Attention.PlanVarlen(context, heads, heads, d, cu, cu, causal))
        {
            Attention.Varlen(plan, packedQ, packedK, packedV, packedO);
        }
        var actual = new Half[q.Length];
        pack.Scatter<Half>(packedO, actual, hidden);
        Assert.True(expected.SequenceEqual(actual), $"seed {seed}: packed attention differs from caller-order attention");
    }

    private static int[] Offsets(int[] lengths)
    {
        var offsets = new int[lengths.Length + 1];
        for (int p = 0; p < lengths.Length; p++) offsets[p + 1] = offsets[p] + lengths[p];
        return offsets;
    }
}
