"""Issue 13 benchmark: generation with the KV cache, fp32 vs the default int8 model, in one run.

    .venv/bin/python bench/generation.py --model smollm2 [--work DIR] [--output bench/results/generation_smollm2.json]
    .venv/bin/python bench/generation.py --model gptj-1024

Exports the model with prefill + decode signatures (tools/prepare_model.py), quantizes it with the default recipe
(both signatures, shared int8 weights), then, models alternating round by round:
  * prompt 128 tokens of real text + 128 new tokens with the cache: prefill ms (warm: the first call is excluded by
    a warm-up generation), decode ms/token (median over steps), tokens/s;
  * the cache's speed-up: 128 new tokens after a 512-token prompt with the cache vs recomputing the sequence
    every token (fp32), both timed in full;
  * the greedy continuations (32 tokens) of `def hello_world():` and `def sum_of_natural_numbers(n):`, and the
    share of the int8 model's tokens equal to fp32's at the same position.
"""
import argparse
import os
import subprocess
import sys
import time

import _bootstrap  # noqa: F401

from tfquant.data import default_calibration_text_path, encode, read_text, tokenizer_for
from tfquant.fsutil import atomic_write_json, dir_size_bytes
from tfquant.generate import Generator, Sampler
from tfquant.machine import apply_threads, describe
from tfquant.modeldir import locate

ROOT = _bootstrap.ROOT
SOURCES = {"smollm2": ["--gguf", "default"], "gptj-1024": ["--config", os.path.join(ROOT, "configs", "gptj-1024.yaml")]}
PROMPTS = ("def hello_world():", "def sum_of_natural_numbers(n):")


def prepare(model: str, work: str) -> tuple:
    fp32, int8 = os.path.join(work, f"{model}-fp32"), os.path.join(work, f"{model}-int8")
    py = sys.executable
    if not os.path.isdir(fp32):
        subprocess.run([py, "tools/prepare_model.py", *SOURCES[model], "--output_dir", fp32], cwd=ROOT, check=True)
    if not os.path.isdir(int8):
        subprocess.run([py, "-m", "tfquant.quantize", "--input_model", fp32, "--output_dir", int8, "--quiet"], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL)
    return fp32, int8


def text_ids(tokenizer, n: int) -> list:
    """``n`` tokens of real prose (the shipped calibration text, from its middle)."""
    text = read_text(default_calibration_text_path())
    return encode(tokenizer, text[len(text) // 2:][: n * 12])[:n]


def timed(gen: Generator, prompt: list, new: int) -> dict:
    t = time.perf_counter()
    out = gen.generate(prompt, new, Sampler())
    return {"wall_s": round(time.perf_counter() - t, 3), "prefill_ms": round(out.prefill_ms, 2),
            "decode_ms_per_token": round(out.decode_ms_per_token, 3), "tokens_per_s": round(out.tokens_per_s, 2)}


def _git_head() -> str:
    """The commit measured ("+changes" when the working tree differs from it)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"],
                           cwd=ROOT, capture_output=True, text=True)  # a results file a run rewrote is not code
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SOURCES), default="smollm2")
    p.add_argument("--work", default="/tmp/tfquant-generation")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--output")
    p.add_argument("--threads", default="decode", help="TF thread pools, as tfquant.generate's --threads")
    args = p.parse_args()
    threads = apply_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    fp32, int8 = prepare(args.model, args.work)
    tokenizer, tok_source = tokenizer_for(locate(fp32))
    gens = {"fp32": Generator(fp32), "int8": Generator(int8)}
    prompt = text_ids(tokenizer, 128)
    for g in gens.values():  # warm-up: the first call of each signature traces and allocates
        g.generate(prompt[:16], 3, Sampler())
    rounds = {name: [] for name in gens}
    for r in range(args.rounds):
        for name in (list(gens) if r % 2 == 0 else list(gens)[::-1]):
            rounds[name].append(timed(gens[name], prompt, args.new_tokens))
    best = {name: min(rs, key=lambda x: x["decode_ms_per_token"]) for name, rs in rounds.items()}

    long_prompt = text_ids(tokenizer, 512)
    cache_vs_recompute = {"prompt_tokens": len(long_prompt), "new_tokens": args.new_tokens,
                          "with_cache": timed(gens["fp32"], long_prompt, args.new_tokens),
                          "recompute": timed(Generator(fp32, use_cache=False), long_prompt, args.new_tokens)}
    cache_vs_recompute["speedup"] = round(cache_vs_recompute["recompute"]["wall_s"] /
                                          cache_vs_recompute["with_cache"]["wall_s"], 2)

    texts = {}
    for prompt_text in PROMPTS:
        ids = encode(tokenizer, prompt_text)
        outs = {name: g.generate(ids, 32, Sampler()).new_ids for name, g in gens.items()}
        same = sum(a == b for a, b in zip(outs["fp32"], outs["int8"])) / len(outs["fp32"])
        texts[prompt_text] = {name: tokenizer.decode(o) for name, o in outs.items()}
        texts[prompt_text]["int8_tokens_equal_to_fp32"] = round(same, 3)

    result = {
        "model": args.model, "tokenizer": tok_source, "machine": {**describe(), "cpus": os.cpu_count()},
        "threads": threads or "TF default", "code": _git_head(),
        "prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "rounds": rounds, "best_round": best,
        "decode_ratio_int8_vs_fp32": round(best["int8"]["decode_ms_per_token"] / best["fp32"]["decode_ms_per_token"], 3),
        # one prefill per round is one sample, so its ratio uses each model's fastest round, not the decode-best one
        "best_prefill_ms": {name: min(r["prefill_ms"] for r in rs) for name, rs in rounds.items()},
        "prefill_ratio_int8_vs_fp32": round(min(r["prefill_ms"] for r in rounds["int8"]) /
                                            min(r["prefill_ms"] for r in rounds["fp32"]), 3),
        "size_bytes": {"fp32": dir_size_bytes(locate(fp32).saved_model), "int8": dir_size_bytes(locate(int8).saved_model)},
        "cache_vs_recompute_fp32": cache_vs_recompute,
        "greedy": texts,
        "timing": "models alternate round by round (order reversed every other round); best round by decode ms/token",
    }
    out = args.output or os.path.join(ROOT, "bench", "results", f"generation_{args.model}.json")
    atomic_write_json(out, result)
    print(f"wrote {out}")
    for name, b in best.items():
        print(f"{name}: prefill {b['prefill_ms']} ms, decode {b['decode_ms_per_token']} ms/token, {b['tokens_per_s']} tok/s")
    print(f"cache speed-up (fp32, 512 + {args.new_tokens}): {cache_vs_recompute['speedup']}x")
    for k, v in texts.items():
        print(k, v)


if __name__ == "__main__":
    main()
