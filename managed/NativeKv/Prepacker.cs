using NativeKv.Interop;

namespace NativeKv;

/// <summary>
/// Prepacking (Zhao et al., "Prepacking: A Simple Method for Fast Prefilling and Increased Throughput"): prompts of
/// different lengths are bin-packed, first-fit decreasing, into rows of at most a row capacity of tokens, so a prefill
/// batch holds few padding tokens. The packed layout holds every prompt's tokens back to back in packed order, which is
/// exactly the varlen attention layout: <see cref="PackPlan.CuSeqlens"/> makes each prompt its own causal block for
/// <see cref="Attention.PlanVarlen"/>, and <see cref="PackPlan.PositionIds"/> restart at 0 for every prompt.
/// Caller order is the prompts as given, concatenated.
/// </summary>
public static unsafe class Prepacker
{
    /// <summary>Plans the packing of prompts of the given lengths; the index arrays are computed on the host and kept on the context's device.</summary>
    /// <param name="context">The context the plan's arrays live on and its gathers run on; it stays alive while the plan does.</param>
    /// <param name="lengths">The token count of each prompt, in caller order; at least one, each &gt;= 1; copied.</param>
    /// <param name="rowCapacity">Tokens per packed row: at least the longest prompt, or 0 for the longest prompt.</param>
    /// <exception cref="NativeKvInvalidArgumentException">No prompt, a length &lt; 1, or a capacity below the longest prompt.</exception>
    /// <exception cref="NativeKvNotSupportedException">The prompts hold more than 2^31 - 1 tokens.</exception>
    public static PackPlan Plan(Context context, ReadOnlySpan<int> lengths, int rowCapacity = 0)
    {
        ArgumentNullException.ThrowIfNull(context);
        nint raw;
        int none = 0;
        fixed (int* data = lengths)
        {
            // An empty span pins as NULL; a valid pointer lets the library report the prompt count rather than the pointer.
            NativeStatus.Check(NativeMethods.nkv_pack_plan_create(context.Handle, data == null ? &none : data, lengths.Length, rowCapacity,
                out raw));
        }
        var handle = new PackPlanHandle(raw, context.Handle);
        try
        {
            return new PackPlan(context, handle);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }
}

/// <summary>
/// A packing of prompts into rows (<c>nkv_pack_plan</c>) with its index arrays, and the moves between caller order, packed
/// order and the padded batch. Moves through <see cref="TensorView"/>s are asynchronous on the context's stream; the
/// host-span overloads are for the CPU backend and synchronous. Disposing the plan waits for the context's outstanding
/// work and frees the arrays (views from <see cref="ArrayView"/> are refused after that).
/// </summary>
public sealed unsafe class PackPlan : IDisposable, IDeviceMemoryOwner
{
    internal PackPlan(Context context, PackPlanHandle handle)
    {
        Context = context;
        Handle = handle;
        var info = new NkvPackPlanInfo { StructSize = (uint)sizeof(NkvPackPlanInfo) };
        NativeStatus.Check(NativeMethods.nkv_pack_plan_get_info(handle, &info));
        PromptCount = info.PromptCount;
        RowCount = info.RowCount;
        RowCapacity = info.RowCapacity;
        LongestPrompt = info.LongestPrompt;
        TotalTokens = info.TotalTokens;
        PaddingTokens = info.PaddingTokens;
        UnpackedPaddingTokens = info.UnpackedPaddingTokens;
    }

    /// <summary>The context the plan runs on.</summary>
    public Context Context { get; }

    /// <summary>The native handle.</summary>
    public PackPlanHandle Handle { get; }

    NativeKvHandle IDeviceMemoryOwner.Handle => Handle;

    /// <summary>The number of prompts.</summary>
    public int PromptCount { get; }

    /// <summary>The number of packed rows.</summary>
    public int RowCount { get; }

    /// <summary>Tokens per packed row.</summary>
    public int RowCapacity { get; }

    /// <summary>The length of the longest prompt.</summary>
    public int LongestPrompt { get; }

    /// <summary>The sum of the prompt lengths.</summary>
    public long TotalTokens { get; }

