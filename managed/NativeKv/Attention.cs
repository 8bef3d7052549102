using System.Runtime.InteropServices;
using NativeKv.Interop;

namespace NativeKv;

/// <summary>
/// Attention with FlashAttention semantics. For a sequence of lq queries over lk keys, query head h reads key/value
/// head <c>h / (numHeadsQ / numHeadsKv)</c> (GQA, MQA) and
/// <c>s[i][j] = softmaxScale · q[i]·k[j]</c>, soft-capped to <c>softcap · tanh(s / softcap)</c> when a soft-cap is set;
/// with <see cref="AttentionOptions.Causal"/>, key j is visible to query i when <c>j &lt;= i + (lk - lq)</c> (the mask
/// is aligned to the bottom-right corner, so a chunk of new queries sees the whole cache: chunked prefill), and with a
/// <see cref="AttentionOptions.WindowLeft"/> also when <c>j &gt;= i + (lk - lq) - windowLeft</c>.
/// <c>O[i] = Σ softmax(s[i])[j] · V[j]</c> over the visible keys and <c>LSE[i] = ln Σ exp(s[i][j])</c>; a query that sees
/// no key gets O = 0 and LSE = -∞. Q, K, V and O are float16 or bfloat16 (all the same), the head dimension is 64, 96,
/// 128 or 256, LSE is float32.
/// </summary>
/// <remarks>
/// Work is described once by an <see cref="AttentionPlan"/>, made from host-side lengths, and run any number of times
/// (once per layer, say) on the plan's context's stream. Two flavours of run: <see cref="TensorView"/> overloads
/// (asynchronous on CUDA, nothing allocated: what an engine calls) and host-span overloads for the CPU backend
/// (synchronous, contiguous data of any alignment). Only what the native library cannot see is checked here (span lengths,
/// disposed objects); everything else, overlaps included, comes back from it as a <see cref="NativeKvException"/> naming
/// the argument.
/// </remarks>
public static unsafe class Attention
{
    /// <summary>
    /// Plans varlen (packed) attention: sequence b owns query rows <c>[cuSeqlensQ[b], cuSeqlensQ[b+1])</c> and key rows
    /// <c>[cuSeqlensK[b], cuSeqlensK[b+1])</c>. Lengths may differ between Q and K, and may be 0.
    /// </summary>
    /// <param name="context">The context the plan runs on; it stays alive while the plan does.</param>
    /// <param name="numHeadsQ">Query heads, a multiple of <paramref name="numHeadsKv"/>.</param>
    /// <param name="numHeadsKv">Key/value heads.</param>
    /// <param name="headDim">64, 96, 128 or 256.</param>
    /// <param name="cuSeqlensQ">batch + 1 query row offsets, from 0, non-decreasing; copied.</param>
    /// <param name="cuSeqlensK">batch + 1 key row offsets, from 0, non-decreasing; copied.</param>
    /// <param name="options">The mask and scale; null for non-causal, 1/√headDim, no soft-cap, no window.
    /// <see cref="AttentionOptions.NumSplits"/> must be 0.</param>
    /// <exception cref="ArgumentException">The offset arrays are empty or of different lengths.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A count, an offset or an option is out of range.</exception>
    /// <exception cref="NativeKvNotSupportedException">The head dimension is not supported.</exception>
    public static AttentionPlan PlanVarlen(Context context, int numHeadsQ, int numHeadsKv, int headDim, ReadOnlySpan<int> cuSeqlensQ,
        ReadOnlySpan<int> cuSeqlensK, AttentionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (cuSeqlensQ.IsEmpty)
        {
            throw new ArgumentException("cu_seqlens hold batch + 1 row offsets starting at 0; got none.", nameof(cuSeqlensQ));
        }
        if (cuSeqlensK.Length != cuSeqlensQ.Length)
        {
            throw new ArgumentException(
                $"cuSeqlensK must hold as many offsets as cuSeqlensQ (batch + 1 = {cuSeqlensQ.Length}); got {cuSeqlensK.Length}.",
                nameof(cuSeqlensK));
        }
        NkvAttentionOptions nativeOptions = (options ?? default).ToNative();
        nint raw;
        fixed (int* q = cuSeqlensQ)
        fixed (int* k = cuSeqlensK)
        {
            NativeStatus.Check(NativeMethods.nkv_attention_plan_varlen(context.Handle, options is null ? null : &nativeOptions,
                numHeadsQ, numHeadsKv, headDim, cuSeqlensQ.Length - 1, q, k, out raw));
        }
        return AttentionPlan.Wrap(context, raw);
    }

    /// <summary>
    /// Plans decode attention over a KV cache (flash-decoding): every sequence has <paramref name="qLen"/> new queries over
    /// <c>seqlensK[b]</c> keys, which include the new tokens' own keys.
    /// </summary>
    /// <param name="context">The context the plan runs on; it stays alive while the plan does.</param>
    /// <param name="numHeadsQ">Query heads, a multiple of <paramref name="numHeadsKv"/>.</param>
    /// <param name="numHeadsKv">Key/value heads.</param>
    /// <param name="headDim">64, 96, 128 or 256.</param>
    /// <param name="qLen">New queries per sequence, 1 to 16.</param>
    /// <param name="seqlensK">Keys of each sequence (one entry per sequence, each &gt;= 0); copied.</param>
    /// <param name="options">The mask, scale and key split; null for non-causal, 1/√headDim, no soft-cap, no window,
    /// split chosen from the device.</param>
    /// <exception cref="NativeKvInvalidArgumentException">A count, a length or an option is out of range.</exception>
    /// <exception cref="NativeKvNotSupportedException">The head dimension is not supported.</exception>
    public static AttentionPlan PlanDecode(Context context, int numHeadsQ, int numHeadsKv, int headDim, int qLen, ReadOnlySpan<int> seqlensK,
        AttentionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        NkvAttentionOptions nativeOptions = (options ?? default).ToNative();
        nint raw;
        fixed (int* k = seqlensK)
        {
            NativeStatus.Check(NativeMethods.nkv_attention_plan_decode(context.Handle, options is null ? null : &nativeOptions,
                numHeadsQ, numHeadsKv, headDim, seqlensK.Length, qLen, k, out raw));
        }
        return AttentionPlan.Wrap(context, raw);
    }

