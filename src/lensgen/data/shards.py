"""WebDataset shards written atomically and resumably, one whole shard at a time.

A shard is a plain tar (img2dataset / WebDataset layout: `KEY.EXT` members grouped by key); a
training sample is an image member plus a `.json` holding its captions.
`write_shard` writes to a temporary file and renames it into place, so a shard that exists is
complete: a resumable job skips the shards that exist and loses at most the one in flight.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image

from lensgen.data.buckets import BucketTable
from lensgen.errors import UserError
from lensgen.io import atomic_open


def shard_path(out_dir: str | os.PathLike, index: int, prefix: str = "shard") -> Path:
    return Path(out_dir) / f"{prefix}-{index:06d}.tar"


def _encode_value(ext: str, value: Any) -> bytes:
    """Encode one member by its extension: bytes pass through, PIL images by format, dicts as JSON."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if ext == "json":
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    if hasattr(value, "save"):  # PIL image
        fmt = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}.get(ext)
        if fmt is None:
            raise ValueError(f"cannot encode an image as '.{ext}': use png, jpg or webp")
        buf = io.BytesIO()
        value.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        return buf.getvalue()
    raise TypeError(f"cannot encode member '.{ext}' of type {type(value).__name__}")


def write_shard(path: str | os.PathLike, samples: Iterable[dict[str, Any]]) -> int:
    """Write samples (dicts with `__key__` and `ext -> value`) to one tar, atomically. Returns the count."""
    count = 0
    with atomic_open(path, "wb") as f:
        writer = wds.TarWriter(f)
        for sample in samples:
            if "__key__" not in sample:
                raise ValueError("every sample needs a '__key__'")
            record = {"__key__": sample["__key__"]}
            for key, value in sample.items():
                if not key.startswith("__"):
                    record[key] = _encode_value(key.rsplit(".", 1)[-1], value)
            writer.write(record)
            count += 1
        writer.close()
    return count


def list_shards(path: str | os.PathLike) -> list[Path]:
    """The `.tar` shards of a directory (sorted), or the single shard file given."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no shard file or directory at {path}")
    return sorted(p for p in path.glob("*.tar") if not p.name.startswith("."))


def iter_samples(path: str | os.PathLike, decode: str | None = "pil") -> Iterator[dict[str, Any]]:
    """Iterate the samples of every shard under `path` in order (decoded with webdataset's decoders)."""
    urls = [str(p) for p in list_shards(path)]
    if not urls:
        return iter(())
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    if decode:
        dataset = dataset.decode(decode)
    return iter(dataset)


IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


def sample_captions(meta: dict, where: str) -> dict[str, str]:
    """The captions of a shard sample's .json: a `captions` dict, or top-level dense/short/caption fields."""
    captions = meta.get("captions") or {k: meta[k] for k in ("dense", "short", "caption") if k in meta}
    if "caption" in captions and "dense" not in captions:
        captions["dense"] = captions.pop("caption")
    if not captions:
        raise UserError(f"{where} has no captions in its .json (expected 'captions', 'dense', 'short' or 'caption')")
    return captions


def sample_image(parts: dict[str, bytes], where: str) -> bytes:
    """The image bytes of a shard sample's members (which must also hold its .json)."""
    image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
    if image is None or "json" not in parts:
        raise UserError(f"{where} lacks an image ({'/'.join(IMAGE_EXTENSIONS)}) or its .json")
    return image


def image_bucket(image: bytes, table: BucketTable, where: str) -> int:
    """The bucket nearest the image's aspect ratio and size, read from its header only."""
    try:
        with Image.open(io.BytesIO(image)) as im:
            w, h = im.size
    except OSError as err:
        raise UserError(f"{where}: unreadable image ({err})") from None
    return table.nearest(h, w).index
