#!/bin/bash
# The whole model path on CUDA (`BnbCuda<bf16>`: decoder kernels, quantized matmuls) on the tiny
# golden checkpoints: perplexity of eval.txt (transformers' values are in reference.json; the
# CPU path is within 1% of them, `tests/models_golden.rs`) and 16 greedy tokens of the prompt
# (compare with `--device cpu` here). Build the CLI first:
#   cargo build --release -p burn-bnb-cli && strip -o DIR/burn-bnb target/release/burn-bnb
# Usage (from the repository root): benches/gpu/models.sh DIR. Output also in $OUT/models.txt.
set -u
DIR=${1:?the folder holding burn-bnb}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
[ -f "$DIR/burn-bnb" ] || xz -d -k -f "$DIR/burn-bnb.xz"; chmod +x "$DIR/burn-bnb"
M=tests/fixtures/golden/models
P=$(python3 -c "import json; print(json.load(open('$M/prompt.json'))['prompt'])")
for m in llama-bf16 qwen2-nf4-dq llama-int8-decomp llama-nf4-dq qwen2-bf16 qwen2-int8-decomp llama-fp4 qwen2-fp4; do
    echo "== $m"
    timeout 60 "$DIR/burn-bnb" perplexity -m "$M/$m" --device cuda --quiet --text "$M/eval.txt" --json 2>&1 | tail -1
    timeout 30 "$DIR/burn-bnb" generate -m "$M/$m" --device cuda --quiet -p "$P" --max-new-tokens 16 2>&1 | tail -3
done 2>&1 | tee "$OUT/models.txt"
