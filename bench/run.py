#!/usr/bin/env python3
"""`./build.sh bench`: run NativeKv's kernel benchmarks on the best backend, measure the peers in the
same run, print a table and write <results>/<device>-<date>.md (+ .json, + .png chart).

Needs only the Python standard library. PyTorch (for the peer) and matplotlib (for the chart) are used
where they are installed; without matplotlib the chart is drawn by the small PNG writer below.
"""
import argparse
import datetime
import json
import os
import re
import struct
import subprocess
import sys
import zlib


def run_native(build_dir, iterations, quick):
    exe = os.path.join(build_dir, "bin", "nkv_bench")
    cmd = [exe, "--iterations", str(iterations)] + (["--quick"] if quick else [])
    print(f"[bench] {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"[bench] nkv_bench failed with exit code {proc.returncode}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def run_peer(rows, iterations, repo):
    try:
        import torch  # noqa: F401  (only to know whether the peer can run)

        if not torch.cuda.is_available():
            print("[bench] PyTorch has no CUDA device here: no peer column", file=sys.stderr)
            return []
    except ImportError:
        print("[bench] PyTorch not installed: no peer column", file=sys.stderr)
        return []
    script = os.path.join(repo, "bench", "peers", "int8_quant_torch.py")
    print(f"[bench] peer: {script}", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, script, str(iterations)], input="".join(json.dumps(r) + "\n" for r in rows),
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"[bench] the PyTorch peer failed with exit code {proc.returncode}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def key(r):
    return (r["op"], r["dtype"], r["rows"], r["cols"], r["axis"], r["outlier_threshold"], r.get("data", "spread"))


def commit(repo):
    if os.environ.get("NKV_COMMIT"):
        return os.environ["NKV_COMMIT"]
    try:
        return subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def outliers(r):
    if r["outlier_threshold"] <= 0:
        return "off"
    data = {"llm": "0.1% outlier columns", "spread": "~16% outlier elements"}.get(r.get("data"), r.get("data"))
    return f"≥ {r['outlier_threshold']:g} ({data})"


def table(rows, peers):
    by_key = {key(p): p for p in peers}
    head = ("| op | dtype | shape | scale per | outliers | NativeKv µs | NativeKv GB/s | copy GB/s | % of copy "
            "| PyTorch eager µs | vs PyTorch |")
    lines = [head, "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p = by_key.get(key(r))
        peer_us = f"{p['median_us']:.1f}" if p else "—"
        speedup = f"{p['median_us'] / r['median_us']:.2f}×" if p else "—"
        lines.append(
            f"| {r['op']} | {r['dtype']} | {r['rows']}×{r['cols']} | {r['axis']} | "
            f"{outliers(r)} | {r['median_us']:.1f} | "
            f"{r['gb_per_s']:.0f} | {r['copy_gb_per_s']:.0f} | {100 * r['fraction_of_copy']:.1f}% | {peer_us} | {speedup} |")
    return "\n".join(lines)


def chart(path, rows, peers, title):
    by_key = {key(p): p for p in peers}
    labels = [f"{r['op'].replace('int8_', '')} {r['dtype']} {r['rows']}x{r['cols']} {r['axis']}"
              + (f" outliers {r.get('data', '')}" if r["outlier_threshold"] > 0 else "") for r in rows]
    ours = [r["gb_per_s"] for r in rows]
    copy = [r["copy_gb_per_s"] for r in rows]
    torch_gbps = [(r["bytes"] / (by_key[key(r)]["median_us"] * 1e3)) if key(r) in by_key else 0.0 for r in rows]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(12, 0.5 * len(rows) + 2))
        y = range(len(rows))
        ax.barh([i + 0.27 for i in y], copy, height=0.27, label="device copy (limit)", color="#bbbbbb")
        ax.barh(list(y), ours, height=0.27, label="NativeKv", color="#1f77b4")
        if any(torch_gbps):
            ax.barh([i - 0.27 for i in y], torch_gbps, height=0.27, label="PyTorch eager", color="#ff7f0e")
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("GB/s (bytes the op must move / time)")
        ax.set_title(title, fontsize=10)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return
    except ImportError:
        pass
    write_bar_png(path, [ours, torch_gbps, copy], [(31, 119, 180), (255, 127, 14), (187, 187, 187)])


def write_bar_png(path, series, colors, width=800, bar=8, gap=10):
    """A minimal grouped horizontal bar chart as PNG (no text), for machines without matplotlib."""
    n = len(series[0])
    height = n * (len(series) * bar + gap) + gap
    top = max(max(s) for s in series) or 1.0
    pixels = [[(255, 255, 255)] * width for _ in range(height)]
    for i in range(n):
        for j, s in enumerate(series):
            y0 = gap + i * (len(series) * bar + gap) + j * bar
            length = int((width - 20) * s[i] / top)
            for y in range(y0, y0 + bar - 1):
                for x in range(10, 10 + length):
                    pixels[y][x] = colors[j]
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in pixels)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()

    rows = run_native(a.build, a.iterations, a.quick)
    if not rows:
        sys.exit("[bench] nkv_bench produced no results")
    backend, device = rows[0]["backend"], rows[0]["device"]
    peers = run_peer(rows, a.iterations, a.repo) if backend == "cuda" else []
    date = datetime.date.today().isoformat()
    rev = commit(a.repo)
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    os.makedirs(a.results, exist_ok=True)
    base = os.path.join(a.results, f"{slug}-{date}")
    title = f"NativeKv int8 vector-wise quantization — {device} ({backend}), {date}, commit {rev}"
    text = table(rows, peers)
    peer_note = (f"Peer: PyTorch {peers[0]['torch_version']} eager, same process tree, same GPU, same run."
                 if peers else "Peer: none measured in this run (PyTorch with CUDA not available).")
    md = (f"# {title}\n\n{text}\n\n"
          "GB/s counts the bytes the op must move (input read once, codes + scales written once). "
          "`copy GB/s` is a device-to-device copy of the same number of bytes measured in the same process "
          "(read + write), the physical limit for this memory-bound op. Times are medians of "
          + (f"{a.iterations} CUDA-event-timed launches after warm-up, inputs rotated past L2."
             if backend == "cuda" else "a few runs of the CPU reference backend (written for clarity, not speed).")
          + f"\n{peer_note}\n")
    with open(base + ".md", "w") as f:
        f.write(md)
    with open(base + ".json", "w") as f:
        json.dump({"device": device, "backend": backend, "date": date, "commit": rev, "nativekv": rows, "peers": peers}, f,
                  indent=1)
    chart(base + ".png", rows, peers, title)
    print("\n" + md)
    print(f"[bench] wrote {base}.md, .json, .png", file=sys.stderr)
    if backend == "cuda" and peers:
        run_attention(a, base)


