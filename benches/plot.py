#!/usr/bin/env python3
"""Plots target/latency.csv (written by `cargo bench --bench latency`) into
docs/bench/latency.png: folded (and produced) against offered events/s,
and read-to-delta latency percentiles against the bare pipe's. Needs
matplotlib."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

source = sys.argv[1] if len(sys.argv) > 1 else "target/latency.csv"
out = sys.argv[2] if len(sys.argv) > 2 else "docs/bench/latency.png"
rows = list(csv.DictReader(open(source)))

def mode(r):
    # Runs before the caught-up flush have no such column: window only.
    when = r.get("caught_up", "false") == "true"
    name = f"{r['flush_ms']} ms" + (" + when caught up" if when else " window only")
    # Extra worker properties, `;`-separated (runs before them have none).
    for p in filter(None, (r.get("properties") or "").split(";")):
        name += f", {p}"
    return name


# Rows come mode by mode; a mode run again (an A/B in both orders) gets
# a line of its own.
runs = []
for r in rows:
    if not runs or mode(runs[-1][-1]) != mode(r) or float(r["share"]) <= float(runs[-1][-1]["share"]):
        runs.append([])
    runs[-1].append(r)
seen = {}
labels = []
for run in runs:
    name = mode(run[0])
    seen[name] = seen.get(name, 0) + 1
    labels.append(name if seen[name] == 1 else f"{name}, run {seen[name]}")

fig, (tp, lat) = plt.subplots(1, 2, figsize=(12, 4.8))
top = 0
# One colour per run; p50 dotted, p99 solid (labelled), p99.9 dashed.
for i, (w, rs) in enumerate(zip(labels, runs)):
    colour = f"C{i}"
    offered = [float(r["offered"]) / 1e3 for r in rs]
    folded = [float(r["folded"]) / 1e3 for r in rs]
    top = max(top, *offered)
    tp.plot(offered, folded, "o-", color=colour, label=f"engine, {w}")
    # What the load generator reached, where the CSV has it (runs before
    # it do not): on 2 shared cores it may fall short of what was asked.
    if all(r.get("produced") for r in rs):
        produced = [float(r["produced"]) / 1e3 for r in rs]
        tp.plot(offered, produced, "x--", color=colour, label=f"produced, {w}")
    share = [float(r["share"]) * 100 for r in rs]
    for key, style in [("engine_p50", ":"), ("engine_p99", "-"), ("engine_p999", "--")]:
        label = f"engine, {w}" if key == "engine_p99" else None
        lat.plot(share, [float(r[key]) for r in rs], style, color=colour, marker="o", markersize=3, label=label)
pipe = runs[0]
lat.plot([float(r["share"]) * 100 for r in pipe], [float(r["pipe_p99"]) for r in pipe], "k-", marker="s", label="bare pipe p99")
tp.plot([0, top], [0, top], "k:", label="offered = folded")
tp.set_xlabel("offered (asked of the load generator), k events/s")
tp.set_ylabel("folded (and produced), k events/s")
tp.set_title("Throughput against offered load (real broker, 2 cores)")
tp.legend(fontsize=8)
lat.set_yscale("log")
lat.set_xlabel("offered load, % of the drain rate")
lat.set_ylabel("read appended -> delta visible, ms")
lat.set_title("engine p50 dotted, p99 solid, p99.9 dashed (late probes count 10 s)")
lat.legend(fontsize=7)
fig.tight_layout()
fig.savefig(out, dpi=110)
print(f"wrote {out}")
