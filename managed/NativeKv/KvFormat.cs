namespace NativeKv;

/// <summary>How a <see cref="QuantizedKvCache"/> encodes K and V (<c>nkv_kv_format</c>).</summary>
public enum KvFormat
{
    /// <summary>
    /// KIVI ("A Tuning-Free Asymmetric 2bit Quantization for KV Cache", Liu et al.): asymmetric min/max groups of G values,
    /// keys per channel (G consecutive tokens of one key channel) and values per token (G consecutive channels of one value
    /// token, within one head). A group keeps <c>mn = fp16(min)</c> and <c>s = fp16((max - mn) / (2^b - 1))</c>; its codes are
    /// <c>q = round_half_even((x - mn) / s)</c> clamped to [0, 2^b - 1] and dequantize to <c>x^ = q · s + mn</c> (one float32
    /// fused multiply-add). A group whose scale rounds to 0 gets codes 0 and <c>x^ = mn</c>.
    /// </summary>
    Kivi = 1,
}
