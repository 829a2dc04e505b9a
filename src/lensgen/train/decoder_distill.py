"""`lensgen train-vae --set teacher=DIR --set decoder_channels=[...]`: a lighter decoder for an existing VAE.

Why: every model pays for decoding once per image, so the decoder bounds what a few-step student can gain.
With the Shapes VAE's decoder (0.50 GFLOP an image at 64x64) beside a 0.77 GFLOP transformer pass, a 4-step
student is at most 4.25x faster than its 20-step teacher, however good it is. A decoder with fewer channels
(diffusers' `AutoencoderKLFlux2(decoder_block_out_channels=...)`, the same class) decodes the same latents for
a fraction of that.

The teacher's encoder, quant conv and BatchNorm statistics are copied and frozen, so every token means what it
meant: a model trained in the teacher's latent space decodes through the new VAE unchanged, and encodes to the
very same tokens. The new decoder (and the post-quant conv before it) learns to reproduce the teacher's
decoder on the same latents: L1 + MSE against the teacher's output, on posterior samples of Shapes scenes
rendered at the bucket sizes, with the VAE trainer's schedule, checkpoints and exact resume.

A model's samples are not the encoder's posteriors (a Turbo student's latents sit off them in ways a small
decoder reads differently: the judge agreed on 82 % of its samples against 86 % of encoded scenes), so with
`latent_model` part of every batch is latents that model sampled: the distribution the decoder will be given.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch

from lensgen.errors import UserError
from lensgen.io import atomic_open
from lensgen.models.vae import Flux2VAECodec, check_same_latents, load_codec
from lensgen.train import shapes_vae
from lensgen.train.shapes_vae import VAETrainer, build_vae, image_agreement, scene_batch

# The parts a distilled decoder trains; everything else is the teacher's, frozen.
DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


def decoder_config(teacher_vae, channels: list[int]) -> dict:
    """The teacher's AutoencoderKLFlux2 settings with the decoder's channels replaced, checked first so that a
    bad `decoder_channels` is named rather than failing inside diffusers."""
    config = {k: v for k, v in dict(teacher_vae.config).items() if not k.startswith("_")}
    blocks, groups = len(config["block_out_channels"]), config["norm_num_groups"]
    if len(channels) != blocks or any(c % groups for c in channels):
        raise UserError(f"train-vae: decoder_channels {list(channels)} must be {blocks} numbers (one per block of "
                        f"the teacher's decoder), each a multiple of its norm_num_groups ({groups})")
    return {**config, "decoder_block_out_channels": list(channels)}


class DecoderDistiller(VAETrainer):
    """`VAETrainer` whose VAE is the teacher's with a new decoder, trained to match the teacher's decoder."""

    def __init__(self, cfg, resume: bool = False, progress: bool = True):
        super().__init__(cfg, resume=resume, progress=progress)
        self.sampler = self.pool = None
        if cfg.latent_model:
            self.sampler = LatentSampler(cfg.latent_model, cfg.latent_prompts, self.teacher)
            self.pool = self.sampler.pool(self.out / "latent_pool.safetensors", cfg.latent_count, cfg.seed, progress)

    def build_vae(self):
        teacher = load_codec(self.cfg.teacher)
        if not isinstance(teacher, Flux2VAECodec):
            raise UserError(f"train-vae: teacher {self.cfg.teacher} is a {type(teacher).__name__}; a decoder can "
                            "only be distilled for a FLUX.2 VAE (flux2-vae codec)")
        self.teacher = teacher
        self.teacher_vae = teacher.vae.float().eval().requires_grad_(False)
        vae = build_vae(decoder_config(self.teacher_vae, self.cfg.decoder_channels))
        kept = {k: v for k, v in self.teacher_vae.state_dict().items() if not k.startswith("decoder.")}
        missing, unexpected = vae.load_state_dict(kept, strict=False)
        if unexpected or any(not k.startswith("decoder.") for k in missing):
            raise UserError(f"train-vae: the teacher's weights do not fit the new VAE (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
        if self.cfg.decoder_init:
            load_decoder(vae, self.cfg.decoder_init)
        for name, p in vae.named_parameters():
            p.requires_grad_(name.startswith(DECODER_PREFIXES))
        return vae

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.vae.parameters() if p.requires_grad]  # the decoder's, as build_vae set

    def batch(self, step: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(scenes to encode, sampled latents): `latent_fraction` of the batch drawn from the pool."""
        n_pool = round(self.cfg.latent_fraction * self.cfg.batch_size) if self.pool is not None else 0
        n_scenes = self.cfg.batch_size - n_pool
        images = super().batch(step, n_scenes) if n_scenes else None
        if not n_pool:
            return images, None
        picks = random.Random(f"latent-pool-{self.cfg.seed}-{step}").sample(range(len(self.pool)), n_pool)
        return images, self.pool[picks]

    def loss(self, batch) -> tuple[torch.Tensor, dict]:
        """L1 + MSE between the new decoder and the teacher's, on a posterior sample of the scenes and on the
        sampled latents, weighted by their shares of the batch."""
        images, tokens = batch
        latents = [] if images is None else [("", self._posterior(images))]
        if tokens is not None:
            latents.append(("_sampled", self.teacher.vae_latents(tokens)))
        parts, total, n = {}, 0.0, 0
        for name, z in latents:
            with torch.no_grad():
                target = self.teacher_vae.decode(z).sample
            out = self.vae.decode(z).sample
            l1, mse = (out - target).abs().mean(), (out - target).pow(2).mean()
            total, n = total + len(z) * (l1 + mse), n + len(z)
            parts.update({f"l1{name}": l1.item(), f"mse{name}": mse.item()})
        if "l1" not in parts:  # no scenes in the batch; the progress bar shows l1
            parts["l1"] = parts["l1_sampled"]
        return total / n, parts

    @torch.no_grad()
    def _posterior(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher_vae.encode(images).latent_dist.sample(self.generator)

    def prepare_export(self) -> None:
        """Nothing to set: the BatchNorm statistics are the teacher's, so tokens keep their meaning."""

    def report(self, codec) -> dict:
        """The round trip, plus how closely the new decoder follows the teacher's on the teacher's tokens."""
        report = {**super().report(codec),
                  "teacher": decoder_agreement(codec, self.teacher, self.cfg.eval_images, seed=self.cfg.seed)}
        if self.sampler is not None:  # fresh samples (other seeds than the pool's)
            tokens = self.sampler.sample(self.cfg.eval_images, seed=self.cfg.seed + 1, first_seed=10**9)
            report["sampled"] = token_agreement(codec, self.teacher, tokens)
        return report


def run(cfg, resume: bool = False, progress: bool = True) -> dict:
    """`lensgen train-vae` with `teacher` set: distil, export OUT/final, report, write OUT/summary.json."""
    return shapes_vae.run(cfg, resume=resume, progress=progress, trainer_class=DecoderDistiller)


@torch.no_grad()
def decoder_agreement(codec, teacher, n: int, seed: int = 0, size: int = 64) -> dict:
    """How closely `codec` decodes like `teacher` on the tokens `teacher` encodes `n` Shapes scenes to (held-out
    ones included): `token_agreement`, and whether the two encode to the same tokens (they must, for a model
    trained on the teacher's to use the new one)."""
    tokens, max_token_diff = [], 0.0
    for start in range(0, n, 16):
        seeds = [(seed, 15485863, i) for i in range(start, min(n, start + 16))]
        images = scene_batch(seeds, size, size, split="any")
        tokens.append(teacher.encode(images))
        max_token_diff = max(max_token_diff, (codec.encode(images) - tokens[-1]).abs().max().item())
    return {**token_agreement(codec, teacher, torch.cat(tokens)), "max_token_difference": max_token_diff}


@torch.no_grad()
def token_agreement(codec, teacher, tokens: torch.Tensor) -> dict:
    """How closely `codec` decodes like `teacher` on `tokens`: PSNR between the two decodes, and the share of
    images the judge reads as the same objects."""
    psnrs, same = [], 0
    for start in range(0, len(tokens), 16):
        batch = tokens[start:start + 16]
        batch_psnrs, batch_same = image_agreement(codec.decode(batch), teacher.decode(batch))
        psnrs, same = psnrs + batch_psnrs, same + batch_same
    return {"images": len(tokens), "psnr_db": float(np.mean(psnrs)), "judge_agreement": same / len(tokens)}


def load_decoder(vae, folder: str) -> None:
    """Start `vae`'s decoder (and post-quant conv) from the one in VAE folder `folder` (`decoder_init`)."""
    other = load_codec(folder)
    if not isinstance(other, Flux2VAECodec):
        raise UserError(f"train-vae: decoder_init {folder} is a {type(other).__name__}, not a FLUX.2 VAE")
    theirs = {k: v for k, v in other.vae.state_dict().items() if k.startswith(DECODER_PREFIXES)}
    ours = {k: v for k, v in vae.state_dict().items() if k.startswith(DECODER_PREFIXES)}
    if theirs.keys() != ours.keys() or any(v.shape != ours[k].shape for k, v in theirs.items()):
        raise UserError(f"train-vae: decoder_init {folder}'s decoder has channels "
                        f"{list(other.vae.config.decoder_block_out_channels or other.vae.config.block_out_channels)}, "
                        f"not decoder_channels {list(vae.config.decoder_block_out_channels)}")
    vae.load_state_dict(theirs, strict=False)


def read_prompt_texts(path: str) -> list[str]:
    """The prompts of an RL prompt set (`lensgen data rl-prompts`, held-out rules checked) or of a prompts file
    as `lensgen generate --prompts` reads it."""
    from lensgen.data.rl_prompts.records import load_rl_prompts
    from lensgen.inference.generate import read_prompts_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"train-vae: latent_prompts {path} does not exist")
    first = next((ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()), "")
    if first.lstrip().startswith("{") and '"rubric"' in first:
        return [record.prompt for record in load_rl_prompts(path)]
    return [line.prompt for line in read_prompts_file(path)]


