#!/usr/bin/env python3
"""Best (mt, splits) per shape and format from ncu_bench_summary output; prints BURN_BNB_MMA_EXP."""
import re, sys
best = {}
auto = {}
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d.]+) us\s+(\d+)x(\d+) m (\d+) (nf4-dq|nf4) (auto )?Mma\(MmaParams \{ nt: (\d+), mt: (\d+), warps: (\d+), splits: (\d+)", line)
    if not m:
        continue
    us, n, k, rows, fmt, is_auto, nt, mt, warps, splits = m.groups()
    key = (int(n), int(k), int(nt), fmt == "nf4-dq")
    if is_auto:
        auto[key] = (float(us), int(mt), int(splits))
        continue
    if key not in best or float(us) < best[key][0]:
        best[key] = (float(us), int(mt), int(splits))
entries = []
for key, (us, mt, splits) in sorted(best.items()):
    a = auto.get(key)
    print(f"{key}: best {us:.1f} us mt {mt} splits {splits}; auto {a}", file=sys.stderr)
    if a and us < a[0] * 0.97:
        entries.append(f"{key[0]},{key[1]},{key[2]},{int(key[3])}={mt},{splits}")
print(";".join(entries))
