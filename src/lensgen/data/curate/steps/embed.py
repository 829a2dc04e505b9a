"""Image embeddings for the aesthetic head and near-duplicate search.

- `ClipEmbedder`: CLIP's image tower through transformers' `CLIPVisionModelWithProjection`, from a
  local folder (a full CLIP checkpoint such as openai/clip-vit-large-patch14 works: its vision part
  is loaded). L2-normalised `image_embeds`: what the LAION aesthetic heads were trained on.
- `ThumbnailEmbedder`: no weights. The image squeezed to `size` x `size` RGB, each channel's mean
  removed, L2-normalised: cosine similarity is then the correlation of the two thumbnails. It
  catches re-encodes, resizes, mild blur or noise, and brightness / contrast / colour-cast shifts; it
  misses crops, flips, rotations, shifted framing, overlays that cover much of the image, and
  semantic duplicates (the same scene shot twice), which need CLIP. Flat images embed to zero and
  never match (the entropy step removes them first).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from lensgen.errors import UserError


@contextlib.contextmanager
def quiet_transformers():
    """Load a model without transformers' per-key load report and progress bars (a full CLIP
    checkpoint loaded as its vision tower lists every unused text weight)."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


class ThumbnailEmbedder:
    name = "thumbnail"

    def __init__(self, size: int = 16):
        self.size = size
        self.dim = 3 * size * size

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), np.float32)
        for i, image in enumerate(images):
            small = np.asarray(image.resize((self.size, self.size), Image.Resampling.BOX), np.float32)
            small = small - small.reshape(-1, 3).mean(axis=0)
            norm = float(np.linalg.norm(small))
            if norm > 1e-3:
                out[i] = small.ravel() / norm
        return out


class ClipEmbedder:
    name = "clip"

    def __init__(self, path: str | Path):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"clip_path: {path} is not a transformers CLIP folder (no config.json)")
        import torch
        from transformers import (
            AutoImageProcessor,
            CLIPConfig,
            CLIPImageProcessor,
            CLIPVisionModelWithProjection,
        )

        self.torch = torch
        try:
            config = None
            if json.loads((path / "config.json").read_text()).get("model_type") == "clip":
                # a full CLIP checkpoint: the projection size lives on the outer config
                full = CLIPConfig.from_pretrained(path)
                config = full.vision_config
                config.projection_dim = full.projection_dim
            with quiet_transformers():
                self.model = CLIPVisionModelWithProjection.from_pretrained(path, config=config).eval()
        except Exception as err:
            raise UserError(f"clip_path: cannot load a CLIP vision model from {path}: {err}") from err
        with quiet_transformers():
            if (path / "preprocessor_config.json").is_file():
                self.processor = AutoImageProcessor.from_pretrained(path)
            else:  # CLIP's standard preprocessing at the model's resolution
                size = self.model.config.image_size
                self.processor = CLIPImageProcessor(size={"shortest_edge": size},
                                                    crop_size={"height": size, "width": size})
        self.dim = int(self.model.config.projection_dim)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        with self.torch.inference_mode():
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
            embeds = self.model(pixel_values=pixels).image_embeds.float()
            embeds = embeds / embeds.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return embeds.numpy().astype(np.float32)
