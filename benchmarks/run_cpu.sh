#!/usr/bin/env bash
# The CPU benchmark runs recorded in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results
export HF_HUB_OFFLINE=1
bench() { $PY benchmarks/bench_segment.py --device cpu "$@"; }
bench --model tiny --image-size 256 --num-masks 16 --json $OUT/cpu-tiny-256-k16.json
bench --model tiny --image-size 256 --num-masks 8 --skip-naive --json $OUT/cpu-tiny-256-k8.json
bench --model tiny --image-size 256 --num-masks 30 --skip-naive --json $OUT/cpu-tiny-256-k30.json
bench --model tiny --image-size 512 --num-masks 8 --skip-naive --json $OUT/cpu-tiny-512-k8.json
$PY benchmarks/bench_compile.py --device cpu --model tiny --image-size 256 --num-masks 16 --repeats 3 \
    --json $OUT/compile-ab-cpu-tiny-256-k16.json
# The full-size SD 1.4 architecture (random weights): naive against optimized where the naive
# path takes minutes, then 512 px at the smallest useful K (one UNet call there takes ~5 s here).
bench --model sd14-random --image-size 256 --num-masks 4 --json $OUT/cpu-sd14random-256-k4.json
bench --model sd14-random --image-size 512 --num-masks 2 --skip-naive --json $OUT/cpu-sd14random-512-k2.json
# bfloat16 runs on the CPU's AMX matrix units (Sapphire Rapids and later); float16 has none here.
bench --model tiny --image-size 256 --num-masks 16 --skip-naive --dtype bfloat16 --json $OUT/cpu-tiny-256-k16-bfloat16.json
bench --model tiny --image-size 256 --num-masks 16 --skip-naive --dtype float16 --json $OUT/cpu-tiny-256-k16-float16.json
bench --model sd14-random --image-size 256 --num-masks 4 --skip-naive --dtype bfloat16 --json $OUT/cpu-sd14random-256-k4-bf16.json
$PY benchmarks/bench_injection_attention.py --device cpu --tokens 1024 4096 --batch 9 31 \
    > $OUT/cpu-injection-attention.md
$PY benchmarks/bench_memory_format.py --device cpu --image-size 256 --batch 9 \
    > $OUT/cpu-memory-format.md
$PY benchmarks/make_table.py $OUT/*.json
