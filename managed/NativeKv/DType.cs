namespace NativeKv;

/// <summary>Element types of tensors (<c>nkv_dtype</c>).</summary>
public enum DType
{
    /// <summary>32-bit IEEE float (<see cref="float"/>).</summary>
    Float32 = 0,

    /// <summary>16-bit IEEE float (<see cref="Half"/>).</summary>
    Float16 = 1,

    /// <summary>bfloat16 (<see cref="NativeKv.BFloat16"/>).</summary>
    BFloat16 = 2,

    /// <summary>Signed 8-bit integer (<see cref="sbyte"/>).</summary>
    Int8 = 3,

    /// <summary>Unsigned 8-bit integer (<see cref="byte"/>).</summary>
    UInt8 = 4,

    /// <summary>Signed 32-bit integer (<see cref="int"/>).</summary>
    Int32 = 5,

    /// <summary>Signed 64-bit integer (<see cref="long"/>).</summary>
    Int64 = 6,

    /// <summary>64-bit IEEE float (<see cref="double"/>).</summary>
    Float64 = 7,
}
