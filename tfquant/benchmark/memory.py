"""python -m tfquant.benchmark.memory MODEL --seq_len N [--signature S]: the memory probe.

Loads one SavedModel in this fresh process, runs one 1 x N forward and prints its peak RSS as the result line
``tfquant.benchmark.children`` reads (``measure_memory`` starts it once per model).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from ..errors import run_cli
from ..modeldir import conversion_report, locate
from ..savedmodel import SIGNATURE_KEY
from .children import emit_result
from .models import ModelSpec, apply_runtime_env, label, runtime_env
from .report import MB
from .runner import LoadedModel


def probe_memory(model_dir: str, seq_len: int, signature: str) -> dict:
    """Load one model, run one 1 x seq_len forward (random ids below 256), report the peak RSS in MB."""
    import resource

    import numpy as np

    folder = locate(model_dir, "MODEL")
    apply_runtime_env([runtime_env(folder.saved_model, conversion_report(folder))])
    import tensorflow  # noqa: F401  (imported here, after the env vars, so its RSS is the baseline)

    rss_import = _current_rss_mb()
    model = LoadedModel(ModelSpec(name=label(folder.saved_model), role="probe", folder=folder), signature)
    rss_loaded = _current_rss_mb()
    ids = np.random.RandomState(0).randint(0, 256, size=(1, seq_len)).astype(np.int32)
    model.forward(ids)
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    hwm = status_mb("VmHWM")
    # ru_maxrss survives execve on Linux: a child forked from the (large) benchmark process starts with the
    # parent's high-water mark.  VmHWM belongs to the new address space, so it is this model's own peak.
    return {"peak_rss_mb": hwm if hwm is not None else ru_maxrss, "source": "VmHWM" if hwm is not None else "ru_maxrss",
            "ru_maxrss_mb": ru_maxrss, "rss_after_tf_import_mb": rss_import, "rss_after_load_mb": rss_loaded,
            "seq_len": seq_len}


def status_mb(field_name: str) -> Optional[float]:
    """A memory field of /proc/self/status (VmHWM: this process's peak RSS) in MB; None where there is none."""
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tfquant.benchmark.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="SavedModel folder (or a folder holding one)")
    p.add_argument("--seq_len", type=int, required=True, help="tokens of the one forward")
    p.add_argument("--signature", default=SIGNATURE_KEY)
    args = p.parse_args(argv)
    emit_result(probe_memory(args.model, args.seq_len, args.signature))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
