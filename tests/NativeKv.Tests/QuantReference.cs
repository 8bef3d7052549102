namespace NativeKv.Tests;

/// <summary>
/// The int8 vector-wise quantization of nativekv.h, computed in float64 from the header's text alone: it is what
/// the CPU backend is checked against.
/// </summary>
internal static class QuantReference
{
    public sealed record Result(sbyte[] Codes, float[] Scales, int[] OutlierColumns, double[] Quotients);

    /// <param name="input">Row-major [rows, cols] values, already in the input dtype's precision.</param>
    public static Result Quantize(float[] input, int rows, int cols, QuantAxis axis, float threshold = 0f)
    {
        bool byRow = axis == QuantAxis.Row;
        bool IsOutlier(float x) => threshold > 0 && Math.Abs((double)x) >= threshold;

        var absmax = new double[byRow ? rows : cols];
        var outlierColumn = new bool[cols];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                float x = input[r * cols + c];
                if (IsOutlier(x))
                {
                    outlierColumn[c] = true;
                    continue;
                }
                ref double m = ref absmax[byRow ? r : c];
                m = double.IsNaN(x) || double.IsNaN(m) ? double.NaN : Math.Max(m, Math.Abs((double)x));
            }
        }

        // absmax / 127 in float64 rounded once to float32 is the correctly rounded float32 quotient.
        float[] scales = Array.ConvertAll(absmax, m => (float)(m / 127.0));
        var codes = new sbyte[rows * cols];
        var quotients = new double[rows * cols];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                float x = input[r * cols + c];
                double q = x / (double)scales[byRow ? r : c];
                quotients[r * cols + c] = q;
                codes[r * cols + c] = IsOutlier(x) || double.IsNaN(q)
                    ? (sbyte)0
                    : (sbyte)Math.Clamp(Math.Round(q, MidpointRounding.ToEven), -127, 127);
            }
        }
        int[] columns = Enumerable.Range(0, cols).Where(c => outlierColumn[c]).ToArray();
        return new Result(codes, scales, columns, quotients);
    }

    /// <summary>
    /// Asserts <paramref name="actual"/> codes match the reference; where the exact quotient lies within float32
    /// rounding of a .5 tie the header does not pin the division's precision, so either neighbour is accepted.
    /// </summary>
    public static void AssertCodes(Result expected, ReadOnlySpan<sbyte> actual, string what)
    {
        for (int i = 0; i < expected.Codes.Length; i++)
        {
            if (expected.Codes[i] == actual[i])
            {
                continue;
            }
            double q = expected.Quotients[i];
            double distanceToTie = Math.Abs(Math.Abs(q - Math.Truncate(q)) - 0.5);
            bool nearTie = distanceToTie <= Math.Abs(q) * 1.2e-7 && Math.Abs(expected.Codes[i] - actual[i]) == 1;
            Assert.True(nearTie, $"{what}: code[{i}] expected {expected.Codes[i]} (x/scale = {q:R}), got {actual[i]}");
        }
    }

    public static void AssertMatches(Result expected, ReadOnlySpan<sbyte> codes, ReadOnlySpan<float> scales, string what)
    {
        TestSupport.EqualBits(expected.Scales, scales, what + " scales");
        AssertCodes(expected, codes, what);
    }
}