    /// <summary>Runs a varlen plan; asynchronous on the plan's context's stream.</summary>
    /// <param name="plan">A plan from <see cref="PlanVarlen"/>.</param>
    /// <param name="q">[rowsQ &gt;= TotalQ, numHeadsQ, headDim] float16/bfloat16; any row and head strides, unit last stride.</param>
    /// <param name="k">[rowsK &gt;= TotalK, numHeadsKv, headDim] (packed: sequence b's keys are rows cuSeqlensK[b] ..
    /// cuSeqlensK[b + 1] - 1), or [batch, capacity, numHeadsKv, headDim] (batched, as <see cref="Decode(AttentionPlan,
    /// TensorView, TensorView, TensorView, TensorView, TensorView?)"/> takes them: sequence b's keys are the first tokens of
    /// entry b; any batch, token and head strides; runs the SM80 kernel family), or batched in blocks of tokens, [batch,
    /// blocks, blockTokens, numHeadsKv, headDim] (token t in block t / blockTokens; a token-major
    /// <see cref="VirtualKvCache"/>'s views); the dtype of <paramref name="q"/>.</param>
    /// <param name="v">Shaped like <paramref name="k"/>.</param>
    /// <param name="o">[rowsQ, numHeadsQ, headDim]: receives the output; rows past TotalQ are left untouched.</param>
    /// <param name="lse">[numHeadsQ, rowsQ] float32 with unit last stride: receives the log-sum-exp; or null.</param>
    /// <exception cref="ObjectDisposedException">The plan, or the buffer behind a view, was disposed.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor is malformed, or the plan is a decode plan.</exception>
    /// <exception cref="NativeKvNotSupportedException">Batched K/V with a plan made for <see cref="AttentionKernel.Sm90"/>.</exception>
    public static void Varlen(AttentionPlan plan, TensorView q, TensorView k, TensorView v, TensorView o, TensorView? lse = null) =>
        RunViews(plan, q, k, v, o, lse, ViewOp.Varlen);

    /// <summary>
    /// Runs a varlen plan over a paged KV cache (FlashInfer's paged prefill; a <see cref="PagedKvCache"/>'s pools or an
    /// engine's own): sequence b's keys, as many as cu_seqlens_k gives it, are the first tokens of the pages its block-table
    /// row lists. For chunked prefill, append the chunk to the cache first: its queries then see the cached prefix and
    /// themselves through the bottom-right causal mask. Runs the SM80 kernel family; the result equals
    /// <see cref="Varlen(AttentionPlan, TensorView, TensorView, TensorView, TensorView, TensorView?)"/> with that family on
    /// the same keys packed contiguously. Asynchronous on the plan's context's stream.
    /// </summary>
    /// <param name="plan">A plan from <see cref="PlanVarlen"/>, not made for <see cref="AttentionKernel.Sm90"/>.</param>
    /// <param name="q">[rowsQ &gt;= TotalQ, numHeadsQ, headDim] float16/bfloat16; any row and head strides, unit last stride.</param>
    /// <param name="kPool">[numPages, pageSize, numHeadsKv, headDim] of q's dtype, contiguous; pageSize a power of two &lt;= 256.</param>
    /// <param name="vPool">Shaped like <paramref name="kPool"/>.</param>
    /// <param name="blockTable">int32 [rows &gt;= batch, columns], unit last stride: row b lists sequence b's pages in token order.</param>
    /// <param name="o">[rowsQ, numHeadsQ, headDim]: receives the output; rows past TotalQ are left untouched.</param>
    /// <param name="lse">[numHeadsQ, rowsQ] float32 with unit last stride: receives the log-sum-exp; or null.</param>
    /// <remarks>The library cannot check the page ids in the table: each must name a page of the pools.</remarks>
    /// <exception cref="ObjectDisposedException">The plan, or the memory behind a view, was disposed.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor is malformed, the table too narrow, or the plan is a decode plan.</exception>
    /// <exception cref="NativeKvNotSupportedException">The plan was made for <see cref="AttentionKernel.Sm90"/>.</exception>
    public static void VarlenPaged(AttentionPlan plan, TensorView q, TensorView kPool, TensorView vPool, TensorView blockTable,
        TensorView o, TensorView? lse = null)
    {
        ArgumentNullException.ThrowIfNull(blockTable);
        RunViews(plan, q, kPool, vPool, o, lse, ViewOp.VarlenPaged, kName: nameof(kPool), vName: nameof(vPool), blockTable: blockTable);
    }

    /// <summary>
    /// Runs a varlen plan over one layer of a <see cref="PagedKvCache"/>, sequence b of the plan being sequence id b of the
    /// cache (cu_seqlens_k giving at most its length): <see cref="VarlenPaged"/> on the cache's pools and block table.
    /// </summary>
    /// <param name="plan">A plan from <see cref="PlanVarlen"/> on the cache's context.</param>
    /// <param name="q">[rowsQ &gt;= TotalQ, numHeadsQ, headDim] of the cache's dtype, unit last stride.</param>
    /// <param name="cache">The cache; batch &lt;= its MaxSequences.</param>
    /// <param name="layer">The layer whose pools are read.</param>
    /// <param name="o">[rowsQ, numHeadsQ, headDim]: receives the output.</param>
    /// <param name="lse">[numHeadsQ, rowsQ] float32 with unit last stride: receives the log-sum-exp; or null.</param>
    /// <exception cref="ObjectDisposedException">The plan or the cache was disposed.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor or the layer is malformed, or the plan does not fit the cache.</exception>
    /// <exception cref="NativeKvNotSupportedException">The plan was made for <see cref="AttentionKernel.Sm90"/>.</exception>
    public static void Varlen(AttentionPlan plan, TensorView q, PagedKvCache cache, int layer, TensorView o, TensorView? lse = null)
    {
        ArgumentNullException.ThrowIfNull(cache);
        VarlenPaged(plan, q, cache.View(PagedKvView.KPool, layer), cache.View(PagedKvView.VPool, layer), cache.View(PagedKvView.BlockTable),
            o, lse);
    }

