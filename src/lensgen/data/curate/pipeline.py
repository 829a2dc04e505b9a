"""A curation run, end to end and resumable: plan, score, deduplicate, write, summarise.

1. plan: cut the input into work units (`inputs.plan_units`), saved as OUT/plan.json;
2. score: steps 1-8 and the near-duplicate embedding, per unit, on the executor;
3. dedup: step 9 over all survivors, on the driver (exact, or SemDeDup-style at scale);
4. write: verdicts, the kept images as OUT/shards/shard-NNNNNN.tar, the manifest parts;
5. summary: OUT/summary.json and OUT/summary.png.

Each phase skips the units whose part file exists, so a re-run after a crash redoes at most the
units that were in flight. OUT/run.json records the config and input fingerprints; resuming with a
different config or input is refused (use a new OUT, or `restart=True` to clear this run's files).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from tqdm import tqdm

from lensgen.data.curate.config import CurateConfig
from lensgen.data.curate.executors import make_executor
from lensgen.data.curate.inputs import Plan, plan_units
from lensgen.data.curate.manifest import DEDUP_SCHEMA, part_path, read_part, write_part
from lensgen.data.curate.steps import StepPlan, dedup_embedder_name, plan_steps
from lensgen.data.curate.summary import summarize, write_chart
from lensgen.errors import UserError
from lensgen.io import atomic_write_json

OWNED = ("stage", "dedup", "manifest", "shards", "plan.json", "run.json", "summary.json", "summary.png")


def _prepare_out(out: Path, config: CurateConfig, plan: Plan, restart: bool) -> None:
    run_file = out / "run.json"
    if restart:
        for name in OWNED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    identity = {"config_fingerprint": config.fingerprint(), "input_fingerprint": plan.fingerprint()}
    if run_file.exists():
        saved = json.loads(run_file.read_text())
        if saved.get("config_fingerprint") != identity["config_fingerprint"]:
            raise UserError(f"{out} holds a run made with a different config; use a new OUT, "
                            "or pass --restart to discard it")
        if saved.get("input_fingerprint") != identity["input_fingerprint"]:
            raise UserError(f"{out} holds a run over a different input (files added, removed or renamed "
                            f"since); use a new OUT, or pass --restart to discard it")
        return
    if any((out / name).exists() for name in ("stage", "manifest", "shards")):
        raise UserError(f"{out} holds shards or a manifest but no run.json: not a curation run of ours; "
                        "choose another OUT")
    atomic_write_json(out / "plan.json", plan.to_dict())
    atomic_write_json(run_file, {**identity, "config": config.to_dict(), "input": plan.root,
                                 "format": plan.format, "units": len(plan.units)})


def run_dedup(out: Path, plan: Plan, config: CurateConfig, progress: bool = True) -> dict[str, Any]:
    """Step 9 over the survivors of every unit; writes OUT/dedup/part-*.parquet then _SUCCESS.json."""
    from lensgen.data.curate.steps.dedup import find_duplicates

    done = out / "dedup" / "_SUCCESS.json"
    if done.exists():
        return json.loads(done.read_text())
    start = time.time()
    ids, units, pixels, blocks = [], [], [], []
    for unit in tqdm(plan.units, desc="dedup: load embeddings", unit="unit", disable=not progress):
        table = read_part(part_path(out, "stage", unit["index"]), ["id", "width", "height", "rejected_by", "embedding"])
        table = table.filter(pc.and_(pc.is_null(table["rejected_by"]), pc.is_valid(table["embedding"])))
        if table.num_rows == 0:
            continue
        ids += table["id"].to_pylist()
        units += [unit["index"]] * table.num_rows
        pixels += (pc.multiply(table["width"].cast("int64"), table["height"].cast("int64"))).to_pylist()
        flat = table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        blocks.append(flat.astype(np.float16).reshape(table.num_rows, -1))  # as stored: half the memory
    embeddings = np.concatenate(blocks) if blocks else np.zeros((0, 1), np.float16)
    result = find_duplicates(embeddings, np.asarray(pixels, np.int64), config.dedup)
    by_unit: dict[int, list[dict[str, Any]]] = {u["index"]: [] for u in plan.units}
    for i, (sample_id, unit) in enumerate(zip(ids, units)):
        sim = result.similarity[i]
        by_unit[unit].append({
            "id": sample_id,
            "dup_similarity": None if np.isnan(sim) else float(sim),
            "dup_of": ids[result.dup_of[i]] if result.dup_of[i] >= 0 else None,
        })
    for unit, rows in by_unit.items():
        write_part(part_path(out, "dedup", unit), rows, DEDUP_SCHEMA)
    info = {"embedder": dedup_embedder_name(config), "mode": result.mode, "clusters": result.clusters,
            "candidates": len(ids), "pairs_above_threshold": result.pairs,
            "duplicates": int((result.dup_of >= 0).sum()), "seconds": round(time.time() - start, 2)}
    atomic_write_json(done, info)
    return info


def _run_phase(executor, name: str, units: list[dict[str, Any]], progress: bool) -> int:
    images = 0
    tasks = [{"phase": name, "unit": u} for u in units]
    with tqdm(total=len(tasks), desc=name, unit="unit", disable=not progress) as bar:
        for result in executor.map(tasks):
            images += result["inputs"]
            bar.update(1)
            bar.set_postfix(images=images)
    return images


def run_curation(input_path: str | Path, out_dir: str | Path, config: CurateConfig,
                 restart: bool = False) -> dict[str, Any]:
    """Curate `input_path` into `out_dir`; returns the summary (also written to OUT/summary.json)."""
    plans: list[StepPlan] = plan_steps(config)  # refuses required steps without weights before any work
    plan = plan_units(input_path, config.input.format, config.input.extensions, config.run.shard_size)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _prepare_out(out, config, plan, restart)
    progress = config.run.progress
    start = time.time()
    executor = make_executor(config, plan.root, str(out))
    try:
        todo = [u for u in plan.units if not part_path(out, "stage", u["index"]).exists()]
        scored = _run_phase(executor, "score", todo, progress)
        score_seconds = time.time() - start
        dedup_info = None
        if any(p.name == "dedup" and p.runs for p in plans):
            dedup_info = run_dedup(out, plan, config, progress)
        todo = [u for u in plan.units if not part_path(out, "manifest", u["index"]).exists()]
        _run_phase(executor, "write", todo, progress)
    finally:
        executor.close()
    seconds = time.time() - start
    extra = {
        "input": plan.root, "format": plan.format, "units": len(plan.units),
        "executor": config.run.executor, "workers": getattr(executor, "workers", None),
        "dedup": dedup_info, "seconds": round(seconds, 2),
        "scored_this_run": scored,
        "images_per_s": round(scored / score_seconds, 2) if scored and score_seconds > 0 else None,
    }
    summary = summarize(out, plans, extra)
    atomic_write_json(out / "summary.json", summary)
    write_chart(summary, out / "summary.png")
    return summary
