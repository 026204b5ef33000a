#!/usr/bin/env python3
"""Device time per benchmark case from `gpu.sh run`'s ncu output.

Usage: ncu_summary.py OUT_DIR  (reads OUT_DIR/ncu.csv and OUT_DIR/ncu-markers.log)

The bench (BNB_NCU=1) launches a marker kernel before each case, then the case twice; the
kernels after a marker are split in two halves and the second half (warm) is summed.
"""
import csv
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
labels = {}
for line in (out / "ncu-markers.log").read_text(errors="replace").splitlines():
    m = re.match(r"ncu-marker (\d+): (.*)", line)
    if m:
        labels[int(m.group(1))] = m.group(2)

rows = []
text = (out / "ncu.csv").read_text(errors="replace").splitlines()
start = next(i for i, l in enumerate(text) if l.startswith('"ID"'))
for r in csv.DictReader(text[start:]):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    value = float(r["Metric Value"].replace(",", ""))
    unit = r["Metric Unit"]
    us = value / 1000.0 if unit in ("ns", "nsecond") else value if unit in ("us", "usecond") else value * 1000.0
    rows.append((r["Kernel Name"], us))

groups = []
for name, us in rows:
    if "marker" in name:
        groups.append([])
    elif groups:
        groups[-1].append((name, us))

print("| case | kernels | device us |")
print("|---|---|---|")
for i, kernels in enumerate(groups, start=1):
    if str(labels.get(i, "")).startswith("setup"):
        continue
    half = len(kernels) // 2
    warm = kernels[half:]
    total = sum(us for _, us in warm)
    names = " + ".join(f"{n.split('(')[0][:28]} {us:.1f}" for n, us in warm)
    print(f"| {labels.get(i, i)} | {names} | {total:.1f} |")
