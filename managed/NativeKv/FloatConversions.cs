using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace NativeKv;

/// <summary>
/// Bulk conversions between float32 and the 16-bit float formats, vectorized with Vector256/Vector128 (integer
/// arithmetic on the bit patterns, so results do not depend on F16C or other conversion instructions). float → 16-bit
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
        ref uint src = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(source));
        ref ushort dst = ref Unsafe.As<Half, ushort>(ref MemoryMarshal.GetReference(destination));
        nuint n = (nuint)source.Length, i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 16 <= n; i += 16)
            {
                Vector256.Narrow(SingleToHalf(Vector256.LoadUnsafe(ref src, i)), SingleToHalf(Vector256.LoadUnsafe(ref src, i + 8)))
                    .StoreUnsafe(ref dst, i);
            }
        }
        if (Vector128.IsHardwareAccelerated)
        {
            for (; i + 8 <= n; i += 8)
            {
                Vector128.Narrow(SingleToHalf(Vector128.LoadUnsafe(ref src, i)), SingleToHalf(Vector128.LoadUnsafe(ref src, i + 4)))
                    .StoreUnsafe(ref dst, i);
            }
        }
        for (; i < n; i++)
        {
            Unsafe.Add(ref dst, i) = SingleToHalfBits(BitConverter.UInt32BitsToSingle(Unsafe.Add(ref src, i)));
        }
    }

    /// <summary>Widens each <see cref="Half"/> to float (exact).</summary>
    /// <param name="source">The values to convert.</param>
    /// <param name="destination">Receives <c>source.Length</c> values; must not overlap <paramref name="source"/>.</param>
    public static void ToSingle(ReadOnlySpan<Half> source, Span<float> destination)
    {
        CheckSpans(MemoryMarshal.AsBytes(source), source.Length, MemoryMarshal.AsBytes(destination), destination.Length);
        ref ushort src = ref Unsafe.As<Half, ushort>(ref MemoryMarshal.GetReference(source));
        ref uint dst = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(destination));
        nuint n = (nuint)source.Length, i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 16 <= n; i += 16)
            {
                (Vector256<uint> lower, Vector256<uint> upper) = Vector256.Widen(Vector256.LoadUnsafe(ref src, i));
                HalfToSingle(lower).StoreUnsafe(ref dst, i);
                HalfToSingle(upper).StoreUnsafe(ref dst, i + 8);
            }
        }
        if (Vector128.IsHardwareAccelerated)
        {
            for (; i + 8 <= n; i += 8)
            {
                (Vector128<uint> lower, Vector128<uint> upper) = Vector128.Widen(Vector128.LoadUnsafe(ref src, i));
                HalfToSingle(lower).StoreUnsafe(ref dst, i);
                HalfToSingle(upper).StoreUnsafe(ref dst, i + 4);
            }
        }
        for (; i < n; i++)
        {
            Unsafe.Add(ref dst, i) = BitConverter.SingleToUInt32Bits(HalfBitsToSingle(Unsafe.Add(ref src, i)));
        }
    }

    /// <summary>Converts each float to the nearest <see cref="BFloat16"/>.</summary>
    /// <param name="source">The values to convert.</param>
    /// <param name="destination">Receives <c>source.Length</c> values; must not overlap <paramref name="source"/>.</param>
    public static void ToBFloat16(ReadOnlySpan<float> source, Span<BFloat16> destination)
    {
        CheckSpans(MemoryMarshal.AsBytes(source), source.Length, MemoryMarshal.AsBytes(destination), destination.Length);
        ref uint src = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(source));
        ref ushort dst = ref Unsafe.As<BFloat16, ushort>(ref MemoryMarshal.GetReference(destination));
        nuint n = (nuint)source.Length, i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 16 <= n; i += 16)
            {
                Vector256.Narrow(SingleToBFloat16(Vector256.LoadUnsafe(ref src, i)), SingleToBFloat16(Vector256.LoadUnsafe(ref src, i + 8)))
                    .StoreUnsafe(ref dst, i);
            }
        }
        if (Vector128.IsHardwareAccelerated)
        {
            for (; i + 8 <= n; i += 8)
            {
                Vector128.Narrow(SingleToBFloat16(Vector128.LoadUnsafe(ref src, i)), SingleToBFloat16(Vector128.LoadUnsafe(ref src, i + 4)))
                    .StoreUnsafe(ref dst, i);
            }
        }
        for (; i < n; i++)
        {
            Unsafe.Add(ref dst, i) = SingleToBFloat16Bits(BitConverter.UInt32BitsToSingle(Unsafe.Add(ref src, i)));
        }
    }

    /// <summary>Widens each <see cref="BFloat16"/> to float (exact).</summary>
    /// <param name="source">The values to convert.</param>
    /// <param name="destination">Receives <c>source.Length</c> values; must not overlap <paramref name="source"/>.</param>
    public static void ToSingle(ReadOnlySpan<BFloat16> source, Span<float> destination)
    {
        CheckSpans(MemoryMarshal.AsBytes(source), source.Length, MemoryMarshal.AsBytes(destination), destination.Length);
        ref ushort src = ref Unsafe.As<BFloat16, ushort>(ref MemoryMarshal.GetReference(source));
        ref uint dst = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(destination));
        nuint n = (nuint)source.Length, i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 16 <= n; i += 16)
            {
                (Vector256<uint> lower, Vector256<uint> upper) = Vector256.Widen(Vector256.LoadUnsafe(ref src, i));
                Vector256.ShiftLeft(lower, 16).StoreUnsafe(ref dst, i);
                Vector256.ShiftLeft(upper, 16).StoreUnsafe(ref dst, i + 8);
            }
        }
        if (Vector128.IsHardwareAccelerated)
        {
            for (; i + 8 <= n; i += 8)
            {
                (Vector128<uint> lower, Vector128<uint> upper) = Vector128.Widen(Vector128.LoadUnsafe(ref src, i));
                Vector128.ShiftLeft(lower, 16).StoreUnsafe(ref dst, i);
                Vector128.ShiftLeft(upper, 16).StoreUnsafe(ref dst, i + 4);
            }
        }
        for (; i < n; i++)
        {
            Unsafe.Add(ref dst, i) = (uint)Unsafe.Add(ref src, i) << 16;
        }
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

    // ---- Vector kernels: the scalar algorithms above, branch-free, one copy per vector width ----

    private static Vector256<uint> SingleToBFloat16(Vector256<uint> bits)
    {
        Vector256<uint> high = Vector256.ShiftRightLogical(bits, 16);
        Vector256<uint> rounded = Vector256.ShiftRightLogical(bits + Vector256.Create(0x7FFFu) + (high & Vector256<uint>.One), 16);
        Vector256<uint> isNaN = Vector256.GreaterThan(bits & Vector256.Create(0x7FFF_FFFFu), Vector256.Create(0x7F80_0000u));
        return Vector256.ConditionalSelect(isNaN, high | Vector256.Create(0x0040u), rounded);
    }

    private static Vector128<uint> SingleToBFloat16(Vector128<uint> bits)
    {
        Vector128<uint> high = Vector128.ShiftRightLogical(bits, 16);
        Vector128<uint> rounded = Vector128.ShiftRightLogical(bits + Vector128.Create(0x7FFFu) + (high & Vector128<uint>.One), 16);
        Vector128<uint> isNaN = Vector128.GreaterThan(bits & Vector128.Create(0x7FFF_FFFFu), Vector128.Create(0x7F80_0000u));
        return Vector128.ConditionalSelect(isNaN, high | Vector128.Create(0x0040u), rounded);
    }

    private static Vector256<uint> SingleToHalf(Vector256<uint> bits)
    {
        Vector256<uint> sign = Vector256.ShiftRightLogical(bits, 16) & Vector256.Create(0x8000u);
        Vector256<uint> magnitude = bits & Vector256.Create(0x7FFF_FFFFu);
        Vector256<uint> mantissaTop = Vector256.ShiftRightLogical(magnitude, 13);
        Vector256<uint> normal = Vector256.Min(
            Vector256.ShiftRightLogical(magnitude + Vector256.Create(0xFFFu) + (mantissaTop & Vector256<uint>.One), 13) -
            Vector256.Create((127u - 15) << 10),
            Vector256.Create(0x7C00u));
        // Adding 0.5 leaves a float whose last mantissa bit is worth 2^-24: the FPU's own ties-to-even rounding
        // produces the subnormal half's mantissa in the low bits.
        Vector256<uint> subnormal = (magnitude.AsSingle() + Vector256.Create(0.5f)).AsUInt32() - Vector256.Create(0x3F00_0000u);
        Vector256<uint> nan = Vector256.Create(0x7E00u) | (mantissaTop & Vector256.Create(0x3FFu));
        Vector256<uint> half = Vector256.ConditionalSelect(Vector256.LessThan(magnitude, Vector256.Create(0x3880_0000u)), subnormal, normal);
        half = Vector256.ConditionalSelect(Vector256.GreaterThan(magnitude, Vector256.Create(0x7F80_0000u)), nan, half);
        return half | sign;
    }

    private static Vector128<uint> SingleToHalf(Vector128<uint> bits)
    {
        Vector128<uint> sign = Vector128.ShiftRightLogical(bits, 16) & Vector128.Create(0x8000u);
        Vector128<uint> magnitude = bits & Vector128.Create(0x7FFF_FFFFu);
        Vector128<uint> mantissaTop = Vector128.ShiftRightLogical(magnitude, 13);
        Vector128<uint> normal = Vector128.Min(
            Vector128.ShiftRightLogical(magnitude + Vector128.Create(0xFFFu) + (mantissaTop & Vector128<uint>.One), 13) -
            Vector128.Create((127u - 15) << 10),
            Vector128.Create(0x7C00u));
        Vector128<uint> subnormal = (magnitude.AsSingle() + Vector128.Create(0.5f)).AsUInt32() - Vector128.Create(0x3F00_0000u);
        Vector128<uint> nan = Vector128.Create(0x7E00u) | (mantissaTop & Vector128.Create(0x3FFu));
        Vector128<uint> half = Vector128.ConditionalSelect(Vector128.LessThan(magnitude, Vector128.Create(0x3880_0000u)), subnormal, normal);
        half = Vector128.ConditionalSelect(Vector128.GreaterThan(magnitude, Vector128.Create(0x7F80_0000u)), nan, half);
        return half | sign;
    }

    private static Vector256<uint> HalfToSingle(Vector256<uint> bits)
    {
        Vector256<uint> sign = Vector256.ShiftLeft(bits & Vector256.Create(0x8000u), 16);
        Vector256<uint> exponent = bits & Vector256.Create(0x7C00u);
        Vector256<uint> shifted = Vector256.ShiftLeft(bits & Vector256.Create(0x7FFFu), 13);
        Vector256<uint> normal = shifted + Vector256.Create((127u - 15) << 23);
        Vector256<uint> infOrNaN = shifted + Vector256.Create((255u - 31) << 23);
        // Give a subnormal the exponent of 2^-14 plus an implicit one, then subtract that one exactly: m * 2^-24.
        Vector256<uint> subnormal = ((shifted + Vector256.Create((127u - 14) << 23)).AsSingle() - Vector256.Create(1f / 16384)).AsUInt32();
        Vector256<uint> single = Vector256.ConditionalSelect(Vector256.Equals(exponent, Vector256.Create(0x7C00u)), infOrNaN, normal);
        single = Vector256.ConditionalSelect(Vector256.Equals(exponent, Vector256<uint>.Zero), subnormal, single);
        return single | sign;
    }

    private static Vector128<uint> HalfToSingle(Vector128<uint> bits)
    {
        Vector128<uint> sign = Vector128.ShiftLeft(bits & Vector128.Create(0x8000u), 16);
        Vector128<uint> exponent = bits & Vector128.Create(0x7C00u);
        Vector128<uint> shifted = Vector128.ShiftLeft(bits & Vector128.Create(0x7FFFu), 13);
        Vector128<uint> normal = shifted + Vector128.Create((127u - 15) << 23);
        Vector128<uint> infOrNaN = shifted + Vector128.Create((255u - 31) << 23);
        Vector128<uint> subnormal = ((shifted + Vector128.Create((127u - 14) << 23)).AsSingle() - Vector128.Create(1f / 16384)).AsUInt32();
        Vector128<uint> single = Vector128.ConditionalSelect(Vector128.Equals(exponent, Vector128.Create(0x7C00u)), infOrNaN, normal);
        single = Vector128.ConditionalSelect(Vector128.Equals(exponent, Vector128<uint>.Zero), subnormal, single);
        return single | sign;
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
