#!/bin/bash
# Call 7: the SASS of call 3's ncu reports (no GPU work): executed instructions and stall
# samples per opcode of the streamed kernel (pair table, without weight copies, all `prmt`)
# and the register-fragment kernel, at 8 rows on 28672x4096.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DIR=.gpu/c29
for n in stream stream-probe stream-p2 mma; do
  ncu -i $DIR/ncu-$n.ncu-rep --page source --csv --print-source sass > "$OUT/sass-$n.csv" 2> "$OUT/sass-$n.err"
  echo "$n rc=$? $(wc -l < "$OUT/sass-$n.csv") lines"
done
python3 - "$OUT" <<'PY' | tee "$OUT/sass-summary.txt"
import csv, sys, collections, os
out = sys.argv[1]
def num(s):
    try: return float(s.replace(",", ""))
    except: return 0.0
for n in ["stream", "stream-probe", "stream-p2", "mma"]:
    rows = list(csv.reader(open(os.path.join(out, f"sass-{n}.csv"))))
    hi = next(i for i, r in enumerate(rows) if any("Source" == c for c in r))
    h = rows[hi]
    src = h.index("Source")
    ie = next(i for i, c in enumerate(h) if c.startswith("Instructions Executed"))
    ws = next((i for i, c in enumerate(h) if c.startswith("Warp Stall Sampling (All")), None)
    inst, stall = collections.Counter(), collections.Counter()
    lines = []
    for r in rows[hi + 1:]:
        if len(r) <= max(src, ie): continue
        toks = r[src].split()
        if not toks: continue
        op = toks[1] if toks[0].startswith("@") and len(toks) > 1 else toks[0]
        op = op.split(".")[0]
        inst[op] += num(r[ie]); s = num(r[ws]) if ws is not None else 0
        stall[op] += s; lines.append((s, num(r[ie]), r[src]))
    ti, ts = sum(inst.values()) or 1, sum(stall.values()) or 1
    print(f"\n{n}: {ti:.4g} warp instructions, {ts:.0f} stall samples")
    for op, c in inst.most_common(16):
        print(f"  {op:<8} inst {100*c/ti:5.1f}%  stalls {100*stall[op]/ts:5.1f}%")
    if n == "stream-probe":
        print("  hottest lines (stall samples, executed):")
        for s, e, t in sorted(lines, reverse=True)[:25]:
            print(f"    {s:6.0f} {e:10.0f}  {t[:90]}")
PY
