#!/usr/bin/env bash
# Issue 15: recipes tried for the direction that missed (calibrate Austen, evaluate adventures), then the chosen
# default in both directions and in-domain. SmolLM2-135M, 446 items per domain, every model beside fp32 in one
# benchmark run (paired 95% intervals). Accuracy runs use --iters 1 --warmup 1 (their latency columns are not a
# measurement); latency.json is its own run: fp32, the previous default (--weight_bits 7) and today's default,
# round robin, 40 rounds, nothing else running. A model's name says its calibration domain.
#   bash bench/cross_domain_candidates.sh   -> bench/results/cross_domain_candidates/*.json + summary.json
# WORK=/tmp/gq holds the models; FP32 an already prepared SmolLM2 SavedModel (default: prepared in WORK).
# pairsafe8-shared-table*.json came from an intermediate build (pair-safe codes with SmolLM2's copied embedding
# table shared with the lm_head) that was measured and dropped; no flag rebuilds it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WORK=${WORK:-/tmp/gq}
FP32=${FP32:-$WORK/fp32}
OUT=bench/results/cross_domain_candidates
mkdir -p "$WORK" "$OUT"
[ -f "$FP32/saved_model.pb" ] || $PY tools/prepare_model.py --gguf default --output_dir "$FP32"
convert() {  # name, calibration domain, flags...
    local name=$1 calib=$2; shift 2
    [ -f "$WORK/$name/report.json" ] || $PY -m tfquant.quantize --input_model "$FP32" --output_dir "$WORK/$name" \
        --config w8a8 --calib_dataset "$calib" --signature serving_default --quiet --overwrite "$@"
}
bench() {  # results name, evaluation domain, models...
    local name=$1 dataset=$2; shift 2
    local models=()
    for m in "$@"; do models+=(--quantized_model "$WORK/$m"); done
    $PY -m tfquant.benchmark --input_model "$FP32" --dataset "$dataset" --samples 446 --no_memory \
        --iters 1 --warmup 1 --quiet --output "$OUT/$name.json" "${models[@]}"
}
# candidates, on the 7-bit weights that were the default then
convert gptq-calib-austen austen --weight_bits 7 --weight_rounding gptq
convert w64-calib-austen austen --weight_bits 7 --calib_samples 64
convert gptq64-calib-austen austen --weight_bits 7 --calib_samples 64 --weight_rounding gptq
convert nohead-calib-austen austen --weight_bits 7 --exclude lm_head
convert minmax-calib-austen austen --weight_bits 7 --observer minmax
convert w8bits-calib-austen austen --weight_bits 8 --weight_pairs full
convert w8bits-calib-adventures adventures --weight_bits 8 --weight_pairs full
bench gptq adventures gptq-calib-austen
bench windows64 adventures w64-calib-austen gptq64-calib-austen
bench nohead-minmax adventures nohead-calib-austen minmax-calib-austen
bench weightbits8 adventures w8bits-calib-austen
bench weightbits8-calib-adventures austen w8bits-calib-adventures
# today's default (pair-safe 8-bit weights): both directions and in-domain
convert ps8ns-calib-austen austen
convert ps8ns-calib-adventures adventures
bench default-adventures adventures ps8ns-calib-austen
bench default-austen austen ps8ns-calib-adventures ps8ns-calib-austen
# latency: the previous default against today's, round robin with fp32
convert w8a8-7bit-calib-austen austen --weight_bits 7
convert w8a8-calib-austen austen
$PY -m tfquant.benchmark --input_model "$FP32" --no_accuracy --no_memory --iters 40 --warmup 5 --quiet \
    --output "$OUT/latency.json" --quantized_model "$WORK/w8a8-7bit-calib-austen" --quantized_model "$WORK/w8a8-calib-austen"
$PY - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
rows, env = [], None
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    d = json.load(open(path))
    if os.path.basename(path) == "summary.json" or "accuracy" not in d["models"][0]:
        continue
    env = d["environment"]
    fp32 = d["models"][0]["accuracy"]["whole_word"]
    for m in d["models"][1:]:
        p = m["paired_vs_fp32"]["whole_word"]
        rows.append({"model": m["name"], "file": os.path.basename(path), "evaluated_on": d["settings"]["dataset"],
                     "n": p["n"], "fp32_correct": fp32["correct"],
                     "correct": m["accuracy"]["whole_word"]["correct"], "b": p["b"], "c": p["c"],
                     "diff_pt": round(100 * p["diff"], 2), "ci95_pt": [round(100 * x, 2) for x in p["ci95"]],
                     "size_ratio": round(m["size_ratio"], 4)})
lat = json.load(open(os.path.join(out, "latency.json")))
latency = [{"model": m["name"], "median_ms": round(m["latency_ms"]["median"], 1),
            "latency_ratio": round(m["latency_ratio"], 3)} for m in lat["models"]]
json.dump({"machine": env, "rows": rows, "latency_1x128": latency}, open(os.path.join(out, "summary.json"), "w"),
          indent=1)
for r in rows + latency:
    print(json.dumps(r))
PY
