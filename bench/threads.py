"""Issue 16: which TF thread settings make a decode step and a 1 x 128 prefill fastest, fp32 vs int8.

Each setting runs in a fresh process (TF fixes its thread pools at start-up); inside it the models
alternate round by round, so the ratio is measured under one machine load.  Prints a table and writes
bench/results/threads_<name>.json (CPU recorded).

    .venv/bin/python bench/threads.py fp32=DIR int8=DIR [more=DIR ...] [--name smollm2] [--rounds 8]

Both models need a ``decode`` signature (tools/prepare_model.py writes one; tfquant.quantize keeps it).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import _bootstrap  # noqa: F401

from tfquant.fsutil import atomic_write_json

ROOT = _bootstrap.ROOT
SETTINGS = [(0, 0), (2, 1), (1, 2), (1, 1), (2, 2)]  # (inter_op, intra_op); 0 = TF's default (the core count)


def child(models, inter, intra, rounds, prompt):
    import numpy as np
    import tensorflow as tf

    from tfquant.feeds import make_feeds
    from tfquant.machine import apply_threads

    apply_threads(f"{inter},{intra}")

    ids = np.random.RandomState(0).randint(0, 49000, (1, prompt)).astype(np.int32)
    runs = []
    for name, path in models:
        loaded = tf.saved_model.load(path)
        pre, dec = loaded.signatures["serving_default"], loaded.signatures["decode"]
        pf = {k: tf.constant(v) for k, v in make_feeds(pre.structured_input_signature[1], ids).items()}
        past = pre(**pf)["past_key_values"].numpy()
        df = {k: tf.constant(v) for k, v in make_feeds(dec.structured_input_signature[1], ids[:, -1:], past).items()}
        for _ in range(5):
            dec(**df)
            pre(**pf)
        runs.append((name, loaded, pre, dec, pf, df))
    times = {name: {"decode": [], "prefill": []} for name, *_ in runs}
    for r in range(rounds):
        for name, _, pre, dec, pf, df in (runs if r % 2 == 0 else runs[::-1]):
            for _ in range(10):
                t = time.perf_counter()
                dec(**df)["logits"].numpy()
                times[name]["decode"].append(1000 * (time.perf_counter() - t))
            for _ in range(2):
                t = time.perf_counter()
                pre(**pf)["logits"].numpy()
                times[name]["prefill"].append(1000 * (time.perf_counter() - t))
    return {name: {k: round(statistics.median(v), 2) for k, v in t.items()} for name, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="NAME=DIR; the first is the baseline")
    p.add_argument("--name", default="smollm2")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--prompt", type=int, default=128, help="prefill tokens, and the decode step's past")
    p.add_argument("--settings", default=",".join(f"{a}:{b}" for a, b in SETTINGS),
                   help="INTER:INTRA pairs to run, comma-separated (default: all five)")
    p.add_argument("--output", help="results file (default bench/results/threads_<name>.json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    models = [m.split("=", 1) for m in args.models]
    if args.child:
        inter, intra = map(int, args.child.split(","))
        print(json.dumps(child(models, inter, intra, args.rounds, args.prompt)))
        return
    from tfquant.machine import describe

    rows = []
    settings = [tuple(int(v) for v in pair.split(":")) for pair in args.settings.split(",")]
    for inter, intra in settings:
        out = subprocess.run([sys.executable, __file__, *args.models, "--rounds", str(args.rounds), "--prompt",
                              str(args.prompt), "--child", f"{inter},{intra}"], capture_output=True, text=True,
                             cwd=ROOT, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"inter_op": inter, "intra_op": intra, "ms": result})
        base = result[models[0][0]]
        print(f"inter {inter} intra {intra}: " + "  ".join(
            f"{n} decode {r['decode']:.1f} ({r['decode'] / base['decode']:.3f}) prefill {r['prefill']:.1f} "
            f"({r['prefill'] / base['prefill']:.3f})" for n, r in result.items()), flush=True)
    best_fp32 = {k: min(r["ms"][models[0][0]][k] for r in rows) for k in ("decode", "prefill")}
    summary = {}
    for name, _ in models:
        for k in ("decode", "prefill"):
            best = min(rows, key=lambda r: r["ms"][name][k])
            summary[f"{name} {k}"] = {"best_setting": [best["inter_op"], best["intra_op"]], "ms": best["ms"][name][k],
                                      "vs_fp32_best_setting": round(best["ms"][name][k] / best_fp32[k], 3)}
    result = {"models": dict(models), "prompt_tokens": args.prompt, "rounds": args.rounds,
              "settings": rows, "best": summary, "machine": describe(), "date": time.strftime("%Y-%m-%d"),
              "timing": "one process per setting; models alternate round by round; median of 10 decode steps "
                        "and 2 prefills per round; 0 = TF's default (the core count)"}
    out = args.output or os.path.join(ROOT, "bench", "results", f"threads_{args.name}.json")
    atomic_write_json(out, result, indent=1)
    for k, v in summary.items():
        print(f"{k}: best inter/intra {v['best_setting']}, {v['ms']} ms, {v['vs_fp32_best_setting']}x fp32's best")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
