namespace NativeKv;

/// <summary>Which op an <see cref="AttentionPlan"/> describes (<c>nkv_attention_kind</c>).</summary>
public enum AttentionKind
{
    /// <summary>Varlen (packed) attention: <see cref="Attention.Varlen(AttentionPlan, TensorView, TensorView, TensorView, TensorView, TensorView)"/>.</summary>
    Varlen = 0,

    /// <summary>Decode attention over a KV cache: <see cref="Attention.Decode(AttentionPlan, TensorView, TensorView, TensorView, TensorView, TensorView)"/>.</summary>
    Decode = 1,
}
