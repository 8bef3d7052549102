using System.Runtime.InteropServices;

namespace NativeKv.Interop;

/// <summary>Mirror of <c>nkv_virtual_kv_cache_options</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NkvVirtualKvCacheOptions
{
    public uint StructSize;
    public int Dtype;
    public int Layout;
    public int NumLayers;
    public int NumHeadsKv;
    public int HeadDim;
    public int MaxSlots;
    public int MaxTokens;
    public ulong ByteBudget;
}

/// <summary>Mirror of <c>nkv_virtual_kv_cache_info</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NkvVirtualKvCacheInfo
{
    public uint StructSize;
    public int Layout;
    public int MaxSlots;
    public int Slots;
    public int TokensPerBlock;
    public int MaxBlocksPerSlot;
    public ulong PageBytes;
    public ulong BytesPerBlock;
    public long RowsPerSlot;
    public long Tokens;
    public long BudgetPages;
    public long MappedPages;
    public long PooledPages;
    public long SharedPages;
    public long DeferredBlocks;
    public long EmptyTokenSlots;
    public long StepTokens;
    public long BlocksMappedAhead;
    public long BlocksMappedInline;
    public long PagesCreated;
}

internal static unsafe partial class NativeMethods
{
    /// <summary><c>nkv_status nkv_virtual_kv_cache_create(nkv_context*, const nkv_virtual_kv_cache_options*, nkv_virtual_kv_cache** out_cache)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_create(ContextHandle context, NkvVirtualKvCacheOptions* options, out nint cache);

    /// <summary><c>nkv_status nkv_virtual_kv_cache_destroy(nkv_virtual_kv_cache*)</c>; only <see cref="VirtualKvCacheHandle"/> calls it.</summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_destroy(nint cache);

    /// <summary><c>nkv_status nkv_virtual_kv_cache_add_slot(nkv_virtual_kv_cache*, int32_t* out_slot)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_add_slot(VirtualKvCacheHandle cache, int* slot);

    /// <summary><c>nkv_status nkv_virtual_kv_cache_fork(nkv_virtual_kv_cache*, int32_t parent, int32_t* out_slot)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_fork(VirtualKvCacheHandle cache, int parent, int* slot);

    /// <summary><c>nkv_status nkv_virtual_kv_cache_truncate(nkv_virtual_kv_cache*, int32_t slot, int32_t length)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_truncate(VirtualKvCacheHandle cache, int slot, int length);

    /// <summary><c>nkv_status nkv_virtual_kv_cache_free_slot(nkv_virtual_kv_cache*, int32_t slot)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_free_slot(VirtualKvCacheHandle cache, int slot);

    /// <summary><c>nkv_status nkv_virtual_kv_cache_ensure_capacity(nkv_virtual_kv_cache*, int32_t slot, int32_t tokens)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_ensure_capacity(VirtualKvCacheHandle cache, int slot, int tokens);

    /// <summary><c>nkv_status nkv_virtual_kv_cache_reserve_ahead(nkv_virtual_kv_cache*, int32_t slot, int32_t tokens)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_reserve_ahead(VirtualKvCacheHandle cache, int slot, int tokens);

    /// <summary><c>nkv_status nkv_virtual_kv_cache_trim(nkv_virtual_kv_cache*)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_trim(VirtualKvCacheHandle cache);

    /// <summary><c>nkv_status nkv_virtual_kv_cache_append(nkv_virtual_kv_cache*, const int32_t* slots, const int32_t* token_counts, int32_t count)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_append(VirtualKvCacheHandle cache, int* slots, int* tokenCounts, int count);

    /// <summary><c>nkv_status nkv_virtual_kv_cache_write(nkv_virtual_kv_cache*, int32_t layer, const nkv_tensor* k, const nkv_tensor* v)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_write(VirtualKvCacheHandle cache, int layer, NkvTensor* k, NkvTensor* v);

    /// <summary><c>nkv_status nkv_virtual_kv_cache_view(const nkv_virtual_kv_cache*, int32_t which, int32_t layer, nkv_tensor* out_view)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_view(VirtualKvCacheHandle cache, int which, int layer, NkvTensor* view);

    /// <summary><c>nkv_status nkv_virtual_kv_cache_get_info(const nkv_virtual_kv_cache*, nkv_virtual_kv_cache_info* out_info)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_get_info(VirtualKvCacheHandle cache, NkvVirtualKvCacheInfo* info);

    /// <summary><c>nkv_status nkv_virtual_kv_cache_slot(const nkv_virtual_kv_cache*, int32_t slot, int32_t* out_length, int64_t* out_mapped_tokens)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_virtual_kv_cache_slot(VirtualKvCacheHandle cache, int slot, int* length, long* mappedTokens);
}
