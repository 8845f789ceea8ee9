"""Issue 5: where the latency of the default recipe goes, one accuracy feature at a time, on SmolLM2-135M.

Quantizes the fp32 model with the default recipe and with its accuracy machinery taken away step by step
(per-token scales, then outlier channels, then per-channel weight scales), then times every model
round-robin at 1 x 128 tokens (the benchmark's latency setting) and scores each by KL(fp32 || int8) of
the next-token distributions on 6 x 256 tokens of the evaluation passages (a cheap accuracy proxy; the
600-item accuracy of the default is in smollm2.json).

    .venv/bin/python bench/speed_ladder.py [--fp32 /tmp/tfquant-smollm2/fp32] [--rounds 40]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import _bootstrap  # noqa: F401

from tfquant.fsutil import atomic_write_json

ROOT = _bootstrap.ROOT

LADDER = [
    ("default", []),
    ("no per-token scales", ["--token_outlier_threshold", "0"]),
    ("+ no outlier channels", ["--token_outlier_threshold", "0", "--outlier_threshold", "0"]),
    ("+ per-tensor weights (bare int8 kernels)", ["--token_outlier_threshold", "0", "--outlier_threshold", "0",
                                                  "--weight_granularity", "per_tensor"]),
]


def eval_batch(fp32_dir):
    """6 x 256 ids of the first 400 evaluation passages, with the fp32 model's own tokenizer."""
    import numpy as np

    from tfquant.data import encode, load_eval_items, tokenizer_for
    from tfquant.modeldir import locate

    tok, _ = tokenizer_for(locate(fp32_dir))
    ids = encode(tok, " ".join(it.context + " " + it.target for it in load_eval_items("austen")[:400]))
    return np.array([ids[i * 256:(i + 1) * 256] for i in range(6)], np.int32)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fp32", default="/tmp/tfquant-smollm2/fp32")
    p.add_argument("--work", default="/tmp/tfquant-smollm2/ladder")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "smollm2_speed_ladder.json"))
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    models = {"fp32": args.fp32}
    for i, (name, flags) in enumerate(LADDER):
        out = os.path.join(args.work, f"step{i}")
        if not os.path.exists(out):
            subprocess.run([sys.executable, "-m", "tfquant.quantize", "--input_model", args.fp32, "--output_dir", out,
                            "--quiet", *flags], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        models[name] = os.path.join(out, "model")

    import tensorflow as tf

    from tfquant.benchmark import LoadedModel, ModelSpec, timed_round_robin
    from tfquant.divergence import log_softmax, mean_kl
    from tfquant.modeldir import locate
    from tfquant.machine import describe

    loaded = {n: LoadedModel(ModelSpec(name=n, role="", folder=locate(p))) for n, p in models.items()}
    batch = eval_batch(args.fp32)
    logp = {n: log_softmax(m.forward(batch).numpy()) for n, m in loaded.items()}
    # round robin, rotating the order: every model sees the same machine state
    times = dict(zip(loaded, timed_round_robin(list(loaded.values()), batch[:1, :128], warmup=3, iters=args.rounds)))
    base = statistics.median(times["fp32"])
    rows = {}
    for n in loaded:
        kl = mean_kl([logp["fp32"]], [logp[n]])
        top1 = float((logp[n].argmax(-1) == logp["fp32"].argmax(-1)).mean())
        med = statistics.median(times[n])
        rows[n] = {"latency_median_ms": round(med, 2), "ratio_vs_fp32": round(med / base, 3),
                   "kl_vs_fp32": round(kl, 4), "top1_agreement": round(top1, 3)}
    result = {"models": rows, "flags": {n: f for n, f in LADDER}, "rounds": args.rounds, "seq_len": 128,
              "kl_tokens": int(batch.size), "machine": {**describe(), "tf": tf.__version__},
              "date": time.strftime("%Y-%m-%d")}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    atomic_write_json(args.output, result, indent=1)
    print("| model | latency 1x128 median ms (ratio) | KL(fp32 ‖ int8) | top-1 agreement |\n|---|---|---|---|")
    for n, r in rows.items():
        print(f"| {n} | {r['latency_median_ms']} ({r['ratio_vs_fp32']:.3f}) | {r['kl_vs_fp32']:.4f} | {r['top1_agreement']:.3f} |")


if __name__ == "__main__":
    main()
