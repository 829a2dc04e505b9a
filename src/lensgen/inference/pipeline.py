"""`LensPipeline`: prompt -> text features -> Euler/CFG sampling in token space -> decode -> PIL images.

Given starting images (`image=`, `strength=`), it samples image-to-image as SDEdit does: each image's tokens
are noised to a level part-way down the schedule and the same solver runs from there.

A pipeline folder (diffusers-style):

    model_index.json     component list, plus a "lensgen" block: default size, steps, CFG, size rules
                         (size_multiple = pixels per token side, max_side), read before the weights load
    transformer/         config.json + diffusion_pytorch_model.safetensors
    vae/                 the latent codec (a FLUX.2-class VAE folder, or a pixel codec's config)
    text_encoder/        the frozen text encoder's config (and weights location)
    classifier/          optional: a latent classifier whose guidance steers sampling toward what a Shapes
                         prompt asks (`classifier_guidance.py`; lensgen.classifier_scale turns it on)
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from PIL import Image

from lensgen import SHIPPED_MODELS_DIR
from lensgen.errors import LensgenWarning, UserError
from lensgen.flow.sampler import SOLVERS, cfg_velocity_fn, sample
from lensgen.flow.schedule import sampling_sigmas, schedule_mu
from lensgen.images import image_to_tensor, to_pil
from lensgen.inference.classifier_guidance import (
    CLASSIFIER_FOLDER,
    check_classifier_scale,
    check_max_sigma,
    guided_velocity_fn,
)
from lensgen.models.latent_classifier import LatentClassifier
from lensgen.models.text_encoder import TextEncoder, TextFeatures
from lensgen.models.transformer import LensTransformer2DModel
from lensgen.models.vae import LatentCodec
from lensgen.shapes.sign_layout import planned_layouts
from lensgen.sizes import validate_size

MODEL_INDEX = "model_index.json"
DEFAULT_STRENGTH = 0.6  # image-to-image's starting noise level: the picture's layout kept, its details redrawn
DEFAULT_MODEL_DIR = SHIPPED_MODELS_DIR / "shapes-tiny"


def shipped_models() -> list[str]:
    """Names of the model folders shipped inside the package (usable by name wherever a folder is asked)."""
    return sorted(p.name for p in SHIPPED_MODELS_DIR.iterdir() if (p / MODEL_INDEX).is_file())


def model_dir(model: str | os.PathLike) -> Path:
    """A model folder given as a path, or by the name of a shipped model (`shapes-tiny`) when no such path
    exists here."""
    path = Path(model)
    if not path.exists() and len(path.parts) == 1 and (SHIPPED_MODELS_DIR / path.name / MODEL_INDEX).is_file():
        return SHIPPED_MODELS_DIR / path.name
    return path


def check_device(device: str | torch.device | None) -> torch.device | None:
    """The device to load onto, refused with a clear message when torch cannot parse it or this machine lacks
    it (loading would otherwise fail deep inside a weight loader, e.g. on pin_memory)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"unknown device '{device}': expected cpu, cuda, cuda:N or mps") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}.get(dev.type)
    if available is None:
        available = getattr(getattr(torch, dev.type, None), "is_available", None)
    if available is not None and not available():
        build = f", and this torch {torch.__version__} has no CUDA support" if dev.type == "cuda" and \
            not torch.version.cuda else ""
        raise UserError(f"device '{device}': {dev.type.upper()} is not available on this machine{build}; "
                        f"use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= (n := torch.cuda.device_count()):
        raise UserError(f"device '{device}' does not exist: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    return dev


def check_strength(strength: float, name: str = "strength") -> None:
    """Image-to-image's starting noise level: in (0, 1] (1 = pure noise, the image ignored)."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:
        raise UserError(f"{name} must be a number in (0, 1] (the noise level image-to-image starts from; 1 = "
                        f"pure noise), got {strength!r}")


def check_sampling(steps: int, cfg: float, steps_name: str = "steps", cfg_name: str = "cfg") -> None:
    """Refuse steps < 1 and a CFG that is negative or not finite (NaN or inf give a black image, silently)."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise UserError(f"{steps_name} must be a whole number of at least 1, got {steps!r}")
    if isinstance(cfg, bool) or not isinstance(cfg, numbers.Real) or not math.isfinite(cfg) or cfg < 0:
        raise UserError(f"{cfg_name} must be a finite number >= 0 (1 = no guidance), got {cfg!r}")


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
    solver: str = "euler"  # the ODE solver: euler | dpm2 (DPM-Solver++ 2M)
    # image pixels per token side (the codec's spatial_factor): sizes are checked with it before the weights
    # load. None in folders saved before it was stored; the pipeline then takes it from its codec.
    size_multiple: int | None = None
    # classifier guidance (a folder with classifier/ only): its scale (0 = off) and the noise level it starts at
    classifier_scale: float = 0.0
    classifier_max_sigma: float = 0.8

    def sampling(self, steps: int | None, cfg: float | None, steps_name: str = "steps",
                 cfg_name: str = "cfg") -> tuple[int, float]:
        """The steps and CFG scale a call samples with: the ones given (0 is refused, not defaulted), else
        these defaults."""
        steps = self.steps if steps is None else steps
        cfg = self.cfg if cfg is None else cfg
        check_sampling(steps, cfg, steps_name, cfg_name)
        return steps, cfg

    def guidance_scale(self, scale: float | None, name: str = "classifier_scale") -> float:
        """The classifier guidance scale a call samples with: the one given (0 turns it off), else the default."""
        scale = self.classifier_scale if scale is None else scale
        check_classifier_scale(scale, name)
        return float(scale)

    def resolve_size(self, height: int | None, width: int | None, multiple: int | None = None) -> tuple[int, int]:
        """The (height, width) a call samples at: the ones given (0 is refused, not defaulted), else these
        defaults; checked against `multiple` (default size_multiple) and max_side when a multiple is known."""
        height = self.height if height is None else height
        width = self.width if width is None else width
        multiple = multiple or self.size_multiple
        if multiple is None:
            return height, width
        return validate_size(height, width, multiple=multiple, max_side=self.max_side)

    @classmethod
    def from_dict(cls, d: dict) -> PipelineDefaults:
        known = {f.name for f in fields(cls)}
        defaults = cls(**{k: v for k, v in d.items() if k in known})
        try:
            schedule_mu(defaults.schedule, 256, defaults.steps)
        except ValueError as err:
            raise UserError(f"{MODEL_INDEX}: lensgen.schedule: {err}") from None
        if defaults.solver not in SOLVERS:
            raise UserError(f"{MODEL_INDEX}: lensgen.solver must be one of {', '.join(SOLVERS)}, got "
                            f"{defaults.solver!r}")
        check_sampling(defaults.steps, defaults.cfg, f"{MODEL_INDEX}: lensgen.steps", f"{MODEL_INDEX}: lensgen.cfg")
        check_classifier_scale(defaults.classifier_scale, f"{MODEL_INDEX}: lensgen.classifier_scale")
        check_max_sigma(defaults.classifier_max_sigma, f"{MODEL_INDEX}: lensgen.classifier_max_sigma")
        m = defaults.size_multiple
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise UserError(f"{MODEL_INDEX}: lensgen.size_multiple must be a positive whole number (pixels per "
                            f"token side), got {m!r}")
        return defaults


def read_model_index(directory: str | os.PathLike) -> dict:
    """model_index.json of a model folder, after checking the folder's layout: cheap (no weights), so a
    command can check its arguments against the model's defaults before the slow load."""
    directory = model_dir(directory)
    index_path = directory / MODEL_INDEX
    if not directory.is_dir():
        raise UserError(f"model folder {directory} does not exist (shipped models, usable by name: "
                        f"{', '.join(shipped_models())})")
    if not index_path.is_file():
        raise UserError(f"{directory} is not a lensgen model folder: {MODEL_INDEX} is missing "
                        f"(expected {MODEL_INDEX}, transformer/, vae/, text_encoder/)")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"malformed {index_path}: {err}") from None
    if not isinstance(index, dict) or not isinstance(index.get("lensgen", {}), dict):
        raise UserError(f"malformed {index_path}: expected an object with a \"lensgen\" object")
    for part in ("transformer", "vae", "text_encoder", *([CLASSIFIER_FOLDER] if CLASSIFIER_FOLDER in index else [])):
        if not (directory / part).is_dir():
            raise UserError(f"model folder {directory} has no {part}/ sub-folder")
    return index


def read_defaults(directory: str | os.PathLike) -> PipelineDefaults:
    """The sampling defaults and size rules of a model folder, without loading its weights."""
    return PipelineDefaults.from_dict(read_model_index(directory).get("lensgen", {}))


def classifier_scale_for(directory: str | os.PathLike, defaults: PipelineDefaults, scale: float | None,
                         name: str = "--classifier-scale") -> float | None:
    """The classifier guidance scale a command samples a model folder (whose `defaults` it has read) with: the
    one given, else the folder's default, checked without loading weights; None for a folder without a
    classifier, when none is asked."""
    directory = model_dir(directory)
    scale = defaults.guidance_scale(scale, name)
    if (directory / CLASSIFIER_FOLDER).is_dir():
        return scale
    if scale > 0:
        raise UserError(f"{name} {scale:g}: {directory} has no classifier ({CLASSIFIER_FOLDER}/) to guide with; "
                        f"the shipped shapes-tiny and shapes-tiny-turbo have one")
    return None


def check_codec(directory: Path, defaults: PipelineDefaults, codec: LatentCodec) -> None:
    """The folder's size rule must match its codec (a token side is the codec's pixels per latent)."""
    if defaults.size_multiple not in (None, codec.spatial_factor):
        raise UserError(f"{directory / MODEL_INDEX}: lensgen.size_multiple is {defaults.size_multiple} but "
                        f"the codec in vae/ has {codec.spatial_factor} pixels per token side")


@dataclass
class StartingPoint:
    """What a post-training stage (RL, distillation) reads from the pipeline folder it starts from: the
    name and sampling defaults its export inherits, the frozen text encoder and codec, and the transformer
    in fp32 to train (`text_dtype` is the frozen encoder's: bf16 on GPUs, never through host fp32)."""

    name: str
    defaults: PipelineDefaults
    text_encoder: TextEncoder
    codec: LatentCodec
    transformer: LensTransformer2DModel

    @classmethod
    def load(cls, model: str | os.PathLike, device: torch.device, text_dtype: torch.dtype) -> StartingPoint:
        directory = model_dir(model)  # a folder, or a shipped model by name
        index = read_model_index(directory)
        defaults = PipelineDefaults.from_dict(index.get("lensgen", {}))
        codec = LatentCodec.from_pretrained(directory / "vae", device=device)
        check_codec(directory, defaults, codec)  # before the big parts load
        return cls(name=index.get("name", directory.name), defaults=defaults,
                   text_encoder=TextEncoder.from_pretrained(directory / "text_encoder", device=device,
                                                            dtype=text_dtype),
                   codec=codec,
                   transformer=LensTransformer2DModel.from_pretrained(directory / "transformer").to(device).train())


class LensPipeline:
    def __init__(
        self,
        transformer: LensTransformer2DModel,
        codec: LatentCodec,
        text_encoder: TextEncoder,
        defaults: PipelineDefaults | None = None,
        name: str = "lens",
        classifier: LatentClassifier | None = None,
    ):
        self.transformer = transformer.eval()
        self.codec = codec
        self.text_encoder = text_encoder
        self.classifier = classifier.eval().requires_grad_(False) if classifier is not None else None
        defaults = defaults or PipelineDefaults()
        if defaults.size_multiple is None:
            defaults = replace(defaults, size_multiple=codec.spatial_factor)
        elif defaults.size_multiple != codec.spatial_factor:
            raise UserError(f"size_multiple {defaults.size_multiple} does not match the codec's "
                            f"{codec.spatial_factor} pixels per token")
        self.defaults = defaults
        self.name = name
        cfg = transformer.config
        if codec.token_channels != cfg.in_channels:
            raise UserError(f"codec gives {codec.token_channels}-channel tokens but the transformer expects "
                            f"{cfg.in_channels}")
        if (text_encoder.num_layers, text_encoder.hidden_size) != (cfg.num_text_layers, cfg.enc_hidden_dim):
            raise UserError(f"text encoder gives {text_encoder.num_layers} layers x {text_encoder.hidden_size} "
                            f"but the transformer expects {cfg.num_text_layers} x {cfg.enc_hidden_dim}")
        if classifier is None and defaults.classifier_scale > 0:
            raise UserError(f"{name}: classifier_scale {defaults.classifier_scale:g} by default, but the pipeline has "
                            f"no classifier (a folder's {CLASSIFIER_FOLDER}/)")
        if cfg.layout_channels and cfg.layout_channels != codec.spatial_factor**2:
            raise UserError(f"the transformer's layout input takes {cfg.layout_channels} pixels a token but the "
                            f"codec's tokens cover {codec.spatial_factor}x{codec.spatial_factor}")
        if classifier is not None and classifier.config.channels != codec.token_channels:
            raise UserError(f"the classifier reads {classifier.config.channels}-channel tokens but the codec gives "
                            f"{codec.token_channels}")

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
        dtype: None means fp32 on CPU, bf16 on CUDA. A device torch cannot parse or this machine lacks is a
        UserError, before anything loads."""
        dev = check_device(device)
        if dtype is None and dev is not None and dev.type == "cuda":
            dtype = torch.bfloat16
        directory = model_dir(directory)
        index = read_model_index(directory)
        defaults = PipelineDefaults.from_dict(index.get("lensgen", {}))
        codec = LatentCodec.from_pretrained(directory / "vae", device=device, dtype=dtype)
        check_codec(directory, defaults, codec)  # before the big parts load
        transformer = LensTransformer2DModel.from_pretrained(directory / "transformer", device=device, dtype=dtype)
        text_encoder = TextEncoder.from_pretrained(directory / "text_encoder", device=device, dtype=dtype)
        # small and differentiated through at every step: kept in fp32 whatever the transformer's dtype
        classifier = LatentClassifier.from_pretrained(directory / CLASSIFIER_FOLDER, device=dev or "cpu") \
            if (directory / CLASSIFIER_FOLDER).is_dir() else None
        return cls(transformer, codec, text_encoder, defaults, name=index.get("name", directory.name),
                   classifier=classifier)

    def save_pretrained(self, directory: str | os.PathLike, storage: str = "fp32") -> None:
        """The folder `from_pretrained` reads; `storage` is the transformer's weight format (fp32, bf16, int8,
        int4). A classifier is stored in fp16 (its guidance is a gradient direction; half the bytes)."""
        from lensgen.io import atomic_write_json

        directory = Path(directory)
        self.transformer.save_pretrained(directory / "transformer", storage=storage)
        self.codec.save_pretrained(directory / "vae")
        self.text_encoder.save_pretrained(directory / "text_encoder")
        classifier = {}
        if self.classifier is not None:
            self.classifier.save_pretrained(directory / CLASSIFIER_FOLDER, dtype=torch.float16)
            classifier = {CLASSIFIER_FOLDER: ["lensgen", type(self.classifier).__name__]}
        atomic_write_json(directory / MODEL_INDEX, {
            "_class_name": "LensPipeline",
            "name": self.name,
            "transformer": ["lensgen", "LensTransformer2DModel"],
            "vae": ["lensgen", type(self.codec).__name__],
            "text_encoder": ["lensgen", type(self.text_encoder).__name__],
            **classifier,
            # the codec decides the size rule; stored so a command can check sizes before loading weights
            "lensgen": asdict(replace(self.defaults, size_multiple=self.codec.spatial_factor)),
        })

    def to(self, device) -> LensPipeline:
        check_device(device)
        self.transformer.to(device)
        self.codec.to(device)
        self.text_encoder.to(device)
        if self.classifier is not None:
            self.classifier.to(device)
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

    def encode_prompts(self, prompts: list[str], negative_prompt: str | list[str], guided: bool) -> TextFeatures:
        """Features for the batch; with guidance, [cond; uncond] stacked (padded to one length).
        negative_prompt: one for the batch, or one per prompt."""
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise UserError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        self.warn_truncated([*prompts, *negatives] if guided else prompts)
        cond = self.text_encoder.encode(prompts)
        if not guided:
            return cond
        return TextFeatures.cat([cond, self.text_encoder.encode(negatives)])

    def sign_layouts(self, prompts: list[str], seeds: list[int], height: int, width: int) -> torch.Tensor | None:
        """(B, N, f*f) per-token drawings of each prompt's planned sign (`shapes.sign_layout`) for a
        transformer with a layout input; None for one without, or when no prompt quotes a word."""
        if not self.transformer.config.layout_channels:
            return None
        layouts = planned_layouts(prompts, seeds, height, width, self.codec.spatial_factor)
        return None if layouts is None else torch.from_numpy(layouts)

    def initial_noise(self, seeds: list[int], height: int, width: int) -> torch.Tensor:
        """(B, h*w, C) Gaussian tokens; each sample's noise depends only on its own seed."""
        f, c = self.codec.spatial_factor, self.codec.token_channels
        grids = [torch.randn(c, height // f, width // f, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.stack(grids).flatten(2).transpose(1, 2).to(self.device)

    def image_tokens(self, images: list[Image.Image], height: int, width: int) -> torch.Tensor:
        """(B, h*w, C) clean tokens of `images`, each resized (bicubic) to width x height first."""
        pixels = [image_to_tensor(im if im.size == (width, height) else
                                  im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC))
                  for im in images]
        tokens = self.codec.encode(torch.stack(pixels).to(self.device, self.codec.dtype)).float()
        return tokens.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | list[int] = 0,
        negative_prompt: str | list[str] = "",
        progress: bool = False,
        output_type: str = "pil",
        reasoner: Callable[..., list[str]] | None = None,
        image: Image.Image | list[Image.Image] | None = None,
        strength: float = DEFAULT_STRENGTH,
        classifier_scale: float | None = None,
    ) -> list[Image.Image] | torch.Tensor:
        """reasoner: rewrites the prompts before encoding, called as reasoner(prompts, aspect=width / height,
        seeds=seeds) -> list[str] (a `lensgen.reasoner` backend, or any callable of that form).
        image: image-to-image (one image for every prompt, or one per prompt), each resized to the sampling
        size; its tokens are noised to the first of the schedule's levels at or below `strength` and the
        solver runs from there: 1 ignores the image, near 0 keeps it (at least the last step still runs).
        classifier_scale: the classifier's guidance toward what each prompt asks (a folder with classifier/;
        default: its lensgen.classifier_scale; 0 turns it off).
        output_type: "pil" (images), "pt" ((B, 3, H, W) in [-1, 1]) or "latent" (the sampled (B, C, H/f, W/f)
        tokens before decoding, in the codec's normalised space; `codec.decode` turns them into images)."""
        if output_type not in ("pil", "pt", "latent"):
            raise UserError(f'output_type must be "pil", "pt" or "latent", got {output_type!r}')
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise UserError("no prompt given")
        height, width = self.defaults.resolve_size(height, width, multiple=self.codec.spatial_factor)
        steps, cfg = self.defaults.sampling(steps, cfg)
        classifier_scale = self.defaults.guidance_scale(classifier_scale)
        if classifier_scale > 0 and self.classifier is None:
            raise UserError(f"classifier_scale {classifier_scale:g}: {self.name} has no classifier "
                            f"({CLASSIFIER_FOLDER}/ in its folder) to guide with")
        seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
        if len(seeds) != len(prompts):
            raise UserError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if image is not None:
            check_strength(strength)
            starts = [image] if isinstance(image, Image.Image) else list(image)
            if len(starts) == 1:
                starts = starts * len(prompts)
            if len(starts) != len(prompts) or not all(isinstance(im, Image.Image) for im in starts):
                raise UserError(f"image must be one PIL image or one per prompt ({len(prompts)}), got "
                                f"{len(starts)} item(s)")
        asked = prompts
        if reasoner is not None:
            prompts = list(reasoner(prompts, aspect=width / height, seeds=seeds))

        grid = (height // self.codec.spatial_factor, width // self.codec.spatial_factor)
        guided = cfg != 1.0
        text = self.encode_prompts(prompts, negative_prompt, guided)
        features = text.features.to(self.device, self.transformer.img_in.weight.dtype)
        mask = text.mask.to(self.device)
        layout = self.sign_layouts(prompts, seeds, height, width)
        if layout is not None:
            layout = layout.to(self.device, features.dtype)
            layout = torch.cat([layout, layout]) if guided else layout  # the unconditional pass sees it too

        def model_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.transformer(x, features, sigma, grid, mask, layout=layout).float()

        velocity_fn = cfg_velocity_fn(model_fn, cfg) if guided else model_fn
        if classifier_scale > 0:
            velocity_fn = guided_velocity_fn(velocity_fn, self.classifier, grid, prompts, classifier_scale,
                                             self.defaults.classifier_max_sigma, fallback_prompts=asked)
        noise = self.initial_noise(seeds, height, width)
        sigmas = sampling_sigmas(steps, grid[0] * grid[1], schedule=self.defaults.schedule)
        if image is not None:
            first = min(int((sigmas > strength).sum()), len(sigmas) - 2)
            sigmas = sigmas[first:]
            start = float(sigmas[0])
            noise = (1 - start) * self.image_tokens(starts, height, width) + start * noise
        tokens = sample(velocity_fn, noise, sigmas, solver=self.defaults.solver, progress=progress)
        latents = tokens.transpose(1, 2).unflatten(2, grid)
        if output_type == "latent":
            return latents
        images = self.codec.decode(latents.to(self.codec.dtype)).float().clamp(-1, 1)
        if output_type == "pt":
            return images
        return to_pil(images)


__all__ = ["DEFAULT_MODEL_DIR", "DEFAULT_STRENGTH", "LensPipeline", "PipelineDefaults", "check_device",
           "check_sampling", "check_strength", "classifier_scale_for", "model_dir", "StartingPoint", "check_codec",
           "read_defaults", "read_model_index", "shipped_models"]
