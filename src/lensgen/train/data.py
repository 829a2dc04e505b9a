"""Training data: items with a bucket, loaded at their bucket size, collated into padded token batches.

Two sources share one interface (`__len__`, `bucket_of(i)`, `load(i) -> (image, captions)`,
`validation_items(n)`):
- `ShapesSource`: the procedural Shapes world rendered on the fly (endless, exact captions); item i is
  the scene of seed (seed, i), drawn at a bucket picked from i, so every rank sees distinct items.
- `ShardSource`: WebDataset shards (`lensgen data shapes` or curated/captioned shards), indexed in
  memory and decoded on demand; each image goes to the bucket nearest in log aspect ratio and is
  resized and centre-cropped to it.
Shard sets too large to hold in memory stream instead (`lensgen.train.shard_stream`).
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lensgen.data.buckets import BucketTable, resize_and_center_crop
from lensgen.data.shapes import captions, generate_scene, render
from lensgen.data.shards import list_shards
from lensgen.errors import UserError

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


def pick_caption(captions: dict, mode: str, dense_prob: float, rng: random.Random) -> str:
    """The caption to train on: dense, short, or a seeded mix (the Lens caption ablation's arms)."""
    if mode == "mixed":
        mode = "dense" if rng.random() < dense_prob else "short"
    text = captions.get(mode) or captions.get("dense") or captions.get("short")
    if not text:
        raise KeyError(f"no {mode} caption in {sorted(captions)}")
    return text


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


def first_per_bucket(source, n: int) -> list[int]:
    """Indices of the first item of each of the first n buckets met: a fixed validation set."""
    seen: dict[int, int] = {}
    for i in range(len(source)):
        seen.setdefault(source.bucket_of(i), i)
        if len(seen) == n:
            break
    return list(seen.values())


class ShapesSource:
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

    def validation_items(self, n: int) -> list[int]:
        return first_per_bucket(self, n)


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

    def validation_items(self, n: int) -> list[int]:
        return first_per_bucket(self, n)


@dataclass
class TokenBatch:
    tokens: torch.Tensor  # (B, N, C) clean latent tokens, right-padded
    sizes: list[tuple[int, int]]  # token grid per sample
    token_mask: torch.Tensor | None  # (B, N) True = real; None when nothing is padded
    prompts: list[str]


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


@torch.no_grad()
def collate(images: list[Image.Image], prompts: list[str], codec) -> TokenBatch:
    """Encode each image at its own size (same sizes together), flatten to tokens, pad to the longest."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault((image.height, image.width), []).append(i)
    token_lists: list[torch.Tensor | None] = [None] * len(images)
    sizes: list[tuple[int, int] | None] = [None] * len(images)
    f = codec.spatial_factor
    for (h, w), idx in by_size.items():
        grid = codec.encode(torch.stack([image_to_tensor(images[i]) for i in idx]))  # (b, C, h/f, w/f)
        for j, i in enumerate(idx):
            token_lists[i] = grid[j].flatten(1).T
            sizes[i] = (h // f, w // f)
    n = max(t.shape[0] for t in token_lists)
    tokens = torch.zeros(len(images), n, token_lists[0].shape[1])
    for i, t in enumerate(token_lists):
        tokens[i, : t.shape[0]] = t
    padded = len({t.shape[0] for t in token_lists}) > 1
    mask = (torch.arange(n)[None] < torch.tensor([t.shape[0] for t in token_lists])[:, None]) if padded else None
    return TokenBatch(tokens=tokens, sizes=sizes, token_mask=mask, prompts=prompts)
