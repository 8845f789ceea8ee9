"""python -m tfquant.benchmark: accuracy, latency, throughput, size and memory of fp32 vs quantized SavedModels.

Every model is loaded with ``tf.saved_model.load`` and run through its ``serving_default``
signature (``input_ids``, ``attention_mask`` -> logits), the fp32 baseline first.

Accuracy (batch 1, no padding), on the first ``--samples`` eval items of ``--dataset``:
  Tokenization: ``ctx = encode(context)``, ``tgt = encode(" " + target)`` (no special tokens),
  full sequence ``ctx + tgt``.  The target is tokenized separately, so a BPE merge across the
  context/target boundary can never happen and the target tokens are exactly ``tgt``.  One forward of
  ``full[:-1]`` gives both metrics:
  * last-token accuracy (the reference metric): argmax of the last logits == ``full[-1]``;
  * whole-word accuracy: argmax at every target position equals the next target token (teacher forcing;
    equivalent to greedy decoding of the whole word, because greedy follows the same path while every
    prediction is right).
  If the model's position limit is known (``tfquant_model.json`` / ``config.json`` beside the model or
  beside the input model named in ``report.json``) longer sequences lose tokens at the left.
  Each accuracy comes with a 95% Wilson interval; each quantized model with the paired difference to
  fp32 on the same items (discordant counts b, c and a 95% interval).  fp32 per-item results are
  cached under ``$TFQUANT_CACHE/bench`` (default ``~/.cache/tfquant/bench``).

Latency: one full-prompt forward of 1 x ``--seq_len`` tokens (from the shipped calibration text) after
``--warmup`` runs; ``--iters`` rounds in which every model runs once (round robin, rotating the order), so
the latency ratio is measured under the same machine load.  The INC-style block reports the mean (the
reference's definition) and ``Throughput`` = 1000 / mean latency at batch 1; the table reports the
median and the throughput at ``--batch_size`` x ``--seq_len``.  Peak RSS is measured per model in a
fresh subprocess that loads the model and runs one 1 x ``--seq_len`` forward.  Sizes are in MB of
2**20 bytes.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .errors import UserError, run_cli
from .fsutil import cache_root, sha256_file
from .savedmodel import LOGITS_KEY, SIGNATURE_KEY
from .data import encode
from .feeds import check_inputs, check_token_ids, make_feeds
from .modeldir import ModelFolder, conversion_report, locate, max_positions, own_tokenizer, read_json

SCHEMA = "tfquant.benchmark/1"
DEFAULT_OUTPUT = "benchmark_results.json"
DEFAULT_PROMPT = "def hello_world():"
MB = float(2 ** 20)
PROBE_MARKER = "TFQUANT_PROBE_RESULT "
CACHE_VERSION = 1
INC_CALIB_SAMPLES, INC_CALIB_SEQ_LEN = 16, 128  # the same windows tfquant.quantize calibrates on by default
# --compare values: INC's default static int8, and INC with its SmoothQuant pass first (alpha 0.5, INC's default).
INC_VARIANTS = {
    "inc": {"row": "INC int8", "kind": "INC 3.x StaticQuantConfig() int8", "smooth_alpha": None},
    "inc-smoothquant": {"row": "INC int8 + SmoothQuant", "smooth_alpha": 0.5,
                        "kind": "INC 3.x [SmoothQuantConfig(alpha=0.5), StaticQuantConfig()] int8"},
}


# ----------------------------------------------------------------------------- interval math (pure)

def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple:
    """The Wilson score interval for ``k`` successes out of ``n`` (95% for z = 1.96)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def paired_difference(x: Sequence, y: Sequence, z: float = 1.96) -> dict:
    """Paired difference of two per-item correctness vectors over the same items: mean(x) - mean(y).

    ``b`` = items right in x and wrong in y, ``c`` = wrong in x and right in y (the discordant pairs);
    ``d = (b - c) / n``, ``se = sqrt((b + c) - (b - c)**2 / n) / n`` (the usual interval for the difference of
    paired proportions, as in McNemar's setting), interval ``d +/- z * se`` clipped to [-1, 1].
    """
    if len(x) != len(y):
        raise ValueError(f"paired_difference needs vectors of equal length, got {len(x)} and {len(y)}")
    n = len(x)
    if n == 0:
        raise ValueError("paired_difference needs at least one item")
    b = sum(1 for a, r in zip(x, y) if bool(a) and not bool(r))
    c = sum(1 for a, r in zip(x, y) if not bool(a) and bool(r))
    d = (b - c) / n
    se = math.sqrt(max(0.0, (b + c) - (b - c) ** 2 / n)) / n
    return {"n": n, "b": b, "c": c, "diff": d, "se": se,
            "ci95": [max(-1.0, d - z * se), min(1.0, d + z * se)], "mcnemar_exact_p": mcnemar_exact_p(b, c)}


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value (binomial test of b against b + c with p = 1/2)."""
    m = b + c
    if m == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2.0 ** m
    return min(1.0, 2.0 * tail)


def latency_summary(ms: Sequence[float]) -> dict:
    import numpy as np

    a = np.asarray(ms, dtype=np.float64)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean()),
            "min": float(a.min()), "max": float(a.max()), "runs": int(a.size)}


# ----------------------------------------------------------------------------- report formatting (pure)

def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100.0 * v:.2f}%"


def _acc_cell(acc: Optional[dict]) -> str:
    if not acc:
        return "n/a"
    lo, hi = acc["ci95"]
    return f"{_pct(acc['accuracy'])} [{100 * lo:.1f}, {100 * hi:.1f}] ({acc['correct']}/{acc['n']})"


def _delta_cell(pair: Optional[dict]) -> str:
    if not pair:
        return "-"
    lo, hi = pair["ci95"]
    return f"{100 * pair['diff']:+.2f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}] (b={pair['b']}, c={pair['c']})"


def _num(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def format_table(results) -> str:
    """Side-by-side markdown table of a benchmark result (the JSON dict, or its ``models`` list)."""
    models = results["models"] if isinstance(results, dict) else list(results)
    bs = None
    if isinstance(results, dict):
        bs = results.get("settings", {}).get("batch_size")
    tput_head = f"throughput samples/s (bs={bs})" if bs else "throughput samples/s"
    head = ["model", "last-token acc [95% CI]", "whole-word acc [95% CI]", "Δ whole-word vs fp32 [95% CI]",
            "latency median ms", "latency ratio", tput_head, "size MB", "size ratio", "peak RSS MB"]
    rows = []
    for m in models:
        acc = m.get("accuracy") or {}
        lat = m.get("latency_ms") or {}
        tput = m.get("throughput") or {}
        mem = m.get("memory") or {}
        pair = (m.get("paired_vs_fp32") or {}).get("whole_word")
        rows.append([
            m["name"],
            _acc_cell(acc.get("last_token")),
            _acc_cell(acc.get("whole_word")),
            _delta_cell(pair),
            _num(lat.get("median"), ".2f"),
            _num(m.get("latency_ratio"), ".3f"),
            _num(tput.get("samples_per_s"), ".3f"),
            _num(m.get("size_mb"), ".1f"),
            _num(m.get("size_ratio"), ".3f"),
            _num(mem.get("peak_rss_mb"), ".0f"),
        ])
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def format_inc_block(model: dict) -> str:
    """The reference's four-line block: batch 1, last-token accuracy, mean latency, 1000 / mean latency."""
    lines = ["Batch size = 1"]
    acc = (model.get("accuracy") or {}).get("last_token")
    if acc:
        lines.append(f"Accuracy: {acc['accuracy']:.5f}")
    mean = (model.get("latency_ms") or {}).get("mean")
    if mean:
        lines.append(f"Latency: {mean:.3f} ms")
        lines.append(f"Throughput: {1000.0 / mean:.3f} samples/sec")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- models on disk (no TF)

