"""`lensgen train-signs`: teach a Shapes model to write its sign's word by copying a layout drawing of it.

The model's signs carry no readable word: the text encoder names a word without its letters, and neither RL
nor flow matching on signs taught it to spell (docs/rl-shapes-measurements.md). Given the sign drawn where it
goes (`shapes.sign_layout`; the transformer's zero-initialised `layout_in`), writing becomes copying, for any
word. Each step trains on two halves:

- sign scenes (training words only, training-split backgrounds, no objects), flow matching with the scene's
  own sign as the layout, the loss of the tokens the sign covers weighted `sign_weight` to 1;
- scenes without a sign and their short prompts, distilled from the starting model (its velocity at the same
  noised input as the target, no layout): what the model did for every other prompt stays as it was.

Every step's scenes, noise and levels follow from (seed, step), so `--resume` from OUT/checkpoint.pt continues
exactly. OUT/final is a pipeline folder: the starting one (classifier and defaults kept) with the new
transformer, which plans and draws a sign layout for every prompt that quotes a word.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from lensgen.config import Validated
from lensgen.errors import UserError
from lensgen.io import atomic_open, atomic_write_json
from lensgen.models.transformer import LensTransformer2DModel
from lensgen.models.weight_storage import STORAGES
from lensgen.shapes.captions import short_caption
from lensgen.shapes.heldout import TRAIN_WORDS
from lensgen.shapes.prompt import PromptSpec, format_prompt
from lensgen.shapes.render import render
from lensgen.shapes.scene import Sign, generate_scene, make_sign
from lensgen.shapes.sign_layout import layout_tokens
from lensgen.train.batch import collate
from lensgen.train.checkpoint import truncate_metrics
from lensgen.train.objective import SigmaSampling, noisy_input
from lensgen.train.trainer import lr_at

# (prefix, sign form) pairs of the Shapes grammar (prompt.PREFIXES, SIGN_FORMS): 'a photo of a sign reading "CAT"'
SIGN_PROMPT_FORMS = ((0, 2), (2, 0), (3, 1), (1, 2), (3, 0))
# settings that shape the training trajectory: a resumed run must keep them (steps may grow)
TRAJECTORY_FIELDS = ("model", "batch_size", "anchor_batch_size", "anchor_weight", "sign_weight", "lr", "size",
                     "seed")


@dataclass
class SignTrainConfig(Validated):
    model: str = "shapes-tiny"  # the pipeline to start from (shipped name or folder); also the anchor's teacher
    out_dir: str = "runs/train-signs"
    steps: int = 1500
    batch_size: int = 16  # sign scenes a step
    anchor_batch_size: int = 16  # scenes without a sign a step, distilled from the starting model
    anchor_weight: float = 1.0
    sign_weight: float = 10.0  # loss weight of the tokens a sign covers, against 1
    lr: float = 3e-4
    size: int = 64  # square scenes of this side
    seed: int = 0
    checkpoint_every: int = 250
    export_storage: str = "fp32"  # the exported transformer's weights (fp32, bf16, int8, int4)
    threads: int = 0  # torch threads (0: torch's default)
    schedule: ClassVar[str] = "constant"  # by the transformer trainer's `lr_at`
    warmup_steps: ClassVar[int] = 0

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            *((getattr(self, n) >= 1, n, "a positive integer") for n in ("steps", "batch_size", "checkpoint_every")),
            (self.anchor_batch_size >= 0, "anchor_batch_size", "an integer >= 0"),
            *((getattr(self, n) >= 0, n, "a number >= 0") for n in ("anchor_weight", "lr")),
            (self.sign_weight > 0, "sign_weight", "a number > 0"),
            (self.size >= 16, "size", "a side of at least 16 px"),
            (self.export_storage in STORAGES, "export_storage", f"one of {', '.join(STORAGES)}"),
        ]


def sign_prompt(word: str, form: int) -> str:
    """The Shapes grammar's sign prompt for `word` in one of its wordings."""
    return format_prompt(PromptSpec(text=word), *SIGN_PROMPT_FORMS[form % len(SIGN_PROMPT_FORMS)])


