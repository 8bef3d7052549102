namespace NativeKv.Tests;

/// <summary>The paged KV cache on the CPU backend: steps land in the pages the block table names, forks copy on write, and
/// failures change nothing.</summary>
public sealed unsafe class PagedKvCacheTests
{
    private const int Layers = 2, Heads = 2, Dim = 8;

    private static PagedKvCacheOptions Options(int pageSize, long pages) =>
        new(DType.Float16, Layers, Heads, Dim, pageSize, MaxSequences: 4, MaxSequenceLength: 256, NumPages: pages);

    /// <summary>Appends one step and writes distinct values into every layer: token t of the step gets t + 1000·layer + step (K) and its negation (V).</summary>
    private static void Step(PagedKvCache cache, int[] sequences, int[] counts, int step)
    {
        cache.Append(sequences, counts);
        int tokens = counts.Sum();
        for (int layer = 0; layer < Layers; layer++)
        {
            var k = new Half[tokens * Heads * Dim];
            var v = new Half[k.Length];
            for (int i = 0; i < k.Length; i++)
            {
                k[i] = (Half)(i / (Heads * Dim) + 100 * layer + 10 * step);
                v[i] = -k[i];
            }
            cache.Write<Half>(layer, k, v);
        }
    }

    /// <summary>The K value of token t of a sequence in a layer, read through its pages.</summary>
    private static Half KeyOf(PagedKvCache cache, int sequence, int layer, int token)
    {
        int[] pages = cache.SequencePages(sequence);
        TensorView pool = cache.View(PagedKvView.KPool, layer);
        long slot = (long)pages[token / cache.Options.PageSize] * cache.Options.PageSize + token % cache.Options.PageSize;
        return ((Half*)pool.Data)[slot * Heads * Dim];
    }

    [Fact]
    public void Steps_land_in_the_pages_of_each_sequence()
    {
        using var context = Context.Cpu();
        using var cache = new PagedKvCache(context, Options(pageSize: 8, pages: 32));
        int a = cache.AddSequence(), b = cache.AddSequence();
        Assert.Equal((0, 1), (a, b));
        Step(cache, [a, b], [10, 3], step: 0);
        Step(cache, [b], [1], step: 1);
        Assert.Equal(10, cache.SequenceLength(a));
        Assert.Equal(4, cache.SequenceLength(b));
        Assert.Equal(2, cache.SequencePages(a).Length);
        for (int t = 0; t < 10; t++)
        {
            Assert.Equal((Half)(t + 100), KeyOf(cache, a, layer: 1, t));
        }
        Assert.Equal((Half)(10 + 2), KeyOf(cache, b, layer: 0, 2)); // step 0's tokens of b are 10..12
        Assert.Equal((Half)10, KeyOf(cache, b, layer: 0, 3));       // step 1's only token
        PagedKvCacheStatistics stats = cache.Statistics;
        Assert.Equal(2, stats.Sequences);
        Assert.Equal(14, stats.Tokens);
        Assert.Equal(3, stats.PagesUsed);
        Assert.Equal(1, stats.StepTokens);
        Assert.Equal((8 - 2) + (8 - 4), stats.EmptySlots);  // a: 10 tokens in 2 pages, b: 4 in 1
        Assert.Equal(10.0 / 24, stats.Fragmentation, 12);
        Assert.Equal((ulong)(Layers * 2 * 8 * Heads * Dim * 2), stats.BytesPerPage);
        TensorView table = cache.View(PagedKvView.BlockTable);
        Assert.Equal(new long[] { 4, 32 }, table.Shape.ToArray());
    }

