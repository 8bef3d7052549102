namespace NativeKv;

/// <summary>How a <see cref="VirtualKvCache"/> lays out its virtual memory (<c>nkv_virtual_kv_layout</c>).</summary>
public enum VirtualKvLayout
{
    /// <summary>
    /// One region per layer and K/V (vAttention's): [layer][K|V][slot][token][head][d]. A page holds one layer's K or V of
    /// page bytes / (NumHeadsKv · HeadDim · 2) tokens, so a slot grows in large steps.
    /// </summary>
    LayerMajor = 0,

    /// <summary>
    /// One region: [slot][block][layer][K|V][token][head][d], a block being one page that holds every layer of page bytes /
    /// (NumLayers · 2 · NumHeadsKv · HeadDim · 2) whole tokens (16 for 32 layers of 8 × 128 float16), so a slot wastes less
    /// than a page, as in a paged cache. One layer's K and V rows of a page's tokens lie together, so decode streams them as
    /// fast as from a contiguous tensor. A token of every layer must fit in a page.
    /// </summary>
    TokenMajor = 1,
}
