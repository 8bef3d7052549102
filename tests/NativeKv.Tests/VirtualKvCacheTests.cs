using System.Diagnostics;

namespace NativeKv.Tests;

/// <summary>The virtual-memory KV cache on the CPU backend (2 MiB pages): steps land at their slots' rows in both layouts,
/// forks share pages and copy on write, failures change nothing, blocks are mapped ahead, and decode reads the views.</summary>
public sealed unsafe class VirtualKvCacheTests
{
    private const int MaxTokens = 1000;

    /// <summary>2 layers of 2 x 64 float16: a page holds 8192 tokens of one layer's K or V (layer-major), or 2048 tokens (token-major).</summary>
    private static VirtualKvCacheOptions Small(VirtualKvLayout layout) =>
        new(DType.Float16, layout, NumLayers: 2, NumHeadsKv: 2, HeadDim: 64, MaxSlots: 4, MaxTokens);

    /// <summary>4 layers of 8 x 128 float16, token-major: a block (one page) holds 128 tokens, so a few hundred fill pages.</summary>
    private static VirtualKvCacheOptions Wide() =>
        new(DType.Float16, VirtualKvLayout.TokenMajor, NumLayers: 4, NumHeadsKv: 8, HeadDim: 128, MaxSlots: 4, MaxTokens);

    /// <summary>Appends one step and writes distinct values into every layer: token t of the step gets t + 100·layer + 10·step (K) and its negation (V).</summary>
    private static void Step(VirtualKvCache cache, int[] slots, int[] counts, int step)
    {
        cache.Append(slots, counts);
        int tokens = counts.Sum(), row = cache.Options.NumHeadsKv * cache.Options.HeadDim;
        for (int layer = 0; layer < cache.Options.NumLayers; layer++)
        {
            var k = new Half[tokens * row];
            var v = new Half[k.Length];
            for (int i = 0; i < k.Length; i++)
            {
                k[i] = (Half)(i / row + 100 * layer + 10 * step);
                v[i] = -k[i];
            }
            cache.Write<Half>(layer, k, v);
        }
    }

    /// <summary>
    /// The last element of token t's row of a slot in a layer's K or V, read through the strided view: [slot, token, head, d],
    /// or token-major's [slot, block, token in block, head, d].
    /// </summary>
    private static Half Read(VirtualKvCache cache, VirtualKvView which, int slot, int layer, int token)
    {
        TensorView view = cache.View(which, layer);
        ReadOnlySpan<long> shape = view.Shape, strides = view.Strides;
        int rank = shape.Length;
        long tokenOffset = rank == 5 ? token / shape[2] * strides[1] + token % shape[2] * strides[2] : token * strides[1];
        long index = slot * strides[0] + tokenOffset + (shape[rank - 2] - 1) * strides[rank - 2] + (shape[rank - 1] - 1) * strides[rank - 1];
        return ((Half*)view.Data)[index];
    }

    private static Half KeyOf(VirtualKvCache cache, int slot, int layer, int token) => Read(cache, VirtualKvView.K, slot, layer, token);

