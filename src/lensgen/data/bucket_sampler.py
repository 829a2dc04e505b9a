"""Batches that mix resolutions, deterministic, resumable mid-epoch, and equal in count on every rank.

Lens trains every optimisation step on a mix of sizes and aspect ratios. Each dataset item has a
bucket (one of the 27 (h, w) sizes); a batch is drawn from a seeded permutation of all items, so it
mixes buckets, and the transformer's per-sample sizes and key-padding masks handle the different
token counts (padding never enters attention or the loss). `mode="class"` draws each batch from one
size class, mixing its aspect ratios (their token counts differ by a few percent, so almost nothing is
padded); `mode="grouped"` draws each batch from one bucket (no padding at all). The last two trade
per-step mixing for throughput; `benchmarks/bucket_padding.py` prints the waste of each.

Distributed: each epoch's permutation is the same on every rank; rank r takes every world-th item
after truncating to a multiple of world * batch, so all ranks run the same number of steps (no hang
at the end of an epoch when buckets are uneven).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

MODES = ("mixed", "class", "grouped")


class MixedResolutionSampler:
    def __init__(
        self,
        buckets: Sequence[int],
        bucket_tokens: Sequence[int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        mode: str = "mixed",
        bucket_class: Sequence[int] | None = None,
    ):
        """buckets[i]: bucket index of item i; bucket_tokens[b]: image tokens of bucket b;
        bucket_class[b]: size class of bucket b (mode "class")."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "class" and bucket_class is None:
            raise ValueError("mode 'class' needs bucket_class (the size class of each bucket)")
        self.bucket_class = list(bucket_class) if bucket_class is not None else list(range(len(bucket_tokens)))
        self.buckets = torch.as_tensor(list(buckets), dtype=torch.long)
        self.bucket_tokens = list(bucket_tokens)
        self.batch_size, self.seed, self.rank, self.world_size, self.mode = batch_size, seed, rank, world_size, mode
        self.epoch, self.position = 0, 0  # position: batches already yielded in this epoch
        if self.batches_per_epoch() == 0:
            raise ValueError(f"{len(self.buckets)} items are too few for batch {batch_size} x {world_size} ranks")

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.buckets), generator=gen)
        step = self.batch_size * self.world_size
        if self.mode == "mixed":
            order = order[: len(order) // step * step]
            mine = order[self.rank :: self.world_size].tolist()
            return [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        # grouped / class: full global batches per bucket (or per size class), then the batch order shuffled
        group_of = torch.as_tensor(self.bucket_class if self.mode == "class" else range(len(self.bucket_tokens)))
        groups = group_of[self.buckets[order]]
        global_batches = []
        for g in sorted(set(group_of.tolist())):
            items = order[groups == g]
            items = items[: len(items) // step * step]
            global_batches += [items[i : i + step] for i in range(0, len(items), step)]
        perm = torch.randperm(len(global_batches), generator=gen).tolist()
        return [global_batches[i][self.rank :: self.world_size].tolist() for i in perm]

    def batches_per_epoch(self) -> int:
        return len(self._epoch_batches(0))

    def __iter__(self) -> Iterator[list[int]]:
        """Endless: epoch after epoch, from the saved position."""
        while True:
            batches = self._epoch_batches(self.epoch)
            while self.position < len(batches):
                batch = batches[self.position]
                self.position += 1
                yield batch
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this run uses {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def padding_waste(self, batch: Sequence[int]) -> float:
        return padding_waste([self.bucket_tokens[int(self.buckets[i])] for i in batch])


def padding_waste(tokens: Sequence[int]) -> float:
    """Fraction of a batch's padded image-token slots that are padding, given each sample's token count."""
    return 1.0 - sum(tokens) / (len(tokens) * max(tokens))
