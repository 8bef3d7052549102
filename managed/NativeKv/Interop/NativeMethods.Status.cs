using System.Runtime.InteropServices;

namespace NativeKv.Interop;

internal static unsafe partial class NativeMethods
{
    /// <summary><c>const char* nkv_last_error(void)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial byte* nkv_last_error();

    /// <summary><c>const char* nkv_status_name(nkv_status status)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial byte* nkv_status_name(NkvStatus status);
}
