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
bench --model sd14-random --image-size 512 --num-masks 2 --skip-naive --json $OUT/cpu-sd14random-512-k2.json
$PY benchmarks/make_table.py $OUT/*.json