    /// <summary>Runs a decode plan; asynchronous on the plan's context's stream.</summary>
    /// <param name="plan">A plan from <see cref="PlanDecode"/>.</param>
    /// <param name="q">[batch, qLen, numHeadsQ, headDim] float16/bfloat16, unit last stride.</param>
    /// <param name="k">[batch, capacity, numHeadsKv, headDim] with capacity &gt;= every seqlensK[b]; any batch, token and
    /// head strides (layers may be interleaved), unit last stride; or in blocks of tokens, [batch, blocks, blockTokens,
    /// numHeadsKv, headDim] with capacity blocks · blockTokens (token t in block t / blockTokens; a token-major
    /// <see cref="VirtualKvCache"/>'s views).</param>
    /// <param name="v">Shaped like <paramref name="k"/>.</param>
    /// <param name="o">[batch, qLen, numHeadsQ, headDim]: receives the output.</param>
    /// <param name="lse">[batch, numHeadsQ, qLen] float32 with unit last stride: receives the log-sum-exp; or null.</param>
    /// <exception cref="ObjectDisposedException">The plan, or the buffer behind a view, was disposed.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor is malformed, or the plan is a varlen plan.</exception>
    public static void Decode(AttentionPlan plan, TensorView q, TensorView k, TensorView v, TensorView o, TensorView? lse = null) =>
        RunViews(plan, q, k, v, o, lse, ViewOp.Decode);

    /// <summary>
    /// Runs a decode plan over K and V that each sequence keeps wherever the engine put it (a base-pointer table);
    /// asynchronous on the plan's context's stream.
    /// </summary>
    /// <param name="plan">A plan from <see cref="PlanDecode"/>.</param>
    /// <param name="q">[batch, qLen, numHeadsQ, headDim] float16/bfloat16, unit last stride.</param>
    /// <param name="kPointers">[batch] int64 on the context's device: the address of token 0, KV head 0 of each sequence's
    /// keys (memory of the same device, 16-byte aligned on CUDA, q's dtype, unit last stride).</param>
    /// <param name="vPointers">Likewise for the values.</param>
    /// <param name="tokenStride">Elements between consecutive tokens of a sequence (a multiple of 8 on CUDA).</param>
    /// <param name="headStride">Elements between KV heads (a multiple of 8 on CUDA).</param>
    /// <param name="o">[batch, qLen, numHeadsQ, headDim]: receives the output.</param>
    /// <param name="lse">[batch, numHeadsQ, qLen] float32 with unit last stride: receives the log-sum-exp; or null.</param>
    /// <remarks>The library cannot check the addresses in the tables: sequence b must have seqlensK[b] readable tokens.</remarks>
    /// <exception cref="ObjectDisposedException">The plan, or the buffer behind a view, was disposed.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor or stride is malformed, or the plan is a varlen plan.</exception>
    public static void DecodeWithKvPointers(AttentionPlan plan, TensorView q, TensorView kPointers, TensorView vPointers,
        long tokenStride, long headStride, TensorView o, TensorView? lse = null) =>
        RunViews(plan, q, kPointers, vPointers, o, lse, ViewOp.DecodeKvPointers, tokenStride, headStride, nameof(kPointers),
            nameof(vPointers));

    /// <summary>
    /// Runs a decode plan over a paged KV cache (vLLM's layout: pools of pages and a block table, a
    /// <see cref="PagedKvCache"/>'s or an engine's own); asynchronous on the plan's context's stream. The result equals
    /// <see cref="Decode(AttentionPlan, TensorView, TensorView, TensorView, TensorView, TensorView?)"/> on the same keys laid out contiguously.
    /// </summary>
    /// <param name="plan">A plan from <see cref="PlanDecode"/>.</param>
    /// <param name="q">[batch, qLen, numHeadsQ, headDim] float16/bfloat16, unit last stride.</param>
    /// <param name="kPool">[numPages, pageSize, numHeadsKv, headDim] of q's dtype, contiguous; pageSize a power of two &lt;= 256.</param>
    /// <param name="vPool">Shaped like <paramref name="kPool"/>.</param>
    /// <param name="blockTable">int32 [rows &gt;= batch, columns], unit last stride: row b lists sequence b's pages in token order,
    /// at least ceil(seqlensK[b] / pageSize) of them.</param>
    /// <param name="o">[batch, qLen, numHeadsQ, headDim]: receives the output.</param>
    /// <param name="lse">[batch, numHeadsQ, qLen] float32 with unit last stride: receives the log-sum-exp; or null.</param>
    /// <remarks>The library cannot check the page ids in the table: each must name a page of the pools.</remarks>
    /// <exception cref="ObjectDisposedException">The plan, or the memory behind a view, was disposed.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor is malformed, the table too narrow, or the plan is a varlen plan.</exception>
    public static void DecodePaged(AttentionPlan plan, TensorView q, TensorView kPool, TensorView vPool, TensorView blockTable,
        TensorView o, TensorView? lse = null)
    {
        ArgumentNullException.ThrowIfNull(blockTable);
        RunViews(plan, q, kPool, vPool, o, lse, ViewOp.DecodePaged, kName: nameof(kPool), vName: nameof(vPool), blockTable: blockTable);
    }