@dataclass
class ModelSpec:
    name: str
    role: str  # "fp32" | "quantized" | "peer"
    folder: ModelFolder  # where the SavedModel is, and where its tokenizer and config are looked for
    tokenizer: Optional[str] = None  # tokenizer folder or tokenizer.json; None: GPT-2 BPE
    report: Optional[dict] = None
    max_positions: Optional[int] = None
    max_positions_source: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict)  # runtime env vars this model needs
    kind: str = "fp32"
    extra: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.folder.saved_model

    @property
    def given(self) -> str:
        return self.folder.given


_STOCK_QUANTIZED_OP = re.compile(rb"(?<!_Mkl)Quantized(?:MatMul|Conv2D)With")


def runtime_env(model_dir: str, report: Optional[dict]) -> Dict[str, str]:
    """Environment variables a model needs, decided before TensorFlow is imported.

    * tfquant ``itex_mode`` graphs: ``ITEX_TF_CONSTANT_FOLDING=0`` (ITEX fuses QDQ only without it).
    * graphs with the generic ``QuantizedMatMulWith*`` ops (INC's output): those have CPU kernels only
      through oneDNN's rewrite, which stock TF 2.15 leaves off on some CPUs: ``TF_ENABLE_ONEDNN_OPTS=1``.
      tfquant's own int8 graphs name the ``_Mkl`` kernels directly and need nothing.
    """
    env = {}
    if report and (report.get("policy") or {}).get("itex_mode"):
        env["ITEX_TF_CONSTANT_FOLDING"] = "0"
    try:
        with open(os.path.join(model_dir, "saved_model.pb"), "rb") as fh:
            if _STOCK_QUANTIZED_OP.search(fh.read()):
                env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    except OSError:
        pass
    return env


def _model_kind(report: Optional[dict], env: Dict[str, str], role: str) -> str:
    if role == "fp32":
        return "fp32"
    if report and report.get("policy"):
        pol = report["policy"]
        kind = pol.get("output_format") or "qdq"
        if pol.get("itex_mode"):
            kind += "+itex_mode"
        return f"tfquant {kind}"
    if "TF_ENABLE_ONEDNN_OPTS" in env:
        return "int8 (generic QuantizedMatMul ops)"
    return "unknown"


def _label(model_dir: str) -> str:
    base = os.path.basename(model_dir.rstrip(os.sep))
    if base == "model":
        base = os.path.basename(os.path.dirname(model_dir.rstrip(os.sep))) or base
    return base or model_dir


def make_spec(given: str, flag: str, role: str, name: Optional[str], taken: set) -> ModelSpec:
    folder = locate(given, flag)
    report = conversion_report(folder)
    limit, src = max_positions(folder, report)
    env = runtime_env(folder.saved_model, report)
    name = name or _label(folder.saved_model)
    base, i = name, 2
    while name in taken:
        name, i = f"{base} #{i}", i + 1
    taken.add(name)
    return ModelSpec(name=name, role=role, folder=folder, tokenizer=own_tokenizer(folder), report=report,
                     max_positions=limit, max_positions_source=src, env=env, kind=_model_kind(report, env, role))


def apply_runtime_env(envs: Sequence[Dict[str, str]]) -> Dict[str, str]:
    """Set the union of the models' env vars; they must be set before TensorFlow is imported."""
    wanted = {}
    for env in envs:
        wanted.update(env)
    for key, value in wanted.items():
        if os.environ.get(key) == value:
            continue
        if key in os.environ:
            _warn(f"keeping {key}={os.environ[key]} from the environment (a model asks for {value})")
            continue
        if "tensorflow" in sys.modules:
            _warn(f"TensorFlow is already imported; {key}={value} may not take effect")
        os.environ[key] = value
        _APPLIED_ENV[key] = value
    return dict(_APPLIED_ENV)


_APPLIED_ENV: Dict[str, str] = {}  # what this process set, for the report


# ----------------------------------------------------------------------------- fp32 result cache

