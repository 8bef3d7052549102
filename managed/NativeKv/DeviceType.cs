namespace NativeKv;

/// <summary>Where the memory of a tensor lives (<c>nkv_device_type</c>).</summary>
public enum DeviceType
{
    /// <summary>Ordinary or pinned host memory.</summary>
    Host = 0,

    /// <summary>Memory of the context's CUDA device.</summary>
    Cuda = 1,
}
