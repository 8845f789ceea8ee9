"""python -m tfquant.benchmark.inc SRC DST --seq_len N [--variant inc|inc-smoothquant]: INC's quantization.

INC 3.x static int8 of the SavedModel SRC into the SavedModel folder DST, calibrated on 16 windows of N tokens
of the shipped calibration text, tokenized with SRC's own tokenizer; prints the time taken and the peak RSS as
the result line ``tfquant.benchmark.children`` reads.  Run in its own process because INC's peak memory is
large and only given back when the process ends.
"""
from __future__ import annotations

import argparse
import sys
import time

from ..errors import UserError, run_cli
from ..modeldir import locate
from .children import emit_result
from .memory import status_mb
from .peers import INC_CALIB_SAMPLES, INC_VARIANTS


class _IncCalibLoader:
    """What INC's TF calibration loop iterates: (feeds by input name, label) pairs, one window per batch."""

    batch_size = 1

    def __init__(self, windows):
        self.windows = windows

    def __len__(self):
        return len(self.windows)

    def __iter__(self):
        import numpy as np

        for w in self.windows:
            yield {"input_ids": w, "attention_mask": np.ones_like(w)}, None


def inc_quantize(src: str, dst: str, seq_len: int, variant: str = "inc") -> dict:
    try:
        from neural_compressor.tensorflow import SmoothQuantConfig, StaticQuantConfig, quantize_model
    except ImportError:
        raise UserError("--compare inc needs neural-compressor: pip install .[inc]") from None
    from ..data import default_calibration_text_path, read_text, token_windows, tokenizer_for

    tokenizer, _ = tokenizer_for(locate(src))
    windows = token_windows(read_text(default_calibration_text_path()), tokenizer, INC_CALIB_SAMPLES, seq_len)
    alpha = INC_VARIANTS[variant]["smooth_alpha"]
    configs = ([SmoothQuantConfig(alpha=alpha)] if alpha is not None else []) + [StaticQuantConfig()]
    t0 = time.perf_counter()
    q_model = quantize_model(src, configs if len(configs) > 1 else configs[0], calib_dataloader=_IncCalibLoader(windows),
                             calib_iteration=len(windows))
    q_model.save(dst)
    return {"seconds": time.perf_counter() - t0, "calib_samples": len(windows), "calib_seq_len": seq_len,
            "peak_rss_mb": status_mb("VmHWM")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tfquant.benchmark.inc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="the fp32 SavedModel folder")
    p.add_argument("dst", help="where INC's SavedModel is written")
    p.add_argument("--seq_len", type=int, required=True, help="tokens per calibration window")
    p.add_argument("--variant", default="inc", choices=sorted(INC_VARIANTS))
    args = p.parse_args(argv)
    emit_result(inc_quantize(args.src, args.dst, args.seq_len, args.variant))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
