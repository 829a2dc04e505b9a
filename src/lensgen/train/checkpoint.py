"""Checkpoints that lose nothing: model, EMA, optimizer (sharded, via torch.distributed.checkpoint),
plus step, sampler position and every RNG state, written atomically.

Layout: OUT/checkpoints/step-00000100/ holds the DCP shards, `meta.json` (step, rank 0's sampler state,
config), `rank{r}.json` (each rank's own sampler state: a streamed rank reads its own shards) and
`rng-rank{r}.pt`. Each is first written to `step-00000100.tmp/` and renamed by rank 0 once all ranks
are done, then `latest` (a one-line file) is replaced atomically: a crash mid-save leaves the previous
checkpoint intact and `latest` pointing at it.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from lensgen.io import atomic_write_json, atomic_write_text
from lensgen.train.parallel import DistInfo, barrier


def rng_state() -> dict[str, Any]:
    """The global generators' states (the trainer's own draws are seeded per step and need none)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _app_state(model, optimizer, ema, extra: dict[str, dict] | None = None) -> dict[str, Any]:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd, "ema": ema.state_dict(), **(extra or {})}


def save_checkpoint(root: Path, step: int, model, optimizer, ema, meta: dict, info: DistInfo, keep: int = 2,
                    rank_meta: dict | None = None, extra: dict[str, dict] | None = None) -> Path:
    """`meta` is written once (by rank 0); `rank_meta` by every rank, and wins over `meta` at load.
    `extra`: more named state dicts of tensors (an RL run's old policy and reference), loaded back in place."""
    root = Path(root)
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    dcp.save(_app_state(model, optimizer, ema, extra), checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rng-rank{info.rank}.pt")
    if rank_meta is not None:
        atomic_write_json(tmp / f"rank{info.rank}.json", rank_meta)
    barrier(info)
    if info.is_main:
        atomic_write_json(tmp / "meta.json", {"step": step, **meta})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(root / "latest", final.name + "\n")
        for old in sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(info)
    return final


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the metric lines of steps after `step` from a metrics.jsonl: a killed run logged them after its last
    checkpoint, and the resumed run will log them again."""
    path = Path(path)
    if path.is_file():
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(line + "\n" for line in kept))


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `latest` names; where that file is missing or names a checkpoint that is gone (removed
    by hand), the newest complete one, so that a resume never silently starts again from step 0."""
    pointer = Path(root) / "latest"
    if pointer.is_file():
        path = Path(root) / pointer.read_text().strip()
        if (path / "meta.json").is_file():
            return path
    complete = sorted(p for p in Path(root).glob("step-*")
                      if not p.name.endswith(".tmp") and (p / "meta.json").is_file())
    return complete[-1] if complete else None


def load_checkpoint(path: Path, model, optimizer, ema, info: DistInfo, extra: dict[str, dict] | None = None) -> dict:
    """Restore everything in place (the tensors of `extra` too); returns meta (step, this rank's sampler state, ...)."""
    state = _app_state(model, optimizer, ema, extra)
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    ema.load_state_dict(state["ema"])
    rng_file = Path(path) / f"rng-rank{info.rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    meta = json.loads((Path(path) / "meta.json").read_text())
    rank_file = Path(path) / f"rank{info.rank}.json"
    if rank_file.is_file():
        meta.update(json.loads(rank_file.read_text()))
    return meta
