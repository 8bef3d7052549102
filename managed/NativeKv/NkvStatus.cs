namespace NativeKv;

/// <summary>Status codes returned by every NativeKv C function (<c>nkv_status</c>).</summary>
public enum NkvStatus
{
    /// <summary>The call succeeded (<c>NKV_STATUS_SUCCESS</c>).</summary>
    Success = 0,

    /// <summary>A null pointer, wrong dtype, shape mismatch or value out of range (<c>NKV_STATUS_INVALID_ARGUMENT</c>).</summary>
    InvalidArgument = 1,

    /// <summary>A valid request that this build or backend does not implement (<c>NKV_STATUS_NOT_SUPPORTED</c>).</summary>
    NotSupported = 2,

    /// <summary>CUDA was asked for but no usable device exists (<c>NKV_STATUS_NO_DEVICE</c>).</summary>
    NoDevice = 3,

    /// <summary>A host or device allocation failed (<c>NKV_STATUS_OUT_OF_MEMORY</c>).</summary>
    OutOfMemory = 4,

    /// <summary>A CUDA call failed (<c>NKV_STATUS_DEVICE_ERROR</c>).</summary>
    DeviceError = 5,

    /// <summary>A bug in NativeKv (<c>NKV_STATUS_INTERNAL</c>).</summary>
    Internal = 6,
}
