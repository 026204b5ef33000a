#!/usr/bin/env python3
"""Which cells of a `llama_bench --verbose` log were bound by the host rather than the GPU:
per format and batch, the median decode step and the median time the host took to queue a
step's work (`llama_bench`'s "queuing"). Where the queue is within 10% of the step, the host set
the pace (its launch work, or launches blocked on a full queue) and the cell may measure this
machine's CPU rather than the card: a busy or slow host makes every launch-heavy cell slower. Usage: `python3 benches/gpu/host_bound.py [--warmup N] LOG [LOG...]` (N: the warm-up
runs to skip per cell, default 10 as in the tables); exits 0 either way."""
import re, statistics as st, sys
args = sys.argv[1:]
warmup = 10
if args[:1] == ["--warmup"]:
    warmup, args = int(args[1]), args[2:]
rows = {}
for path in args:
    fmt = None
    for line in open(path):
        m = re.match(r"[\w.-]+ (?:\(fusion\) )?(\S+): weights", line)
        if m:
            fmt = m.group(1)
        m = re.match(r"\s+batch (\d+) run (\d+): prefill \S+ s, decode (\S+) s \((\d+) steps, (\S+) s queuing", line)
        if m:
            b, steps = int(m.group(1)), int(m.group(4))
            if int(m.group(2)) < warmup:
                continue
            rows.setdefault((fmt, b), []).append(
                (float(m.group(3)) / steps * 1e3, float(m.group(5)) / steps * 1e3))
bound = []
print(f"{'format':12} {'batch':>5} {'step ms':>8} {'queue ms':>9}  host share")
for (fmt, b), runs in rows.items():
    step, queue = st.median(s for s, _ in runs), st.median(q for _, q in runs)
    share = queue / step
    flag = "HOST-BOUND" if share > 0.9 else ""
    if flag:
        bound.append(f"{fmt} b{b}")
    print(f"{fmt:12} {b:5} {step:8.3f} {queue:9.3f}  {share:5.2f} {flag}")
print("host-bound cells:", ", ".join(bound) if bound else "none")
