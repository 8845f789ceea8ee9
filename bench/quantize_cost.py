"""Quantize cost: wall time and peak RSS of `python -m tfquant.quantize` on a random GPT-J, in a child process.

    .venv/bin/python bench/quantize_cost.py [--config configs/gptj-2700m.yaml] [--output bench/results/quantize_cost.json]

The default model (10 layers, n_embd 2048, vocab 50400: ~2.7 GB of fp32 weights) is larger than protobuf's
2 GB GraphDef cap, so it only converts because tfquant never freezes weights into the graph.  The model is
exported first (tools/prepare_model.py, its own child process, not counted); then the quantize child is
timed, and its peak RSS is read from the rusage of that one child (os.wait4), so the export cannot inflate it.
Target: peak RSS <= 2.5x the fp32 weight bytes.

Peer figure quoted for scale (not re-measured here): INC 3.10 `quantize_model` took 131 s and 7.8 GB peak RSS on a
4-layer n_embd 512 random GPT-J (64M parameters) on this project's AMD EPYC 2-core machine (measured by an earlier
session with /usr/bin/time around a script calling quantize_model with 16 calibration windows).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import _bootstrap  # noqa: F401

from tfquant.fsutil import atomic_write_json, dir_size_bytes
from tfquant.machine import describe

ROOT = _bootstrap.ROOT
PEAK_RSS_TARGET = 2.5  # x the fp32 weight bytes


def run_measured(cmd):
    """Run ``cmd`` and return (wall s, peak RSS MiB of that child only, stdout); exit on failure."""
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child becomes the command; its summary goes to this script's stdout
        os.chdir(ROOT)
        os.execvp(cmd[0], cmd)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"command failed ({code}): {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024.0  # KiB on Linux


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "gptj-2700m.yaml"))
    p.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "quantize_cost.json"))
    p.add_argument("--format", default="int8", choices=("int8", "qdq"))
    p.add_argument("--workdir", help="keep the models here (default: a temporary folder, removed)")
    args = p.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="tfquant-bench-")
    model, out = os.path.join(work, "fp32"), os.path.join(work, "q")
    py = sys.executable
    prepare_s = None  # a model kept in --workdir from an earlier run is not exported again
    if not os.path.isdir(model):
        t = time.perf_counter()
        subprocess.run([py, "tools/prepare_model.py", "--config", args.config, "--output_dir", model], cwd=ROOT,
                       check=True, capture_output=True)
        prepare_s = round(time.perf_counter() - t, 1)
    weights = dir_size_bytes(os.path.join(model, "variables"))
    wall, peak_mb = run_measured([py, "-m", "tfquant.quantize", "--input_model", model, "--output_dir", out,
                                  "--format", args.format, "--quiet", "--overwrite"])
    with open(os.path.join(out, "report.json")) as fh:
        report = json.load(fh)
    graph_bytes = os.path.getsize(os.path.join(out, "converted_graph_def.pb"))
    result = {
        "model": os.path.relpath(args.config, ROOT),
        "format": args.format,
        "fp32_weight_bytes": weights,
        "fp32_savedmodel_bytes": report["size_bytes"]["input"],
        "quantize_wall_s": round(wall, 1),
        "quantize_peak_rss_mb": round(peak_mb),
        "peak_rss_over_weights": round(peak_mb * 2**20 / weights, 2),
        "target_peak_rss_over_weights": PEAK_RSS_TARGET,
        "size_ratio": round(report["size_bytes"]["output"] / report["size_bytes"]["input"], 3),
        "converted_graph_def_bytes": graph_bytes,
        "stage_timings_s": report["timings_s"],
        "size_bytes": report["size_bytes"],
        "calibration": report["calibration"],
        "peak_rss_method": "os.wait4 rusage of the quantize child alone (ru_maxrss)",
        "peer_for_scale": {"tool": "INC 3.10 quantize_model", "model": "random GPT-J 4 layers, n_embd 512 (64M params)",
                           "wall_s": 131, "peak_rss_mb": 7800,
                           "how": "earlier session, AMD EPYC 2 cores, /usr/bin/time around quantize_model"},
        "prepare_model_s": prepare_s,
        "machine": {**describe(), "cpus": os.cpu_count()},
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    atomic_write_json(args.output, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
