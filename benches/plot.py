#!/usr/bin/env python3
"""Plots target/latency.csv (written by `cargo bench --bench latency`) into
docs/bench/latency.png: folded against offered events/s, and read-to-delta
latency percentiles against the bare pipe's. Needs matplotlib."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

source = sys.argv[1] if len(sys.argv) > 1 else "target/latency.csv"
out = sys.argv[2] if len(sys.argv) > 2 else "docs/bench/latency.png"
rows = list(csv.DictReader(open(source)))
windows = sorted({r["flush_ms"] for r in rows}, key=int, reverse=True)

fig, (tp, lat) = plt.subplots(1, 2, figsize=(12, 4.8))
top = 0
for w in windows:
    rs = [r for r in rows if r["flush_ms"] == w]
    offered = [float(r["offered"]) / 1e3 for r in rs]
    folded = [float(r["folded"]) / 1e3 for r in rs]
    top = max(top, *offered)
    tp.plot(offered, folded, "o-", label=f"engine, {w} ms flush window")
    share = [float(r["share"]) * 100 for r in rs]
    for key, style in [("engine_p50", ":"), ("engine_p99", "-"), ("engine_p999", "--")]:
        lat.plot(share, [float(r[key]) for r in rs], style, marker="o", label=f"{key.replace('engine_', 'engine ')}, {w} ms")
pipe = [r for r in rows if r["flush_ms"] == windows[0]]
lat.plot([float(r["share"]) * 100 for r in pipe], [float(r["pipe_p99"]) for r in pipe], "k-", marker="s", label="bare pipe p99")
tp.plot([0, top], [0, top], "k:", label="offered = folded")
tp.set_xlabel("offered, k events/s")
tp.set_ylabel("folded, k events/s")
tp.set_title("Throughput against offered load (real broker, 2 cores)")
tp.legend(fontsize=8)
lat.set_yscale("log")
lat.set_xlabel("offered load, % of the drain rate")
lat.set_ylabel("read appended -> delta visible, ms")
lat.set_title("Latency percentiles (probes counted 10 s when late)")
lat.legend(fontsize=7)
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
