#!/bin/bash
# Call 2: base (5216b43, in-process, token read per step) against new (tokens read one step behind;
# each format in its own process by default), Llama-3.1-8B, every format, batch 1/8/32, alternating.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c15
. benches/gpu/cubecl-cache.sh
for b in llama_bench llama_bench_new; do xz -d -k -f $DIR/$b.xz; chmod +x $DIR/$b; done
[ -f $DIR/cuda_backend.xz ] && xz -d -k -f $DIR/cuda_backend.xz && chmod +x $DIR/cuda_backend
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
uptime > "$OUT/uptime.txt"
t0=$(date +%s)
lb() { local name=$1 bin=$2 lim=$3; shift 3; local s=$(date +%s)
  BURN_BNB_COMMIT=$name timeout $lim $DIR/$bin --models llama-3.1-8b --warmup 3 --runs 6 --verbose --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $(( $(date +%s) - s )) s" >> "$OUT/times.txt"; }
left() { echo $(( 560 - ($(date +%s) - t0) )); }
lb base-1 llama_bench 150
lb new-iso-1 llama_bench_new 150
lb new-inproc-1 llama_bench_new 110 --in-process
lb base-2 llama_bench $(( $(left) > 110 ? 110 : $(left) ))
lb new-iso-2 llama_bench_new $(( $(left) - 5 ))
save_cubecl_cache
cat "$OUT/times.txt"; for f in "$OUT"/*.log; do echo "== $(basename $f)"; grep -h "s/step" $f; done
mv "$OUT/cache.tgz" "$FINAL/"; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
