"""Latent codecs: images <-> the normalised token grids the transformer denoises.

- `Flux2VAECodec`: the FLUX.2 VAE (diffusers' `AutoencoderKLFlux2`, 32 latent channels, 8x down), 2x2
  patchified to 128 channels and normalised with the VAE's BatchNorm running statistics, exactly as diffusers'
  Flux2 pipeline does (`_patchify_latents`, then `(x - running_mean) / sqrt(running_var + batch_norm_eps)`).
  Without a `path` it is the small Shapes VAE shipped with the Shapes model (`lensgen train-vae`).
- `PixelCodec`: pixels in [-1, 1] as latents, space-to-depth with p x p patches (3p^2 channels). Lossless
  and free of weights: quick tests and experiments; no shipped model uses it.

Token grids are (B, C_tok, H / f, W / f) float32, f = `spatial_factor` pixels per token side.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lensgen import SHIPPED_MODELS_DIR
from lensgen.errors import UserError
from lensgen.io import atomic_write_json
from lensgen.models.frozen import FrozenModule, quiet_progress_bars, read_component_config

CONFIG_NAME = "lensgen_codec.json"
# The Shapes VAE (`lensgen train-vae`) shipped with the Shapes model: a flux2-vae codec without a path.
SHAPES_VAE_DIR = SHIPPED_MODELS_DIR / "shapes-tiny-base" / "vae"


def patchify(x: torch.Tensor, p: int = 2) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*p*p, H/p, W/p); output channel c*p*p + i*p + j holds x[:, c, i::p, j::p]
    (the order of FLUX.2 / diffusers' `Flux2Pipeline._patchify_latents`)."""
    b, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"patchify: height and width ({h}, {w}) must be multiples of {p}")
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * p * p, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Exact inverse of `patchify`: (B, C*p*p, h, w) -> (B, C, h*p, w*p)."""
    b, cpp, h, w = x.shape
    if cpp % (p * p):
        raise ValueError(f"unpatchify: {cpp} channels is not a multiple of {p * p}")
    x = x.reshape(b, cpp // (p * p), p, p, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, cpp // (p * p), h * p, w * p)


def flux2_spatial_factor(vae_config) -> int:
    """Image pixels per token of an AutoencoderKLFlux2 config: its down-sampling, then its patches."""
    return 2 ** (len(vae_config.block_out_channels) - 1) * vae_config.patch_size[0]


class LatentCodec(FrozenModule):
    """A frozen image <-> token-grid codec. Subclasses implement `encode`, `decode` and `config_dict`."""

    config_name = CONFIG_NAME
    spatial_factor: int  # image pixels per token side
    token_channels: int  # channels per token

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(f"image size {h}x{w} is not a multiple of {self.spatial_factor} "
                             f"({type(self).__name__} has {self.spatial_factor} pixels per token)")

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.ndim != 4 or tokens.shape[1] != self.token_channels:
            raise ValueError(f"expected tokens (B, {self.token_channels}, h, w), got {tuple(tokens.shape)}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> normalised tokens (B, C_tok, H/f, W/f), float32."""
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised tokens -> (B, 3, H, W) in [-1, 1], float32."""
        with torch.no_grad():
            return self.decode_with_grad(tokens)

    def decode_with_grad(self, tokens: torch.Tensor) -> torch.Tensor:
        """`decode` under the caller's grad mode: images differentiable in the tokens (reward backpropagation)."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device=None, dtype=None) -> LatentCodec:
        return load_codec(directory, device=device, dtype=dtype)


class PixelCodec(LatentCodec):
    """Pixels as latents: space-to-depth with `patch_size` x `patch_size` patches (3 * p * p channels)."""

    backend = "pixel"

    def __init__(self, patch_size: int = 8):
        super().__init__()
        if not isinstance(patch_size, int) or patch_size < 1:
            raise UserError(f"pixel codec patch_size must be a positive integer, got {patch_size!r}")
        self.patch_size = patch_size
        self.spatial_factor = patch_size
        self.token_channels = 3 * patch_size * patch_size
        self.freeze()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        return patchify(images.float(), self.patch_size)

    def decode_with_grad(self, tokens: torch.Tensor) -> torch.Tensor:
        self._check_tokens(tokens)
        return unpatchify(tokens.float(), self.patch_size).clamp(-1, 1)

    def config_dict(self) -> dict:
        return {"backend": self.backend, "patch_size": self.patch_size}


