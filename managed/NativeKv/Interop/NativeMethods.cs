namespace NativeKv.Interop;

/// <summary>
/// Raw declarations of the C ABI in <c>native/include/nativekv/nativekv.h</c>, one partial file per header
/// section. Method names are the C names so the ABI conformance test and a reader can match them directly.
/// </summary>
internal static partial class NativeMethods
{
    internal const string LibraryName = "nativekv";

    // An explicit static constructor makes the runtime run it before any method of this class, so the resolver
    // is installed before the first P/Invoke here is bound.
    static NativeMethods() => NativeLibraryLoader.Install();
}
