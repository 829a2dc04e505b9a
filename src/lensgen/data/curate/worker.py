"""The work done on one unit, by whichever executor: score it (steps 1-8 + embeddings), or write it.

`Worker.run(task)` is the only entry point executors call; a task is a small dict
(`{"phase": "score" | "write", "unit": {...}}`) and so is its result, so tasks travel to processes
and Ray actors as they are. Each phase writes its outputs atomically and last of all its part
file, which marks the unit done.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from lensgen.data.curate.config import CurateConfig
from lensgen.data.curate.inputs import read_unit
from lensgen.data.curate.manifest import (
    MANIFEST_SCHEMA,
    SCORE_FIELDS,
    STAGE_SCHEMA,
    part_path,
    read_part,
    write_part,
)
from lensgen.data.curate.steps import plan_steps
from lensgen.data.curate.steps.base import Item
from lensgen.data.curate.steps.corrupt import decode_all
from lensgen.data.shards import shard_path, write_shard

SCORE_COLUMNS = [f.name for f in SCORE_FIELDS]
FORMAT_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def describe_unit(unit: dict[str, Any]) -> str:
    if "shard" in unit:
        return f"work unit {unit['index']} (input shard {unit['shard']})"
    files = unit["files"]
    return f"work unit {unit['index']} ({len(files)} files, {files[0]} .. {files[-1]})"


class Worker:
    def __init__(self, config: CurateConfig, plan_root: str, out_dir: str, restore_threads: bool = True):
        self.config, self.root, self.out = config, plan_root, Path(out_dir)
        self.plans = plan_steps(config)
        self._steps = None
        self._saved_threads: int | None = None
        self._restore_threads = restore_threads

    def _load_steps(self):
        if self._steps is None:
            from lensgen.data.curate.steps import build_steps

            if "torch" in sys.modules or self.config.clip_path or self.config.watermark.model_path:
                import torch

                self._saved_threads = torch.get_num_threads()
                torch.set_num_threads(self.config.run.threads_per_worker)
            self._steps = build_steps(self.config, self.plans, self.config.run.threads_per_worker)
        return self._steps

    def close(self) -> None:
        if self._saved_threads is not None and self._restore_threads:
            import torch

            torch.set_num_threads(self._saved_threads)

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        if task["phase"] == "score":
            return self.score_unit(task["unit"])
        if task["phase"] == "write":
            return self.write_unit(task["unit"])
        raise ValueError(f"unknown task phase {task['phase']!r}")

    # ---- phase 1: steps 1-8 and the near-duplicate embeddings
    def score_unit(self, unit: dict[str, Any]) -> dict[str, Any]:
        steps, embed = self._load_steps()
        run = self.config.run
        rows: list[dict[str, Any]] = []
        items = (Item(sample) for sample in read_unit(self.root, unit, self.config.input.source_tag))
        for batch in batched(items, run.batch_size):
            alive = decode_all(batch, self.config.corrupt, run.work_size)
            current = None
            try:
                for current in steps:
                    alive = current.apply(alive)
                current = embed
                if embed is not None:
                    embed.embed(alive)
            except Exception as err:  # a model or library failure (bad files never get here): name it
                sources = ", ".join(item.sample.source for item in batch[:3])
                raise RuntimeError(
                    f"curation step '{current.name}' failed in {describe_unit(unit)}, batch starting "
                    f"{sources}: {type(err).__name__}: {err}"
                ) from err
            base = len(rows)
            rows += [self._stage_row(item, unit["index"], base + i) for i, item in enumerate(batch)]
        write_part(part_path(self.out, "stage", unit["index"]), rows, STAGE_SCHEMA)
        survivors = sum(row["rejected_by"] is None for row in rows)
        return {"phase": "score", "unit": unit["index"], "inputs": len(rows), "survivors": survivors}

    @staticmethod
    def _stage_row(item: Item, unit: int, position: int) -> dict[str, Any]:
        sample = item.sample
        row = {
            "id": sample.id, "source": sample.source, "unit": unit, "position": position,
            "bytes": None if sample.data is None else len(sample.data), "sha256": item.sha256,
            "format": item.format, "width": item.width, "height": item.height,
            "source_tag": sample.source_tag, "caption": sample.caption,
            "source_meta": None if sample.source_meta is None else json.dumps(sample.source_meta),
            "rejected_by": item.rejected_by, "needs_reencode": item.needs_reencode,
            "embedding": None if item.embedding is None else item.embedding.astype("float16").tolist(),
        }
        row.update({column: item.scores.get(column) for column in SCORE_COLUMNS})
        item.image, item.cache = None, {}  # free the pixels early
        return row

    # ---- phase 3: verdicts, the output shard, the manifest part
    def write_unit(self, unit: dict[str, Any]) -> dict[str, Any]:
        index = unit["index"]
        columns = [f.name for f in STAGE_SCHEMA if f.name != "embedding"]
        rows = read_part(part_path(self.out, "stage", index), columns).to_pylist()
        dedup_file = part_path(self.out, "dedup", index)
        dedup = {r["id"]: r for r in read_part(dedup_file).to_pylist()} if dedup_file.exists() else {}
        for row in rows:
            decision = dedup.get(row["id"], {})
            row["dup_similarity"] = decision.get("dup_similarity")
            row["dup_of"] = decision.get("dup_of")
            if row["rejected_by"] is None and row["dup_of"] is not None:
                row["rejected_by"] = "dedup"
            row["verdict"] = "kept" if row["rejected_by"] is None else "rejected"
        kept = {row["id"]: row for row in rows if row["verdict"] == "kept"}
        shard_file = shard_path(self.out / "shards", index)
        if kept:
            samples = (s for s in read_unit(self.root, unit, self.config.input.source_tag) if s.id in kept)
            count = write_shard(shard_file, (self._shard_record(s, kept[s.id]) for s in samples))
            if count != len(kept):
                raise RuntimeError(f"{describe_unit(unit)}: the input changed since it was scored "
                                   f"({count} of {len(kept)} kept images found again)")
        for row in rows:
            row["shard"] = shard_file.relative_to(self.out).as_posix() if row["verdict"] == "kept" else None
        write_part(part_path(self.out, "manifest", index), rows, MANIFEST_SCHEMA)
        return {"phase": "write", "unit": index, "inputs": len(rows), "kept": len(kept)}

    @staticmethod
    def _shard_record(sample, row: dict[str, Any]) -> dict[str, Any]:
        data, fmt = sample.data, row["format"]
        if data is None or hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise RuntimeError(f"input {sample.source} changed after it was scored; rerun with --restart")
        if row["needs_reencode"] or fmt not in FORMAT_EXT:
            image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
            if image.mode not in ("RGB", "RGBA", "L", "LA"):
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            data, fmt = buf.getvalue(), "PNG"
        meta = {
            "id": row["id"], "source": row["source"], "source_tag": row["source_tag"],
            "width": row["width"], "height": row["height"], "format": row["format"], "caption": row["caption"],
            "scores": {c: row[c] for c in SCORE_COLUMNS[1:] + ["dup_similarity"]},
            "source_meta": json.loads(row["source_meta"]) if row["source_meta"] else None,
        }
        record = {"__key__": row["id"], FORMAT_EXT[fmt]: data, "json": meta}
        if row["caption"]:
            record["txt"] = row["caption"]
        return record
