namespace NativeKv;

/// <summary>The rotary-embedding pairs of a head's channels that <see cref="KSort"/> keeps together (<c>nkv_rotary_pairs</c>).</summary>
public enum RotaryPairs
{
    /// <summary>No pairs: channels move one by one.</summary>
    None = 0,

    /// <summary>(i, i + headDim / 2): GPT-NeoX and Llama.</summary>
    Halves = 1,

    /// <summary>(2i, 2i + 1): GPT-J.</summary>
    Adjacent = 2,
}