    [Theory]
    [InlineData(VirtualKvLayout.LayerMajor, 8192)]
    [InlineData(VirtualKvLayout.TokenMajor, 2048)]
    public void Steps_land_at_each_slots_rows_in_both_layouts(VirtualKvLayout layout, int tokensPerBlock)
    {
        using var context = Context.Cpu();
        using var cache = new VirtualKvCache(context, Small(layout));
        int regions = layout == VirtualKvLayout.LayerMajor ? 2 * 2 : 1;
        Assert.Equal(tokensPerBlock, cache.TokensPerBlock);
        Assert.True(cache.RowsPerSlot >= MaxTokens);
        int a = cache.AddSlot(), b = cache.AddSlot();
        Assert.Equal((0, 1), (a, b));
        Step(cache, [a, b], [10, 3], step: 0);
        Step(cache, [b], [1], step: 1);
        Assert.Equal(10, cache.SlotLength(a));
        Assert.Equal(4, cache.SlotLength(b));
        Assert.Equal(MaxTokens, cache.MappedTokens(a)); // one block holds more than a slot's MaxTokens
        for (int t = 0; t < 10; t++)
        {
            Assert.Equal((Half)(t + 100), KeyOf(cache, a, layer: 1, t));
            Assert.Equal((Half)(-(t + 100)), Read(cache, VirtualKvView.V, a, layer: 1, t));
        }
        Assert.Equal((Half)(10 + 2), KeyOf(cache, b, layer: 0, 2)); // step 0's tokens of b are 10..12
        Assert.Equal((Half)10, KeyOf(cache, b, layer: 0, 3));       // step 1's only token

        VirtualKvCacheStatistics stats = cache.Statistics;
        Assert.Equal(2, stats.Slots);
        Assert.Equal(14, stats.Tokens);
        Assert.Equal(1, stats.StepTokens);
        Assert.Equal(2UL << 20, stats.PageBytes);
        Assert.Equal(stats.PageBytes * (ulong)regions, stats.BytesPerBlock);
        Assert.Equal(2 * regions, stats.MappedPages);
        Assert.Equal(stats.PageBytes * (ulong)(2 * regions), stats.BytesMapped);
        Assert.Equal(2 * MaxTokens - 14, stats.EmptyTokenSlots);
        Assert.Equal((2.0 * MaxTokens - 14) / (2 * MaxTokens), stats.Fragmentation, 12);
        Assert.Equal((0L, 0L, 0L), (stats.SharedPages, stats.DeferredBlocks, stats.BlocksMappedAhead));
        Assert.Equal(2, stats.BlocksMappedInline);

        TensorView k = cache.View(VirtualKvView.K, 1);
        long[] kShape = layout == VirtualKvLayout.LayerMajor ? [4, MaxTokens, 2, 64] : [4, 1, tokensPerBlock, 2, 64];
        Assert.Equal(kShape, k.Shape.ToArray());
        TensorView lengths = cache.View(VirtualKvView.SlotLengths);
        Assert.Equal(new[] { 10, 4, 0, 0 }, new ReadOnlySpan<int>((int*)lengths.Data, 4).ToArray());
        TensorView rows = cache.View(VirtualKvView.StepRows);
        Assert.Equal(new long[] { 1 }, rows.Shape.ToArray());
        Assert.Equal(b * cache.RowsPerSlot + 3, ((int*)rows.Data)[0]);
    }

    [Fact]
    public void A_fork_shares_filled_pages_and_copies_before_writing_into_them()
    {
        using var context = Context.Cpu();
        using var cache = new VirtualKvCache(context, Wide());
        Assert.Equal(128, cache.TokensPerBlock);
        int parent = cache.AddSlot();
        Step(cache, [parent], [300], step: 0);
        int child = cache.Fork(parent);
        VirtualKvCacheStatistics stats = cache.Statistics;
        Assert.Equal(2, stats.SharedPages); // tokens 0..255; the page of 256..299 was copied
        Assert.Equal(300, cache.SlotLength(child));
        Assert.Equal(600, stats.Tokens);
        foreach (int t in new[] { 0, 127, 128, 255, 256, 299 })
        {
            Assert.Equal((Half)(t + 300), KeyOf(cache, child, layer: 3, t));
        }
        cache.Truncate(child, 200);
        Step(cache, [child], [1], step: 1); // into the shared second page: the child gets its own copy first
        Assert.Equal(1, cache.Statistics.SharedPages);
        Assert.Equal((Half)(0 + 300 + 10), KeyOf(cache, child, layer: 3, 200));
        Assert.Equal((Half)(200 + 300), KeyOf(cache, parent, layer: 3, 200));
        Assert.Equal((Half)(199 + 300), KeyOf(cache, child, layer: 3, 199)); // copied with the page
        cache.Free(parent);
        Assert.Equal(3, cache.Statistics.DeferredBlocks);
        cache.Trim();
        stats = cache.Statistics;
        Assert.Equal((0L, 0L, 0L), (stats.DeferredBlocks, stats.SharedPages, stats.PooledPages));
        Assert.Equal(2, stats.MappedPages); // the child's 201 tokens, its third block unmapped
    }