class Flux2VAECodec(LatentCodec):
    """The FLUX.2 VAE with the Flux2 pipeline's patchify and BatchNorm-statistics normalisation.

    `encode` takes the latent distribution's mode (= its mean for this diagonal Gaussian), as the Flux2
    pipeline does for image latents (sample_mode="argmax"): deterministic, so cached training latents and
    reconstructions are reproducible. `sample=True` draws z = mean + std * noise instead (a mild augmentation
    for training)."""

    backend = "flux2-vae"

    def __init__(self, vae, path: str | None = None, sample: bool = False):
        super().__init__()
        self.vae = vae
        self.path = path
        self.sample = sample
        cfg = vae.config
        patch = tuple(cfg.patch_size)
        if patch[0] != patch[1]:
            raise UserError(f"FLUX.2 VAE patch_size {patch} is not square")
        self.patch = patch[0]
        self.spatial_factor = flux2_spatial_factor(cfg)
        self.token_channels = cfg.latent_channels * self.patch * self.patch
        self.freeze()

    @classmethod
    def from_folder(cls, path: str | os.PathLike, sample: bool = False, device=None, dtype=None) -> Flux2VAECodec:
        from diffusers import AutoencoderKLFlux2

        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"FLUX.2 VAE folder {path} is missing or has no config.json")
        try:
            with quiet_progress_bars("diffusers"):
                vae = AutoencoderKLFlux2.from_pretrained(str(path), torch_dtype=dtype or torch.float32)
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"cannot load a FLUX.2 VAE (AutoencoderKLFlux2) from {path}: {err}") from None
        codec = cls(vae, path=str(path), sample=sample)
        return codec.to(device) if device is not None else codec

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.vae.bn
        mean = bn.running_mean.float().view(1, -1, 1, 1)
        std = torch.sqrt(bn.running_var.float().view(1, -1, 1, 1) + self.vae.config.batch_norm_eps)
        return mean, std

    def normalize(self, patched: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats()
        return (patched.float() - mean) / std

    def denormalize(self, tokens: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats()
        return tokens.float() * std + mean

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        self._check_images(images)
        vae_dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(images.to(vae_dtype)).latent_dist
        z = dist.sample(generator) if (self.sample if sample is None else sample) else dist.mode()
        return self.normalize(patchify(z.float(), self.patch))

    def vae_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, C, h, w), normalised and patchified -> the latents the VAE's decoder takes."""
        return unpatchify(self.denormalize(tokens), self.patch)

    def decode_with_grad(self, tokens: torch.Tensor) -> torch.Tensor:
        self._check_tokens(tokens)
        z = self.vae_latents(tokens)
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(z.to(vae_dtype)).sample.float().clamp(-1, 1)

    def config_dict(self) -> dict:
        return {"backend": self.backend, "path": self.path, "sample": self.sample}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the VAE itself (diffusers layout) and our config pointing at it, so the folder stands alone."""
        directory = Path(directory)
        self.vae.save_pretrained(str(directory))
        atomic_write_json(directory / CONFIG_NAME, {**self.config_dict(), "path": "."})


@torch.no_grad()
def check_same_latents(codec: LatentCodec, reference: LatentCodec, what: str) -> None:
    """Refuse `codec` (named `what`) unless it encodes images to exactly `reference`'s tokens: then a model
    trained in `reference`'s latent space can decode through it (e.g. a lighter decoder for the same VAE)."""
    if (codec.spatial_factor, codec.token_channels) != (reference.spatial_factor, reference.token_channels):
        raise UserError(f"{what} has {codec.token_channels}-channel tokens of {codec.spatial_factor} px, the model's "
                        f"codec {reference.token_channels} of {reference.spatial_factor} px")
    side = 4 * reference.spatial_factor
    images = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours, theirs = codec.encode(images.to(codec.device)), reference.encode(images.to(reference.device))
    if not torch.allclose(ours.cpu(), theirs.cpu(), atol=1e-4, rtol=1e-4):
        raise UserError(f"{what} encodes images to other tokens than the model's codec (largest difference "
                        f"{(ours.cpu() - theirs.cpu()).abs().max().item():.3g}): only a decoder distilled for the "
                        "same VAE (`lensgen train-vae --set teacher=...`) can replace it")


def build_codec(config: dict, device=None, dtype=None) -> LatentCodec:
    """From a config dict (as `config_dict()` writes it). `device`/`dtype` are runtime choices."""
    if not isinstance(config, dict):
        raise UserError(f"codec config must be a mapping, got {type(config).__name__}")
    backend = config.get("backend")
    allowed = {"pixel": {"patch_size"}, "flux2-vae": {"path", "sample"}}
    if backend not in allowed:
        raise UserError(f"unknown codec backend {backend!r}; expected one of {sorted(allowed)}")
    unknown = sorted(set(config) - allowed[backend] - {"backend"})
    if unknown:
        raise UserError(f"unknown {backend} codec field(s) {unknown}; known: {sorted(allowed[backend])}")
    if backend == "pixel":
        codec = PixelCodec(config.get("patch_size", 8))
        return codec.to(device) if device is not None else codec
    path = config.get("path") or SHAPES_VAE_DIR  # no path: the Shapes VAE shipped in the package
    return Flux2VAECodec.from_folder(path, sample=bool(config.get("sample", False)), device=device, dtype=dtype)


def load_codec(directory: str | os.PathLike, device=None, dtype=None) -> LatentCodec:
    """From a folder with our config JSON (a relative `path` resolves against the folder), or from a plain
    diffusers AutoencoderKLFlux2 folder (e.g. the `vae/` of a FLUX.2 or Lens release)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"codec folder {directory} does not exist")
    ours, theirs = directory / CONFIG_NAME, directory / "config.json"
    if ours.is_file():
        return build_codec(read_component_config(ours), device=device, dtype=dtype)
    if theirs.is_file():
        try:
            class_name = json.loads(theirs.read_text()).get("_class_name")
        except (json.JSONDecodeError, AttributeError):
            class_name = None
        if class_name == "AutoencoderKLFlux2":
            return Flux2VAECodec.from_folder(directory, device=device, dtype=dtype)
        raise UserError(f"{theirs} is not a FLUX.2 VAE (_class_name {class_name!r}, expected AutoencoderKLFlux2)")
    raise UserError(f"{directory} holds no codec: expected {CONFIG_NAME} or a diffusers config.json")


__all__ = ["CONFIG_NAME", "SHAPES_VAE_DIR", "Flux2VAECodec", "LatentCodec", "PixelCodec", "build_codec",
           "check_same_latents", "flux2_spatial_factor",
           "load_codec", "patchify", "unpatchify"]
