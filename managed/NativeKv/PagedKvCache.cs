using NativeKv.Interop;

namespace NativeKv;

/// <summary>The shape and capacity of a <see cref="PagedKvCache"/> (<c>nkv_paged_kv_cache_options</c>).</summary>
/// <param name="DType">The element type of K and V: <see cref="NativeKv.DType.Float16"/> or <see cref="NativeKv.DType.BFloat16"/>.</param>
/// <param name="NumLayers">Layers; one pool object covers them all.</param>
/// <param name="NumHeadsKv">KV heads per layer.</param>
/// <param name="HeadDim">Elements per head row, a multiple of 8.</param>
/// <param name="PageSize">Tokens per page: 1, 8, 16, 32, 64, 128 or 256.</param>
/// <param name="MaxSequences">Sequences alive at once (ids 0 .. MaxSequences - 1).</param>
/// <param name="MaxSequenceLength">Tokens per sequence at most.</param>
/// <param name="NumPages">Pages in the pool, or 0 to take as many as <paramref name="ByteBudget"/> holds.</param>
/// <param name="ByteBudget">With <paramref name="NumPages"/> 0: bytes for the pages of all layers, K and V.</param>
public readonly record struct PagedKvCacheOptions(
    DType DType,
    int NumLayers,
    int NumHeadsKv,
    int HeadDim,
    int PageSize,
    int MaxSequences,
    int MaxSequenceLength,
    long NumPages = 0,
    ulong ByteBudget = 0);

/// <summary>A snapshot of a <see cref="PagedKvCache"/>'s occupancy (<c>nkv_paged_kv_cache_info</c>).</summary>
/// <param name="Sequences">Sequences alive.</param>
/// <param name="Tokens">The sum of their lengths (a shared prefix counts once per sequence).</param>
/// <param name="NumPages">Pages in the pool.</param>
/// <param name="FreePages">Pages no sequence holds.</param>
/// <param name="SharedPages">Pages held by more than one sequence (forks).</param>
/// <param name="BytesPerPage">One page of every layer, K and V.</param>
/// <param name="StepTokens">Tokens of the last <see cref="PagedKvCache.Append"/>.</param>
/// <param name="EmptySlots">Slots of held pages that hold no token of any sequence.</param>
/// <param name="PageSize">Tokens per page.</param>
public readonly record struct PagedKvCacheStatistics(int Sequences, long Tokens, long NumPages, long FreePages, long SharedPages,
    ulong BytesPerPage, long StepTokens, long EmptySlots, int PageSize)
{
    /// <summary>Internal fragmentation: the fraction of the held pages' slots that hold no token (0 with no page held).</summary>
    public double Fragmentation => PagesUsed == 0 ? 0.0 : (double)EmptySlots / (PagesUsed * PageSize);

    /// <summary>Pages some sequence holds.</summary>
    public long PagesUsed => NumPages - FreePages;

    /// <summary>Bytes of the pages some sequence holds.</summary>
    public ulong BytesUsed => (ulong)PagesUsed * BytesPerPage;
}

/// <summary>
/// A paged KV cache (vLLM's PagedAttention layout, <c>nkv_paged_kv_cache</c>): per layer a K and a V pool of pages
/// [NumPages, PageSize, NumHeadsKv, HeadDim] in the context's memory, and sequences (int ids) that each hold a list of
/// pages and a length. Forks share pages (prefix sharing); a sequence that appends into a shared, partly filled last page
/// gets its own copy of it first. A step is <see cref="Append"/> (all sequences that grow, at once) followed by one
/// <see cref="Write(int, TensorView, TensorView)"/> per layer. Bookkeeping runs on the host; the block table and lengths
/// (<see cref="View"/>) are brought to the device on the context's stream by each call. Disposing waits for the context's
/// outstanding work and frees the pools.
/// </summary>
public sealed unsafe class PagedKvCache : IDisposable, IDeviceMemoryOwner
{
    /// <summary>Allocates the pools (uninitialized) on the context's device.</summary>
    /// <param name="context">The context whose memory holds the cache; it stays alive while the cache does.</param>
    /// <param name="options">The shape and capacity.</param>
    /// <exception cref="NativeKvInvalidArgumentException">An option is out of range (the message names it).</exception>
    /// <exception cref="NativeKvOutOfMemoryException">The pools do not fit.</exception>
    public PagedKvCache(Context context, PagedKvCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(context);
        var native = new NkvPagedKvCacheOptions
        {
            StructSize = (uint)sizeof(NkvPagedKvCacheOptions),
            Dtype = (int)options.DType,
            NumLayers = options.NumLayers,
            NumHeadsKv = options.NumHeadsKv,
            HeadDim = options.HeadDim,
            PageSize = options.PageSize,
            MaxSequences = options.MaxSequences,
            MaxSequenceLength = options.MaxSequenceLength,
            NumPages = options.NumPages,
            ByteBudget = options.ByteBudget,
        };
        NativeStatus.Check(NativeMethods.nkv_paged_kv_cache_create(context.Handle, &native, out nint raw));
        Context = context;
        Handle = new PagedKvCacheHandle(raw, context.Handle);
        try
        {
            NkvPagedKvCacheInfo info = Info();
            Options = options with { NumPages = info.NumPages };
            MaxPagesPerSequence = info.MaxPagesPerSequence;
        }
        catch
        {
            Handle.Dispose();  // not left to the finalizer: the cache holds device memory
            throw;
        }
    }

