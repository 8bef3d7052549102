using System.Runtime.InteropServices;

namespace NativeKv.Interop;

/// <summary>Mirror of <c>nkv_paged_kv_cache_options</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NkvPagedKvCacheOptions
{
    public uint StructSize;
    public int Dtype;
    public int NumLayers;
    public int NumHeadsKv;
    public int HeadDim;
    public int PageSize;
    public int MaxSequences;
    public int MaxSequenceLength;
    public long NumPages;
    public ulong ByteBudget;
}

/// <summary>Mirror of <c>nkv_paged_kv_cache_info</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NkvPagedKvCacheInfo
{
    public uint StructSize;
    public int PageSize;
    public int MaxSequences;
    public int Sequences;
    public int MaxPagesPerSequence;
    public int Reserved;
    public long NumPages;
    public long FreePages;
    public long Tokens;
    public long SharedPages;
    public ulong BytesPerPage;
    public long StepTokens;
    public long EmptySlots;
}

internal static unsafe partial class NativeMethods
{
    /// <summary><c>nkv_status nkv_paged_kv_cache_create(nkv_context*, const nkv_paged_kv_cache_options*, nkv_paged_kv_cache** out_cache)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_paged_kv_cache_create(ContextHandle context, NkvPagedKvCacheOptions* options, out nint cache);

    /// <summary><c>nkv_status nkv_paged_kv_cache_destroy(nkv_paged_kv_cache*)</c>; only <see cref="PagedKvCacheHandle"/> calls it.</summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_paged_kv_cache_destroy(nint cache);

    /// <summary><c>nkv_status nkv_paged_kv_cache_add_sequence(nkv_paged_kv_cache*, int32_t* out_sequence)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_paged_kv_cache_add_sequence(PagedKvCacheHandle cache, int* sequence);

    /// <summary><c>nkv_status nkv_paged_kv_cache_fork(nkv_paged_kv_cache*, int32_t parent, int32_t* out_sequence)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_paged_kv_cache_fork(PagedKvCacheHandle cache, int parent, int* sequence);

    /// <summary><c>nkv_status nkv_paged_kv_cache_truncate(nkv_paged_kv_cache*, int32_t sequence, int32_t length)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_paged_kv_cache_truncate(PagedKvCacheHandle cache, int sequence, int length);

    /// <summary><c>nkv_status nkv_paged_kv_cache_free_sequence(nkv_paged_kv_cache*, int32_t sequence)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_paged_kv_cache_free_sequence(PagedKvCacheHandle cache, int sequence);

    /// <summary><c>nkv_status nkv_paged_kv_cache_append(nkv_paged_kv_cache*, const int32_t* sequences, const int32_t* token_counts, int32_t count)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_paged_kv_cache_append(PagedKvCacheHandle cache, int* sequences, int* tokenCounts, int count);

    /// <summary><c>nkv_status nkv_paged_kv_cache_write(nkv_paged_kv_cache*, int32_t layer, const nkv_tensor* k, const nkv_tensor* v)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_paged_kv_cache_write(PagedKvCacheHandle cache, int layer, NkvTensor* k, NkvTensor* v);

    /// <summary><c>nkv_status nkv_paged_kv_cache_view(const nkv_paged_kv_cache*, int32_t which, int32_t layer, nkv_tensor* out_view)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_paged_kv_cache_view(PagedKvCacheHandle cache, int which, int layer, NkvTensor* view);

    /// <summary><c>nkv_status nkv_paged_kv_cache_get_info(const nkv_paged_kv_cache*, nkv_paged_kv_cache_info* out_info)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_paged_kv_cache_get_info(PagedKvCacheHandle cache, NkvPagedKvCacheInfo* info);

    /// <summary><c>nkv_status nkv_paged_kv_cache_sequence(const nkv_paged_kv_cache*, int32_t sequence, int32_t* out_length, int32_t* pages, int32_t capacity, int32_t* out_page_count)</c></summary>
    [LibraryImport(LibraryName)]
    internal static partial NkvStatus nkv_paged_kv_cache_sequence(PagedKvCacheHandle cache, int sequence, int* length, int* pages,
        int capacity, int* pageCount);
}
