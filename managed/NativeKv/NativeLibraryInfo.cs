using System.Runtime.InteropServices;
using NativeKv.Interop;

namespace NativeKv;

/// <summary>Versions of the managed and native halves of NativeKv.</summary>
public static unsafe class NativeLibraryInfo
{
    /// <summary>
    /// The C ABI version (<c>NKV_ABI_VERSION</c>) this assembly was written against. A native library reporting a
    /// different <c>nkv_abi_version()</c> is refused at load time.
    /// </summary>
    public const uint ExpectedAbiVersion = 1;

    /// <summary>The native library's version, "major.minor.patch" (<c>nkv_version()</c>).</summary>
    public static string Version => Marshal.PtrToStringUTF8((nint)NativeMethods.nkv_version()) ?? "";

    /// <summary>The native library's ABI version (<c>nkv_abi_version()</c>); equal to <see cref="ExpectedAbiVersion"/> once loaded.</summary>
    public static uint AbiVersion => NativeMethods.nkv_abi_version();

    /// <summary>The file the native library was loaded from, or its bare name when the system loader found it.</summary>
    public static string LibraryPath
    {
        get
        {
            _ = NativeMethods.nkv_abi_version(); // makes the runtime resolve (load) the library
            return NativeLibraryLoader.LoadedPath;
        }
    }
}
