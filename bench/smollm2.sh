#!/usr/bin/env bash
# Issues 3 and 5: SmolLM2-135M (real weights; 4-bit Q4_1 before dequantization), fp32 vs tfquant default vs
# tfquant --performance_only vs Intel Neural Compressor (default static int8, and with SmoothQuant) as peer rows,
# scored on SAMPLES items of the shipped Austen LAMBADA-style set, latency/size/memory in the same run.
#   INC_PY=/path/to/python-with-neural-compressor bash bench/smollm2.sh
# SAMPLES=600 by default; WORK=/tmp/tfquant-smollm2 holds the models; INC_PY (default .venv/bin/python) must have
# `pip install .[inc]` for the INC rows (NO_INC=1 leaves them out). Extra args go to tfquant.benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
BENCH_PY=${INC_PY:-$PY}
SAMPLES=${SAMPLES:-600}
WORK=${WORK:-/tmp/tfquant-smollm2}
mkdir -p "$WORK" bench/results
[ -f "$WORK/fp32/saved_model.pb" ] || $PY tools/prepare_model.py --gguf default --output_dir "$WORK/fp32"
[ -d "$WORK/tfquant-default" ] || $PY -m tfquant.quantize --input_model "$WORK/fp32" --output_dir "$WORK/tfquant-default" --quiet
[ -d "$WORK/tfquant-performance_only" ] || $PY -m tfquant.quantize --input_model "$WORK/fp32" \
    --output_dir "$WORK/tfquant-performance_only" --performance_only --quiet
INC_ARGS=(--compare inc --compare inc-smoothquant)
[ "${NO_INC:-0}" = 1 ] && INC_ARGS=()
$BENCH_PY -m tfquant.benchmark --input_model "$WORK/fp32" \
    --quantized_model "$WORK/tfquant-default" --quantized_model "$WORK/tfquant-performance_only" \
    "${INC_ARGS[@]}" "$@" --samples "$SAMPLES" --output bench/results/smollm2.json --chart bench/results/smollm2.png