def sign_scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, str, Sign]:
    """A training-split background with one sign of a training word and no shapes, its prompt, and the sign."""
    scene = generate_scene(rng, aspect=1.0, split="train")
    scene.objects, scene.sign = [], None
    while scene.sign is None:  # a word too long for a legible sign on this canvas is drawn again
        scene.sign = make_sign(rng, 1.0, str(rng.choice(TRAIN_WORDS)))
    return render(scene, size, size), sign_prompt(scene.sign.word, int(rng.integers(len(SIGN_PROMPT_FORMS)))), \
        scene.sign


def unsigned_scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    """A training-split scene with its sign taken away (at least one object), and its short prompt."""
    while True:
        scene = generate_scene(rng, aspect=1.0, split="train")
        scene.sign = None
        if scene.objects:
            return render(scene, size, size), short_caption(scene, rng)


def with_layout_input(transformer: LensTransformer2DModel, channels: int) -> LensTransformer2DModel:
    """`transformer` with a layout input of `channels` pixels a token (zero, so it samples as before), or
    itself when it has one already."""
    if transformer.config.layout_channels == channels:
        return transformer
    if transformer.config.layout_channels:
        raise UserError(f"the transformer's layout input takes {transformer.config.layout_channels} pixels a "
                        f"token, not {channels}")
    new = LensTransformer2DModel(replace(transformer.config, layout_channels=channels))
    missing, unexpected = new.load_state_dict(transformer.state_dict(), strict=False)
    assert missing == ["layout_in.weight"] and not unexpected, (missing, unexpected)
    return new.to(transformer.img_in.weight.dtype)


