using System.Runtime.InteropServices;

namespace NativeKv.Interop;

/// <summary>Turns a failed <see cref="NkvStatus"/> into the matching typed exception.</summary>
internal static unsafe class NativeStatus
{
    /// <summary>Throws the <see cref="NativeKvException"/> subclass for <paramref name="status"/> unless it is success.</summary>
    internal static void Check(NkvStatus status)
    {
        if (status != NkvStatus.Success)
        {
            throw CreateException(status);
        }
    }

    internal static NativeKvException CreateException(NkvStatus status)
    {
        // nkv_last_error is per thread and valid until the next call on it, so read it before anything else.
        string message = Marshal.PtrToStringUTF8((nint)NativeMethods.nkv_last_error()) ?? "";
        return status switch
        {
            NkvStatus.InvalidArgument => new NativeKvInvalidArgumentException(message),
            NkvStatus.NotSupported => new NativeKvNotSupportedException(message),
            NkvStatus.NoDevice => new NativeKvNoDeviceException(message),
            NkvStatus.OutOfMemory => new NativeKvOutOfMemoryException(message),
            NkvStatus.DeviceError => new NativeKvDeviceException(message),
            NkvStatus.Internal => new NativeKvInternalException(message),
            _ => new NativeKvException(status, message),
        };
    }

    internal static string StatusName(NkvStatus status) =>
        Marshal.PtrToStringUTF8((nint)NativeMethods.nkv_status_name(status)) ?? status.ToString();
}
