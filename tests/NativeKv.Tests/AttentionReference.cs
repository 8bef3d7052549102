namespace NativeKv.Tests;

/// <summary>
/// Attention as nativekv.h states it (bottom-right causal mask, left window, soft-cap, GQA head mapping), evaluated
/// directly in float64 from the header's text alone: what the CPU backend is checked against, and the fp64 reference of
/// the GPU tests.
/// </summary>
internal static class AttentionReference
{
    /// <summary>O [totalQ, heads_q, head_dim] and LSE [heads_q, totalQ] (natural log; -∞ where a query sees no key).</summary>
    public sealed record Result(double[] O, double[] Lse, int TotalQ);

    /// <param name="q">[rowsQ &gt;= cuQ[^1], headsQ, headDim] row-major, already in the dtype's precision.</param>
    /// <param name="k">[rowsK &gt;= cuK[^1], headsKv, headDim] row-major.</param>
    /// <param name="v">Shaped like <paramref name="k"/>.</param>
    public static Result Varlen(float[] q, float[] k, float[] v, int[] cuQ, int[] cuK, int headsQ, int headsKv, int headDim,
        AttentionOptions options)
    {
        int totalQ = cuQ[^1];
        int group = headsQ / headsKv;
        double scale = (float)(options.SoftmaxScale is { } s && s != 0f ? s : 1f / MathF.Sqrt(headDim)); // the float the library uses
        double softcap = options.Softcap;
        int window = options.WindowLeft ?? -1;
        var o = new double[totalQ * headsQ * headDim];
        var lse = new double[headsQ * totalQ];
        for (int b = 0; b + 1 < cuQ.Length; b++)
        {
            int lq = cuQ[b + 1] - cuQ[b], lk = cuK[b + 1] - cuK[b];
            for (int h = 0; h < headsQ; h++)
            {
                int hk = h / group;
                for (int i = 0; i < lq; i++)
                {
                    int row = cuQ[b] + i;
                    int diagonal = i + lk - lq;
                    int last = options.Causal ? Math.Min(diagonal, lk - 1) : lk - 1;
                    int first = window >= 0 ? Math.Max(0, diagonal - window) : 0;
                    if (first > last)
                    {
                        lse[h * totalQ + row] = double.NegativeInfinity; // O stays 0
                        continue;
                    }
                    var scores = new double[last - first + 1];
                    for (int j = first; j <= last; j++)
                    {
                        double dot = 0;
                        for (int d = 0; d < headDim; d++)
                        {
                            dot += (double)q[(row * headsQ + h) * headDim + d] * k[((cuK[b] + j) * headsKv + hk) * headDim + d];
                        }
                        double score = scale * dot;
                        scores[j - first] = softcap > 0 ? softcap * Math.Tanh(score / softcap) : score;
                    }
                    double max = scores.Max();
                    double sum = 0;
                    for (int j = first; j <= last; j++)
                    {
                        double p = Math.Exp(scores[j - first] - max);
                        sum += p;
                        for (int d = 0; d < headDim; d++)
                        {
                            o[(row * headsQ + h) * headDim + d] += p * v[((cuK[b] + j) * headsKv + hk) * headDim + d];
                        }
                    }
                    for (int d = 0; d < headDim; d++)
                    {
                        o[(row * headsQ + h) * headDim + d] /= sum;
                    }
                    lse[h * totalQ + row] = max + Math.Log(sum);
                }
            }
        }
        return new Result(o, lse, totalQ);
    }

    /// <summary>‖actual − expected‖ / ‖expected‖ over the first expected.Length values.</summary>
    public static double RelativeError(double[] expected, ReadOnlySpan<float> actual)
    {
        double difference = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double delta = actual[i] - expected[i];
            difference += delta * delta;
            norm += expected[i] * expected[i];
        }
        return norm == 0 ? Math.Sqrt(difference) : Math.Sqrt(difference / norm);
    }

    /// <summary>
    /// Checks <paramref name="lse"/> ([headsQ, rowsQ], float32) against the reference within <paramref name="tolerance"/>,
    /// with -∞ exactly where a query sees no key.
    /// </summary>
    public static void AssertLseClose(Result expected, ReadOnlySpan<float> lse, int headsQ, int rowsQ, double tolerance, string what)
    {
        for (int h = 0; h < headsQ; h++)
        {
            for (int r = 0; r < expected.TotalQ; r++)
            {
                double want = expected.Lse[h * expected.TotalQ + r];
                float got = lse[h * rowsQ + r];
                bool close = double.IsNegativeInfinity(want) ? float.IsNegativeInfinity(got) : Math.Abs(got - want) <= tolerance;
                Assert.True(close, $"{what}: lse[{h}][{r}] = {got:R}, expected {want:R}");
            }
        }
    }
}