class SignTrainer:
    def __init__(self, cfg: SignTrainConfig, resume: bool = False, progress: bool = True):
        from lensgen.inference.pipeline import LensPipeline

        cfg.validate()
        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.out_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.pipe = LensPipeline.from_pretrained(cfg.model, device="cpu", dtype=torch.float32)
        factor = self.pipe.codec.spatial_factor
        if cfg.size % factor:
            raise UserError(f"train-signs: size {cfg.size} is not a multiple of the codec's {factor} px per token")
        self.teacher = copy.deepcopy(self.pipe.transformer).eval().requires_grad_(False)
        self.model = with_layout_input(self.pipe.transformer, factor * factor)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.sigmas = SigmaSampling()  # pretraining's levels
        self.step = 0
        self.ckpt = self.out / "checkpoint.pt"
        if resume and self.ckpt.is_file():
            state = torch.load(self.ckpt, weights_only=False)
            changed = sorted(k for k in TRAJECTORY_FIELDS if state["config"][k] != asdict(cfg)[k])
            if changed:
                raise UserError(f"{self.ckpt} was written with other settings than these ({', '.join(changed)}); "
                                "a resumed run may change only steps and the reporting settings")
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = state["step"]
        truncate_metrics(self.out / "metrics.jsonl", self.step)  # what a killed run logged after its checkpoint

    def loss(self, step: int) -> tuple[torch.Tensor, dict]:
        """Step `step`'s loss: flow matching on sign scenes with their layouts, plus the anchor's distillation."""
        cfg, f = self.cfg, self.pipe.codec.spatial_factor
        signs = [sign_scene(np.random.default_rng([cfg.seed, 1, step, i]), cfg.size) for i in range(cfg.batch_size)]
        plain = [unsigned_scene(np.random.default_rng([cfg.seed, 2, step, i]), cfg.size)
                 for i in range(cfg.anchor_batch_size)]
        images, prompts = [s[0] for s in signs] + [p[0] for p in plain], [s[1] for s in signs] + [p[1] for p in plain]
        layout = torch.from_numpy(np.stack([layout_tokens(s[2], cfg.size, cfg.size, f) for s in signs] +
                                           [layout_tokens(None, cfg.size, cfg.size, f) for _ in plain]))
        batch = collate(images, prompts, self.pipe.codec)
        text = self.pipe.text_encoder.encode(prompts)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        sigma = self.sigmas.sample(torch.tensor([h * w for h, w in batch.sizes]), gen)
        x_t, target = noisy_input(batch.tokens, torch.randn(batch.tokens.shape, generator=gen), sigma)
        v = self.model(x_t, text.features, sigma, batch.sizes, text.mask, layout=layout)
        n = cfg.batch_size
        weight = 1.0 + (cfg.sign_weight - 1.0) * (layout[:n].amax(-1) > 0).float()  # the tokens a sign covers
        sign_loss = ((v[:n] - target[:n]).square().mean(-1) * weight).sum() / weight.sum()
        parts = {"sign_loss": sign_loss.item()}
        loss = sign_loss
        if plain:
            with torch.no_grad():
                before = self.teacher(x_t[n:], text.features[n:], sigma[n:], batch.sizes[n:], text.mask[n:])
            anchor = (v[n:] - before).square().mean()
            parts["anchor_loss"] = anchor.item()
            loss = loss + cfg.anchor_weight * anchor
        return loss, parts

    def save_checkpoint(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.ckpt) as fh:
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "step": self.step, "config": asdict(self.cfg)}, fh)

    def train(self) -> list[dict]:
        from tqdm import tqdm

        cfg, log = self.cfg, []
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "config.json", asdict(cfg))
        self.model.train()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train-signs", disable=not self.progress)
        t0 = time.perf_counter()
        with open(self.out / "metrics.jsonl", "a") as metrics:
            while self.step < cfg.steps:
                lr = lr_at(self.step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, parts = self.loss(self.step)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.optimizer.step()
                self.step += 1
                record = {"step": self.step, "loss": loss.item(), **parts, "lr": lr}
                log.append(record)
                metrics.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    metrics.flush()
                    self.save_checkpoint()
        bar.close()
        self.train_seconds = time.perf_counter() - t0
        return log

    def export(self) -> Path:
        """Write OUT/final (a pipeline folder) atomically: a temp folder, then a rename."""
        from lensgen.inference.pipeline import LensPipeline

        pipe = self.pipe
        final, tmp = self.out / "final", self.out / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        LensPipeline(self.model.eval(), pipe.codec, pipe.text_encoder, pipe.defaults,
                     name=f"{pipe.name}; then {self.step} steps of train-signs (writes a sign from its layout)",
                     classifier=pipe.classifier).save_pretrained(tmp, storage=self.cfg.export_storage)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final


def run(cfg: SignTrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train, export OUT/final, write OUT/summary.json."""
    trainer = SignTrainer(cfg, resume=resume, progress=progress)
    start = trainer.step
    trainer.train()
    final = trainer.export()
    done = trainer.step - start
    metrics = trainer.out / "metrics.jsonl"  # the whole run's, a resumed one's earlier steps too
    last = [json.loads(line) for line in metrics.read_text().splitlines()[-100:]] if metrics.is_file() else []
    summary = {"steps": trainer.step, "final": str(final), "train_seconds": trainer.train_seconds,
               "steps_per_hour": 3600 * done / trainer.train_seconds if done else 0.0,
               **{f"last_{k}": float(np.mean([r[k] for r in last])) if last else None
                  for k in ("loss", "sign_loss", "anchor_loss") if not last or k in last[0]},
               "config": asdict(cfg)}
    atomic_write_json(trainer.out / "summary.json", summary)
    return summary


__all__ = ["SIGN_PROMPT_FORMS", "SignTrainConfig", "SignTrainer", "run", "sign_prompt", "sign_scene", "unsigned_scene",
           "with_layout_input"]
