using NativeKv.Interop;

namespace NativeKv;

/// <summary>The encoding, shape and capacity of a <see cref="QuantizedKvCache"/> (<c>nkv_quantized_kv_cache_options</c>).</summary>
/// <param name="Format">The encoding: <see cref="KvFormat.Kivi"/> or <see cref="KvFormat.Bfp"/>.</param>
/// <param name="Bits">KIVI: code bits b, 2 or 4 (8 for testing). BFP: mantissa bits m, 4 (BFP12) or 8 (BFP16).</param>
/// <param name="GroupSize">KIVI: values per group G, 32, 64 or 128, at most <paramref name="HeadDim"/> (a value group lies within
/// one head). BFP: channels per block n, 16, 32 or 64, at most <paramref name="HeadDim"/>.</param>
/// <param name="Residual">KIVI: newest tokens each slot keeps in float16, the residual window R: a positive multiple of
/// <paramref name="GroupSize"/>, or 0 for 128. BFP: 0 (no residual window).</param>
/// <param name="NumLayers">Layers, &gt;= 1; one cache covers them all.</param>
/// <param name="NumHeadsKv">KV heads per layer, &gt;= 1.</param>
/// <param name="HeadDim">Elements per head row: 64 or 128.</param>
/// <param name="MaxSlots">Slots alive at once (ids 0 .. MaxSlots - 1), &gt;= 1.</param>
/// <param name="MaxTokens">Tokens per slot at most, &gt;= 1; memory for them is allocated up front. On CUDA a slot's code words
/// (capacity x NumHeadsKv x HeadDim x Bits / 32) must stay below 2^32.</param>
/// <param name="ValueFormat">BFP: <see cref="KvValueFormat.Fp16"/> keeps the values as written; otherwise (and for KIVI)
/// <see cref="KvValueFormat.LikeKeys"/>.</param>
/// <param name="Memory"><see cref="KvMemory.Virtual"/> maps pages as slots grow (an append that finds no memory changes
/// nothing) and returns them when slots are freed; <see cref="KvMemory.Paged"/> takes pages of <paramref name="PageSize"/>
/// tokens from a pool; <see cref="KvMemory.Allocated"/> allocates everything up front.</param>
/// <param name="PageSize"><see cref="KvMemory.Paged"/>: tokens per page, a power of two from 16 to 4096 (KIVI: a multiple of
/// <paramref name="GroupSize"/>); otherwise 0.</param>
/// <param name="MaxPages"><see cref="KvMemory.Paged"/>: pages in the pool, or 0 for enough to fill every slot to
/// <paramref name="MaxTokens"/>; otherwise 0.</param>
public readonly record struct QuantizedKvCacheOptions(
    KvFormat Format,
    int Bits,
    int GroupSize,
    int Residual,
    int NumLayers,
    int NumHeadsKv,
    int HeadDim,
    int MaxSlots,
    int MaxTokens,
    KvValueFormat ValueFormat = KvValueFormat.LikeKeys,
    KvMemory Memory = KvMemory.Allocated,
    int PageSize = 0,
    int MaxPages = 0)
{
    /// <summary>KIVI-2: 2-bit codes, keys per channel and values per token in groups of <paramref name="groupSize"/>, the
    /// newest <paramref name="residual"/> tokens in float16 (3 bits per element at G = 32, plus the window).</summary>
    public static QuantizedKvCacheOptions Kivi2(int numLayers, int numHeadsKv, int headDim, int maxSlots, int maxTokens, int groupSize = 32,
        int residual = 128, KvMemory memory = KvMemory.Allocated) =>
        new(KvFormat.Kivi, 2, groupSize, residual, numLayers, numHeadsKv, headDim, maxSlots, maxTokens, KvValueFormat.LikeKeys, memory);

    /// <summary>KIVI-4: as <see cref="Kivi2"/> with 4-bit codes (5 bits per element at G = 32, plus the window).</summary>
    public static QuantizedKvCacheOptions Kivi4(int numLayers, int numHeadsKv, int headDim, int maxSlots, int maxTokens, int groupSize = 32,
        int residual = 128, KvMemory memory = KvMemory.Allocated) =>
        new(KvFormat.Kivi, 4, groupSize, residual, numLayers, numHeadsKv, headDim, maxSlots, maxTokens, KvValueFormat.LikeKeys, memory);

    /// <summary>BFP12: 4-bit mantissas with an 8-bit exponent per block of <paramref name="blockSize"/> channels (4.25 bits per
    /// element at n = 32); values as keys, or float16 with <see cref="KvValueFormat.Fp16"/>.</summary>
    public static QuantizedKvCacheOptions Bfp12(int numLayers, int numHeadsKv, int headDim, int maxSlots, int maxTokens, int blockSize = 32,
        KvValueFormat valueFormat = KvValueFormat.LikeKeys, KvMemory memory = KvMemory.Allocated) =>
        new(KvFormat.Bfp, 4, blockSize, 0, numLayers, numHeadsKv, headDim, maxSlots, maxTokens, valueFormat, memory);

    /// <summary>BFP16: as <see cref="Bfp12"/> with 8-bit mantissas (8.25 bits per element at n = 32).</summary>
    public static QuantizedKvCacheOptions Bfp16(int numLayers, int numHeadsKv, int headDim, int maxSlots, int maxTokens, int blockSize = 32,
        KvValueFormat valueFormat = KvValueFormat.LikeKeys, KvMemory memory = KvMemory.Allocated) =>
        new(KvFormat.Bfp, 8, blockSize, 0, numLayers, numHeadsKv, headDim, maxSlots, maxTokens, valueFormat, memory);
}