    /// <summary>
    /// Runs a decode plan over one layer of a <see cref="PagedKvCache"/>, batch entry b being sequence id b (the plan's
    /// seqlensK[b] at most that sequence's length); asynchronous on the plan's context's stream.
    /// </summary>
    /// <param name="plan">A plan from <see cref="PlanDecode"/> on the cache's context.</param>
    /// <param name="q">[batch, qLen, numHeadsQ, headDim] of the cache's dtype, unit last stride.</param>
    /// <param name="cache">The cache; batch &lt;= its MaxSequences.</param>
    /// <param name="layer">The layer whose pools are read.</param>
    /// <param name="o">[batch, qLen, numHeadsQ, headDim]: receives the output.</param>
    /// <param name="lse">[batch, numHeadsQ, qLen] float32 with unit last stride: receives the log-sum-exp; or null.</param>
    /// <exception cref="ObjectDisposedException">The plan or the cache was disposed.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor or the layer is malformed, or the plan does not fit the cache.</exception>
    public static void Decode(AttentionPlan plan, TensorView q, PagedKvCache cache, int layer, TensorView o, TensorView? lse = null)
    {
        ArgumentNullException.ThrowIfNull(cache);
        DecodePaged(plan, q, cache.View(PagedKvView.KPool, layer), cache.View(PagedKvView.VPool, layer), cache.View(PagedKvView.BlockTable),
            o, lse);
    }

    /// <summary>
    /// Runs a decode plan over one layer of a <see cref="VirtualKvCache"/>, batch entry b being slot b (the plan's
    /// seqlensK[b] at most that slot's length): the contiguous decode over the cache's K and V views narrowed to the plan's
    /// batch; asynchronous on the plan's context's stream.
    /// </summary>
    /// <param name="plan">A plan from <see cref="PlanDecode"/> on the cache's context.</param>
    /// <param name="q">[batch, qLen, numHeadsQ, headDim] of the cache's dtype, unit last stride.</param>
    /// <param name="cache">The cache; batch &lt;= its MaxSlots.</param>
    /// <param name="layer">The layer whose K and V are read.</param>
    /// <param name="o">[batch, qLen, numHeadsQ, headDim]: receives the output.</param>
    /// <param name="lse">[batch, numHeadsQ, qLen] float32 with unit last stride: receives the log-sum-exp; or null.</param>
    /// <remarks>The library cannot check that the slots' tokens are mapped: seqlensK[b] must not pass slot b's length.</remarks>
    /// <exception cref="ObjectDisposedException">The plan or the cache was disposed.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The plan's batch exceeds the cache's MaxSlots.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor or the layer is malformed, or the plan does not fit the cache.</exception>
    public static void Decode(AttentionPlan plan, TensorView q, VirtualKvCache cache, int layer, TensorView o, TensorView? lse = null)
    {
        (TensorView k, TensorView v) = SlotViews(plan, cache, layer);
        Decode(plan, q, k, v, o, lse);
    }

    /// <summary>
    /// Runs a varlen plan (prefill, chunked prefill) over one layer of a <see cref="VirtualKvCache"/>, sequence b being slot
    /// b (cu_seqlens_k giving at most that slot's length): the contiguous varlen kernel over the cache's K and V views
    /// narrowed to the plan's batch, as batched K/V (the SM80 kernel family). For chunked prefill, append the chunk to the
    /// cache first: its queries then see the cached prefix and themselves through the bottom-right causal mask.
    /// Asynchronous on the plan's context's stream.
    /// </summary>
    /// <param name="plan">A plan from <see cref="PlanVarlen"/> on the cache's context, not made for <see cref="AttentionKernel.Sm90"/>.</param>
    /// <param name="q">[rowsQ &gt;= TotalQ, numHeadsQ, headDim] of the cache's dtype, unit last stride.</param>
    /// <param name="cache">The cache; batch &lt;= its MaxSlots.</param>
    /// <param name="layer">The layer whose K and V are read.</param>
    /// <param name="o">[rowsQ, numHeadsQ, headDim]: receives the output.</param>
    /// <param name="lse">[numHeadsQ, rowsQ] float32 with unit last stride: receives the log-sum-exp; or null.</param>
    /// <remarks>The library cannot check that the slots' tokens are mapped: a sequence's keys must not pass its slot's length.</remarks>
    /// <exception cref="ObjectDisposedException">The plan or the cache was disposed.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The plan's batch exceeds the cache's MaxSlots.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor or the layer is malformed, or the plan does not fit the cache.</exception>
    /// <exception cref="NativeKvNotSupportedException">The plan was made for <see cref="AttentionKernel.Sm90"/>.</exception>
    public static void Varlen(AttentionPlan plan, TensorView q, VirtualKvCache cache, int layer, TensorView o, TensorView? lse = null)
    {
        (TensorView k, TensorView v) = SlotViews(plan, cache, layer);
        Varlen(plan, q, k, v, o, lse);
    }

