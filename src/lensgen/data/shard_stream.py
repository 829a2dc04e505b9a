"""Mixed-resolution batches streamed from WebDataset shards too large to index (Lens: ~800M images).

`ShardSource` keeps every sample in memory: right for a Shapes set, impossible for Lens. `ShardStream`
reads shards front to back instead, in a seeded order that changes every epoch; rank r reads shards
r, r + world, ... of that order, so no two ranks read the same sample. Each sample goes through a
shuffle buffer and then into a queue for its group (mode `mixed`: one queue, so batches mix buckets as
Lens trains; `class`: one per size class; `grouped`: one per bucket); a queue that reaches the batch
size is the next batch. A sample's bucket comes from its image header (PIL reads only the header).

Everything in flight is a `SampleRef`: shard, key, the byte offset and size of each member, bucket.
The state that resumes mid-epoch is the read position (epoch, shard, byte offset of the next sample),
the buffered and queued refs, and the shuffle RNG: a few KB in the checkpoint. After a restart the
buffered samples are re-read by offset. The stream never ends, so every rank runs the same number of
steps however unevenly the shards divide.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from lensgen.data.bucket_sampler import MODES, padding_waste
from lensgen.data.buckets import BucketTable, resize_and_center_crop
from lensgen.data.shards import image_bucket, list_shards, sample_captions, sample_image
from lensgen.errors import UserError

Member = tuple[str, int, int]  # extension, byte offset of the data in the tar, size


@dataclass(frozen=True)
class SampleRef:
    shard: int  # index into the sorted shard list
    key: str
    members: tuple[Member, ...]
    bucket: int

    def to_json(self) -> list:
        return [self.shard, self.key, [list(m) for m in self.members], self.bucket]

    @classmethod
    def from_json(cls, value: list) -> SampleRef:
        shard, key, members, bucket = value
        return cls(int(shard), str(key), tuple((str(e), int(o), int(s)) for e, o, s in members), int(bucket))


def _member_key(name: str) -> tuple[str, str]:
    """WebDataset naming: `dir/KEY.EXT` -> (dir/KEY, EXT), the extension being all after the first dot."""
    folder, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext


class ShardStream:
    """An endless, resumable iterator of batches (lists of `SampleRef`) plus `load(ref)` for each item."""

    def __init__(self, path: str | Path, table: BucketTable, batch_size: int, patch: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, mode: str = "mixed", shuffle_buffer: int = 1000):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.shards = list_shards(path)
        if len(self.shards) < world_size:
            raise UserError(f"{path}: {len(self.shards)} shard(s) for {world_size} ranks; streaming gives each "
                            f"rank whole shards, so it needs at least one per rank")
        self.table, self.batch_size, self.seed = table, batch_size, seed
        self.rank, self.world_size, self.mode, self.shuffle_buffer = rank, world_size, mode, shuffle_buffer
        self.bucket_tokens = [b.tokens(patch) for b in table]
        self.epoch, self.shard_pos, self.offset = 0, 0, 0
        self.buffer: list[SampleRef] = []
        self.queues: dict[int, list[SampleRef]] = {}
        self.rng = random.Random(f"shard-stream-{seed}-{rank}")
        self._payload: dict[SampleRef, dict[str, bytes]] = {}  # bytes of buffered samples, read once

    # ---- reading ----------------------------------------------------------------------------

    def shard_order(self, epoch: int) -> list[int]:
        """This rank's shards for `epoch`: a seeded permutation (the same on all ranks), every world-th."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.shards), generator=gen)[self.rank :: self.world_size].tolist()

    def _read_shard(self, shard: int, start: int) -> Iterator[tuple[SampleRef, dict[str, bytes], int]]:
        """(ref, member bytes, byte offset of the next sample) for each sample from byte `start` on."""
        path = self.shards[shard]
        pending: list[tuple[str, int, int, bytes]] = []
        pending_key = None

        def finish(next_offset: int):
            parts = {ext: data for ext, _, _, data in pending}
            ref = SampleRef(shard, pending_key, tuple((e, o, s) for e, o, s, _ in pending),
                            self._bucket(path, pending_key, parts))
            return ref, parts, next_offset

        with open(path, "rb") as f:
            f.seek(start)
            try:
                tar = tarfile.open(fileobj=f, mode="r:")
            except tarfile.ReadError as err:
                if start == 0:
                    raise UserError(f"{path}: not a readable tar shard ({err})") from None
                return  # nothing after `start`: the shard ended exactly there
            with tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    key, ext = _member_key(m.name)
                    if pending and key != pending_key:
                        yield finish(m.offset)
                        pending = []
                    pending_key = key
                    pending.append((ext, m.offset_data, m.size, tar.extractfile(m).read()))
                    tar.members.clear()  # a streamed shard keeps no member list
        if pending:
            yield finish(path.stat().st_size)

    def _bucket(self, path: Path, key: str, parts: dict[str, bytes]) -> int:
        where = f"{path}: sample {key}"
        return image_bucket(sample_image(parts, where), self.table, where)

    def _samples(self) -> Iterator[tuple[SampleRef, dict[str, bytes]]]:
        """Endless samples from the saved read position, keeping that position up to date."""
        while True:
            order = self.shard_order(self.epoch)
            while self.shard_pos < len(order):
                for ref, parts, next_offset in self._read_shard(order[self.shard_pos], self.offset):
                    self.offset = next_offset
                    yield ref, parts
                self.shard_pos, self.offset = self.shard_pos + 1, 0
            self.epoch, self.shard_pos = self.epoch + 1, 0

    # ---- batching ---------------------------------------------------------------------------

    def _group(self, bucket: int) -> int:
        if self.mode == "mixed":
            return 0
        return bucket // self.table.num_ratios if self.mode == "class" else bucket

    def __iter__(self) -> Iterator[list[SampleRef]]:
        samples = self._samples()
        while True:
            while len(self.buffer) <= self.shuffle_buffer:
                ref, parts = next(samples)
                self._payload[ref] = parts
                self.buffer.append(ref)
            i = self.rng.randrange(len(self.buffer))
            self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
            ref = self.buffer.pop()
            group = self._group(ref.bucket)
            queue = self.queues.setdefault(group, [])
            queue.append(ref)
            if len(queue) == self.batch_size:
                del self.queues[group]
                yield queue

    def load(self, ref: SampleRef) -> tuple[Image.Image, dict]:
        parts = self._payload.pop(ref, None) or self._read_ref(ref)
        where = f"{self.shards[ref.shard]}: sample {ref.key}"
        captions = sample_captions(json.loads(parts["json"]), where)
        image = Image.open(io.BytesIO(sample_image(parts, where))).convert("RGB")
        b = self.table[ref.bucket]
        return resize_and_center_crop(image, (b.height, b.width)), captions

    def _read_ref(self, ref: SampleRef) -> dict[str, bytes]:
        with open(self.shards[ref.shard], "rb") as f:
            parts = {}
            for ext, offset, size in ref.members:
                f.seek(offset)
                parts[ext] = f.read(size)
        return parts

    def bucket_of(self, ref: SampleRef) -> int:
        return ref.bucket

    def padding_waste(self, batch: Sequence[SampleRef]) -> float:
        return padding_waste([self.bucket_tokens[r.bucket] for r in batch])

    def validation_items(self, n: int) -> list[SampleRef]:
        """The first sample of each of the first n buckets met in shard order (fixed, whatever the state)."""
        found: dict[int, SampleRef] = {}
        for shard in range(len(self.shards)):
            for ref, parts, _ in self._read_shard(shard, 0):
                if ref.bucket not in found:
                    found[ref.bucket] = ref
                    self._payload.setdefault(ref, parts)
                if len(found) == min(n, len(self.table)):
                    return list(found.values())
        return list(found.values())

    # ---- resuming ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"seed": self.seed, "epoch": self.epoch, "shard_pos": self.shard_pos, "offset": self.offset,
                "buffer": [r.to_json() for r in self.buffer],
                "queues": {str(g): [r.to_json() for r in q] for g, q in self.queues.items()},
                "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"stream state was saved with seed {state['seed']}, this run uses {self.seed}")
        self.epoch, self.shard_pos, self.offset = int(state["epoch"]), int(state["shard_pos"]), int(state["offset"])
        self.buffer = [SampleRef.from_json(r) for r in state["buffer"]]
        self.queues = {int(g): [SampleRef.from_json(r) for r in q] for g, q in state["queues"].items()}
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self._payload.clear()


__all__ = ["SampleRef", "ShardStream"]
