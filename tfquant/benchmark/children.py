"""The fresh processes the benchmark starts, and how they report back.

Two measurements need a process of their own: a model's peak RSS (a process that loads only that model,
``tfquant.benchmark.memory``) and INC's quantization (whose peak memory is large, and freed when its process
ends, ``tfquant.benchmark.inc``).  Each child prints one ``RESULT_MARKER`` line of JSON on stdout; a
``UserError`` in a child ends it with the usual ``error: ...`` line and exit status 2.

The child modules are run with ``python -m`` and never imported by the benchmark itself: ``runpy`` warns
about, and executes twice, a module that its package has already imported.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import List, Optional

from ..errors import UserError
from .log import warn
from .models import ModelSpec

RESULT_MARKER = "TFQUANT_PROBE_RESULT "
MEMORY_PROBE_TIMEOUT_S = 1800
# the folder holding the tfquant package: a child of an uninstalled checkout imports the same tfquant
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def emit_result(result: dict) -> None:
    """In a child: the one stdout line its parent reads back."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


def result_in(lines: List[str]) -> Optional[dict]:
    """The last result line of a child's output, or None."""
    for line in reversed(lines):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    return None


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def measure_memory(spec: ModelSpec, seq_len: int, signature: str) -> dict:
    """Peak RSS of ``spec`` loaded alone, with one 1 x ``seq_len`` forward; ``peak_rss_mb`` None on failure."""
    cmd = [sys.executable, "-m", "tfquant.benchmark.memory", spec.path, "--seq_len", str(seq_len),
           "--signature", signature]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=MEMORY_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"peak_rss_mb": None, "error": "memory probe timed out"}
    result = result_in(proc.stdout.splitlines())
    if result is not None:
        return result
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    warn(f"memory probe of {spec.name} failed (exit {proc.returncode}): {tail}")
    return {"peak_rss_mb": None, "error": f"exit {proc.returncode}: {tail[:300]}"}


def quantize_with_inc(src: str, dst: str, seq_len: int, variant: str, log_path: str) -> dict:
    """INC's int8 of the SavedModel ``src`` into ``dst`` (``INC_VARIANTS[variant]``), calibrated on ``seq_len``
    token windows; the child's output goes to ``log_path``, kept only when it fails.  Returns the child's
    result (seconds, calibration, peak RSS)."""
    cmd = [sys.executable, "-m", "tfquant.benchmark.inc", src, dst, "--seq_len", str(seq_len), "--variant", variant]
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        lines = [ln for ln in fh.read().splitlines() if ln.strip()]
    result = result_in(lines)
    if proc.returncode != 0 or result is None or not os.path.isfile(os.path.join(dst, "saved_model.pb")):
        last = lines[-1] if lines else "no output"
        if last.startswith("error: "):  # a UserError in the child (INC missing)
            raise UserError(last[len("error: "):])
        raise RuntimeError(f"INC quantization failed (exit {proc.returncode}): {last[:300]} (full log: {log_path})")
    os.remove(log_path)
    return result
