"""Cached text features: encode each distinct prompt once, in memory and optionally on disk.

The frozen text encoder gives the same features for the same prompt every time, so on a small, fixed
dataset trained for many epochs (or with GenEval-style short captions, which repeat) re-encoding is
wasted work: for GPT-OSS-20B it is most of a step. Entries are keyed by the encoder's config and the
prompt text, so a folder can never serve features from another encoder, layer set or length limit.
On disk each prompt is one small safetensors file (its valid tokens only), written atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from lensgen.io import atomic_open
from lensgen.models.text_encoder import TextEncoder, TextFeatures


class CachedTextEncoder:
    """`encode(prompts) -> TextFeatures` like the encoder it wraps, computing only prompts it has not seen."""

    def __init__(self, encoder: TextEncoder, directory: str | Path | None = None, memory_items: int = 8192):
        self.encoder = encoder
        self.directory = Path(directory) if directory else None
        self.memory_items = memory_items
        self.memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.encoder_key = json.dumps(encoder.config_dict(), sort_keys=True, default=str)
        self.hits = self.misses = 0
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)

    def key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.encoder_key}\0{prompt}".encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def _lookup(self, key: str) -> torch.Tensor | None:
        if key in self.memory:
            self.memory.move_to_end(key)
            return self.memory[key]
        if self.directory and self._path(key).is_file():
            value = load_file(self._path(key))["features"]
            self._remember(key, value)
            return value
        return None

    def _remember(self, key: str, value: torch.Tensor) -> None:
        self.memory[key] = value
        while len(self.memory) > self.memory_items:
            self.memory.popitem(last=False)

    def _store(self, key: str, value: torch.Tensor) -> None:
        self._remember(key, value)
        if self.directory:
            path = self._path(key)
            path.parent.mkdir(exist_ok=True)
            with atomic_open(path, "wb") as f:
                f.write(save({"features": value.contiguous()}))

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextFeatures:
        key_of = {p: self.key(p) for p in prompts}
        keys = [key_of[p] for p in prompts]
        found = {k: v for k in dict.fromkeys(keys) if (v := self._lookup(k)) is not None}
        missing = [p for p, k in key_of.items() if k not in found]
        self.hits += len(prompts) - sum(1 for k in keys if k not in found)
        self.misses += len(missing)
        if missing:
            fresh = self.encoder.encode(missing)
            for i, prompt in enumerate(missing):
                valid = int(fresh.mask[i].sum())  # right-padded: the valid tokens come first
                found[key_of[prompt]] = fresh.features[i, :valid].cpu().clone()
                self._store(key_of[prompt], found[key_of[prompt]])
        length = max(1, max(found[k].shape[0] for k in keys))
        _, layers, dim = next(iter(found.values())).shape
        features = torch.zeros(len(prompts), length, layers, dim, dtype=self.encoder.dtype)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        for i, k in enumerate(keys):
            n = found[k].shape[0]
            features[i, :n] = found[k]
            mask[i, :n] = True
        return TextFeatures(features.to(self.encoder.device), mask.to(self.encoder.device))


def text_features(encoder: TextEncoder, cache: str | None) -> TextEncoder | CachedTextEncoder:
    """What a training loop encodes prompts with: the encoder itself (cache None), or a cache in front of it
    ("" keeps features in memory only, a folder also on disk)."""
    return encoder if cache is None else CachedTextEncoder(encoder, cache or None)


__all__ = ["CachedTextEncoder", "text_features"]
