using NativeKv.Interop;

namespace NativeKv;

/// <summary>
/// What the step calls of <see cref="PagedKvCache"/>, <see cref="VirtualKvCache"/> and <see cref="QuantizedKvCache"/> share:
/// their C functions differ only in the cache type, so the managed checks, pinning and leases live here and the native
/// function comes in as a pointer (nothing is allocated per call).
/// </summary>
internal static unsafe class KvCacheSteps
{
    /// <summary>Runs a native append over a step's ids (sequences or slots) and token counts, after checking they pair up.</summary>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    internal static void Append<THandle>(THandle cache, ReadOnlySpan<int> ids, ReadOnlySpan<int> tokenCounts, string idsName,
        delegate*<THandle, int*, int*, int, NkvStatus> append)
    {
        if (ids.Length != tokenCounts.Length)
        {
            throw new ArgumentException(
                $"{idsName} has {ids.Length} entries but {nameof(tokenCounts)} has {tokenCounts.Length}.", nameof(tokenCounts));
        }
        fixed (int* i = ids)
        fixed (int* n = tokenCounts)
        {
            NativeStatus.Check(append(cache, i, n, ids.Length));
        }
    }

    /// <summary>Runs a native write of one layer's step K and V, views of the cache's context, holding their memory for the call.</summary>
    /// <exception cref="ArgumentException">A view's memory belongs to another context.</exception>
    internal static void Write<THandle>(THandle cache, Context context, int layer, TensorView k, TensorView v,
        delegate*<THandle, int, NkvTensor*, NkvTensor*, NkvStatus> write)
    {
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        k.RequireContext(context, nameof(k));
        v.RequireContext(context, nameof(v));
        using MemoryLease leaseK = k.Lease(), leaseV = v.Lease();
        NkvTensor nativeK = k.ToNative(), nativeV = v.ToNative();
        NativeStatus.Check(write(cache, layer, &nativeK, &nativeV));
        GC.KeepAlive(k);
        GC.KeepAlive(v);
    }

    /// <summary>Runs a native write of one layer's step K and V from row-major host spans of a CPU-backend cache.</summary>
    /// <exception cref="InvalidOperationException">The context is not a CPU-backend one.</exception>
    /// <exception cref="ArgumentException">A span is not a whole number of token rows.</exception>
    internal static void WriteHost<THandle, T>(THandle cache, Context context, int numHeadsKv, int headDim, int layer, ReadOnlySpan<T> k,
        ReadOnlySpan<T> v, delegate*<THandle, int, NkvTensor*, NkvTensor*, NkvStatus> write) where T : unmanaged
    {
        if (context.Backend != Backend.Cpu)
        {
            throw new InvalidOperationException(
                $"Host-span overloads need a cache of a CPU-backend context; this one is on {context}. Use the TensorView overload on CUDA.");
        }
        long row = (long)numHeadsKv * headDim;
        if (k.Length % row != 0 || v.Length != k.Length)
        {
            throw new ArgumentException(
                $"k and v must hold the same whole number of token rows of {row} elements; got {k.Length} and {v.Length}.", nameof(k));
        }
        long[] shape = [k.Length / row, numHeadsKv, headDim];
        fixed (T* kData = k)
        fixed (T* vData = v)
        {
            NkvTensor nativeK = TensorView.HostTensor(kData, DTypes.Of<T>(), shape);
            NkvTensor nativeV = TensorView.HostTensor(vData, DTypes.Of<T>(), shape);
            NativeStatus.Check(write(cache, layer, &nativeK, &nativeV));
        }
    }
}
