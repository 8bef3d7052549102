using System.Runtime.InteropServices;

namespace NativeKv.Interop;

/// <summary>Mirror of <c>nkv_context_options</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct NkvContextOptions
{
    public uint StructSize;
    public int Backend;
    public int DeviceOrdinal;
    public int Reserved;
    public void* Stream;
}

internal static unsafe partial class NativeMethods
{
    /// <summary><c>nkv_status nkv_context_create(const nkv_context_options* options, nkv_context** out_context)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_context_create(NkvContextOptions* options, out nint context);

    /// <summary><c>nkv_status nkv_context_destroy(nkv_context* context)</c>; only <see cref="ContextHandle"/> calls it.</summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_context_destroy(nint context);

    /// <summary><c>nkv_status nkv_context_backend(const nkv_context* context, int32_t* out_backend)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_context_backend(ContextHandle context, out int backend);

    /// <summary><c>nkv_status nkv_context_device_ordinal(const nkv_context* context, int32_t* out_ordinal)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_context_device_ordinal(ContextHandle context, out int ordinal);

    /// <summary><c>nkv_status nkv_context_stream(const nkv_context* context, void** out_stream)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_context_stream(ContextHandle context, out nint stream);

    /// <summary><c>nkv_status nkv_context_synchronize(nkv_context* context)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_context_synchronize(ContextHandle context);
}
