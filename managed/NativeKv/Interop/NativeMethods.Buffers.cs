using System.Runtime.InteropServices;

namespace NativeKv.Interop;

internal static unsafe partial class NativeMethods
{
    /// <summary><c>nkv_status nkv_buffer_create(nkv_context* context, uint64_t size_bytes, nkv_buffer** out_buffer)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_buffer_create(ContextHandle context, ulong sizeBytes, out nint buffer);

    /// <summary><c>nkv_status nkv_buffer_destroy(nkv_buffer* buffer)</c>; only <see cref="BufferHandle"/> calls it.</summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_buffer_destroy(nint buffer);

    /// <summary><c>nkv_status nkv_buffer_data(const nkv_buffer* buffer, void** out_data)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_buffer_data(BufferHandle buffer, out nint data);

    /// <summary><c>nkv_status nkv_buffer_size(const nkv_buffer* buffer, uint64_t* out_size_bytes)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_buffer_size(BufferHandle buffer, out ulong sizeBytes);

    /// <summary><c>nkv_status nkv_buffer_device(const nkv_buffer* buffer, int32_t* out_device)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_buffer_device(BufferHandle buffer, out int device);

    /// <summary><c>nkv_status nkv_buffer_upload(nkv_buffer*, uint64_t offset_bytes, const void* host_source, uint64_t size_bytes)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_buffer_upload(BufferHandle buffer, ulong offsetBytes, void* hostSource, ulong sizeBytes);

    /// <summary><c>nkv_status nkv_buffer_download(const nkv_buffer*, uint64_t offset_bytes, void* host_destination, uint64_t size_bytes)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_buffer_download(BufferHandle buffer, ulong offsetBytes, void* hostDestination, ulong sizeBytes);

    /// <summary><c>nkv_status nkv_buffer_copy(nkv_buffer* destination, uint64_t, const nkv_buffer* source, uint64_t, uint64_t size_bytes)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_buffer_copy(BufferHandle destination, ulong destinationOffsetBytes, BufferHandle source,
        ulong sourceOffsetBytes, ulong sizeBytes);

    /// <summary><c>nkv_status nkv_buffer_memset(nkv_buffer* buffer, uint64_t offset_bytes, int32_t value, uint64_t size_bytes)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_buffer_memset(BufferHandle buffer, ulong offsetBytes, int value, ulong sizeBytes);
}
