namespace NativeKv.Tests;

/// <summary>Pack plans on CUDA: the same plan as the CPU backend's, and moves that copy exactly. Skipped, visibly, without a GPU.</summary>
public sealed class PrepackerGpuTests
{
    [Theory]
    [InlineData(1, 0, 1)]
    [InlineData(37, 0, 4096)]
    [InlineData(300, 2048, 129)]
    [InlineData(1000, 0, 64)]
    public void Gather_and_scatter_on_cuda_match_the_cpu_backend(int prompts, int rowCapacity, int hidden)
    {
        GpuTests.RequireGpu();
        Random random = TestSupport.NewRandom(out int seed);
        string what = $"seed {seed}, {prompts} prompts, capacity {rowCapacity}, hidden {hidden}";
        int[] lengths = Enumerable.Range(0, prompts).Select(_ => random.Next(1, 700)).ToArray();
        using var cpu = Context.Cpu();
        using var cpuPlan = Prepacker.Plan(cpu, lengths, rowCapacity);
        using var context = Context.Cuda();
        using var plan = Prepacker.Plan(context, lengths, rowCapacity);

        Assert.Equal((cpuPlan.RowCount, cpuPlan.PaddingTokens), (plan.RowCount, plan.PaddingTokens));
        Assert.Equal(cpuPlan.GatherIndex(), plan.GatherIndex());
        Assert.Equal(cpuPlan.CuSeqlens(), plan.CuSeqlens());
        TensorView positions = plan.ArrayView(PackArray.PositionIds);
        Assert.Equal(DeviceType.Cuda, positions.Device);
        Assert.Equal(plan.TotalTokens, positions.Shape[0]);

        int tokens = (int)plan.TotalTokens, rows = tokens + 3;
        Half[] input = TestSupport.ToHalves(TestSupport.RandomFloats(random, rows * hidden));
        var expectedPacked = new Half[input.Length];
        var expectedPadded = new Half[plan.PromptCount * plan.LongestPrompt * hidden];
        cpuPlan.Gather<Half>(input, expectedPacked, hidden);
        cpuPlan.GatherPadded<Half>(input, expectedPadded, hidden);

        using var deviceInput = DeviceBuffer<Half>.Allocate(context, input.Length);
        using var packed = DeviceBuffer<Half>.Allocate(context, input.Length);
        using var output = DeviceBuffer<Half>.Allocate(context, input.Length);
        using var padded = DeviceBuffer<Half>.Allocate(context, expectedPadded.Length);
        deviceInput.CopyFrom(input);
        packed.Fill(0xFF);
        output.Fill(0xFF);
        padded.Fill(0xFF);
        plan.Gather(deviceInput.AsTensor(rows, hidden), packed.AsTensor(rows, hidden));
        plan.GatherPadded(deviceInput.AsTensor(rows, hidden), padded.AsTensor(plan.PromptCount, plan.LongestPrompt, hidden));
        context.Synchronize();
        Half[] actualPacked = packed.ToArray();
        Assert.True(expectedPacked.AsSpan(0, tokens * hidden).SequenceEqual(actualPacked.AsSpan(0, tokens * hidden)), what + ": packed");
        Assert.All(actualPacked[(tokens * hidden)..], x => Assert.Equal(0xFFFF, BitConverter.HalfToUInt16Bits(x))); // rows past the tokens
        Assert.True(expectedPadded.AsSpan().SequenceEqual(padded.ToArray()), what + ": padded");

        plan.Scatter(packed.AsTensor(rows, hidden), output.AsTensor(rows, hidden));
        context.Synchronize();
        Assert.True(input.AsSpan(0, tokens * hidden).SequenceEqual(output.ToArray().AsSpan(0, tokens * hidden)), what + ": scatter");
        output.Fill(0xFF);
        plan.ScatterPadded(padded.AsTensor(plan.PromptCount, plan.LongestPrompt, hidden), output.AsTensor(rows, hidden));
        context.Synchronize();
        Assert.True(input.AsSpan(0, tokens * hidden).SequenceEqual(output.ToArray().AsSpan(0, tokens * hidden)), what + ": scatter padded");
    }

    [Fact]
    public void Host_span_overloads_refuse_a_cuda_plan()
    {
        GpuTests.RequireGpu();
        using var context = Context.Cuda();
        using var plan = Prepacker.Plan(context, [2, 1]);
        Assert.Throws<InvalidOperationException>(() => plan.Gather<float>(new float[3], new float[3], 1));
        Assert.Throws<InvalidOperationException>(() => plan.ScatterPadded<float>(new float[4], new float[3], 1));
    }
}
