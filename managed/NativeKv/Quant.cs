using NativeKv.Interop;

namespace NativeKv;

/// <summary>
/// Int8 vector-wise quantization (the first half of LLM.int8(), bitsandbytes' <c>int8_vectorwise_quant</c>
/// semantics). For each row (<see cref="QuantAxis.Row"/>) or column (<see cref="QuantAxis.Column"/>) of a
/// [rows, cols] float32/float16/bfloat16 matrix: <c>scale = absmax / 127</c> and
/// <c>code = round_half_to_even(x / scale)</c> clamped to [-127, 127]. With an outlier threshold, elements with
/// <c>|x| &gt;= threshold</c> are left out of absmax, get code 0, and the columns holding any are reported in
/// ascending order. A vector whose absmax is 0 gets scale 0; NaN in a vector makes its scale NaN and an infinity
/// (not an outlier) makes it +∞, both with codes 0. Dequantization computes <c>code * scale</c> in float32.
/// </summary>
/// <remarks>
/// Three flavours: <see cref="TensorView"/> overloads (asynchronous on the context's stream, nothing allocated: what
/// an engine calls), <see cref="DeviceBuffer{T}"/> overloads (contiguous matrices, convenient), and host-span
/// overloads for the CPU backend (synchronous). Lengths are checked here; everything else by the native library,
/// which leaves the outputs untouched when it rejects a call.
/// </remarks>
public static unsafe class Quant
{
    /// <summary>Quantizes <paramref name="input"/> without outlier handling; asynchronous on the context's stream.</summary>
    /// <param name="context">The context whose device holds every tensor.</param>
    /// <param name="input">[rows, cols] float32/float16/bfloat16, unit stride along columns.</param>
    /// <param name="codes">[rows, cols] int8, unit stride along columns.</param>
    /// <param name="scales">[rows] (<see cref="QuantAxis.Row"/>) or [cols] (<see cref="QuantAxis.Column"/>) float32, contiguous.</param>
    /// <param name="axis">Which vectors share a scale.</param>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor has the wrong dtype, shape, device or strides.</exception>
    public static void Int8Quantize(Context context, TensorView input, TensorView codes, TensorView scales,
        QuantAxis axis = QuantAxis.Row)
    {
        QuantizeViews(context, input, codes, scales, 0f, null, null, axis);
    }

    /// <summary>
    /// Quantizes <paramref name="input"/> with outlier handling; asynchronous on the context's stream, so the count is
    /// in <paramref name="outlierColumnCount"/> once the stream gets there.
    /// </summary>
    /// <param name="context">The context whose device holds every tensor.</param>
    /// <param name="input">[rows, cols] float32/float16/bfloat16, unit stride along columns.</param>
    /// <param name="codes">[rows, cols] int8, unit stride along columns.</param>
    /// <param name="scales">[rows] or [cols] float32, contiguous.</param>
    /// <param name="outlierThreshold">Elements with <c>|x| &gt;= outlierThreshold</c> are outliers; &gt; 0, may be +∞.</param>
    /// <param name="outlierColumns">[cols] int32: receives the outlier columns in ascending order; entries past the count are set to -1.</param>
    /// <param name="outlierColumnCount">[1] int32: receives the number of outlier columns.</param>
    /// <param name="axis">Which vectors share a scale.</param>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor is malformed or the threshold is not &gt; 0.</exception>
    public static void Int8Quantize(Context context, TensorView input, TensorView codes, TensorView scales, float outlierThreshold,
        TensorView outlierColumns, TensorView outlierColumnCount, QuantAxis axis = QuantAxis.Row)
    {
        ArgumentNullException.ThrowIfNull(outlierColumns);
        ArgumentNullException.ThrowIfNull(outlierColumnCount);
        QuantizeViews(context, input, codes, scales, outlierThreshold, outlierColumns, outlierColumnCount, axis);
    }

