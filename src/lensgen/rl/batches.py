"""Which prompts and images an RL step makes, on which rank, at which size.

Each step draws `prompts_per_step` prompts from a seeded permutation of the prompt set (epoch after
epoch, resumable mid-epoch). Each prompt gets a group of G images spread over a few buckets of the table
(Lens: 48 prompts x 24 images at varied resolutions), the same few for every prompt of the step, so a
group mixes sizes while every sampler call and every training micro-batch holds one size and is full. Jobs are dealt to ranks round-robin in a fixed order, so
the same step makes the same images whatever the world size; a job's noise depends only on
(seed, step, prompt slot, image index).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from lensgen.data.buckets import BucketTable


@dataclass(frozen=True)
class Job:
    """One image of a step: the prompt's slot in the step (its group), its index in the group, its bucket."""

    slot: int
    prompt: int  # index into the prompt set
    index: int
    bucket: int


class PromptSampler:
    """Steps' prompt indices: a seeded permutation per epoch, read `per_step` at a time; resumable."""

    def __init__(self, num_prompts: int, per_step: int, seed: int = 0):
        if num_prompts < 1:
            raise ValueError("the prompt set is empty")
        self.num_prompts, self.per_step, self.seed = num_prompts, per_step, seed
        self.epoch, self.position = 0, 0

    def _order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_prompts, generator=gen).tolist()

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.per_step:
            order = self._order(self.epoch)
            take = order[self.position: self.position + self.per_step - len(out)]
            out += take
            self.position += len(take)
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_prompts": self.num_prompts}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed or state.get("num_prompts") != self.num_prompts:
            raise ValueError(f"prompt sampler state was saved for seed {state.get('seed')} over "
                             f"{state.get('num_prompts')} prompts; this run has seed {self.seed} over "
                             f"{self.num_prompts}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def plan_jobs(prompts: list[int], images_per_prompt: int, buckets_per_prompt: int, table: BucketTable,
              seed: int, step: int, choices: list[int] | None = None) -> list[Job]:
    """Every image of the step. The step draws `buckets_per_prompt` buckets of the table (or of `choices`, bucket
    indices; seeded by seed and step) and every prompt's group is split evenly over them, so each group mixes
    sizes while each size gathers a full batch of images from all prompts."""
    rng = random.Random(f"rl-buckets-{seed}-{step}")
    pool = range(len(table)) if choices is None else choices
    buckets = rng.sample(pool, min(buckets_per_prompt, len(pool)))
    return [Job(slot, prompt, index, buckets[index % len(buckets)])
            for slot, prompt in enumerate(prompts) for index in range(images_per_prompt)]


def rank_jobs(jobs: list[Job], rank: int, world_size: int) -> list[Job]:
    """This rank's share: jobs ordered by (bucket, slot, index), then dealt round-robin."""
    ordered = sorted(jobs, key=lambda j: (j.bucket, j.slot, j.index))
    return ordered[rank::world_size]


def by_bucket(items: list, bucket_of, batch_size: int) -> list[list]:
    """Items grouped by bucket (in order of first appearance), each group cut into chunks of `batch_size`."""
    groups: dict[int, list] = {}
    for item in items:
        groups.setdefault(bucket_of(item), []).append(item)
    return [g[i: i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def noise_seed(seed: int, step: int, slot: int, index: int, *more: int) -> int:
    """A generator seed that depends only on these numbers (Python hashes int tuples the same everywhere)."""
    return hash((seed, step, slot, index, *more)) & 0x7FFF_FFFF_FFFF


__all__ = ["Job", "PromptSampler", "by_bucket", "noise_seed", "plan_jobs", "rank_jobs"]
