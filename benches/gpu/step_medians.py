#!/usr/bin/env python3
"""Medians and minima of the per-run decode step times (and of the host's queuing time a step)
in `llama_bench --verbose` logs named `ll-SETTING-N.log`, per format, batch and setting, each
setting's median over `base`'s: `python3 benches/gpu/step_medians.py [--rounds] CALL_DIR...`
(an A/B of one binary with switches, or of two builds, the settings' processes alternating).
`--rounds` prints each process (round `N`) on its own line instead of pooling the rounds."""
import re,sys,glob,statistics as st,collections
args=sys.argv[1:]; rounds="--rounds" in args; calls=[a for a in args if a!="--rounds"]
d=collections.defaultdict(list); q=collections.defaultdict(list); settings=[]
for call in calls:
  for f in sorted(glob.glob(f"{call}/ll-*-*.log")):
    v,n=f.split("/")[-1][3:-4].rsplit("-",1); fmt=None
    if rounds: v=f"{v}-{n}"
    if v not in settings: settings.append(v)
    for line in open(f):
      m=re.match(r"[\w.-]+ (?:\(fusion\) )?(\S+): weights",line)
      if m: fmt=m.group(1)
      m=re.match(r"\s+batch (\d+) run \d+: prefill \S+ s, decode (\S+) s \((\d+) steps, (\S+) s queuing",line)
      if m:
        b=int(m.group(1)); d[(fmt,b,v)].append(float(m.group(2))/int(m.group(3))*1e3); q[(fmt,b,v)].append(float(m.group(4))/int(m.group(3))*1e3)
base=[v for v in settings if v.split("-")[0]=="base"]
order=base+[v for v in settings if v not in base]
for fmt in ["bf16","nf4","nf4-dq","int8","int8-decomp"]:
  for b in [1,8,32]:
    ref=[st.median(d[(fmt,b,v)]) for v in base if d[(fmt,b,v)]]
    for v in order:
      x=d[(fmt,b,v)]
      if not x: continue
      ratio=f"  /base {st.median(x)/st.median(ref):.3f}" if ref and v not in base else ""
      print(f"{fmt:7} b{b:<3} {v:8} n={len(x):3} median {st.median(x):.3f} ms  min {min(x):.3f}  queue median {st.median(q[(fmt,b,v)]):.3f}{ratio}")