    /// <summary>
    /// Runs a decode plan over one layer of a <see cref="QuantizedKvCache"/>, batch entry b being slot b, read in place
    /// (nothing dequantized to memory): logits over the quantized keys and the float16 residual, one softmax, and P·V over the
    /// quantized and float16 values. The result is that of
    /// <see cref="Decode(AttentionPlan, TensorView, TensorView, TensorView, TensorView, TensorView?)"/> over the dequantized
    /// keys and values (float32 <c>q · s + mn</c>): exactly on the CPU backend; the CUDA kernel forms q · s and P · s as float16
    /// products, so groups of very small scale lose precision there. Float16 only; asynchronous on the plan's context's
    /// stream. After an <see cref="QuantizedKvCache.Append"/> the layer must have been written.
    /// </summary>
    /// <param name="plan">A plan from <see cref="PlanDecode"/> on the cache's context, with the cache's NumHeadsKv and HeadDim,
    /// batch &lt;= its MaxSlots, seqlensK[b] equal to slot b's length now (0 for a slot not alive), no
    /// <see cref="AttentionOptions.KvPageSize"/>, and <see cref="AttentionOptions.KvCodeBits"/> 0 or the cache's bits (which
    /// sizes the plan's pieces for the quantized kernel).</param>
    /// <param name="q">float16 [batch, qLen, numHeadsQ, headDim], unit last stride.</param>
    /// <param name="cache">The cache.</param>
    /// <param name="layer">The layer read, 0 .. NumLayers - 1.</param>
    /// <param name="o">float16 [batch, qLen, numHeadsQ, headDim]: receives the output.</param>
    /// <param name="lse">[batch, numHeadsQ, qLen] float32 with unit last stride: receives the log-sum-exp; or null.</param>
    /// <exception cref="ObjectDisposedException">The plan, the cache, or the memory behind a view was disposed.</exception>
    /// <exception cref="ArgumentException">A view's memory belongs to another context than the plan's.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor or the layer is malformed, the plan is a varlen plan or does not
    /// fit the cache (heads, head dimension, batch, a seqlensK[b] other than slot b's length, a page size, other code bits), the
    /// layer is not written since the last append, or the cache is on another context.</exception>
    public static void Decode(AttentionPlan plan, TensorView q, QuantizedKvCache cache, int layer, TensorView o, TensorView? lse = null)
    {
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(o);
        AttentionPlanHandle handle = plan.LiveHandle;
        QuantizedKvCacheHandle cacheHandle = cache.LiveHandle;
        q.RequireContext(plan.Context, nameof(q));
        o.RequireContext(plan.Context, nameof(o));
        lse?.RequireContext(plan.Context, nameof(lse));
        using MemoryLease leaseQ = q.Lease(), leaseO = o.Lease(), leaseLse = lse?.Lease() ?? default;
        NkvTensor nativeQ = q.ToNative(), nativeO = o.ToNative(), nativeLse = lse?.ToNative() ?? default;
        NativeStatus.Check(NativeMethods.nkv_attention_decode_quantized(handle, &nativeQ, cacheHandle, layer, &nativeO,
            lse is null ? null : &nativeLse));
        GC.KeepAlive(q);
        GC.KeepAlive(o);
        GC.KeepAlive(lse);
    }

    /// <summary>A layer's K and V views of a virtual-memory cache, narrowed to the plan's batch (entry b = slot b).</summary>
    private static (TensorView K, TensorView V) SlotViews(AttentionPlan plan, VirtualKvCache cache, int layer)
    {
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(cache);
        int batch = plan.Info.Batch;
        return (cache.View(VirtualKvView.K, layer).Narrow(0, 0, batch), cache.View(VirtualKvView.V, layer).Narrow(0, 0, batch));
    }

    /// <summary>Runs a varlen plan of a CPU-backend context on contiguous float16 host data; synchronous.</summary>
    /// <param name="plan">A plan from <see cref="PlanVarlen"/> on a <see cref="Backend.Cpu"/> context.</param>
    /// <param name="q">[rowsQ, numHeadsQ, headDim] row-major.</param>
    /// <param name="k">[rowsK, numHeadsKv, headDim] row-major.</param>
    /// <param name="v">[rowsK, numHeadsKv, headDim] row-major.</param>
    /// <param name="o">[rowsQ, numHeadsQ, headDim]: receives the output.</param>
    /// <param name="lse">[numHeadsQ, rowsQ]: receives the log-sum-exp; empty for none.</param>
    /// <exception cref="ArgumentException">The plan is not a CPU plan, or a span is not a whole number of rows.</exception>
    public static void Varlen(AttentionPlan plan, ReadOnlySpan<Half> q, ReadOnlySpan<Half> k, ReadOnlySpan<Half> v, Span<Half> o,
        Span<float> lse = default) =>
        RunVarlenHost(plan, q, k, v, o, lse);

    /// <summary>Runs a varlen plan of a CPU-backend context on contiguous bfloat16 host data; synchronous.</summary>
    /// <param name="plan">A plan from <see cref="PlanVarlen"/> on a <see cref="Backend.Cpu"/> context.</param>
    /// <param name="q">[rowsQ, numHeadsQ, headDim] row-major.</param>
    /// <param name="k">[rowsK, numHeadsKv, headDim] row-major.</param>
    /// <param name="v">[rowsK, numHeadsKv, headDim] row-major.</param>
    /// <param name="o">[rowsQ, numHeadsQ, headDim]: receives the output.</param>
    /// <param name="lse">[numHeadsQ, rowsQ]: receives the log-sum-exp; empty for none.</param>
    /// <exception cref="ArgumentException">The plan is not a CPU plan, or a span is not a whole number of rows.</exception>
    public static void Varlen(AttentionPlan plan, ReadOnlySpan<BFloat16> q, ReadOnlySpan<BFloat16> k, ReadOnlySpan<BFloat16> v,
        Span<BFloat16> o, Span<float> lse = default) =>
        RunVarlenHost(plan, q, k, v, o, lse);

