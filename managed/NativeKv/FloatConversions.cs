using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace NativeKv;

/// <summary>
/// Bulk conversions between float32 and the 16-bit float formats, vectorized with <see cref="Vector{T}"/> (256-bit
/// with AVX2, 128-bit with NEON or SSE; integer arithmetic on the bit patterns, so results do not depend on F16C or
/// other conversion instructions). float → 16-bit
/// rounds to nearest, ties to even, handles subnormals, overflows to ∞ and keeps NaN a quiet NaN with its sign.
/// 16-bit → float is exact.
/// </summary>
public static class FloatConversions
{
    /// <summary>Converts each float to the nearest <see cref="Half"/>.</summary>
    /// <param name="source">The values to convert.</param>
    /// <param name="destination">Receives <c>source.Length</c> values; must not overlap <paramref name="source"/>.</param>
    public static void ToHalf(ReadOnlySpan<float> source, Span<Half> destination)
    {
        CheckSpans(MemoryMarshal.AsBytes(source), source.Length, MemoryMarshal.AsBytes(destination), destination.Length);
        Narrow<SingleToHalfConversion>(
            ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(source)),
            ref Unsafe.As<Half, ushort>(ref MemoryMarshal.GetReference(destination)), (nuint)source.Length);
    }

    /// <summary>Widens each <see cref="Half"/> to float (exact).</summary>
    /// <param name="source">The values to convert.</param>
    /// <param name="destination">Receives <c>source.Length</c> values; must not overlap <paramref name="source"/>.</param>
    public static void ToSingle(ReadOnlySpan<Half> source, Span<float> destination)
    {
        CheckSpans(MemoryMarshal.AsBytes(source), source.Length, MemoryMarshal.AsBytes(destination), destination.Length);
        Widen<HalfToSingleConversion>(
            ref Unsafe.As<Half, ushort>(ref MemoryMarshal.GetReference(source)),
            ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(destination)), (nuint)source.Length);
    }

    /// <summary>Converts each float to the nearest <see cref="BFloat16"/>.</summary>
    /// <param name="source">The values to convert.</param>
    /// <param name="destination">Receives <c>source.Length</c> values; must not overlap <paramref name="source"/>.</param>
    public static void ToBFloat16(ReadOnlySpan<float> source, Span<BFloat16> destination)
    {
        CheckSpans(MemoryMarshal.AsBytes(source), source.Length, MemoryMarshal.AsBytes(destination), destination.Length);
        Narrow<SingleToBFloat16Conversion>(
            ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(source)),
            ref Unsafe.As<BFloat16, ushort>(ref MemoryMarshal.GetReference(destination)), (nuint)source.Length);
    }

    /// <summary>Widens each <see cref="BFloat16"/> to float (exact).</summary>
    /// <param name="source">The values to convert.</param>
    /// <param name="destination">Receives <c>source.Length</c> values; must not overlap <paramref name="source"/>.</param>
    public static void ToSingle(ReadOnlySpan<BFloat16> source, Span<float> destination)
    {
        CheckSpans(MemoryMarshal.AsBytes(source), source.Length, MemoryMarshal.AsBytes(destination), destination.Length);
        Widen<BFloat16ToSingleConversion>(
            ref Unsafe.As<BFloat16, ushort>(ref MemoryMarshal.GetReference(source)),
            ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(destination)), (nuint)source.Length);
    }

    // ---- Scalar reference: written for clarity, used for the tails, by BFloat16, and by the tests ----

    internal static ushort SingleToBFloat16Bits(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if ((bits & 0x7FFF_FFFF) > 0x7F80_0000)
        {
            return (ushort)((bits >> 16) | 0x0040); // quiet NaN, sign and top of the payload kept
        }
        uint lsb = (bits >> 16) & 1;
        return (ushort)((bits + 0x7FFF + lsb) >> 16); // ties to even; a carry into the exponent is correct, up to ∞
    }

    internal static float BFloat16BitsToSingle(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    internal static ushort SingleToHalfBits(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        uint sign = (bits >> 16) & 0x8000;
        uint magnitude = bits & 0x7FFF_FFFF;
        uint half;
        if (magnitude > 0x7F80_0000)
        {
            half = 0x7E00 | ((magnitude >> 13) & 0x3FF); // quiet NaN, top of the payload kept
        }
        else if (magnitude >= 0x3880_0000) // |value| >= 2^-14, the smallest normal half, or ∞
        {
            uint lsb = (magnitude >> 13) & 1;
            uint rebiased = ((magnitude + 0xFFF + lsb) >> 13) - ((127 - 15) << 10);
            half = Math.Min(rebiased, 0x7C00); // beyond 65504 (after rounding) is ∞
        }
        else
        {
            // A subnormal half counts units of 2^-24; the product is exact, so rounding it is the only rounding.
            half = (uint)MathF.Round(BitConverter.UInt32BitsToSingle(magnitude) * 16777216f, MidpointRounding.ToEven);
        }
        return (ushort)(sign | half);
    }

    internal static float HalfBitsToSingle(ushort bits)
    {
        uint sign = (uint)(bits & 0x8000) << 16;
        uint exponent = bits & 0x7C00u;
        uint shifted = (uint)(bits & 0x7FFF) << 13;
        uint single = exponent switch
        {
            0x7C00 => shifted + ((255u - 31) << 23), // ∞ and NaN keep their mantissa
            0 => BitConverter.SingleToUInt32Bits((bits & 0x3FF) / 16777216f), // zero and subnormals: m * 2^-24, exact
            _ => shifted + ((127u - 15) << 23),
        };
        return BitConverter.UInt32BitsToSingle(single | sign);
    }

    internal static void ToHalfScalar(ReadOnlySpan<float> source, Span<Half> destination)
    {
        CheckSpans(MemoryMarshal.AsBytes(source), source.Length, MemoryMarshal.AsBytes(destination), destination.Length);
        for (int i = 0; i < source.Length; i++)
        {
            destination[i] = BitConverter.UInt16BitsToHalf(SingleToHalfBits(source[i]));
        }
    }

    internal static void ToSingleScalar(ReadOnlySpan<Half> source, Span<float> destination)
    {
        CheckSpans(MemoryMarshal.AsBytes(source), source.Length, MemoryMarshal.AsBytes(destination), destination.Length);
        for (int i = 0; i < source.Length; i++)
        {
            destination[i] = HalfBitsToSingle(BitConverter.HalfToUInt16Bits(source[i]));
        }
    }

    internal static void ToBFloat16Scalar(ReadOnlySpan<float> source, Span<BFloat16> destination)
    {
        CheckSpans(MemoryMarshal.AsBytes(source), source.Length, MemoryMarshal.AsBytes(destination), destination.Length);
        for (int i = 0; i < source.Length; i++)
        {
            destination[i] = BFloat16.FromRawValue(SingleToBFloat16Bits(source[i]));
        }
    }

    internal static void ToSingleScalar(ReadOnlySpan<BFloat16> source, Span<float> destination)
    {
        CheckSpans(MemoryMarshal.AsBytes(source), source.Length, MemoryMarshal.AsBytes(destination), destination.Length);
        for (int i = 0; i < source.Length; i++)
        {
            destination[i] = BFloat16BitsToSingle(source[i].RawValue);
        }
    }

    // ---- Vector kernels: the scalar algorithms above, branch-free; one loop per direction ----

    /// <summary>A float32 → 16-bit conversion on bit patterns: one lane per uint, the result in the low 16 bits.</summary>
    private interface INarrowingConversion
    {
        static abstract Vector<uint> Convert(Vector<uint> singleBits);
        static abstract ushort Convert(uint singleBits);
    }

    /// <summary>A 16-bit → float32 conversion on bit patterns, widened to one lane per uint.</summary>
    private interface IWideningConversion
    {
        static abstract Vector<uint> Convert(Vector<uint> sixteenBits);
        static abstract uint Convert(ushort sixteenBits);
    }

    // Struct type arguments make the JIT compile one specialized loop per conversion.
    private static void Narrow<TConversion>(ref uint source, ref ushort destination, nuint count)
        where TConversion : struct, INarrowingConversion
    {
        nuint i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            nuint lanes = (nuint)Vector<uint>.Count;
            for (; i + 2 * lanes <= count; i += 2 * lanes)
            {
                Vector.Narrow(TConversion.Convert(Vector.LoadUnsafe(ref source, i)),
                              TConversion.Convert(Vector.LoadUnsafe(ref source, i + lanes)))
                    .StoreUnsafe(ref destination, i);
            }
        }
        for (; i < count; i++)
        {
            Unsafe.Add(ref destination, i) = TConversion.Convert(Unsafe.Add(ref source, i));
        }
    }

    private static void Widen<TConversion>(ref ushort source, ref uint destination, nuint count)
        where TConversion : struct, IWideningConversion
    {
        nuint i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            nuint lanes = (nuint)Vector<uint>.Count;
            for (; i + 2 * lanes <= count; i += 2 * lanes)
            {
                Vector.Widen(Vector.LoadUnsafe(ref source, i), out Vector<uint> lower, out Vector<uint> upper);
                TConversion.Convert(lower).StoreUnsafe(ref destination, i);
                TConversion.Convert(upper).StoreUnsafe(ref destination, i + lanes);
            }
        }
        for (; i < count; i++)
        {
            Unsafe.Add(ref destination, i) = TConversion.Convert(Unsafe.Add(ref source, i));
        }
    }

    private readonly struct SingleToBFloat16Conversion : INarrowingConversion
    {
        public static ushort Convert(uint singleBits) => SingleToBFloat16Bits(BitConverter.UInt32BitsToSingle(singleBits));

        public static Vector<uint> Convert(Vector<uint> bits)
        {
            Vector<uint> high = Vector.ShiftRightLogical(bits, 16);
            Vector<uint> rounded = Vector.ShiftRightLogical(bits + new Vector<uint>(0x7FFFu) + (high & Vector<uint>.One), 16);
            Vector<uint> isNaN = Vector.GreaterThan(bits & new Vector<uint>(0x7FFF_FFFFu), new Vector<uint>(0x7F80_0000u));
            return Vector.ConditionalSelect(isNaN, high | new Vector<uint>(0x0040u), rounded);
        }
    }

    private readonly struct SingleToHalfConversion : INarrowingConversion
    {
        public static ushort Convert(uint singleBits) => SingleToHalfBits(BitConverter.UInt32BitsToSingle(singleBits));

        public static Vector<uint> Convert(Vector<uint> bits)
        {
            Vector<uint> sign = Vector.ShiftRightLogical(bits, 16) & new Vector<uint>(0x8000u);
            Vector<uint> magnitude = bits & new Vector<uint>(0x7FFF_FFFFu);
            Vector<uint> mantissaTop = Vector.ShiftRightLogical(magnitude, 13);
            Vector<uint> normal = Vector.Min(
                Vector.ShiftRightLogical(magnitude + new Vector<uint>(0xFFFu) + (mantissaTop & Vector<uint>.One), 13) -
                new Vector<uint>((127u - 15) << 10),
                new Vector<uint>(0x7C00u));
            // Adding 0.5 leaves a float whose last mantissa bit is worth 2^-24: the FPU's own ties-to-even rounding
            // produces the subnormal half's mantissa in the low bits.
            Vector<uint> subnormal = Vector.AsVectorUInt32(Vector.AsVectorSingle(magnitude) + new Vector<float>(0.5f)) -
                                     new Vector<uint>(0x3F00_0000u);
            Vector<uint> nan = new Vector<uint>(0x7E00u) | (mantissaTop & new Vector<uint>(0x3FFu));
            Vector<uint> half = Vector.ConditionalSelect(Vector.LessThan(magnitude, new Vector<uint>(0x3880_0000u)), subnormal, normal);
            half = Vector.ConditionalSelect(Vector.GreaterThan(magnitude, new Vector<uint>(0x7F80_0000u)), nan, half);
            return half | sign;
        }
    }

    private readonly struct BFloat16ToSingleConversion : IWideningConversion
    {
        public static uint Convert(ushort sixteenBits) => (uint)sixteenBits << 16;

        public static Vector<uint> Convert(Vector<uint> bits) => Vector.ShiftLeft(bits, 16);
    }

    private readonly struct HalfToSingleConversion : IWideningConversion
    {
        public static uint Convert(ushort sixteenBits) => BitConverter.SingleToUInt32Bits(HalfBitsToSingle(sixteenBits));

        public static Vector<uint> Convert(Vector<uint> bits)
        {
            Vector<uint> sign = Vector.ShiftLeft(bits & new Vector<uint>(0x8000u), 16);
            Vector<uint> exponent = bits & new Vector<uint>(0x7C00u);
            Vector<uint> shifted = Vector.ShiftLeft(bits & new Vector<uint>(0x7FFFu), 13);
            Vector<uint> normal = shifted + new Vector<uint>((127u - 15) << 23);
            Vector<uint> infOrNaN = shifted + new Vector<uint>((255u - 31) << 23);
            // Give a subnormal the exponent of 2^-14 plus an implicit one, then subtract that one exactly: m * 2^-24.
            Vector<uint> subnormal = Vector.AsVectorUInt32(
                Vector.AsVectorSingle(shifted + new Vector<uint>((127u - 14) << 23)) - new Vector<float>(1f / 16384));
            Vector<uint> single = Vector.ConditionalSelect(Vector.Equals(exponent, new Vector<uint>(0x7C00u)), infOrNaN, normal);
            single = Vector.ConditionalSelect(Vector.Equals(exponent, Vector<uint>.Zero), subnormal, single);
            return single | sign;
        }
    }

    private static void CheckSpans(ReadOnlySpan<byte> source, int sourceLength, ReadOnlySpan<byte> destination, int destinationLength)
    {
        if (destinationLength < sourceLength)
        {
            throw new ArgumentException($"The destination holds {destinationLength} elements; {sourceLength} are needed.", "destination");
        }
        if (source.Overlaps(destination))
        {
            throw new ArgumentException("The source and destination spans overlap.", "destination");
        }
    }
}
