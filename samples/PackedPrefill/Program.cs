// Packed prefill: tokenize prompts, bin-pack them into rows (Prepacking), run causal varlen attention over the
// packed tokens, and scatter the result back to the prompts' order. Usage: PackedPrefill FILE...
using System.Diagnostics;
using Microsoft.ML.Tokenizers;
using NativeKv;

if (args.Length == 0)
{
    Console.Error.WriteLine("usage: PackedPrefill FILE...   (each file is one prompt)");
    return 2;
}

const int heads = 8, headDim = 64, hidden = heads * headDim;

// cl100k_base (GPT-4's encoding), read from the Microsoft.ML.Tokenizers.Data.Cl100kBase package: no network needed.
TiktokenTokenizer tokenizer = TiktokenTokenizer.CreateForModel("gpt-4");
int[] lengths = args.Select(path => tokenizer.CountTokens(File.ReadAllText(path))).ToArray();
if (Array.IndexOf(lengths, 0) is int empty and >= 0)
{
    Console.Error.WriteLine($"{args[empty]} holds no tokens");
    return 1;
}

using var context = Context.Create(Backend.Auto); // CUDA when a GPU is usable, else the CPU backend
using var pack = Prepacker.Plan(context, lengths);
Console.WriteLine($"{pack.PromptCount} prompts, {pack.TotalTokens} tokens -> {pack.RowCount} rows of {pack.RowCapacity}: " +
                  $"{pack.PaddingTokens} padding tokens instead of {pack.UnpackedPaddingTokens} with one prompt per row");

// Random fp16 Q, K, V for the packed tokens; each prompt is its own causal block of the packed layout.
int tokens = (int)pack.TotalTokens;
var random = new Random(42);
using DeviceBuffer<Half> q = RandomBuffer(), k = RandomBuffer(), v = RandomBuffer();
using var packedOutput = DeviceBuffer<Half>.Allocate(context, (long)tokens * hidden);
using var output = DeviceBuffer<Half>.Allocate(context, (long)tokens * hidden);
int[] cuSeqlens = pack.CuSeqlens();
using var attention = Attention.PlanVarlen(context, heads, heads, headDim, cuSeqlens, cuSeqlens, new AttentionOptions { Causal = true });

var stopwatch = Stopwatch.StartNew();
Attention.Varlen(attention, q.AsTensor(tokens, heads, headDim), k.AsTensor(tokens, heads, headDim),
                 v.AsTensor(tokens, heads, headDim), packedOutput.AsTensor(tokens, heads, headDim));
pack.Scatter(packedOutput.AsTensor(tokens, hidden), output.AsTensor(tokens, hidden)); // back to the prompts' order
context.Synchronize();
stopwatch.Stop();

double checksum = output.ToArray().Sum(x => (double)x);
Console.WriteLine($"{context}: attention over {tokens} packed tokens ({heads} heads x {headDim}) + scatter in " +
                  $"{stopwatch.Elapsed.TotalMilliseconds:F2} ms, checksum {checksum:F6}");
return 0;

DeviceBuffer<Half> RandomBuffer()
{
    var host = new Half[tokens * hidden];
    for (int i = 0; i < host.Length; i++) host[i] = (Half)(random.NextSingle() * 2 - 1);
    var buffer = DeviceBuffer<Half>.Allocate(context, host.Length);
    buffer.CopyFrom(host);
    return buffer;
}
