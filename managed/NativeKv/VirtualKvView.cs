namespace NativeKv;

/// <summary>The memory of a virtual-memory KV cache that engines may read with their own kernels (<c>nkv_virtual_kv_view</c>).</summary>
public enum VirtualKvView
{
    /// <summary>
    /// One layer's K, strided: [max_slots, max_tokens, num_heads_kv, head_dim] (layer-major) or [max_slots, blocks per slot,
    /// tokens per block, num_heads_kv, head_dim] (token-major, token t of a slot in block t / tokens per block): the layouts
    /// of a decode's k with batch entry b = slot b. Only mapped tokens may be read.
    /// </summary>
    K = 0,

    /// <summary>The same for V.</summary>
    V = 1,

    /// <summary>int32 [max_slots]: each slot's length in tokens, 0 for slots not alive.</summary>
    SlotLengths = 2,

    /// <summary>
    /// int32 [tokens of the last append]: each token's row, slot × rows_per_slot + token, in the append's order: the row of
    /// the K/V views seen as [max_slots × rows_per_slot, num_heads_kv, head_dim] (layer-major), or token row % tokens per
    /// block of block row / tokens per block of the views seen as [blocks, tokens per block, num_heads_kv, head_dim]
    /// (token-major).
    /// </summary>
    StepRows = 3,
}
