"""PyTorch eager peer for NativeKv's int8 vector-wise quantization.

Reads the cases NativeKv measured (JSON lines on stdin), times the same work in PyTorch eager mode with
CUDA events (warm-up, median, inputs rotated past L2) and a torch device-to-device copy of the same
bytes, and prints one JSON object per case. Runs only where PyTorch with CUDA is installed.
"""
import json
import statistics
import sys

import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def median_us(fn, iterations, warmup=5):
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    samples = []
    for i in range(iterations):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(warmup + i)
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) * 1000.0)
    return statistics.median(samples)


def rotation(bytes_per_set, l2_bytes):
    return max(2, min(64, -(-4 * l2_bytes // bytes_per_set)))


def make_input(rows, cols, data):
    """The distributions nkv_bench uses (bench/nkv_bench.cpp, random_input)."""
    x = torch.randn(rows, cols, device="cuda", dtype=torch.float32)
    if data == "llm":  # outlier features: every 1024th column scaled by 20
        x[:, 7::1024] *= 20
    else:  # "spread": N(0,1) times 1..7 cycling along the flat index
        x *= 1 + (torch.arange(rows * cols, device="cuda").view(rows, cols) % 7)
    return x


def quantize(x, dim, threshold):
    """bitsandbytes' int8_vectorwise_quant semantics, written as a PyTorch user would in eager mode."""
    if threshold > 0:
        outliers = x.abs() >= threshold
        outlier_columns = outliers.any(dim=0).nonzero().flatten()
        x = x.masked_fill(outliers, 0)
    absmax = x.abs().amax(dim=dim, keepdim=True).float()
    scale = absmax / 127.0
    codes = torch.round(x.float() / scale).clamp_(-127, 127).to(torch.int8)
    if threshold > 0:
        codes.masked_fill_(outliers, 0)
        return codes, scale, outlier_columns
    return codes, scale


def main():
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    for line in sys.stdin:
        case = json.loads(line)
        dtype = DTYPES[case["dtype"]]
        rows, cols = case["rows"], case["cols"]
        dim = 1 if case["axis"] == "row" else 0
        threshold = case["outlier_threshold"]
        sets = rotation(case["bytes"], l2)
        xs = [make_input(rows, cols, case.get("data", "spread")).to(dtype) for _ in range(sets)]
        if case["op"] == "int8_quantize":
            us = median_us(lambda i: quantize(xs[i % sets], dim, threshold), iterations)
        else:
            packed = [quantize(x, dim, 0.0) for x in xs]
            us = median_us(lambda i: (packed[i % sets][0].float() * packed[i % sets][1]).to(dtype), iterations)
        del xs
        copy_bytes = case["bytes"] // 2
        srcs = [torch.empty(copy_bytes, dtype=torch.uint8, device="cuda").fill_(60) for _ in range(rotation(copy_bytes, l2))]
        dsts = [torch.empty_like(s) for s in srcs]
        copy_time = median_us(lambda i: dsts[i % len(srcs)].copy_(srcs[i % len(srcs)]), iterations)
        del srcs, dsts
        torch.cuda.empty_cache()
        out = {k: case[k] for k in ("op", "dtype", "rows", "cols", "axis", "outlier_threshold", "bytes", "data")}
        out.update(peer="pytorch-eager", torch_version=torch.__version__, median_us=us, torch_copy_us=copy_time)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
