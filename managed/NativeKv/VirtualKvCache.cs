using NativeKv.Interop;

namespace NativeKv;

/// <summary>The shape and capacity of a <see cref="VirtualKvCache"/> (<c>nkv_virtual_kv_cache_options</c>).</summary>
/// <param name="DType">The element type of K and V: <see cref="NativeKv.DType.Float16"/> or <see cref="NativeKv.DType.BFloat16"/>.</param>
/// <param name="Layout">How K and V are laid out in the reserved address space.</param>
/// <param name="NumLayers">Layers; one cache covers them all.</param>
/// <param name="NumHeadsKv">KV heads per layer.</param>
/// <param name="HeadDim">Elements per head row, a multiple of 8.</param>
/// <param name="MaxSlots">Slots alive at once (ids 0 .. MaxSlots - 1).</param>
/// <param name="MaxTokens">Tokens per slot at most; address space for them is reserved up front.</param>
/// <param name="ByteBudget">Physical bytes the cache may hold (mapped or pooled), rounded down to whole blocks; 0 for no
/// limit but the device's memory.</param>
public readonly record struct VirtualKvCacheOptions(
    DType DType,
    VirtualKvLayout Layout,
    int NumLayers,
    int NumHeadsKv,
    int HeadDim,
    int MaxSlots,
    int MaxTokens,
    ulong ByteBudget = 0);

/// <summary>A snapshot of a <see cref="VirtualKvCache"/>'s occupancy (<c>nkv_virtual_kv_cache_info</c>).</summary>
/// <param name="Slots">Slots alive.</param>
/// <param name="Tokens">The sum of their lengths (a forked prefix counts once per slot).</param>
/// <param name="TokensPerBlock">Whole tokens one block holds (layer-major: a token may straddle two blocks; token-major: blocks hold whole tokens).</param>
/// <param name="PageBytes">One physical page, the mapping granularity (2 MiB on CUDA GPUs and the CPU backend).</param>
/// <param name="BytesPerBlock">One block: a page of every region (2 × layers pages in layer-major, 1 in token-major).</param>
/// <param name="BudgetPages">Physical pages the cache may hold.</param>
/// <param name="MappedPages">Distinct physical pages mapped into some slot.</param>
/// <param name="PooledPages">Pages held, unmapped, ready to map.</param>
/// <param name="SharedPages">Pages mapped into more than one slot (forks).</param>
/// <param name="DeferredBlocks">Blocks still mapped in freed slots, kept for the next slot handed out.</param>
/// <param name="EmptyTokenSlots">Token places of live slots' mapped blocks past their lengths.</param>
/// <param name="StepTokens">Tokens of the last <see cref="VirtualKvCache.Append"/>.</param>
/// <param name="BlocksMappedAhead">Blocks the background thread mapped since creation (<see cref="VirtualKvCache.ReserveAhead"/>).</param>
/// <param name="BlocksMappedInline">Blocks the calling thread of an append, <see cref="VirtualKvCache.EnsureCapacity"/> or
/// fork mapped since creation.</param>
/// <param name="PagesCreated">Physical pages created since creation.</param>
public readonly record struct VirtualKvCacheStatistics(int Slots, long Tokens, int TokensPerBlock, ulong PageBytes, ulong BytesPerBlock,
    long BudgetPages, long MappedPages, long PooledPages, long SharedPages, long DeferredBlocks, long EmptyTokenSlots, long StepTokens,
    long BlocksMappedAhead, long BlocksMappedInline, long PagesCreated)
{
    /// <summary>Bytes of the pages mapped into some slot (a shared page counts once).</summary>
    public ulong BytesMapped => (ulong)MappedPages * PageBytes;

    /// <summary>Internal fragmentation: the fraction of live slots' mapped token places that hold no token (0 with none mapped).</summary>
    public double Fragmentation => Tokens + EmptyTokenSlots == 0 ? 0.0 : (double)EmptyTokenSlots / (Tokens + EmptyTokenSlots);
}

