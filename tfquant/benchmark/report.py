"""What a benchmark run reports: the results JSON (``SCHEMA``), the printed blocks, table and notes, and the chart.

The JSON keys are read by ``bench/results/*.json`` users and the tests: change them only with ``SCHEMA``.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.util
import os
import platform
from typing import Dict, List, Optional

from ..errors import UserError
from ..fsutil import dir_size_bytes
from .stats import accuracy_summary, latency_summary, paired_difference

SCHEMA = "tfquant.benchmark/1"
MB = float(2 ** 20)
_ENV_REPORTED = ("TF_ENABLE_ONEDNN_OPTS", "ITEX_TF_CONSTANT_FOLDING", "OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                 "TF_NUM_INTEROP_THREADS")


# ----------------------------------------------------------------------------- the results JSON

def model_entries(specs, measured, settings) -> List[dict]:
    """``results["models"]``, fp32 (``specs[0]``) first; ``measured`` is a ``measure.Measurements``."""
    fp32 = specs[0]
    fp32_size = dir_size_bytes(fp32.path)
    fp32_latency = latency_summary(measured.latency_ms[fp32.name])["median"]
    return [_model_entry(s, fp32, measured, settings, fp32_size, fp32_latency) for s in specs]


def _model_entry(spec, fp32, measured, settings, fp32_size: int, fp32_latency: float) -> dict:
    size = dir_size_bytes(spec.path)
    lat = latency_summary(measured.latency_ms[spec.name])
    tp = latency_summary(measured.batch_ms[spec.name])
    bs, seq_len = settings.batch_size, settings.seq_len
    gen = measured.generations.get(spec.name)
    entry = {
        "name": spec.name, "role": spec.role, "kind": spec.kind, "path": spec.path,
        "max_positions": spec.max_positions, "runtime_env": spec.env,
        "size_bytes": size, "size_mb": size / MB, "size_ratio": size / fp32_size if fp32_size else None,
        "latency_ms": {**lat, "batch_size": 1, "seq_len": seq_len, "warmup": settings.warmup},
        "latency_ratio": lat["median"] / fp32_latency if fp32_latency else None,
        "throughput": {"batch_size": bs, "seq_len": seq_len, "median_batch_ms": tp["median"],
                       "samples_per_s": 1000.0 * bs / tp["median"],
                       "tokens_per_s": 1000.0 * bs * seq_len / tp["median"]},
        "memory": measured.memory.get(spec.name),
        "generation": ({"prompt": settings.prompt, **gen} if gen is not None else None),
    }
    if spec.name in measured.decoding:
        entry["decoding"] = measured.decoding[spec.name]
    entry.update(spec.extra)  # e.g. "inc": how INC's quantization went
    if spec.name in measured.accuracy:
        entry["accuracy"] = _accuracy_entry(measured.accuracy[spec.name])
        if spec.role != "fp32":
            entry["paired_vs_fp32"] = _paired_entry(measured.accuracy[spec.name], measured.accuracy[fp32.name])
    fp32_gen = measured.generations.get(fp32.name)
    if spec.role != "fp32" and gen is not None and fp32_gen is not None:
        entry["generation"]["same_prefix_as_fp32_tokens"] = _same_prefix(gen["new_token_ids"], fp32_gen["new_token_ids"])
    return entry


def _accuracy_entry(r: dict) -> dict:
    return {
        "n": len(r["last"]),
        "last_token": accuracy_summary(r["last"]),
        "whole_word": accuracy_summary(r["word"]),
        "seconds": round(r["seconds"], 3),
        "cache": ({"used": r["cache_hits"] > 0, "items_from_cache": r["cache_hits"], "path": r["cache_path"]}
                  if r["cache_path"] else None),
    }


def _paired_entry(r: dict, base: dict) -> dict:
    return {"last_token": paired_difference(r["last"], base["last"]),
            "whole_word": paired_difference(r["word"], base["word"])}


def _same_prefix(a: List[int], b: List[int]) -> int:
    """How many leading tokens two generations share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def results_json(entries: List[dict], settings, items, applied: Dict[str, str]) -> dict:
    """The whole results document; ``items`` are the eval items scored (None with --no_accuracy)."""
    scored = items is not None
    return {
        "schema": SCHEMA,
        "environment": environment(applied),
        "settings": {
            "dataset": settings.dataset if scored else None,
            "data_dir": os.path.abspath(settings.data_dir) if (scored and settings.data_dir) else None,
            "samples_requested": "all" if settings.samples is None else settings.samples,
            "n_items": len(items) if scored else None,
            "item_ids_sha256": hashlib.sha256("\n".join(i.id for i in items).encode()).hexdigest() if scored else None,
            "batch_size": settings.batch_size, "seq_len": settings.seq_len, "warmup": settings.warmup,
            "iters": settings.iters, "gen_tokens": settings.gen_tokens, "prompt": settings.prompt,
            "generate": settings.generate,
            "tokenization": "ctx=encode(context), tgt=encode(' ' + target), no special tokens; input = (ctx+tgt)[:-1]",
            "timing": "round robin: every round runs every model once, rotating the order",
            "units": "ms; MB = 2**20 bytes; accuracies are fractions with 95% Wilson intervals",
            "per_item_results": "omitted (fp32 per-item results live in the cache)",
        },
        "models": entries,
    }


def environment(applied_env: Dict[str, str]) -> dict:
    """Versions, machine and the env vars that change timings: results are comparable only when these match."""
    import numpy
    import tensorflow as tf

    from ..machine import describe

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "tensorflow": tf.__version__, "numpy": numpy.__version__, "transformers": _transformers_version(),
        "python": platform.python_version(), "platform": platform.platform(),
        **describe(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
        "itex_installed": importlib.util.find_spec("intel_extension_for_tensorflow") is not None,
        "env": {k: os.environ[k] for k in _ENV_REPORTED if k in os.environ},
        "env_set_by_benchmark": applied_env,
    }


