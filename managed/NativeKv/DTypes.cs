namespace NativeKv;

/// <summary>The <see cref="DType"/> of managed element types.</summary>
public static class DTypes
{
    /// <summary>The dtype whose elements are <typeparamref name="T"/>.</summary>
    /// <exception cref="ArgumentException"><typeparamref name="T"/> is not float, Half, BFloat16, sbyte, byte, int, long or double.</exception>
    public static DType Of<T>() where T : unmanaged =>
        typeof(T) == typeof(float) ? DType.Float32
        : typeof(T) == typeof(Half) ? DType.Float16
        : typeof(T) == typeof(BFloat16) ? DType.BFloat16
        : typeof(T) == typeof(sbyte) ? DType.Int8
        : typeof(T) == typeof(byte) ? DType.UInt8
        : typeof(T) == typeof(int) ? DType.Int32
        : typeof(T) == typeof(long) ? DType.Int64
        : typeof(T) == typeof(double) ? DType.Float64
        : throw new ArgumentException($"{typeof(T)} has no NativeKv dtype.", nameof(T));

    /// <summary>The size of one element of <paramref name="dtype"/> in bytes.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="dtype"/> is not a defined value.</exception>
    public static int SizeOf(DType dtype) => dtype switch
    {
        DType.Float32 or DType.Int32 => 4,
        DType.Float16 or DType.BFloat16 => 2,
        DType.Int8 or DType.UInt8 => 1,
        DType.Int64 or DType.Float64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "Not a NativeKv dtype."),
    };
}