    /// <summary>Padding of the packed rows: <c>RowCount · RowCapacity - TotalTokens</c>.</summary>
    public long PaddingTokens { get; }

    /// <summary>Padding of plain padded batching: <c>PromptCount · LongestPrompt - TotalTokens</c>.</summary>
    public long UnpackedPaddingTokens { get; }

    /// <summary>[PromptCount + 1]: the packed token offset of each packed prompt, then <see cref="TotalTokens"/> (varlen attention's cu_seqlens).</summary>
    public int[] CuSeqlens() => CopyArray(PackArray.CuSeqlens);

    /// <summary>[TotalTokens]: the position of each packed token within its prompt.</summary>
    public int[] PositionIds() => CopyArray(PackArray.PositionIds);

    /// <summary>[TotalTokens]: packed token t is caller token <c>gather[t]</c>.</summary>
    public int[] GatherIndex() => CopyArray(PackArray.GatherIndex);

    /// <summary>[TotalTokens]: caller token t is packed token <c>scatter[t]</c>.</summary>
    public int[] ScatterIndex() => CopyArray(PackArray.ScatterIndex);

    /// <summary>[PromptCount]: packed prompt p is caller prompt <c>order[p]</c>.</summary>
    public int[] PromptOrder() => CopyArray(PackArray.PromptOrder);

    /// <summary>[RowCount + 1]: the packed prompt index where each row starts, then <see cref="PromptCount"/>.</summary>
    public int[] RowStarts() => CopyArray(PackArray.RowStarts);

    /// <summary>
    /// A 1-D int32 view of one index array in the plan's memory on the context's device (host memory on the CPU backend),
    /// for ops that take it directly (position ids for a rotary embedding, cu_seqlens on the device). Valid while the plan lives.
    /// </summary>
    /// <param name="which">The array.</param>
    /// <exception cref="ObjectDisposedException">The plan was disposed.</exception>
    /// <exception cref="NativeKvInvalidArgumentException"><paramref name="which"/> is not a defined value.</exception>
    public TensorView ArrayView(PackArray which)
    {
        NkvTensor view;
        NativeStatus.Check(NativeMethods.nkv_pack_plan_array_view(LiveHandle, (int)which, &view));
        return TensorView.FromNative(view, this);
    }

    /// <summary><c>packed[t] = input[gather[t]]</c>: caller order to packed order; asynchronous on the context's stream.</summary>
    /// <param name="input">[rows &gt;= TotalTokens, hidden] in caller order, any dtype, unit last stride.</param>
    /// <param name="packed">[rows &gt;= TotalTokens, hidden] of the same dtype; rows past TotalTokens are left untouched.</param>
    /// <exception cref="ObjectDisposedException">The plan, or the buffer behind a view, was disposed.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor is malformed or the two overlap.</exception>
    public void Gather(TensorView input, TensorView packed) => Move(input, packed, Op.Gather);

    /// <summary><c>output[t] = packed[scatter[t]]</c>: packed order back to caller order (the inverse of <see cref="Gather(TensorView, TensorView)"/>).</summary>
    /// <param name="packed">[rows &gt;= TotalTokens, hidden] in packed order, unit last stride.</param>
    /// <param name="output">[rows &gt;= TotalTokens, hidden] of the same dtype; rows past TotalTokens are left untouched.</param>
    /// <exception cref="ObjectDisposedException">The plan, or the buffer behind a view, was disposed.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor is malformed or the two overlap.</exception>
    public void Scatter(TensorView packed, TensorView output) => Move(packed, output, Op.Scatter);

    /// <summary>
    /// The dense padded batch that plain batching uses: <c>padded[p, i]</c> = token i of caller prompt p, zeros past its
    /// length; asynchronous on the context's stream.
    /// </summary>
    /// <param name="input">[rows &gt;= TotalTokens, hidden] in caller order, unit last stride.</param>
    /// <param name="padded">[PromptCount, LongestPrompt, hidden] of the same dtype, unit last stride.</param>
    /// <exception cref="ObjectDisposedException">The plan, or the buffer behind a view, was disposed.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor is malformed or the two overlap.</exception>
    public void GatherPadded(TensorView input, TensorView padded) => Move(input, padded, Op.GatherPadded);

