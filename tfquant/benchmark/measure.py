"""Measuring the models: accuracy, a greedy generation, latency and throughput in this process (all models
loaded side by side), then each model's peak RSS in a fresh process of its own."""
from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..data import encode
from ..feeds import check_token_ids
from .cache import ResultCache, model_fingerprint
from .children import measure_memory
from .log import Log
from .models import ModelSpec
from .runner import LoadedModel, bench_tokens, greedy_generate, timed_round_robin
from .scoring import score_items, tokenize_items


@dataclass
class Measurements:
    """Everything measured, by model name; ``report.model_entries`` turns it into the results JSON."""

    accuracy: Dict[str, dict] = field(default_factory=dict)     # score_items' result + "cache_path"
    generations: Dict[str, dict] = field(default_factory=dict)  # greedy_generate's result
    latency_ms: Dict[str, List[float]] = field(default_factory=dict)  # 1 x seq_len forwards
    batch_ms: Dict[str, List[float]] = field(default_factory=dict)    # batch_size x seq_len forwards
    memory: Dict[str, dict] = field(default_factory=dict)       # the memory probe's result
    decoding: Dict[str, dict] = field(default_factory=dict)     # --generate: decoding speed and continuations


def measure(specs: List[ModelSpec], items, settings, log: Log) -> Measurements:
    """All measurements of ``specs`` (fp32 first); ``items`` None: no accuracy."""
    out = _measure_loaded(specs, items, settings, log)
    if settings.memory:
        for s in specs:
            log(f"peak RSS of {s.name} (fresh process) ...")
            out.memory[s.name] = measure_memory(s, settings.seq_len, settings.signature)
    return out


def _measure_loaded(specs: List[ModelSpec], items, settings, log: Log) -> Measurements:
    tokenizers = _tokenizers(specs)
    log(f"loading {len(specs)} model(s) ...")
    models = [LoadedModel(s, settings.signature, tokenizers[s.tokenizer]) for s in specs]
    lat_ids = {k: bench_tokens(t, 1, settings.seq_len) for k, t in tokenizers.items()}
    titems = {k: tokenize_items(items, t) for k, t in tokenizers.items()} if items is not None else {}
    for m in models:  # token ids the model has no row for: one clear line before any forward
        top = max([int(lat_ids[m.spec.tokenizer].max())] + [max(t.ids) for t in titems.get(m.spec.tokenizer, [])])
        check_token_ids(top, m.vocab, "benchmark", f"{m.spec.name}'s '{m.out_key}' output")
    # first forward at the latency shape: catches a seq_len over an unknown position limit early
    for m in models:
        m.forward(lat_ids[m.spec.tokenizer])

    out = Measurements()
    if items is not None:
        out.accuracy = {m.spec.name: _accuracy(m, titems[m.spec.tokenizer], settings, log) for m in models}
    if settings.gen_tokens:
        out.generations = {m.spec.name: greedy_generate(m, m.tokenizer, encode(m.tokenizer, settings.prompt),
                                                        settings.gen_tokens) for m in models}
    out.latency_ms, out.batch_ms = _timings(models, tokenizers, lat_ids, settings, log)
    for m in models:
        m.release()  # the memory probes are separate processes; free what we can first
    gc.collect()
    if settings.generate:
        log(f"decoding: 128-token prompt + {settings.generate} new tokens per model, round robin ...")
        out.decoding = decoding(specs, tokenizers, settings.generate)
    return out


DECODE_PROMPTS = ("def hello_world():", "def sum_of_natural_numbers(n):")
DECODE_ROUNDS = 2


