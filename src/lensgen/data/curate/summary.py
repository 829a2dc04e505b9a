"""The summary of a run, computed from its manifest alone: counts per step, score quantiles,
resolution and aspect-ratio histograms, and the fill of the 27 training buckets; plus its chart.

Count conservation is checked here: every input is either kept or rejected by exactly one step,
and each step's input is the previous step's output.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lensgen.data.buckets import BucketTable
from lensgen.data.curate.steps import SCORE_COLUMNS, STEP_ORDER, StepPlan
from lensgen.io import atomic_write_bytes

SHORT_SIDE_EDGES = [0, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096]
ASPECT_EDGES = [round(x, 2) for x in np.arange(-2.0, 2.01, 0.25)]  # log2(width / height)
QUANTILE_SAMPLE = 200_000


def _hist(values: np.ndarray, edges: list[float]) -> np.ndarray:
    clipped = np.clip(values, edges[0], edges[-1] - 1e-9) if len(values) else values
    return np.histogram(clipped, bins=edges)[0].astype(np.int64)


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    return {"p5": round(float(p5), 4), "p50": round(float(p50), 4), "p95": round(float(p95), 4)}


def _numbers(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)


def summarize(out_dir: str | Path, plans: list[StepPlan], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Counts and histograms add up part by part, so memory stays flat at any scale; score quantiles
    come from an even stride sample of at most QUANTILE_SAMPLE rows."""
    parts = sorted((Path(out_dir) / "manifest").glob("part-*.parquet"))
    rows_total = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    stride = max(1, math.ceil(rows_total / QUANTILE_SAMPLE))
    score_columns = [SCORE_COLUMNS[p.name] for p in plans if p.name != "corrupt"]
    columns = ["rejected_by", "verdict", "width", "height", "source_tag", *score_columns]
    buckets = BucketTable()
    counts = {name: 0 for name in STEP_ORDER}
    total = kept = 0
    hist = {k: np.zeros(len(e) - 1, np.int64) for k, e in
            (("short_all", SHORT_SIDE_EDGES), ("short_kept", SHORT_SIDE_EDGES),
             ("aspect_all", ASPECT_EDGES), ("aspect_kept", ASPECT_EDGES))}
    fill = np.zeros(len(buckets), np.int64)
    tags: dict[str, int] = {}
    kept_tags: dict[str, int] = {}
    samples: dict[str, list[np.ndarray]] = {c: [] for c in score_columns}
    for part in parts:
        table = pq.read_table(part, columns=columns)
        total += table.num_rows
        for name in table.column("rejected_by").to_pylist():
            if name is not None:
                counts[name] += 1
        kept_mask = np.asarray(pc.equal(table.column("verdict"), "kept").to_numpy(zero_copy_only=False), bool)
        kept += int(kept_mask.sum())
        width, height = _numbers(table, "width"), _numbers(table, "height")
        decoded = ~np.isnan(width)
        short = np.minimum(width, height)
        aspect = np.log2(np.where(decoded, width, 1) / np.where(decoded, height, 1))
        for key, values, edges in (("short_all", short[decoded], SHORT_SIDE_EDGES),
                                   ("short_kept", short[kept_mask], SHORT_SIDE_EDGES),
                                   ("aspect_all", aspect[decoded], ASPECT_EDGES),
                                   ("aspect_kept", aspect[kept_mask], ASPECT_EDGES)):
            hist[key] += _hist(values, edges)
        if kept_mask.any():
            fill += np.bincount(buckets.nearest_indices(height[kept_mask], width[kept_mask]), minlength=len(buckets))
        for tag, is_kept in zip(table.column("source_tag").to_pylist(), kept_mask):
            tags[tag] = tags.get(tag, 0) + 1
            kept_tags[tag] = kept_tags.get(tag, 0) + int(is_kept)
        for column in score_columns:
            samples[column].append(_numbers(table, column)[::stride])
    steps, remaining = [], total
    for plan in plans:
        column = SCORE_COLUMNS[plan.name]
        entry = {"step": plan.name, "status": plan.status, "rule": plan.rule, "score": column,
                 "in": remaining, "rejected": counts[plan.name], "out": remaining - counts[plan.name]}
        if column in samples:
            entry["quantiles"] = _quantiles(np.concatenate(samples[column]) if samples[column] else np.zeros(0))
        steps.append(entry)
        remaining -= counts[plan.name]
    summary = {
        "inputs": total,
        "kept": kept,
        "rejected": total - kept,
        "conservation_ok": kept + sum(counts.values()) == total and remaining == kept,
        "steps": steps,
        "kept_by_source_tag": {t: kept_tags[t] for t in sorted(tags)},
        "short_side_hist": {"edges": SHORT_SIDE_EDGES, "all": hist["short_all"].tolist(),
                            "kept": hist["short_kept"].tolist()},
        "aspect_log2_hist": {"edges": ASPECT_EDGES, "all": hist["aspect_all"].tolist(),
                             "kept": hist["aspect_kept"].tolist()},
        "buckets": [{"index": b.index, "base": b.base, "height": b.height, "width": b.width,
                     "count": int(fill[b.index])} for b in buckets],
    }
    summary.update(extra or {})
    return summary


