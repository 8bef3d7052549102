using System.Runtime.InteropServices;

namespace NativeKv.Interop;

internal static unsafe partial class NativeMethods
{
    /// <summary><c>const char* nkv_version(void)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial byte* nkv_version();

    /// <summary><c>uint32_t nkv_abi_version(void)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial uint nkv_abi_version();
}
