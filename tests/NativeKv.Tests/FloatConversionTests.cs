namespace NativeKv.Tests;

public sealed class FloatConversionTests
{
    /// <summary>Zeros, ties, boundaries of both 16-bit formats, subnormals, infinities and NaNs of every kind.</summary>
    public static readonly float[] SpecialValues = BuildSpecialValues();

    private static float[] BuildSpecialValues()
    {
        var values = new List<float>
        {
            0f, -0f, 1f, -1f, 0.1f, -0.1f, 3.14159265f, 65504f, -65504f, 65505f, 65519.996f, 65520f, -65520f, 65536f, 1e10f,
            float.MaxValue, float.MinValue, float.Epsilon, -float.Epsilon, float.PositiveInfinity, float.NegativeInfinity,
            float.NaN, -float.NaN, 1e-8f, 5.9604645e-8f /* 2^-24 */, 2.9802322e-8f /* 2^-25: tie to 0 */,
            8.940697e-8f /* 3 * 2^-25: tie to 2^-23 */, 6.1035156e-5f /* 2^-14 */, 6.097555e-5f /* largest subnormal half */,
            6.1e-5f, 1.1754944e-38f /* smallest normal float */, 3.3895314e38f /* largest finite bfloat16 */,
        };
        foreach (uint bits in new uint[]
        {
            0x7F80_0001, 0xFF80_0001, 0x7FC0_0000, 0xFFC0_0000, 0x7FFF_FFFF, 0x7FA0_1234, // NaNs: signalling, quiet, payloads
            0x3F80_1000, 0x3F80_3000, 0x3F80_1001, 0x3F80_0FFF, // 1 + ties and near-ties for fp16 (13 dropped bits)
            0x3F80_8000, 0x3F81_8000, 0x3F80_8001, 0x3F80_7FFF, // the same for bfloat16 (16 dropped bits)
            0x7F7F_8000, 0x7F7F_7FFF, 0x7F7F_FFFF, // around bfloat16 overflow
            0x0000_8000, 0x0001_8000, 0x807F_FFFF, // float subnormals with bfloat16 ties
            0x3380_0000, 0x3300_0001, 0x3300_0000, 0x3880_0000, 0x387F_FFFF, 0x387F_E000, 0x387F_F000, // fp16 subnormal edges
            0x477F_E000, 0x477F_EFFF, 0x477F_F000, 0x477F_F001, // fp16 overflow edges
        })
        {
            values.Add(BitConverter.UInt32BitsToSingle(bits));
        }
        return values.ToArray();
    }

