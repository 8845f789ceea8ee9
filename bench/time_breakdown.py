"""Issue 5: where the wall time of one forward pass goes, fp32 vs converted, on a 2-core CPU.

Op-time sums mislead on a small CPU: stock TF runs two ops at once (inter-op threads = cores), so
an op that overlaps another costs less wall time than its duration, and the gaps where no op runs
(executor overhead) cost wall time without showing up in any op.  This script profiles each model
with the TF profiler and splits every run's wall time into

  * "alone":   time when exactly one op runs (the op is on the critical path, nothing hides it),
  * "shared":  time when two or more run (each gets its share of that wall time),
  * "idle":    time when none runs,

per category of op (int8 kernels, activation quantize, outlier side path, ...), for the median of
the profiled runs.  Before that it times the models round robin without the profiler (which adds
5-20%), so the ratio printed is the one the benchmark would see.

    .venv/bin/python bench/time_breakdown.py [NAME=DIR ...] [--seq_len 128] [--rounds 30]

The committed results (bench/results/smollm2_time_breakdown.json) come from
    .venv/bin/python bench/time_breakdown.py fp32=/tmp/tfquant-smollm2/fp32 \
        "tfquant default=/tmp/tfquant-smollm2/tfquant-default/model" \
        "bare int8 kernels=/tmp/tfquant-smollm2/ladder/step3/model"
(the last from bench/speed_ladder.py: no per-token scales, no outlier channels, per-tensor weights).
"""
import argparse
import collections
import glob
import os
import re
import statistics
import tempfile
import time

import _bootstrap  # noqa: F401

from tfquant.fsutil import atomic_write_json

ROOT = _bootstrap.ROOT

DEFAULT_MODELS = ["fp32=/tmp/tfquant-smollm2/fp32", "tfquant default=/tmp/tfquant-smollm2/tfquant-default/model"]
PROFILED_RUNS = 9


def category(op_name: str, op_type: str) -> str:
    """Group a profiled op by what it is for; tfquant's own nodes are recognised by their names (names.py)."""
    if "_fp32_outlier_channels" in op_name:
        return "outlier side path (fp32)"
    if "_per_token_scale" in op_name:
        return "per-token scales"
    if "QuantizedMatMul" in op_type:
        return "int8 MatMul kernels" + (" (lm_head)" if "lm_head" in op_name else "")
    if "QuantizeV2" in op_type:
        return "activation quantize"
    if op_type == "Mul" and op_name.rsplit("/", 1)[-1].startswith("MatMul"):
        return "per-channel rescale"  # the lowered kernel's output Mul keeps the MatMul's name
    if op_type in ("MatMul", "_MklMatMul", "_MklNativeMatMul", "_MklFusedMatMul", "_MklNativeFusedMatMul"):
        return "fp32 MatMul" + (" (lm_head)" if "lm_head" in op_name else "")
    if "BatchMatMul" in op_type or op_type in ("_MklSoftmax", "Softmax"):
        return "attention BatchMatMul + Softmax"
    if "rotary" in op_name or op_type in ("Cos", "Sin", "Einsum", "_MklEinsum", "Range"):
        return "rotary tables"
    if "Transpose" in op_type:
        return "transposes"
    if op_type in ("Shape", "Pack", "Prod", "GatherV2", "StridedSlice", "ConcatV2", "Reshape", "ExpandDims",
                   "Tile", "Fill", "BroadcastTo", "Cast", "Neg"):
        return "slicing, concat, shape ops"
    return "elementwise and norms"


