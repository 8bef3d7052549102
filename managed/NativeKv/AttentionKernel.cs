namespace NativeKv;

/// <summary>Which kernel family runs an <see cref="AttentionPlan"/> (<c>nkv_attention_kernel</c>).</summary>
public enum AttentionKernel
{
    /// <summary>The best family available for the device and the plan (the only choice on the CPU backend).</summary>
    Auto = 0,

    /// <summary>FlashAttention-2 design (mma.sync, cp.async): every CUDA GPU of compute capability 8.0 or newer.</summary>
    Sm80 = 1,

    /// <summary>FlashAttention-3 design (wgmma, TMA): Hopper only, where this build and the plan's shape have it.</summary>
    Sm90 = 2,
}
