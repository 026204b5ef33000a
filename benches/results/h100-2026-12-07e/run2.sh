#!/bin/bash
# (2026-12-07e, call 2; not run: no machine) CUDA tests of split-k-norm-held-not-landed.patch (no
# PTX cache: a kernel's id does not change with its body), then its held row against the passes
# at batch 32 (llama_bench_b: c90caff + both patches; BURN_BNB_OLD=1 = the passes).
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; mkdir -p "$FINAL/t" "$FINAL/r"
DIR=.gpu/s1
export BURN_BNB_GOLDEN=$PWD/tests/fixtures/golden
for b in kernels-cuda backend-cuda llama_bench_b; do xz -dkf $DIR/$b.xz && chmod +x $DIR/$b; done
rm -f cubecl.toml
( time timeout 150 $DIR/kernels-cuda --ignored --test-threads=1 add_rms_norm_split_k matmul4_add_rms_norm ) > "$FINAL/t/kernels-cuda.log" 2>&1
echo "kernels rc=$? t=$SECONDS"; grep -h "^test \|test result\|panicked" "$FINAL/t/kernels-cuda.log" | head -12
( time timeout 120 $DIR/backend-cuda --ignored --test-threads=1 decoder_kernels_cuda stacked_qkv_rotary_kv_cuda ) > "$FINAL/t/backend-cuda.log" 2>&1
echo "backend rc=$? t=$SECONDS"; grep -h "^test \|test result\|panicked" "$FINAL/t/backend-cuda.log" | head -8
. benches/gpu/cubecl-cache.sh
OUT=$FINAL/r
common="--models llama-3.1-8b --warmup 2 --runs 8 --verbose"
run() { local name=$1 b=$2 f=$3; shift 3
  cubecl_cache_for $DIR/llama_bench_b
  env "$@" BURN_BNB_COMMIT=held-switch-$name timeout 60 $DIR/llama_bench_b $common --batches $b --formats $f --out /tmp/lb-$name > "$OUT/ll-$name.log" 2>&1
  echo "$name rc=$? t=$SECONDS"; }
S0=$SECONDS
for i in 1 2 3; do
  [ $((SECONDS - S0)) -lt 150 ] && run base-b32r$i 32 nf4,nf4-dq BURN_BNB_OLD=1
  [ $((SECONDS - S0)) -lt 150 ] && run held-b32r$i 32 nf4,nf4-dq
done
python3 benches/gpu/step_medians.py "$OUT" > "$FINAL/step-medians.txt" 2>&1; cat "$FINAL/step-medians.txt"
python3 benches/gpu/step_medians.py --rounds "$OUT" > "$FINAL/step-medians-rounds.txt" 2>&1
save_cubecl_cache; mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null
tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls -la "$FINAL"; echo "total t=$SECONDS"
