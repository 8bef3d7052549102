using System.Globalization;

namespace NativeKv;

/// <summary>
/// A bfloat16 value: the upper 16 bits of an IEEE float32 (8 exponent bits, 7 mantissa bits). Conversion from
/// <see cref="float"/> rounds to nearest, ties to even; NaN stays NaN (quiet, sign kept).
/// </summary>
public readonly struct BFloat16 : IEquatable<BFloat16>, IComparable<BFloat16>, IFormattable
{
    private readonly ushort _bits;

    private BFloat16(ushort bits) => _bits = bits;

    /// <summary>The raw bit pattern.</summary>
    public ushort RawValue => _bits;

    /// <summary>0.</summary>
    public static BFloat16 Zero => default;

    /// <summary>1.</summary>
    public static BFloat16 One => new(0x3F80);

    /// <summary>A quiet NaN.</summary>
    public static BFloat16 NaN => new(0x7FC0);

    /// <summary>+∞.</summary>
    public static BFloat16 PositiveInfinity => new(0x7F80);

    /// <summary>−∞.</summary>
    public static BFloat16 NegativeInfinity => new(0xFF80);

    /// <summary>The largest finite value, about 3.39e38.</summary>
    public static BFloat16 MaxValue => new(0x7F7F);

    /// <summary>The most negative finite value.</summary>
    public static BFloat16 MinValue => new(0xFF7F);

    /// <summary>The smallest positive (subnormal) value, about 9.18e-41.</summary>
    public static BFloat16 Epsilon => new(0x0001);

    /// <summary>Reinterprets a bit pattern as a bfloat16.</summary>
    /// <param name="bits">The raw bits.</param>
    public static BFloat16 FromRawValue(ushort bits) => new(bits);

    /// <summary>Whether the value is NaN.</summary>
    /// <param name="value">The value to test.</param>
    public static bool IsNaN(BFloat16 value) => (value._bits & 0x7FFF) > 0x7F80;

    /// <summary>Whether the value is +∞ or −∞.</summary>
    /// <param name="value">The value to test.</param>
    public static bool IsInfinity(BFloat16 value) => (value._bits & 0x7FFF) == 0x7F80;

    /// <summary>Whether the value is neither NaN nor infinite.</summary>
    /// <param name="value">The value to test.</param>
    public static bool IsFinite(BFloat16 value) => (value._bits & 0x7F80) != 0x7F80;

    /// <summary>Rounds a float to the nearest bfloat16 (ties to even); NaN stays NaN.</summary>
    /// <param name="value">The value to convert.</param>
    public static explicit operator BFloat16(float value) => new(FloatConversions.SingleToBFloat16Bits(value));

    /// <summary>Widens to float; exact.</summary>
    /// <param name="value">The value to convert.</param>
    public static explicit operator float(BFloat16 value) => FloatConversions.BFloat16BitsToSingle(value._bits);

    /// <summary>IEEE equality: NaN equals nothing, +0 equals −0.</summary>
    /// <param name="left">The first value.</param>
    /// <param name="right">The second value.</param>
    public static bool operator ==(BFloat16 left, BFloat16 right) => (float)left == (float)right;

    /// <summary>IEEE inequality: NaN differs from everything.</summary>
    /// <param name="left">The first value.</param>
    /// <param name="right">The second value.</param>
    public static bool operator !=(BFloat16 left, BFloat16 right) => (float)left != (float)right;

    /// <summary>IEEE less-than.</summary>
    /// <param name="left">The first value.</param>
    /// <param name="right">The second value.</param>
    public static bool operator <(BFloat16 left, BFloat16 right) => (float)left < (float)right;

    /// <summary>IEEE greater-than.</summary>
    /// <param name="left">The first value.</param>
    /// <param name="right">The second value.</param>
    public static bool operator >(BFloat16 left, BFloat16 right) => (float)left > (float)right;

    /// <summary>IEEE less-than-or-equal.</summary>
    /// <param name="left">The first value.</param>
    /// <param name="right">The second value.</param>
    public static bool operator <=(BFloat16 left, BFloat16 right) => (float)left <= (float)right;

    /// <summary>IEEE greater-than-or-equal.</summary>
    /// <param name="left">The first value.</param>
    /// <param name="right">The second value.</param>
    public static bool operator >=(BFloat16 left, BFloat16 right) => (float)left >= (float)right;

    /// <summary>
    /// Value equality as <see cref="float.Equals(float)"/> defines it: NaN equals NaN (so values can be dictionary
    /// keys) and +0 equals −0.
    /// </summary>
    /// <param name="other">The value to compare with.</param>
    public bool Equals(BFloat16 other) => ((float)this).Equals((float)other);

    /// <inheritdoc />
    public override bool Equals(object? obj) => obj is BFloat16 other && Equals(other);

    /// <inheritdoc />
    public override int GetHashCode() => ((float)this).GetHashCode();

    /// <summary>Orders as <see cref="float.CompareTo(float)"/>: NaN first, then −∞ to +∞.</summary>
    /// <param name="other">The value to compare with.</param>
    public int CompareTo(BFloat16 other) => ((float)this).CompareTo((float)other);

    /// <summary>The value formatted as a float, in the current culture.</summary>
    public override string ToString() => ((float)this).ToString(CultureInfo.CurrentCulture);

    /// <summary>The value formatted as a float.</summary>
    /// <param name="format">A float format string, or null.</param>
    /// <param name="formatProvider">The culture, or null for the current one.</param>
    public string ToString(string? format, IFormatProvider? formatProvider) => ((float)this).ToString(format, formatProvider);
}
