"""What the CPU offers int8 kernels: benchmark results are only comparable between machines with the same ISA.

oneDNN's u8 x s8 MatMul runs on AVX2 (vpmaddubsw, int16 intermediates that saturate, hence 7-bit weights by
default), AVX-512 VNNI (vpdpbusd, int32 accumulation, ~2x faster) or AMX. Results files record which one ran.
"""
from typing import Dict, List, Optional

INT8_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_model() -> Optional[str]:
    return _cpuinfo_field("model name")


def cpu_flags() -> List[str]:
    """Every ISA flag /proc/cpuinfo lists, sorted ([] when unknown)."""
    return sorted(set((_cpuinfo_field("flags") or "").split()))


def cpu_int8_flags() -> List[str]:
    """The ISA flags from /proc/cpuinfo that matter for int8 GEMM, in a fixed order ([] when unknown)."""
    flags = set(cpu_flags())
    return [f for f in INT8_ISA_FLAGS if f in flags]


def describe() -> Dict[str, object]:
    flags = cpu_int8_flags()
    best = ("AMX" if "amx_int8" in flags else "AVX-512 VNNI" if "avx512_vnni" in flags
            else "AVX-VNNI" if "avx_vnni" in flags else "AVX-512 (no VNNI)" if "avx512f" in flags
            else "AVX2" if "avx2" in flags else "unknown")
    return {"cpu_model": cpu_model(), "int8_isa_flags": flags, "best_int8_isa": best}


def _cpuinfo_field(name: str) -> Optional[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# ----- TF thread pools ---------------------------------------------------------------------------
# Measured on SmolLM2-135M, 2 cores (bench/threads.py -> bench/results/threads_smollm2.json): a decode step is
# fastest with one thread per op and the cores running ops side by side (inter = cores, intra = 1: fp32 46.8
# vs 53.5 ms with TF's default, int8 33.5 vs 40.9), while a 128-token prefill of the fp32 model wants TF's
# default (254.7 vs 273.5 ms).  So generation defaults to "decode" and the benchmark keeps TF's default.
THREAD_PRESETS = {"default": None, "decode": "cores,1"}


def parse_threads(spec: str) -> Optional[tuple]:
    """(inter, intra) from 'default', 'decode' or 'INTER,INTRA' (0 = TF's choice); None for TF's default."""
    import os

    from .errors import UserError

    value = THREAD_PRESETS.get(spec, spec)
    if value is None:
        return None
    try:
        inter, intra = (os.cpu_count() or 1 if part.strip() == "cores" else int(part) for part in value.split(","))
    except ValueError:
        raise UserError(f"--threads takes 'default', 'decode' or INTER,INTRA (two integers >= 0), got {spec!r}") from None
    if inter < 0 or intra < 0:
        raise UserError(f"--threads takes thread counts >= 0, got {spec!r}")
    return inter, intra


def apply_threads(spec: str) -> Dict[str, int]:
    """Set TF's inter/intra-op thread pools (``parse_threads``) before TF runs anything; returns what was set."""
    pools = parse_threads(spec)
    if pools is None:
        return {}
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(pools[0])
    tf.config.threading.set_intra_op_parallelism_threads(pools[1])
    return {"inter_op": pools[0], "intra_op": pools[1]}