    // The one native call behind both view overloads; the outlier views are null when the threshold is off.
    private static void QuantizeViews(Context context, TensorView input, TensorView codes, TensorView scales, float outlierThreshold,
        TensorView? outlierColumns, TensorView? outlierColumnCount, QuantAxis axis)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(codes);
        ArgumentNullException.ThrowIfNull(scales);
        using MemoryLease leaseInput = input.Lease(), leaseCodes = codes.Lease(), leaseScales = scales.Lease(),
            leaseColumns = outlierColumns?.Lease() ?? default, leaseCount = outlierColumnCount?.Lease() ?? default;
        NkvTensor nativeInput = input.ToNative(), nativeCodes = codes.ToNative(), nativeScales = scales.ToNative();
        NkvTensor nativeColumns = outlierColumns?.ToNative() ?? default, nativeCount = outlierColumnCount?.ToNative() ?? default;
        NkvInt8QuantParams parameters = Parameters(axis, outlierThreshold);
        NativeStatus.Check(NativeMethods.nkv_int8_quantize(context.Handle, &parameters, &nativeInput, &nativeCodes, &nativeScales,
            outlierColumns is null ? null : &nativeColumns, outlierColumnCount is null ? null : &nativeCount));
        GC.KeepAlive(input);
        GC.KeepAlive(codes);
        GC.KeepAlive(scales);
        GC.KeepAlive(outlierColumns);
        GC.KeepAlive(outlierColumnCount);
    }

    /// <summary>Dequantizes <c>code * scale</c> into <paramref name="output"/>; asynchronous on the context's stream.</summary>
    /// <param name="context">The context whose device holds every tensor.</param>
    /// <param name="codes">[rows, cols] int8, unit stride along columns.</param>
    /// <param name="scales">[rows] or [cols] float32, contiguous.</param>
    /// <param name="output">[rows, cols] float32/float16/bfloat16, unit stride along columns.</param>
    /// <param name="axis">Which vectors share a scale.</param>
    /// <exception cref="NativeKvInvalidArgumentException">A tensor has the wrong dtype, shape, device or strides.</exception>
    public static void Int8Dequantize(Context context, TensorView codes, TensorView scales, TensorView output,
        QuantAxis axis = QuantAxis.Row)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(codes);
        ArgumentNullException.ThrowIfNull(scales);
        ArgumentNullException.ThrowIfNull(output);
        using MemoryLease leaseCodes = codes.Lease(), leaseScales = scales.Lease(), leaseOutput = output.Lease();
        NkvTensor nativeCodes = codes.ToNative(), nativeScales = scales.ToNative(), nativeOutput = output.ToNative();
        NkvInt8QuantParams parameters = Parameters(axis, 0f);
        NativeStatus.Check(NativeMethods.nkv_int8_dequantize(context.Handle, &parameters, &nativeCodes, &nativeScales, &nativeOutput));
        GC.KeepAlive(codes);
        GC.KeepAlive(scales);
        GC.KeepAlive(output);
    }

    /// <summary>
    /// Quantizes a contiguous [rows, cols] matrix held in buffers. Without a threshold it is asynchronous and returns
    /// 0. With one it allocates a one-element count buffer, waits for the result and returns the number of outlier
    /// columns; engines that must not wait use the <see cref="TensorView"/> overload.
    /// </summary>
    /// <typeparam name="T">float, <see cref="Half"/> or <see cref="BFloat16"/>.</typeparam>
    /// <param name="context">The context the buffers belong to.</param>
    /// <param name="input">rows * cols elements.</param>
    /// <param name="rows">The number of rows.</param>
    /// <param name="cols">The number of columns.</param>
    /// <param name="codes">At least rows * cols elements.</param>
    /// <param name="scales">At least rows (<see cref="QuantAxis.Row"/>) or cols (<see cref="QuantAxis.Column"/>) elements.</param>
    /// <param name="axis">Which vectors share a scale.</param>
    /// <param name="outlierThreshold">0 for none; otherwise &gt; 0 (may be +∞).</param>
    /// <param name="outlierColumns">At least cols elements; required when <paramref name="outlierThreshold"/> is not 0.</param>
    /// <returns>The number of outlier columns (their indices are the first entries of <paramref name="outlierColumns"/>).</returns>
    public static int Int8Quantize<T>(Context context, DeviceBuffer<T> input, int rows, int cols, DeviceBuffer<sbyte> codes,
        DeviceBuffer<float> scales, QuantAxis axis = QuantAxis.Row, float outlierThreshold = 0f,
        DeviceBuffer<int>? outlierColumns = null) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(codes);
        ArgumentNullException.ThrowIfNull(scales);
        CheckMatrix(rows, cols);
        CheckContext(context, input.Context, nameof(input));
        CheckContext(context, codes.Context, nameof(codes));
        CheckContext(context, scales.Context, nameof(scales));
        if (outlierColumns is not null) CheckContext(context, outlierColumns.Context, nameof(outlierColumns));
        TensorView inputView = input.AsTensor(rows, cols), codesView = codes.AsTensor(rows, cols);
        TensorView scalesView = scales.AsTensor(ScaleCount(rows, cols, axis));
        if (outlierThreshold == 0f)
        {
            Int8Quantize(context, inputView, codesView, scalesView, axis);
            return 0;
        }
        if (outlierColumns is null)
        {
            throw new ArgumentNullException(nameof(outlierColumns), "An outlier threshold needs a buffer for the outlier columns.");
        }
        using var count = DeviceBuffer<int>.Allocate(context, 1);
        Int8Quantize(context, inputView, codesView, scalesView, outlierThreshold, outlierColumns.AsTensor(cols), count.AsTensor(1), axis);
        Span<int> result = stackalloc int[1];
        count.CopyTo(result); // a download waits for earlier work on the stream
        return result[0];
    }

    /// <summary>Dequantizes a contiguous [rows, cols] matrix held in buffers; asynchronous on the context's stream.</summary>
    /// <typeparam name="T">float, <see cref="Half"/> or <see cref="BFloat16"/>.</typeparam>
    /// <param name="context">The context the buffers belong to.</param>
    /// <param name="codes">At least rows * cols elements.</param>
    /// <param name="scales">At least rows (<see cref="QuantAxis.Row"/>) or cols (<see cref="QuantAxis.Column"/>) elements.</param>
    /// <param name="rows">The number of rows.</param>
    /// <param name="cols">The number of columns.</param>
    /// <param name="output">At least rows * cols elements.</param>
    /// <param name="axis">Which vectors share a scale.</param>
    public static void Int8Dequantize<T>(Context context, DeviceBuffer<sbyte> codes, DeviceBuffer<float> scales, int rows, int cols,
        DeviceBuffer<T> output, QuantAxis axis = QuantAxis.Row) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(codes);
        ArgumentNullException.ThrowIfNull(scales);
        ArgumentNullException.ThrowIfNull(output);
        CheckMatrix(rows, cols);
        CheckContext(context, codes.Context, nameof(codes));
        CheckContext(context, scales.Context, nameof(scales));
        CheckContext(context, output.Context, nameof(output));
        Int8Dequantize(context, codes.AsTensor(rows, cols), scales.AsTensor(ScaleCount(rows, cols, axis)), output.AsTensor(rows, cols), axis);
    }

    /// <summary>Quantizes a row-major float32 matrix in host memory on a CPU-backend context.</summary>
    /// <param name="context">A <see cref="Backend.Cpu"/> context.</param>
    /// <param name="input">Exactly rows * cols values, row-major.</param>
    /// <param name="rows">The number of rows.</param>
    /// <param name="cols">The number of columns.</param>
    /// <param name="codes">Receives rows * cols codes.</param>
    /// <param name="scales">Receives rows (<see cref="QuantAxis.Row"/>) or cols (<see cref="QuantAxis.Column"/>) scales.</param>
    /// <param name="axis">Which vectors share a scale.</param>
    /// <param name="outlierThreshold">0 for none; otherwise &gt; 0 (may be +∞).</param>
    /// <param name="outlierColumns">Receives the outlier columns in ascending order; at least cols long when a threshold is set.</param>
    /// <returns>The number of outlier columns; 0 without a threshold.</returns>
    public static int Int8Quantize(Context context, ReadOnlySpan<float> input, int rows, int cols, Span<sbyte> codes, Span<float> scales,
        QuantAxis axis = QuantAxis.Row, float outlierThreshold = 0f, Span<int> outlierColumns = default) =>
        QuantizeHost(context, input, rows, cols, codes, scales, axis, outlierThreshold, outlierColumns);

    /// <summary>Quantizes a row-major float16 matrix in host memory on a CPU-backend context.</summary>
    /// <param name="context">A <see cref="Backend.Cpu"/> context.</param>
    /// <param name="input">Exactly rows * cols values, row-major.</param>
    /// <param name="rows">The number of rows.</param>
    /// <param name="cols">The number of columns.</param>
    /// <param name="codes">Receives rows * cols codes.</param>
    /// <param name="scales">Receives rows (<see cref="QuantAxis.Row"/>) or cols (<see cref="QuantAxis.Column"/>) scales.</param>
    /// <param name="axis">Which vectors share a scale.</param>
    /// <param name="outlierThreshold">0 for none; otherwise &gt; 0 (may be +∞).</param>
    /// <param name="outlierColumns">Receives the outlier columns in ascending order; at least cols long when a threshold is set.</param>
    /// <returns>The number of outlier columns; 0 without a threshold.</returns>
    public static int Int8Quantize(Context context, ReadOnlySpan<Half> input, int rows, int cols, Span<sbyte> codes, Span<float> scales,
        QuantAxis axis = QuantAxis.Row, float outlierThreshold = 0f, Span<int> outlierColumns = default) =>
        QuantizeHost(context, input, rows, cols, codes, scales, axis, outlierThreshold, outlierColumns);

    /// <summary>Quantizes a row-major bfloat16 matrix in host memory on a CPU-backend context.</summary>
    /// <param name="context">A <see cref="Backend.Cpu"/> context.</param>
    /// <param name="input">Exactly rows * cols values, row-major.</param>
    /// <param name="rows">The number of rows.</param>
    /// <param name="cols">The number of columns.</param>
    /// <param name="codes">Receives rows * cols codes.</param>
    /// <param name="scales">Receives rows (<see cref="QuantAxis.Row"/>) or cols (<see cref="QuantAxis.Column"/>) scales.</param>
    /// <param name="axis">Which vectors share a scale.</param>
    /// <param name="outlierThreshold">0 for none; otherwise &gt; 0 (may be +∞).</param>
    /// <param name="outlierColumns">Receives the outlier columns in ascending order; at least cols long when a threshold is set.</param>
    /// <returns>The number of outlier columns; 0 without a threshold.</returns>
    public static int Int8Quantize(Context context, ReadOnlySpan<BFloat16> input, int rows, int cols, Span<sbyte> codes, Span<float> scales,
        QuantAxis axis = QuantAxis.Row, float outlierThreshold = 0f, Span<int> outlierColumns = default) =>
        QuantizeHost(context, input, rows, cols, codes, scales, axis, outlierThreshold, outlierColumns);

    /// <summary>Dequantizes into a row-major float32 matrix in host memory on a CPU-backend context.</summary>
    /// <param name="context">A <see cref="Backend.Cpu"/> context.</param>
    /// <param name="codes">Exactly rows * cols codes.</param>
    /// <param name="scales">Exactly rows (<see cref="QuantAxis.Row"/>) or cols (<see cref="QuantAxis.Column"/>) scales.</param>
    /// <param name="rows">The number of rows.</param>
    /// <param name="cols">The number of columns.</param>
    /// <param name="output">Receives rows * cols values.</param>
    /// <param name="axis">Which vectors share a scale.</param>
    public static void Int8Dequantize(Context context, ReadOnlySpan<sbyte> codes, ReadOnlySpan<float> scales, int rows, int cols,
        Span<float> output, QuantAxis axis = QuantAxis.Row) =>
        DequantizeHost(context, codes, scales, rows, cols, output, axis);

    /// <summary>Dequantizes into a row-major float16 matrix in host memory on a CPU-backend context.</summary>
    /// <param name="context">A <see cref="Backend.Cpu"/> context.</param>
    /// <param name="codes">Exactly rows * cols codes.</param>
    /// <param name="scales">Exactly rows (<see cref="QuantAxis.Row"/>) or cols (<see cref="QuantAxis.Column"/>) scales.</param>
    /// <param name="rows">The number of rows.</param>
    /// <param name="cols">The number of columns.</param>
    /// <param name="output">Receives rows * cols values.</param>
    /// <param name="axis">Which vectors share a scale.</param>
    public static void Int8Dequantize(Context context, ReadOnlySpan<sbyte> codes, ReadOnlySpan<float> scales, int rows, int cols,
        Span<Half> output, QuantAxis axis = QuantAxis.Row) =>
        DequantizeHost(context, codes, scales, rows, cols, output, axis);

    /// <summary>Dequantizes into a row-major bfloat16 matrix in host memory on a CPU-backend context.</summary>
    /// <param name="context">A <see cref="Backend.Cpu"/> context.</param>
    /// <param name="codes">Exactly rows * cols codes.</param>
    /// <param name="scales">Exactly rows (<see cref="QuantAxis.Row"/>) or cols (<see cref="QuantAxis.Column"/>) scales.</param>
    /// <param name="rows">The number of rows.</param>
    /// <param name="cols">The number of columns.</param>
    /// <param name="output">Receives rows * cols values.</param>
    /// <param name="axis">Which vectors share a scale.</param>
    public static void Int8Dequantize(Context context, ReadOnlySpan<sbyte> codes, ReadOnlySpan<float> scales, int rows, int cols,
        Span<BFloat16> output, QuantAxis axis = QuantAxis.Row) =>
        DequantizeHost(context, codes, scales, rows, cols, output, axis);

    private static int QuantizeHost<T>(Context context, ReadOnlySpan<T> input, int rows, int cols, Span<sbyte> codes, Span<float> scales,
        QuantAxis axis, float outlierThreshold, Span<int> outlierColumns) where T : unmanaged
    {
        RequireCpu(context);
        long elements = CheckMatrix(rows, cols);
        int scaleCount = ScaleCount(rows, cols, axis);
        RequireExactly(input.Length, elements, nameof(input));
        RequireAtLeast(codes.Length, elements, nameof(codes));
        RequireAtLeast(scales.Length, scaleCount, nameof(scales));
        bool outliers = outlierThreshold != 0f;
        if (outliers)
        {
            RequireAtLeast(outlierColumns.Length, cols, nameof(outlierColumns));
        }

        int outlierCount = 0;
        fixed (T* inputData = input)
        fixed (sbyte* codesData = codes)
        fixed (float* scalesData = scales)
        fixed (int* columnsData = outlierColumns)
        {
            NkvTensor nativeInput = TensorView.HostTensor(inputData, DTypes.Of<T>(), [rows, cols]);
            NkvTensor nativeCodes = TensorView.HostTensor(codesData, DType.Int8, [rows, cols]);
            NkvTensor nativeScales = TensorView.HostTensor(scalesData, DType.Float32, [scaleCount]);
            NkvTensor nativeColumns = TensorView.HostTensor(columnsData, DType.Int32, [cols]);
            NkvTensor nativeCount = TensorView.HostTensor(&outlierCount, DType.Int32, [1]);
            NkvInt8QuantParams parameters = Parameters(axis, outlierThreshold);
            NativeStatus.Check(NativeMethods.nkv_int8_quantize(context.Handle, &parameters, &nativeInput, &nativeCodes,
                &nativeScales, outliers ? &nativeColumns : null, outliers ? &nativeCount : null));
            context.Synchronize(); // the spans are unpinned when this block ends
        }
        return outlierCount;
    }

    private static void DequantizeHost<T>(Context context, ReadOnlySpan<sbyte> codes, ReadOnlySpan<float> scales, int rows, int cols,
        Span<T> output, QuantAxis axis) where T : unmanaged
    {
        RequireCpu(context);
        long elements = CheckMatrix(rows, cols);
        int scaleCount = ScaleCount(rows, cols, axis);
        RequireExactly(codes.Length, elements, nameof(codes));
        RequireExactly(scales.Length, scaleCount, nameof(scales));
        RequireAtLeast(output.Length, elements, nameof(output));

        fixed (sbyte* codesData = codes)
        fixed (float* scalesData = scales)
        fixed (T* outputData = output)
        {
            NkvTensor nativeCodes = TensorView.HostTensor(codesData, DType.Int8, [rows, cols]);
            NkvTensor nativeScales = TensorView.HostTensor(scalesData, DType.Float32, [scaleCount]);
            NkvTensor nativeOutput = TensorView.HostTensor(outputData, DTypes.Of<T>(), [rows, cols]);
            NkvInt8QuantParams parameters = Parameters(axis, 0f);
            NativeStatus.Check(NativeMethods.nkv_int8_dequantize(context.Handle, &parameters, &nativeCodes, &nativeScales, &nativeOutput));
            context.Synchronize();
        }
    }

    private static NkvInt8QuantParams Parameters(QuantAxis axis, float outlierThreshold) => new()
    {
        StructSize = (uint)sizeof(NkvInt8QuantParams),
        Axis = (int)axis,
        OutlierThreshold = outlierThreshold,
    };

    private static long CheckMatrix(int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        return (long)rows * cols;
    }

    private static int ScaleCount(int rows, int cols, QuantAxis axis) => axis == QuantAxis.Column ? cols : rows;

    private static void RequireCpu(Context context)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (context.Backend != Backend.Cpu)
        {
            throw new ArgumentException(
                $"Host-span overloads need a CPU-backend context; this one is {context.Backend}. Use DeviceBuffer or TensorView overloads on CUDA.",
                nameof(context));
        }
    }

    private static void RequireExactly(int length, long expected, string paramName)
    {
        if (length != expected)
        {
            throw new ArgumentException($"Expected {expected} elements; got {length}.", paramName);
        }
    }

    private static void RequireAtLeast(int length, long needed, string paramName)
    {
        if (length < needed)
        {
            throw new ArgumentException($"Expected at least {needed} elements; got {length}.", paramName);
        }
    }

    // A buffer of another context may live on another device: its pointer means nothing to this one.
    private static void CheckContext(Context context, Context owner, string name)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (!ReferenceEquals(context, owner))
        {
            throw new ArgumentException($"The buffer belongs to {owner}, not to the {context} the call runs on.", name);
        }
    }
}