    /// <summary>The context the cache lives on.</summary>
    public Context Context { get; }

    /// <summary>The native handle.</summary>
    public PagedKvCacheHandle Handle { get; }

    NativeKvHandle IDeviceMemoryOwner.Handle => Handle;

    /// <summary>The options, with <see cref="PagedKvCacheOptions.NumPages"/> as allocated.</summary>
    public PagedKvCacheOptions Options { get; }

    /// <summary>Columns of the block table: pages of a sequence of MaxSequenceLength tokens.</summary>
    public int MaxPagesPerSequence { get; }

    /// <summary>The current occupancy.</summary>
    public PagedKvCacheStatistics Statistics
    {
        get
        {
            NkvPagedKvCacheInfo info = Info();
            return new PagedKvCacheStatistics(info.Sequences, info.Tokens, info.NumPages, info.FreePages, info.SharedPages,
                info.BytesPerPage, info.StepTokens, info.EmptySlots, info.PageSize);
        }
    }

    /// <summary>A new, empty sequence.</summary>
    /// <returns>Its id: the lowest one not alive.</returns>
    /// <exception cref="NativeKvOutOfMemoryException">MaxSequences sequences are alive.</exception>
    public int AddSequence()
    {
        int sequence;
        NativeStatus.Check(NativeMethods.nkv_paged_kv_cache_add_sequence(LiveHandle, &sequence));
        return sequence;
    }

    /// <summary>A new sequence with the parent's tokens, sharing its pages (nothing is copied now).</summary>
    /// <exception cref="NativeKvInvalidArgumentException"><paramref name="parent"/> is not alive.</exception>
    /// <exception cref="NativeKvOutOfMemoryException">MaxSequences sequences are alive.</exception>
    public int Fork(int parent)
    {
        int sequence;
        NativeStatus.Check(NativeMethods.nkv_paged_kv_cache_fork(LiveHandle, parent, &sequence));
        return sequence;
    }

    /// <summary>
    /// Shortens a sequence to <paramref name="length"/> tokens, releasing the pages past it (speculative-decoding rollback).
    /// If a released page holds tokens of the last <see cref="Append"/>, that step is forgotten (<see cref="Write(int, TensorView, TensorView)"/>
    /// then expects 0 tokens); the same holds for <see cref="Free"/>.
    /// </summary>
    /// <exception cref="NativeKvInvalidArgumentException">The sequence is not alive, or the length is negative or beyond its length.</exception>
    public void Truncate(int sequence, int length) =>
        NativeStatus.Check(NativeMethods.nkv_paged_kv_cache_truncate(LiveHandle, sequence, length));

    /// <summary>Releases a sequence and its pages; its id may be handed out again.</summary>
    /// <exception cref="NativeKvInvalidArgumentException">The sequence is not alive (never added, or freed already).</exception>
    public void Free(int sequence) => NativeStatus.Check(NativeMethods.nkv_paged_kv_cache_free_sequence(LiveHandle, sequence));

    /// <summary>
    /// One step: each of <paramref name="sequences"/> grows by the matching count of tokens, pages allocated (and shared
    /// last pages copied) as needed. All or nothing: on any exception no sequence, page or previous step has changed.
    /// </summary>
    /// <param name="sequences">Distinct alive sequences.</param>
    /// <param name="tokenCounts">Tokens each grows by, &gt;= 0; the same length as <paramref name="sequences"/>.</param>
    /// <exception cref="NativeKvOutOfMemoryException">The pool lacks the pages the step needs.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A sequence is not alive or repeated, a count is negative or
    /// would pass MaxSequenceLength.</exception>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    public void Append(ReadOnlySpan<int> sequences, ReadOnlySpan<int> tokenCounts) =>
        KvCacheSteps.Append(LiveHandle, sequences, tokenCounts, nameof(sequences), &NativeMethods.nkv_paged_kv_cache_append);

