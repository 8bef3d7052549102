using System.Globalization;

namespace NativeKv.Tests;

public sealed class BFloat16Tests
{
    [Theory]
    [InlineData(1f, 0x3F80)]
    [InlineData(-2f, 0xC000)]
    [InlineData(0f, 0x0000)]
    [InlineData(-0f, 0x8000)]
    [InlineData(1.00390625f, 0x3F80)] // 1 + 2^-8: a tie, rounds to the even 1
    [InlineData(1.01171875f, 0x3F82)] // 1 + 3 * 2^-8: a tie, rounds up to the even neighbour
    [InlineData(1.0039064f, 0x3F81)]  // just above the tie
    [InlineData(float.PositiveInfinity, 0x7F80)]
    [InlineData(float.NegativeInfinity, 0xFF80)]
    [InlineData(float.MaxValue, 0x7F80)] // rounds past the largest finite bfloat16
    [InlineData(3.3895314e38f, 0x7F7F)]
    [InlineData(float.Epsilon, 0x0000)]
    public void Converts_from_float_with_round_to_nearest_even(float value, int expectedBits) =>
        Assert.Equal((ushort)expectedBits, ((BFloat16)value).RawValue);

    [Theory]
    [InlineData(0x7FC0_0000u)]
    [InlineData(0xFFC0_0000u)]
    [InlineData(0x7F80_0001u)] // signalling NaN whose payload is all in the dropped bits
    [InlineData(0xFF80_0001u)]
    [InlineData(0x7FFF_FFFFu)]
    public void NaN_stays_NaN_with_its_sign(uint bits)
    {
        float value = BitConverter.UInt32BitsToSingle(bits);
        var converted = (BFloat16)value;
        Assert.True(BFloat16.IsNaN(converted));
        Assert.True(float.IsNaN((float)converted));
        Assert.Equal(float.IsNegative(value), float.IsNegative((float)converted));
    }

    [Fact]
    public void Widening_is_exact()
    {
        for (int bits = 0; bits < 65536; bits += 7)
        {
            Assert.Equal((uint)bits << 16, BitConverter.SingleToUInt32Bits((float)BFloat16.FromRawValue((ushort)bits)));
        }
    }

    [Fact]
    public void Equality_follows_float()
    {
        Assert.True(BFloat16.NaN.Equals(BFloat16.NaN));
        Assert.False(BFloat16.NaN == BFloat16.NaN);
        Assert.True(BFloat16.NaN != BFloat16.NaN);
        BFloat16 positiveZero = (BFloat16)0f, negativeZero = (BFloat16)(-0f);
        Assert.True(positiveZero == negativeZero);
        Assert.True(positiveZero.Equals(negativeZero));
        Assert.Equal(positiveZero.GetHashCode(), negativeZero.GetHashCode());
        Assert.Equal(BFloat16.NaN.GetHashCode(), BFloat16.FromRawValue(0xFFC1).GetHashCode());
        Assert.True((BFloat16)1f < (BFloat16)2f);
        Assert.True(BFloat16.NegativeInfinity < BFloat16.MinValue);
        Assert.True(BFloat16.MaxValue < BFloat16.PositiveInfinity);
        Assert.Equal(BFloat16.One, (BFloat16)1f);
        Assert.False(BFloat16.Zero.Equals((object)0f));
    }

    [Fact]
    public void CompareTo_sorts_like_float()
    {
        BFloat16[] values = [(BFloat16)3f, BFloat16.NaN, BFloat16.NegativeInfinity, (BFloat16)(-1f), BFloat16.Zero];
        Array.Sort(values);
        Assert.True(BFloat16.IsNaN(values[0]));
        Assert.Equal([float.NegativeInfinity, -1f, 0f, 3f], values[1..].Select(v => (float)v));
    }

    [Fact]
    public void Classification()
    {
        Assert.True(BFloat16.IsInfinity(BFloat16.PositiveInfinity));
        Assert.True(BFloat16.IsInfinity(BFloat16.NegativeInfinity));
        Assert.False(BFloat16.IsFinite(BFloat16.NaN));
        Assert.True(BFloat16.IsFinite(BFloat16.MaxValue));
        Assert.True(BFloat16.IsFinite(BFloat16.Epsilon));
        Assert.False(BFloat16.IsNaN(BFloat16.PositiveInfinity));
        Assert.Equal(9.18355e-41f, (float)BFloat16.Epsilon, 1e-45f);
    }

    [Fact]
    public void ToString_formats_the_float_value()
    {
        Assert.Equal("1.5", ((BFloat16)1.5f).ToString(null, CultureInfo.InvariantCulture));
        Assert.Equal("NaN", BFloat16.NaN.ToString(null, CultureInfo.InvariantCulture));
        Assert.Equal(float.NegativeInfinity.ToString(CultureInfo.InvariantCulture), BFloat16.NegativeInfinity.ToString(null, CultureInfo.InvariantCulture));
        Assert.Equal("3.140625", ((BFloat16)3.14159f).ToString("R", CultureInfo.InvariantCulture));
        Assert.Equal(((float)(BFloat16)0.1f).ToString(CultureInfo.CurrentCulture), ((BFloat16)0.1f).ToString());
    }
}
