using System.Runtime.InteropServices;

namespace NativeKv.Interop;

/// <summary>Mirror of <c>nkv_pack_plan_info</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NkvPackPlanInfo
{
    public uint StructSize;
    public int PromptCount;
    public int RowCount;
    public int RowCapacity;
    public int LongestPrompt;
    public int Reserved;
    public long TotalTokens;
    public long PaddingTokens;
    public long UnpackedPaddingTokens;
}

internal static unsafe partial class NativeMethods
{
    /// <summary><c>nkv_status nkv_pack_plan_create(nkv_context*, const int32_t* prompt_lengths, int32_t prompt_count, int32_t row_capacity, nkv_pack_plan** out_plan)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_pack_plan_create(ContextHandle context, int* promptLengths, int promptCount, int rowCapacity,
        out nint plan);

    /// <summary><c>nkv_status nkv_pack_plan_destroy(nkv_pack_plan* plan)</c>; only <see cref="PackPlanHandle"/> calls it.</summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_pack_plan_destroy(nint plan);

    /// <summary><c>nkv_status nkv_pack_plan_get_info(const nkv_pack_plan* plan, nkv_pack_plan_info* out_info)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_pack_plan_get_info(PackPlanHandle plan, NkvPackPlanInfo* info);

    /// <summary><c>nkv_status nkv_pack_plan_copy_array(const nkv_pack_plan*, int32_t which, int32_t* destination, int64_t capacity, int64_t* out_length)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_pack_plan_copy_array(PackPlanHandle plan, int which, int* destination, long capacity,
        long* length);

    /// <summary><c>nkv_status nkv_pack_plan_array_view(const nkv_pack_plan*, int32_t which, nkv_tensor* out_view)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_pack_plan_array_view(PackPlanHandle plan, int which, NkvTensor* view);

    /// <summary><c>nkv_status nkv_pack_gather(const nkv_pack_plan*, const nkv_tensor* input, const nkv_tensor* packed)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_pack_gather(PackPlanHandle plan, NkvTensor* input, NkvTensor* packed);

    /// <summary><c>nkv_status nkv_pack_scatter(const nkv_pack_plan*, const nkv_tensor* packed, const nkv_tensor* output)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_pack_scatter(PackPlanHandle plan, NkvTensor* packed, NkvTensor* output);

    /// <summary><c>nkv_status nkv_pack_gather_padded(const nkv_pack_plan*, const nkv_tensor* input, const nkv_tensor* padded)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_pack_gather_padded(PackPlanHandle plan, NkvTensor* input, NkvTensor* padded);

    /// <summary><c>nkv_status nkv_pack_scatter_padded(const nkv_pack_plan*, const nkv_tensor* padded, const nkv_tensor* output)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_pack_scatter_padded(PackPlanHandle plan, NkvTensor* padded, NkvTensor* output);
}
