"""Issue 12 benchmark: every preset scheme against fp32 in one run of `python -m tfquant.benchmark`.

    .venv/bin/python bench/schemes.py --model smollm2 [--samples 600] [--work DIR]
    .venv/bin/python bench/schemes.py --model gptj-1024            # random weights: latency and size only

Prepares the fp32 model (tools/prepare_model.py), quantizes it with each preset in configs/recipes/ (w8a8 is
tfquant's default), adds SmolLM2's own GGUF blocks kept as they are (prepare_model.py --keep_quantized), and
runs the benchmark over all of them: whole-word accuracy with the paired interval against fp32, size on disk,
peak RSS while scoring, latency 1x128 (round robin), the greedy continuation of `def hello_world():`.
Writes bench/results/schemes_<model>.json and .png; the README table is made from the JSON by --table.
"""
import argparse
import json
import os
import subprocess
import sys

import _bootstrap  # noqa: F401

ROOT = _bootstrap.ROOT
PRESETS = ("w8a8", "w8a8-dynamic", "w8a16", "w4a16-g32", "w4a16-g32-asym", "w4a16-g128", "bf16", "fp16", "mxfp6")
SOURCES = {"smollm2": ["--gguf", "default"], "gptj-1024": ["--config", os.path.join(ROOT, "configs", "gptj-1024.yaml")]}


def run(cmd):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def prepare(model: str, work: str) -> list:
    py = sys.executable
    fp32 = os.path.join(work, "fp32")
    if not os.path.isfile(os.path.join(fp32, "saved_model.pb")):
        run([py, "tools/prepare_model.py", *SOURCES[model], "--output_dir", fp32, "--overwrite"])
    outs = []
    for name in PRESETS:
        out = os.path.join(work, name)
        if not os.path.isfile(os.path.join(out, "report.json")):
            run([py, "-m", "tfquant.quantize", "--input_model", fp32, "--output_dir", out, "--config", name,
                 "--quiet", "--overwrite"])
        outs.append(out)
    if model == "smollm2":
        kept = os.path.join(work, "gguf-kept")
        if not os.path.isfile(os.path.join(kept, "report.json")):
            run([py, "tools/prepare_model.py", *SOURCES[model], "--keep_quantized", "--output_dir", kept, "--overwrite"])
        outs.append(kept)
    return [fp32] + outs


def table(path: str, speed: str = None) -> str:
    """The README table (markdown) from a results JSON; ``speed``: a later run's JSON whose size, peak RSS
    and latency replace the first one's (each run's ratios are against its own fp32)."""
    with open(path) as f:
        d = json.load(f)
    if speed:
        with open(speed) as f:
            later = {m["name"]: m for m in json.load(f)["models"]}
        for m in d["models"]:
            if m["name"] in later:
                m.update({k: later[m["name"]][k] for k in ("size_mb", "size_ratio", "memory", "latency_ms",
                                                            "latency_ratio")})
    rows = ["| scheme | whole-word acc | vs fp32 (95% CI) | size | size ratio | peak RSS | RSS ratio | latency 1x128 | "
            "latency ratio | `def hello_world():` |", "|---|---|---|---|---|---|---|---|---|---|"]
    fp32 = d["models"][0]
    for m in d["models"]:
        acc = m.get("accuracy", {}).get("whole_word")
        diff = m.get("paired_vs_fp32", {}).get("whole_word") if m is not fp32 else None
        name = m["name"]
        mem = m.get("memory", {}).get("peak_rss_mb")
        text = (m.get("generation") or {}).get("text", "").replace("\n", "\\n").replace("|", "\\|")[:48]
        rows.append("| {} | {} | {} | {:.1f} MB | {:.3f}x | {} | {} | {:.1f} ms | {:.2f}x | `{}` |".format(
            name, f"{acc['accuracy']:.3f}" if acc else "-",
            f"{100 * diff['diff']:+.1f} pt [{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}]" if diff else "-",
            m["size_mb"], m["size_ratio"], f"{mem:.0f} MB" if mem else "-",
            f"{mem / fp32['memory']['peak_rss_mb']:.2f}x" if mem and fp32.get("memory") else "-",
            m["latency_ms"]["median"], m["latency_ratio"], text))
    return "\n".join(rows)


def plot(path: str, png: str) -> None:
    """Whole-word accuracy (with its interval) against size on disk, latency ratio as each point's label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        d = json.load(f)
    fig, ax = plt.subplots(figsize=(8, 5))
    for m in d["models"]:
        acc = m.get("accuracy", {}).get("whole_word")
        if not acc:
            continue
        y, (lo, hi) = 100 * acc["accuracy"], acc["ci95"]
        ax.errorbar(m["size_mb"], y, yerr=[[y - 100 * lo], [100 * hi - y]], fmt="o", capsize=3)
        ax.annotate(f"{m['name']}\n{m['latency_ratio']:.2f}x latency", (m["size_mb"], y), textcoords="offset points",
                    xytext=(5, 5), fontsize=7)
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("whole-word accuracy, % (95% interval)")
    env = d.get("environment", {})
    ax.set_title(f"SmolLM2-135M, {d['settings'].get('n_items')} items ({d['settings'].get('dataset')}); "
                 f"{env.get('cpu_model', '')}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SOURCES), default="smollm2")
    p.add_argument("--work", help="where the models go (default /tmp/tfquant-schemes-<model>)")
    p.add_argument("--samples", type=int, default=600)
    p.add_argument("--table", metavar="JSON", help="print the README table of a results file and stop")
    p.add_argument("--speed", metavar="JSON", help="with --table: take size, peak RSS and latency from this run")
    p.add_argument("--plot", metavar="JSON", help="write <JSON stem>_plot.png (accuracy vs size) and stop")
    args, extra = p.parse_known_args()
    if args.table:
        print(table(args.table, args.speed))
        return
    if args.plot:
        plot(args.plot, args.plot.removesuffix(".json") + "_plot.png")
        return
    work = args.work or f"/tmp/tfquant-schemes-{args.model}"
    os.makedirs(work, exist_ok=True)
    models = prepare(args.model, work)
    out = os.path.join(ROOT, "bench", "results", f"schemes_{args.model}")
    cmd = [sys.executable, "-m", "tfquant.benchmark", "--input_model", models[0], "--quiet",
           "--output", out + ".json", "--chart", out + ".png"]
    for m in models[1:]:
        cmd += ["--quantized_model", m]
    cmd += ["--samples", str(args.samples)] if args.model == "smollm2" else ["--no_accuracy"]
    run(cmd + extra)
    if args.model == "smollm2":
        plot(out + ".json", out + "_plot.png")
    print(table(out + ".json"))


if __name__ == "__main__":
    main()
