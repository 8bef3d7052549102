namespace NativeKv.Tests;

/// <summary>The paged KV cache on CUDA: the same steps as on the CPU backend give the same pages and the same contents.
/// Skipped, visibly, without a GPU.</summary>
public sealed unsafe class PagedKvCacheGpuTests
{
    [Fact]
    public void Steps_forks_and_truncation_on_cuda_match_the_cpu_backend()
    {
        GpuTests.RequireGpu();
        Random random = TestSupport.NewRandom(out int seed);
        const int layers = 2, heads = 4, dim = 64, pageSize = 16;
        var options = new PagedKvCacheOptions(DType.Float16, layers, heads, dim, pageSize, MaxSequences: 4, MaxSequenceLength: 512,
            NumPages: 64);
        using var cpu = Context.Cpu();
        using var cuda = Context.Cuda();
        using var host = new PagedKvCache(cpu, options);
        using var device = new PagedKvCache(cuda, options);

        void Step(int[] sequences, int[] counts)
        {
            host.Append(sequences, counts);
            device.Append(sequences, counts);
            int rows = counts.Sum() * heads * dim;
            for (int layer = 0; layer < layers; layer++)
            {
                Half[] k = TestSupport.ToHalves(TestSupport.RandomFloats(random, rows));
                Half[] v = TestSupport.ToHalves(TestSupport.RandomFloats(random, rows));
                host.Write<Half>(layer, k, v);
                using var kd = DeviceBuffer<Half>.Allocate(cuda, rows);
                using var vd = DeviceBuffer<Half>.Allocate(cuda, rows);
                kd.CopyFrom(k);
                vd.CopyFrom(v);
                device.Write(layer, kd.AsTensor(counts.Sum(), heads, dim), vd.AsTensor(counts.Sum(), heads, dim));
                cuda.Synchronize();
            }
        }

        int a = host.AddSequence(), b = host.AddSequence();
        Assert.Equal((a, b), (device.AddSequence(), device.AddSequence()));
        Step([a, b], [40, 7]);
        Assert.Equal(host.Fork(b), device.Fork(b));
        for (int i = 0; i < 5; i++)
        {
            Step([2, a, b], [1, 2, 3]);  // the fork copies b's shared last page on its first write
        }
        host.Truncate(a, 21);
        device.Truncate(a, 21);
        Step([a], [9]);

        // Read every pool of the device cache back through an identity gather (one prompt of all its rows).
        int poolRows = (int)options.NumPages * pageSize, row = heads * dim;
        using var plan = Prepacker.Plan(cuda, [poolRows]);
        using var copy = DeviceBuffer<Half>.Allocate(cuda, (long)poolRows * row);
        foreach (PagedKvView pool in new[] { PagedKvView.KPool, PagedKvView.VPool })
        {
            for (int layer = 0; layer < layers; layer++)
            {
                TensorView source = device.View(pool, layer);
                plan.Gather(TensorView.FromPointer(source.Data, DType.Float16, DeviceType.Cuda, [poolRows, row]), copy.AsTensor(poolRows, row));
                cuda.Synchronize();
                Half[] actual = copy.ToArray();
                var expected = new ReadOnlySpan<Half>((void*)host.View(pool, layer).Data, poolRows * row);
                foreach (int sequence in new[] { a, b, 2 })
                {
                    int[] pages = host.SequencePages(sequence);
                    Assert.Equal(pages, device.SequencePages(sequence));
                    for (int t = 0; t < host.SequenceLength(sequence); t++)
                    {
                        int slot = pages[t / pageSize] * pageSize + t % pageSize;
                        Assert.True(expected.Slice(slot * row, row).SequenceEqual(actual.AsSpan(slot * row, row)),
                            $"seed {seed}: {pool} layer {layer}, sequence {sequence}, token {t}");
                    }
                }
            }
        }
        Assert.Equal(host.Statistics, device.Statistics);
    }
}