def wall_latency(models, ids, rounds):
    """Median and p25 ms per forward, round robin, with the benchmark's own timer."""
    from tfquant.benchmark import timed_round_robin

    return [{"median_ms": round(statistics.median(t), 1), "p25_ms": round(float(sorted(t)[len(t) // 4]), 1)}
            for t in timed_round_robin(models, ids, warmup=3, iters=rounds)]


def profile(model, ids, logdir):
    """Profile PROFILED_RUNS forwards of an already loaded (and warmed up) model; returns the xplane file."""
    import tensorflow as tf

    tf.profiler.experimental.start(logdir)
    for _ in range(PROFILED_RUNS):
        model.forward(ids).numpy()
    tf.profiler.experimental.stop()
    return glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]


def breakdown(xplane_path):
    """Per category: wall ms per run alone / shared, plus idle; from the op events of the profile."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as fh:
        space.ParseFromString(fh.read())
    ops, runs = [], []
    for plane in space.planes:
        meta = plane.event_metadata
        for line in plane.lines:
            base = line.timestamp_ns * 1000
            for ev in line.events:
                name = meta[ev.metadata_id].name
                if ":" not in name or name.startswith("__"):
                    continue
                op_name, op_type = name.rsplit(":", 1)
                start = base + ev.offset_ps
                if op_type == "Run":
                    runs.append((start, start + ev.duration_ps))
                elif op_type != "Process" and re.match(r"^_?[A-Z]", op_type):
                    ops.append((start, start + ev.duration_ps, category(op_name, op_type)))
    # LoadedModel.forward runs small eager ops (the attention mask) beside each call: keep the model calls only
    runs = sorted(sorted(runs, key=lambda r: r[1] - r[0])[-PROFILED_RUNS:])
    per_run = [collections.Counter() for _ in runs]  # category -> wall ps, plus "idle"
    for r, (run_start, run_end) in enumerate(runs):
        inside = [i for i, (s, e, _) in enumerate(ops) if s < run_end and e > run_start]
        events = sorted([(max(ops[i][0], run_start), 1, i) for i in inside] +
                        [(min(ops[i][1], run_end), -1, i) for i in inside])
        active, last = set(), run_start
        for t, kind, i in events + [(run_end, 0, -1)]:
            dt = t - last
            if dt > 0:
                if not active:
                    per_run[r]["idle"] += dt
                elif len(active) == 1:
                    per_run[r][("alone", ops[next(iter(active))][2])] += dt
                else:
                    for j in active:
                        per_run[r][("shared", ops[j][2])] += dt / len(active)
            if kind == 1:
                active.add(i)
            elif kind == -1:
                active.discard(i)
            last = max(last, t)
    # The median run (by wall time) keeps one slow run (a noisy neighbour, a page fault) out of the table.
    walls = [e - s for s, e in runs]
    median_run = per_run[sorted(range(len(runs)), key=lambda r: walls[r])[len(runs) // 2]]
    ms = 1e9  # picoseconds -> milliseconds
    cats = sorted({k[1] for k in median_run if k != "idle"},
                  key=lambda c: -(median_run[("alone", c)] + median_run[("shared", c)]))
    rows = {c: {"alone_ms": round(median_run[("alone", c)] / ms, 2), "shared_ms": round(median_run[("shared", c)] / ms, 2)}
            for c in cats}
    total = sum(median_run.values()) / ms
    idle = median_run["idle"]
    return {"profiled_wall_ms": round(total, 1), "idle_ms": round(idle / ms, 2), "categories": rows}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=DEFAULT_MODELS,
                   help="SavedModel dirs as NAME=DIR or DIR; the first is the baseline")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "smollm2_time_breakdown.json"))
    args = p.parse_args()

    import numpy as np

    from tfquant.benchmark import LoadedModel, ModelSpec
    from tfquant.modeldir import locate
    from tfquant.machine import describe as machine_info

    named = [m.split("=", 1) if "=" in m else [os.path.basename(m.rstrip("/")), m] for m in args.models]
    names, args.models = [n for n, _ in named], [d for _, d in named]
    models = [LoadedModel(ModelSpec(name=n, role="", folder=locate(p))) for n, p in named]
    ids = np.random.RandomState(0).randint(0, 49000, (1, args.seq_len)).astype(np.int32)
    walls = wall_latency(models, ids, args.rounds)
    result = {"seq_len": args.seq_len, "rounds": args.rounds, "profiled_runs": PROFILED_RUNS, "models": {}}
    for name, path, model, wall in zip(names, args.models, models, walls):
        with tempfile.TemporaryDirectory() as logdir:
            row = {"wall": wall, "ratio_vs_first": round(wall["median_ms"] / walls[0]["median_ms"], 3)}
            row.update(breakdown(profile(model, ids, logdir)))
        row["path"] = path
        result["models"][name] = row
    result["machine"] = machine_info()
    result["date"] = time.strftime("%Y-%m-%d")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    atomic_write_json(args.output, result, indent=1)

    cats = []
    for row in result["models"].values():
        cats += [c for c in row["categories"] if c not in cats]
    print(f"wall ms per run, 1 x {args.seq_len} tokens, profiled (alone + shared share); idle = no op running")
    print(f"{'':34s}" + "".join(f"{n[:22]:>24s}" for n in names))
    for c in cats + ["idle", "profiled total", "unprofiled median (ratio)"]:
        cells = []
        for row in result["models"].values():
            if c == "idle":
                cells.append(f"{row['idle_ms']:.1f}")
            elif c == "profiled total":
                cells.append(f"{row['profiled_wall_ms']:.1f}")
            elif c.startswith("unprofiled"):
                cells.append(f"{row['wall']['median_ms']:.1f} ({row['ratio_vs_first']:.3f})")
            else:
                r = row["categories"].get(c)
                cells.append(f"{r['alone_ms']:.1f} + {r['shared_ms']:.1f}" if r else "-")
        print(f"{c:34s}" + "".join(f"{x:>24s}" for x in cells))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
