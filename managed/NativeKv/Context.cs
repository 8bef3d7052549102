using NativeKv.Interop;

namespace NativeKv;

/// <summary>
/// A NativeKv context: the backend (CPU or one CUDA device) and the stream every operation on it is ordered on.
/// Operations are asynchronous on CUDA; <see cref="Synchronize"/> waits for them.
/// </summary>
public sealed unsafe class Context : IDisposable
{
    private readonly ContextHandle _handle;
    private bool _disposed;

    private Context(ContextHandle handle)
    {
        _handle = handle;
        NativeStatus.Check(NativeMethods.nkv_context_backend(handle, out int backend));
        NativeStatus.Check(NativeMethods.nkv_context_device_ordinal(handle, out int ordinal));
        NativeStatus.Check(NativeMethods.nkv_context_stream(handle, out nint stream));
        Backend = (Backend)backend;
        DeviceOrdinal = ordinal;
        Stream = stream;
    }

    /// <summary>The backend the context runs on; never <see cref="Backend.Auto"/>, which resolves at creation.</summary>
    public Backend Backend { get; }

    /// <summary>The CUDA device ordinal (as reported by the native library; not meaningful on the CPU backend).</summary>
    public int DeviceOrdinal { get; }

    /// <summary>The <c>cudaStream_t</c> the context runs on, for interop with other CUDA code; 0 on the CPU backend.</summary>
    public nint Stream { get; }

    /// <summary>The native handle, for passing the context to other native code.</summary>
    /// <exception cref="ObjectDisposedException">The context was disposed.</exception>
    public ContextHandle Handle
    {
        get
        {
            // The handle itself stays usable while buffers hold references to it; the Context object does not.
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _handle;
        }
    }

    /// <summary>Creates a context.</summary>
    /// <param name="backend">The backend; <see cref="Backend.Auto"/> picks CUDA when a device is usable, else the CPU.</param>
    /// <param name="deviceOrdinal">The CUDA device to use; ignored on the CPU backend.</param>
    /// <param name="stream">A caller-owned <c>cudaStream_t</c> to run on, or 0 for a stream the context owns.</param>
    /// <exception cref="NativeKvNoDeviceException">CUDA was asked for and no usable device exists.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">An argument is out of range.</exception>
    public static Context Create(Backend backend = Backend.Auto, int deviceOrdinal = 0, nint stream = 0)
    {
        var options = new NkvContextOptions
        {
            StructSize = (uint)sizeof(NkvContextOptions),
            Backend = (int)backend,
            DeviceOrdinal = deviceOrdinal,
            Stream = (void*)stream,
        };
        NativeStatus.Check(NativeMethods.nkv_context_create(&options, out nint raw));
        var handle = new ContextHandle(raw);
        try
        {
            return new Context(handle);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Creates a context on the CPU reference backend.</summary>
    public static Context Cpu() => Create(Backend.Cpu);

    /// <summary>Creates a context on a CUDA device.</summary>
    /// <param name="ordinal">The CUDA device.</param>
    /// <param name="stream">A caller-owned <c>cudaStream_t</c> to run on, or 0 for a stream the context owns.</param>
    /// <exception cref="NativeKvNoDeviceException">No usable CUDA device; the message gives the driver's reason.</exception>
    public static Context Cuda(int ordinal = 0, nint stream = 0) => Create(Backend.Cuda, ordinal, stream);

    /// <summary>Blocks until all work issued on the context's stream is done; reports asynchronous CUDA errors.</summary>
    public void Synchronize() => NativeStatus.Check(NativeMethods.nkv_context_synchronize(Handle));

    /// <summary>
    /// Releases the context once no <see cref="DeviceBuffer{T}"/> allocated from it is alive any more (buffers hold a
    /// reference on it). Destruction waits for the context's outstanding work.
    /// </summary>
    public void Dispose()
    {
        _disposed = true;
        _handle.Dispose();
    }

    /// <inheritdoc />
    public override string ToString() => Backend == Backend.Cuda ? $"Context(Cuda:{DeviceOrdinal})" : $"Context({Backend})";
}
