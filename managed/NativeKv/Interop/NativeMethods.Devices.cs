using System.Runtime.InteropServices;

namespace NativeKv.Interop;

/// <summary>Mirror of <c>nkv_device_properties</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct NkvDeviceProperties
{
    internal const int NameLength = 256;

    public uint StructSize;
    public int Ordinal;
    public fixed byte Name[NameLength];
    public int ComputeCapabilityMajor;
    public int ComputeCapabilityMinor;
    public int MultiprocessorCount;
    public int L2CacheBytes;
    public ulong TotalMemoryBytes;
    public ulong SharedMemoryPerBlockOptinBytes;
    public int MemoryBusWidthBits;
    public int Reserved;
}

internal static unsafe partial class NativeMethods
{
    /// <summary><c>nkv_status nkv_cuda_device_count(int32_t* out_count)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_cuda_device_count(out int count);

    /// <summary><c>nkv_status nkv_cuda_device_properties(int32_t ordinal, nkv_device_properties* out)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_cuda_device_properties(int ordinal, NkvDeviceProperties* properties);
}
