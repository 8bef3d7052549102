using System.Runtime.InteropServices;

namespace NativeKv.Interop;

/// <summary>Mirror of <c>nkv_int8_quant_params</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NkvInt8QuantParams
{
    public uint StructSize;
    public int Axis;
    public float OutlierThreshold;
    public int Reserved;
}

internal static unsafe partial class NativeMethods
{
    /// <summary><c>nkv_status nkv_int8_quantize(nkv_context*, const nkv_int8_quant_params*, const nkv_tensor* input, codes, scales, outlier_columns, outlier_column_count)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_int8_quantize(ContextHandle context, NkvInt8QuantParams* parameters, NkvTensor* input,
        NkvTensor* codes, NkvTensor* scales, NkvTensor* outlierColumns, NkvTensor* outlierColumnCount);

    /// <summary><c>nkv_status nkv_int8_dequantize(nkv_context*, const nkv_int8_quant_params*, const nkv_tensor* codes, scales, output)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_int8_dequantize(ContextHandle context, NkvInt8QuantParams* parameters, NkvTensor* codes,
        NkvTensor* scales, NkvTensor* output);
}