    [Fact]
    public void A_fork_shares_pages_until_it_writes_into_the_last_one()
    {
        using var context = Context.Cpu();
        using var cache = new PagedKvCache(context, Options(pageSize: 8, pages: 8));
        int parent = cache.AddSequence();
        Step(cache, [parent], [12], step: 0);
        int child = cache.Fork(parent);
        Assert.Equal(2, cache.Statistics.SharedPages);
        Assert.Equal(cache.SequencePages(parent), cache.SequencePages(child));
        Step(cache, [child], [2], step: 1);
        Assert.NotEqual(cache.SequencePages(parent)[1], cache.SequencePages(child)[1]);
        Assert.Equal(cache.SequencePages(parent)[0], cache.SequencePages(child)[0]);
        Assert.Equal((Half)11, KeyOf(cache, child, layer: 0, 11)); // copied with the page
        Assert.Equal((Half)10, KeyOf(cache, child, layer: 0, 12)); // the child's own step
        Assert.Equal(12, cache.SequenceLength(parent));
        cache.Truncate(child, 3);
        cache.Free(parent);
        Assert.Equal(1, cache.Statistics.PagesUsed);
        Assert.Equal(0, cache.Statistics.SharedPages);
    }

    [Fact]
    public void Running_out_of_pages_changes_nothing()
    {
        using var context = Context.Cpu();
        using var cache = new PagedKvCache(context, Options(pageSize: 16, pages: 2));
        int a = cache.AddSequence(), b = cache.AddSequence();
        Step(cache, [a], [20], step: 0);
        PagedKvCacheStatistics before = cache.Statistics;
        Assert.Throws<NativeKvOutOfMemoryException>(() => cache.Append([a, b], [1, 1]));
        Assert.Equal(before, cache.Statistics);
        Assert.Equal(0, cache.SequenceLength(b));
        Assert.Throws<NativeKvInvalidArgumentException>(() => cache.Append([a, a], [1, 1]));
        Assert.Throws<NativeKvInvalidArgumentException>(() => cache.Free(3));
        Assert.Throws<ArgumentException>(() => cache.Append([a], [1, 2]));
        Assert.Equal(before, cache.Statistics);
    }

    [Fact]
    public void Bad_options_and_a_disposed_cache_are_reported()
    {
        using var context = Context.Cpu();
        var error = Assert.Throws<NativeKvInvalidArgumentException>(() => new PagedKvCache(context, Options(pageSize: 12, pages: 4)));
        Assert.Contains("page_size", error.Message);
        var budget = new PagedKvCache(context, Options(pageSize: 16, pages: 0) with { ByteBudget = 5UL * Layers * 2 * 16 * Heads * Dim * 2 });
        Assert.Equal(5, budget.Options.NumPages);
        budget.Dispose();
        Assert.Throws<ObjectDisposedException>(() => budget.AddSequence());
    }

    [Fact]
    public void The_readme_example_reports_what_it_says()
    {
        using var context = Context.Cpu();
        using var cache = new PagedKvCache(context, new PagedKvCacheOptions(DType.Float16, NumLayers: 2, NumHeadsKv: 2,
            HeadDim: 8, PageSize: 16, MaxSequences: 8, MaxSequenceLength: 4096, NumPages: 64));
        int prompt = cache.AddSequence();
        cache.Append([prompt], [20]);
        for (int layer = 0; layer < 2; layer++)
        {
            var k = new Half[20 * 2 * 8];
            cache.Write<Half>(layer, k, k);
        }
        int beam = cache.Fork(prompt);
        cache.Append([beam], [1]);
        Assert.Equal((3, 1), (cache.Statistics.PagesUsed, cache.Statistics.SharedPages));
    }