/// <summary>A snapshot of a <see cref="QuantizedKvCache"/>'s encoding and occupancy (<c>nkv_quantized_kv_cache_info</c>).</summary>
/// <param name="Format">The encoding.</param>
/// <param name="Bits">Code bits b.</param>
/// <param name="GroupSize">Values per group G.</param>
/// <param name="Residual">The residual window R in effect (128 when the options said 0).</param>
/// <param name="MaxSlots">Slots alive at once at most.</param>
/// <param name="Slots">Slots alive now.</param>
/// <param name="Capacity">Tokens the layout of a slot holds: MaxTokens rounded up to a multiple of R.</param>
/// <param name="Tokens">The sum of the alive slots' lengths.</param>
/// <param name="StepTokens">Tokens of the last <see cref="QuantizedKvCache.Append"/>.</param>
/// <param name="Bytes">The cache's layout, every layer and slot (codes, groups and residuals); with
/// <see cref="KvMemory.Virtual"/> its address space.</param>
/// <param name="MappedBytes">Physical memory held: <paramref name="Bytes"/> when allocated or paged, the mapped pages with
/// <see cref="KvMemory.Virtual"/>.</param>
/// <param name="PageSize"><see cref="KvMemory.Paged"/>: tokens per page, else 0.</param>
/// <param name="MaxPages"><see cref="KvMemory.Paged"/>: pages in the pool, else 0.</param>
/// <param name="FreePages"><see cref="KvMemory.Paged"/>: pages no slot holds, else 0.</param>
public readonly record struct QuantizedKvCacheInfo(KvFormat Format, int Bits, int GroupSize, int Residual, int MaxSlots, int Slots,
    int Capacity, long Tokens, long StepTokens, ulong Bytes, ulong MappedBytes, int PageSize = 0, int MaxPages = 0, int FreePages = 0);