def run_attention(a, base):
    """Attention against PyTorch SDPA: one process times both sides on the same GPU (bench/peers/attention_bench.py)."""
    script = os.path.join(a.repo, "bench", "peers", "attention_bench.py")
    env = dict(os.environ, NATIVEKV_LIBRARY=os.path.join(a.build, "lib", "libnativekv.so"))
    cmd = [sys.executable, script, "--markdown", base + "-attention.md"] + (["--quick"] if a.quick else [])
    print(f"[bench] {' '.join(cmd)}", file=sys.stderr, flush=True)
    with open(base + "-attention.jsonl", "w") as out:
        proc = subprocess.run(cmd, stdout=out, env=env)
    if proc.returncode != 0:
        sys.exit(f"[bench] the attention benchmark failed with exit code {proc.returncode}")
    # Attention over the KV caches goes into the same two files (the GPU machine returns few files).
    script = os.path.join(a.repo, "bench", "peers", "kvcache_bench.py")
    cmd = [sys.executable, script, "--markdown", base + "-attention.md"] + (["--quick"] if a.quick else [])
    print(f"[bench] {' '.join(cmd)}", file=sys.stderr, flush=True)
    with open(base + "-attention.jsonl", "a") as out:
        kvcache = subprocess.run(cmd, stdout=out, env=env)
    # Decode over quantized caches next to the fp16 decode, likewise.
    script = os.path.join(a.repo, "bench", "peers", "kv_quant_bench.py")
    cmd = [sys.executable, script, "--markdown", base + "-attention.md"] + (["--quick"] if a.quick else [])
    print(f"[bench] {' '.join(cmd)}", file=sys.stderr, flush=True)
    with open(base + "-attention.jsonl", "a") as out:
        kv_quant = subprocess.run(cmd, stdout=out, env=env)
    with open(base + "-attention.md") as f:
        print("\n" + f.read())
    print(f"[bench] wrote {base}-attention.md, -attention.jsonl", file=sys.stderr)
    if kvcache.returncode != 0:
        sys.exit(f"[bench] the KV-cache benchmark failed with exit code {kvcache.returncode}")
    if kv_quant.returncode != 0:
        sys.exit(f"[bench] the quantized KV-cache benchmark failed with exit code {kv_quant.returncode}")


if __name__ == "__main__":
    main()