    /// <summary>Runs a decode plan of a CPU-backend context on contiguous float16 host data; synchronous.</summary>
    /// <param name="plan">A plan from <see cref="PlanDecode"/> on a <see cref="Backend.Cpu"/> context.</param>
    /// <param name="q">[batch, qLen, numHeadsQ, headDim] row-major.</param>
    /// <param name="k">[batch, capacity, numHeadsKv, headDim] row-major; capacity is the length divided by
    /// batch · numHeadsKv · headDim, and must reach every seqlensK[b].</param>
    /// <param name="v">Shaped like <paramref name="k"/>.</param>
    /// <param name="o">[batch, qLen, numHeadsQ, headDim]: receives the output.</param>
    /// <param name="lse">[batch, numHeadsQ, qLen]: receives the log-sum-exp; empty for none.</param>
    /// <exception cref="ArgumentException">The plan is not a CPU plan, or a span is not a whole number of rows.</exception>
    public static void Decode(AttentionPlan plan, ReadOnlySpan<Half> q, ReadOnlySpan<Half> k, ReadOnlySpan<Half> v, Span<Half> o,
        Span<float> lse = default) =>
        RunDecodeHost(plan, q, k, v, o, lse);

    /// <summary>Runs a decode plan of a CPU-backend context on contiguous bfloat16 host data; synchronous.</summary>
    /// <param name="plan">A plan from <see cref="PlanDecode"/> on a <see cref="Backend.Cpu"/> context.</param>
    /// <param name="q">[batch, qLen, numHeadsQ, headDim] row-major.</param>
    /// <param name="k">[batch, capacity, numHeadsKv, headDim] row-major; capacity is the length divided by
    /// batch · numHeadsKv · headDim, and must reach every seqlensK[b].</param>
    /// <param name="v">Shaped like <paramref name="k"/>.</param>
    /// <param name="o">[batch, qLen, numHeadsQ, headDim]: receives the output.</param>
    /// <param name="lse">[batch, numHeadsQ, qLen]: receives the log-sum-exp; empty for none.</param>
    /// <exception cref="ArgumentException">The plan is not a CPU plan, or a span is not a whole number of rows.</exception>
    public static void Decode(AttentionPlan plan, ReadOnlySpan<BFloat16> q, ReadOnlySpan<BFloat16> k, ReadOnlySpan<BFloat16> v,
        Span<BFloat16> o, Span<float> lse = default) =>
        RunDecodeHost(plan, q, k, v, o, lse);

    private enum ViewOp
    {
        Varlen,
        Decode,
        DecodeKvPointers,
        DecodePaged,
        VarlenPaged,
    }

