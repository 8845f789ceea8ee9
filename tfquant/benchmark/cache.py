"""The fp32 per-item result cache: the fp32 model is the same in every comparison, so its accuracy run (the
slowest part of a benchmark) is done once per model, data set and TF version."""
from __future__ import annotations

import hashlib
import os
import re
from typing import Dict, Optional

from ..fsutil import atomic_write_json, cache_root, sha256_file
from ..modeldir import read_json
from .log import warn

CACHE_VERSION = 1  # bump when the scoring changes: older cache files are then not read


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
            atomic_write_json(self.path, {"fingerprint": self.fingerprint, "items": self.entries}, indent=None)
            self.dirty = False
        except OSError as exc:  # a cache that cannot be written is not worth failing the run for
            warn(f"could not write the result cache {self.path}: {exc}")