    /// <summary>Special values, then random bit patterns (so every exponent and NaN payload shows up).</summary>
    private static float[] Inputs(Random random, int count)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++)
        {
            values[i] = i < SpecialValues.Length ? SpecialValues[i] : BitConverter.UInt32BitsToSingle((uint)random.NextInt64(0, 1L << 32));
        }
        return values;
    }

    // Lengths around each vector width (16 and 8 elements per step) to exercise every tail.
    public static TheoryData<int> Lengths => new(0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 31, 32, 33, 63, 100, 10_007);

    [Theory]
    [MemberData(nameof(Lengths))]
    public void ToHalf_vectorized_matches_scalar(int length)
    {
        float[] source = Inputs(TestSupport.NewRandom(out _), Math.Max(length, SpecialValues.Length))[..length];
        var vectorized = new Half[length];
        var scalar = new Half[length];
        FloatConversions.ToHalf(source, vectorized);
        FloatConversions.ToHalfScalar(source, scalar);
        for (int i = 0; i < length; i++)
        {
            Assert.True(BitConverter.HalfToUInt16Bits(scalar[i]) == BitConverter.HalfToUInt16Bits(vectorized[i]),
                $"[{i}] 0x{BitConverter.SingleToUInt32Bits(source[i]):X8}: scalar 0x{BitConverter.HalfToUInt16Bits(scalar[i]):X4}, " +
                $"vectorized 0x{BitConverter.HalfToUInt16Bits(vectorized[i]):X4}");
        }
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void ToBFloat16_vectorized_matches_scalar(int length)
    {
        float[] source = Inputs(TestSupport.NewRandom(out _), Math.Max(length, SpecialValues.Length))[..length];
        var vectorized = new BFloat16[length];
        var scalar = new BFloat16[length];
        FloatConversions.ToBFloat16(source, vectorized);
        FloatConversions.ToBFloat16Scalar(source, scalar);
        for (int i = 0; i < length; i++)
        {
            Assert.True(scalar[i].RawValue == vectorized[i].RawValue,
                $"[{i}] 0x{BitConverter.SingleToUInt32Bits(source[i]):X8}: scalar 0x{scalar[i].RawValue:X4}, vectorized 0x{vectorized[i].RawValue:X4}");
        }
    }

    [Fact]
    public void ToHalf_scalar_matches_the_runtime_conversion()
    {
        Random random = TestSupport.NewRandom(out _);
        foreach (float value in Inputs(random, 200_000))
        {
            ushort ours = FloatConversions.SingleToHalfBits(value);
            Half theirs = (Half)value;
            if (float.IsNaN(value))
            {
                Assert.True(Half.IsNaN(BitConverter.UInt16BitsToHalf(ours)), $"NaN 0x{BitConverter.SingleToUInt32Bits(value):X8} -> 0x{ours:X4}");
                Assert.Equal(Half.IsNegative(theirs), (ours & 0x8000) != 0);
                Assert.True((ours & 0x0200) != 0, "a NaN converts to a quiet NaN");
            }
            else
            {
                Assert.True(BitConverter.HalfToUInt16Bits(theirs) == ours,
                    $"0x{BitConverter.SingleToUInt32Bits(value):X8} ({value:R}): runtime 0x{BitConverter.HalfToUInt16Bits(theirs):X4}, ours 0x{ours:X4}");
            }
        }
    }

    [Fact]
    public void ToBFloat16_scalar_rounds_to_nearest_even()
    {
        Random random = TestSupport.NewRandom(out _);
        foreach (float value in Inputs(random, 200_000))
        {
            ushort ours = FloatConversions.SingleToBFloat16Bits(value);
            if (float.IsNaN(value))
            {
                Assert.True((ours & 0x7FFF) > 0x7F80 && (ours & 0x0040) != 0, $"NaN 0x{BitConverter.SingleToUInt32Bits(value):X8} -> 0x{ours:X4}");
                Assert.Equal(float.IsNegative(value), (ours & 0x8000) != 0);
                continue;
            }
            Assert.True(NearestEvenBFloat16(value) == ours, $"0x{BitConverter.SingleToUInt32Bits(value):X8}: expected 0x{NearestEvenBFloat16(value):X4}, got 0x{ours:X4}");
        }
    }

    /// <summary>Chooses between the two bfloat16 neighbours of a finite value by distance in float64.</summary>
    private static ushort NearestEvenBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        uint sign = bits & 0x8000_0000;
        uint below = (bits & 0x7FFF_0000) >> 16; // toward zero
        double magnitude = Math.Abs((double)value);
        double low = BitConverter.UInt32BitsToSingle(below << 16);
        // The next bfloat16 up; past the largest finite one this is where 2^128 would be, and it rounds to infinity.
        double high = below == 0x7F7F ? Math.Pow(2, 128) : BitConverter.UInt32BitsToSingle((below + 1) << 16);
        uint chosen = (magnitude - low) < (high - magnitude) ? below
            : (magnitude - low) > (high - magnitude) ? below + 1
            : (below & 1) == 0 ? below : below + 1;
        if (double.IsInfinity(magnitude)) chosen = 0x7F80;
        return (ushort)((sign >> 16) | chosen);
    }

    [Fact]
    public void Half_to_single_is_exact_for_every_half()
    {
        var halves = new Half[65536];
        for (int i = 0; i < halves.Length; i++)
        {
            halves[i] = BitConverter.UInt16BitsToHalf((ushort)i);
        }
        var vectorized = new float[halves.Length];
        var scalar = new float[halves.Length];
        FloatConversions.ToSingle(halves, vectorized);
        FloatConversions.ToSingleScalar(halves, scalar);
        for (int i = 0; i < halves.Length; i++)
        {
            Assert.Equal(BitConverter.SingleToUInt32Bits(scalar[i]), BitConverter.SingleToUInt32Bits(vectorized[i]));
            float runtime = (float)halves[i];
            if (Half.IsNaN(halves[i]))
            {
                Assert.True(float.IsNaN(scalar[i]) && float.IsNegative(scalar[i]) == Half.IsNegative(halves[i]), $"0x{i:X4}");
            }
            else
            {
                Assert.True(BitConverter.SingleToUInt32Bits(runtime) == BitConverter.SingleToUInt32Bits(scalar[i]), $"0x{i:X4}: {runtime:R} vs {scalar[i]:R}");
                Assert.True(BitConverter.HalfToUInt16Bits((Half)scalar[i]) == i, $"0x{i:X4} does not round-trip");
            }
        }
    }

    [Fact]
    public void BFloat16_to_single_is_exact_for_every_bfloat16()
    {
        var values = new BFloat16[65536];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = BFloat16.FromRawValue((ushort)i);
        }
        var vectorized = new float[values.Length];
        var scalar = new float[values.Length];
        FloatConversions.ToSingle(values, vectorized);
        FloatConversions.ToSingleScalar(values, scalar);
        for (int i = 0; i < values.Length; i++)
        {
            Assert.Equal((uint)i << 16, BitConverter.SingleToUInt32Bits(vectorized[i]));
            Assert.Equal((uint)i << 16, BitConverter.SingleToUInt32Bits(scalar[i]));
        }
    }

    [Fact]
    public void Widening_then_narrowing_round_trips_with_odd_lengths()
    {
        Random random = TestSupport.NewRandom(out _);
        float[] source = TestSupport.RandomFloats(random, 1001, 100f);
        var halves = new Half[source.Length];
        var back = new float[source.Length];
        var again = new Half[source.Length];
        FloatConversions.ToHalf(source, halves);
        FloatConversions.ToSingle(halves, back);
        FloatConversions.ToHalf(back, again);
        Assert.Equal(halves, again);
    }

    [Fact]
    public void Short_destination_throws_and_writes_nothing()
    {
        var destination = new Half[3];
        var error = Assert.Throws<ArgumentException>(() => FloatConversions.ToHalf(new float[4], destination));
        Assert.Equal("destination", error.ParamName);
        Assert.Throws<ArgumentException>(() => FloatConversions.ToBFloat16(new float[4], new BFloat16[3]));
        Assert.Throws<ArgumentException>(() => FloatConversions.ToSingle(new Half[4], new float[3]));
        Assert.Throws<ArgumentException>(() => FloatConversions.ToSingle(new BFloat16[4], new float[3]));
    }

    [Fact]
    public void Overlapping_spans_throw()
    {
        var buffer = new float[32];
        Assert.Throws<ArgumentException>(() =>
            FloatConversions.ToHalf(buffer.AsSpan(0, 16), System.Runtime.InteropServices.MemoryMarshal.Cast<float, Half>(buffer.AsSpan(8, 8))));
    }
}
