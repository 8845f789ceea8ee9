"""Issue 4 benchmark: latency of the converted model vs fp32 on stock TF, measured in one run.

A random GPT-J (4 layers, n_embd 1024, vocab 50400 by default) is exported, quantized by tfquant
(default int8 lowering), optionally also by Intel Neural Compressor (--inc, when installed), and the
models are timed round-robin (each round runs every model once, rotating the order) at batch 1 x 128 and
1 x 512 tokens, so the ratios come from the same minutes of a noisy machine.  Loading, timing and INC's
quantization (in its own process, calibrated with the model's own tokenizer) are tfquant.benchmark's.

    .venv/bin/python bench/speed.py [--config configs/gptj-1024.yaml] [--seq_lens 128 512] [--iters 20] [--inc]
    ITEX_PY bench/speed.py --itex      (a Python with intel-extension-for-tensorflow[cpu]: fp32 vs itex_mode under ITEX)
"""
import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time

import _bootstrap  # noqa: F401

from tfquant.benchmark import LoadedModel, ModelSpec, timed_round_robin
from tfquant.benchmark.children import quantize_with_inc
from tfquant.benchmark.peers import INC_CALIB_SEQ_LEN
from tfquant.benchmark.stats import latency_summary
from tfquant.fsutil import atomic_write_json, dir_size_bytes
from tfquant.modeldir import locate

ROOT = _bootstrap.ROOT


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "gptj-1024.yaml"))
    p.add_argument("--seq_lens", type=int, nargs="+", default=[128, 512])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--inc", action="store_true", help="also quantize with neural-compressor and time it")
    p.add_argument("--extra", nargs="*", default=[], help="extra tfquant.quantize flags for a second tfquant row")
    p.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "speed.json"))
    p.add_argument("--workdir", help="reuse models from here (default: a new temp folder)")
    p.add_argument("--itex", action="store_true",
                   help="time under Intel Extension for TensorFlow (must be installed): fp32 vs an itex_mode QDQ model "
                        "(and the default int8 model), with ITEX_TF_CONSTANT_FOLDING=0 as ITEX's QDQ fusion needs")
    p.add_argument("--fp32_model", help="time this existing fp32 SavedModel instead of a random GPT-J from --config")
    p.add_argument("--vocab", type=int, default=50400, help="token ids are drawn below this (default 50400)")
    return p.parse_args()


def prepare_models(args, work):
    """{row name: SavedModel folder}: fp32 (exported from --config unless given), tfquant int8, the --extra
    row, and INC's int8 (with its quantization time in ``notes``); each is reused when already in ``work``."""
    py = sys.executable
    fp32 = os.path.abspath(args.fp32_model) if args.fp32_model else os.path.join(work, "fp32")
    if not os.path.exists(fp32):
        subprocess.run([py, "tools/prepare_model.py", "--config", args.config, "--output_dir", fp32], cwd=ROOT, check=True)
    models = {"fp32": fp32}
    tq = os.path.join(work, "tfquant")
    if not os.path.exists(tq):
        subprocess.run([py, "-m", "tfquant.quantize", "--input_model", fp32, "--output_dir", tq, "--quiet"], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL)
    models["tfquant int8"] = os.path.join(tq, "model")
    if args.extra:
        tq2 = os.path.join(work, "tfquant_extra")
        if not os.path.exists(tq2):
            subprocess.run([py, "-m", "tfquant.quantize", "--input_model", fp32, "--output_dir", tq2, "--quiet", *args.extra],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        models["tfquant " + " ".join(args.extra)] = os.path.join(tq2, "model")
    notes = {}
    if args.inc:
        inc_dir = os.path.join(work, "inc")
        if not os.path.exists(inc_dir):
            result = quantize_with_inc(locate(fp32).saved_model, inc_dir, INC_CALIB_SEQ_LEN, "inc",
                                       log_path=os.path.join(work, "inc.log"))
            notes["inc_quantize_s"] = round(result["seconds"], 1)
        models["INC 3.x int8"] = inc_dir
    return models, notes


def time_models(models, args):
    """{"1xS": {row name: median/p90/mean/ratio_vs_fp32}} for every --seq_lens S, random ids below --vocab."""
    import numpy as np

    loaded = [LoadedModel(ModelSpec(name=n, role="", folder=locate(p))) for n, p in models.items()]
    rs = np.random.RandomState(0)
    latency = {}
    for seq in args.seq_lens:
        ids = rs.randint(0, args.vocab, size=(1, seq)).astype(np.int32)
        times = timed_round_robin(loaded, ids, args.warmup, args.iters)
        row = {}
        for m, ts in zip(loaded, times):
            s = latency_summary(ts)
            row[m.spec.name] = {"median": round(s["median"], 2), "p90": round(s["p90"], 2), "mean": round(s["mean"], 2)}
        base = row["fp32"]["median"]
        for r in row.values():
            r["ratio_vs_fp32"] = round(r["median"] / base, 3)
        latency[f"1x{seq}"] = row
    return latency


def main():
    args = parse_args()
    if args.inc and importlib.util.find_spec("neural_compressor") is None:
        sys.exit("error: --inc needs neural-compressor installed in this Python (pip install .[inc])")
    if args.itex:
        if importlib.util.find_spec("intel_extension_for_tensorflow") is None:
            sys.exit("error: --itex needs intel-extension-for-tensorflow[cpu] installed in this Python")
        os.environ["ITEX_TF_CONSTANT_FOLDING"] = "0"  # before TensorFlow (and ITEX) is imported
        if "--itex_mode" not in args.extra:
            args.extra = ["--itex_mode", *args.extra]
    work = args.workdir or tempfile.mkdtemp(prefix="tfquant-speed-")
    os.makedirs(work, exist_ok=True)
    models, notes = prepare_models(args, work)

    import tensorflow as tf

    from tfquant.machine import describe

    results = {"models": {n: {"path": p, "size_bytes": dir_size_bytes(p)} for n, p in models.items()},
               "latency_ms": time_models(models, args)}
    base_size = results["models"]["fp32"]["size_bytes"]
    for m in results["models"].values():
        m["size_ratio"] = round(m["size_bytes"] / base_size, 3)
    results.update({
        "config": args.fp32_model or os.path.relpath(args.config, ROOT), "iters": args.iters, "warmup": args.warmup, "notes": notes,
        "machine": {**describe(), "cpus": os.cpu_count(), "tf": tf.__version__, "python": platform.python_version(),
                    "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)"),
                    "itex": _itex_version(), "ITEX_TF_CONSTANT_FOLDING": os.environ.get("ITEX_TF_CONSTANT_FOLDING")},
        "date": time.strftime("%Y-%m-%d"),
    })
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    atomic_write_json(args.output, results)
    print(format_table(results))


def _itex_version():
    try:
        import intel_extension_for_tensorflow as itex

        return itex.__version__
    except ImportError:
        return None


def format_table(results):
    """The README's table: one median (ratio) column per sequence length, then the size."""
    lines = ["| model | " + " | ".join(f"1x{s} median ms (ratio)" for s in [k.split("x")[1] for k in results["latency_ms"]])
             + " | size MB (ratio) |", "|---|" + "---|" * (len(results["latency_ms"]) + 1)]
    for n, m in results["models"].items():
        cells = [f"{results['latency_ms'][k][n]['median']:.1f} ({results['latency_ms'][k][n]['ratio_vs_fp32']:.2f}x)"
                 for k in results["latency_ms"]]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {m['size_bytes'] / 2**20:.0f} ({m['size_ratio']:.2f}x) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
