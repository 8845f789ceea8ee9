"""The models a benchmark run compares, as found on disk: where each SavedModel is, what it is, and which
environment variables it needs.  Nothing here imports TensorFlow (the variables must be set before it is)."""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

from ..modeldir import ModelFolder, conversion_report, locate, max_positions, own_tokenizer
from .log import warn


@dataclass
class ModelSpec:
    """One row of the comparison: the model's folder and what was learned about it without loading it."""

    name: str
    role: str  # "fp32" | "quantized" | "peer"
    folder: ModelFolder  # where the SavedModel is, and where its tokenizer and config are looked for
    tokenizer: Optional[str] = None  # tokenizer folder or tokenizer.json; None: GPT-2 BPE
    report: Optional[dict] = None
    max_positions: Optional[int] = None
    max_positions_source: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict)  # runtime env vars this model needs
    kind: str = "fp32"
    extra: dict = field(default_factory=dict)  # more keys for this model's entry in the results JSON

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


def apply_runtime_env(envs: Sequence[Dict[str, str]]) -> Dict[str, str]:
    """Set the union of the models' env vars (they must be set before TensorFlow is imported); returns what
    this call set.  A value the user already exported wins, with a warning."""
    wanted = {}
    for env in envs:
        wanted.update(env)
    applied = {}
    for key, value in wanted.items():
        if os.environ.get(key) == value:
            continue
        if key in os.environ:
            warn(f"keeping {key}={os.environ[key]} from the environment (a model asks for {value})")
            continue
        if "tensorflow" in sys.modules:
            warn(f"TensorFlow is already imported; {key}={value} may not take effect")
        os.environ[key] = value
        applied[key] = value
    return applied


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


def label(model_dir: str) -> str:
    """A row name from the folder: ``OUT`` for a tfquant output's ``OUT/model``, else the folder's own name."""
    base = os.path.basename(model_dir.rstrip(os.sep))
    if base == "model":
        base = os.path.basename(os.path.dirname(model_dir.rstrip(os.sep))) or base
    return base or model_dir


def make_spec(given: str, flag: str, role: str, name: Optional[str], taken: set) -> ModelSpec:
    """The spec of the model the user named with ``flag``; ``name`` (default: from the folder) is made unique
    against ``taken``, which gets it added."""
    folder = locate(given, flag)
    report = conversion_report(folder)
    limit, src = max_positions(folder, report)
    env = runtime_env(folder.saved_model, report)
    name = name or label(folder.saved_model)
    base, i = name, 2
    while name in taken:
        name, i = f"{base} #{i}", i + 1
    taken.add(name)
    return ModelSpec(name=name, role=role, folder=folder, tokenizer=own_tokenizer(folder), report=report,
                     max_positions=limit, max_positions_source=src, env=env, kind=_model_kind(report, env, role))