def _transformers_version() -> Optional[str]:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


# ----------------------------------------------------------------------------- printed report (pure)

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


def _table_row(m: dict) -> List[str]:
    acc = m.get("accuracy") or {}
    lat = m.get("latency_ms") or {}
    tput = m.get("throughput") or {}
    mem = m.get("memory") or {}
    pair = (m.get("paired_vs_fp32") or {}).get("whole_word")
    return [
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
    ]


def format_table(results) -> str:
    """Side-by-side markdown table of a benchmark result (the JSON dict, or its ``models`` list)."""
    models = results["models"] if isinstance(results, dict) else list(results)
    bs = None
    if isinstance(results, dict):
        bs = results.get("settings", {}).get("batch_size")
    tput_head = f"throughput samples/s (bs={bs})" if bs else "throughput samples/s"
    head = ["model", "last-token acc [95% CI]", "whole-word acc [95% CI]", "Δ whole-word vs fp32 [95% CI]",
            "latency median ms", "latency ratio", tput_head, "size MB", "size ratio", "peak RSS MB"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_table_row(m)) + " |" for m in models]
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


def _cache_note(e: dict) -> Optional[str]:
    c = (e.get("accuracy") or {}).get("cache")
    if not c:
        return None
    n, hit = e["accuracy"]["n"], c["items_from_cache"]
    how = (f"cache used: {hit}/{n} per-item results read from the cache" if hit == n else
           f"cache used: {hit}/{n} per-item results read from the cache, {n - hit} computed and added" if hit else
           f"cache not used: {n} per-item results computed and cached")
    return f"{e['name']}: {how} ({c['path']})"


def _generation_note(e: dict) -> Optional[str]:
    g = e.get("generation")
    if not g:
        return None
    extra = ""
    if "same_prefix_as_fp32_tokens" in g:
        extra = f" [first {g['same_prefix_as_fp32_tokens']}/{len(g['new_token_ids'])} tokens as fp32]"
    return f"{e['name']} greedy: {g['prompt']!r} -> {g['text']!r}{extra}"


def _decoding_note(e: dict) -> Optional[str]:
    d = e.get("decoding")
    if not d:
        return None
    how = "KV cache" if d["cached"] else "no decode signature: recomputed"
    line = (f"{e['name']} decoding ({how}): prefill {d['prefill_ms']:.1f} ms for {d['prompt_tokens']} tokens, "
            f"decode {d['decode_ms_per_token']:.2f} ms/token, {d['tokens_per_s']:.1f} tokens/s")
    for text, c in d["continuations"].items():
        same = f" [{100 * c['tokens_equal_to_fp32']:.0f}% of tokens as fp32]" if "tokens_equal_to_fp32" in c else ""
        line += f"\n  {text!r} -> {c['text']!r}{same}"
    return line


def format_notes(entries: List[dict], applied: Dict[str, str]) -> List[str]:
    """The lines under the table: the env vars this run set, where accuracies came from, the generations."""
    notes = []
    if applied:
        notes.append("runtime: " + ", ".join(f"{k}={v}" for k, v in applied.items()) + " was set for every model in "
                     "this run (a model needs it); timings without it can differ")
    notes += [n for n in map(_cache_note, entries) if n]
    notes += [n for n in map(_generation_note, entries) if n]
    notes += [n for n in map(_decoding_note, entries) if n]
    return notes


def print_report(results: dict, applied: Dict[str, str]) -> None:
    """Every model's INC-style block, the table, then the notes, on stdout."""
    entries = results["models"]
    for e in entries:
        print(f"\n[{e['name']}] {e['path']}")
        print(format_inc_block(e))
    print()
    print(format_table(results))
    notes = format_notes(entries, applied)
    if notes:
        print()
        for line in notes:
            print(line)


# ----------------------------------------------------------------------------- chart

def write_chart(results: dict, path: str) -> None:
    """PNG: whole-word accuracy (95% CI) against median latency (latency alone without accuracy), and size."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("--chart needs matplotlib: pip install matplotlib (or pip install .[bench])") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    have_acc = all((m.get("accuracy") or {}).get("whole_word") for m in models)
    if have_acc:
        _plot_accuracy_vs_latency(ax1, results)
    else:
        ax1.bar([m["name"] for m in models], [m["latency_ms"]["median"] for m in models], color="tab:orange")
        ax1.set_ylabel("latency, median ms")
        ax1.set_title(f"latency (1 x {results['settings']['seq_len']} tokens)")
    ax1.grid(alpha=0.3)
    ax2.bar([m["name"] for m in models], [m["size_mb"] for m in models], color="tab:blue")
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


def _plot_accuracy_vs_latency(ax, results: dict) -> None:
    models = results["models"]
    for m in models:
        acc = m["accuracy"]["whole_word"]
        lat = m["latency_ms"]["median"]
        lo, hi = acc["ci95"]
        ax.errorbar([lat], [100 * acc["accuracy"]], yerr=[[100 * (acc["accuracy"] - lo)], [100 * (hi - acc["accuracy"])]],
                    fmt="o", capsize=4, label=m["name"])
        ax.annotate(m["name"], (lat, 100 * acc["accuracy"]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel(f"latency, median ms (1 x {results['settings']['seq_len']} tokens)")
    ax.set_ylabel("whole-word accuracy % (95% CI)")
    ax.set_title(f"accuracy vs latency ({results['settings']['dataset']}, n={models[0]['accuracy']['n']})")