    // The one native call behind every TensorView overload; for DecodeKvPointers, k and v are the pointer tables, for
    // DecodePaged and VarlenPaged the pools (with the block table).
    private static void RunViews(AttentionPlan plan, TensorView q, TensorView k, TensorView v, TensorView o, TensorView? lse,
        ViewOp op, long tokenStride = 0, long headStride = 0, string kName = "k", string vName = "v", TensorView? blockTable = null)
    {
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k, kName);
        ArgumentNullException.ThrowIfNull(v, vName);
        ArgumentNullException.ThrowIfNull(o);
        AttentionPlanHandle handle = plan.LiveHandle;
        q.RequireContext(plan.Context, nameof(q));
        k.RequireContext(plan.Context, kName);
        v.RequireContext(plan.Context, vName);
        o.RequireContext(plan.Context, nameof(o));
        lse?.RequireContext(plan.Context, nameof(lse));
        blockTable?.RequireContext(plan.Context, nameof(blockTable));
        using MemoryLease leaseQ = q.Lease(), leaseK = k.Lease(), leaseV = v.Lease(), leaseO = o.Lease(),
            leaseLse = lse?.Lease() ?? default, leaseTable = blockTable?.Lease() ?? default;
        NkvTensor nativeQ = q.ToNative(), nativeK = k.ToNative(), nativeV = v.ToNative(), nativeO = o.ToNative();
        NkvTensor nativeLse = lse?.ToNative() ?? default, nativeTable = blockTable?.ToNative() ?? default;
        NkvTensor* lsePointer = lse is null ? null : &nativeLse;
        NativeStatus.Check(op switch
        {
            ViewOp.Varlen => NativeMethods.nkv_attention_varlen(handle, &nativeQ, &nativeK, &nativeV, &nativeO, lsePointer),
            ViewOp.Decode => NativeMethods.nkv_attention_decode(handle, &nativeQ, &nativeK, &nativeV, &nativeO, lsePointer),
            ViewOp.DecodePaged => NativeMethods.nkv_attention_decode_paged(handle, &nativeQ, &nativeK, &nativeV, &nativeTable, &nativeO,
                lsePointer),
            ViewOp.VarlenPaged => NativeMethods.nkv_attention_varlen_paged(handle, &nativeQ, &nativeK, &nativeV, &nativeTable, &nativeO,
                lsePointer),
            _ => NativeMethods.nkv_attention_decode_kv_pointers(handle, &nativeQ, &nativeK, &nativeV, tokenStride, headStride,
                &nativeO, lsePointer),
        });
        GC.KeepAlive(q);
        GC.KeepAlive(k);
        GC.KeepAlive(v);
        GC.KeepAlive(o);
        GC.KeepAlive(lse);
        GC.KeepAlive(blockTable);
    }

    private static void RunVarlenHost<T>(AttentionPlan plan, ReadOnlySpan<T> q, ReadOnlySpan<T> k, ReadOnlySpan<T> v, Span<T> o,
        Span<float> lse) where T : unmanaged
    {
        AttentionPlanHandle handle = RequireCpu(plan);
        AttentionPlanInfo info = plan.Info;
        long hq = info.NumHeadsQ, hkv = info.NumHeadsKv, d = info.HeadDim;
        long[] shapeQ = [Count(q.Length, hq * d, nameof(q)), hq, d], shapeK = [Count(k.Length, hkv * d, nameof(k)), hkv, d];
        long[] shapeV = [Count(v.Length, hkv * d, nameof(v)), hkv, d], shapeO = [Count(o.Length, hq * d, nameof(o)), hq, d];
        long[] shapeLse = [hq, Count(lse.Length, hq, nameof(lse))];
        RunHost(handle, AttentionKind.Varlen, q, k, v, o, lse, shapeQ, shapeK, shapeV, shapeO, shapeLse);
    }

    private static void RunDecodeHost<T>(AttentionPlan plan, ReadOnlySpan<T> q, ReadOnlySpan<T> k, ReadOnlySpan<T> v, Span<T> o,
        Span<float> lse) where T : unmanaged
    {
        AttentionPlanHandle handle = RequireCpu(plan);
        AttentionPlanInfo info = plan.Info;
        long batch = info.Batch, t = info.QLen, hq = info.NumHeadsQ, hkv = info.NumHeadsKv, d = info.HeadDim;
        long[] shapeQ = [Count(q.Length, t * hq * d, nameof(q)), t, hq, d];
        long[] shapeK = [batch, Capacity(k.Length, batch, hkv * d, nameof(k)), hkv, d];
        long[] shapeV = [batch, Capacity(v.Length, batch, hkv * d, nameof(v)), hkv, d];
        long[] shapeO = [Count(o.Length, t * hq * d, nameof(o)), t, hq, d];
        long[] shapeLse = [Count(lse.Length, hq * t, nameof(lse)), hq, t];
        RunHost(handle, AttentionKind.Decode, q, k, v, o, lse, shapeQ, shapeK, shapeV, shapeO, shapeLse);
    }

    // The CPU backend takes any element-aligned view and checks overlaps itself, so the spans go to it as they are.
    private static void RunHost<T>(AttentionPlanHandle handle, AttentionKind kind, ReadOnlySpan<T> q, ReadOnlySpan<T> k,
        ReadOnlySpan<T> v, Span<T> o, Span<float> lse, long[] shapeQ, long[] shapeK, long[] shapeV, long[] shapeO, long[] shapeLse)
        where T : unmanaged
    {
        DType dtype = DTypes.Of<T>();
        fixed (T* qData = q)
        fixed (T* kData = k)
        fixed (T* vData = v)
        fixed (T* oData = o)
        fixed (float* lseData = lse)
        {
            NkvTensor nativeQ = TensorView.HostTensor(qData, dtype, shapeQ);
            NkvTensor nativeK = TensorView.HostTensor(kData, dtype, shapeK);
            NkvTensor nativeV = TensorView.HostTensor(vData, dtype, shapeV);
            NkvTensor nativeO = TensorView.HostTensor(oData, dtype, shapeO);
            NkvTensor nativeLse = TensorView.HostTensor(lseData, DType.Float32, shapeLse);
            NkvTensor* lsePointer = lse.IsEmpty ? null : &nativeLse;
            NativeStatus.Check(kind == AttentionKind.Varlen
                ? NativeMethods.nkv_attention_varlen(handle, &nativeQ, &nativeK, &nativeV, &nativeO, lsePointer)
                : NativeMethods.nkv_attention_decode(handle, &nativeQ, &nativeK, &nativeV, &nativeO, lsePointer));
            NativeStatus.Check(NativeMethods.nkv_context_synchronize(handle.Context)); // the spans are unpinned when this block ends
        }
    }

    private static AttentionPlanHandle RequireCpu(AttentionPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        AttentionPlanHandle handle = plan.LiveHandle;
        if (plan.Context.Backend != Backend.Cpu)
        {
            throw new ArgumentException(
                $"Host-span overloads need a plan of a CPU-backend context; this one runs on {plan.Context}. Use the TensorView overloads on CUDA.",
                nameof(plan));
        }
        return handle;
    }

    // How many units of `unit` elements a span holds; a span that is not a whole number of them is refused here, the
    // one thing the native library cannot see.
    private static long Count(int length, long unit, string paramName)
    {
        if (unit == 0 || length % unit != 0)
        {
            throw new ArgumentException($"Expected a multiple of {unit} elements; got {length}.", paramName);
        }
        return length / unit;
    }

    // The token capacity per sequence of a [batch, capacity, heads, headDim] cache held in `length` elements.
    private static long Capacity(int length, long batch, long tokenElements, string paramName)
    {
        long tokens = Count(length, tokenElements, paramName);
        if (batch == 0)
        {
            return 0;
        }
        if (tokens % batch != 0)
        {
            throw new ArgumentException(
                $"Expected [batch = {batch}, capacity, heads, headDim]: a multiple of {batch * tokenElements} elements; got {length}.", paramName);
        }
        return tokens / batch;
    }
}

