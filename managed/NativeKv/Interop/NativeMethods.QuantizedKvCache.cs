using System.Runtime.InteropServices;

namespace NativeKv.Interop;

/// <summary>Mirror of <c>nkv_quantized_kv_cache_options</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NkvQuantizedKvCacheOptions
{
    public uint StructSize;
    public int Format;
    public int Bits;
    public int GroupSize;
    public int Residual;
    public int NumLayers;
    public int NumHeadsKv;
    public int HeadDim;
    public int MaxSlots;
    public int MaxTokens;
    public int ValueFormat;
    public int Memory;
    public int PageSize;
    public int MaxPages;
}

/// <summary>Mirror of <c>nkv_quantized_kv_cache_info</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NkvQuantizedKvCacheInfo
{
    public uint StructSize;
    public int Format;
    public int Bits;
    public int GroupSize;
    public int Residual;
    public int MaxSlots;
    public int Slots;
    public int Capacity;
    public long Tokens;
    public long StepTokens;
    public ulong Bytes;
    public ulong MappedBytes;
    public int PageSize;
    public int MaxPages;
    public int FreePages;
    public int Reserved;
}

internal static unsafe partial class NativeMethods
{
    /// <summary><c>nkv_status nkv_ksort_calibrate(const nkv_tensor* keys, int32_t rotary_pairs, int32_t* permutation)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_ksort_calibrate(NkvTensor* keys, int rotaryPairs, int* permutation);

    /// <summary><c>nkv_status nkv_quantized_kv_cache_set_key_permutation(nkv_quantized_kv_cache*, int32_t layer, const int32_t* permutation)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_quantized_kv_cache_set_key_permutation(QuantizedKvCacheHandle cache, int layer, int* permutation);

    /// <summary><c>nkv_status nkv_quantized_kv_cache_create(nkv_context*, const nkv_quantized_kv_cache_options*, nkv_quantized_kv_cache** out_cache)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_quantized_kv_cache_create(ContextHandle context, NkvQuantizedKvCacheOptions* options, out nint cache);

    /// <summary><c>nkv_status nkv_quantized_kv_cache_destroy(nkv_quantized_kv_cache*)</c>; only <see cref="QuantizedKvCacheHandle"/> calls it.</summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_quantized_kv_cache_destroy(nint cache);

    /// <summary><c>nkv_status nkv_quantized_kv_cache_add_slot(nkv_quantized_kv_cache*, int32_t* out_slot)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_quantized_kv_cache_add_slot(QuantizedKvCacheHandle cache, int* slot);

    /// <summary><c>nkv_status nkv_quantized_kv_cache_free_slot(nkv_quantized_kv_cache*, int32_t slot)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_quantized_kv_cache_free_slot(QuantizedKvCacheHandle cache, int slot);

    /// <summary><c>nkv_status nkv_quantized_kv_cache_append(nkv_quantized_kv_cache*, const int32_t* slots, const int32_t* token_counts, int32_t count)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_quantized_kv_cache_append(QuantizedKvCacheHandle cache, int* slots, int* tokenCounts, int count);

    /// <summary><c>nkv_status nkv_quantized_kv_cache_write(nkv_quantized_kv_cache*, int32_t layer, const nkv_tensor* k, const nkv_tensor* v)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_quantized_kv_cache_write(QuantizedKvCacheHandle cache, int layer, NkvTensor* k, NkvTensor* v);

    /// <summary><c>nkv_status nkv_quantized_kv_cache_view(const nkv_quantized_kv_cache*, int32_t which, int32_t layer, nkv_tensor* out_view)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_quantized_kv_cache_view(QuantizedKvCacheHandle cache, int which, int layer, NkvTensor* view);

    /// <summary><c>nkv_status nkv_quantized_kv_cache_get_info(const nkv_quantized_kv_cache*, nkv_quantized_kv_cache_info* out_info)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_quantized_kv_cache_get_info(QuantizedKvCacheHandle cache, NkvQuantizedKvCacheInfo* info);

    /// <summary><c>nkv_status nkv_quantized_kv_cache_slot(const nkv_quantized_kv_cache*, int32_t slot, int32_t* out_length)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_quantized_kv_cache_slot(QuantizedKvCacheHandle cache, int slot, int* length);

    /// <summary><c>nkv_status nkv_attention_decode_quantized(nkv_attention_plan*, const nkv_tensor* q, const nkv_quantized_kv_cache* cache, int32_t layer, const nkv_tensor* o, const nkv_tensor* lse)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_attention_decode_quantized(AttentionPlanHandle plan, NkvTensor* q, QuantizedKvCacheHandle cache,
        int layer, NkvTensor* o, NkvTensor* lse);
}