/// <summary>
/// A quantized KV cache (KIVI or block floating point, <c>nkv_quantized_kv_cache</c>; described here for KIVI): slots of up to MaxTokens tokens whose K and V are kept, in the
/// context's memory, as b-bit codes of groups of G values with a float16 scale and minimum (<see cref="KvFormat.Kivi"/>: keys
/// per channel, values per token), except each slot's newest tokens, a residual window of R tokens kept in float16. Of a
/// slot's T tokens, keys 0 .. T - T % R - 1 are quantized (a key waits in the residual until R keys are there, so no group is
/// quantized from fewer than G tokens) and values 0 .. T - R - 1 (a value is quantized once R newer tokens follow it); whether
/// a slot's tokens came in one append or in many, its codes are the same bit for bit. K and V are float16 only, finite and
/// within float16's range. A step is <see cref="Append"/> (all slots that grow, at once) followed by one
/// <see cref="Write(int, TensorView, TensorView)"/> per layer, which stores and quantizes the step's K and V;
/// <see cref="Attention.Decode(AttentionPlan, TensorView, QuantizedKvCache, int, TensorView, TensorView?)"/> reads a layer in
/// place. Disposing waits for the context's outstanding work and frees the memory.
/// </summary>
public sealed unsafe class QuantizedKvCache : IDisposable, IDeviceMemoryOwner
{
    /// <summary>Allocates every layer's codes, groups and residuals (uninitialized) in the context's memory.</summary>
    /// <param name="context">The context whose memory holds the cache; it stays alive while the cache does.</param>
    /// <param name="options">The encoding, shape and capacity.</param>
    /// <exception cref="NativeKvInvalidArgumentException">An option is out of range (the message names it): an unknown format,
    /// bits or a group (block) size the format does not have or a group above the head dimension, a head dimension other than
    /// 64 or 128, a KIVI residual that is not a multiple of the group size (a BFP one other than 0), a count below 1, a page size
    /// that is not a power of two from 16 to 4096 (KIVI: a multiple of the group size) or page fields without
    /// <see cref="KvMemory.Paged"/>.</exception>
    /// <exception cref="NativeKvNotSupportedException">The capacity or the bytes overflow what the library addresses.</exception>
    /// <exception cref="NativeKvOutOfMemoryException">The context's device lacks the memory.</exception>
    public QuantizedKvCache(Context context, QuantizedKvCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(context);
        var native = new NkvQuantizedKvCacheOptions
        {
            StructSize = (uint)sizeof(NkvQuantizedKvCacheOptions),
            Format = (int)options.Format,
            Bits = options.Bits,
            GroupSize = options.GroupSize,
            Residual = options.Residual,
            NumLayers = options.NumLayers,
            NumHeadsKv = options.NumHeadsKv,
            HeadDim = options.HeadDim,
            MaxSlots = options.MaxSlots,
            MaxTokens = options.MaxTokens,
            ValueFormat = (int)options.ValueFormat,
            Memory = (int)options.Memory,
            PageSize = options.PageSize,
            MaxPages = options.MaxPages,
        };
        NativeStatus.Check(NativeMethods.nkv_quantized_kv_cache_create(context.Handle, &native, out nint raw));
        Context = context;
        Handle = new QuantizedKvCacheHandle(raw, context.Handle);
        Options = options;
        try
        {
            NkvQuantizedKvCacheInfo info = NativeInfo();
            Residual = info.Residual;
            Capacity = info.Capacity;
        }
        catch
        {
            Handle.Dispose();  // not left to the finalizer: the cache holds the context's memory
            throw;
        }
    }

    /// <summary>The context the cache lives on.</summary>
    public Context Context { get; }

    /// <summary>The native handle.</summary>
    public QuantizedKvCacheHandle Handle { get; }

    NativeKvHandle IDeviceMemoryOwner.Handle => Handle;

    /// <summary>The options the cache was created with.</summary>
    public QuantizedKvCacheOptions Options { get; }

    /// <summary>The residual window R in effect: the newest tokens of each slot kept in float16 (128 when the options said 0).</summary>
    public int Residual { get; }

    /// <summary>Tokens the layout of a slot holds: MaxTokens rounded up to a multiple of <see cref="Residual"/> (the token extent of
    /// the <see cref="QuantizedKvView"/> arrays).</summary>
    public int Capacity { get; }