def decoding(specs: List[ModelSpec], tokenizers, new_tokens: int) -> Dict[str, dict]:
    """Prefill ms, decode ms/token and tokens/s (best of DECODE_ROUNDS rounds, models alternating), and the
    greedy continuations of DECODE_PROMPTS with the share of tokens equal to fp32's (the first spec)."""
    from ..generate import Generator, Sampler

    gens = {s.name: Generator(s.path) for s in specs}
    prompt = {s.name: bench_tokens(tokenizers[s.tokenizer], 1, 128)[0].tolist() for s in specs}
    for s in specs:  # warm-up: the first call of each signature traces and allocates
        gens[s.name].generate(prompt[s.name][:16], 3, Sampler())
    best: Dict[str, object] = {}
    for r in range(DECODE_ROUNDS):
        for s in specs if r % 2 == 0 else specs[::-1]:
            run = gens[s.name].generate(prompt[s.name], new_tokens, Sampler())
            if s.name not in best or (run.decode_ms_per_token or 0) < (best[s.name].decode_ms_per_token or 0):
                best[s.name] = run
    out = {}
    for s in specs:
        run, tok = best[s.name], tokenizers[s.tokenizer]
        out[s.name] = {"prompt_tokens": 128, "new_tokens": new_tokens, "cached": run.cached,
                       "prefill_ms": run.prefill_ms, "decode_ms_per_token": run.decode_ms_per_token,
                       "tokens_per_s": run.tokens_per_s, "continuations": {}}
        for text in DECODE_PROMPTS:
            ids = gens[s.name].generate(encode(tok, text), new_tokens, Sampler()).new_ids
            out[s.name]["continuations"][text] = {"text": tok.decode(ids), "new_token_ids": ids}
    fp32 = specs[0].name
    for s in specs[1:]:
        for text, c in out[s.name]["continuations"].items():
            ref = out[fp32]["continuations"][text]["new_token_ids"]
            c["tokens_equal_to_fp32"] = sum(a == b for a, b in zip(c["new_token_ids"], ref)) / max(len(ref), 1)
    return out


def _tokenizers(specs: List[ModelSpec]) -> Dict[Optional[str], object]:
    """Tokenizer path (None: GPT-2 BPE) -> the tokenizer, each loaded once."""
    from ..data import gpt2_tokenizer, load_tokenizer

    tokenizers: Dict[Optional[str], object] = {}
    for s in specs:
        if s.tokenizer not in tokenizers:
            tokenizers[s.tokenizer] = load_tokenizer(s.tokenizer) if s.tokenizer else gpt2_tokenizer()
    return tokenizers


def _accuracy(model: LoadedModel, titems, settings, log: Log) -> dict:
    """score_items, with the fp32 model's per-item results read from / written to the cache."""
    cache = None
    if model.spec.role == "fp32" and settings.cache:
        import tensorflow as tf

        cache = ResultCache(model_fingerprint(model.spec.path), settings.dataset, tf.__version__)
    res = score_items(model, titems, cache, progress=log.progress)
    res["cache_path"] = cache.path if cache else None
    return res


def _timings(models: List[LoadedModel], tokenizers, lat_ids, settings, log: Log) -> tuple:
    """(latency ms, throughput batch ms) by model name.  Models fed the same ids (one tokenizer) are timed
    round robin together, so their ratio is measured under the same machine load."""
    groups: Dict[Optional[str], List[LoadedModel]] = {}
    for m in models:
        groups.setdefault(m.spec.tokenizer, []).append(m)
    warmup, iters, seq_len = settings.warmup, settings.iters, settings.seq_len
    log(f"latency: {iters} round(s) of 1 x {seq_len} tokens, {warmup} warm-up run(s) per model ...")
    latency = _time_groups(groups, lat_ids, warmup, iters)
    log(f"throughput: {iters} round(s) of {settings.batch_size} x {seq_len} tokens ...")
    batch_ids = {k: bench_tokens(tokenizers[k], settings.batch_size, seq_len) for k in groups}
    return latency, _time_groups(groups, batch_ids, warmup, iters)


def _time_groups(groups: Dict[Optional[str], List[LoadedModel]], ids_by_key, warmup: int, iters: int) -> dict:
    times = {}
    for key, group in groups.items():
        for m, t in zip(group, timed_round_robin(group, ids_by_key[key], warmup, iters)):
            times[m.spec.name] = t
    return times
