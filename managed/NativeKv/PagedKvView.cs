namespace NativeKv;

/// <summary>The memory of a paged KV cache that engines may read with their own kernels (<c>nkv_paged_kv_view</c>).</summary>
public enum PagedKvView
{
    /// <summary>[num_pages, page_size, num_heads_kv, head_dim]: one layer's K pages.</summary>
    KPool = 0,

    /// <summary>The same for V.</summary>
    VPool = 1,

    /// <summary>int32 [max_sequences, pages per sequence]: each sequence's pages, -1 past its last.</summary>
    BlockTable = 2,

    /// <summary>int32 [max_sequences]: each sequence's length in tokens, 0 for ids not alive.</summary>
    SequenceLengths = 3,

    /// <summary>int32 [tokens of the last append]: their slots (page x page_size + offset), in the append's order.</summary>
    StepSlots = 4,
}
