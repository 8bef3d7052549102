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
/// Owns an <c>nkv_buffer*</c>. It holds a reference on its context's handle, so the context outlives every buffer
/// allocated from it even when the <see cref="Context"/> is disposed first.
/// </summary>
public sealed class BufferHandle : NativeKvHandle
{
    private readonly ContextHandle _context;

    internal BufferHandle(nint buffer, ContextHandle context)
    {
        bool added = false;
        context.DangerousAddRef(ref added);
        _context = context;
        SetHandle(buffer);
    }

    /// <inheritdoc />
    protected override bool ReleaseHandle()
    {
        bool destroyed = NativeMethods.nkv_buffer_destroy(handle) == NkvStatus.Success;
        _context.DangerousRelease();
        return destroyed;
    }
}

/// <summary>
/// Owns an <c>nkv_attention_plan*</c>; releasing it waits for the context's outstanding work and destroys it. It holds a
/// reference on its context's handle, so the context outlives the plan even when the <see cref="Context"/> is disposed first.
/// </summary>
public sealed class AttentionPlanHandle : NativeKvHandle
{
    private readonly ContextHandle _context;

    internal AttentionPlanHandle(nint plan, ContextHandle context)
    {
        bool added = false;
        context.DangerousAddRef(ref added);
        _context = context;
        SetHandle(plan);
    }

    /// <summary>The handle of the context the plan runs on.</summary>
    internal ContextHandle Context => _context;

    /// <inheritdoc />
    protected override bool ReleaseHandle()
    {
        bool destroyed = NativeMethods.nkv_attention_plan_destroy(handle) == NkvStatus.Success;
        _context.DangerousRelease();
        return destroyed;
    }
}

/// <summary>
/// Owns an <c>nkv_pack_plan*</c> (and the device copy of its index arrays); releasing it waits for the context's
/// outstanding work and destroys it. It holds a reference on its context's handle, like <see cref="BufferHandle"/>.
/// </summary>
public sealed class PackPlanHandle : NativeKvHandle
{
    private readonly ContextHandle _context;

    internal PackPlanHandle(nint plan, ContextHandle context)
    {
        bool added = false;
        context.DangerousAddRef(ref added);
        _context = context;
        SetHandle(plan);
    }

    /// <summary>The handle of the context the plan runs on.</summary>
    internal ContextHandle Context => _context;

    /// <inheritdoc />
    protected override bool ReleaseHandle()
    {
        bool destroyed = NativeMethods.nkv_pack_plan_destroy(handle) == NkvStatus.Success;
        _context.DangerousRelease();
        return destroyed;
    }
}
