namespace NativeKv;

/// <summary>
/// A NativeKv C function returned a failure status. The subclasses name the status; <see cref="NativeMessage"/>
/// is the library's message, which names the function, the argument, the expected and the actual value.
/// </summary>
public class NativeKvException : Exception
{
    /// <summary>Creates an exception for <paramref name="status"/> with the native library's message.</summary>
    /// <param name="status">The status the native call returned.</param>
    /// <param name="nativeMessage">The text of <c>nkv_last_error()</c> right after the call.</param>
    public NativeKvException(NkvStatus status, string nativeMessage)
        : base(FormatMessage(status, nativeMessage))
    {
        Status = status;
        NativeMessage = nativeMessage;
    }

    /// <summary>The status the native call returned.</summary>
    public NkvStatus Status { get; }

    /// <summary>The native library's message for the failed call (<c>nkv_last_error()</c>); may be empty.</summary>
    public string NativeMessage { get; }

    private static string FormatMessage(NkvStatus status, string nativeMessage) =>
        string.IsNullOrEmpty(nativeMessage)
            ? $"A NativeKv call failed with status {status} and no message."
            : $"{nativeMessage} (status {status})";
}

/// <summary><see cref="NkvStatus.InvalidArgument"/>: a null pointer, wrong dtype, shape mismatch or value out of range.</summary>
/// <param name="nativeMessage">The native library's message.</param>
public sealed class NativeKvInvalidArgumentException(string nativeMessage)
    : NativeKvException(NkvStatus.InvalidArgument, nativeMessage);

/// <summary><see cref="NkvStatus.NotSupported"/>: a valid request this build or backend does not implement.</summary>
/// <param name="nativeMessage">The native library's message.</param>
public sealed class NativeKvNotSupportedException(string nativeMessage)
    : NativeKvException(NkvStatus.NotSupported, nativeMessage);

/// <summary><see cref="NkvStatus.NoDevice"/>: CUDA was asked for but no usable device exists; the message gives the driver's reason.</summary>
/// <param name="nativeMessage">The native library's message.</param>
public sealed class NativeKvNoDeviceException(string nativeMessage)
    : NativeKvException(NkvStatus.NoDevice, nativeMessage);

/// <summary><see cref="NkvStatus.OutOfMemory"/>: a host or device allocation failed.</summary>
/// <param name="nativeMessage">The native library's message.</param>
public sealed class NativeKvOutOfMemoryException(string nativeMessage)
    : NativeKvException(NkvStatus.OutOfMemory, nativeMessage);

/// <summary><see cref="NkvStatus.DeviceError"/>: a CUDA call failed; the message names the call and CUDA's error.</summary>
/// <param name="nativeMessage">The native library's message.</param>
public sealed class NativeKvDeviceException(string nativeMessage)
    : NativeKvException(NkvStatus.DeviceError, nativeMessage);

/// <summary><see cref="NkvStatus.Internal"/>: a bug in NativeKv; please report the message.</summary>
/// <param name="nativeMessage">The native library's message.</param>
public sealed class NativeKvInternalException(string nativeMessage)
    : NativeKvException(NkvStatus.Internal, nativeMessage);

/// <summary>
/// No usable native NativeKv library was found: none of the probed files exists, loads, or has the ABI version this
/// assembly needs. It derives from <see cref="DllNotFoundException"/> so code that already handles missing native
/// libraries handles this one; the message names the runtime identifier and every path tried with its outcome.
/// </summary>
public sealed class NativeKvLibraryNotFoundException : DllNotFoundException
{
    internal NativeKvLibraryNotFoundException(string runtimeIdentifier, IReadOnlyList<string> attempts)
        : base(FormatMessage(runtimeIdentifier, attempts))
    {
        RuntimeIdentifier = runtimeIdentifier;
        Attempts = attempts;
    }

    /// <summary>The runtime identifier the native library was looked for (for example <c>linux-x64</c>).</summary>
    public string RuntimeIdentifier { get; }

    /// <summary>Each candidate, in probing order, as "path: outcome".</summary>
    public IReadOnlyList<string> Attempts { get; }

    private static string FormatMessage(string runtimeIdentifier, IReadOnlyList<string> attempts) =>
        $"NativeKv could not load its native library for runtime identifier '{runtimeIdentifier}' " +
        $"(ABI version {NativeLibraryInfo.ExpectedAbiVersion}). Tried, in order:{Environment.NewLine}  " +
        string.Join(Environment.NewLine + "  ", attempts) + Environment.NewLine +
        $"Set {Interop.NativeLibraryLoader.EnvironmentVariable} to the library file or to the folder holding it, " +
        "or reference the NativeKv.Runtime package for this platform.";
}