def cache_dir() -> str:
    return os.path.join(cache_root(), "bench")


def model_fingerprint(model_dir: str) -> str:
    """sha256 of ``saved_model.pb`` + sha256 of ``variables/variables.index`` (which checksums the shards)."""
    parts = [sha256_file(os.path.join(model_dir, "saved_model.pb"))]
    index = os.path.join(model_dir, "variables", "variables.index")
    parts.append(sha256_file(index) if os.path.isfile(index) else "no-variables")
    return hashlib.sha256("+".join(parts).encode()).hexdigest()


class ResultCache:
    """Per-item results of one model on one data set: ``{item id: {"h": token hash, "last": 0|1, "word": 0|1}}``.

    The file is keyed by the model fingerprint, the data set, the TF version and the scoring version; an entry
    is used only when the item's token hash (the exact tokens fed, hence the tokenizer, text and truncation)
    matches, so a changed item or tokenizer is recomputed instead of silently reused.
    """

    def __init__(self, fingerprint: str, dataset: str, tf_version: str):
        self.fingerprint = fingerprint
        key = f"{fingerprint[:24]}-{dataset}-tf{tf_version}-v{CACHE_VERSION}"
        self.path = os.path.join(cache_dir(), re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".json")
        self.entries: Dict[str, dict] = {}
        data = read_json(self.path)
        if data and data.get("fingerprint") == fingerprint and isinstance(data.get("items"), dict):
            self.entries = data["items"]
        self.dirty = False

    def get(self, item_id: str, token_hash: str) -> Optional[tuple]:
        e = self.entries.get(item_id)
        if e and e.get("h") == token_hash:
            return bool(e["last"]), bool(e["word"])
        return None

    def put(self, item_id: str, token_hash: str, last: bool, word: bool) -> None:
        self.entries[item_id] = {"h": token_hash, "last": int(last), "word": int(word)}
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".bench-", dir=os.path.dirname(self.path))
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"fingerprint": self.fingerprint, "items": self.entries}, fh)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError as exc:  # a cache that cannot be written is not worth failing the run for
            _warn(f"could not write the result cache {self.path}: {exc}")


# ----------------------------------------------------------------------------- running models (TF)

_OUT_OF_RANGE = re.compile(r"indices\[[^\]]*\] = (-?\d+) is not in \[0, (\d+)\)")


@dataclass
class TokItem:
    id: str
    ids: List[int]  # context tokens + target tokens
    n_target: int


def tokenize_items(items, tok) -> List[TokItem]:
    out = []
    for it in items:
        ctx = encode(tok, it.context)
        tgt = encode(tok, " " + it.target)
        if not ctx or not tgt:
            raise UserError(f"eval item {it.id} tokenizes to an empty context or target")
        out.append(TokItem(it.id, ctx + tgt, len(tgt)))
    return out


def _fit(item: TokItem, limit: Optional[int]) -> tuple:
    """(sequence to use, n_target) with the input ``seq[:-1]`` at most ``limit`` tokens (left-truncated)."""
    seq = item.ids
    if limit and len(seq) - 1 > limit:
        if item.n_target >= limit:
            raise UserError(f"eval item {item.id}: its target has {item.n_target} tokens, more than the model's "
                            f"{limit} positions")
        seq = seq[len(seq) - 1 - limit:]
    return seq, item.n_target


def _token_hash(seq: Sequence[int], n_target: int) -> str:
    return hashlib.sha1((",".join(map(str, seq)) + f"|{n_target}").encode()).hexdigest()[:20]


class LoadedModel:
    """A SavedModel's signature, called with numpy int32 token ids; the other inputs are derived (tfquant.feeds)."""

    def __init__(self, spec: ModelSpec, signature: str = SIGNATURE_KEY, tokenizer=None):
        import tensorflow as tf

        self.spec = spec
        self.tf = tf
        self.tokenizer = tokenizer  # set by the benchmark run; the models sharing one share the timing group
        try:
            self.obj = tf.saved_model.load(spec.path)
        except Exception as exc:  # corrupt protobuf, missing variables, unknown ops ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"cannot load the SavedModel {spec.given}: {first[:300]}") from None
        sigs = getattr(self.obj, "signatures", {}) or {}
        if signature not in sigs:
            raise UserError(f"{spec.given} has no '{signature}' signature (signatures: {', '.join(sorted(sigs)) or 'none'}; "
                            "choose one with --signature)")
        self.fn = sigs[signature]
        self.input_specs = self.fn.structured_input_signature[1]
        check_inputs(self.input_specs, f"the '{signature}' signature of {spec.given}")
        outputs = self.fn.structured_outputs
        if isinstance(outputs, dict) and LOGITS_KEY in outputs:
            self.out_key = LOGITS_KEY
        elif isinstance(outputs, dict) and len(outputs) == 1:
            self.out_key = next(iter(outputs))  # e.g. INC's re-exported graph names it 'Identity'
        else:
            raise UserError(f"the '{signature}' signature of {spec.given} has no '{LOGITS_KEY}' output "
                            f"(outputs: {sorted(outputs) if isinstance(outputs, dict) else outputs})")
        last = outputs[self.out_key].shape
        self.vocab = int(last[-1]) if last.rank and last[-1] is not None else None
        self.max_positions = spec.max_positions

    def _call(self, ids):
        feeds = make_feeds(self.input_specs, ids)
        return self.fn(**{k: self.tf.constant(v) for k, v in feeds.items()})[self.out_key]

    def forward(self, ids):
        """Logits for int32 ids [batch, time]; out-of-range gathers become UserErrors naming the limit."""
        try:
            return self._call(ids)
        except self.tf.errors.InvalidArgumentError as exc:
            raise self._explain(exc, ids) from None

    def _explain(self, exc, ids):
        import numpy as np

        msg = str(exc)
        m = _OUT_OF_RANGE.search(msg)
        t = int(np.shape(ids)[-1])
        if m:
            bad, limit = int(m.group(1)), int(m.group(2))
            # A position index is < t; a token index is one of the ids.  Positions win when both fit.
            if t > limit and (bad < t or not np.any(np.asarray(ids) == bad)):
                return PositionLimit(self.spec.name, t, limit)
            if np.any(np.asarray(ids) == bad):
                return UserError(f"{self.spec.name}: token id {bad} is outside the model's embedding table of {limit} "
                                 "rows: pass the model's own tokenizer with --tokenizer")
        first = (msg.strip().splitlines() or [type(exc).__name__])[0]
        return RuntimeError(f"{self.spec.name}: forward of shape {tuple(np.shape(ids))} failed: {first}")


