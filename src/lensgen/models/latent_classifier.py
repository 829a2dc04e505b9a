"""What a Shapes scene holds, read from its noised latent tokens: a small classifier and the guidance it gives.

The Shapes model decides what it draws while the picture is still noise (σ 0.6-0.8), and there the word
"star" or "left of" steers it little (docs/rl-shapes-measurements.md). A classifier trained on noised latents
of true scenes knows, at every noise level, which way the tokens must move to hold what a rubric asks:
its gradient is classifier guidance (Dhariwal & Nichol 2021). In the velocity form of rectified flow,
x_σ = (1 - σ) x0 + σ ε, adding `scale` times that gradient to the score gives

    v' = v - scale · σ / (1 - σ) · ∇x log p(rubric | x_σ, σ)

`lensgen rl` can aim its KL pull at that guided velocity (`optim.kl_classifier`), distilling the guidance into
the CFG-free policy as the pull already distils CFG, and a model folder's `classifier/` guides its sampler
(`inference/classifier_guidance.py`). The classifier predicts each shape's count, which
(colour, shape) pairs are present and which (shape, relation, shape) hold, by GenEval's position rule; it is
trained by `lensgen train-classifier` on training-split scenes only (held-out safe, `heldout.py`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from lensgen.errors import UserError
from lensgen.shapes.relations import relative_position
from lensgen.shapes.scene import Scene, object_box
from lensgen.shapes.vocab import COLOUR_NAMES, RELATIONS, SHAPES

MAX_COUNT = 5  # counts above are one class: "5 or more"
PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOUR_NAMES for s in SHAPES)
TRIPLES: tuple[tuple[str, str, str], ...] = tuple((a, r, b) for a in SHAPES for r in RELATIONS for b in SHAPES)
CONFIG_NAME = "latent_classifier.json"
WEIGHTS_NAME = "latent_classifier.safetensors"
WEIGHTS_FROM = "weights_from"  # in a config: the classifier folder holding its weights (relative), shared
# the heads' loss weights: a pair or relation is one of many mostly-absent labels, so its mean BCE is small
PAIR_WEIGHT, RELATION_WEIGHT = 10.0, 30.0


class SceneTargets(NamedTuple):
    counts: torch.Tensor  # (B, shapes) long, clipped at MAX_COUNT
    pairs: torch.Tensor  # (B, len(PAIRS)) float 0/1
    relations: torch.Tensor  # (B, len(TRIPLES)) float 0/1


class ClassifierLogits(NamedTuple):
    counts: torch.Tensor  # (B, shapes, MAX_COUNT + 1)
    pairs: torch.Tensor  # (B, len(PAIRS))
    relations: torch.Tensor  # (B, len(TRIPLES))


def scene_targets(scenes: list[Scene], height: int, width: int) -> SceneTargets:
    """What each scene holds, as the classifier's targets (relations by GenEval's rule at this size)."""
    counts, pairs, relations = [], [], []
    for scene in scenes:
        counts.append([min(MAX_COUNT, sum(o.shape == s for o in scene.objects)) for s in SHAPES])
        present = {(o.colour, o.shape) for o in scene.objects}
        pairs.append([float(p in present) for p in PAIRS])
        holds = set()
        for a, b in itertools.permutations(scene.objects, 2):
            for rel in relative_position(object_box(a, height, width), object_box(b, height, width)):
                holds.add((a.shape, rel, b.shape))
        relations.append([float(t in holds) for t in TRIPLES])
    return SceneTargets(torch.tensor(counts), torch.tensor(pairs), torch.tensor(relations))


@dataclass
class LatentClassifierConfig:
    channels: int  # the codec's token channels
    width: int = 128
    depth: int = 4


class LatentClassifier(nn.Module):
    """A small conv net over the (B, C, h, w) latent grid with coordinate channels, modulated by σ per block."""

    def __init__(self, config: LatentClassifierConfig):
        super().__init__()
        self.config = config
        w, d = config.width, config.depth
        self.stem = nn.Conv2d(config.channels + 2, w, 3, padding=1)
        self.sigma_mlp = nn.Sequential(nn.Linear(64, w), nn.SiLU(), nn.Linear(w, 2 * w * d))
        self.convs = nn.ModuleList(nn.Conv2d(w, w, 3, padding=1) for _ in range(d))
        self.norms = nn.ModuleList(nn.GroupNorm(8, w) for _ in range(d))
        self.head = nn.Sequential(nn.Linear(2 * w, 512), nn.SiLU(),
                                  nn.Linear(512, len(SHAPES) * (MAX_COUNT + 1) + len(PAIRS) + len(TRIPLES)))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> ClassifierLogits:
        b, _, h, w = x.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device),
                                indexing="ij")
        x = torch.cat([x, ys.expand(b, 1, h, w), xs.expand(b, 1, h, w)], 1)
        freqs = torch.exp(torch.linspace(0, math.log(1000), 32, device=x.device))
        angles = sigma.float()[:, None] * freqs
        mod = self.sigma_mlp(torch.cat([angles.sin(), angles.cos()], 1)).view(b, self.config.depth, 2, -1)
        x = self.stem(x)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = x + conv(F.silu(norm(x) * (1 + mod[:, i, 0, :, None, None]) + mod[:, i, 1, :, None, None]))
        x = F.silu(x)
        out = self.head(torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1))
        n = len(SHAPES) * (MAX_COUNT + 1)
        return ClassifierLogits(out[:, :n].view(b, len(SHAPES), MAX_COUNT + 1), out[:, n:n + len(PAIRS)],
                                out[:, n + len(PAIRS):])

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Config and weights (cast to `dtype` if given; `from_pretrained` loads them back into fp32)."""
        from safetensors.torch import save

        from lensgen.io import atomic_write_bytes, atomic_write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / WEIGHTS_NAME, save({k: v.to(dtype or v.dtype).contiguous()
                                                          for k, v in self.state_dict().items()}))
        atomic_write_json(directory / CONFIG_NAME, asdict(self.config))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: torch.device | str = "cpu") -> LatentClassifier:
        """A `lensgen train-classifier` folder (or a model folder's classifier/). Its config may name another
        classifier folder holding the weights (`weights_from`, relative to this one): two shipped models share
        one classifier's bytes."""
        from safetensors.torch import load_file

        from lensgen.models.weight_storage import shared_folder

        directory = Path(directory)
        config_file = directory / CONFIG_NAME
        try:
            config = json.loads(config_file.read_text()) if config_file.is_file() else None
        except json.JSONDecodeError as err:
            raise UserError(f"{config_file}: unreadable latent classifier config ({err})") from None
        source = directory
        if isinstance(config, dict) and isinstance(config.get(WEIGHTS_FROM), str):
            source = shared_folder(directory, config.pop(WEIGHTS_FROM))
            if not (source / WEIGHTS_NAME).is_file():
                raise UserError(f"{config_file}: its weights are in {source} ({WEIGHTS_FROM}), which holds no "
                                f"{WEIGHTS_NAME}: keep the model folders side by side as shipped")
        weights = source / WEIGHTS_NAME
        if config is None or not weights.is_file():
            raise UserError(f"{directory}: not a latent classifier folder (expected {CONFIG_NAME} and {WEIGHTS_NAME}, "
                            "as `lensgen train-classifier` writes)")
        try:
            model = cls(LatentClassifierConfig(**config))
            model.load_state_dict(load_file(weights, device=str(device)))
        except (TypeError, RuntimeError) as err:
            raise UserError(f"{directory}: unreadable latent classifier ({err})") from None
        return model.to(device).eval().requires_grad_(False)


