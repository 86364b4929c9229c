#!/usr/bin/env bash
# The CPU benchmark runs recorded in BENCHMARKS.md (about 30 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results
export HF_HUB_OFFLINE=1
$PY benchmarks/bench_segment.py --model tiny --image-size 256 --num-masks 16 --device cpu --json $OUT/cpu-tiny-256-k16.json
$PY benchmarks/bench_segment.py --model sd14-random --image-size 256 --num-masks 4 --device cpu --json $OUT/cpu-sd14random-256-k4.json
$PY benchmarks/bench_segment.py --model sd14-random --image-size 512 --num-masks 2 --device cpu --skip-naive --json $OUT/cpu-sd14random-512-k2.json
$PY benchmarks/make_table.py $OUT/*.json