    /// <summary>The encoding and current occupancy.</summary>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    public QuantizedKvCacheInfo Info
    {
        get
        {
            NkvQuantizedKvCacheInfo info = NativeInfo();
            return new QuantizedKvCacheInfo((KvFormat)info.Format, info.Bits, info.GroupSize, info.Residual, info.MaxSlots, info.Slots,
                info.Capacity, info.Tokens, info.StepTokens, info.Bytes, info.MappedBytes, info.PageSize, info.MaxPages, info.FreePages);
        }
    }

    /// <summary>A new, empty slot.</summary>
    /// <returns>Its id: the lowest free one.</returns>
    /// <exception cref="NativeKvOutOfMemoryException">MaxSlots slots are alive.</exception>
    public int AddSlot()
    {
        int slot;
        NativeStatus.Check(NativeMethods.nkv_quantized_kv_cache_add_slot(LiveHandle, &slot));
        return slot;
    }

    /// <summary>Releases a slot; its id may be handed out again. If the slot was in the last <see cref="Append"/>, that step is
    /// forgotten (<see cref="Write(int, TensorView, TensorView)"/> then expects 0 tokens), which needs every layer of the step
    /// written first: the step's other slots would otherwise keep tokens that were never stored.</summary>
    /// <exception cref="NativeKvInvalidArgumentException">The slot is not alive (never added, or freed already), or it is in a
    /// step with layers not yet written.</exception>
    public void Free(int slot) => NativeStatus.Check(NativeMethods.nkv_quantized_kv_cache_free_slot(LiveHandle, slot));

    /// <summary>
    /// One step: each of <paramref name="slots"/> grows by the matching count of tokens. All or nothing: on any exception no
    /// slot's length, nor the previous step, has changed.
    /// </summary>
    /// <param name="slots">Distinct alive slots.</param>
    /// <param name="tokenCounts">Tokens each grows by, &gt;= 0; the same length as <paramref name="slots"/>.</param>
    /// <exception cref="NativeKvInvalidArgumentException">A slot is not alive or repeated, a count is negative or would pass
    /// MaxTokens.</exception>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    public void Append(ReadOnlySpan<int> slots, ReadOnlySpan<int> tokenCounts) =>
        KvCacheSteps.Append(LiveHandle, slots, tokenCounts, nameof(slots), &NativeMethods.nkv_quantized_kv_cache_append);

    /// <summary>
    /// Stores the last step's K and V of one layer; keys whose residual fills and values that leave the window are quantized
    /// now. Once per layer and step: the write moves the layer's residual on, so a second write of the same layer in one step
    /// is refused; a layer not written in a step holds unspecified values for that step's tokens. Asynchronous on the
    /// context's stream.
    /// </summary>
    /// <param name="layer">0 .. NumLayers - 1.</param>
    /// <param name="k">float16 [step tokens, NumHeadsKv, HeadDim] in the context's memory, the step's slots in order, unit last
    /// stride; on CUDA its rows 16-byte aligned.</param>
    /// <param name="v">The same for V.</param>
    /// <exception cref="NativeKvInvalidArgumentException">The layer is out of range or was already written in this step, or a
    /// tensor does not match the step.</exception>
    /// <exception cref="ArgumentException">A view's memory belongs to another context.</exception>
    /// <exception cref="ObjectDisposedException">The cache, or the memory behind a view, was disposed.</exception>
    public void Write(int layer, TensorView k, TensorView v) =>
        KvCacheSteps.Write(LiveHandle, Context, layer, k, v, &NativeMethods.nkv_quantized_kv_cache_write);

    /// <summary><see cref="Write(int, TensorView, TensorView)"/> from row-major host data of a CPU-backend cache; synchronous.</summary>
    /// <param name="layer">0 .. NumLayers - 1.</param>
    /// <param name="k">[step tokens, NumHeadsKv, HeadDim].</param>
    /// <param name="v">[step tokens, NumHeadsKv, HeadDim].</param>
    /// <exception cref="InvalidOperationException">The cache is not on a CPU-backend context.</exception>
    /// <exception cref="ArgumentException">A span is not a whole number of token rows.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">The layer is out of range or was already written in this step, or the
    /// rows do not match the step.</exception>
    public void Write(int layer, ReadOnlySpan<Half> k, ReadOnlySpan<Half> v) =>
        KvCacheSteps.WriteHost(LiveHandle, Context, Options.NumHeadsKv, Options.HeadDim, layer, k, v,
            &NativeMethods.nkv_quantized_kv_cache_write);

