#!/usr/bin/env python3
"""Medians and minima of the per-run decode step times (and of the host's queuing time a step)
in `llama_bench --verbose` logs named `ll-{base,new}-N.log`, base against new, per format and
batch: `python3 benches/gpu/step_medians.py CALL_DIR...` (an A/B of one binary with a switch,
base and new processes alternating)."""
import re,sys,glob,statistics as st,collections
d=collections.defaultdict(list); q=collections.defaultdict(list)
for call in sys.argv[1:]:
  for f in sorted(glob.glob(f"{call}/ll-*-*.log")):
    v=f.split("/")[-1].split("-")[1]; fmt=None
    for line in open(f):
      m=re.match(r"[\w.-]+ (?:\(fusion\) )?(\S+): weights",line)
      if m: fmt=m.group(1)
      m=re.match(r"\s+batch (\d+) run \d+: prefill \S+ s, decode (\S+) s \((\d+) steps, (\S+) s queuing",line)
      if m:
        b=int(m.group(1)); d[(fmt,b,v)].append(float(m.group(2))/int(m.group(3))*1e3); q[(fmt,b,v)].append(float(m.group(4))/int(m.group(3))*1e3)
for fmt in ["bf16","nf4","nf4-dq","int8","int8-decomp"]:
  for b in [b for b in [1,8,32] if d[(fmt,b,"base")] and d[(fmt,b,"new")]]:
    r=[]
    for v in ["base","new"]:
      x=d[(fmt,b,v)]; r.append(st.median(x) if x else float('nan'))
      print(f"{fmt:7} b{b:<3} {v:5} n={len(x):3} median {st.median(x):.3f} ms  min {min(x):.3f}  queue median {st.median(q[(fmt,b,v)]):.3f}", end="  ")
      print()
    print(f"   new/base {r[1]/r[0]:.3f}")
