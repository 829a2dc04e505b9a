"""Inputs of a curation run: find them, give each a stable id, cut them into work units.

Three kinds of input: a folder of images (searched recursively), a text file listing image paths
(or file:// URLs) already on disk, or WebDataset / img2dataset shards (a folder of .tar files or one
.tar). A work unit is `run.shard_size` files, or one input shard; it is what a worker scores, what
becomes one output shard, and the grain at which a run resumes.

An id is the first 20 hex digits of the SHA-1 of the input's source string (the path relative to
the input folder, the line of the list, or `shard.tar/key`): stable across runs and machines, and
independent of the executor.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lensgen.data.shards import iter_samples, list_shards
from lensgen.errors import UserError

IMAGE_MEMBER_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "image", "img")


@dataclass
class Sample:
    """One input: its raw bytes (None when unreadable) and what came with it."""

    id: str
    source: str
    data: bytes | None
    ext: str  # the extension it was stored under, lower case, no dot
    read_error: str | None = None
    caption: str | None = None  # an existing (short) caption, kept beside the dense one
    source_tag: str = "real"
    source_meta: dict[str, Any] | None = None  # e.g. img2dataset's json (url, license ...)


@dataclass
class Plan:
    root: str  # the input folder, list file or shard directory (absolute)
    format: str  # folder | list | shards
    units: list[dict[str, Any]]  # {"index": i, "files": [...]} or {"index": i, "shard": "x.tar"}

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "format": self.format, "units": self.units}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def stable_id(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8")).hexdigest()[:20]


def detect_format(path: Path, requested: str = "auto") -> str:
    if not path.exists():
        raise UserError(f"input not found: {path} (expected a folder of images, a .txt list or shards)")
    if requested != "auto":
        return requested
    if path.is_file():
        return "shards" if path.suffix.lower() == ".tar" else "list"
    has_tars = any(p.suffix.lower() == ".tar" for p in path.iterdir() if p.is_file())
    return "shards" if has_tars else "folder"


def _folder_files(root: Path, extensions: set[str]) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.rsplit(".", 1)[-1].lower() in extensions and "." in name:
                files.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(files)


def _list_files(list_file: Path) -> list[str]:
    entries = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("file://"):
            line = line[len("file://") :]
        elif "://" in line:
            raise UserError(
                f"{list_file}:{lineno}: {line!r} is a remote URL; curation reads files already on disk. "
                "Download first (e.g. with img2dataset, whose shards are accepted as input)."
            )
        entries.append(line)
    return entries


def plan_units(path: str | os.PathLike, requested_format: str, extensions: list[str], shard_size: int) -> Plan:
    """Cut the input at `path` into work units (deterministic: sorted files, shards in order)."""
    path = Path(path).resolve()
    fmt = detect_format(path, requested_format)
    if fmt == "shards":
        shards = list_shards(path)
        if not shards:
            raise UserError(f"no .tar shards in {path}")
        base = path if path.is_dir() else path.parent
        units = [{"index": i, "shard": p.relative_to(base).as_posix()} for i, p in enumerate(shards)]
        return Plan(str(base), fmt, units)
    if fmt == "folder":
        if not path.is_dir():
            raise UserError(f"input.format is 'folder' but {path} is not a folder")
        files = _folder_files(path, {e.lower().lstrip(".") for e in extensions})
        if not files:
            raise UserError(f"no images in {path} (looked for extensions {', '.join(extensions)}, recursively)")
    else:
        if not path.is_file():
            raise UserError(f"input.format is 'list' but {path} is not a file")
        files = _list_files(path)
        if not files:
            raise UserError(f"the list {path} names no files")
        path = path.parent
    units = [
        {"index": i, "files": files[start : start + shard_size]}
        for i, start in enumerate(range(0, len(files), shard_size))
    ]
    return Plan(str(path), fmt, units)


def _sidecar_caption(image_path: Path) -> str | None:
    sidecar = image_path.with_suffix(".txt")
    if sidecar.is_file():
        text = sidecar.read_text(encoding="utf-8", errors="replace").strip()
        return text or None
    return None


def _read_files(root: Path, files: list[str], source_tag: str) -> Iterator[Sample]:
    seen: dict[str, int] = {}
    for source in files:
        n = seen[source] = seen.get(source, -1) + 1
        sample_id = stable_id(source if n == 0 else f"{source}#{n}")
        file_path = Path(source) if Path(source).is_absolute() else root / source
        ext = file_path.suffix.lower().lstrip(".")
        try:
            data, error = file_path.read_bytes(), None
        except OSError as err:
            data, error = None, f"cannot read file: {err.strerror or err}"
        caption = _sidecar_caption(file_path) if data is not None else None
        yield Sample(sample_id, source, data, ext, error, caption, source_tag)


def _shard_sample(record: dict[str, Any], shard: str, seen: dict[str, int], source_tag: str) -> Sample:
    key = record["__key__"]
    n = seen[key] = seen.get(key, -1) + 1
    source = f"{shard}/{key}" if n == 0 else f"{shard}/{key}#{n}"
    members = {k.lower(): v for k, v in record.items() if not k.startswith("__")}
    ext = next((e for e in IMAGE_MEMBER_EXTS if e in members), None)
    meta = None
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except (ValueError, UnicodeDecodeError):
            meta = None
    caption = members["txt"].decode("utf-8", errors="replace").strip() if "txt" in members else None
    if not caption and isinstance(meta, dict) and isinstance(meta.get("caption"), str):
        caption = meta["caption"].strip() or None
    if isinstance(meta, dict):
        if meta.get("source_tag") in ("real", "synthetic"):
            source_tag = meta["source_tag"]
        elif isinstance(meta.get("synthetic"), bool):
            source_tag = "synthetic" if meta["synthetic"] else "real"
    if ext is None:
        return Sample(stable_id(source), source, None, "", "no image member in the sample", caption, source_tag, meta)
    return Sample(stable_id(source), source, members[ext], ext, None, caption or None, source_tag, meta)


def read_unit(plan_root: str, unit: dict[str, Any], source_tag: str) -> Iterator[Sample]:
    """The samples of one work unit, in their fixed order."""
    root = Path(plan_root)
    if "files" in unit:
        yield from _read_files(root, unit["files"], source_tag)
        return
    shard = unit["shard"]
    seen: dict[str, int] = {}
    count = 0
    try:
        for record in iter_samples(root / shard, decode=None):
            count += 1
            yield _shard_sample(record, shard, seen, source_tag)
    except UserError:
        raise
    except Exception as err:  # a truncated or garbled tar: name the shard
        raise UserError(f"reading input shard {root / shard} failed after {count} samples: {err}") from err
