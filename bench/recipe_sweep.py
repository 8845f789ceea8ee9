"""Quick recipe comparison: whole-word accuracy on the first N Austen items and the mean KL(first model || model)
of the next-token distribution at the last position, for several SavedModels scored in one process.

    .venv/bin/python bench/recipe_sweep.py 100 FP32_DIR QUANT_DIR [QUANT_DIR ...]

A cheaper, interval-free companion of `python -m tfquant.benchmark`, used to choose the default recipe.
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from tfquant.data import load_eval_items, tokenizer_for  # noqa: E402
from tfquant.modeldir import locate  # noqa: E402


def main():
    n, paths = int(sys.argv[1]), sys.argv[2:]
    tok, _ = tokenizer_for(locate(paths[0]))
    items = load_eval_items("austen")[:n]
    fns = [tf.saved_model.load(p).signatures["serving_default"] for p in paths]
    correct = np.zeros((len(paths), n), bool)
    kl = np.zeros((len(paths), n))
    t = time.time()
    for i, it in enumerate(items):
        ctx = tok.encode(it.context, add_special_tokens=False)
        tgt = tok.encode(" " + it.target, add_special_tokens=False)
        ids = tf.constant([ctx + tgt[:-1]], tf.int32)
        outs = [f(input_ids=ids, attention_mask=tf.ones_like(ids))["logits"].numpy()[0] for f in fns]
        ref = tf.nn.log_softmax(outs[0][-1]).numpy()
        for j, logits in enumerate(outs):
            correct[j, i] = list(logits[len(ctx) - 1:].argmax(-1)) == tgt
            q = tf.nn.log_softmax(logits[-1]).numpy()
            kl[j, i] = float((np.exp(ref) * (ref - q)).sum())
    print(f"{n} items, {(time.time() - t) / n:.2f} s per item for {len(paths)} models")
    for j, p in enumerate(paths):
        print(f"{p}: whole-word acc {correct[j].mean():.3f}  mean KL vs first {kl[j].mean():.4f}")


if __name__ == "__main__":
    main()
