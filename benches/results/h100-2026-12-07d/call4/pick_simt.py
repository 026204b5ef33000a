#!/usr/bin/env python3
"""Best one-row SIMT (rows, cube) per shape from ncu_bench_summary output (nf4); prints BURN_BNB_SIMT_EXP."""
import re, sys
best, auto = {}, {}
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d.]+) us\s+(\d+)x(\d+) m 1 nf4 (auto )?Simt\(SimtParams \{ rows: (\d+), mt: 1, cube_size: (\d+)", line)
    if not m:
        continue
    us, n, k, is_auto, rows, cube = m.groups()
    key = (int(n), int(k))
    if is_auto:
        auto[key] = (float(us), int(rows), int(cube)); continue
    if key not in best or float(us) < best[key][0]:
        best[key] = (float(us), int(rows), int(cube))
entries = []
for key, (us, rows, cube) in sorted(best.items()):
    a = auto.get(key)
    print(f"{key}: best {us:.1f} us rows {rows} cube {cube}; auto {a}", file=sys.stderr)
    if a and us < a[0] * 0.97:
        entries.append(f"{key[0]},{key[1]}={rows},{cube}")
print(";".join(entries))
