namespace NativeKv.Tests;

/// <summary>The façade refuses calls that would hand native code memory it must not touch.</summary>
public sealed class ViewSafetyTests
{
    [Fact]
    public void A_view_of_a_disposed_buffer_is_refused()
    {
        using var context = Context.Cpu();
        var input = DeviceBuffer<float>.Allocate(context, 8);
        using var codes = DeviceBuffer<sbyte>.Allocate(context, 8);
        using var scales = DeviceBuffer<float>.Allocate(context, 2);
        TensorView inputView = input.AsTensor(2, 4);
        input.Dispose();
        Assert.Throws<ObjectDisposedException>(() =>
            Quant.Int8Quantize(context, inputView, codes.AsTensor(2, 4), scales.AsTensor(2)));
    }

    [Fact]
    public void Buffers_of_another_context_are_refused()
    {
        using var context = Context.Cpu();
        using var other = Context.Cpu();
        using var input = DeviceBuffer<float>.Allocate(other, 8);
        using var codes = DeviceBuffer<sbyte>.Allocate(context, 8);
        using var scales = DeviceBuffer<float>.Allocate(context, 2);
        var error = Assert.Throws<ArgumentException>(() => Quant.Int8Quantize(context, input, 2, 4, codes, scales));
        Assert.Equal("input", error.ParamName);
    }

    [Fact]
    public void Views_whose_offsets_overflow_are_refused()
    {
        using var context = Context.Cpu();
        using var buffer = DeviceBuffer<float>.Allocate(context, 16);
        Assert.ThrowsAny<Exception>(() => TensorView.FromBuffer(buffer, [2, 1], [1L << 62, 1], elementOffset: 1L << 62));
        Assert.ThrowsAny<Exception>(() => TensorView.FromBuffer(buffer, [2, 1], [1L << 62, 1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => TensorView.FromBuffer(buffer, [0], elementOffset: 17));
    }

    [Fact]
    public void A_narrowed_view_shares_the_memory_and_its_owner()
    {
        using var context = Context.Cpu();
        var input = DeviceBuffer<float>.Allocate(context, 6 * 4);
        using var codes = DeviceBuffer<sbyte>.Allocate(context, 8);
        using var scales = DeviceBuffer<float>.Allocate(context, 2);
        TensorView whole = TensorView.FromBuffer(input, [6, 4]);
        TensorView middle = whole.Narrow(0, 2, 2);
        Assert.Equal(input.Pointer + 2 * 4 * sizeof(float), middle.Data);
        Assert.Equal(new long[] { 2, 4 }, middle.Shape.ToArray());
        Assert.Equal(whole.Strides.ToArray(), middle.Strides.ToArray());
        Assert.Equal(whole.Data + 3 * sizeof(float), whole.Narrow(1, 3, 1).Data);
        Assert.Equal(0, whole.Narrow(0, 6, 0).ElementCount);
        Assert.Throws<ArgumentOutOfRangeException>(() => whole.Narrow(2, 0, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => whole.Narrow(-1, 0, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => whole.Narrow(0, 7, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => whole.Narrow(0, 5, 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => whole.Narrow(0, -1, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => whole.Narrow(0, 0, -1));
        input.Dispose();
        Assert.Throws<ObjectDisposedException>(() => Quant.Int8Quantize(context, middle, codes.AsTensor(2, 4), scales.AsTensor(2)));
    }
}
