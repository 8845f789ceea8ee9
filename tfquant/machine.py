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
