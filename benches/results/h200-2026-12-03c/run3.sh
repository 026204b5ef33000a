#!/bin/bash
# Call 3: ncu --set full of the streamed 4-bit kernel at 8 rows (28672x4096, automatic
# parameters, pair table) with and without its weight copies (BURN_BNB_STREAM4_PROBE), and of
# the register-fragment kernel of the same product: stall reasons, issue, occupancy.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c25
. benches/gpu/cubecl-cache.sh
xz -d -k -f $DIR/kernels-bench.xz && chmod +x $DIR/kernels-bench
prof() { # name, kernel regex, env...
  local name=$1 k=$2; shift 2
  env "$@" BNB_NCU=1 BNB_SWEEP=1 BNB_BATCHES=8 BNB_SHAPES=28672x4096 \
    timeout 150 ncu --set full --import-source no -k "regex:$k" -c 1 -o "$OUT/ncu-$name" \
    $DIR/kernels-bench --bench > "$OUT/ncu-$name.log" 2> "$OUT/ncu-$name.err"
  echo "$name rc=$?"
  ncu -i "$OUT/ncu-$name.ncu-rep" --csv --page details > "$OUT/ncu-$name.csv" 2>/dev/null
  ncu -i "$OUT/ncu-$name.ncu-rep" --csv --page raw > "$OUT/ncu-$name-raw.csv" 2>/dev/null
  python3 - "$OUT/ncu-$name-raw.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
if len(rows) >= 3:
    h, v = rows[0], rows[2]
    st = [(float(v[i].replace(",", "")), h[i]) for i in range(len(h))
          if h[i].startswith("smsp__average_warps_issue_stalled_") and h[i].endswith("_per_issue_active.ratio")
          and v[i].replace(",", "").replace(".", "").isdigit()]
    for x, name in sorted(st, reverse=True)[:8]:
        print(f"  stall {name[34:-23]:<28} {x:6.2f} warps/issue")
PY
  grep -E '"(Duration|Registers Per Thread|Achieved Occupancy|Issue Slots Busy|Issued Warp Per Scheduler|No Eligible|Memory Throughput|DRAM Throughput|L1/TEX Hit Rate|Executed Instructions|Warp Cycles Per Issued Instruction|Theoretical Occupancy|Compute \(SM\) Throughput|L1/TEX Cache Throughput|Dynamic Shared Memory Per Block)"' "$OUT/ncu-$name.csv" | awk -F'","' '{print $(NF-2)": "$NF}' | tr -d '"' | head -20
}
prof stream-probe 'bnb_stream4_bf16_n1_m2_w4_s4_p0_partial_probe' BNB_CASES="nf4 Stream" BURN_BNB_STREAM4_PROBE=1
prof stream 'bnb_stream4_bf16_n1_m2_w4_s4_p0_partial$' BNB_CASES="nf4 Stream"
prof stream-p2 'bnb_stream4_bf16_n1_m2_w4_s4_p2_partial$' BNB_CASES="nf4 Stream"
prof mma 'matmul4_mma_kernel' BNB_CASES="nf4 auto"
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