    [Fact]
    public void Decode_over_the_cache_equals_decode_over_contiguous_keys()
    {
        using var context = Context.Cpu();
        const int hq = 4, hkv = 2, d = 64, capacity = 40;
        int[] lengths = [5, 40, 17];
        int batch = lengths.Length, row = hkv * d;
        using var cache = new PagedKvCache(context, new PagedKvCacheOptions(DType.Float16, 1, hkv, d, PageSize: 8, MaxSequences: batch,
            MaxSequenceLength: capacity, NumPages: 32));
        Random random = TestSupport.NewRandom(out int seed);
        Half[] k = TestSupport.ToHalves(TestSupport.RandomFloats(random, batch * capacity * row));
        Half[] v = TestSupport.ToHalves(TestSupport.RandomFloats(random, batch * capacity * row));
        Half[] q = TestSupport.ToHalves(TestSupport.RandomFloats(random, batch * hq * d));
        for (int b = 0; b < batch; b++)
        {
            Assert.Equal(b, cache.AddSequence());
            cache.Append([b], [lengths[b]]);
            cache.Write<Half>(0, k.AsSpan(b * capacity * row, lengths[b] * row), v.AsSpan(b * capacity * row, lengths[b] * row));
        }
        using AttentionPlan plan = Attention.PlanDecode(context, hq, hkv, d, qLen: 1, lengths);
        var expected = new Half[q.Length];
        Attention.Decode(plan, q, k, v, expected);
        var actual = new Half[q.Length];
        fixed (Half* pq = q)
        fixed (Half* po = actual)
        {
            TensorView qView = TensorView.FromPointer((nint)pq, DType.Float16, DeviceType.Host, [batch, 1, hq, d]);
            TensorView oView = TensorView.FromPointer((nint)po, DType.Float16, DeviceType.Host, [batch, 1, hq, d]);
            Attention.Decode(plan, qView, cache, 0, oView);
        }
        Assert.True(expected.AsSpan().SequenceEqual(actual), $"seed {seed}");
    }

    [Fact]
    public void Varlen_over_the_cache_equals_varlen_over_packed_keys()
    {
        // Chunked prefill: each sequence's last queries over all its keys, causal, through the block table.
        using var context = Context.Cpu();
        const int hq = 4, hkv = 2, d = 64;
        int[] lengths = [5, 40, 17], queries = [5, 3, 9];
        int batch = lengths.Length, row = hkv * d;
        int[] cuK = [0, 5, 45, 62], cuQ = [0, 5, 8, 17];
        using var cache = new PagedKvCache(context, new PagedKvCacheOptions(DType.Float16, 1, hkv, d, PageSize: 8, MaxSequences: batch,
            MaxSequenceLength: 40, NumPages: 32));
        Random random = TestSupport.NewRandom(out int seed);
        Half[] k = TestSupport.ToHalves(TestSupport.RandomFloats(random, cuK[batch] * row));
        Half[] v = TestSupport.ToHalves(TestSupport.RandomFloats(random, cuK[batch] * row));
        Half[] q = TestSupport.ToHalves(TestSupport.RandomFloats(random, cuQ[batch] * hq * d));
        for (int b = 0; b < batch; b++)
        {
            Assert.Equal(b, cache.AddSequence());
            cache.Append([b], [lengths[b]]);
            cache.Write<Half>(0, k.AsSpan(cuK[b] * row, lengths[b] * row), v.AsSpan(cuK[b] * row, lengths[b] * row));
        }
        using AttentionPlan plan = Attention.PlanVarlen(context, hq, hkv, d, cuQ, cuK, new AttentionOptions { Causal = true });
        var expected = new Half[q.Length];
        Attention.Varlen(plan, q, k, v, expected);
        var actual = new Half[q.Length];
        fixed (Half* pq = q)
        fixed (Half* po = actual)
        {
            TensorView qView = TensorView.FromPointer((nint)pq, DType.Float16, DeviceType.Host, [cuQ[batch], hq, d]);
            TensorView oView = TensorView.FromPointer((nint)po, DType.Float16, DeviceType.Host, [cuQ[batch], hq, d]);
            Attention.Varlen(plan, qView, cache, 0, oView);
        }
        Assert.True(expected.AsSpan().SequenceEqual(actual), $"seed {seed}");
        Assert.Equal(queries.Sum(), cuQ[batch]);
    }
}