def classifier_loss(logits: ClassifierLogits, targets: SceneTargets) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-head losses' weighted sum (and each head's mean, for the log)."""
    counts = F.cross_entropy(logits.counts.flatten(0, 1), targets.counts.flatten())
    pairs = F.binary_cross_entropy_with_logits(logits.pairs, targets.pairs)
    relations = F.binary_cross_entropy_with_logits(logits.relations, targets.relations)
    parts = {"counts": counts.item(), "pairs": pairs.item(), "relations": relations.item()}
    return counts + PAIR_WEIGHT * pairs + RELATION_WEIGHT * relations, parts


def rubric_log_prob(logits: ClassifierLogits, rubrics: list[dict]) -> torch.Tensor:
    """(B,) log p of what each rubric (`rubric_dict` form) asks, by the classifier's heads: every expected
    shape's count (exactly, or at least, by the rubric's `exact`), every colour item's (colour, shape) pair and
    every relation item's (shape, relation, shape). Items of other kinds (text, size, region) add nothing."""
    log_counts = F.log_softmax(logits.counts.float(), -1)
    terms = []
    for i, rubric in enumerate(rubrics):
        total = log_counts.new_zeros(())
        for shape, n in rubric["expected"].items():
            if shape not in SHAPES:
                raise UserError(f"the latent classifier reads the Shapes world's shapes ({', '.join(SHAPES)}); "
                                f"a rubric expects {shape!r}")
            row, n = log_counts[i, SHAPES.index(shape)], min(MAX_COUNT, int(n))
            total = total + (row[n] if rubric.get("exact", True) else torch.logsumexp(row[n:], 0))
        for item in rubric["items"]:
            p = item["params"]
            if item["kind"] == "colour" and p.get("colour"):
                total = total + F.logsigmoid(logits.pairs[i, PAIRS.index((p["colour"], p["shape"]))].float())
            elif item["kind"] == "relation":
                triple = (p["a"][0], p["relation"], p["b"][0])
                total = total + F.logsigmoid(logits.relations[i, TRIPLES.index(triple)].float())
        terms.append(total)
    return torch.stack(terms)


def guidance(classifier: LatentClassifier, tokens: torch.Tensor, sigma: torch.Tensor, grid: tuple[int, int],
             rubrics: list[dict], scale: float, max_sigma: float) -> torch.Tensor:
    """What classifier guidance adds to a velocity: -scale · σ/(1-σ) · ∇x log p(rubric | x_σ), for tokens
    (B, h*w, C) at levels σ (B,); zero where σ > max_sigma (there the latent holds no readable scene yet and
    σ/(1-σ) grows without bound) and for rubrics that ask nothing the classifier reads."""
    sigma = sigma.float()
    active = sigma <= max_sigma
    if scale == 0 or not bool(active.any()):
        return torch.zeros_like(tokens, dtype=torch.float32)
    with torch.enable_grad():
        x = tokens.detach().float().transpose(1, 2).unflatten(2, grid).requires_grad_(True)
        log_p = rubric_log_prob(classifier(x, sigma), rubrics).sum()
        if not log_p.requires_grad:
            return torch.zeros_like(tokens, dtype=torch.float32)
        log_p.backward(inputs=[x])  # autograd.grad fails under FlopCounterMode (the benchmarks count FLOPs)
        grad = x.grad
    factor = torch.where(active, scale * sigma / (1 - sigma).clamp_min(1e-6), torch.zeros_like(sigma))
    return -factor[:, None, None] * grad.flatten(2).transpose(1, 2)


__all__ = ["ClassifierLogits", "LatentClassifier", "LatentClassifierConfig", "MAX_COUNT", "PAIRS", "SceneTargets",
           "TRIPLES", "classifier_loss", "guidance", "rubric_log_prob", "scene_targets"]
