using NativeKv.Interop;

namespace NativeKv;

/// <summary>
/// K-sort (<c>nkv_ksort_calibrate</c>): an order of each KV head's key channels by their root-mean-square over a sample of one
/// layer's keys, largest first, so that channels of similar magnitude share block-floating-point blocks. Give it to
/// <see cref="QuantizedKvCache.SetKeyPermutation"/> before the cache's first append. Keys are permuted after rotary embedding
/// (as written to the cache) and queries likewise at attention time, so q·k is the same sum of the same products (exact up
/// to the order of float additions); with rotary pairs, pairs move as wholes and keep their rotary layout.
/// </summary>
public static unsafe class KSort
{
    /// <summary>The order of one layer's key channels, per KV head.</summary>
    /// <param name="keys">A sample of the layer's keys, row-major [tokens, numHeadsKv, headDim].</param>
    /// <param name="numHeadsKv">KV heads.</param>
    /// <param name="headDim">Channels per head (even with rotary pairs).</param>
    /// <param name="pairs">The rotary pairs to keep together.</param>
    /// <returns>[numHeadsKv * headDim]: entry h * headDim + j is the channel of head h that goes to position j.</returns>
    /// <exception cref="ArgumentException">The sample is not a whole number of [numHeadsKv, headDim] rows.</exception>
    /// <exception cref="NativeKvInvalidArgumentException">A count or <paramref name="pairs"/> is out of range.</exception>
    public static int[] Calibrate(ReadOnlySpan<float> keys, int numHeadsKv, int headDim, RotaryPairs pairs = RotaryPairs.None)
    {
        fixed (float* data = keys) return Calibrate(data, DType.Float32, keys.Length, numHeadsKv, headDim, pairs);
    }

    /// <inheritdoc cref="Calibrate(ReadOnlySpan{float}, int, int, RotaryPairs)"/>
    public static int[] Calibrate(ReadOnlySpan<Half> keys, int numHeadsKv, int headDim, RotaryPairs pairs = RotaryPairs.None)
    {
        fixed (Half* data = keys) return Calibrate(data, DType.Float16, keys.Length, numHeadsKv, headDim, pairs);
    }

    private static int[] Calibrate(void* data, DType dtype, int length, int numHeadsKv, int headDim, RotaryPairs pairs)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(numHeadsKv, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(headDim, 1);
        long row = (long)numHeadsKv * headDim;
        if (length == 0 || length % row != 0)
        {
            throw new ArgumentException($"expected a whole number (>= 1) of [{numHeadsKv}, {headDim}] rows, got {length} values", "keys");
        }
        NkvTensor tensor = TensorView.HostTensor(data, dtype, [length / row, numHeadsKv, headDim]);
        var permutation = new int[row];
        fixed (int* output = permutation)
        {
            NativeStatus.Check(NativeMethods.nkv_ksort_calibrate(&tensor, (int)pairs, output));
        }
        return permutation;
    }
}
