#!/usr/bin/env python3
"""Device time per case of the kernel bench under ncu (`BNB_NCU=1`): every case runs twice after
a marker kernel; this sums the kernels between consecutive markers and halves the sum.

    BNB_NCU=1 [BNB_SWEEP=1] ncu --clock-control none --metrics gpu__time_duration.sum --csv \\
        KERNELS_BENCH --bench > ncu.csv 2> bench.err
    python3 benches/gpu/ncu_bench_summary.py ncu.csv bench.err

With launch metrics in the same run (`--metrics gpu__time_duration.sum,launch__registers_per_thread,
launch__occupancy_limit_registers,launch__waves_per_multiprocessor`), each case also lists its
first kernel's registers a thread, cubes a multiprocessor the registers allow, and waves.
"""
import csv
import re
import sys

SCALE = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
LAUNCH = {
    "launch__registers_per_thread": "regs",
    "launch__occupancy_limit_registers": "cubes/SM",
    "launch__waves_per_multiprocessor": "waves",
}


def kernels(csv_path):
    """(name, us, {launch metric: value}) of every profiled kernel, in launch order."""
    by_id = {}
    with open(csv_path) as f:
        for r in csv.reader(f):
            if len(r) <= 14 or not r[0].isdigit():
                continue
            k = by_id.setdefault(int(r[0]), {"name": r[4], "us": None, "launch": {}})
            value = r[14].replace(",", "")
            if r[12] == "gpu__time_duration.sum":
                k["us"] = float(value) * SCALE[r[13]]
            elif r[12] in LAUNCH:
                k["launch"][LAUNCH[r[12]]] = value
    return [(k["name"], k["us"], k["launch"]) for _, k in sorted(by_id.items()) if k["us"] is not None]


def main(csv_path, err_path):
    labels = {}
    with open(err_path) as f:
        for line in f:
            m = re.search(r"ncu-marker (\d+): (.*)", line)
            if m:
                labels[int(m.group(1))] = m.group(2).strip()
    groups, current, marker = [], [], 0
    for name, us, launch in kernels(csv_path):
        if "bnb_bench_marker_kernel" in name:
            if marker:
                groups.append((marker, current))
            marker, current = marker + 1, []
        else:
            current.append((re.sub(r"<.*", "", name.split("(")[0]).split("::")[-1], us, launch))
    if marker:
        groups.append((marker, current))
    for marker, ks in groups:
        label = labels.get(marker, f"marker {marker}")
        if label.startswith("setup"):
            continue
        names = sorted({n for n, _, _ in ks})
        launch = ks[0][2] if ks else {}
        extra = "  " + " ".join(f"{k} {v}" for k, v in launch.items()) if launch else ""
        print(f"{sum(us for _, us, _ in ks) / 2:9.1f} us  {label}  [{', '.join(names)}]{extra}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
