"""Issue 2 benchmark: wall time and peak RSS of `python -m tfquant.quantize` on a random GPT-J
(4 layers, n_embd 512, vocab 50400, ~64M parameters), measured in a child process.

    .venv/bin/python bench/quantize_cost.py [--config configs/gptj-64m.yaml] [--output bench/results/quantize_cost.json]

The reference (INC 3.10 quantize_model) needs 131 s and 7.8 GB on this machine for this model (NOTES.md §4).
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_measured(cmd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if res.returncode != 0:
        sys.exit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return wall, max(peak_kb, before) / 1024.0, res.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "gptj-64m.yaml"))
    p.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "quantize_cost.json"))
    p.add_argument("--format", default="int8", choices=("int8", "qdq"))
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="tfquant-bench-")
    model = os.path.join(work, "fp32")
    py = sys.executable
    t = time.perf_counter()
    subprocess.run([py, "tools/prepare_model.py", "--config", args.config, "--output_dir", model], cwd=ROOT, check=True,
                   capture_output=True)
    prepare_s = time.perf_counter() - t
    out = os.path.join(work, "q")
    wall, peak_mb, stdout = run_measured([py, "-m", "tfquant.quantize", "--input_model", model, "--output_dir", out,
                                          "--format", args.format, "--quiet"])
    with open(os.path.join(out, "report.json")) as fh:
        report = json.load(fh)
    result = {
        "model": os.path.relpath(args.config, ROOT),
        "format": args.format,
        "quantize_wall_s": round(wall, 1),
        "quantize_peak_rss_mb": round(peak_mb),
        "stage_timings_s": report["timings_s"],
        "size_bytes": report["size_bytes"],
        "calibration": report["calibration"],
        "targets": {"wall_s": 60, "peak_rss_mb": 3072},
        "reference_inc_3_10": {"wall_s": 131, "peak_rss_mb": 7800, "source": "NOTES.md section 4, same machine kind"},
        "prepare_model_s": round(prepare_s, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    print(json.dumps(result, indent=2))
    print(stdout)


if __name__ == "__main__":
    main()
