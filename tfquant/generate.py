"""python -m tfquant.generate: generate text with a SavedModel (fp32 or quantized), streaming it, then timings.

    python -m tfquant.generate --model DIR [--tokenizer PATH] --prompt TEXT [--max_new_tokens N]
           [--greedy | --temperature T --top_k K --seed S] [--no_cache]

With a ``decode`` signature (``tools/prepare_model.py`` writes one; ``tfquant.quantize`` keeps it) the prompt
runs once through ``serving_default`` (prefill), which returns the KV cache, and every new token is one
decode step that takes the cache back.  Without one (or with ``--no_cache``) every token recomputes the
whole sequence, and the output says so.  Prints prefill ms, decode ms per token, tokens/s and peak RSS.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

from .errors import ArgumentParser, UserError, run_cli
from .feeds import CACHE_INPUT, check_token_ids, make_feeds, takes_cache
from .savedmodel import LOGITS_KEY, SIGNATURE_KEY

DECODE_SIGNATURE = "decode"


# ----- sampling --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampler:
    """Greedy when ``temperature`` is 0; else softmax(logits / T) over the ``top_k`` best, seeded."""

    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0

    def make(self) -> Callable[[np.ndarray], int]:
        if self.temperature <= 0:
            return lambda logits: int(np.argmax(logits))
        rng = np.random.RandomState(self.seed)

        def sample(logits: np.ndarray) -> int:
            z = np.asarray(logits, np.float64) / self.temperature
            if self.top_k and self.top_k < z.size:
                cut = np.partition(z, -self.top_k)[-self.top_k]
                z = np.where(z >= cut, z, -np.inf)
            p = np.exp(z - z.max())
            return int(rng.choice(z.size, p=p / p.sum()))

        return sample


# ----- the loop --------------------------------------------------------------------------------
@dataclass
class Generation:
    new_ids: List[int] = field(default_factory=list)
    prefill_ms: float = 0.0
    step_ms: List[float] = field(default_factory=list)   # one per token after the first
    cached: bool = False

    @property
    def decode_ms_per_token(self) -> Optional[float]:
        return float(np.median(self.step_ms)) if self.step_ms else None

    @property
    def tokens_per_s(self) -> Optional[float]:
        total = self.prefill_ms + sum(self.step_ms)
        return 1000.0 * len(self.new_ids) / total if total else None


class Generator:
    """A loaded SavedModel's prefill (and decode) signatures, run on numpy ids."""

    def __init__(self, path: str, use_cache: bool = True):
        import tensorflow as tf

        from .modeldir import locate
        from .savedmodel import checked_signature, load

        self.tf = tf
        path = locate(path, "--model").saved_model
        loaded = load(path)
        self.prefill = checked_signature(loaded, path, SIGNATURE_KEY)
        self.decode = loaded.signatures.get(DECODE_SIGNATURE) if use_cache else None
        outputs = self.prefill.structured_outputs
        self.cache_missing = None
        if use_cache and (self.decode is None or CACHE_INPUT not in outputs):
            self.cache_missing = (f"{path} has no '{DECODE_SIGNATURE}' signature taking {CACHE_INPUT}: every token "
                                  "recomputes the whole sequence (export with tools/prepare_model.py for a cache)")
            self.decode = None
        elif self.decode is not None and not takes_cache(self.decode.structured_input_signature[1]):
            raise UserError(f"{path}: the '{DECODE_SIGNATURE}' signature takes no {CACHE_INPUT}")
        self.vocab = outputs[LOGITS_KEY].shape[-1]

    def _run(self, fn, feeds):
        return fn(**{k: v if self.tf.is_tensor(v) else self.tf.constant(v) for k, v in feeds.items()})

    def step(self, ids: np.ndarray, past=None):
        """One forward: the prompt ``ids`` [1, T] through prefill (``past`` None, or no decode signature: then
        ``ids`` is the whole sequence), or the last of ``ids`` through decode with ``past``.  Returns the last
        position's logits (numpy) and the cache to pass on (None without a decode signature)."""
        if past is None or self.decode is None:
            result = self._run(self.prefill, make_feeds(self.prefill.structured_input_signature[1], ids))
        else:
            result = self._run(self.decode, make_feeds(self.decode.structured_input_signature[1], ids[:, -1:], past))
        # the cache stays a tensor: copying it out and back costs ms per token
        return result[LOGITS_KEY].numpy()[0, -1], (result[CACHE_INPUT] if self.decode is not None else None)

    def generate(self, prompt_ids: List[int], max_new: int, sampler: Sampler,
                 on_token: Callable[[int], None] = lambda _: None) -> Generation:
        pick = sampler.make()
        ids = np.asarray([prompt_ids], np.int32)
        out = Generation(cached=self.decode is not None)
        past = None
        for i in range(max_new):
            t = time.perf_counter()
            logits, past = self.step(ids, past)
            ms = 1000.0 * (time.perf_counter() - t)
            if i == 0:
                out.prefill_ms = ms
            else:
                out.step_ms.append(ms)
            token = pick(logits)
            out.new_ids.append(token)
            on_token(token)
            ids = np.concatenate([ids, [[token]]], axis=1).astype(np.int32)
        return out