/// <summary>
/// The mask, scale and split of an attention plan (<c>nkv_attention_options</c>). The default value is non-causal
/// attention with scale 1/√headDim, no soft-cap and no window, as a null options argument.
/// </summary>
public readonly record struct AttentionOptions
{
    /// <summary>Causal masking aligned to the bottom-right corner: query i sees key j when <c>j &lt;= i + (lk - lq)</c>.</summary>
    public bool Causal { get; init; }

    /// <summary>The factor applied to <c>q·k</c>; &gt; 0, or null (or 0) for <c>1/√headDim</c>.</summary>
    public float? SoftmaxScale { get; init; }

    /// <summary>Soft-cap of the scores, <c>softcap · tanh(s / softcap)</c>; 0 for none, otherwise &gt; 0.</summary>
    public float Softcap { get; init; }

    /// <summary>Keys visible to the left of the (bottom-right aligned) diagonal; null for unlimited, otherwise &gt;= 0.</summary>
    public int? WindowLeft { get; init; }

    /// <summary>
    /// Decode plans: 0 picks how to split each sequence's keys from a model of the device (SM count), n &gt;= 1 splits every
    /// sequence into at most n equal parts so results do not depend on the GPU. Varlen plans: must be 0.
    /// </summary>
    public int NumSplits { get; init; }

    /// <summary>
    /// The kernel family (FlashInfer's backend="fa2"/"fa3"): <see cref="AttentionKernel.Auto"/> picks the best one for
    /// the device; a specific family that cannot run the plan is a <see cref="NativeKvNotSupportedException"/>.
    /// </summary>
    public AttentionKernel Kernel { get; init; }

    /// <summary>
    /// Decode plans: 0, or the page size of the pools the plan reads with <see cref="Attention.DecodePaged"/> (a power of
    /// two up to 256). Small pages scattered over a pool cost the loads address translation, so a plan for pages under 256
    /// tokens cuts the keys into more pieces to keep more loads in flight. A plan with a page size runs only paged decode over pools of that page
    /// size; one with 0 runs every decode call. Varlen plans: must be 0.
    /// </summary>
    public int KvPageSize { get; init; }

    /// <summary>
    /// Decode plans: 0, or the code bits (2, 4, 8) of the <see cref="QuantizedKvCache"/> the plan reads: that kernel does
    /// more arithmetic per byte than the fp16 decode, so its plan cuts the keys into pieces for as many blocks as fit the
    /// GPU at once. A plan with code bits runs only decode over quantized caches of those bits; one with 0 runs every
    /// decode call. Varlen plans: must be 0.
    /// </summary>
    public int KvCodeBits { get; init; }

    internal unsafe NkvAttentionOptions ToNative() => new()
    {
        StructSize = (uint)sizeof(NkvAttentionOptions),
        Causal = Causal ? 1 : 0,
        SoftmaxScale = SoftmaxScale ?? 0f,
        Softcap = Softcap,
        WindowLeft = WindowLeft ?? -1,
        NumSplits = NumSplits,
        Kernel = (int)Kernel,
        KvPageSize = KvPageSize,
        KvCodeBits = KvCodeBits,
    };
}

/// <summary>
/// A described attention workload (<c>nkv_attention_plan</c>): lengths, heads and mask, validated once and run any number
/// of times on its context's stream. One op at a time per plan; disposing it waits for the context's outstanding work.
/// </summary>
public sealed unsafe class AttentionPlan : IDisposable
{
    private AttentionPlan(Context context, AttentionPlanHandle handle)
    {
        Context = context;
        Handle = handle;
        var info = new NkvAttentionPlanInfo { StructSize = (uint)sizeof(NkvAttentionPlanInfo) };
        NativeStatus.Check(NativeMethods.nkv_attention_plan_get_info(handle, &info));
        Info = new AttentionPlanInfo
        {
            Kind = (AttentionKind)info.Kind,
            Batch = info.Batch,
            NumHeadsQ = info.NumHeadsQ,
            NumHeadsKv = info.NumHeadsKv,
            HeadDim = info.HeadDim,
            QLen = info.QLen,
            NumSplits = info.NumSplits,
            TotalQ = info.TotalQ,
            TotalK = info.TotalK,
            MaxSeqlenQ = info.MaxSeqlenQ,
            MaxSeqlenK = info.MaxSeqlenK,
            SoftmaxScale = info.SoftmaxScale,
        };
    }

    /// <summary>The context the plan runs on.</summary>
    public Context Context { get; }

    /// <summary>The native handle.</summary>
    public AttentionPlanHandle Handle { get; }

    /// <summary>What the plan describes, as the native library reports it (read once at creation).</summary>
    public AttentionPlanInfo Info { get; }

    /// <summary>The handle, or <see cref="ObjectDisposedException"/> when the plan was disposed.</summary>
    internal AttentionPlanHandle LiveHandle
    {
        get
        {
            ObjectDisposedException.ThrowIf(Handle.IsClosed, this);
            return Handle;
        }
    }

    /// <summary>Destroys the plan, after waiting for the context's outstanding work (which may still read it).</summary>
    public void Dispose() => Handle.Dispose();

    /// <inheritdoc />
    public override string ToString() =>
        $"AttentionPlan({Info.Kind}, batch {Info.Batch}, heads {Info.NumHeadsQ}/{Info.NumHeadsKv}, headDim {Info.HeadDim}, {Context})";

    internal static AttentionPlan Wrap(Context context, nint raw)
    {
        var handle = new AttentionPlanHandle(raw, context.Handle);
        try
        {
            return new AttentionPlan(context, handle);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }
}

/// <summary>What an <see cref="AttentionPlan"/> describes (<c>nkv_attention_plan_info</c>).</summary>
public sealed record AttentionPlanInfo
{
    /// <summary>Varlen or decode.</summary>
    public required AttentionKind Kind { get; init; }

    /// <summary>The number of sequences.</summary>
    public required int Batch { get; init; }

    /// <summary>Query heads.</summary>
    public required int NumHeadsQ { get; init; }

    /// <summary>Key/value heads.</summary>
    public required int NumHeadsKv { get; init; }

    /// <summary>The head dimension.</summary>
    public required int HeadDim { get; init; }

    /// <summary>Decode: queries per sequence; varlen: 0.</summary>
    public required int QLen { get; init; }

    /// <summary>Decode: the most pieces any (sequence, KV head) pair's keys are cut into; varlen: 1.</summary>
    public required int NumSplits { get; init; }

    /// <summary>Query rows: <c>cuSeqlensQ[batch]</c> (varlen) or batch · qLen (decode).</summary>
    public required long TotalQ { get; init; }

    /// <summary>Key rows: <c>cuSeqlensK[batch]</c> (varlen) or the sum of seqlensK (decode).</summary>
    public required long TotalK { get; init; }

    /// <summary>The longest query sequence.</summary>
    public required long MaxSeqlenQ { get; init; }

    /// <summary>The longest key sequence.</summary>
    public required long MaxSeqlenK { get; init; }

    /// <summary>The softmax scale in effect.</summary>
    public required float SoftmaxScale { get; init; }
}