class PositionLimit(UserError):
    def __init__(self, name: str, length: int, limit: int):
        super().__init__(f"{name}: a sequence of {length} tokens is longer than the model accepts "
                         f"({limit} positions); use --seq_len {limit} or less")
        self.limit = limit


def score_items(model: LoadedModel, titems: List[TokItem], cache: Optional[ResultCache], progress: bool) -> dict:
    """Per-item (last-token, whole-word) correctness; cached items are not run."""
    import numpy as np
    from tqdm import tqdm

    last, word = [], []
    hits = 0
    t0 = time.perf_counter()
    bar = tqdm(titems, desc=f"accuracy {model.spec.name}", unit="item", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    try:
        for k, item in enumerate(bar):
            seq, n_tgt = _fit(item, model.max_positions)
            h = _token_hash(seq, n_tgt)
            got = cache.get(item.id, h) if cache else None
            if got is not None:
                hits += 1
            else:
                try:
                    logits = model.forward(np.asarray([seq[:-1]], dtype=np.int32))
                except PositionLimit as exc:  # limit unknown beforehand: learn it, truncate, retry once
                    if model.max_positions is not None:
                        raise
                    model.max_positions = exc.limit
                    seq, n_tgt = _fit(item, model.max_positions)
                    h = _token_hash(seq, n_tgt)
                    logits = model.forward(np.asarray([seq[:-1]], dtype=np.int32))
                pred = model.tf.argmax(logits[0, -n_tgt:], axis=-1).numpy()
                target = np.asarray(seq[-n_tgt:])
                got = (bool(pred[-1] == target[-1]), bool(np.all(pred == target)))
                if cache:
                    cache.put(item.id, h, *got)
                    if (k + 1) % 25 == 0:
                        cache.save()  # an interrupted long run keeps what it computed
            last.append(got[0])
            word.append(got[1])
    finally:
        bar.close()
        if cache:
            cache.save()
    return {"last": last, "word": word, "cache_hits": hits, "seconds": time.perf_counter() - t0}


def accuracy_summary(flags: Sequence[bool]) -> dict:
    n, k = len(flags), int(sum(bool(f) for f in flags))
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n, "ci95": [lo, hi]}


def greedy_generate(model: LoadedModel, tok, prompt_ids: List[int], n_new: int) -> dict:
    """Greedy decoding without a KV cache: the whole sequence is run again for every new token."""
    import numpy as np

    seq = list(prompt_ids)
    new = []
    for _ in range(n_new):
        window = seq[-model.max_positions:] if model.max_positions else seq
        try:
            logits = model.forward(np.asarray([window], dtype=np.int32))
        except PositionLimit as exc:  # limit unknown beforehand: learn it and keep the last positions
            if model.max_positions is not None:
                raise
            model.max_positions = exc.limit
            logits = model.forward(np.asarray([seq[-exc.limit:]], dtype=np.int32))
        nxt = int(model.tf.argmax(logits[0, -1]).numpy())
        seq.append(nxt)
        new.append(nxt)
    try:
        text = tok.decode(new)
    except Exception:  # a tokenizer that cannot decode an id the model produced
        text = None
    return {"new_token_ids": new, "text": text}


def bench_tokens(tok, batch: int, seq_len: int):
    """Deterministic [batch, seq_len] ids: consecutive windows of the shipped calibration text (tiled if short)."""
    import numpy as np

    from .data import default_calibration_text_path, read_text

    text = read_text(default_calibration_text_path())
    need = batch * seq_len
    ids = encode(tok, text[: max(4096, need * 16)])
    if len(ids) < need:
        ids = encode(tok, text)
    arr = np.resize(np.asarray(ids, dtype=np.int32), need)  # repeats the text if it is too short
    return arr.reshape(batch, seq_len)


def timed_round_robin(models: List[LoadedModel], ids, warmup: int, iters: int) -> List[List[float]]:
    """ms per forward for every model; each round runs every model once, rotating which goes first."""
    for m in models:
        for _ in range(warmup):
            m.forward(ids)
    times = [[] for _ in models]
    n = len(models)
    for i in range(iters):
        for j in range(n):
            k = (i + j) % n
            t0 = time.perf_counter()
            m = models[k]
            out = m.forward(ids)
            _ = out.shape  # eager CPU execution is synchronous; keep the result alive until timed
            times[k].append(1000.0 * (time.perf_counter() - t0))
    return times


# ----------------------------------------------------------------------------- subprocess modes

def probe_memory(model_dir: str, seq_len: int, signature: str) -> dict:
    """Hidden ``--_probe_memory``: load one model, run one 1 x seq_len forward, report peak RSS."""
    import resource

    import numpy as np

    folder = locate(model_dir, "--_probe_memory")
    apply_runtime_env([runtime_env(folder.saved_model, conversion_report(folder))])
    import tensorflow  # noqa: F401  (imported here, after the env vars, so its RSS is the baseline)

    rss_import = _current_rss_mb()
    model = LoadedModel(ModelSpec(name=_label(folder.saved_model), role="probe", folder=folder), signature)
    rss_loaded = _current_rss_mb()
    ids = np.random.RandomState(0).randint(0, 256, size=(1, seq_len)).astype(np.int32)
    model.forward(ids)
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    hwm = _status_mb("VmHWM")
    # ru_maxrss survives execve on Linux: a child forked from the (large) benchmark process starts with the
    # parent's high-water mark.  VmHWM belongs to the new address space, so it is this model's own peak.
    return {"peak_rss_mb": hwm if hwm is not None else ru_maxrss, "source": "VmHWM" if hwm is not None else "ru_maxrss",
            "ru_maxrss_mb": ru_maxrss, "rss_after_tf_import_mb": rss_import, "rss_after_load_mb": rss_loaded,
            "seq_len": seq_len}