# ----- CLI ------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = ArgumentParser(prog="python -m tfquant.generate", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="SavedModel folder, a tfquant.quantize output, or a folder "
                                                  "holding saved_model/<version>/")
    p.add_argument("--tokenizer", help="tokenizer folder or tokenizer.json (default: the model's own, else GPT-2 BPE)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (the default unless --temperature > 0)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top_k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_cache", action="store_true", help="recompute the whole sequence for every token")
    p.add_argument("--threads", default="decode",
                   help="TF thread pools: 'decode' (default: inter-op = cores, intra-op = 1, measured fastest per "
                        "token), 'default' (TF's own), or INTER,INTRA")
    return p.parse_args(argv)


def _sampler(args) -> Sampler:
    if args.max_new_tokens <= 0:
        raise UserError(f"--max_new_tokens must be positive, got {args.max_new_tokens}")
    if args.greedy and args.temperature > 0:
        raise UserError("--greedy and --temperature > 0 contradict each other: choose one")
    if args.temperature < 0 or args.top_k < 0:
        raise UserError("--temperature and --top_k must be >= 0")
    return Sampler(0.0 if args.greedy else args.temperature, args.top_k, args.seed)


def main(argv=None) -> int:
    from .benchmark.memory import status_mb
    from .data import encode, tokenizer_for
    from .machine import apply_threads
    from .modeldir import conversion_report, locate, max_positions

    args = parse_args(argv)
    sampler = _sampler(args)
    apply_threads(args.threads)
    if not args.prompt.strip():
        raise UserError("--prompt must not be empty")
    folder = locate(args.model, "--model")
    tokenizer, _ = tokenizer_for(folder, args.tokenizer)
    prompt_ids = encode(tokenizer, args.prompt)
    limit, source = max_positions(folder, conversion_report(folder))
    if limit is not None and len(prompt_ids) + args.max_new_tokens > limit:
        raise UserError(f"the prompt ({len(prompt_ids)} tokens) plus --max_new_tokens {args.max_new_tokens} is longer "
                        f"than the model's {limit} positions ({source})")
    gen = Generator(folder.saved_model, use_cache=not args.no_cache)
    check_token_ids(max(prompt_ids), gen.vocab, "prompt", f"{folder.saved_model}'s '{LOGITS_KEY}' output")
    if gen.cache_missing:
        print(f"note: {gen.cache_missing}", file=sys.stderr)

    shown = []

    def stream(token: int) -> None:  # print the text as it grows; BPE pieces can change the text before them
        before = tokenizer.decode(shown)
        shown.append(token)
        sys.stdout.write(tokenizer.decode(shown)[len(before):])
        sys.stdout.flush()

    sys.stdout.write(args.prompt)
    result = gen.generate(prompt_ids, args.max_new_tokens, sampler, stream)
    print("\n\n" + summary_line(result, len(prompt_ids), status_mb("VmHWM")))
    return 0


def summary_line(result: Generation, n_prompt: int, peak_rss_mb: Optional[float]) -> str:
    how = "with the KV cache" if result.cached else "recomputing the sequence every token"
    parts = [f"{len(result.new_ids)} tokens {how}: prefill {result.prefill_ms:.1f} ms ({n_prompt} prompt tokens)"]
    if result.decode_ms_per_token is not None:
        parts.append(f"decode {result.decode_ms_per_token:.1f} ms/token (median)")
    parts.append(f"{result.tokens_per_s:.1f} tokens/s")
    if peak_rss_mb is not None:
        parts.append(f"peak RSS {peak_rss_mb:.0f} MB")
    return ", ".join(parts)


def _console():  # console_scripts entry point
    sys.exit(run_cli(main))


if __name__ == "__main__":
    _console()