class LatentSampler:
    """Latents a model samples at its defaults for prompts drawn from a file: what a decoder distilled for
    that model will be given. The model must share the teacher's latent space."""

    def __init__(self, model: str, prompts_file: str, teacher: Flux2VAECodec):
        from lensgen.inference.pipeline import LensPipeline

        self.model, self.prompts_file = model, prompts_file
        self.prompts = read_prompt_texts(prompts_file)
        self.pipe = LensPipeline.from_pretrained(model)
        check_same_latents(self.pipe.codec, teacher, f"train-vae: latent_model {model}'s codec")

    def sample(self, count: int, seed: int, first_seed: int = 0, progress: bool = False) -> torch.Tensor:
        """(count, C, h, w): sample i is prompt number rng(seed)'s i-th draw, with noise seed first_seed + i."""
        from tqdm import tqdm

        rng = random.Random(seed)
        prompts = [self.prompts[rng.randrange(len(self.prompts))] for _ in range(count)]
        out = []
        for start in tqdm(range(0, count, 16), desc="sampling latents", disable=not progress):
            chunk = prompts[start:start + 16]
            seeds = list(range(first_seed + start, first_seed + start + len(chunk)))
            out.append(self.pipe(chunk, seed=seeds, output_type="latent").float().cpu())
        return torch.cat(out)

    def pool(self, path: Path, count: int, seed: int, progress: bool = False) -> torch.Tensor:
        """`count` samples, kept in `path` (written atomically) and read back while the settings match."""
        from safetensors import safe_open
        from safetensors.torch import save

        digest = hashlib.sha256(Path(self.prompts_file).read_bytes()).hexdigest()
        meta = {"model": str(self.model), "prompts_sha256": digest, "count": str(count), "seed": str(seed)}
        if path.is_file():
            with safe_open(str(path), "pt") as f:
                if f.metadata() == meta:
                    return f.get_tensor("latents")
        latents = self.sample(count, seed, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:
            f.write(save({"latents": latents.contiguous()}, metadata=meta))
        return latents


__all__ = ["DECODER_PREFIXES", "DecoderDistiller", "LatentSampler", "decoder_agreement", "decoder_config",
           "load_decoder", "read_prompt_texts", "run", "token_agreement"]
