"""Issue 15 benchmark: calibrate on one text, evaluate on another, both directions, in one run per direction.

    .venv/bin/python bench/cross_domain.py [--recipes w8a8 w8a8-dynamic] [--samples 446] [--work DIR]

SmolLM2-135M (tools/prepare_model.py --gguf default). Domains: `austen` (calibration: Northanger Abbey; items:
five other Austen novels) and `adventures` (calibration: Alice in Wonderland; items: Sherlock Holmes and Tom
Sawyer). For every recipe and calibration domain A, the model calibrated on A is scored on the items of both
domains against fp32 on the same items (paired 95% intervals), latency 1x128 round robin with fp32 in the same
run. Writes bench/results/cross_domain_smollm2.json (one benchmark JSON per evaluation domain inside).
"""
import argparse
import json
import os
import subprocess
import sys

import _bootstrap  # noqa: F401

from tfquant.fsutil import atomic_write_json
from tfquant.machine import describe

ROOT = _bootstrap.ROOT
DOMAINS = ("austen", "adventures")


def run(cmd):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def table(path: str) -> str:
    """The README table (markdown) from bench/results/cross_domain_smollm2.json."""
    with open(path) as f:
        d = json.load(f)
    rows = ["| model | calibrated on | evaluated on | items | fp32 whole-word | model whole-word | "
            "Δ vs fp32 [95% CI] | latency vs fp32 | size vs fp32 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in d["summary"]:
        rows.append("| {} | {} | {} | {} | {:.2%} | {:.2%} | {:+.2f} pt [{:+.2f}, {:+.2f}] | {:.3f}x | {:.3f}x |".format(
            r["model"], r["calibrated_on"] or "- (run-time ranges)", r["evaluated_on"], r["n"], r["fp32_whole_word"],
            r["whole_word"], r["diff_pt"], *r["ci95_pt"], r["latency_ratio"], r["size_ratio"]))
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["w8a8", "w8a8-dynamic"])
    p.add_argument("--samples", type=int, default=446, help="items per evaluation domain (adventures has 446)")
    p.add_argument("--work", default="/tmp/tfquant-cross-domain")
    p.add_argument("--also", nargs="*", default=[], metavar="DIR",
                   help="more converted models to score beside them (e.g. the previous default, for its latency)")
    p.add_argument("--fp32", help="an already prepared fp32 SmolLM2 SavedModel (default: prepare one in --work)")
    p.add_argument("--table", metavar="JSON", help="print the README table of a results file and stop")
    args, extra = p.parse_known_args()  # the rest goes to tfquant.benchmark (e.g. --iters)
    if args.table:
        print(table(args.table))
        return
    py = sys.executable
    os.makedirs(args.work, exist_ok=True)
    fp32 = args.fp32 or os.path.join(args.work, "fp32")
    if not os.path.isfile(os.path.join(fp32, "saved_model.pb")):
        run([py, "tools/prepare_model.py", "--gguf", "default", "--output_dir", fp32, "--overwrite"])
    models, calibrated = {}, {}
    for recipe in args.recipes:
        for calib in DOMAINS:
            name = f"{recipe}-calib-{calib}"
            out = os.path.join(args.work, name)
            if not os.path.isfile(os.path.join(out, "report.json")):
                run([py, "-m", "tfquant.quantize", "--input_model", fp32, "--output_dir", out, "--config", recipe,
                     "--calib_dataset", calib, "--signature", "serving_default", "--quiet", "--overwrite"])
            models[name] = out
            with open(os.path.join(out, "report.json")) as f:
                calibrated[name] = calib if json.load(f)["calibration"].get("run", True) else None
            if calibrated[name] is None:
                break  # no ranges from data (dynamic): one model serves both directions
    for also in args.also:
        name = os.path.basename(also.rstrip("/"))
        models[name] = also
        calibrated[name] = name.split("-calib-")[1] if "-calib-" in name else "?"
    results = {"machine": describe(), "samples": args.samples, "recipes": args.recipes, "evaluations": {}}
    for dataset in DOMAINS:
        path = os.path.join(args.work, f"bench-{dataset}.json")
        cmd = [py, "-m", "tfquant.benchmark", "--input_model", fp32, "--dataset", dataset, "--samples",
               str(args.samples), "--no_memory", "--quiet", "--output", path, *extra]
        for out in models.values():
            cmd += ["--quantized_model", out]
        run(cmd)
        with open(path) as f:
            results["evaluations"][dataset] = json.load(f)
    summary = []
    for dataset, bench in results["evaluations"].items():
        for m in bench["models"][1:]:
            pair = m["paired_vs_fp32"]["whole_word"]
            summary.append({"model": m["name"], "calibrated_on": calibrated.get(m["name"], "?"),
                            "evaluated_on": dataset, "n": pair["n"],
                            "fp32_whole_word": bench["models"][0]["accuracy"]["whole_word"]["accuracy"],
                            "whole_word": m["accuracy"]["whole_word"]["accuracy"],
                            "diff_pt": round(100 * pair["diff"], 2),
                            "ci95_pt": [round(100 * x, 2) for x in pair["ci95"]],
                            "latency_ratio": m["latency_ratio"], "size_ratio": m["size_ratio"]})
    results["summary"] = summary
    target = os.path.join(ROOT, "bench", "results", "cross_domain_smollm2.json")
    atomic_write_json(target, results)
    for row in summary:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
