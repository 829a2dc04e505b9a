"""Training data: endless, resumable batches of items, each loaded at its bucket size with its captions.

Every training source has one interface, `BatchSource`: iterate it for batches (lists of item keys),
`load(key) -> (image, captions)`, `padding_waste(batch)`, `validation_items(n)`, and
`state_dict()` / `load_state_dict()` so a checkpoint resumes mid-epoch. Three sources implement it:

- `shapes`: the procedural Shapes world rendered on the fly (endless, exact captions); item i is the
  scene of seed (seed, i), drawn at a bucket picked from i, so every rank sees distinct items.
- `shards`: WebDataset shards (`lensgen data shapes` or curated/captioned shards) indexed in memory and
  decoded on demand; each image goes to the bucket nearest in log aspect ratio and is resized and
  centre-cropped to it.
- `stream`: shard sets too large to index (Lens: ~800M images), read in order (`ShardStream`).

The two indexed ones are item sets drawn in mixed-resolution batches by `MixedResolutionSampler`
(`IndexedBatches`); the stream batches itself.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from lensgen.data.bucket_sampler import MixedResolutionSampler
from lensgen.data.buckets import BucketTable, resize_and_center_crop
from lensgen.data.shard_stream import ShardStream
from lensgen.data.shards import image_bucket, list_shards, sample_captions, sample_image
from lensgen.errors import UserError
from lensgen.shapes import captions, generate_scene, render

SOURCES = ("shapes", "shards", "stream")


class BatchSource(Protocol):
    """Endless batches of item keys (ints or shard refs) and what the trainer needs around them."""

    def __iter__(self) -> Iterator[list[Any]]: ...

    def load(self, key: Any) -> tuple[Image.Image, dict[str, str]]: ...

    def padding_waste(self, batch: Sequence[Any]) -> float: ...

    def validation_items(self, n: int) -> list[Any]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def pick_caption(captions: dict, mode: str, dense_prob: float, rng: random.Random) -> str:
    """The caption to train on: dense, short, or a seeded mix (the Lens caption ablation's arms)."""
    if mode == "mixed":
        mode = "dense" if rng.random() < dense_prob else "short"
    text = captions.get(mode) or captions.get("dense") or captions.get("short")
    if not text:
        raise KeyError(f"no {mode} caption in {sorted(captions)}")
    return text


def first_per_bucket(items, n: int) -> list[int]:
    """Indices of the first item of each of the first n buckets met: a fixed validation set."""
    seen: dict[int, int] = {}
    for i in range(len(items)):
        seen.setdefault(items.bucket_of(i), i)
        if len(seen) == n:
            break
    return list(seen.values())


class ShapesSource:
    """Shapes scenes by index: item i is the scene of seed (seed, i) at a bucket drawn from i."""

    def __init__(self, table: BucketTable, num_items: int, seed: int = 0):
        self.table, self.num_items, self.seed = table, num_items, seed

    def __len__(self) -> int:
        return self.num_items

    def bucket_of(self, index: int) -> int:
        return random.Random(f"bucket-{self.seed}-{index}").randrange(len(self.table))

    def load(self, index: int) -> tuple[Image.Image, dict]:
        bucket = self.table[self.bucket_of(index)]
        scene = generate_scene((self.seed, index), aspect=bucket.width / bucket.height, split="train")
        return render(scene, bucket.height, bucket.width), captions(scene, (self.seed, index))


class ShardSource:
    """Random access over small shard sets: image bytes and metadata kept in memory, decoded on demand."""

    def __init__(self, path: str | Path, table: BucketTable):
        self.table = table
        self.items: list[tuple[bytes, dict, int]] = []
        shards = list_shards(path)
        if not shards:
            raise UserError(f"no .tar shards in {path}")
        for shard in shards:
            members: dict[str, dict[str, bytes]] = {}
            with tarfile.open(shard) as tar:
                for m in tar:
                    if m.isfile():
                        key, _, ext = m.name.partition(".")
                        members.setdefault(key, {})[ext] = tar.extractfile(m).read()
            for key, parts in members.items():
                where = f"{shard}: sample {key}"
                image = sample_image(parts, where)
                captions = sample_captions(json.loads(parts["json"]), where)
                self.items.append((image, captions, image_bucket(image, table, where)))

    def __len__(self) -> int:
        return len(self.items)

    def bucket_of(self, index: int) -> int:
        return self.items[index][2]

    def load(self, index: int) -> tuple[Image.Image, dict]:
        data, captions, bucket = self.items[index]
        image = Image.open(io.BytesIO(data)).convert("RGB")
        b = self.table[bucket]
        return resize_and_center_crop(image, (b.height, b.width)), captions


class IndexedBatches:
    """A `BatchSource` over an indexed item set (`ShapesSource`, `ShardSource`): batches of indices from a
    `MixedResolutionSampler`, which holds the resumable position."""

    def __init__(self, items: ShapesSource | ShardSource, sampler: MixedResolutionSampler):
        self.items, self.sampler = items, sampler

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.sampler)

    def load(self, index: int) -> tuple[Image.Image, dict]:
        return self.items.load(index)

    def padding_waste(self, batch: Sequence[int]) -> float:
        return self.sampler.padding_waste(batch)

    def validation_items(self, n: int) -> list[int]:
        return first_per_bucket(self.items, n)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def build_batch_source(kind: str, table: BucketTable, batch_size: int, patch: int, *, seed: int = 0,
                       rank: int = 0, world_size: int = 1, mode: str = "mixed", shards: str | None = None,
                       num_items: int = 0, shuffle_buffer: int = 1000) -> BatchSource:
    """The `BatchSource` of `kind` (shapes | shards | stream) for this rank; `patch`: pixels per token."""
    if kind == "stream":
        # too many samples to index: the stream reads shards in order and batches them itself
        return ShardStream(shards, table, batch_size, patch, seed=seed, rank=rank, world_size=world_size,
                           mode=mode, shuffle_buffer=shuffle_buffer)
    if kind == "shapes":
        items = ShapesSource(table, num_items, seed=seed)
    elif kind == "shards":
        items = ShardSource(shards, table)
    else:
        raise UserError(f"unknown data source {kind!r}; expected one of {', '.join(SOURCES)}")
    sampler = MixedResolutionSampler(
        [items.bucket_of(i) for i in range(len(items))], [b.tokens(patch) for b in table], batch_size,
        seed=seed, rank=rank, world_size=world_size, mode=mode,
        bucket_class=[b.index // table.num_ratios for b in table])
    return IndexedBatches(items, sampler)


__all__ = ["SOURCES", "BatchSource", "IndexedBatches", "ShapesSource", "ShardSource", "build_batch_source",
           "first_per_bucket", "pick_caption"]
