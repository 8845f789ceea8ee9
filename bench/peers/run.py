"""Issue 16: tfquant against the runtimes a user would switch to, in one run: TF fp32, tfquant's default int8,
ONNX Runtime fp32 and its dynamic int8 (torch export of the same weights), llama.cpp F32 / Q8_0 / Q4_1 (the same
GGUF), on SmolLM2-135M.

    bash bench/peers/setup.sh            # once: .venv-ort and .venv-llamacpp (~10 minutes, llama.cpp compiles)
    .venv/bin/python bench/peers/run.py [--work /tmp/tfquant-peers] [--rounds 5] [--items 600]

Every model runs in a process of its own (bench/peers/worker.py, in its runtime's venv), all loaded at once; the
driver then times them in turn (the others stopped with SIGSTOP, so no idle thread pool spins), round by round, the
order reversed every other round, so each ratio is taken under
one machine load:
  * prefill: a full forward over 128 tokens of real prose, batch 1 (llama.cpp computes the last position's logits
    only; the others all 128);
  * decode: after that prompt, greedy tokens with the KV cache, ms per token;
TF runs twice per model, at TF's default threads and at tfquant's decode preset (inter = cores, intra = 1), and each
figure is the faster of the two (both are in the JSON).  ONNX Runtime runs with intra_op = cores, llama.cpp with
n_threads = cores.  Then every model predicts the next token after the last 128 tokens of each shipped Austen item's
context: agreement with TF fp32's prediction, and accuracy against the target word's first token with the paired
95% interval against TF fp32 (this is not the benchmark's whole-word accuracy: llama.cpp gives one position's
logits).  Writes bench/results/peers_smollm2.json and prints the README table.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # python bench/peers/run.py from a checkout, as bench/_bootstrap.py does one folder up
sys.path.insert(0, os.path.join(ROOT, "bench"))

from tfquant.benchmark.stats import accuracy_summary, paired_difference
from generation import text_ids  # noqa: E402
from tfquant.data import encode, load_eval_items, tokenizer_for
from tfquant.fsutil import atomic_write_json
from tfquant.machine import describe
from tfquant.modeldir import locate

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = {"tf": ".venv", "ort": ".venv-ort", "llamacpp": ".venv-llamacpp"}
CORES = os.cpu_count()


def venv_python(backend):
    py = os.path.join(ROOT, VENV[backend], "bin", "python")
    if not os.path.exists(py):
        raise SystemExit(f"error: {py} is missing: run bash bench/peers/setup.sh first")
    return py


def prepare(work, tf_fp32=None, tf_int8=None):
    """Every model file of the run (made once, kept in ``work``)."""
    fp32 = tf_fp32 or os.path.join(work, "tf-fp32")
    int8 = tf_int8 or os.path.join(work, "tf-int8")
    py = venv_python("tf")
    if not os.path.isdir(fp32):
        subprocess.run([py, "tools/prepare_model.py", "--gguf", "default", "--output_dir", fp32], cwd=ROOT, check=True)
    if not os.path.isdir(int8):
        subprocess.run([py, "-m", "tfquant.quantize", "--input_model", fp32, "--output_dir", int8, "--quiet"],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    onnx_dir, gguf_dir = os.path.join(work, "onnx"), os.path.join(work, "gguf")
    if not os.path.exists(os.path.join(onnx_dir, "int8.onnx")):
        subprocess.run([venv_python("ort"), os.path.join(HERE, "export_onnx.py"), onnx_dir], check=True)
    if not all(os.path.exists(os.path.join(gguf_dir, f"{q}.gguf")) for q in ("q4_1", "q8_0", "f32")):
        subprocess.run([venv_python("llamacpp"), os.path.join(HERE, "make_gguf.py"), gguf_dir], check=True)
    tf_fp32, tf_int8 = locate(fp32).saved_model, locate(int8).saved_model
    # (row, backend, model, threads); the TF rows run at two thread settings, the faster one is reported
    workers = [("tf-fp32", "tf", tf_fp32, "default"), ("tf-fp32@decode", "tf", tf_fp32, "decode"),
               ("tfquant-int8", "tf", tf_int8, "default"), ("tfquant-int8@decode", "tf", tf_int8, "decode"),
               ("ort-fp32", "ort", os.path.join(onnx_dir, "fp32.onnx"), f"1,{CORES}"),
               ("ort-int8-dynamic", "ort", os.path.join(onnx_dir, "int8.onnx"), f"1,{CORES}")]
    workers += [(f"llamacpp-{q}", "llamacpp", os.path.join(gguf_dir, f"{q}.gguf"), str(CORES))
                for q in ("f32", "q8_0", "q4_1")]
    return fp32, workers


class Worker:
    def __init__(self, name, backend, model, threads, log_dir):
        self.name, self.backend, self.model = name, backend, model
        self.log = open(os.path.join(log_dir, f"{name}.log"), "w")
        self.proc = subprocess.Popen([venv_python(backend), os.path.join(HERE, "worker.py"), backend, model,
                                      "--threads", threads], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1, cwd=ROOT)

    def pause(self, stop: bool):
        os.kill(self.proc.pid, signal.SIGSTOP if stop else signal.SIGCONT)

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                out = json.loads(line[3:])
                if "error" in out:
                    raise RuntimeError(f"{self.name}: {out['error']}")
                return out
        raise RuntimeError(f"{self.name} ended (exit {self.proc.wait()}); see {self.log.name}")


def item_windows(tokenizer, n_items, length):
    """The last ``length`` tokens of each Austen item's context, and the first token of its target word."""
    windows, targets = [], []
    for item in load_eval_items("austen")[:n_items]:
        windows.append(encode(tokenizer, item.context)[-length:])
        targets.append(encode(tokenizer, " " + item.target)[0])
    return windows, targets


