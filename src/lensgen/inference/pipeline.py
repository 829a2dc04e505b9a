"""`LensPipeline`: prompt -> text features -> Euler/CFG sampling in token space -> decode -> PIL images.

A pipeline folder (diffusers-style):

    model_index.json     component list, plus a "lensgen" block: default size, steps, CFG, size limits
    transformer/         config.json + diffusion_pytorch_model.safetensors
    vae/                 the latent codec (a FLUX.2-class VAE folder, or a pixel codec's config)
    text_encoder/        the frozen text encoder's config (and weights location)
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from PIL import Image

from lensgen.errors import LensgenWarning, UserError
from lensgen.flow.sampler import cfg_velocity_fn, euler_sample
from lensgen.flow.schedule import sampling_sigmas, schedule_mu
from lensgen.images import to_pil
from lensgen.models.text_encoder import TextEncoder, TextFeatures
from lensgen.models.transformer import LensTransformer2DModel
from lensgen.models.vae import LatentCodec
from lensgen.sizes import validate_size

MODEL_INDEX = "model_index.json"
# The Shapes model trained by `lensgen train` and shipped in the package (see its MODEL_CARD.md).
DEFAULT_MODEL_DIR = Path(__file__).parents[1] / "assets" / "shapes-tiny"


@dataclass
class PipelineDefaults:
    """What `lensgen generate` uses when the user does not say."""

    height: int = 1024
    width: int = 1024
    steps: int = 20
    cfg: float = 5.0
    max_side: int = 1440
    # noise schedule shift: "empirical" (FLUX.2's, for Lens), "train" (the training shift), or a fixed mu
    schedule: str | float = "empirical"

    def sampling(self, steps: int | None, cfg: float | None) -> tuple[int, float]:
        """The steps and CFG scale a call samples with: the ones given, else these defaults."""
        return steps or self.steps, self.cfg if cfg is None else cfg

    @classmethod
    def from_dict(cls, d: dict) -> PipelineDefaults:
        known = {f.name for f in fields(cls)}
        defaults = cls(**{k: v for k, v in d.items() if k in known})
        try:
            schedule_mu(defaults.schedule, 256, defaults.steps)
        except ValueError as err:
            raise UserError(f"{MODEL_INDEX}: lensgen.schedule: {err}") from None
        return defaults


class LensPipeline:
    def __init__(
        self,
        transformer: LensTransformer2DModel,
        codec: LatentCodec,
        text_encoder: TextEncoder,
        defaults: PipelineDefaults | None = None,
        name: str = "lens",
    ):
        self.transformer = transformer.eval()
        self.codec = codec
        self.text_encoder = text_encoder
        self.defaults = defaults or PipelineDefaults()
        self.name = name
        cfg = transformer.config
        if codec.token_channels != cfg.in_channels:
            raise UserError(f"codec gives {codec.token_channels}-channel tokens but the transformer expects "
                            f"{cfg.in_channels}")
        if (text_encoder.num_layers, text_encoder.hidden_size) != (cfg.num_text_layers, cfg.enc_hidden_dim):
            raise UserError(f"text encoder gives {text_encoder.num_layers} layers x {text_encoder.hidden_size} "
                            f"but the transformer expects {cfg.num_text_layers} x {cfg.enc_hidden_dim}")

    @property
    def default_height(self) -> int:
        return self.defaults.height

    @property
    def default_width(self) -> int:
        return self.defaults.width

    @property
    def device(self) -> torch.device:
        return self.transformer.img_in.weight.device

    # ---- folders ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | None = None,
                        dtype: torch.dtype | None = None) -> LensPipeline:
        """Load every component straight onto `device` (a 20B text encoder must not pass through CPU fp32).
        dtype: None means fp32 on CPU, bf16 on CUDA."""
        if dtype is None and device is not None and torch.device(device).type == "cuda":
            dtype = torch.bfloat16
        directory = Path(directory)
        index_path = directory / MODEL_INDEX
        if not directory.is_dir():
            raise UserError(f"model folder {directory} does not exist")
        if not index_path.is_file():
            raise UserError(f"{directory} is not a lensgen model folder: {MODEL_INDEX} is missing "
                            f"(expected {MODEL_INDEX}, transformer/, vae/, text_encoder/)")
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"malformed {index_path}: {err}") from None
        for part in ("transformer", "vae", "text_encoder"):
            if not (directory / part).is_dir():
                raise UserError(f"model folder {directory} has no {part}/ sub-folder")
        transformer = LensTransformer2DModel.from_pretrained(directory / "transformer", device=device, dtype=dtype)
        codec = LatentCodec.from_pretrained(directory / "vae", device=device, dtype=dtype)
        text_encoder = TextEncoder.from_pretrained(directory / "text_encoder", device=device, dtype=dtype)
        defaults = PipelineDefaults.from_dict(index.get("lensgen", {}))
        return cls(transformer, codec, text_encoder, defaults, name=index.get("name", directory.name))

    def save_pretrained(self, directory: str | os.PathLike, storage: str = "fp32") -> None:
        """The folder `from_pretrained` reads; `storage` is the transformer's weight format (fp32, bf16, int8)."""
        from lensgen.io import atomic_write_json

        directory = Path(directory)
        self.transformer.save_pretrained(directory / "transformer", storage=storage)
        self.codec.save_pretrained(directory / "vae")
        self.text_encoder.save_pretrained(directory / "text_encoder")
        atomic_write_json(directory / MODEL_INDEX, {
            "_class_name": "LensPipeline",
            "name": self.name,
            "transformer": ["lensgen", "LensTransformer2DModel"],
            "vae": ["lensgen", type(self.codec).__name__],
            "text_encoder": ["lensgen", type(self.text_encoder).__name__],
            "lensgen": asdict(self.defaults),
        })

    def to(self, device) -> LensPipeline:
        self.transformer.to(device)
        self.codec.to(device)
        self.text_encoder.to(device)
        return self

    # ---- generation ---------------------------------------------------------------------------

    def warn_truncated(self, prompts: list[str]) -> None:
        """Warn about every prompt longer than the text encoder reads: the rest of it has no effect."""
        limit = self.text_encoder.max_length
        for prompt in dict.fromkeys(prompts):
            if prompt.strip() and (n := self.text_encoder.prompt_tokens(prompt)) > limit:
                warnings.warn(f"a prompt of {n:,} tokens was cut to the text encoder's {limit:,}: only its first "
                              f"{limit:,} tokens ({prompt[:40]!r}...) affect the image", LensgenWarning,
                              stacklevel=3)

    def encode_prompts(self, prompts: list[str], negative_prompt: str, guided: bool) -> TextFeatures:
        """Features for the batch; with guidance, [cond; uncond] stacked (padded to one length)."""
        self.warn_truncated([*prompts, negative_prompt] if guided else prompts)
        cond = self.text_encoder.encode(prompts)
        if not guided:
            return cond
        return TextFeatures.cat([cond, self.text_encoder.encode([negative_prompt] * len(prompts))])

    def initial_noise(self, seeds: list[int], height: int, width: int) -> torch.Tensor:
        """(B, h*w, C) Gaussian tokens; each sample's noise depends only on its own seed."""
        f, c = self.codec.spatial_factor, self.codec.token_channels
        grids = [torch.randn(c, height // f, width // f, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.stack(grids).flatten(2).transpose(1, 2).to(self.device)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | list[int] = 0,
        negative_prompt: str = "",
        progress: bool = False,
        output_type: str = "pil",
    ) -> list[Image.Image] | torch.Tensor:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise UserError("no prompt given")
        height = height or self.defaults.height
        width = width or self.defaults.width
        steps, cfg = self.defaults.sampling(steps, cfg)
        validate_size(height, width, multiple=self.codec.spatial_factor, max_side=self.defaults.max_side)
        seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
        if len(seeds) != len(prompts):
            raise UserError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if steps < 1:
            raise UserError(f"steps must be at least 1, got {steps}")

        grid = (height // self.codec.spatial_factor, width // self.codec.spatial_factor)
        guided = cfg != 1.0
        text = self.encode_prompts(prompts, negative_prompt, guided)
        features = text.features.to(self.device, self.transformer.img_in.weight.dtype)
        mask = text.mask.to(self.device)

        def model_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.transformer(x, features, sigma, grid, mask).float()

        velocity_fn = cfg_velocity_fn(model_fn, cfg) if guided else model_fn
        noise = self.initial_noise(seeds, height, width)
        sigmas = sampling_sigmas(steps, grid[0] * grid[1], schedule=self.defaults.schedule)
        tokens = euler_sample(velocity_fn, noise, sigmas, progress=progress)
        latents = tokens.transpose(1, 2).unflatten(2, grid)
        images = self.codec.decode(latents.to(self.codec.dtype)).float().clamp(-1, 1)
        if output_type == "pt":
            return images
        return to_pil(images)


__all__ = ["DEFAULT_MODEL_DIR", "LensPipeline", "PipelineDefaults"]