/// <summary>
/// A virtual-memory KV cache (vAttention's design, <c>nkv_virtual_kv_cache</c>): address space for MaxSlots slots of
/// MaxTokens tokens is reserved at creation, and physical pages of the backend's granularity are mapped as slots grow, so a
/// slot's K and V stay virtually contiguous and the contiguous kernels read them (<see cref="View"/>,
/// <see cref="Attention.Decode(AttentionPlan, TensorView, VirtualKvCache, int, TensorView, TensorView?)"/>). Slots grow and
/// shrink by whole blocks (page i of every region of a slot). A freed slot keeps its blocks mapped for the next slot handed
/// out until <see cref="Trim"/> or memory pressure; forks map the parent's filled pages into the child (shared, copied before
/// either writes into them) and copy the partly filled last one. A step is <see cref="Append"/> (all slots that grow, at
/// once) followed by one <see cref="Write(int, TensorView, TensorView)"/> per layer. Unmapping waits for the context's
/// stream; mapping never does. Disposing stops the background thread, waits for the context's outstanding work and
/// releases every page and the address space.
/// </summary>
public sealed unsafe class VirtualKvCache : IDisposable, IDeviceMemoryOwner
{
    /// <summary>Reserves the address space (no physical memory yet) on the context's device.</summary>
    /// <param name="context">The context whose memory holds the cache; it stays alive while the cache does.</param>
    /// <param name="options">The shape and capacity.</param>
    /// <exception cref="NativeKvInvalidArgumentException">An option is out of range (the message names it).</exception>
    /// <exception cref="NativeKvNotSupportedException">The device has no virtual memory management, or the slots have more
    /// rows than a step may address.</exception>
    /// <exception cref="NativeKvOutOfMemoryException">The address space or the device mirrors cannot be had.</exception>
    public VirtualKvCache(Context context, VirtualKvCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(context);
        var native = new NkvVirtualKvCacheOptions
        {
            StructSize = (uint)sizeof(NkvVirtualKvCacheOptions),
            Dtype = (int)options.DType,
            Layout = (int)options.Layout,
            NumLayers = options.NumLayers,
            NumHeadsKv = options.NumHeadsKv,
            HeadDim = options.HeadDim,
            MaxSlots = options.MaxSlots,
            MaxTokens = options.MaxTokens,
            ByteBudget = options.ByteBudget,
        };
        NativeStatus.Check(NativeMethods.nkv_virtual_kv_cache_create(context.Handle, &native, out nint raw));
        Context = context;
        Handle = new VirtualKvCacheHandle(raw, context.Handle);
        Options = options;
        try
        {
            NkvVirtualKvCacheInfo info = Info();
            RowsPerSlot = info.RowsPerSlot;
            TokensPerBlock = info.TokensPerBlock;
        }
        catch
        {
            Handle.Dispose();  // not left to the finalizer: the cache holds address space, pages and a thread
            throw;
        }
    }

    /// <summary>The context the cache lives on.</summary>
    public Context Context { get; }

    /// <summary>The native handle.</summary>
    public VirtualKvCacheHandle Handle { get; }

    NativeKvHandle IDeviceMemoryOwner.Handle => Handle;

    /// <summary>The options the cache was created with.</summary>
    public VirtualKvCacheOptions Options { get; }

    /// <summary>
    /// Rows per slot (at least MaxTokens: slots start on whole pages); the rows of <see cref="VirtualKvView.StepRows"/> count
    /// in them, slot · RowsPerSlot + token. Layer-major: rows of the K/V views seen as [MaxSlots · RowsPerSlot, NumHeadsKv,
    /// HeadDim]; token-major: row r is token r % TokensPerBlock of block r / TokensPerBlock of the views seen as [blocks,
    /// TokensPerBlock, NumHeadsKv, HeadDim].
    /// </summary>
    public long RowsPerSlot { get; }

    /// <summary>Whole tokens one block holds (layer-major: a token may straddle two blocks; token-major: blocks hold whole tokens).</summary>
    public int TokensPerBlock { get; }

    /// <summary>The current occupancy.</summary>
    public VirtualKvCacheStatistics Statistics
    {
        get
        {
            NkvVirtualKvCacheInfo info = Info();
            return new VirtualKvCacheStatistics(info.Slots, info.Tokens, info.TokensPerBlock, info.PageBytes, info.BytesPerBlock,
                info.BudgetPages, info.MappedPages, info.PooledPages, info.SharedPages, info.DeferredBlocks, info.EmptyTokenSlots,
                info.StepTokens, info.BlocksMappedAhead, info.BlocksMappedInline, info.PagesCreated);
        }
    }

    /// <summary>A new, empty slot.</summary>
    /// <returns>Its id: a freed slot with the most blocks still mapped, so its pages serve the new tokens.</returns>
    /// <exception cref="NativeKvOutOfMemoryException">MaxSlots slots are alive.</exception>
    public int AddSlot()
    {
        int slot;
        NativeStatus.Check(NativeMethods.nkv_virtual_kv_cache_add_slot(LiveHandle, &slot));
        return slot;
    }

