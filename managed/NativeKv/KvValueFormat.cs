namespace NativeKv;

/// <summary>What a <see cref="KvFormat.Bfp"/> cache keeps its values in (<c>nkv_kv_value_format</c>).</summary>
public enum KvValueFormat
{
    /// <summary>The cache's format (the only choice for <see cref="KvFormat.Kivi"/>).</summary>
    LikeKeys = 0,

    /// <summary>float16, as written (block floating point for the keys only).</summary>
    Fp16 = 1,
}