    [Fact]
    public void Running_out_of_budget_changes_nothing()
    {
        using var context = Context.Cpu();
        ulong bytesPerBlock;
        using (var probe = new VirtualKvCache(context, Small(VirtualKvLayout.LayerMajor)))
        {
            bytesPerBlock = probe.Statistics.BytesPerBlock;
        }
        using var cache = new VirtualKvCache(context, Small(VirtualKvLayout.LayerMajor) with { ByteBudget = bytesPerBlock });
        Assert.Equal(4, cache.Statistics.BudgetPages);
        int a = cache.AddSlot(), b = cache.AddSlot();
        Step(cache, [a], [10], step: 0);
        VirtualKvCacheStatistics before = cache.Statistics;
        Assert.Throws<NativeKvOutOfMemoryException>(() => cache.Append([a, b], [1, 1])); // b starts a block of its own
        Assert.Equal(before, cache.Statistics);
        Assert.Equal((10, 0), (cache.SlotLength(a), cache.SlotLength(b)));
        Assert.Throws<NativeKvOutOfMemoryException>(() => cache.EnsureCapacity(b, 1));
        Assert.Throws<NativeKvInvalidArgumentException>(() => cache.Append([a, a], [1, 1]));
        Assert.Throws<NativeKvInvalidArgumentException>(() => cache.Append([a], [MaxTokens]));
        Assert.Throws<NativeKvInvalidArgumentException>(() => cache.Free(3));
        Assert.Throws<ArgumentException>(() => cache.Append([a], [1, 2]));
        Assert.Equal(before, cache.Statistics);
        Assert.Equal((Half)109, KeyOf(cache, a, layer: 1, 9));
        cache.Free(a); // its block stays mapped until b needs it
        Assert.Equal(1, cache.Statistics.DeferredBlocks);
        Step(cache, [b], [5], step: 1);
        Assert.Equal((0L, 4L), (cache.Statistics.DeferredBlocks, cache.Statistics.MappedPages));
    }