    /// <summary>
    /// A new slot with the parent's tokens: the parent's filled pages are mapped, shared, into it; the partly filled last page
    /// is copied.
    /// </summary>
    /// <exception cref="NativeKvInvalidArgumentException"><paramref name="parent"/> is not alive.</exception>
    /// <exception cref="NativeKvOutOfMemoryException">MaxSlots slots are alive, or the copy of the last page finds no page
    /// (nothing changed).</exception>
    public int Fork(int parent)
    {
        int slot;
        NativeStatus.Check(NativeMethods.nkv_virtual_kv_cache_fork(LiveHandle, parent, &slot));
        return slot;
    }

    /// <summary>
    /// Shortens a slot to <paramref name="length"/> tokens (speculative-decoding rollback); its blocks stay mapped. If tokens
    /// of the last <see cref="Append"/> are cut off, that step is forgotten (<see cref="Write(int, TensorView, TensorView)"/>
    /// then expects 0 tokens); the same holds for <see cref="Free"/>.
    /// </summary>
    /// <exception cref="NativeKvInvalidArgumentException">The slot is not alive, or the length is negative or beyond its length.</exception>
    public void Truncate(int slot, int length) =>
        NativeStatus.Check(NativeMethods.nkv_virtual_kv_cache_truncate(LiveHandle, slot, length));

    /// <summary>Releases a slot; its id may be handed out again, and its blocks stay mapped for the next slot handed out.</summary>
    /// <exception cref="NativeKvInvalidArgumentException">The slot is not alive (never added, or freed already).</exception>
    public void Free(int slot) => NativeStatus.Check(NativeMethods.nkv_virtual_kv_cache_free_slot(LiveHandle, slot));

    /// <summary>
    /// Maps the blocks <paramref name="tokens"/> tokens of the slot need, on the calling thread (for a prefill about to append
    /// them). All or nothing: on any exception the slot's mapping and contents are as they were.
    /// </summary>
    /// <exception cref="NativeKvOutOfMemoryException">The budget or the device lacks the pages.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">The slot is not alive, or <paramref name="tokens"/> is negative or
    /// beyond MaxTokens.</exception>
    public void EnsureCapacity(int slot, int tokens) =>
        NativeStatus.Check(NativeMethods.nkv_virtual_kv_cache_ensure_capacity(LiveHandle, slot, tokens));

    /// <summary>
    /// Asks a background thread to map the blocks <paramref name="tokens"/> tokens of the slot need, and returns at once: an
    /// append into them then finds them mapped. Pages the thread cannot get (budget reached) are left to the append;
    /// <see cref="MappedTokens"/> tells how far it got.
    /// </summary>
    /// <exception cref="NativeKvInvalidArgumentException">The slot is not alive, or <paramref name="tokens"/> is negative or
    /// beyond MaxTokens.</exception>
    public void ReserveAhead(int slot, int tokens) =>
        NativeStatus.Check(NativeMethods.nkv_virtual_kv_cache_reserve_ahead(LiveHandle, slot, tokens));

    /// <summary>
    /// Unmaps every block that holds no token of a live slot (freed slots' blocks, blocks past a live slot's length) and
    /// returns every pooled page to the device, after waiting for the context's outstanding work.
    /// </summary>
    public void Trim() => NativeStatus.Check(NativeMethods.nkv_virtual_kv_cache_trim(LiveHandle));

    /// <summary>
    /// One step: each of <paramref name="slots"/> grows by the matching count of tokens, blocks mapped (and shared pages about
    /// to be written into copied) as needed. All or nothing: on any exception no slot's length, mapping or contents, nor the
    /// previous step, has changed.
    /// </summary>
    /// <param name="slots">Distinct alive slots.</param>
    /// <param name="tokenCounts">Tokens each grows by, &gt;= 0; the same length as <paramref name="slots"/>.</param>
    /// <exception cref="NativeKvOutOfMemoryException">The budget or the device lacks the pages the step needs.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A slot is not alive or repeated, a count is negative or would pass
    /// MaxTokens.</exception>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    public void Append(ReadOnlySpan<int> slots, ReadOnlySpan<int> tokenCounts) =>
        KvCacheSteps.Append(LiveHandle, slots, tokenCounts, nameof(slots), &NativeMethods.nkv_virtual_kv_cache_append);