    /// <summary>The inverse of <see cref="GatherPadded(TensorView, TensorView)"/>: caller tokens from the padded batch (padding is not read).</summary>
    /// <param name="padded">[PromptCount, LongestPrompt, hidden], unit last stride.</param>
    /// <param name="output">[rows &gt;= TotalTokens, hidden] of the same dtype; rows past TotalTokens are left untouched.</param>
    /// <exception cref="ObjectDisposedException">The plan, or the buffer behind a view, was disposed.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor is malformed or the two overlap.</exception>
    public void ScatterPadded(TensorView padded, TensorView output) => Move(padded, output, Op.ScatterPadded);

    /// <summary><see cref="Gather(TensorView, TensorView)"/> on row-major host data of a CPU-backend plan; synchronous.</summary>
    /// <typeparam name="T">The element type (any NativeKv dtype).</typeparam>
    /// <param name="input">[rows, hidden] in caller order, rows &gt;= TotalTokens.</param>
    /// <param name="packed">[rows, hidden], rows &gt;= TotalTokens.</param>
    /// <param name="hidden">Elements per token.</param>
    /// <exception cref="InvalidOperationException">The plan is not a CPU plan.</exception>
    /// <exception cref="ArgumentException">A span is not a whole number of rows.</exception>
    public void Gather<T>(ReadOnlySpan<T> input, Span<T> packed, int hidden) where T : unmanaged =>
        MoveHost(input, packed, hidden, Op.Gather, nameof(input), nameof(packed));

    /// <summary><see cref="Scatter(TensorView, TensorView)"/> on row-major host data of a CPU-backend plan; synchronous.</summary>
    /// <typeparam name="T">The element type (any NativeKv dtype).</typeparam>
    /// <param name="packed">[rows, hidden] in packed order, rows &gt;= TotalTokens.</param>
    /// <param name="output">[rows, hidden], rows &gt;= TotalTokens.</param>
    /// <param name="hidden">Elements per token.</param>
    /// <exception cref="InvalidOperationException">The plan is not a CPU plan.</exception>
    /// <exception cref="ArgumentException">A span is not a whole number of rows.</exception>
    public void Scatter<T>(ReadOnlySpan<T> packed, Span<T> output, int hidden) where T : unmanaged =>
        MoveHost(packed, output, hidden, Op.Scatter, nameof(packed), nameof(output));

    /// <summary><see cref="GatherPadded(TensorView, TensorView)"/> on row-major host data of a CPU-backend plan; synchronous.</summary>
    /// <typeparam name="T">The element type (any NativeKv dtype).</typeparam>
    /// <param name="input">[rows, hidden] in caller order, rows &gt;= TotalTokens.</param>
    /// <param name="padded">[PromptCount, LongestPrompt, hidden].</param>
    /// <param name="hidden">Elements per token.</param>
    /// <exception cref="InvalidOperationException">The plan is not a CPU plan.</exception>
    /// <exception cref="ArgumentException">A span is not a whole number of rows.</exception>
    public void GatherPadded<T>(ReadOnlySpan<T> input, Span<T> padded, int hidden) where T : unmanaged =>
        MoveHost(input, padded, hidden, Op.GatherPadded, nameof(input), nameof(padded));

    /// <summary><see cref="ScatterPadded(TensorView, TensorView)"/> on row-major host data of a CPU-backend plan; synchronous.</summary>
    /// <typeparam name="T">The element type (any NativeKv dtype).</typeparam>
    /// <param name="padded">[PromptCount, LongestPrompt, hidden].</param>
    /// <param name="output">[rows, hidden], rows &gt;= TotalTokens.</param>
    /// <param name="hidden">Elements per token.</param>
    /// <exception cref="InvalidOperationException">The plan is not a CPU plan.</exception>
    /// <exception cref="ArgumentException">A span is not a whole number of rows.</exception>
    public void ScatterPadded<T>(ReadOnlySpan<T> padded, Span<T> output, int hidden) where T : unmanaged =>
        MoveHost(padded, output, hidden, Op.ScatterPadded, nameof(padded), nameof(output));

