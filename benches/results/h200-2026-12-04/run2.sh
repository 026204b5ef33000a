#!/bin/bash
# Call 2: the fused backend (`Bnb<Cuda>` = Bnb<Fusion<CubeBackend>>, what users write as
# their backend) registers matmul_4bit_add_rms_norm, matmul_4bit_rotary_kv and rotary_kv as custom
# fusion operations (one launch each on CubeBackend) instead of composing them.
# 1. CUDA tests: backend suite on Bnb<Cuda<bf16>> (fused), stacked_qkv_rotary_kv_cuda;
# 2. llama_bench --fusion NF4/NF4+DQ at batch 1/8/32: base (call 1's binary, 6f1ea84 + its
#    switch, unset) and new, alternating twice.
set -u
OUT=${OUT:-/tmp/out}; FINAL=$OUT; OUT=$FINAL/r; mkdir -p "$OUT"
DIR=.gpu/c6
. benches/gpu/cubecl-cache.sh
for b in llama_bench base-llama_bench backend-cuda; do xz -d -k -f $DIR/$b.xz && chmod +x $DIR/$b; done
( time timeout 150 $DIR/backend-cuda --ignored --test-threads=1 bnb_cuda_bf16 stacked_qkv_rotary_kv_cuda ) > "$OUT/backend-cuda.log" 2>&1
grep -h "^test \|test result\|panicked" -A3 "$OUT/backend-cuda.log" | head -12
for i in 1 2; do for v in base new; do
  [ $SECONDS -lt 300 ] || break 2
  bin=$DIR/llama_bench; [ $v = base ] && bin=$DIR/base-llama_bench
  timeout 50 $bin --fusion --models llama-3.1-8b --formats nf4,nf4-dq --batches 1,8,32 --warmup 2 --runs 6 --verbose --out "$OUT/ll-$v-$i" > "$OUT/ll-$v-$i.log" 2>&1
  echo "ll $v $i rc=$? t=$SECONDS"; grep -h "s/step" "$OUT/ll-$v-$i.log"
done; done
rm -rf "$OUT"/ll-*/
save_cubecl_cache
mv "$OUT/cache.tgz" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$FINAL/r"; ls "$FINAL"