    [Fact]
    public void Reserve_ahead_maps_blocks_on_a_background_thread()
    {
        using var context = Context.Cpu();
        using var cache = new VirtualKvCache(context, Wide());
        int slot = cache.AddSlot();
        cache.ReserveAhead(slot, 600); // 5 blocks of 128 tokens
        var watch = Stopwatch.StartNew();
        while (cache.MappedTokens(slot) < 600)
        {
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), $"{cache.MappedTokens(slot)} tokens mapped after 5 s");
            Thread.Sleep(1);
        }
        Assert.Equal(5, cache.Statistics.BlocksMappedAhead);
        Step(cache, [slot], [600], step: 0);
        Assert.Equal(0, cache.Statistics.BlocksMappedInline);
        Assert.Equal((Half)(599 + 100), KeyOf(cache, slot, layer: 1, 599));
    }

    [Fact]
    public void Bad_options_foreign_views_and_a_disposed_cache_are_reported()
    {
        using var context = Context.Cpu();
        using var other = Context.Cpu();
        var error = Assert.Throws<NativeKvInvalidArgumentException>(() =>
            new VirtualKvCache(context, Small(VirtualKvLayout.LayerMajor) with { HeadDim = 12 }));
        Assert.Contains("head_dim", error.Message);
        using var buffer = DeviceBuffer<Half>.Allocate(other, 2 * 64);
        var cache = new VirtualKvCache(context, Small(VirtualKvLayout.TokenMajor));
        cache.Append([cache.AddSlot()], [1]);
        TensorView foreign = buffer.AsTensor(1, 2, 64);
        Assert.Equal("k", Assert.Throws<ArgumentException>(() => cache.Write(0, foreign, foreign)).ParamName);
        Assert.Contains("TokenMajor", cache.ToString());
        cache.Dispose();
        Assert.Throws<ObjectDisposedException>(() => cache.AddSlot());
        Assert.Throws<ObjectDisposedException>(() => cache.Statistics);
    }

    [Theory]
    [InlineData(VirtualKvLayout.LayerMajor)]
    [InlineData(VirtualKvLayout.TokenMajor)]
    public void Decode_over_the_cache_equals_decode_over_contiguous_keys(VirtualKvLayout layout)
    {
        using var context = Context.Cpu();
        const int layers = 2, hq = 4, hkv = 2, d = 64, capacity = 300;
        int[] lengths = [5, 300];
        int batch = lengths.Length, row = hkv * d;
        // One slot more than the batch: the views are narrowed to it.
        using var cache = new VirtualKvCache(context, new VirtualKvCacheOptions(DType.Float16, layout, layers, hkv, d, MaxSlots: batch + 1,
            MaxTokens: capacity));
        Random random = TestSupport.NewRandom(out int seed);
        var k = new Half[layers][];
        var v = new Half[layers][];
        for (int layer = 0; layer < layers; layer++)
        {
            k[layer] = TestSupport.ToHalves(TestSupport.RandomFloats(random, batch * capacity * row));
            v[layer] = TestSupport.ToHalves(TestSupport.RandomFloats(random, batch * capacity * row));
        }
        Half[] q = TestSupport.ToHalves(TestSupport.RandomFloats(random, batch * hq * d));
        for (int b = 0; b < batch; b++)
        {
            Assert.Equal(b, cache.AddSlot());
            cache.Append([b], [lengths[b]]);
            for (int layer = 0; layer < layers; layer++)
            {
                int start = b * capacity * row, count = lengths[b] * row;
                cache.Write<Half>(layer, k[layer].AsSpan(start, count), v[layer].AsSpan(start, count));
            }
        }
        using AttentionPlan plan = Attention.PlanDecode(context, hq, hkv, d, qLen: 1, lengths);
        for (int layer = 0; layer < layers; layer++)
        {
            var expected = new Half[q.Length];
            Attention.Decode(plan, q, k[layer], v[layer], expected);
            var actual = new Half[q.Length];
            fixed (Half* pq = q)
            fixed (Half* po = actual)
            {
                TensorView qView = TensorView.FromPointer((nint)pq, DType.Float16, DeviceType.Host, [batch, 1, hq, d]);
                TensorView oView = TensorView.FromPointer((nint)po, DType.Float16, DeviceType.Host, [batch, 1, hq, d]);
                Attention.Decode(plan, qView, cache, layer, oView);
            }
            Assert.True(expected.AsSpan().SequenceEqual(actual), $"layer {layer}, seed {seed}");
        }
    }

    [Theory]
    [InlineData(VirtualKvLayout.LayerMajor)]
    [InlineData(VirtualKvLayout.TokenMajor)]
    public void Chunked_prefill_over_the_cache_equals_varlen_over_packed_keys(VirtualKvLayout layout)
    {
        using var context = Context.Cpu();
        const int hq = 4, hkv = 2, d = 64;
        int[] prompts = [200, 120], chunks = [0, 30];  // slot 1 gets a second chunk after its cached prompt
        int row = hkv * d;
        using var cache = new VirtualKvCache(context, new VirtualKvCacheOptions(DType.Float16, layout, NumLayers: 2, hkv, d, MaxSlots: 3,
            MaxTokens: 400));
        Random random = TestSupport.NewRandom(out int seed);
        var keys = new List<Half>[] { [], [] };
        var values = new List<Half>[] { [], [] };
        void Append(int[] slots, int[] counts)
        {
            cache.Append(slots, counts);
            int tokens = counts.Sum();
            Half[] k = TestSupport.ToHalves(TestSupport.RandomFloats(random, tokens * row));
            Half[] v = TestSupport.ToHalves(TestSupport.RandomFloats(random, tokens * row));
            cache.Write<Half>(1, k, v);
            for (int i = 0, offset = 0; i < slots.Length; offset += counts[i] * row, i++)
            {
                keys[slots[i]].AddRange(k.AsSpan(offset, counts[i] * row));
                values[slots[i]].AddRange(v.AsSpan(offset, counts[i] * row));
            }
        }
        Assert.Equal(0, cache.AddSlot());
        Assert.Equal(1, cache.AddSlot());
        Append([0, 1], prompts);
        Append([1], [chunks[1]]);
        int[] cuK = [0, prompts[0], prompts[0] + prompts[1] + chunks[1]];
        int[] cuQ = [0, prompts[0], prompts[0] + chunks[1]];  // slot 0 prefills its prompt, slot 1 its chunk
        using AttentionPlan plan = Attention.PlanVarlen(context, hq, hkv, d, cuQ, cuK, new AttentionOptions { Causal = true });
        Half[] q = TestSupport.ToHalves(TestSupport.RandomFloats(random, cuQ[^1] * hq * d));
        var expected = new Half[q.Length];
        Attention.Varlen(plan, q, [.. keys[0], .. keys[1]], [.. values[0], .. values[1]], expected);
        var actual = new Half[q.Length];
        fixed (Half* pq = q)
        fixed (Half* po = actual)
        {
            TensorView qView = TensorView.FromPointer((nint)pq, DType.Float16, DeviceType.Host, [cuQ[^1], hq, d]);
            TensorView oView = TensorView.FromPointer((nint)po, DType.Float16, DeviceType.Host, [cuQ[^1], hq, d]);
            Attention.Varlen(plan, qView, cache, layer: 1, oView);
        }
        Assert.True(expected.AsSpan().SequenceEqual(actual), $"seed {seed}");
    }

    [Fact]
    public void The_readme_example_reports_what_it_says()
    {
        using var context = Context.Cpu();
        using var cache = new VirtualKvCache(context, new VirtualKvCacheOptions(DType.Float16, VirtualKvLayout.TokenMajor,
            NumLayers: 32, NumHeadsKv: 8, HeadDim: 128, MaxSlots: 64, MaxTokens: 8192));
        int slot = cache.AddSlot();
        cache.EnsureCapacity(slot, 1000);
        cache.Append([slot], [1000]);
        Assert.Equal((16, 126UL), (cache.TokensPerBlock, cache.Statistics.BytesMapped >> 20));
        cache.ReserveAhead(slot, 1064);
    }
}
