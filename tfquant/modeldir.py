"""What a user's model folder holds, read from the file system alone (no TensorFlow).

Users hand tfquant the folder they have, and that is not always the SavedModel itself:

* a SavedModel folder (``saved_model.pb`` in it);
* what ``save_pretrained(DIR, saved_model=True)`` writes: ``DIR/saved_model/<version>/`` beside
  ``DIR/config.json`` (and often the tokenizer files, if the user saved them there too);
* a ``tfquant.quantize`` output: ``OUT/model/`` beside ``OUT/report.json``.

``locate`` finds the SavedModel in each case and remembers the folders between it and what was
given, because that is where the model's tokenizer and ``config.json`` live.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from .errors import UserError

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
CONFIG_FILES = ("tfquant_model.json", "config.json")  # ours (prepare_model) first, then Hugging Face's
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
TFQUANT_MODEL_SUBDIR = "model"  # tfquant.quantize writes OUT/model/ beside OUT/report.json
REPORT_JSON = "report.json"


def is_saved_model(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in SAVED_MODEL_FILES)


@dataclass(frozen=True)
class ModelFolder:
    given: str                   # what the user passed
    saved_model: str             # absolute path of the folder holding saved_model.pb
    note: Optional[str] = None   # how the SavedModel was found, when it was not ``given`` itself

    @property
    def search_path(self) -> Tuple[str, ...]:
        """The SavedModel folder and its parents up to the given folder: where side files are looked for."""
        top = os.path.abspath(self.given)
        out, here = [], self.saved_model
        while True:
            out.append(here)
            if here == top or os.path.dirname(here) == here or not here.startswith(top):
                break
            here = os.path.dirname(here)
        return tuple(out)

    def find(self, *names: str) -> Optional[str]:
        """The first file or folder called one of ``names`` along ``search_path``."""
        for folder in self.search_path:
            for name in names:
                candidate = os.path.join(folder, name)
                if os.path.exists(candidate):
                    return candidate
        return None


def _versions(folder: str) -> list:
    """Numeric version subfolders of ``folder`` that are SavedModels, lowest first (TF Serving's layout)."""
    if not os.path.isdir(folder):
        return []
    found = [d for d in os.listdir(folder) if d.isdigit() and is_saved_model(os.path.join(folder, d))]
    return sorted(found, key=int)


def _child_saved_models(folder: str) -> list:
    return sorted(d for d in os.listdir(folder) if is_saved_model(os.path.join(folder, d)))


def locate(path: str, flag: str = "--input_model") -> ModelFolder:
    """The SavedModel a user means by ``path``; UserError when there is none, or several and no rule to choose."""
    if not path:
        raise UserError(f"{flag} needs a folder")
    if not os.path.exists(path):
        raise UserError(f"{flag} {path} does not exist")
    if not os.path.isdir(path):
        raise UserError(f"{flag} {path} is not a folder (pass a SavedModel folder)")
    if is_saved_model(path):
        return ModelFolder(path, os.path.abspath(path))
    ours = os.path.join(path, TFQUANT_MODEL_SUBDIR)
    if is_saved_model(ours):
        return ModelFolder(path, os.path.abspath(ours))
    hf = os.path.join(path, "saved_model")
    versions = _versions(hf)
    if versions:
        chosen = versions[-1]
        note = None if len(versions) == 1 else (f"{hf} holds versions {', '.join(versions)}; using the highest, {chosen}")
        return ModelFolder(path, os.path.abspath(os.path.join(hf, chosen)), note)
    if is_saved_model(hf):
        return ModelFolder(path, os.path.abspath(hf))
    children = _child_saved_models(path)
    if os.path.isdir(hf):  # non-numeric versions: no rule says which is newest
        children += [f"saved_model/{d}" for d in _child_saved_models(hf)]
    if len(children) == 1:
        return ModelFolder(path, os.path.abspath(os.path.join(path, children[0])), f"using {children[0]}/ in {path}")
    if children:
        raise UserError(f"{flag} {path} holds several SavedModels ({', '.join(children)}): pass the one to use")
    raise UserError(f"{flag} {path} is not a TensorFlow SavedModel folder (no saved_model.pb in it, in "
                    f"{TFQUANT_MODEL_SUBDIR}/ or in saved_model/<version>/)")


# ----- side files ------------------------------------------------------------------------------
def read_json(path: str) -> Optional[dict]:
    """A JSON object from ``path``, or None when it is missing or not a JSON object."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def conversion_report(folder: ModelFolder) -> Optional[dict]:
    """``report.json`` of a tfquant.quantize output (beside ``model/``), if the SavedModel is one."""
    if os.path.basename(folder.saved_model) != TFQUANT_MODEL_SUBDIR:
        return None
    return read_json(os.path.join(os.path.dirname(folder.saved_model), REPORT_JSON))


def _positions_in(directory: str) -> Tuple[Optional[int], Optional[str]]:
    for fname in CONFIG_FILES:
        data = read_json(os.path.join(directory, fname))
        for cfg in (data.get("config"), data) if data else ():
            if isinstance(cfg, dict):
                for key in POSITION_KEYS:
                    if isinstance(cfg.get(key), int) and cfg[key] > 0:
                        return cfg[key], os.path.join(directory, fname)
    return None, None


def max_positions(folder: ModelFolder, report: Optional[dict] = None) -> Tuple[Optional[int], Optional[str]]:
    """(position limit, the file it was read from) beside the model, or beside its input model."""
    for directory in folder.search_path:
        limit, source = _positions_in(directory)
        if limit is not None:
            return limit, source
    if report and isinstance(report.get("input_model"), str) and os.path.isdir(report["input_model"]):
        return max_positions(ModelFolder(report["input_model"], os.path.abspath(report["input_model"])))
    return None, None


def own_tokenizer(folder: ModelFolder) -> Optional[str]:
    """The model's own tokenizer: a ``tokenizer/`` folder along the search path, or tokenizer files
    saved beside the model (``tokenizer.save_pretrained(DIR)`` next to ``save_pretrained(DIR)``)."""
    sub = folder.find("tokenizer")
    if sub and os.path.isdir(sub):
        return sub
    for directory in folder.search_path:
        if any(os.path.isfile(os.path.join(directory, f)) for f in TOKENIZER_FILES):
            return directory
    return None
