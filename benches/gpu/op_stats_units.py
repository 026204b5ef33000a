#!/usr/bin/env python3
"""Host time of a llama_bench `--op-stats` log in units of the host's speed.

The GPU machines' host speed drifts by up to 2x within one process, so a row's operations are
read in units of that row's `rotary_kv` call (an operation no format changes).
Usage: op_stats_units.py LOG... [--ops int8_rms_norm_linear,int8_linear]
"""
import re
import sys

args = [a for a in sys.argv[1:] if not a.startswith("--ops")]
ops = ["int8_rms_norm_linear", "int8_linear"]
for a in sys.argv[1:]:
    if a.startswith("--ops="):
        ops = a.split("=", 1)[1].split(",")


def per_call(block, op):
    m = re.search(re.escape(op) + r"\s+[\d.]+ calls/step\s+[\d.]+ us/step\s+([\d.]+) us/call", block)
    return float(m.group(1)) if m else None


for path in args:
    text = open(path).read()
    for block in re.split(r"\n(?=\S+ \S+ batch \d+: )", text):
        head = re.match(r"(\S+) (\S+) batch (\d+): ([\d.]+) s/step", block)
        host = re.search(r"([\d.]+) ms of host time", block)
        unit = per_call(block, "rotary_kv")
        if not (head and host and unit):
            continue
        cells = [(op, per_call(block, op)) for op in ops]
        total = sum(v for _, v in cells if v)
        shown = "  ".join(f"{op} {v / unit:.2f}" for op, v in cells if v)
        print(f"{path}  {head.group(2)} b{head.group(3)}: step {head.group(4)} s, host {host.group(1)} ms; "
              f"in rotary_kv calls ({unit} us): {shown}  sum {total / unit:.2f}")
