using NativeKv.Interop;

namespace NativeKv;

/// <summary>
/// Memory owned by NativeKv on a context's device (256-byte aligned): host memory on the CPU backend, device memory
/// on CUDA. Data moves in and out only by copies; <see cref="Pointer"/> is the raw address for interop. Copies and
/// fills are ordered on the context's stream; <see cref="CopyFrom(ReadOnlySpan{T}, long)"/> and
/// <see cref="CopyTo(Span{T}, long)"/> return once the data has arrived.
/// </summary>
/// <typeparam name="T">The element type.</typeparam>
public sealed unsafe class DeviceBuffer<T> : IDisposable, IDeviceMemoryOwner where T : unmanaged
{
    private DeviceBuffer(Context context, BufferHandle handle, long length)
    {
        Context = context;
        Handle = handle;
        Length = length;
        NativeStatus.Check(NativeMethods.nkv_buffer_data(handle, out nint data));
        NativeStatus.Check(NativeMethods.nkv_buffer_device(handle, out int device));
        Pointer = data;
        Device = (DeviceType)device;
    }

    /// <summary>The context the buffer was allocated from.</summary>
    public Context Context { get; }

    /// <summary>The native handle.</summary>
    public BufferHandle Handle { get; }

    NativeKvHandle IDeviceMemoryOwner.Handle => Handle;

    /// <summary>The number of elements.</summary>
    public long Length { get; }

    /// <summary>The size in bytes.</summary>
    public long SizeInBytes => Length * sizeof(T);

    /// <summary>The address of the first element, for interop; device memory on CUDA, never to be read from C#.</summary>
    public nint Pointer { get; }

    /// <summary>Where the memory lives.</summary>
    public DeviceType Device { get; }

    /// <summary>Allocates an uninitialized buffer of <paramref name="length"/> elements on <paramref name="context"/>'s device.</summary>
    /// <param name="context">The context whose device holds the memory; it stays alive while the buffer does.</param>
    /// <param name="length">The number of elements.</param>
    /// <exception cref="NativeKvOutOfMemoryException">The allocation failed.</exception>
    public static DeviceBuffer<T> Allocate(Context context, long length)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ulong sizeBytes = checked((ulong)length * (ulong)sizeof(T));
        NativeStatus.Check(NativeMethods.nkv_buffer_create(context.Handle, sizeBytes, out nint raw));
        var handle = new BufferHandle(raw, context.Handle);
        try
        {
            return new DeviceBuffer<T>(context, handle, length);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Copies host elements into the buffer, starting at element <paramref name="destinationIndex"/>.</summary>
    /// <param name="source">The elements to copy.</param>
    /// <param name="destinationIndex">The first buffer element written.</param>
    public void CopyFrom(ReadOnlySpan<T> source, long destinationIndex = 0)
    {
        CheckRange(destinationIndex, source.Length, nameof(destinationIndex));
        if (source.IsEmpty)
        {
            return;
        }
        fixed (T* data = source)
        {
            NativeStatus.Check(NativeMethods.nkv_buffer_upload(Handle, ByteOffset(destinationIndex), data, ByteCount(source.Length)));
        }
    }

    /// <summary>Copies buffer elements, starting at <paramref name="sourceIndex"/>, to fill <paramref name="destination"/>.</summary>
    /// <param name="destination">Receives <c>destination.Length</c> elements.</param>
    /// <param name="sourceIndex">The first buffer element read.</param>
    public void CopyTo(Span<T> destination, long sourceIndex = 0)
    {
        CheckRange(sourceIndex, destination.Length, nameof(sourceIndex));
        if (destination.IsEmpty)
        {
            return;
        }
        fixed (T* data = destination)
        {
            NativeStatus.Check(NativeMethods.nkv_buffer_download(Handle, ByteOffset(sourceIndex), data, ByteCount(destination.Length)));
        }
    }

    /// <summary>Copies all of <paramref name="source"/> (a buffer of the same context) to the start of this buffer, stream-ordered.</summary>
    /// <param name="source">The buffer to copy; not longer than this one.</param>
    public void CopyFrom(DeviceBuffer<T> source)
    {
        ArgumentNullException.ThrowIfNull(source);
        CopyFrom(source, 0, 0, source.Length);
    }

    /// <summary>Copies <paramref name="length"/> elements between buffers of the same context, stream-ordered.</summary>
    /// <param name="source">The buffer to read.</param>
    /// <param name="sourceIndex">The first element read from <paramref name="source"/>.</param>
    /// <param name="destinationIndex">The first element written in this buffer.</param>
    /// <param name="length">The number of elements.</param>
    public void CopyFrom(DeviceBuffer<T> source, long sourceIndex, long destinationIndex, long length)
    {
        ArgumentNullException.ThrowIfNull(source);
        source.CheckRange(sourceIndex, length, nameof(sourceIndex));
        CheckRange(destinationIndex, length, nameof(destinationIndex));
        if (length == 0)
        {
            return;
        }
        NativeStatus.Check(NativeMethods.nkv_buffer_copy(Handle, ByteOffset(destinationIndex), source.Handle,
            ByteOffset(sourceIndex), ByteCount(length)));
    }

    /// <summary>Sets every byte of the buffer to <paramref name="value"/>, stream-ordered.</summary>
    /// <param name="value">The byte value.</param>
    public void Fill(byte value)
    {
        if (Length != 0)
        {
            NativeStatus.Check(NativeMethods.nkv_buffer_memset(Handle, 0, value, ByteCount(Length)));
        }
    }

    /// <summary>Sets every byte of the buffer to zero, stream-ordered.</summary>
    public void Clear() => Fill(0);

    /// <summary>Copies the whole buffer to a new array.</summary>
    public T[] ToArray()
    {
        var array = new T[checked((int)Length)];
        CopyTo(array);
        return array;
    }

    /// <summary>A row-major contiguous view of the buffer's first elements with the given shape.</summary>
    /// <param name="shape">The extent of each dimension.</param>
    public TensorView AsTensor(params ReadOnlySpan<long> shape) => TensorView.FromBuffer(this, shape);

    /// <summary>
    /// Frees the memory (the context's handle is released with it). Work still in flight on the stream must not use
    /// the buffer any more: synchronize first.
    /// </summary>
    public void Dispose() => Handle.Dispose();

    /// <inheritdoc />
    public override string ToString() => $"DeviceBuffer<{typeof(T).Name}>({Length}, {Device})";

    private void CheckRange(long index, long count, string paramName)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index, paramName);
        if (count > Length - index)
        {
            throw new ArgumentOutOfRangeException(paramName, index,
                $"Elements {index}..{index + count - 1} are outside the buffer of {Length} elements.");
        }
    }

    private static ulong ByteOffset(long index) => (ulong)index * (ulong)sizeof(T);

    private static ulong ByteCount(long count) => (ulong)count * (ulong)sizeof(T);
}
