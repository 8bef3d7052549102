using BenchmarkDotNet.Running;
using NativeKv.Benchmarks;

// BenchmarkDotNet's own command line, always in-process, e.g.
//   dotnet run -c Release --project bench/NativeKv.Benchmarks -- --filter '*Conversion*' --job short
BenchmarkSwitcher.FromAssembly(typeof(BenchmarkConfig).Assembly).Run(BenchmarkConfig.WithInProcess(args), BenchmarkConfig.Create());
