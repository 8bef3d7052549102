namespace NativeKv;

/// <summary>The int32 index arrays of a <see cref="PackPlan"/> (<c>nkv_pack_array</c>).</summary>
public enum PackArray
{
    /// <summary>[prompt_count + 1]: the packed token offset of each packed prompt, then the total token count.</summary>
    CuSeqlens = 0,

    /// <summary>[total_tokens]: the position of each packed token within its prompt (restarting at 0 per prompt).</summary>
    PositionIds = 1,

    /// <summary>[total_tokens]: packed token t is caller token <c>gather[t]</c>.</summary>
    GatherIndex = 2,

    /// <summary>[total_tokens]: caller token t is packed token <c>scatter[t]</c>.</summary>
    ScatterIndex = 3,

    /// <summary>[prompt_count]: packed prompt p is caller prompt <c>order[p]</c>.</summary>
    PromptOrder = 4,

    /// <summary>[row_count + 1]: the packed prompt index where each row starts, then prompt_count.</summary>
    RowStarts = 5,
}
