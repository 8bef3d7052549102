namespace NativeKv.Tests;

public sealed class ContextAndBufferTests
{
    [Fact]
    public void Cpu_context_reports_its_backend()
    {
        using var context = Context.Cpu();
        Assert.Equal(Backend.Cpu, context.Backend);
        Assert.Equal(0, context.Stream);
        context.Synchronize();
    }

    [Fact]
    public void Auto_picks_cuda_exactly_when_a_device_exists()
    {
        using var context = Context.Create();
        Assert.Equal(Devices.CudaDeviceCount > 0 ? Backend.Cuda : Backend.Cpu, context.Backend);
    }

    [Fact]
    public void Buffer_round_trips_on_the_cpu_backend()
    {
        using var context = Context.Cpu();
        using var buffer = DeviceBuffer<int>.Allocate(context, 1000);
        Assert.Equal(1000, buffer.Length);
        Assert.Equal(4000, buffer.SizeInBytes);
        Assert.Equal(DeviceType.Host, buffer.Device);
        Assert.NotEqual(0, buffer.Pointer);
        Assert.Equal(0, buffer.Pointer % 256);

        int[] data = Enumerable.Range(0, 1000).ToArray();
        buffer.CopyFrom(data);
        Assert.Equal(data, buffer.ToArray());

        buffer.CopyFrom([-1, -2, -3], destinationIndex: 997);
        var tail = new int[4];
        buffer.CopyTo(tail, sourceIndex: 996);
        Assert.Equal([996, -1, -2, -3], tail);

        buffer.Fill(0xFF);
        Assert.All(buffer.ToArray(), value => Assert.Equal(-1, value));
        buffer.Clear();
        Assert.All(buffer.ToArray(), value => Assert.Equal(0, value));
    }

    [Fact]
    public void Zero_length_buffers_work()
    {
        using var context = Context.Cpu();
        using var empty = DeviceBuffer<float>.Allocate(context, 0);
        Assert.Equal(0, empty.Length);
        Assert.Empty(empty.ToArray());
        empty.CopyFrom(ReadOnlySpan<float>.Empty);
        empty.Clear();
        Assert.Equal(0, empty.AsTensor(0, 16).ElementCount);
    }

    [Fact]
    public void Buffer_to_buffer_copy()
    {
        using var context = Context.Cpu();
        using var source = DeviceBuffer<Half>.Allocate(context, 10);
        using var destination = DeviceBuffer<Half>.Allocate(context, 12);
        Half[] values = Enumerable.Range(0, 10).Select(i => (Half)i).ToArray();
        source.CopyFrom(values);
        destination.Clear();
        destination.CopyFrom(source);
        destination.CopyFrom(source, sourceIndex: 8, destinationIndex: 10, length: 2);
        context.Synchronize();
        Assert.Equal([.. values, (Half)8, (Half)9], destination.ToArray());
    }

    [Fact]
    public void Out_of_range_copies_throw_before_touching_the_buffer()
    {
        using var context = Context.Cpu();
        using var buffer = DeviceBuffer<float>.Allocate(context, 4);
        buffer.CopyFrom([1f, 2f, 3f, 4f]);
        Assert.Throws<ArgumentOutOfRangeException>("destinationIndex", () => buffer.CopyFrom(new float[5]));
        Assert.Throws<ArgumentOutOfRangeException>("destinationIndex", () => buffer.CopyFrom(new float[2], 3));
        Assert.Throws<ArgumentOutOfRangeException>("sourceIndex", () => buffer.CopyTo(new float[2], -1));
        using var small = DeviceBuffer<float>.Allocate(context, 2);
        Assert.Throws<ArgumentOutOfRangeException>("destinationIndex", () => small.CopyFrom(buffer));
        Assert.Equal([1f, 2f, 3f, 4f], buffer.ToArray());
    }

    [Fact]
    public void A_buffer_keeps_its_context_alive()
    {
        var context = Context.Cpu();
        using var buffer = DeviceBuffer<byte>.Allocate(context, 16);
        context.Dispose();
        buffer.CopyFrom(new byte[16]);
        Assert.Equal(new byte[16], buffer.ToArray());
        Assert.Throws<ObjectDisposedException>(() => context.Synchronize());
    }

    [Fact]
    public void Disposed_buffers_throw_ObjectDisposedException()
    {
        using var context = Context.Cpu();
        var buffer = DeviceBuffer<float>.Allocate(context, 4);
        buffer.Dispose();
        buffer.Dispose();
        Assert.Throws<ObjectDisposedException>(() => buffer.CopyFrom([1f]));
    }

    [Fact]
    public void Tensor_views_describe_buffers_and_pointers()
    {
        using var context = Context.Cpu();
        using var buffer = DeviceBuffer<BFloat16>.Allocate(context, 24);
        TensorView view = buffer.AsTensor(2, 3, 4);
        Assert.Equal(DType.BFloat16, view.DType);
        Assert.Equal(DeviceType.Host, view.Device);
        Assert.Equal([12L, 4, 1], view.Strides.ToArray());
        Assert.Equal(24, view.ElementCount);

        TensorView transposed = TensorView.FromBuffer(buffer, [4, 6], [1, 4]);
        Assert.Equal(buffer.Pointer, transposed.Data);
        TensorView offset = TensorView.FromBuffer(buffer, [4], elementOffset: 20);
        Assert.Equal(buffer.Pointer + 40, offset.Data);

        Assert.Throws<ArgumentException>(() => TensorView.FromBuffer(buffer, [5], elementOffset: 20));
        Assert.Throws<ArgumentException>(() => buffer.AsTensor(5, 5));
        Assert.Throws<ArgumentException>(() => TensorView.FromBuffer(buffer, [2, 2], [1]));
        Assert.Throws<ArgumentException>(() => buffer.AsTensor(1, 1, 1, 1, 1, 1, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => buffer.AsTensor(-1));
        using var decimals = DeviceBuffer<decimal>.Allocate(context, 1);
        Assert.Throws<ArgumentException>(() => decimals.AsTensor(1));

        TensorView foreign = TensorView.FromPointer(0x1000, DType.Float16, DeviceType.Cuda, [8, 128]);
        Assert.Equal([128L, 1], foreign.Strides.ToArray());
        Assert.Contains("Float16", foreign.ToString());
    }
}
