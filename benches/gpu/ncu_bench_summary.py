#!/usr/bin/env python3
"""Device time per case of the kernel bench under ncu (`BNB_NCU=1`): every case runs twice after
a marker kernel; this sums the kernels between consecutive markers and halves the sum.

    BNB_NCU=1 [BNB_SWEEP=1] ncu --clock-control none --metrics gpu__time_duration.sum --csv \\
        KERNELS_BENCH --bench > ncu.csv 2> bench.err
    python3 benches/gpu/ncu_bench_summary.py ncu.csv bench.err
"""
import csv
import re
import sys

SCALE = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}


def main(csv_path, err_path):
    labels = {}
    with open(err_path) as f:
        for line in f:
            m = re.search(r"ncu-marker (\d+): (.*)", line)
            if m:
                labels[int(m.group(1))] = m.group(2).strip()
    groups, current, marker = [], [], 0
    with open(csv_path) as f:
        for r in csv.reader(f):
            if len(r) <= 14 or r[12] != "gpu__time_duration.sum":
                continue
            name = r[4]
            us = float(r[14].replace(",", "")) * SCALE[r[13]]
            if "bnb_bench_marker_kernel" in name:
                if marker:
                    groups.append((marker, current))
                marker, current = marker + 1, []
            else:
                current.append((re.sub(r"<.*", "", name.split("(")[0]).split("::")[-1], us))
    if marker:
        groups.append((marker, current))
    for marker, kernels in groups:
        label = labels.get(marker, f"marker {marker}")
        if label.startswith("setup"):
            continue
        names = sorted({n for n, _ in kernels})
        print(f"{sum(us for _, us in kernels) / 2:9.1f} us  {label}  [{', '.join(names)}]")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
