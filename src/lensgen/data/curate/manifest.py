"""The manifest: one Parquet row per input, with every score computed and the verdict.

A run writes one part per work unit, atomically, in three places under OUT:
- `stage/part-NNNNNN.parquet`: after steps 1-8, with the near-duplicate embedding of survivors;
- `dedup/part-NNNNNN.parquet`: the near-duplicate decisions for that unit's survivors;
- `manifest/part-NNNNNN.parquet`: the final rows (the manifest is this directory, a Parquet dataset).
A part that exists is complete, which is what makes a run resumable at unit granularity.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lensgen.io import atomic_open

SCORE_FIELDS = [
    pa.field("decode_error", pa.string()),
    pa.field("short_side", pa.int32()),
    pa.field("nsfw_score", pa.float64()),
    pa.field("aesthetic_score", pa.float64()),
    pa.field("watermark_score", pa.float64()),
    pa.field("laplacian_var", pa.float64()),
    pa.field("entropy_bits", pa.float64()),
    pa.field("luma", pa.float64()),
]
BASE_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("source", pa.string()),
    pa.field("unit", pa.int32()),
    pa.field("position", pa.int32()),
    pa.field("bytes", pa.int64()),
    pa.field("sha256", pa.string()),
    pa.field("format", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("source_tag", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("source_meta", pa.string()),  # JSON text of the input's own metadata
]
STAGE_SCHEMA = pa.schema(
    BASE_FIELDS + SCORE_FIELDS + [
        pa.field("rejected_by", pa.string()),  # after steps 1-8
        pa.field("needs_reencode", pa.bool_()),
        pa.field("embedding", pa.list_(pa.float16())),  # survivors only
    ]
)
DEDUP_SCHEMA = pa.schema([
    pa.field("id", pa.string()),
    pa.field("dup_similarity", pa.float64()),
    pa.field("dup_of", pa.string()),
])
MANIFEST_SCHEMA = pa.schema(
    BASE_FIELDS + SCORE_FIELDS + [
        pa.field("dup_similarity", pa.float64()),
        pa.field("dup_of", pa.string()),
        pa.field("verdict", pa.string()),  # "kept" or "rejected"
        pa.field("rejected_by", pa.string()),  # the first step that rejected it
        pa.field("shard", pa.string()),  # the output shard of a kept image, relative to OUT
    ]
)


def part_path(out_dir: str | os.PathLike, kind: str, unit: int) -> Path:
    return Path(out_dir) / kind / f"part-{unit:06d}.parquet"


def write_part(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_open(path, "wb") as f:
        pq.write_table(table, f)


def read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=columns)


def read_manifest(out_dir: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """The whole manifest of a run (all parts, in unit order)."""
    parts = sorted((Path(out_dir) / "manifest").glob("part-*.parquet"))
    if not parts:
        return MANIFEST_SCHEMA.empty_table().select(columns) if columns else MANIFEST_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in parts])
