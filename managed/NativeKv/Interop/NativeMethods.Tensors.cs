using System.Runtime.InteropServices;

namespace NativeKv.Interop;

/// <summary>Mirror of <c>nkv_tensor</c>: a view of caller-owned memory, strides in elements.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct NkvTensor
{
    internal const int MaxDims = 6; // NKV_MAX_DIMS

    public void* Data;
    public int Dtype;
    public int Device;
    public int Ndim;
    public int Reserved;
    public fixed long Shape[MaxDims];
    public fixed long Strides[MaxDims];
}

internal static unsafe partial class NativeMethods
{
    /// <summary><c>size_t nkv_dtype_size(int32_t dtype)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial nuint nkv_dtype_size(int dtype);
}
