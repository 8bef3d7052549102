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

    /// <summary>
    /// Block floating point ("Accurate Block Quantization in LLMs with Outliers"): each token's keys and values (per head) are
    /// blocks of n consecutive channels sharing an exponent <c>E = floor(log2(max |x|))</c> and keeping m-bit signed mantissas
    /// <c>round_half_even(x / 2^(E + 2 - m))</c> clipped to ±(2^(m-1) - 1): m = 4 is BFP12, m = 8 BFP16 (m + 8 / n bits per
    /// element). Tokens are quantized as they are written (no residual window). With <see cref="KSort"/> the keys' channels
    /// are ordered so that channels of similar magnitude share blocks.
    /// </summary>
    Bfp = 2,
}
