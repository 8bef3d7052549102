namespace NativeKv.Tests;

/// <summary>Seeds, random data and array comparisons shared by the test classes.</summary>
internal static class TestSupport
{
    /// <summary>A fresh seed per call, written to the test output so a failure can be replayed.</summary>
    public static Random NewRandom(out int seed)
    {
        seed = Random.Shared.Next();
        TestContext.Current.TestOutputHelper?.WriteLine($"random seed {seed}");
        return new Random(seed);
    }

    /// <summary>Values spread over many magnitudes, both signs, with an occasional exact zero.</summary>
    public static float[] RandomFloats(Random random, int count, float magnitude = 1f)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++)
        {
            double gaussian = Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
            values[i] = random.Next(64) == 0 ? 0f : (float)(gaussian * magnitude);
        }
        return values;
    }

    public static Half[] ToHalves(float[] values) => Array.ConvertAll(values, v => (Half)v);

    public static BFloat16[] ToBFloat16s(float[] values) => Array.ConvertAll(values, v => (BFloat16)v);

    /// <summary>Asserts two float arrays are equal bit for bit, except that any NaN matches any NaN.</summary>
    public static void EqualBits(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            bool same = float.IsNaN(expected[i])
                ? float.IsNaN(actual[i])
                : BitConverter.SingleToUInt32Bits(expected[i]) == BitConverter.SingleToUInt32Bits(actual[i]);
            Assert.True(same, $"{what}[{i}]: expected {expected[i]:R} (0x{BitConverter.SingleToUInt32Bits(expected[i]):X8}), " +
                              $"got {actual[i]:R} (0x{BitConverter.SingleToUInt32Bits(actual[i]):X8})");
        }
    }

    public static void EqualArrays<T>(ReadOnlySpan<T> expected, ReadOnlySpan<T> actual, string what) where T : IEquatable<T>
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(expected[i].Equals(actual[i]), $"{what}[{i}]: expected {expected[i]}, got {actual[i]}");
        }
    }
}