def _status_mb(field_name: str) -> Optional[float]:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _current_rss_mb() -> Optional[float]:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        return None


def _subprocess_env() -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def measure_memory(spec: ModelSpec, seq_len: int, signature: str) -> dict:
    cmd = [sys.executable, "-m", "tfquant.benchmark", "--_probe_memory", spec.path, "--seq_len", str(seq_len),
           "--signature", signature]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_subprocess_env(), timeout=1800)
    except subprocess.TimeoutExpired:
        return {"peak_rss_mb": None, "error": "memory probe timed out"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(PROBE_MARKER):
            return json.loads(line[len(PROBE_MARKER):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    _warn(f"memory probe of {spec.name} failed (exit {proc.returncode}): {tail}")
    return {"peak_rss_mb": None, "error": f"exit {proc.returncode}: {tail[:300]}"}


class _IncCalibLoader:
    """What INC's TF calibration loop iterates: (feeds by input name, label) pairs, one window per batch."""

    batch_size = 1

    def __init__(self, windows):
        self.windows = windows

    def __len__(self):
        return len(self.windows)

    def __iter__(self):
        import numpy as np

        for w in self.windows:
            yield {"input_ids": w, "attention_mask": np.ones_like(w)}, None


def inc_quantize(src: str, dst: str, seq_len: int, variant: str = "inc") -> dict:
    """Hidden ``--_inc_quantize``: INC 3.x static int8 of ``src`` into the SavedModel folder ``dst``."""
    try:
        from neural_compressor.tensorflow import SmoothQuantConfig, StaticQuantConfig, quantize_model
    except ImportError:
        raise UserError("--compare inc needs neural-compressor: pip install .[inc]") from None
    from .data import default_calibration_text_path, read_text, token_windows, tokenizer_for

    tokenizer, _ = tokenizer_for(locate(src))
    windows = token_windows(read_text(default_calibration_text_path()), tokenizer, INC_CALIB_SAMPLES, seq_len)
    alpha = INC_VARIANTS[variant]["smooth_alpha"]
    configs = ([SmoothQuantConfig(alpha=alpha)] if alpha is not None else []) + [StaticQuantConfig()]
    t0 = time.perf_counter()
    q_model = quantize_model(src, configs if len(configs) > 1 else configs[0], calib_dataloader=_IncCalibLoader(windows),
                             calib_iteration=len(windows))
    q_model.save(dst)
    return {"seconds": time.perf_counter() - t0, "calib_samples": len(windows), "calib_seq_len": seq_len,
            "peak_rss_mb": _status_mb("VmHWM")}


def run_inc_peer(fp32: ModelSpec, workdir: str, taken: set, quiet: bool, variant: str = "inc") -> ModelSpec:
    if importlib.util.find_spec("neural_compressor") is None:
        raise UserError(f"--compare {variant} needs neural-compressor: pip install .[inc]")
    dst = os.path.join(workdir, variant)
    log_path = os.path.join(tempfile.gettempdir(), f"tfquant-bench-{variant}-{os.getpid()}.log")
    seq_len = min(INC_CALIB_SEQ_LEN, fp32.max_positions or INC_CALIB_SEQ_LEN)
    cmd = [sys.executable, "-m", "tfquant.benchmark", "--_inc_quantize", fp32.path, dst, "--seq_len", str(seq_len),
           "--compare", variant]
    _log(f"quantizing {fp32.name} with Intel Neural Compressor, {variant} (log: {log_path}) ...", quiet)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_subprocess_env())
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        lines = [ln for ln in fh.read().splitlines() if ln.strip()]
    result = None
    for line in reversed(lines):
        if line.startswith(PROBE_MARKER):
            result = json.loads(line[len(PROBE_MARKER):])
            break
    if proc.returncode != 0 or result is None or not os.path.isfile(os.path.join(dst, "saved_model.pb")):
        last = lines[-1] if lines else "no output"
        if last.startswith("error: "):  # a UserError from the subprocess (INC missing)
            raise UserError(last[len("error: "):])
        raise RuntimeError(f"INC quantization failed (exit {proc.returncode}): {last[:300]} (full log: {log_path})")
    os.remove(log_path)
    spec = make_spec(dst, f"--compare {variant}", "peer", INC_VARIANTS[variant]["row"], taken)
    spec.tokenizer = fp32.tokenizer
    spec.max_positions, spec.max_positions_source = fp32.max_positions, fp32.max_positions_source
    spec.kind = INC_VARIANTS[variant]["kind"]
    spec.extra["inc"] = result
    return spec


# ----------------------------------------------------------------------------- CLI

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr and exit 2, like every other user mistake
        raise UserError(message)


def parse_args(argv=None):
    p = _Parser(prog="python -m tfquant.benchmark", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_model", help="fp32 SavedModel folder, or a folder holding saved_model/<version>/ "
                                         "(the baseline; required)")
    p.add_argument("--quantized_model", action="append", default=[],
                   help="quantized SavedModel folder, or a tfquant.quantize --output_dir (repeatable)")
    p.add_argument("--signature", default=SIGNATURE_KEY, help=f"the signature to run (default {SIGNATURE_KEY})")
    p.add_argument("--tokenizer", help="tokenizer folder or tokenizer.json for every model (default: each model "
                                       "folder's own tokenizer, else GPT-2 BPE)")
    p.add_argument("--dataset", default="austen", help="austen (shipped, default) or lambada (needs --data_dir)")
    p.add_argument("--data_dir", help="local LAMBADA copy for --dataset lambada")
    p.add_argument("--samples", default="200", help="number of eval items (the first N), or 'all' (default 200)")
    p.add_argument("--batch_size", default="4", help="batch size of the throughput run (default 4)")
    p.add_argument("--seq_len", default="128", help="prompt length of the latency/throughput runs (default 128)")
    p.add_argument("--warmup", default="3", help="untimed runs per model before timing (default 3)")
    p.add_argument("--iters", default="10", help="timed rounds (default 10)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help=f"JSON results file (default ./{DEFAULT_OUTPUT})")
    p.add_argument("--chart", help="write a PNG chart here (needs matplotlib)")
    p.add_argument("--no_accuracy", action="store_true", help="skip the accuracy evaluation")
    p.add_argument("--no_memory", action="store_true", help="skip the per-model peak RSS subprocesses")
    p.add_argument("--no_cache", action="store_true", help="neither read nor write the fp32 result cache")
    p.add_argument("--compare", action="append", default=[],
                   help="'inc': also quantize the fp32 model with Intel Neural Compressor 3.x (StaticQuantConfig) and add it "
                        "as a row; 'inc-smoothquant': the same after INC's SmoothQuant (alpha 0.5); repeatable")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"greedy generation prompt (default {DEFAULT_PROMPT!r})")
    p.add_argument("--gen_tokens", default="16", help="new tokens of the generation sample (default 16)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    p.add_argument("--_probe_memory", help=argparse.SUPPRESS)
    p.add_argument("--_inc_quantize", nargs=2, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _int_arg(value: str, flag: str, minimum: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise UserError(f"{flag} must be an integer, got {value!r}") from None
    if n < minimum:
        raise UserError(f"{flag} must be {'positive' if minimum == 1 else f'at least {minimum}'}, got {n}")
    return n


def _samples_arg(value: str) -> Optional[int]:
    if str(value).strip().lower() == "all":
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        raise UserError(f"--samples must be a positive integer or 'all', got {value!r}") from None
    if n <= 0:
        raise UserError(f"--samples must be a positive integer or 'all', got {n}")
    return n


_QUIET = False


def _log(msg: str, quiet: Optional[bool] = None) -> None:
    """Status lines go to stdout: stderr is kept for progress bars and the one-line error of a user mistake."""
    if not (_QUIET if quiet is None else quiet):
        print(msg, flush=True)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _check_writable_parent(path: str, flag: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{flag} {path}: folder {parent} does not exist")
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder; give a file name")


def _environment(applied_env: Dict[str, str]) -> dict:
    import numpy
    import tensorflow as tf

    from .machine import describe

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        import transformers

        tv = transformers.__version__
    except ImportError:
        tv = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tensorflow": tf.__version__, "numpy": numpy.__version__, "transformers": tv,
        "python": platform.python_version(), "platform": platform.platform(),
        **describe(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
        "itex_installed": importlib.util.find_spec("intel_extension_for_tensorflow") is not None,
        "env": {k: os.environ[k] for k in ("TF_ENABLE_ONEDNN_OPTS", "ITEX_TF_CONSTANT_FOLDING", "OMP_NUM_THREADS",
                                           "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS") if k in os.environ},
        "env_set_by_benchmark": applied_env,
    }


def write_chart(results: dict, path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise UserError("--chart needs matplotlib: pip install matplotlib (or pip install .[bench])") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    names = [m["name"] for m in models]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    have_acc = all((m.get("accuracy") or {}).get("whole_word") for m in models)
    if have_acc:
        for m in models:
            acc = m["accuracy"]["whole_word"]
            lat = m["latency_ms"]["median"]
            lo, hi = acc["ci95"]
            ax1.errorbar([lat], [100 * acc["accuracy"]], yerr=[[100 * (acc["accuracy"] - lo)], [100 * (hi - acc["accuracy"])]],
                         fmt="o", capsize=4, label=m["name"])
            ax1.annotate(m["name"], (lat, 100 * acc["accuracy"]), textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax1.set_xlabel(f"latency, median ms (1 x {results['settings']['seq_len']} tokens)")
        ax1.set_ylabel("whole-word accuracy % (95% CI)")
        ax1.set_title(f"accuracy vs latency ({results['settings']['dataset']}, n={models[0]['accuracy']['n']})")
    else:
        ax1.bar(names, [m["latency_ms"]["median"] for m in models], color="tab:orange")
        ax1.set_ylabel("latency, median ms")
        ax1.set_title(f"latency (1 x {results['settings']['seq_len']} tokens)")
    ax1.grid(alpha=0.3)
    ax2.bar(names, [m["size_mb"] for m in models], color="tab:blue")
    for i, m in enumerate(models):
        ax2.annotate(f"{m['size_ratio']:.2f}x", (i, m["size_mb"]), ha="center", va="bottom", fontsize=8)
    ax2.set_ylabel("SavedModel size, MB")
    ax2.set_title("size on disk")
    for lab in ax2.get_xticklabels() + (ax1.get_xticklabels() if not have_acc else []):
        lab.set_rotation(20)
        lab.set_ha("right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_json_atomic(path: str, data: dict) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".bench-", suffix=".json", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main(argv=None) -> int:
    global _QUIET
    args = parse_args(argv)
    _QUIET = bool(args.quiet)

    if args._probe_memory:  # hidden subprocess modes
        seq_len = _int_arg(args.seq_len, "--seq_len", 1)
        print(PROBE_MARKER + json.dumps(probe_memory(args._probe_memory, seq_len, args.signature)), flush=True)
        return 0
    if args._inc_quantize:
        seq_len = _int_arg(args.seq_len, "--seq_len", 1)
        variant = args.compare[0] if args.compare else "inc"
        print(PROBE_MARKER + json.dumps(inc_quantize(*args._inc_quantize, seq_len, variant)), flush=True)
        return 0

    # ---- everything a user can get wrong, checked before any model runs
    from .data import DATASETS

    if not args.input_model:
        raise UserError("--input_model is required (the fp32 SavedModel folder)")
    if args.dataset not in DATASETS:
        raise UserError(f"unknown dataset {args.dataset!r}; choose one of: {', '.join(DATASETS)}")
    if args.dataset == "lambada" and not args.no_accuracy:
        if not args.data_dir:
            raise UserError("--dataset lambada needs --data_dir (a local copy of the LAMBADA test split)")
        if not os.path.isdir(args.data_dir):
            raise UserError(f"--data_dir {args.data_dir} is not a folder")
    samples = _samples_arg(args.samples)
    batch_size = _int_arg(args.batch_size, "--batch_size", 1)
    seq_len = _int_arg(args.seq_len, "--seq_len", 1)
    warmup = _int_arg(args.warmup, "--warmup", 0)
    iters = _int_arg(args.iters, "--iters", 1)
    gen_tokens = _int_arg(args.gen_tokens, "--gen_tokens", 0)
    compare = sorted(set(c.strip().lower() for c in args.compare))
    for c in compare:
        if c not in INC_VARIANTS:
            raise UserError(f"--compare {c!r} is not supported (supported: {', '.join(INC_VARIANTS)})")
    if gen_tokens and not args.prompt.strip():
        raise UserError("--prompt must not be empty (or pass --gen_tokens 0)")
    _check_writable_parent(args.output, "--output")
    if args.chart:
        _check_writable_parent(args.chart, "--chart")
        if importlib.util.find_spec("matplotlib") is None:
            raise UserError("--chart needs matplotlib: pip install matplotlib (or pip install .[bench])")
    if compare and importlib.util.find_spec("neural_compressor") is None:
        raise UserError(f"--compare {compare[0]} needs neural-compressor: pip install .[inc]")

    if args.tokenizer and not os.path.exists(args.tokenizer):
        raise UserError(f"tokenizer not found: {args.tokenizer}")
    taken: set = set()
    fp32 = make_spec(args.input_model, "--input_model", "fp32", "fp32", taken)
    specs = [fp32] + [make_spec(q, "--quantized_model", "quantized", None, taken) for q in args.quantized_model]
    for s in specs if args.tokenizer else ():
        s.tokenizer = os.path.abspath(args.tokenizer)
    apply_runtime_env([s.env for s in specs])  # before anything can import TensorFlow
    for s in specs:
        if s.max_positions and seq_len > s.max_positions:
            raise UserError(f"--seq_len {seq_len} is longer than {s.name} allows ({s.max_positions} positions, "
                            f"from {s.max_positions_source})")

    items = None
    if not args.no_accuracy:
        from .data import load_eval_items

        all_items = load_eval_items(args.dataset, args.data_dir)
        items = all_items if samples is None else all_items[:samples]
        if samples is not None and samples > len(all_items):
            _log(f"note: --samples {samples} but {args.dataset} has {len(all_items)} items; using all of them")

    workdir = tempfile.mkdtemp(prefix="tfquant-bench-")
    try:
        for variant in compare:  # first: INC's peak memory is large, and its subprocess frees it when done
            specs.append(run_inc_peer(fp32, workdir, taken, args.quiet, variant))
        return _run(args, specs, items, samples, batch_size, seq_len, warmup, iters, gen_tokens)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args, specs: List[ModelSpec], items, samples, batch_size, seq_len, warmup, iters, gen_tokens) -> int:
    applied = apply_runtime_env([s.env for s in specs])
    if applied:
        _log("set for this run (all models share the process): " + ", ".join(f"{k}={v}" for k, v in applied.items()))
    import tensorflow as tf

    from .data import gpt2_tokenizer, load_tokenizer
    from .fsutil import dir_size_bytes

    tokenizers: Dict[Optional[str], object] = {}  # tokenizer path (None: GPT-2 BPE) -> tokenizer
    for s in specs:
        if s.tokenizer not in tokenizers:
            tokenizers[s.tokenizer] = load_tokenizer(s.tokenizer) if s.tokenizer else gpt2_tokenizer()
    _log(f"loading {len(specs)} model(s) ...")
    models = [LoadedModel(s, args.signature, tokenizers[s.tokenizer]) for s in specs]

    lat_ids = {k: bench_tokens(t, 1, seq_len) for k, t in tokenizers.items()}
    titems = {k: tokenize_items(items, t) for k, t in tokenizers.items()} if items is not None else {}
    for m in models:  # token ids the model has no row for: one clear line before any forward
        top = max([int(lat_ids[m.spec.tokenizer].max())] + [max(t.ids) for t in titems.get(m.spec.tokenizer, [])])
        check_token_ids(top, m.vocab, "benchmark", f"{m.spec.name}'s '{m.out_key}' output")
    # first forward at the latency shape: catches a seq_len over an unknown position limit early
    for m in models:
        m.forward(lat_ids[m.spec.tokenizer])

    entries = []
    per_item = {}
    if items is not None:
        for m in models:
            cache = None
            if m.spec.role == "fp32" and not args.no_cache:
                cache = ResultCache(model_fingerprint(m.spec.path), args.dataset, tf.__version__)
            res = score_items(m, titems[m.spec.tokenizer], cache, progress=not args.quiet)
            res["cache_path"] = cache.path if cache else None
            per_item[m.spec.name] = res

    gens = {}
    if gen_tokens:
        for m in models:
            prompt_ids = encode(m.tokenizer, args.prompt)
            gens[m.spec.name] = greedy_generate(m, m.tokenizer, prompt_ids, gen_tokens)

    _log(f"latency: {iters} round(s) of 1 x {seq_len} tokens, {warmup} warm-up run(s) per model ...")
    groups: Dict[Optional[str], List[LoadedModel]] = {}  # models fed the same ids are timed round robin together
    for m in models:
        groups.setdefault(m.spec.tokenizer, []).append(m)
    lat_ms, tput_ms = {}, {}
    for key, group in groups.items():
        for m, t in zip(group, timed_round_robin(group, lat_ids[key], warmup, iters)):
            lat_ms[m.spec.name] = t
    _log(f"throughput: {iters} round(s) of {batch_size} x {seq_len} tokens ...")
    for key, group in groups.items():
        ids = bench_tokens(tokenizers[key], batch_size, seq_len)
        for m, t in zip(group, timed_round_robin(group, ids, warmup, iters)):
            tput_ms[m.spec.name] = t

    for m in models:
        m.fn = m.obj = None  # the probes below are separate processes; free what we can first
    import gc

    gc.collect()
    mem = {}
    if not args.no_memory:
        for s in specs:
            _log(f"peak RSS of {s.name} (fresh process) ...")
            mem[s.name] = measure_memory(s, seq_len, args.signature)

    fp32 = specs[0]
    fp32_size = dir_size_bytes(fp32.path)
    fp32_lat = latency_summary(lat_ms[fp32.name])["median"]
    for s in specs:
        size = dir_size_bytes(s.path)
        lat = latency_summary(lat_ms[s.name])
        tp = latency_summary(tput_ms[s.name])
        entry = {
            "name": s.name, "role": s.role, "kind": s.kind, "path": s.path,
            "max_positions": s.max_positions, "runtime_env": s.env,
            "size_bytes": size, "size_mb": size / MB, "size_ratio": size / fp32_size if fp32_size else None,
            "latency_ms": {**lat, "batch_size": 1, "seq_len": seq_len, "warmup": warmup},
            "latency_ratio": lat["median"] / fp32_lat if fp32_lat else None,
            "throughput": {"batch_size": batch_size, "seq_len": seq_len, "median_batch_ms": tp["median"],
                           "samples_per_s": 1000.0 * batch_size / tp["median"],
                           "tokens_per_s": 1000.0 * batch_size * seq_len / tp["median"]},
            "memory": mem.get(s.name),
            "generation": ({"prompt": args.prompt, **gens[s.name]} if s.name in gens else None),
        }
        if s.extra:
            entry.update(s.extra)
        if s.name in per_item:
            r = per_item[s.name]
            entry["accuracy"] = {
                "n": len(r["last"]),
                "last_token": accuracy_summary(r["last"]),
                "whole_word": accuracy_summary(r["word"]),
                "seconds": round(r["seconds"], 3),
                "cache": ({"used": r["cache_hits"] > 0, "items_from_cache": r["cache_hits"], "path": r["cache_path"]}
                          if r["cache_path"] else None),
            }
            if s.role != "fp32":
                base = per_item[fp32.name]
                entry["paired_vs_fp32"] = {"last_token": paired_difference(r["last"], base["last"]),
                                           "whole_word": paired_difference(r["word"], base["word"])}
        if s.role != "fp32" and s.name in gens and fp32.name in gens:
            a, b = gens[s.name]["new_token_ids"], gens[fp32.name]["new_token_ids"]
            same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            entry["generation"]["same_prefix_as_fp32_tokens"] = same
        entries.append(entry)

    results = {
        "schema": SCHEMA,
        "environment": _environment(applied),
        "settings": {
            "dataset": None if items is None else args.dataset,
            "data_dir": os.path.abspath(args.data_dir) if (items is not None and args.data_dir) else None,
            "samples_requested": "all" if samples is None else samples,
            "n_items": None if items is None else len(items),
            "item_ids_sha256": (None if items is None else
                                hashlib.sha256("\n".join(i.id for i in items).encode()).hexdigest()),
            "batch_size": batch_size, "seq_len": seq_len, "warmup": warmup, "iters": iters,
            "gen_tokens": gen_tokens, "prompt": args.prompt,
            "tokenization": "ctx=encode(context), tgt=encode(' ' + target), no special tokens; input = (ctx+tgt)[:-1]",
            "timing": "round robin: every round runs every model once, rotating the order",
            "units": "ms; MB = 2**20 bytes; accuracies are fractions with 95% Wilson intervals",
            "per_item_results": "omitted (fp32 per-item results live in the cache)",
        },
        "models": entries,
    }

    # ---- report
    for e in entries:
        print(f"\n[{e['name']}] {e['path']}")
        print(format_inc_block(e))
    print()
    print(format_table(results))
    notes = []
    if applied:
        notes.append("runtime: " + ", ".join(f"{k}={v}" for k, v in applied.items()) + " was set for every model in "
                     "this run (a model needs it); timings without it can differ")
    for e in entries:
        c = (e.get("accuracy") or {}).get("cache")
        if c:
            n, hit = e["accuracy"]["n"], c["items_from_cache"]
            how = (f"cache used: {hit}/{n} per-item results read from the cache" if hit == n else
                   f"cache used: {hit}/{n} per-item results read from the cache, {n - hit} computed and added" if hit else
                   f"cache not used: {n} per-item results computed and cached")
            notes.append(f"{e['name']}: {how} ({c['path']})")
    for e in entries:
        g = e.get("generation")
        if g:
            extra = ""
            if "same_prefix_as_fp32_tokens" in g:
                extra = f" [first {g['same_prefix_as_fp32_tokens']}/{len(g['new_token_ids'])} tokens as fp32]"
            notes.append(f"{e['name']} greedy: {g['prompt']!r} -> {g['text']!r}{extra}")
    if notes:
        print()
        for line in notes:
            print(line)
    _write_json_atomic(args.output, results)
    print(f"\nwrote {os.path.abspath(args.output)}")
    if args.chart:
        write_chart(results, args.chart)
        print(f"wrote {os.path.abspath(args.chart)}")
    return 0


def _console():  # console_scripts entry point
    sys.exit(run_cli(main))


if __name__ == "__main__":
    _console()
