namespace NativeKv;

/// <summary>Which vectors of a matrix share one quantization scale (<c>nkv_quant_axis</c>).</summary>
public enum QuantAxis
{
    /// <summary>One scale per row: scales has shape [rows].</summary>
    Row = 0,

    /// <summary>One scale per column: scales has shape [cols].</summary>
    Column = 1,
}
