"""Step 4, aesthetics: the LAION aesthetic predictor on CLIP ViT-L/14 image embeddings.

The head is read from a local state dict (.pth / .pt / .bin via torch.load(weights_only=True), or
.safetensors) in either LAION layout: the "improved aesthetic predictor" MLP (keys
`layers.{0,2,4,6,7}.weight/bias`: 768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropout between, no
activations) or the older linear head (`weight`, `bias`). Its input is the L2-normalised CLIP image
embedding; its output is a score on the AVA 1-10 scale. Lens drops images scoring below 3.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lensgen.data.curate.config import AestheticConfig
from lensgen.data.curate.steps.base import Item, Step
from lensgen.errors import UserError


def load_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"aesthetic.head_path: no file at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"aesthetic.head_path: cannot read {path}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def build_head(state: dict, path: Path):
    """An nn.Sequential of the Linear layers in the state dict, in layer order (dropouts are no-ops here)."""
    import torch

    if set(state) == {"weight", "bias"}:
        indices, prefix = [None], ""
    else:
        indices = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"layers\.(\d+)\.weight", k))})
        prefix = "layers."
        if not indices:
            raise UserError(
                f"aesthetic.head_path: {path} is not a LAION aesthetic head "
                "(expected keys layers.N.weight/bias or weight/bias)"
            )
    layers = []
    for i in indices:
        name = f"{prefix}{i}." if i is not None else ""
        weight, bias = state[f"{name}weight"], state.get(f"{name}bias")
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        layers.append(layer)
    for a, b in zip(layers, layers[1:]):
        if a.out_features != b.in_features:
            raise UserError(f"aesthetic.head_path: {path}: layer sizes do not chain ({a} then {b})")
    if layers[-1].out_features != 1:
        raise UserError(f"aesthetic.head_path: {path}: the last layer must output 1 score")
    return torch.nn.Sequential(*layers).eval()


class AestheticStep(Step):
    name, column = "aesthetic", "aesthetic_score"

    def __init__(self, config: AestheticConfig, clip):
        path = Path(config.head_path)
        self.head = build_head(load_state_dict(path), path)
        if self.head[0].in_features != clip.dim:
            raise UserError(
                f"aesthetic.head_path: {path} expects {self.head[0].in_features}-d embeddings but the CLIP "
                f"model at clip_path gives {clip.dim}-d (the LAION heads need CLIP ViT-L/14, 768-d)"
            )
        self.clip, self.min_score = clip, config.min_score

    def score(self, items: list[Item]) -> list[float]:
        import torch

        embeds = clip_embeddings(self.clip, items)
        with torch.inference_mode():
            out = self.head(torch.from_numpy(embeds)).squeeze(-1)
        return [float(v) for v in out]

    def rejects(self, value: float) -> bool:
        return value < self.min_score


def clip_embeddings(clip, items: list[Item]) -> np.ndarray:
    """CLIP embeddings of the items, computed once per item and cached on it."""
    missing = [item for item in items if "clip" not in item.cache]
    if missing:
        for item, vector in zip(missing, clip.embed([item.image for item in missing])):
            item.cache["clip"] = vector
    return np.stack([item.cache["clip"] for item in items])
