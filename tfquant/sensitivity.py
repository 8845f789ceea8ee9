"""python -m tfquant.sensitivity: rank the quantized ops of a model by how much quantizing only them changes
the next-token distribution (KL on calibration windows); the analysis itself is tfquant.fallback."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .errors import UserError, run_cli
from .fsutil import atomic_write_json
from .policy import DEFAULT_MAX_OUTLIER_FRACTION, DEFAULT_OUTLIER_THRESHOLD, DEFAULT_TOKEN_OUTLIER_THRESHOLD
from .savedmodel import SIGNATURE_KEY


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tfquant.sensitivity",
                                description="Rank quantized ops by how much quantizing only them changes the output.")
    p.add_argument("--input_model", required=True, help="as in tfquant.quantize")
    p.add_argument("--signature", default=SIGNATURE_KEY, help="as in tfquant.quantize")
    p.add_argument("--tokenizer", help="as in tfquant.quantize")
    p.add_argument("--calib_dataset", help="as in tfquant.quantize")
    p.add_argument("--data_dir", help="as in tfquant.quantize")
    p.add_argument("--samples", type=int, default=2, help="calibration windows used for the KL (default 2)")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--calib_samples", type=int, default=16)
    p.add_argument("--calib_text")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--outlier_threshold", type=float, default=DEFAULT_OUTLIER_THRESHOLD, help="as in tfquant.quantize")
    p.add_argument("--token_outlier_threshold", type=float, default=DEFAULT_TOKEN_OUTLIER_THRESHOLD, help="as in tfquant.quantize")
    p.add_argument("--max_outlier_fraction", type=float, default=DEFAULT_MAX_OUTLIER_FRACTION, help="as in tfquant.quantize")
    p.add_argument("--observer", choices=("minmax", "percentile", "mse", "kl"), default="mse",
                   help="as in tfquant.quantize (default mse, its default)")
    p.add_argument("--weight_granularity", choices=("per_channel", "per_tensor"), default="per_channel")
    p.add_argument("--output", help="write the full ranking as JSON")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.samples <= 0 or args.top <= 0:
        raise UserError("--samples and --top must be positive")
    from .convert import open_input, prepare_qdq
    from .fallback import make_switchable, rank_ops
    from .policy import QuantPolicy

    policy = QuantPolicy.from_flags(output_format="qdq", outlier_threshold=args.outlier_threshold,
                                    token_outlier_threshold=args.token_outlier_threshold,
                                    max_outlier_fraction=args.max_outlier_fraction,
                                    weight_granularity=args.weight_granularity)
    inp = open_input(args.input_model, signature=args.signature, tokenizer=args.tokenizer,
                     calib_dataset=args.calib_dataset, data_dir=args.data_dir, calib_text=args.calib_text,
                     calib_samples=args.calib_samples, seq_len=args.seq_len)
    prep = prepare_qdq(inp, policy, observer=args.observer, progress=not args.quiet)
    sw = make_switchable(prep.graph, prep.quantized_ops, prep.model, prep.model.captures, prep.batches[: args.samples])
    ranking = rank_ops(sw, progress=not args.quiet)
    full = sw.kl(np.ones(len(sw.ops), np.float32))
    print(f"KL(fp32 || all {len(sw.ops)} ops quantized) = {full:.4f}")
    print(f"{'rank':>4}  {'KL only this op':>16}  op")
    for i, row in enumerate(ranking[: args.top], 1):
        print(f"{i:4d}  {row['kl_only_this_op']:16.5f}  {row['op']}")
    if args.output:
        atomic_write_json(args.output, {"kl_all_quantized": full, "ranking": ranking})
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
