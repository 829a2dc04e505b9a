"""`lensgen train-classifier`: the latent classifier (`models/latent_classifier.py`) trained on true Shapes scenes.

Scenes come from the training split only (the held-out pairs, positions and words are never drawn), are
rendered at one square size, encoded once by the model's codec, and noised afresh at every step at σ drawn
uniformly from (0.01, 0.99): the classifier reads every level the sampler visits. The report gives each head's
accuracy per noise level on scenes it did not train on, which is also a measurement: up to which σ a latent
still holds what the scene is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lensgen.models.latent_classifier import (
    LatentClassifier,
    LatentClassifierConfig,
    SceneTargets,
    classifier_loss,
    scene_targets,
)
from lensgen.train.objective import noisy_input

REPORT_SIGMAS = (0.2, 0.4, 0.6, 0.7, 0.8, 0.9)


def encode_scenes(codec, count: int, size: int, seed: int, batch_size: int = 64, progress: bool = False
                  ) -> tuple[torch.Tensor, SceneTargets]:
    """`count` training-split scenes (seeded) as latents (B, C, h, w) and their targets."""
    from tqdm.auto import tqdm

    from lensgen.images import image_to_tensor
    from lensgen.shapes.render import render
    from lensgen.shapes.scene import generate_scene

    latents, scenes = [], []
    for start in tqdm(range(0, count, batch_size), desc=f"encoding scenes (seed {seed})", disable=not progress,
                      leave=False):
        batch = [generate_scene((seed, k), aspect=1.0, split="train") for k in range(start, min(count, start + batch_size))]
        pixels = torch.stack([image_to_tensor(render(s, size, size)) for s in batch])
        with torch.no_grad():
            latents.append(codec.encode(pixels.to(codec.dtype)).float())
        scenes += batch
    return torch.cat(latents), scene_targets(scenes, size, size)


def noised(x0: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Latents (B, C, h, w) at levels sigma (B,), fresh noise from `generator`."""
    return noisy_input(x0, torch.randn(x0.shape, generator=generator), sigma)[0]


def accuracy_by_sigma(classifier: LatentClassifier, x0: torch.Tensor, targets: SceneTargets,
                      sigmas: tuple[float, ...] = REPORT_SIGMAS, seed: int = 1) -> dict[float, dict[str, float]]:
    """Per noise level: the share of shapes whose count is read right, of scenes whose every (colour, shape)
    pair is read right, and of relation labels read right among the scenes' true ones (recall)."""
    out, held = {}, targets.relations > 0
    with torch.no_grad():
        for level in sigmas:
            sigma = torch.full((len(x0),), level)
            logits = classifier(noised(x0, sigma, torch.Generator().manual_seed(seed)), sigma)
            out[level] = {
                "counts": float((logits.counts.argmax(-1) == targets.counts).float().mean()),
                "pairs_exact": float(((logits.pairs > 0).float() == targets.pairs).all(1).float().mean()),
                "relations_recall": float((logits.relations[held] > 0).float().mean()) if held.any() else 0.0,
            }
    return out


def train_classifier(codec, scenes: int = 32768, steps: int = 5000, batch_size: int = 256, lr: float = 1e-3,
                     size: int = 64, seed: int = 0, width: int = 128, depth: int = 4, val_scenes: int = 1024,
                     progress: bool = True) -> tuple[LatentClassifier, dict]:
    """A classifier trained on `scenes` true scenes; returns it and its report (losses, accuracy by σ)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    x0, targets = encode_scenes(codec, scenes, size, seed=2 * seed + 1, progress=progress)
    val_x0, val_targets = encode_scenes(codec, val_scenes, size, seed=2 * seed + 2, progress=progress)
    classifier = LatentClassifier(LatentClassifierConfig(channels=x0.shape[1], width=width, depth=depth))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=0.01)
    total = max(steps, 4)  # OneCycleLR needs two steps or more in each phase (--steps 20 divided by zero)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=total, pct_start=max(0.05, 2 / total))
    generator = torch.Generator().manual_seed(seed)
    start, parts = time.perf_counter(), {}
    bar = tqdm(range(steps), desc="train-classifier", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(x0), (batch_size,), generator=generator)
        sigma = torch.rand(batch_size, generator=generator) * 0.98 + 0.01
        batch_targets = SceneTargets(*(t[idx] for t in targets))
        loss, parts = classifier_loss(classifier(noised(x0[idx], sigma, generator), sigma), batch_targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    classifier.eval().requires_grad_(False)
    report = {"scenes": scenes, "steps": steps, "size": size, "seconds": time.perf_counter() - start,
              "final_losses": parts, "validation": accuracy_by_sigma(classifier, val_x0, val_targets)}
    return classifier, report


def cmd_train_classifier(args: argparse.Namespace) -> int:
    import json

    from lensgen.errors import UserError
    from lensgen.inference.pipeline import StartingPoint, model_dir
    from lensgen.io import atomic_write_json

    if args.scenes < 1 or args.steps < 1 or args.batch_size < 1 or args.size < 8 or args.size % 8:
        raise UserError("--scenes, --steps and --batch-size must be positive and --size a multiple of 8")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    codec = StartingPoint.load(model_dir(args.model), torch.device("cpu"), torch.float32).codec
    classifier, report = train_classifier(codec, args.scenes, args.steps, args.batch_size, args.lr, args.size,
                                          args.seed, progress=not args.quiet)
    classifier.save_pretrained(out)
    report["model"] = str(args.model)
    atomic_write_json(out / "report.json", report)
    print("sigma  counts  pairs exact  relations recall")
    for level, row in report["validation"].items():
        print(f"{level:5.2f}  {row['counts']:6.3f}  {row['pairs_exact']:11.3f}  {row['relations_recall']:16.3f}")
    print(f"wrote {out} ({report['seconds'] / 60:.1f} min); use it with lensgen rl --set "
          f"optim.kl_classifier={json.dumps(str(out))}")
    return 0
