"""Intel Neural Compressor as a peer row (``--compare inc`` / ``inc-smoothquant``): the fp32 model quantized by
INC in a child process (``tfquant.benchmark.inc``), then benchmarked like every other model."""
from __future__ import annotations

import os
import tempfile

from .children import quantize_with_inc
from .log import Log
from .models import ModelSpec, make_spec

INC_CALIB_SAMPLES, INC_CALIB_SEQ_LEN = 16, 128  # the same windows tfquant.quantize calibrates on by default
# --compare values: INC's default static int8, and INC with its SmoothQuant pass first (alpha 0.5, INC's default).
INC_VARIANTS = {
    "inc": {"row": "INC int8", "kind": "INC 3.x StaticQuantConfig() int8", "smooth_alpha": None},
    "inc-smoothquant": {"row": "INC int8 + SmoothQuant", "smooth_alpha": 0.5,
                        "kind": "INC 3.x [SmoothQuantConfig(alpha=0.5), StaticQuantConfig()] int8"},
}


def run_inc_peer(fp32: ModelSpec, workdir: str, taken: set, log: Log, variant: str = "inc") -> ModelSpec:
    """Quantize ``fp32`` with INC into ``workdir``; the spec of the result, with fp32's tokenizer and limit."""
    dst = os.path.join(workdir, variant)
    log_path = os.path.join(tempfile.gettempdir(), f"tfquant-bench-{variant}-{os.getpid()}.log")
    seq_len = min(INC_CALIB_SEQ_LEN, fp32.max_positions or INC_CALIB_SEQ_LEN)
    log(f"quantizing {fp32.name} with Intel Neural Compressor, {variant} (log: {log_path}) ...")
    result = quantize_with_inc(fp32.path, dst, seq_len, variant, log_path)
    spec = make_spec(dst, f"--compare {variant}", "peer", INC_VARIANTS[variant]["row"], taken)
    spec.tokenizer = fp32.tokenizer
    spec.max_positions, spec.max_positions_source = fp32.max_positions, fp32.max_positions_source
    spec.kind = INC_VARIANTS[variant]["kind"]
    spec.extra["inc"] = result
    return spec
