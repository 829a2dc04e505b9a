"""Step 9, near duplicates: cosine similarity of image embeddings above `dedup.threshold` (0.985).

Runs over the images that passed steps 1-8 of the whole run (it is the one global step). Up to
`dedup.exact_max` images, every pair is compared exactly (FAISS flat inner-product range search).
Beyond that, SemDeDup-style: spherical k-means into clusters of about `dedup.cluster_size`, then the
same exact search within each cluster (duplicates split across two clusters are missed; with
clusters of thousands this is rare, as near copies sit close to the same centroid).

Which copy is kept is deterministic: images are visited largest first (width x height), ties in
input order; each kept image removes its not-yet-visited neighbours above the threshold. The score
is the highest similarity to any other image in the search scope when it is at least
`dedup.report_min` (0.9; null below, which keeps the search to one range query); `dup_of` names
the kept image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lensgen.data.curate.config import DedupConfig
from lensgen.data.curate.steps.base import Item

NAME, COLUMN = "dedup", "dup_similarity"


class EmbedStep:
    """The per-unit half of step 9: embed every survivor of steps 1-8 (the search runs later)."""

    name, column = NAME, COLUMN

    def __init__(self, embedder):
        self.embedder = embedder

    def embed(self, items: list[Item]) -> None:
        if not items:
            return
        if self.embedder.name == "clip":
            from lensgen.data.curate.steps.aesthetic import clip_embeddings

            vectors = clip_embeddings(self.embedder, items)
        else:
            vectors = self.embedder.embed([item.image for item in items])
        for item, vector in zip(items, vectors):
            item.embedding = vector


@dataclass
class DedupResult:
    dup_of: np.ndarray  # index of the kept representative, -1 when kept
    similarity: np.ndarray  # highest similarity to another image in scope (nan below report_min)
    mode: str  # "exact" or "semdedup"
    clusters: int
    pairs: int  # pairs above the threshold


def _search(x: np.ndarray, threshold: float, report_min: float) -> tuple[list[list[int]], np.ndarray]:
    """Neighbours above `threshold` (symmetrised), and each row's highest similarity to another row
    when it is at least `report_min` (nan otherwise). One exact FAISS range search."""
    import faiss

    n = len(x)
    nearest = np.full(n, np.nan)
    neighbours: list[list[int]] = [[] for _ in range(n)]
    if n < 2:
        return neighbours, nearest
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    lims, sims, cols = index.range_search(x, float(min(threshold, report_min)))
    rows = np.repeat(np.arange(n), np.diff(lims.astype(np.int64)))
    other = rows != cols
    rows, cols, sims = rows[other], cols[other].astype(np.int64), sims[other]
    if len(rows):
        best = np.full(n, -np.inf)
        np.maximum.at(best, rows, sims)
        nearest = np.where(np.isfinite(best), best, np.nan)
    above = sims > threshold
    pairs = np.unique(np.stack([np.minimum(rows[above], cols[above]), np.maximum(rows[above], cols[above])], 1),
                      axis=0) if above.any() else np.zeros((0, 2), np.int64)
    for i, j in pairs.tolist():  # sorted: neighbour lists come out in a fixed order
        neighbours[i].append(j)
        neighbours[j].append(i)
    return neighbours, nearest


def _greedy(neighbours: list[list[int]], priority: np.ndarray) -> np.ndarray:
    """Visit in priority order; a kept image removes its unvisited neighbours."""
    n = len(neighbours)
    dup_of = np.full(n, -1, np.int64)
    visited = np.zeros(n, bool)
    for i in np.argsort(priority, kind="stable"):
        visited[i] = True
        if dup_of[i] >= 0:
            continue
        for j in neighbours[i]:
            if not visited[j] and dup_of[j] < 0:
                dup_of[j] = i
    return dup_of


def _normed(rows: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(rows, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 1e-6, x / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def find_duplicates(embeddings: np.ndarray, pixels: np.ndarray, config: DedupConfig) -> DedupResult:
    """Near-duplicate decisions for `embeddings` (rows in input order; `pixels` = width x height).

    `embeddings` may be float16 (as stored): rows are converted to float32 only a cluster at a time.
    """
    n = len(embeddings)
    # priority rank: largest first, then input order (argsort on -pixels is stable)
    rank = np.empty(n, np.int64)
    rank[np.argsort(-np.asarray(pixels, np.int64), kind="stable")] = np.arange(n)
    if n <= config.exact_max:
        neighbours, nearest = _search(_normed(embeddings), config.threshold, config.report_min)
        dup_of = _greedy(neighbours, rank)
        return DedupResult(dup_of, nearest, "exact", 1, sum(len(v) for v in neighbours) // 2)

    import faiss

    k = max(2, math.ceil(n / config.cluster_size))
    rng = np.random.default_rng(config.seed)
    train = np.sort(rng.choice(n, size=min(n, 256 * k), replace=False))  # faiss's own sampling cap
    kmeans = faiss.Kmeans(embeddings.shape[1], k, niter=config.kmeans_iters, seed=config.seed, spherical=True,
                          verbose=False)
    kmeans.train(_normed(embeddings[train]))
    assign = np.concatenate([kmeans.index.search(_normed(embeddings[i : i + 100_000]), 1)[1].ravel()
                             for i in range(0, n, 100_000)])
    dup_of = np.full(n, -1, np.int64)
    nearest = np.full(n, np.nan)
    pairs = 0
    order = np.argsort(assign, kind="stable")  # members of each cluster, in input order
    bounds = np.searchsorted(assign[order], np.arange(k + 1))
    for c in range(k):
        members = order[bounds[c] : bounds[c + 1]]
        if len(members) == 0:
            continue
        neighbours, near = _search(_normed(embeddings[members]), config.threshold, config.report_min)
        local = _greedy(neighbours, rank[members])
        dup_of[members] = np.where(local >= 0, members[np.maximum(local, 0)], -1)
        nearest[members] = near
        pairs += sum(len(v) for v in neighbours) // 2
    return DedupResult(dup_of, nearest, "semdedup", k, pairs)