    /// <summary>
    /// A view of the cache's own memory (the context's device; host memory on the CPU backend), valid while the cache lives;
    /// read it, never write it. Its contents change with each write.
    /// </summary>
    /// <param name="which">One of a layer's codes, groups or residuals, or the slot lengths.</param>
    /// <param name="layer">The layer; ignored for <see cref="QuantizedKvView.SlotLengths"/>.</param>
    /// <exception cref="NativeKvInvalidArgumentException">The layer or <paramref name="which"/> is out of range.</exception>
    public TensorView View(QuantizedKvView which, int layer = 0)
    {
        NkvTensor view;
        NativeStatus.Check(NativeMethods.nkv_quantized_kv_cache_view(LiveHandle, (int)which, layer, &view));
        return TensorView.FromNative(view, this);
    }

    /// <summary>
    /// Stores <paramref name="layer"/>'s keys with their channels in this order from now on (<see cref="KSort.Calibrate(ReadOnlySpan{float}, int, int, RotaryPairs)"/>):
    /// position j of head h holds written channel permutation[h * HeadDim + j]; decode orders the queries alike. Only while the
    /// cache holds no tokens.
    /// </summary>
    /// <exception cref="NativeKvInvalidArgumentException">The layer is out of range, a head's entries are not a permutation, or
    /// the cache holds tokens.</exception>
    /// <exception cref="NativeKvNotSupportedException">The cache is on a CUDA context.</exception>
    public void SetKeyPermutation(int layer, ReadOnlySpan<int> permutation)
    {
        if (permutation.Length != Options.NumHeadsKv * Options.HeadDim)
        {
            throw new ArgumentException($"expected {Options.NumHeadsKv * Options.HeadDim} entries (NumHeadsKv x HeadDim), got {permutation.Length}",
                nameof(permutation));
        }
        fixed (int* p = permutation)
        {
            NativeStatus.Check(NativeMethods.nkv_quantized_kv_cache_set_key_permutation(LiveHandle, layer, p));
        }
    }

    /// <summary>A slot's length in tokens.</summary>
    /// <exception cref="NativeKvInvalidArgumentException">The slot is not alive.</exception>
    public int SlotLength(int slot)
    {
        int length;
        NativeStatus.Check(NativeMethods.nkv_quantized_kv_cache_slot(LiveHandle, slot, &length));
        return length;
    }

    /// <summary>Destroys the cache and frees its memory, after waiting for the context's outstanding work (which may still read it).</summary>
    public void Dispose() => Handle.Dispose();

    /// <inheritdoc />
    public override string ToString() =>
        $"QuantizedKvCache({Options.Format}-{Options.Bits}, G {Options.GroupSize}, R {Residual}, {Options.NumLayers} layers x {Options.NumHeadsKv} x {Options.HeadDim}, {Options.MaxSlots} slots of {Options.MaxTokens}, {Context})";

    /// <summary>The handle, or <see cref="ObjectDisposedException"/> when the cache was disposed.</summary>
    internal QuantizedKvCacheHandle LiveHandle
    {
        get
        {
            ObjectDisposedException.ThrowIf(Handle.IsClosed, this);
            return Handle;
        }
    }

    private NkvQuantizedKvCacheInfo NativeInfo()
    {
        var info = new NkvQuantizedKvCacheInfo { StructSize = (uint)sizeof(NkvQuantizedKvCacheInfo) };
        NativeStatus.Check(NativeMethods.nkv_quantized_kv_cache_get_info(LiveHandle, &info));
        return info;
    }
}