def previous_predictions(path, info, n_items):
    """The predictions a previous run of this script wrote (``--predictions_from``), for the models whose files
    are the same size as now: a model's predictions depend on its file and the items, not on the machine load."""
    if not path:
        return {}
    with open(path) as fh:
        old = json.load(fh)
    if old.get("items") != n_items:
        raise SystemExit(f"error: {path} has predictions for {old.get('items')} items, this run asks {n_items}")
    return {name: pred for name, pred in old.get("predictions", {}).items()
            if name in info and old["workers"][name]["size_bytes"] == info[name]["size_bytes"]}


def best_setting(results, model):
    """The faster of a TF model's two thread settings, per metric."""
    rows = [r for r in (model, f"{model}@decode") if r in results]
    return {metric: min(((results[r][metric], results[r]["threads"]) for r in rows), key=lambda x: x[0])
            for metric in ("prefill_ms", "decode_ms_per_token")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/tfquant-peers")
    p.add_argument("--tf_fp32", help="an existing two-signature fp32 SavedModel folder (default: WORK/tf-fp32)")
    p.add_argument("--tf_int8", help="an existing tfquant output of it (default: WORK/tf-int8)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--steps", type=int, default=32, help="decode steps per round")
    p.add_argument("--items", type=int, default=600)
    p.add_argument("--predictions_from", help="a previous results file: reuse its predictions for unchanged models")
    p.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "peers_smollm2.json"))
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    fp32_dir, specs = prepare(args.work, args.tf_fp32, args.tf_int8)
    tokenizer, _ = tokenizer_for(locate(fp32_dir))
    prompt = text_ids(tokenizer, args.prompt)  # the prose bench/generation.py prompts with
    windows, targets = item_windows(tokenizer, args.items, args.prompt)

    log_dir = os.path.join(args.work, "logs")
    os.makedirs(log_dir, exist_ok=True)
    workers = [Worker(*s, log_dir) for s in specs]
    info = {w.name: w.ask(cmd="info") for w in workers}  # waits for every load
    for w in workers:  # warm-up: first calls trace, allocate, fill caches
        w.ask(cmd="prefill", ids=prompt, reps=2)
        w.ask(cmd="decode", ids=prompt, steps=4)
    timings = {w.name: {"prefill_ms": [], "decode_ms": []} for w in workers}
    decoded = {}
    t0 = time.time()
    for r in range(args.rounds):
        for w in (workers if r % 2 == 0 else workers[::-1]):
            # every other worker is stopped while one is timed: ONNX Runtime's and ggml's thread pools spin for a
            # while after each call, and on 2 cores an idle peer's spinning would be charged to the next model
            for other in workers:
                other.pause(other is not w)
            timings[w.name]["prefill_ms"].append(statistics.median(w.ask(cmd="prefill", ids=prompt, reps=2)["ms"]))
            out = w.ask(cmd="decode", ids=prompt, steps=args.steps)
            timings[w.name]["decode_ms"].append(statistics.median(out["ms"]))
            decoded[w.name] = out["tokens"]
        print(f"round {r + 1}/{args.rounds} done ({time.time() - t0:.0f} s)", flush=True)
    for w in workers:
        w.pause(False)

    predictions, reused = {}, previous_predictions(args.predictions_from, info, len(windows))
    for w in workers:
        if w.name.endswith("@decode"):
            continue
        if w.name in reused:
            predictions[w.name] = reused[w.name]
            continue
        t1 = time.time()
        predictions[w.name] = w.ask(cmd="predict", windows=windows)["top1"]
        print(f"{w.name}: {len(windows)} predictions in {time.time() - t1:.0f} s", flush=True)
    rss = {w.name: w.ask(cmd="quit")["peak_rss_mb"] for w in workers}

    results = {}
    for w in workers:
        t = timings[w.name]
        results[w.name] = {"backend": w.backend, "model": w.model, **info[w.name], "peak_rss_mb": rss[w.name],
                           "prefill_ms": round(statistics.median(t["prefill_ms"]), 2),
                           "decode_ms_per_token": round(statistics.median(t["decode_ms"]), 3),
                           "rounds": t, "decode_tokens_equal_to_tf_fp32":
                               round(sum(a == b for a, b in zip(decoded[w.name], decoded["tf-fp32"])) / args.steps, 3)}
    base_right = [p == t for p, t in zip(predictions["tf-fp32"], targets)]
    rows = []
    fp32_best = best_setting(results, "tf-fp32")
    for name, pred in predictions.items():
        r = results[name]
        best = best_setting(results, name) if r["backend"] == "tf" else {
            "prefill_ms": (r["prefill_ms"], r["threads"]), "decode_ms_per_token": (r["decode_ms_per_token"], r["threads"])}
        right = [p == t for p, t in zip(pred, targets)]
        rows.append({
            "model": name, "size_mb": round(r["size_bytes"] / 2 ** 20, 1),
            "prefill_ms": best["prefill_ms"][0], "prefill_threads": best["prefill_ms"][1],
            "prefill_vs_tf_fp32": round(best["prefill_ms"][0] / fp32_best["prefill_ms"][0], 3),
            "decode_ms_per_token": best["decode_ms_per_token"][0], "decode_threads": best["decode_ms_per_token"][1],
            "decode_vs_tf_fp32": round(best["decode_ms_per_token"][0] / fp32_best["decode_ms_per_token"][0], 3),
            "agreement_with_tf_fp32": round(sum(a == b for a, b in zip(pred, predictions["tf-fp32"])) / len(pred), 4),
            "first_token_accuracy": accuracy_summary(right),
            "vs_tf_fp32": paired_difference(right, base_right),
            "peak_rss_mb": round(r["peak_rss_mb"], 1)})
    by = {row["model"]: row for row in rows}
    ratios = {"tfquant_int8_prefill_vs_tf_fp32": by["tfquant-int8"]["prefill_vs_tf_fp32"],
              "tfquant_int8_prefill_vs_ort_fp32": round(by["tfquant-int8"]["prefill_ms"] / by["ort-fp32"]["prefill_ms"], 3),
              "tfquant_int8_decode_vs_llamacpp_q8_0": round(by["tfquant-int8"]["decode_ms_per_token"] /
                                                           by["llamacpp-q8_0"]["decode_ms_per_token"], 3)}
    result = {"machine": {**describe(), "cpus": CORES}, "prompt_tokens": len(prompt), "decode_steps": args.steps,
              "rounds": args.rounds, "items": len(windows), "item_window_tokens": args.prompt,
              "timing": "all models loaded at once, each in its own process, the others SIGSTOPped while one is timed; "
                        "timed in turn, order reversed every other round; per round the median of 2 prefills and of "
                        "the decode steps; reported: median over rounds",
              "ratios": ratios, "rows": rows, "workers": results, "predictions": predictions,
              "predictions_reused_from": {"file": args.predictions_from, "models": sorted(reused)} if reused else None}
    atomic_write_json(args.output, result)
    print(f"wrote {args.output}")
    print(table(rows))
    print(json.dumps(ratios))


def table(rows):
    head = ("| model | prefill 1x128 ms | vs TF fp32 | decode ms/token | vs TF fp32 | agreement with TF fp32 | "
            "first-token accuracy (diff vs TF fp32, 95% CI) | size MiB | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        acc, d = r["first_token_accuracy"], r["vs_tf_fp32"]
        lines.append(f"| {r['model']} | {r['prefill_ms']:.1f} | {r['prefill_vs_tf_fp32']:.2f}x | "
                     f"{r['decode_ms_per_token']:.1f} | {r['decode_vs_tf_fp32']:.2f}x | {r['agreement_with_tf_fp32']:.3f} | "
                     f"{acc['accuracy']:.3f} ({100 * d['diff']:+.1f} pt [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]) | "
                     f"{r['size_mb']:.0f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
