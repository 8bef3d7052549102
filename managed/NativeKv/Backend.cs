namespace NativeKv;

/// <summary>The backend a <see cref="Context"/> runs on (<c>nkv_backend</c>).</summary>
public enum Backend
{
    /// <summary>CUDA when a device is usable, else CPU; <see cref="Context.Backend"/> tells which was chosen.</summary>
    Auto = 0,

    /// <summary>The CPU reference backend.</summary>
    Cpu = 1,

    /// <summary>The CUDA backend.</summary>
    Cuda = 2,
}
