#!/usr/bin/env bash
# Issues 3 and 5: SmolLM2-135M (real weights; 4-bit Q4_1 before dequantization), fp32 vs tfquant default vs
# tfquant --performance_only (and more recipes given as extra args), scored on SAMPLES items of the shipped
# Austen LAMBADA-style set, latency/size/memory in the same run.
#   bash bench/smollm2.sh            (SAMPLES=600 by default; WORK=/tmp/tfquant-smollm2 holds the models)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
SAMPLES=${SAMPLES:-600}
WORK=${WORK:-/tmp/tfquant-smollm2}
mkdir -p "$WORK" bench/results
[ -f "$WORK/fp32/saved_model.pb" ] || $PY tools/prepare_model.py --gguf default --output_dir "$WORK/fp32"
[ -d "$WORK/tfquant-default" ] || $PY -m tfquant.quantize --input_model "$WORK/fp32" --output_dir "$WORK/tfquant-default" --quiet
[ -d "$WORK/tfquant-performance_only" ] || $PY -m tfquant.quantize --input_model "$WORK/fp32" \
    --output_dir "$WORK/tfquant-performance_only" --performance_only --quiet
[ -d "$WORK/tfquant-reference" ] || $PY -m tfquant.quantize --input_model "$WORK/fp32" \
    --output_dir "$WORK/tfquant-reference" --config configs/recipes/reference.yaml --quiet
[ -d "$WORK/tfquant-smoothquant" ] || $PY -m tfquant.quantize --input_model "$WORK/fp32" \
    --output_dir "$WORK/tfquant-smoothquant" --config configs/recipes/smoothquant.yaml --quiet
$PY -m tfquant.benchmark --input_model "$WORK/fp32" \
    --quantized_model "$WORK/tfquant-default" --quantized_model "$WORK/tfquant-performance_only" \
    --quantized_model "$WORK/tfquant-reference" --quantized_model "$WORK/tfquant-smoothquant" "$@" \
    --samples "$SAMPLES" --output bench/results/smollm2.json --chart bench/results/smollm2.png
