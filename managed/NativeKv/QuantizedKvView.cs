namespace NativeKv;

/// <summary>
/// The memory of a quantized KV cache that engines may read with their own kernels (<c>nkv_quantized_kv_view</c>): one
/// layer's arrays, codes packed 32 / b to an int32 word with the first in the least significant bits, capacity = max_tokens
/// rounded up to a multiple of the residual window R. Of a slot's T tokens, keys 0 .. T - T % R - 1 and values
/// 0 .. T - R - 1 are quantized; the newer ones are in the fp16 residuals. The coded arrays keep a slot's tokens in layout
/// blocks of B tokens (64, or G for G = 128; a paged cache's page), each block head-major, blocks = ceil(capacity / B):
/// token t is row t % B (or its word row, its group) of block t / B. nativekv.h gives the BFP layouts.
/// </summary>
public enum QuantizedKvView
{
    /// <summary>int32 [max_slots, blocks, num_heads_kv, B / (32 / b), head_dim]: word w of a key channel holds the block's
    /// tokens w · (32 / b) .. w · (32 / b) + 32 / b - 1.</summary>
    KeyCodes = 0,

    /// <summary>float16 [max_slots, blocks, num_heads_kv, B / G, head_dim / 2, 4]: the groups of the block's tokens
    /// g · G .. g · G + G - 1 by key channel pair p: {scale of 2p, scale of 2p + 1, minimum of 2p, minimum of 2p + 1}.</summary>
    KeyGroups = 1,

    /// <summary>float16 [max_slots, R, num_heads_kv, head_dim]: row i holds key token T - T % R + i (the keys waiting for R of
    /// them to be there).</summary>
    KeyResidual = 2,

    /// <summary>int32 [max_slots, blocks, num_heads_kv, B, head_dim / (32 / b)]: a value token's head row of words, word w
    /// holding its channels w · (32 / b) .. w · (32 / b) + 32 / b - 1; at 4 and 8 bits word w is entry w, at 2 bits the even
    /// words come first, then the odd ones (head_dim 128: words 0 2 4 6 1 3 5 7).</summary>
    ValueCodes = 3,

    /// <summary>float16 [max_slots, blocks, num_heads_kv, head_dim / G, B / 8, 16]: the groups of G consecutive channels of the
    /// block's value tokens, group-major (one group of the block's tokens is contiguous), in units of 8 tokens: the scales of
    /// the unit's tokens 0 4 1 5 2 6 3 7, then their minimums in that order.</summary>
    ValueGroups = 4,

    /// <summary>float16 [max_slots, R, num_heads_kv, head_dim]: value token t (T - R &lt;= t &lt; T, the newest R) at row t % R.</summary>
    ValueResidual = 5,

    /// <summary>int32 [max_slots]: each slot's length in tokens, 0 for slots not alive; the layer is ignored.</summary>
    SlotLengths = 6,

    /// <summary><see cref="KvMemory.Paged"/>: int32 [max_slots, pages per slot], the page of each slot's PageSize tokens
    /// (entries past a slot's length are unspecified); the layer is ignored. Paged caches view the coded arrays with pages in
    /// place of slots, each one layout block of PageSize tokens.</summary>
    BlockTable = 7,
}
