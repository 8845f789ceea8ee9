"""One model in one process, driven over stdin/stdout by bench/peers/run.py, so every runtime runs in its own venv
and the driver can time them round by round under one machine load.

    PYTHON bench/peers/worker.py tf|ort|llamacpp MODEL [--threads SPEC]

Reads one JSON command per line on stdin and answers one line ``@@ {json}`` on stdout (other lines are a library's
chatter and are ignored by the driver):
  {"cmd": "info"}                           -> size on disk, load time, runtime version, threads
  {"cmd": "prefill", "ids": [...], "reps": n} -> ms of each full forward over the ids (batch 1)
  {"cmd": "decode", "ids": [...], "steps": n} -> prefill, then n greedy steps with the KV cache: ms of each step
  {"cmd": "predict", "windows": [[...], ...]} -> the argmax of the last position's logits, per window
  {"cmd": "quit"}                            -> peak RSS of this process
Only the standard library and numpy are imported here; each backend imports its own runtime.
"""
import argparse
import json
import os
import sys
import time

import numpy as np


def _ms(t0):
    return 1000.0 * (time.perf_counter() - t0)


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def peak_rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


class TFBackend:
    """A tfquant or plain TF SavedModel: its serving_default (prefill) and decode signatures."""

    def __init__(self, path, threads):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        sys.path.insert(0, root)
        from tfquant.machine import apply_threads

        self.threads = apply_threads(threads) or "TF default"
        from tfquant.generate import Generator, Sampler

        self.gen, self.sampler = Generator(path), Sampler()
        import tensorflow as tf

        self.version = f"tensorflow {tf.__version__}"

    def logits_last(self, ids):
        return self.gen.step(np.asarray([ids], np.int32))[0]

    def decode(self, ids, steps):
        out = self.gen.generate(list(ids), steps + 1, self.sampler)
        return out.step_ms, out.new_ids[:steps]  # the tokens fed to the timed steps, as the other backends


class ORTBackend:
    """bench/peers/export_onnx.py's graph: input_ids, attention_mask, past_key_values (may be empty) -> logits, present."""

    def __init__(self, path, threads):
        import onnxruntime as ort

        inter, intra = (int(x) for x in (threads or "1,2").split(","))
        opts = ort.SessionOptions()
        opts.inter_op_num_threads, opts.intra_op_num_threads = inter, intra
        self.threads = f"inter_op {inter}, intra_op {intra}"
        self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        shape = self.sess.get_inputs()[2].shape  # [layers, 2, batch, kv heads, past, head dim]
        self.empty = np.zeros((shape[0], 2, 1, shape[3], 0, shape[5]), np.float32)
        self.version = f"onnxruntime {ort.__version__}"

    def _run(self, ids, past):
        total = ids.shape[1] + past.shape[4]
        return self.sess.run(None, {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64),
                                    "past_key_values": past})

    def logits_last(self, ids):
        return self._run(np.asarray([ids], np.int64), self.empty)[0][0, -1]

    def decode(self, ids, steps):
        logits, past = self._run(np.asarray([ids], np.int64), self.empty)
        token, ms, new = int(logits[0, -1].argmax()), [], []
        for _ in range(steps):
            new.append(token)
            t0 = time.perf_counter()
            logits, past = self._run(np.asarray([[token]], np.int64), past)
            ms.append(_ms(t0))
            token = int(logits[0, -1].argmax())
        return ms, new


class LlamaCppBackend:
    """A GGUF through llama-cpp-python: its prefill computes the last position's logits only."""

    def __init__(self, path, threads):
        from llama_cpp import Llama, __version__

        n = int(threads or os.cpu_count())
        self.threads = f"n_threads {n}, n_threads_batch {n}"
        self.llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=n, n_threads_batch=n, verbose=False)
        self.version = f"llama-cpp-python {__version__}"

    def _last(self):
        # without logits_all the wrapper keeps no scores; the context holds the last position's row
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),)).copy()

    def logits_last(self, ids):
        self.llm.reset()
        self.llm.eval(list(ids))
        return self._last()

    def decode(self, ids, steps):
        self.llm.reset()
        self.llm.eval(list(ids))
        token, ms, new = int(self._last().argmax()), [], []
        for _ in range(steps):
            new.append(token)
            t0 = time.perf_counter()
            self.llm.eval([token])
            ms.append(_ms(t0))
            token = int(self._last().argmax())
        return ms, new


BACKENDS = {"tf": TFBackend, "ort": ORTBackend, "llamacpp": LlamaCppBackend}


def answer(obj):
    sys.stdout.write("@@ " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("backend", choices=sorted(BACKENDS))
    p.add_argument("model")
    p.add_argument("--threads")
    args = p.parse_args()
    t0 = time.perf_counter()
    model = BACKENDS[args.backend](args.model, args.threads)
    load_s = (time.perf_counter() - t0)
    for line in sys.stdin:
        cmd = json.loads(line)
        what = cmd["cmd"]
        if what == "info":
            answer({"size_bytes": _size(args.model), "load_s": round(load_s, 2), "version": model.version,
                    "threads": model.threads})
        elif what == "prefill":
            ms = []
            for _ in range(cmd["reps"]):
                t0 = time.perf_counter()
                model.logits_last(cmd["ids"])
                ms.append(_ms(t0))
            answer({"ms": ms})
        elif what == "decode":
            ms, tokens = model.decode(cmd["ids"], cmd["steps"])
            answer({"ms": ms, "tokens": tokens})
        elif what == "predict":
            answer({"top1": [int(np.argmax(model.logits_last(w))) for w in cmd["windows"]]})
        elif what == "quit":
            answer({"peak_rss_mb": peak_rss_mb()})
            return
        else:
            answer({"error": f"unknown command {what!r}"})


if __name__ == "__main__":
    main()
