A=0af6a85 B=1c0e812 REPEATS=2 LIMIT=135 bash benches/gpu/ab.sh .gpu/lb-base .gpu/lb-new --models llama-3.1-8b --formats nf4,nf4-dq --batches 8,32 --warmup 1 --runs 3 --op-stats
