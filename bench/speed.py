"""Issue 4 benchmark: latency of the converted model vs fp32 on stock TF, measured in one run.

A random GPT-J (4 layers, n_embd 1024, vocab 50400 by default) is exported, quantized by tfquant
(default int8 lowering), optionally also by Intel Neural Compressor (--inc, when installed), and the
models are timed round-robin (each iteration runs every model once) at batch 1 x 128 and 1 x 512
tokens, so the ratios come from the same minutes of a noisy machine.

    .venv/bin/python bench/speed.py [--config configs/gptj-1024.yaml] [--seq_lens 128 512] [--iters 20] [--inc]
    ITEX_PY bench/speed.py --itex      (a Python with intel-extension-for-tensorflow[cpu]: fp32 vs itex_mode under ITEX)
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def quantize_with_inc(src, dst, calib_windows):
    """INC 3.x static int8 (per-tensor min/max), the peer the issue compares against."""
    import tensorflow as tf
    from neural_compressor.tensorflow import StaticQuantConfig, quantize_model

    class Loader:
        batch_size = 1

        def __iter__(self):
            for w in calib_windows:
                yield {"input_ids": w, "attention_mask": (w * 0 + 1)}, None

    t = time.perf_counter()
    q = quantize_model(src, StaticQuantConfig(), calib_dataloader=Loader(), calib_iteration=len(calib_windows))
    q.save(dst)
    return time.perf_counter() - t


def dir_size(path):
    from tfquant.fsutil import dir_size_bytes

    return dir_size_bytes(path)


def main():
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
    args = p.parse_args()
    if args.itex:
        import importlib.util

        if importlib.util.find_spec("intel_extension_for_tensorflow") is None:
            sys.exit("error: --itex needs intel-extension-for-tensorflow[cpu] installed in this Python")
        os.environ["ITEX_TF_CONSTANT_FOLDING"] = "0"  # before TensorFlow (and ITEX) is imported
        if "--itex_mode" not in args.extra:
            args.extra = ["--itex_mode", *args.extra]
    work = args.workdir or tempfile.mkdtemp(prefix="tfquant-speed-")
    os.makedirs(work, exist_ok=True)
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

    import numpy as np
    import tensorflow as tf

    from tfquant.machine import describe
    from tfquant.data import default_calibration_text_path, gpt2_tokenizer, read_text, token_windows

    notes = {}
    if args.inc:
        inc_dir = os.path.join(work, "inc")
        if not os.path.exists(inc_dir):
            windows = token_windows(read_text(default_calibration_text_path()), gpt2_tokenizer(), 16, 128)
            notes["inc_quantize_s"] = round(quantize_with_inc(fp32, inc_dir, windows), 1)
        models["INC 3.x int8"] = inc_dir

    fns = {name: tf.saved_model.load(path).signatures["serving_default"] for name, path in models.items()}
    rs = np.random.RandomState(0)
    results = {"models": {n: {"path": p, "size_bytes": dir_size(p)} for n, p in models.items()}, "latency_ms": {}}
    for seq in args.seq_lens:
        ids = tf.constant(rs.randint(0, args.vocab, size=(1, seq)).astype(np.int32))
        mask = tf.ones_like(ids)
        for fn in fns.values():
            for _ in range(args.warmup):
                fn(input_ids=ids, attention_mask=mask)
        times = {n: [] for n in fns}
        for _ in range(args.iters):  # round robin: every model sees the same machine state
            for n, fn in fns.items():
                t = time.perf_counter()
                next(iter(fn(input_ids=ids, attention_mask=mask).values())).numpy()  # INC names it 'Identity'
                times[n].append((time.perf_counter() - t) * 1000)
        row = {}
        for n, ts in times.items():
            ts.sort()
            row[n] = {"median": round(statistics.median(ts), 2), "p90": round(ts[int(0.9 * (len(ts) - 1))], 2),
                      "mean": round(statistics.mean(ts), 2)}
        base = row["fp32"]["median"]
        for n in row:
            row[n]["ratio_vs_fp32"] = round(row[n]["median"] / base, 3)
        results["latency_ms"][f"1x{seq}"] = row
    base_size = results["models"]["fp32"]["size_bytes"]
    for n in results["models"]:
        results["models"][n]["size_ratio"] = round(results["models"][n]["size_bytes"] / base_size, 3)
    results.update({
        "config": args.fp32_model or os.path.relpath(args.config, ROOT), "iters": args.iters, "warmup": args.warmup, "notes": notes,
        "machine": {**describe(), "cpus": os.cpu_count(), "tf": tf.__version__, "python": platform.python_version(),
                    "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)"),
                    "itex": _itex_version(), "ITEX_TF_CONSTANT_FOLDING": os.environ.get("ITEX_TF_CONSTANT_FOLDING")},
        "date": time.strftime("%Y-%m-%d"),
    })
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")
    print(format_table(results))


def _itex_version():
    try:
        import intel_extension_for_tensorflow as itex

        return itex.__version__
    except ImportError:
        return None


def format_table(results):
    lines = ["| model | " + " | ".join(f"1x{s} median ms (ratio)" for s in [k.split("x")[1] for k in results["latency_ms"]])
             + " | size MB (ratio) |", "|---|" + "---|" * (len(results["latency_ms"]) + 1)]
    for n, m in results["models"].items():
        cells = [f"{results['latency_ms'][k][n]['median']:.1f} ({results['latency_ms'][k][n]['ratio_vs_fp32']:.2f}x)"
                 for k in results["latency_ms"]]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {m['size_bytes'] / 2**20:.0f} ({m['size_ratio']:.2f}x) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