    /// <summary>Destroys the plan and its arrays, after waiting for the context's outstanding work (which may still read them).</summary>
    public void Dispose() => Handle.Dispose();

    /// <inheritdoc />
    public override string ToString() =>
        $"PackPlan({PromptCount} prompts, {TotalTokens} tokens in {RowCount} rows of {RowCapacity}, {Context})";

    private enum Op
    {
        Gather,
        Scatter,
        GatherPadded,
        ScatterPadded,
    }

    private PackPlanHandle LiveHandle
    {
        get
        {
            ObjectDisposedException.ThrowIf(Handle.IsClosed, this);
            return Handle;
        }
    }

    private int[] CopyArray(PackArray which)
    {
        PackPlanHandle handle = LiveHandle;
        NkvTensor view;
        NativeStatus.Check(NativeMethods.nkv_pack_plan_array_view(handle, (int)which, &view));
        var values = new int[checked((int)view.Shape[0])];
        fixed (int* data = values)
        {
            NativeStatus.Check(NativeMethods.nkv_pack_plan_copy_array(handle, (int)which, data, values.Length, null));
        }
        return values;
    }

    private void Move(TensorView source, TensorView destination, Op op)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(destination);
        PackPlanHandle handle = LiveHandle;
        source.RequireContext(Context, nameof(source));
        destination.RequireContext(Context, nameof(destination));
        using MemoryLease leaseSource = source.Lease(), leaseDestination = destination.Lease();
        NkvTensor nativeSource = source.ToNative(), nativeDestination = destination.ToNative();
        NativeStatus.Check(Call(handle, &nativeSource, &nativeDestination, op));
        GC.KeepAlive(source);
        GC.KeepAlive(destination);
    }

    private void MoveHost<T>(ReadOnlySpan<T> source, Span<T> destination, int hidden, Op op, string sourceName, string destinationName)
        where T : unmanaged
    {
        PackPlanHandle handle = LiveHandle;
        if (Context.Backend != Backend.Cpu)
        {
            throw new InvalidOperationException(
                $"Host-span overloads need a plan of a CPU-backend context; this one runs on {Context}. Use the TensorView overloads on CUDA.");
        }
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(hidden);
        DType dtype = DTypes.Of<T>();
        bool paddedSource = op == Op.ScatterPadded, paddedDestination = op == Op.GatherPadded;
        fixed (T* sourceData = source)
        fixed (T* destinationData = destination)
        {
            NkvTensor nativeSource = TensorView.HostTensor(sourceData, dtype, Shape(source.Length, hidden, paddedSource, sourceName));
            NkvTensor nativeDestination =
                TensorView.HostTensor(destinationData, dtype, Shape(destination.Length, hidden, paddedDestination, destinationName));
            NativeStatus.Check(Call(handle, &nativeSource, &nativeDestination, op));
            NativeStatus.Check(NativeMethods.nkv_context_synchronize(handle.Context)); // the spans are unpinned when this block ends
        }
    }

    // [rows, hidden], or [prompts, LongestPrompt, hidden] for the padded layout; the leading extent comes from the span's
    // length (the native library checks it against the plan), which must be a whole number of rows.
    private long[] Shape(int length, int hidden, bool padded, string paramName)
    {
        long unit = padded ? (long)LongestPrompt * hidden : hidden;
        if (length % unit != 0)
        {
            string layout = padded ? $"[prompts, LongestPrompt = {LongestPrompt}, hidden = {hidden}]" : $"[rows, hidden = {hidden}]";
            throw new ArgumentException($"Expected {layout}: a multiple of {unit} elements; got {length}.", paramName);
        }
        return padded ? [length / unit, LongestPrompt, hidden] : [length / unit, hidden];
    }

    private static NkvStatus Call(PackPlanHandle handle, NkvTensor* source, NkvTensor* destination, Op op) => op switch
    {
        Op.Gather => NativeMethods.nkv_pack_gather(handle, source, destination),
        Op.Scatter => NativeMethods.nkv_pack_scatter(handle, source, destination),
        Op.GatherPadded => NativeMethods.nkv_pack_gather_padded(handle, source, destination),
        _ => NativeMethods.nkv_pack_scatter_padded(handle, source, destination),
    };
}
