using System.Runtime.InteropServices;
using NativeKv.Interop;

namespace NativeKv;

/// <summary>Base of the handles to NativeKv's opaque native objects; zero is the invalid value.</summary>
public abstract class NativeKvHandle : SafeHandle
{
    /// <summary>Creates an invalid handle that owns what it will be given.</summary>
    protected NativeKvHandle()
        : base(invalidHandleValue: 0, ownsHandle: true)
    {
    }

    /// <inheritdoc />
    public override bool IsInvalid => handle == 0;
}

/// <summary>Owns an <c>nkv_context*</c>; releasing it waits for the context's outstanding work and destroys it.</summary>
public sealed class ContextHandle : NativeKvHandle
{
    internal ContextHandle(nint context) => SetHandle(context);

    /// <inheritdoc />
    protected override bool ReleaseHandle() => NativeMethods.nkv_context_destroy(handle) == NkvStatus.Success;
}

/// <summary>
/// Base of the handles to objects made from a context (buffers, plans). Each holds a reference on its context's handle,
/// so the context outlives everything made from it even when the <see cref="NativeKv.Context"/> is disposed first.
/// </summary>
public abstract class ContextChildHandle : NativeKvHandle
{
    private protected ContextChildHandle(nint child, ContextHandle context)
    {
        bool added = false;
        context.DangerousAddRef(ref added);
        Context = context;
        SetHandle(child);
    }

    /// <summary>The handle of the context the object belongs to.</summary>
    internal ContextHandle Context { get; }

    /// <summary>Destroys the native object (the context is released afterwards).</summary>
    private protected abstract bool Destroy(nint child);

    /// <inheritdoc />
    protected sealed override bool ReleaseHandle()
    {
        bool destroyed = Destroy(handle);
        Context.DangerousRelease();
        return destroyed;
    }
}

/// <summary>Owns an <c>nkv_buffer*</c>.</summary>
public sealed class BufferHandle : ContextChildHandle
{
    internal BufferHandle(nint buffer, ContextHandle context)
        : base(buffer, context)
    {
    }

    private protected override bool Destroy(nint buffer) => NativeMethods.nkv_buffer_destroy(buffer) == NkvStatus.Success;
}

/// <summary>Owns an <c>nkv_attention_plan*</c>; releasing it waits for the context's outstanding work and destroys it.</summary>
public sealed class AttentionPlanHandle : ContextChildHandle
{
    internal AttentionPlanHandle(nint plan, ContextHandle context)
        : base(plan, context)
    {
    }

    private protected override bool Destroy(nint plan) => NativeMethods.nkv_attention_plan_destroy(plan) == NkvStatus.Success;
}

/// <summary>
/// Owns an <c>nkv_pack_plan*</c> (and the device copy of its index arrays); releasing it waits for the context's
/// outstanding work and destroys it.
/// </summary>
public sealed class PackPlanHandle : ContextChildHandle
{
    internal PackPlanHandle(nint plan, ContextHandle context)
        : base(plan, context)
    {
    }

    private protected override bool Destroy(nint plan) => NativeMethods.nkv_pack_plan_destroy(plan) == NkvStatus.Success;
}

/// <summary>An <c>nkv_paged_kv_cache*</c>; destroyed (after the context's outstanding work) before its context.</summary>
public sealed class PagedKvCacheHandle : ContextChildHandle
{
    internal PagedKvCacheHandle(nint cache, ContextHandle context)
        : base(cache, context)
    {
    }

    private protected override bool Destroy(nint cache) => NativeMethods.nkv_paged_kv_cache_destroy(cache) == NkvStatus.Success;
}

/// <summary>
/// An <c>nkv_virtual_kv_cache*</c>; destroyed (after the context's outstanding work, its background thread stopped and its
/// pages unmapped) before its context.
/// </summary>
public sealed class VirtualKvCacheHandle : ContextChildHandle
{
    internal VirtualKvCacheHandle(nint cache, ContextHandle context)
        : base(cache, context)
    {
    }

    private protected override bool Destroy(nint cache) => NativeMethods.nkv_virtual_kv_cache_destroy(cache) == NkvStatus.Success;
}

/// <summary>An <c>nkv_quantized_kv_cache*</c>; destroyed (after the context's outstanding work) before its context.</summary>
public sealed class QuantizedKvCacheHandle : ContextChildHandle
{
    internal QuantizedKvCacheHandle(nint cache, ContextHandle context)
        : base(cache, context)
    {
    }

    private protected override bool Destroy(nint cache) => NativeMethods.nkv_quantized_kv_cache_destroy(cache) == NkvStatus.Success;
}