    /// <summary>
    /// Stores the last step's K and V of one layer into their pages (vLLM's reshape_and_cache); asynchronous on the context's stream.
    /// </summary>
    /// <param name="layer">0 .. NumLayers - 1.</param>
    /// <param name="k">[step tokens, NumHeadsKv, HeadDim] of the cache's dtype, the step's sequences in order, unit last stride.</param>
    /// <param name="v">The same for V.</param>
    /// <exception cref="NativeKvInvalidArgumentException">The layer is out of range or a tensor does not match the step.</exception>
    /// <exception cref="ArgumentException">A view's memory belongs to another context.</exception>
    /// <exception cref="ObjectDisposedException">The cache, or the memory behind a view, was disposed.</exception>
    public void Write(int layer, TensorView k, TensorView v) =>
        KvCacheSteps.Write(LiveHandle, Context, layer, k, v, &NativeMethods.nkv_paged_kv_cache_write);

    /// <summary><see cref="Write(int, TensorView, TensorView)"/> from row-major host data of a CPU-backend cache; synchronous.</summary>
    /// <typeparam name="T">A 2-byte element type matching the cache's dtype (<see cref="Half"/> or <see cref="BFloat16"/>).</typeparam>
    /// <param name="layer">0 .. NumLayers - 1.</param>
    /// <param name="k">[step tokens, NumHeadsKv, HeadDim].</param>
    /// <param name="v">[step tokens, NumHeadsKv, HeadDim].</param>
    /// <exception cref="InvalidOperationException">The cache is not on a CPU-backend context.</exception>
    /// <exception cref="ArgumentException">A span is not a whole number of token rows.</exception>
    public void Write<T>(int layer, ReadOnlySpan<T> k, ReadOnlySpan<T> v) where T : unmanaged =>
        KvCacheSteps.WriteHost(LiveHandle, Context, Options.NumHeadsKv, Options.HeadDim, layer, k, v,
            &NativeMethods.nkv_paged_kv_cache_write);

    /// <summary>
    /// A view of the cache's own memory (the context's device; host memory on the CPU backend), valid while the cache
    /// lives; its contents change with each call. Block-table entries past a sequence's pages are -1.
    /// </summary>
    /// <param name="which">The pool or table.</param>
    /// <param name="layer">The layer, for the pools.</param>
    /// <exception cref="NativeKvInvalidArgumentException">The layer or <paramref name="which"/> is out of range.</exception>
    public TensorView View(PagedKvView which, int layer = 0)
    {
        NkvTensor view;
        NativeStatus.Check(NativeMethods.nkv_paged_kv_cache_view(LiveHandle, (int)which, layer, &view));
        return TensorView.FromNative(view, this);
    }

    /// <summary>A sequence's length in tokens.</summary>
    /// <exception cref="NativeKvInvalidArgumentException">The sequence is not alive.</exception>
    public int SequenceLength(int sequence)
    {
        int length, pageCount;
        NativeStatus.Check(NativeMethods.nkv_paged_kv_cache_sequence(LiveHandle, sequence, &length, null, 0, &pageCount));
        return length;
    }

    /// <summary>A sequence's pages, in token order (its block-table row).</summary>
    /// <exception cref="NativeKvInvalidArgumentException">The sequence is not alive.</exception>
    public int[] SequencePages(int sequence)
    {
        var pages = new int[MaxPagesPerSequence];
        int length, pageCount;
        fixed (int* data = pages)
        {
            NativeStatus.Check(NativeMethods.nkv_paged_kv_cache_sequence(LiveHandle, sequence, &length, data, pages.Length, &pageCount));
        }
        return pages[..pageCount];
    }

    /// <summary>Destroys the cache and its pools, after waiting for the context's outstanding work (which may still read them).</summary>
    public void Dispose() => Handle.Dispose();

    /// <inheritdoc />
    public override string ToString() =>
        $"PagedKvCache({Options.NumLayers} layers x {Options.NumHeadsKv} x {Options.HeadDim} {Options.DType}, {Options.NumPages} pages of {Options.PageSize}, {Context})";

    private PagedKvCacheHandle LiveHandle
    {
        get
        {
            ObjectDisposedException.ThrowIf(Handle.IsClosed, this);
            return Handle;
        }
    }

    private NkvPagedKvCacheInfo Info()
    {
        var info = new NkvPagedKvCacheInfo { StructSize = (uint)sizeof(NkvPagedKvCacheInfo) };
        NativeStatus.Check(NativeMethods.nkv_paged_kv_cache_get_info(LiveHandle, &info));
        return info;
    }
}
