"""KL(fp32 || quantized) of next-token distributions with only one group of MatMuls quantized.

How the default outlier recipe was chosen (README "Real weights"): one switchable QDQ graph
(tfquant.fallback.make_switchable), masks that quantize every op, only the ops whose name contains a
group key (q_proj, down_proj, ...), or all but them; optionally one layer at a time.

    .venv/bin/python bench/group_sensitivity.py FP32_SAVED_MODEL [WINDOWS=4] ['{"outlier_threshold": 3.0, ...}']
    (the JSON takes QuantPolicy.from_flags arguments; LAYERS=30 also prints one KL per layer)
"""
import json
import os
import sys

import numpy as np

import _bootstrap  # noqa: F401

from tfquant.convert import open_input, prepare_qdq
from tfquant.policy import QuantPolicy
from tfquant.fallback import make_switchable

GROUPS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def main():
    src = sys.argv[1]
    windows = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    flags = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    policy = QuantPolicy.from_flags(**flags)  # the int8 policy; prepare_qdq stops before lowering
    prep = prepare_qdq(open_input(src), policy, observer="mse", progress=False)
    ops = prep.quantized_ops
    sw = make_switchable(prep.graph, ops, prep.model, prep.model.captures, prep.batches[:windows])

    def mask(key, quantized=True):
        """1 (quantized) for the ops whose name contains ``key``, 0 for the others; the reverse if not ``quantized``."""
        return np.array([1.0 if (key in o) == quantized else 0.0 for o in ops], np.float32)

    print(f"{len(ops)} ops; KL all quantized {sw.kl(np.ones(len(ops), np.float32)):.4f}", flush=True)
    for g in GROUPS:
        only, all_but = sw.kl(mask(g)), sw.kl(mask(g, quantized=False))
        print(f"{g:10s} only {only:.4f}  all-but {all_but:.4f}", flush=True)
    for layer in range(int(os.environ.get("LAYERS", "0"))):
        print(f"layer {layer:2d} only {sw.kl(mask(f'layers.{layer}/')):.4f}", flush=True)


if __name__ == "__main__":
    main()