    /// <summary>
    /// Stores the last step's K and V of one layer at their rows (<see cref="VirtualKvView.StepRows"/>); asynchronous on the
    /// context's stream.
    /// </summary>
    /// <param name="layer">0 .. NumLayers - 1.</param>
    /// <param name="k">[step tokens, NumHeadsKv, HeadDim] of the cache's dtype, the step's slots in order, unit last stride; on
    /// CUDA its data and strides 16-byte aligned.</param>
    /// <param name="v">The same for V.</param>
    /// <exception cref="NativeKvInvalidArgumentException">The layer is out of range or a tensor does not match the step.</exception>
    /// <exception cref="ArgumentException">A view's memory belongs to another context.</exception>
    /// <exception cref="ObjectDisposedException">The cache, or the memory behind a view, was disposed.</exception>
    public void Write(int layer, TensorView k, TensorView v) =>
        KvCacheSteps.Write(LiveHandle, Context, layer, k, v, &NativeMethods.nkv_virtual_kv_cache_write);

    /// <summary><see cref="Write(int, TensorView, TensorView)"/> from row-major host data of a CPU-backend cache; synchronous.</summary>
    /// <typeparam name="T">A 2-byte element type matching the cache's dtype (<see cref="Half"/> or <see cref="BFloat16"/>).</typeparam>
    /// <param name="layer">0 .. NumLayers - 1.</param>
    /// <param name="k">[step tokens, NumHeadsKv, HeadDim].</param>
    /// <param name="v">[step tokens, NumHeadsKv, HeadDim].</param>
    /// <exception cref="InvalidOperationException">The cache is not on a CPU-backend context.</exception>
    /// <exception cref="ArgumentException">A span is not a whole number of token rows.</exception>
    public void Write<T>(int layer, ReadOnlySpan<T> k, ReadOnlySpan<T> v) where T : unmanaged =>
        KvCacheSteps.WriteHost(LiveHandle, Context, Options.NumHeadsKv, Options.HeadDim, layer, k, v,
            &NativeMethods.nkv_virtual_kv_cache_write);

    /// <summary>
    /// A view of the cache's own memory (the context's device; host memory on the CPU backend), valid while the cache lives;
    /// its contents change with each call. Only tokens of mapped blocks (<see cref="MappedTokens"/>) may be read.
    /// </summary>
    /// <param name="which">K or V of a layer, the slot lengths or the last step's rows.</param>
    /// <param name="layer">The layer, for K and V.</param>
    /// <exception cref="NativeKvInvalidArgumentException">The layer or <paramref name="which"/> is out of range.</exception>
    public TensorView View(VirtualKvView which, int layer = 0)
    {
        NkvTensor view;
        NativeStatus.Check(NativeMethods.nkv_virtual_kv_cache_view(LiveHandle, (int)which, layer, &view));
        return TensorView.FromNative(view, this);
    }

    /// <summary>A slot's length in tokens.</summary>
    /// <exception cref="NativeKvInvalidArgumentException">The slot is not alive.</exception>
    public int SlotLength(int slot) => Slot(slot).Length;

    /// <summary>The tokens a slot's mapped blocks hold (at most MaxTokens): how far it may grow without mapping.</summary>
    /// <exception cref="NativeKvInvalidArgumentException">The slot is not alive.</exception>
    public long MappedTokens(int slot) => Slot(slot).MappedTokens;

    /// <summary>Destroys the cache and releases its pages, after waiting for the context's outstanding work (which may still read them).</summary>
    public void Dispose() => Handle.Dispose();

    /// <inheritdoc />
    public override string ToString() =>
        $"VirtualKvCache({Options.NumLayers} layers x {Options.NumHeadsKv} x {Options.HeadDim} {Options.DType}, {Options.Layout}, {Options.MaxSlots} slots of {Options.MaxTokens}, {Context})";

    private VirtualKvCacheHandle LiveHandle
    {
        get
        {
            ObjectDisposedException.ThrowIf(Handle.IsClosed, this);
            return Handle;
        }
    }

    private NkvVirtualKvCacheInfo Info()
    {
        var info = new NkvVirtualKvCacheInfo { StructSize = (uint)sizeof(NkvVirtualKvCacheInfo) };
        NativeStatus.Check(NativeMethods.nkv_virtual_kv_cache_get_info(LiveHandle, &info));
        return info;
    }

    private (int Length, long MappedTokens) Slot(int slot)
    {
        int length;
        long mappedTokens;
        NativeStatus.Check(NativeMethods.nkv_virtual_kv_cache_slot(LiveHandle, slot, &length, &mappedTokens));
        return (length, mappedTokens);
    }
}