def write_chart(summary: dict[str, Any], path: str | Path) -> None:
    """A 2x2 PNG: rejections per step, shorter-side and aspect histograms, bucket fill."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    names = [s["step"] for s in summary["steps"]]
    colors = ["tab:red" if s["status"] == "ran" else "lightgrey" for s in summary["steps"]]
    ax.bar(names, [s["rejected"] for s in summary["steps"]], color=colors)
    ax.set_title(f"rejections per step ({summary['kept']} of {summary['inputs']} kept; grey: not run)")
    ax.tick_params(axis="x", rotation=45)
    for ax, key, title, fmt in (
        (axes[0][1], "short_side_hist", "shorter side (px)", lambda e: f"{e:g}"),
        (axes[1][0], "aspect_log2_hist", "aspect ratio log2(W/H)", lambda e: f"{e:+.2f}"),
    ):
        hist = summary[key]
        labels = [fmt(e) for e in hist["edges"][:-1]]
        x = np.arange(len(labels))
        ax.bar(x - 0.2, hist["all"], width=0.4, label="decoded")
        ax.bar(x + 0.2, hist["kept"], width=0.4, label="kept")
        ax.set_xticks(x, labels, rotation=45)
        ax.set_title(title)
        ax.legend()
    ax = axes[1][1]
    buckets = summary["buckets"]
    ratios = len(buckets) // 3 if len(buckets) % 3 == 0 else len(buckets)
    grid = np.asarray([b["count"] for b in buckets]).reshape(-1, ratios)
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_yticks(range(grid.shape[0]), [str(buckets[r * ratios]["base"]) for r in range(grid.shape[0])])
    ax.set_xticks(range(ratios), [f"{b['width']}x{b['height']}" for b in buckets[-ratios:]], rotation=45)
    for (r, c), v in np.ndenumerate(grid):
        ax.text(c, r, str(v), ha="center", va="center", color="white" if v < grid.max() / 2 else "black", fontsize=8)
    ax.set_title("kept images per training bucket (size class x WxH)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def format_table(summary: dict[str, Any]) -> str:
    """The per-step counts as a fixed-width text table (what the CLI prints)."""
    lines = [f"{'step':<11} {'status':<9} {'in':>9} {'rejected':>9} {'out':>9}  rule"]
    for s in summary["steps"]:
        status = s["status"] if len(s["status"]) <= 9 else "skipped"
        lines.append(f"{s['step']:<11} {status:<9} {s['in']:>9} {s['rejected']:>9} {s['out']:>9}  {s['rule']}")
        if s["status"].startswith("skipped"):
            lines.append(f"{'':<11} ({s['status']})")
    rate = summary.get("images_per_s")
    lines.append(f"kept {summary['kept']} of {summary['inputs']} inputs"
                 + (f"; {rate:.1f} images/s" if rate and math.isfinite(rate) else "")
                 + ("" if summary["conservation_ok"] else "  [COUNTS DO NOT ADD UP]"))
    return "\n".join(lines)
