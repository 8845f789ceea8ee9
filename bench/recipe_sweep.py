"""Quick recipe comparison: whole-word accuracy on the first N Austen items and the mean KL(first model || model)
of the next-token distribution at the last position, for several SavedModels scored in one process.

    .venv/bin/python bench/recipe_sweep.py 100 FP32_DIR QUANT_DIR [QUANT_DIR ...]

A cheaper, interval-free companion of `python -m tfquant.benchmark`, used to choose the default recipe: the
same tokenization and whole-word metric (tfquant.benchmark.scoring), the first model's tokenizer for all.
"""
import sys
import time

import numpy as np

import _bootstrap  # noqa: F401

from tfquant.benchmark import LoadedModel, ModelSpec
from tfquant.benchmark.scoring import tokenize_items
from tfquant.data import load_eval_items, tokenizer_for
from tfquant.divergence import log_softmax, mean_kl
from tfquant.modeldir import locate


def main():
    n, paths = int(sys.argv[1]), sys.argv[2:]
    tok, _ = tokenizer_for(locate(paths[0]))
    titems = tokenize_items(load_eval_items("austen")[:n], tok)
    models = [LoadedModel(ModelSpec(name=p, role="", folder=locate(p))) for p in paths]
    correct = np.zeros((len(paths), len(titems)), bool)
    kl = np.zeros((len(paths), len(titems)))
    t = time.time()
    for i, item in enumerate(titems):
        target = item.ids[-item.n_target:]
        outs = [m.forward(np.asarray([item.ids[:-1]], np.int32)).numpy()[0] for m in models]
        ref = log_softmax(outs[0][-1])
        for j, logits in enumerate(outs):
            correct[j, i] = list(logits[-item.n_target:].argmax(-1)) == target
            kl[j, i] = mean_kl([ref], [log_softmax(logits[-1])])
    print(f"{len(titems)} items, {(time.time() - t) / len(titems):.2f} s per item for {len(paths)} models")
    for j, p in enumerate(paths):
        print(f"{p}: whole-word acc {correct[j].mean():.3f}  mean KL vs first {kl[j].mean():.4f}")


if __name__ == "__main__":
    main()
