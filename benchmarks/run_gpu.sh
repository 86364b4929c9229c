#!/usr/bin/env bash
# The GPU runs of the speed issue, as one script (about 5 minutes on one H100).
#
#   bash benchmarks/run_gpu.sh OUT_DIR [SD14_CONFIG_DIR]
#
# Needs a CUDA torch with diffusers, transformers, scikit-learn and scipy importable, and the SD 1.4
# config folder (../shared/data/sd-v1-4-configs by default). Each step writes its own file to
# OUT_DIR, so a stopped run keeps what finished; a failing step does not stop the next ones.
# Afterwards: copy the JSON files into benchmarks/results/ and run benchmarks/make_table.py.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: run_gpu.sh OUT_DIR [SD14_CONFIG_DIR]}
CONFIGS=${2:-../shared/data/sd-v1-4-configs}
PY=${PY:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
bench() { $PY benchmarks/bench_segment.py --device cuda --configs "$CONFIGS" "$@"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
# Materialised reference probabilities against fused SDPA per element, at SD 1.4's shapes.
$PY benchmarks/bench_injection_attention.py --device cuda --dtype float16 --tokens 1024 4096 \
    --batch 16 31 61 > "$OUT/gpu-injection-attention.md"
# Channels-last against contiguous convolutions, UNet call of 31 elements and VAE decode.
$PY benchmarks/bench_memory_format.py --device cuda --dtype float16 --image-size 512 --batch 31 \
    --configs "$CONFIGS" > "$OUT/gpu-memory-format.md"
# The headline: SD 1.4 architecture (random weights), 512 px, K = 30, half precision.
bench --model sd14-random --image-size 512 --num-masks 30 --dtype float16 --skip-naive \
    --json "$OUT/gpu-sd14random-512-k30-fp16.json"
bench --model sd14-random --image-size 512 --num-masks 30 --dtype bfloat16 --skip-naive \
    --json "$OUT/gpu-sd14random-512-k30-bf16.json"
# Naive against optimized, side by side, where the naive path takes seconds rather than minutes.
bench --model sd14-random --image-size 256 --num-masks 8 --dtype float16 \
    --json "$OUT/gpu-sd14random-256-k8-fp16.json"
# Eager against compiled, interleaved, both warmed up.
$PY benchmarks/bench_compile.py --device cuda --configs "$CONFIGS" --model sd14-random \
    --image-size 512 --num-masks 30 --dtype float16 --repeats 2 \
    --json "$OUT/gpu-compile-ab-sd14random-512-k30-fp16.json"
# float16 against float32 labels on the trained ToyWorld model.
$PY benchmarks/half_precision_agreement.py --device cuda --dtype float16 --n 8 \
    --json "$OUT/agreement-toyworld-fp16-cuda.json"
# Flow-matching transformers at K = 30 (issue 25), bfloat16, measured against the on-paper costs
# of BENCHMARKS.md (benchmarks/flow_costs.py). They need real weights in the local cache (both
# repositories are gated): set FLOW_SD3 and/or FLOW_FLUX to a hub id or folder to run them, e.g.
#   FLOW_SD3=stabilityai/stable-diffusion-3.5-medium FLOW_FLUX=black-forest-labs/FLUX.1-dev
# FLUX.1-dev at 1024 px needs an 80 GB GPU for the batched path (about 52 GiB by the estimate).
$PY benchmarks/flow_costs.py > "$OUT/flow-costs-on-paper.md"
for size in 512 1024; do
    if [ -n "${FLOW_SD3:-}" ]; then
        bench --model "$FLOW_SD3" --image-size "$size" --num-masks 30 --dtype bfloat16 \
            --skip-naive --json "$OUT/gpu-sd35medium-$size-k30-bf16.json"
    fi
    if [ -n "${FLOW_FLUX:-}" ]; then
        bench --model "$FLOW_FLUX" --image-size "$size" --num-masks 30 --dtype bfloat16 \
            --skip-naive --json "$OUT/gpu-flux1dev-$size-k30-bf16.json"
    fi
done
