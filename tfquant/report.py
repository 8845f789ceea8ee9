"""The conversion report: what changed in the graph, what was quantized, what was skipped and why."""
from __future__ import annotations

from collections import Counter
from typing import Dict

from .fsutil import atomic_write_json


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def write_json(path: str, report: dict) -> None:
    atomic_write_json(path, report, indent=2, sort_keys=True)


def format_summary(report: dict) -> str:
    """The human-readable block printed at the end of ``tfquant.quantize``."""
    lines = []
    before: Dict[str, int] = report["op_histogram"]["before"]
    after: Dict[str, int] = report["op_histogram"]["after"]
    lines.append("== tfquant summary ==")
    lines.append(f"policy: itex_mode={report['policy']['itex_mode']} performance_only={report['policy']['performance_only']}"
                 f" format={report['policy']['output_format']} per_channel={report['policy']['weight_per_channel']}")
    by_type = Counter(q["op_type"] for q in report["quantized"])
    cands = Counter(q["op_type"] for q in report["quantized"]) + Counter(s["op_type"] for s in report["skipped"])
    lines.append("quantized ops: " + ", ".join(f"{t} {by_type.get(t, 0)}/{n}" for t, n in sorted(cands.items())))
    if report.get("lowered"):
        low = report["lowered"]
        lines.append(f"lowered to int8 kernels: {low['count']} MatMul -> {low['kernel']}"
                     f" ({low['weight_granularity']} weight scales)")
        rounding = low.get("weight_rounding") or {}
        if rounding.get("method") == "gptq":
            lines.append(f"weight rounding: GPTQ on {rounding['gptq_ops']} MatMuls, "
                         f"{len(rounding['nearest'])} rounded to nearest (report.json says why)")
    wo = report.get("weight_only")
    if wo:
        lines.append(f"weight-only: {wo['count']} weights stored as {wo['format']}, {len(wo['fallbacks'])} as "
                     f"int8 per channel (group size does not divide), decode: {wo['decode']}")
        for s in wo.get("decoded_in_slices", []):
            k, n = s["shape"]
            lines.append(f"  decoded in {-(-n // s['columns_per_slice'])} column slices (--decode_chunk_mb): "
                         f"{s['op']} [{k}, {n}]")
    split = [q for q in report["quantized"] if q.get("outlier_channels")]
    if split:
        n = sum(len(q["outlier_channels"]) for q in split)
        lines.append(f"outlier channels kept in fp32: {n} channels in {len(split)} ops (side MatMuls; rest int8)")
    per_token = [q["op"] for q in report["quantized"] if q.get("per_token")]
    if per_token:
        lines.append(f"per-token activation scales: {len(per_token)} ops (token spread > "
                     f"{report['policy']['token_outlier_threshold']:g})")
    fused = [q for q in report["quantized"] if q.get("fused_from")]
    if fused:
        lines.append(f"fused: {sum(len(q['fused_from']) for q in fused)} MatMuls into {len(fused)} kernels")
    if (report.get("weights_as_const") or {}).get("reason"):
        lines.append(f"weights: {report['weights_as_const']['reason']}")
    if report.get("smoothing"):
        lines.append(f"SmoothQuant: {len(report['smoothing'])} activations smoothed (alpha {report['policy']['smooth_alpha']})")
    fb = report.get("fallback")
    if fb:
        kl = fb["kl_history"]
        lines.append(f"measured fallback: {len(fb['ops'])} ops kept in fp32, KL {kl[0]['kl']:.4f} -> {kl[-1]['kl']:.4f}"
                     f" (budget {fb['budget_kl']})")
    reasons = Counter((s["op_type"], s["reason"]) for s in report["skipped"])
    if reasons:
        lines.append("skipped:")
        for (op_type, reason), n in sorted(reasons.items()):
            lines.append(f"  {n:4d} x {op_type}: {reason}")
    ranges = report.get("ranges", {})
    if ranges:
        widest = max(ranges.items(), key=lambda kv: kv[1]["max"] - kv[1]["min"])
        lines.append(f"calibrated tensors: {len(ranges)}; widest range [{widest[1]['min']:.3g}, {widest[1]['max']:.3g}]"
                     f" at {widest[0]}")
    lines.append("op histogram (before -> after), changed ops:")
    for op in sorted(set(before) | set(after)):
        if before.get(op, 0) != after.get(op, 0):
            lines.append(f"  {op:40s} {before.get(op, 0):6d} -> {after.get(op, 0):6d}")
    lines.append(f"nodes: {sum(before.values())} -> {sum(after.values())}")
    budget = report.get("op_budget")
    if budget:
        lines.append("op budget: " + " -> ".join(
            f"{b['pass']} {b['nodes']}" + (f" ({b['delta']:+d})" if "delta" in b else "") for b in budget))
    sizes = report.get("size_bytes", {})
    if sizes:
        lines.append(f"size on disk: {human_bytes(sizes['input'])} -> {human_bytes(sizes['output'])}"
                     f" ({sizes['output'] / max(sizes['input'], 1):.2f}x)")
    t = report.get("timings_s", {})
    if t:
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    return "\n".join(lines)
