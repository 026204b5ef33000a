#!/usr/bin/env python3
"""The last decode step of an `ncu_step.sh` profile: every kernel with its device time, then the
totals per kernel. A step ends with the greedy-sampling kernel (`argmax_kernel`, or Burn's
`reduce_kernel` before `b82920d`)."""
import collections
import csv
import re
import sys

SCALE = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}


def kernels(path):
    rows = []
    with open(path) as f:
        for r in csv.reader(f):
            if len(r) > 14 and r[12] == "gpu__time_duration.sum":
                name = re.sub(r"<.*", "", r[4].split("(")[0]).split("::")[-1]
                rows.append((name, float(r[14].replace(",", "")) * SCALE[r[13]], r[8].strip()))
    return rows


def main(path):
    rows = kernels(path)
    ends = [i for i, (n, _, _) in enumerate(rows) if n.startswith("argmax_kernel") or n == "reduce_kernel"]
    if len(ends) < 2:
        sys.exit(f"{path}: fewer than two decode steps found")
    step = rows[ends[-2] + 1 : ends[-1] + 1]
    print(f"last decode step: {len(step)} kernels, {sum(v for _, v, _ in step):.1f} us")
    for name, us, grid in step:
        print(f"  {us:8.1f} us  {name}  grid {grid}")
    totals = collections.defaultdict(float)
    for name, us, _ in step:
        totals[name] += us
    print("by kernel:")
    for name, us in sorted(totals.items(), key=lambda t: -t[1]):
        print(f"  {us:8.1f} us  {name}")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        main(p)
