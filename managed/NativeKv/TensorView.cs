using NativeKv.Interop;

namespace NativeKv;

/// <summary>
/// Describes a tensor in memory NativeKv does not own for the call: a data pointer, a dtype, a device, a shape and
/// strides in elements (row-major contiguous unless given). Build one over a <see cref="DeviceBuffer{T}"/>, or over a
/// raw pointer from other CUDA code (TorchSharp's <c>data_ptr</c>, ...). A view over a buffer keeps the buffer
/// reachable, but does not stop it from being disposed; an operation using the view holds the buffer until the call
/// returns, and refuses a view whose buffer is already disposed.
/// </summary>
public sealed unsafe class TensorView
{
    /// <summary>The most dimensions a tensor can have (<c>NKV_MAX_DIMS</c>).</summary>
    public const int MaxRank = NkvTensor.MaxDims;

    private readonly long[] _shape;
    private readonly long[] _strides;
    // Keeps a DeviceBuffer reachable (so its finalizer cannot free the memory) while a view of it is.
    private readonly object? _owner;

    private TensorView(nint data, DType dtype, DeviceType device, ReadOnlySpan<long> shape, ReadOnlySpan<long> strides, object? owner)
    {
        if (shape.Length > MaxRank)
        {
            throw new ArgumentException($"A tensor has at most {MaxRank} dimensions; got {shape.Length}.", nameof(shape));
        }
        if (!strides.IsEmpty && strides.Length != shape.Length)
        {
            throw new ArgumentException($"Expected {shape.Length} strides (one per dimension); got {strides.Length}.", nameof(strides));
        }
        foreach (long extent in shape)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(extent, nameof(shape));
        }
        Data = data;
        DType = dtype;
        Device = device;
        _shape = shape.ToArray();
        _strides = strides.IsEmpty ? ContiguousStrides(shape) : strides.ToArray();
        _owner = owner;
    }

    /// <summary>The address of element [0, 0, ...].</summary>
    public nint Data { get; }

    /// <summary>The element type.</summary>
    public DType DType { get; }

    /// <summary>Where the memory lives.</summary>
    public DeviceType Device { get; }

    /// <summary>The number of dimensions.</summary>
    public int Rank => _shape.Length;

    /// <summary>The extent of each dimension.</summary>
    public ReadOnlySpan<long> Shape => _shape;

    /// <summary>The distance between neighbours along each dimension, in elements.</summary>
    public ReadOnlySpan<long> Strides => _strides;

    /// <summary>The number of elements (the product of <see cref="Shape"/>).</summary>
    public long ElementCount
    {
        get
        {
            long count = 1;
            foreach (long extent in _shape)
            {
                count = checked(count * extent);
            }
            return count;
        }
    }

    /// <summary>A view of <paramref name="buffer"/>'s memory.</summary>
    /// <param name="buffer">The buffer holding the elements; its element type gives the dtype.</param>
    /// <param name="shape">The extent of each dimension (at most <see cref="MaxRank"/>).</param>
    /// <param name="strides">Strides in elements, one per dimension; empty for row-major contiguous.</param>
    /// <param name="elementOffset">The index in the buffer of element [0, 0, ...].</param>
    /// <exception cref="ArgumentException">The view reaches outside the buffer, or the arguments are malformed.</exception>
    public static TensorView FromBuffer<T>(DeviceBuffer<T> buffer, ReadOnlySpan<long> shape, ReadOnlySpan<long> strides = default,
        long elementOffset = 0) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(buffer);
        ArgumentOutOfRangeException.ThrowIfNegative(elementOffset);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(elementOffset, buffer.Length);
        var view = new TensorView(buffer.Pointer + (nint)checked(elementOffset * sizeof(T)), DTypes.Of<T>(), buffer.Device, shape,
            strides, buffer);
        view.CheckWithin(elementOffset, buffer.Length);
        return view;
    }

    /// <summary>A view of memory owned by someone else, such as a tensor of another CUDA library.</summary>
    /// <param name="data">The address of element [0, 0, ...]; the caller keeps the memory alive while NativeKv uses it.</param>
    /// <param name="dtype">The element type.</param>
    /// <param name="device">Where the memory lives; it must be the device of the context the view is used with.</param>
    /// <param name="shape">The extent of each dimension (at most <see cref="MaxRank"/>).</param>
    /// <param name="strides">Strides in elements, one per dimension; empty for row-major contiguous.</param>
    public static TensorView FromPointer(nint data, DType dtype, DeviceType device, ReadOnlySpan<long> shape,
        ReadOnlySpan<long> strides = default) =>
        new(data, dtype, device, shape, strides, owner: null);

    /// <summary>A view of memory that <paramref name="owner"/> frees when it is released, as the native library described it.</summary>
    internal static TensorView FromNative(NkvTensor tensor, IDeviceMemoryOwner owner)
    {
        var shape = new long[tensor.Ndim];
        var strides = new long[tensor.Ndim];
        for (int i = 0; i < tensor.Ndim; i++)
        {
            shape[i] = tensor.Shape[i];
            strides[i] = tensor.Strides[i];
        }
        return new TensorView((nint)tensor.Data, (DType)tensor.Dtype, (DeviceType)tensor.Device, shape, strides, owner);
    }

    /// <summary>
    /// The indices <paramref name="start"/> .. <paramref name="start"/> + <paramref name="length"/> - 1 of one dimension
    /// (PyTorch's <c>narrow</c>): a view of the same memory, with the same dtype, device, strides and owner (a view of a
    /// buffer or a cache stays one), whose data starts at index <paramref name="start"/> of that dimension.
    /// </summary>
    /// <param name="dimension">0 .. <see cref="Rank"/> - 1.</param>
    /// <param name="start">The first index kept, 0 .. Shape[dimension].</param>
    /// <param name="length">The number of indices kept, 0 .. Shape[dimension] - <paramref name="start"/>.</param>
    /// <exception cref="ArgumentOutOfRangeException">The dimension, start or length is out of range.</exception>
    public TensorView Narrow(int dimension, long start, long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(dimension);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(dimension, Rank);
        ArgumentOutOfRangeException.ThrowIfNegative(start);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(start, _shape[dimension]);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, _shape[dimension] - start);
        var shape = (long[])_shape.Clone();
        shape[dimension] = length;
        nint data = Data + (nint)checked(start * _strides[dimension] * DTypes.SizeOf(DType));
        return new TensorView(data, DType, Device, shape, _strides, _owner);
    }

    /// <inheritdoc />
    public override string ToString() =>
        $"TensorView({DType}, {Device}, shape [{string.Join(", ", _shape)}], strides [{string.Join(", ", _strides)}])";

    /// <summary>
    /// Refuses a view of NativeKv-owned memory of another context: a tensor carries no device ordinal, so the native
    /// library could not tell a buffer of device 1 from one of device 0. Views made with <see cref="FromPointer"/> are the
    /// caller's to match.
    /// </summary>
    internal void RequireContext(Context context, string paramName)
    {
        if (_owner is IDeviceMemoryOwner owner && !ReferenceEquals(owner.Context, context))
        {
            throw new ArgumentException($"The view's memory belongs to {owner.Context}, but the operation runs on {context}.", paramName);
        }
    }

    /// <summary>
    /// Holds the memory behind the view for the length of a native call: a buffer disposed by another thread meanwhile
    /// is freed only when the lease ends. Throws <see cref="ObjectDisposedException"/> when the memory is already gone.
    /// </summary>
    internal MemoryLease Lease() => new(_owner is IDeviceMemoryOwner owner ? owner.Handle : null);

    internal NkvTensor ToNative()
    {
        // A view outlives nothing: passing the memory of a disposed buffer to native code would be a use-after-free.
        if (_owner is IDeviceMemoryOwner owner)
        {
            ObjectDisposedException.ThrowIf(owner.Handle.IsClosed, owner);
        }
        var tensor = new NkvTensor { Data = (void*)Data, Dtype = (int)DType, Device = (int)Device, Ndim = Rank };
        for (int i = 0; i < Rank; i++)
        {
            tensor.Shape[i] = _shape[i];
            tensor.Strides[i] = _strides[i];
        }
        return tensor;
    }

    /// <summary>A contiguous host tensor over pinned memory, for the span overloads.</summary>
    internal static NkvTensor HostTensor(void* data, DType dtype, ReadOnlySpan<long> shape)
    {
        var tensor = new NkvTensor { Data = data, Dtype = (int)dtype, Device = (int)DeviceType.Host, Ndim = shape.Length };
        long stride = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            tensor.Shape[i] = shape[i];
            tensor.Strides[i] = stride;
            stride *= shape[i];
        }
        return tensor;
    }

    private static long[] ContiguousStrides(ReadOnlySpan<long> shape)
    {
        var strides = new long[shape.Length];
        long stride = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            strides[i] = stride;
            stride = checked(stride * Math.Max(shape[i], 1));
        }
        return strides;
    }

    private void CheckWithin(long elementOffset, long bufferLength)
    {
        if (ElementCount == 0)
        {
            return;
        }
        long lowest = elementOffset, highest = elementOffset;
        for (int i = 0; i < Rank; i++)
        {
            long reach = checked((_shape[i] - 1) * _strides[i]);
            if (reach < 0) lowest = checked(lowest + reach); else highest = checked(highest + reach);
        }
        if (lowest < 0 || highest >= bufferLength)
        {
            throw new ArgumentException(
                $"The view {this} at element offset {elementOffset} reaches elements {lowest}..{highest}, outside the buffer of {bufferLength} elements.");
        }
    }
}

/// <summary>Memory a <see cref="TensorView"/> can be built over; lets a view check that the memory still exists.</summary>
internal interface IDeviceMemoryOwner
{
    /// <summary>The native object (a buffer, a packing plan) whose release frees the memory.</summary>
    NativeKvHandle Handle { get; }

    /// <summary>The context whose device holds the memory.</summary>
    Context Context { get; }
}

/// <summary>A reference on the native object behind a view's memory, released on dispose (<see cref="TensorView.Lease"/>).</summary>
internal readonly struct MemoryLease : IDisposable
{
    private readonly NativeKvHandle? _handle;

    internal MemoryLease(NativeKvHandle? handle)
    {
        if (handle is not null)
        {
            bool added = false;
            handle.DangerousAddRef(ref added); // throws ObjectDisposedException for a released handle
        }
        _handle = handle;
    }

    public void Dispose() => _handle?.DangerousRelease();
}
