using System.Runtime.InteropServices;
using NativeKv.Interop;

namespace NativeKv;

/// <summary>The CUDA devices the native library can see.</summary>
public static unsafe class Devices
{
    /// <summary>
    /// The number of CUDA devices; 0 when the library was built without CUDA or the machine has no driver or device
    /// (<see cref="CudaUnavailableReason"/> then says why).
    /// </summary>
    public static int CudaDeviceCount => QueryDeviceCount().Count;

    /// <summary>Why <see cref="CudaDeviceCount"/> is 0, as the native library reports it; empty when devices exist.</summary>
    public static string CudaUnavailableReason => QueryDeviceCount().Reason;

    /// <summary>Describes a CUDA device.</summary>
    /// <param name="ordinal">The device ordinal, 0 to <see cref="CudaDeviceCount"/> - 1.</param>
    /// <exception cref="NativeKvException">The ordinal is out of range or CUDA is unavailable.</exception>
    public static DeviceProperties GetProperties(int ordinal)
    {
        var properties = new NkvDeviceProperties { StructSize = (uint)sizeof(NkvDeviceProperties) };
        NativeStatus.Check(NativeMethods.nkv_cuda_device_properties(ordinal, &properties));
        return new DeviceProperties
        {
            Ordinal = properties.Ordinal,
            Name = ReadName(properties.Name),
            ComputeCapabilityMajor = properties.ComputeCapabilityMajor,
            ComputeCapabilityMinor = properties.ComputeCapabilityMinor,
            MultiprocessorCount = properties.MultiprocessorCount,
            L2CacheBytes = properties.L2CacheBytes,
            TotalMemoryBytes = (long)properties.TotalMemoryBytes,
            SharedMemoryPerBlockOptInBytes = (long)properties.SharedMemoryPerBlockOptinBytes,
            MemoryBusWidthBits = properties.MemoryBusWidthBits,
        };
    }

    private static (int Count, string Reason) QueryDeviceCount()
    {
        NativeStatus.Check(NativeMethods.nkv_cuda_device_count(out int count));
        // On success with 0 devices the header puts the reason in nkv_last_error().
        string reason = count == 0 ? Marshal.PtrToStringUTF8((nint)NativeMethods.nkv_last_error()) ?? "" : "";
        return (count, reason);
    }

    private static string ReadName(byte* name)
    {
        var bytes = new ReadOnlySpan<byte>(name, NkvDeviceProperties.NameLength);
        int end = bytes.IndexOf((byte)0);
        return System.Text.Encoding.UTF8.GetString(end < 0 ? bytes : bytes[..end]);
    }
}

/// <summary>Properties of a CUDA device (<c>nkv_device_properties</c>).</summary>
public sealed record DeviceProperties
{
    /// <summary>The device ordinal.</summary>
    public required int Ordinal { get; init; }

    /// <summary>The device name, for example "NVIDIA H100 80GB HBM3".</summary>
    public required string Name { get; init; }

    /// <summary>The major compute capability, for example 9 on Hopper.</summary>
    public required int ComputeCapabilityMajor { get; init; }

    /// <summary>The minor compute capability, for example 0 on Hopper.</summary>
    public required int ComputeCapabilityMinor { get; init; }

    /// <summary>The number of streaming multiprocessors.</summary>
    public required int MultiprocessorCount { get; init; }

    /// <summary>The L2 cache size in bytes.</summary>
    public required int L2CacheBytes { get; init; }

    /// <summary>The global memory size in bytes.</summary>
    public required long TotalMemoryBytes { get; init; }

    /// <summary>The most shared memory one block can opt in to, in bytes.</summary>
    public required long SharedMemoryPerBlockOptInBytes { get; init; }

    /// <summary>The memory bus width in bits.</summary>
    public required int MemoryBusWidthBits { get; init; }
}
