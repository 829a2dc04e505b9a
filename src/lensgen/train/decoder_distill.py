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
"""

from __future__ import annotations

import numpy as np
import torch

from lensgen.errors import UserError
from lensgen.models.vae import Flux2VAECodec, load_codec
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
        for name, p in vae.named_parameters():
            p.requires_grad_(name.startswith(DECODER_PREFIXES))
        return vae

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.vae.parameters() if p.requires_grad]  # the decoder's, as build_vae set

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """L1 + MSE between the new decoder and the teacher's on a posterior sample of `images`."""
        with torch.no_grad():
            z = self.teacher_vae.encode(images).latent_dist.sample(self.generator)
            target = self.teacher_vae.decode(z).sample
        out = self.vae.decode(z).sample
        l1 = (out - target).abs().mean()
        mse = (out - target).pow(2).mean()
        return l1 + mse, {"l1": l1.item(), "mse": mse.item()}

    def prepare_export(self) -> None:
        """Nothing to set: the BatchNorm statistics are the teacher's, so tokens keep their meaning."""

    def report(self, codec) -> dict:
        """The round trip, plus how closely the new decoder follows the teacher's on the teacher's tokens."""
        return {**super().report(codec),
                "teacher": decoder_agreement(codec, self.teacher, self.cfg.eval_images, seed=self.cfg.seed)}


def run(cfg, resume: bool = False, progress: bool = True) -> dict:
    """`lensgen train-vae` with `teacher` set: distil, export OUT/final, report, write OUT/summary.json."""
    return shapes_vae.run(cfg, resume=resume, progress=progress, trainer_class=DecoderDistiller)


@torch.no_grad()
def decoder_agreement(codec, teacher, n: int, seed: int = 0, size: int = 64) -> dict:
    """How closely `codec` decodes like `teacher` on the tokens `teacher` encodes `n` Shapes scenes to (held-out
    ones included): PSNR between the two decodes, the share the judge reads as the same objects, and whether the
    two encode to the same tokens (they must, for a model trained on the teacher's to use the new one)."""
    psnrs, same, max_token_diff = [], 0, 0.0
    for start in range(0, n, 16):
        seeds = [(seed, 15485863, i) for i in range(start, min(n, start + 16))]
        images = scene_batch(seeds, size, size, split="any")
        tokens = teacher.encode(images)
        max_token_diff = max(max_token_diff, (codec.encode(images) - tokens).abs().max().item())
        batch_psnrs, batch_same = image_agreement(codec.decode(tokens), teacher.decode(tokens))
        psnrs, same = psnrs + batch_psnrs, same + batch_same
    return {"images": n, "psnr_db": float(np.mean(psnrs)), "judge_agreement": same / n,
            "max_token_difference": max_token_diff}


__all__ = ["DECODER_PREFIXES", "DecoderDistiller", "decoder_agreement", "decoder_config", "run"]
