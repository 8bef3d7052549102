namespace NativeKv;

/// <summary>The memory of a virtual-memory KV cache that engines may read with their own kernels (<c>nkv_virtual_kv_view</c>).</summary>
public enum VirtualKvView
{
    /// <summary>
    /// [max_slots, max_tokens, num_heads_kv, head_dim] of one layer's K, strided: the layout of a contiguous decode's k with
    /// batch entry b = slot b. Only mapped tokens may be read.
    /// </summary>
    K = 0,

    /// <summary>The same for V.</summary>
    V = 1,

    /// <summary>int32 [max_slots]: each slot's length in tokens, 0 for slots not alive.</summary>
    SlotLengths = 2,

    /// <summary>
    /// int32 [tokens of the last append]: each token's row (slot × rows_per_slot + token) in the K/V views seen as
    /// [max_slots × rows_per_slot, num_heads_kv, head_dim] rows, in the append's order.
    /// </summary>
    StepRows = 3,
}
