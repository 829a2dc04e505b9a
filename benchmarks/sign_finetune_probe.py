"""Can the Shapes model learn to write letters? Flow matching on sign scenes, with the word spelled out or drawn.

The text task asks for held-out words, and the judge reads nothing on most of the model's signs and a few
letters or digits on the rest, matching the word by chance. Two things could be missing: letters the conditioning can reach (MiniLM
reads "kitchen" as one token, so a word it never saw on a sign says nothing of its letters), and the skill to
draw letters at all. This gives the model both chances: it fine-tunes a copy on sign-only scenes of
training words (`heldout.TRAIN_WORDS`, backgrounds as in pretraining, no objects) with the prompt's quoted
word also spelled letter by letter (`"CAT" spelled C A T`: one MiniLM token per letter; `--no-spell` leaves the
prompts as they are), then samples both the ShapesEval text prompts (held-out words) and training words with
the same spelling, and prints the judge's OCR similarity every `--eval-every` steps (beside it, each reading
scored against the other words of its set: what letters read at random score), with the share of
same-seed pairs of different words read as the same text. If trained words stay near 0, the model cannot
draw letters in its 8-pixel tokens, whatever the conditioning says; a score that rises while one seed reads
the same whatever the word is letters matched by chance, not words written.

`--glyph` goes further, as glyph-conditioned text renderers do: the word itself, drawn in the sign font, is
appended to the text tokens (one token per 8 px column of the drawing, its ink values and column index), so
the model need only copy letters it is shown; `--sign-weight` weights the loss of the tokens the sign touches.
`--canvas` shows the word in place instead, as layout-conditioned renderers do: the transformer gets a layout
input (`shapes.sign_layout`: per image token, the pixels of the sign drawn where it goes), trained on each
scene's own sign; at sampling the pipeline plans a sign for the quoted word. `lensgen train-signs` is this
run made a stage, with the rest of what the model does held by distillation.

    python benchmarks/sign_finetune_probe.py shapes-tiny --steps 1500      # ~14 min on 2 cores
    python benchmarks/sign_finetune_probe.py shapes-tiny --steps 1500 --glyph --no-spell --sign-weight 10
    python benchmarks/sign_finetune_probe.py shapes-tiny --steps 1500 --canvas --no-spell --sign-weight 10
"""

from __future__ import annotations

import argparse
import functools
import re
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from lensgen.eval.shapes import evaluate, pipeline_generator
from lensgen.inference.pipeline import LensPipeline
from lensgen.models.text_encoder import TextFeatures
from lensgen.shapes import font
from lensgen.shapes.heldout import TRAIN_WORDS
from lensgen.shapes.ocr import text_similarity
from lensgen.shapes.prompt import PromptSpec
from lensgen.shapes.scene import sign_box
from lensgen.shapes.sign_layout import layout_tokens
from lensgen.train.batch import collate
from lensgen.train.objective import SigmaSampling, noisy_input
from lensgen.train.sign_writing import sign_prompt, sign_scene, with_layout_input

QUOTED = re.compile(r'"([A-Z0-9]+)"')  # a sign's word in a Shapes prompt


def spelled(prompt: str) -> str:
    """`... "CAT"` -> `... "CAT" spelled C A T`: each letter its own token."""
    return QUOTED.sub(lambda m: f'"{m.group(1)}" spelled ' + " ".join(m.group(1)), prompt)


GLYPH_HEIGHT, GLYPH_CAP, GLYPH_COLUMN, GLYPH_MAX_COLUMNS = 16, 12, 8, 16


@functools.lru_cache(maxsize=256)
def glyph_columns(word: str) -> torch.Tensor:
    """The word drawn in the sign font (12 px capitals in a 16 px strip, 4x supersampled), cut into 8 px columns:
    (columns, 128) ink in [0, 1], one row a column, read left to right. Cached: every step draws the same
    training words again (callers copy it, never change it)."""
    s = 4
    f = font.font(round(GLYPH_CAP * s / font.cap_height_ratio()))
    x0, y0, x1, y1 = f.getbbox(word)
    columns = min(GLYPH_MAX_COLUMNS, -(-(x1 - x0) // (GLYPH_COLUMN * s)) or 1)
    canvas = Image.new("L", (columns * GLYPH_COLUMN * s, GLYPH_HEIGHT * s), 0)
    ImageDraw.Draw(canvas).text((-x0, (GLYPH_HEIGHT * s - (y1 - y0)) / 2 - y0), word, fill=255, font=f)
    ink = torch.from_numpy(np.asarray(canvas.reduce(s), dtype=np.float32) / 255.0)
    return ink.unflatten(1, (columns, GLYPH_COLUMN)).permute(1, 0, 2).flatten(1)


def glyph_features(prompts: list[str], hidden: int, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-stream tokens that show the quoted word's letters: one per 8 px column of its glyph strip, the
    column's 128 ink values, a one-hot of its index and a marker; the same vector on every selected layer.
    (B, G, layers, hidden) and the mask (B, G); prompts without a quoted word get none."""
    width = GLYPH_HEIGHT * GLYPH_COLUMN
    words = [m.group(1) if (m := QUOTED.search(p)) else None for p in prompts]
    cols = [glyph_columns(w) if w else torch.zeros(0, width) for w in words]
    length = max(1, max(len(c) for c in cols))
    feats, mask = torch.zeros(len(prompts), length, hidden), torch.zeros(len(prompts), length, dtype=torch.bool)
    for b, c in enumerate(cols):
        n = len(c)
        feats[b, :n, :width] = c
        feats[b, torch.arange(n), width + torch.arange(n)] = 1.0
        feats[b, :n, width + GLYPH_MAX_COLUMNS] = 1.0
        mask[b, :n] = True
    return feats[:, :, None].expand(-1, -1, layers, -1), mask


def with_glyphs(encode, hidden: int, layers: int):
    """`encode` with each prompt's glyph tokens appended after its text tokens."""
    def encode_with_glyphs(prompts: list[str]) -> TextFeatures:
        text = encode(prompts)
        glyphs, gmask = glyph_features(prompts, hidden, layers)
        return TextFeatures(torch.cat([text.features, glyphs.to(text.features)], 1), torch.cat([text.mask, gmask], 1))
    return encode_with_glyphs


def sign_tokens(box: tuple[float, float, float, float], size: int, grid: int) -> torch.Tensor:
    """(grid * grid,) bool, row-major: the tokens of a size x size image on a grid x grid token grid that the
    box (x0, y0, x1, y1 in pixels) touches."""
    x0, y0, x1, y1 = box
    first = torch.arange(grid) * (size / grid)  # each token's first pixel, rows and columns alike
    rows, cols = (first + size / grid > y0) & (first < y1), (first + size / grid > x0) & (first < x1)
    return (rows[:, None] & cols[None, :]).flatten()


def readings(samples) -> list[tuple[str, str]]:
    """(text read, word asked) of each sign sample; an exact read gives no reason and is its word."""
    out = []
    for s in samples:
        asked = QUOTED.search(s.prompt).group(1)
        out.append((re.match(r"read '(.*)' for", s.reason).group(1) if s.reason else asked, asked))
    return out


def same_reading(samples) -> float:
    """Of the pairs of images with the same seed and different words, the share read as the same non-empty
    text: how far what the model writes depends on the noise rather than on the word."""
    reads = [(s.seed, read) for s, (read, _) in zip(samples, readings(samples))]
    pairs = [a == b != "" for i, (seed, a) in enumerate(reads) for seed2, b in reads[i + 1:] if seed == seed2]
    return sum(pairs) / max(1, len(pairs))


def against_other_words(samples) -> float:
    """The mean OCR similarity of each reading to the *other* words asked in the same set: what letters read at
    random score. A model that writes its word scores above it; one that writes letter soup scores the same."""
    pairs = readings(samples)
    words = sorted({w for _, w in pairs})
    return float(np.mean([np.mean([text_similarity(read, w) for w in words if w != asked]) for read, asked in pairs]))


def read_scores(pipe: LensPipeline, size: int) -> dict:
    """OCR similarity on ShapesEval's text prompts (held-out words, 4 seeds each) and on 20 training words (2
    seeds each), and how often one seed reads the same whatever the word."""
    generate = pipeline_generator(pipe, size, size, None, None)
    held_out = evaluate(generate, tasks=["text"], progress=False)
    train = [PromptSpec(text=w, task="text", prompt=sign_prompt(w, i), id=f"train-{i}")
             for i, w in enumerate(TRAIN_WORDS[::5])]
    trained = evaluate(generate, prompts=train, n_per_prompt=2, progress=False)
    return {"held_out_words": held_out.tasks["text"], "training_words": trained.tasks["text"],
            "held_out_other": against_other_words(held_out.samples),
            "training_other": against_other_words(trained.samples),
            "same_reading": same_reading(held_out.samples + trained.samples),
            "reads": [s.reason for s in trained.samples[:6]]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="shapes-tiny", help="shipped model name or pipeline folder")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--size", type=int, default=64, help="square image side (ShapesEval's: 64)")
    parser.add_argument("--no-spell", action="store_true", help="prompts as they are, no letters appended")
    parser.add_argument("--glyph", action="store_true",
                        help="also give the model the quoted word drawn: glyph tokens after the text tokens")
    parser.add_argument("--canvas", action="store_true",
                        help="also show the model the sign drawn where it goes: a layout input, per image token "
                             "the pixels of the sign's drawing there (at sampling, the pipeline plans one)")
    parser.add_argument("--sign-weight", type=float, default=1.0,
                        help="loss weight of the tokens the sign touches, against 1 for the rest")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = LensPipeline.from_pretrained(args.model, device="cpu", dtype=torch.float32)
    if not args.no_spell:
        encode = pipe.text_encoder.encode
        pipe.text_encoder.encode = lambda prompts: encode([spelled(p) for p in prompts])
    if args.glyph:
        pipe.text_encoder.encode = with_glyphs(pipe.text_encoder.encode, pipe.text_encoder.hidden_size,
                                               pipe.text_encoder.num_layers)
    model = pipe.transformer
    if args.canvas:  # the pipeline then plans a sign for each quoted word at sampling
        pipe.transformer = model = with_layout_input(model, pipe.codec.spatial_factor ** 2)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sigmas, gen = SigmaSampling(), torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    rows, losses, start = [], [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            r = read_scores(pipe, args.size)
            rows.append({"step": step, "loss": float(np.mean(losses[-100:])) if losses else None, **r})
            loss = f"{rows[-1]['loss']:.4f}" if losses else "-"
            print(f"step {step:5d}  loss {loss}  held-out words {r['held_out_words']:.3f} (other words "
                  f"{r['held_out_other']:.3f})  training words {r['training_words']:.3f} (other words "
                  f"{r['training_other']:.3f})  same reading across words {r['same_reading']:.2f}  "
                  f"({time.perf_counter() - start:.0f} s; {'; '.join(r['reads'])})", flush=True)
        if step == args.steps:
            break
        model.train()
        images, prompts, signs = zip(*(sign_scene(rng, args.size) for _ in range(args.batch_size)))
        batch = collate(list(images), list(prompts), pipe.codec)
        text = pipe.text_encoder.encode(list(prompts))
        layout = torch.from_numpy(np.stack([layout_tokens(sign, args.size, args.size, pipe.codec.spatial_factor)
                                            for sign in signs])) if args.canvas else None  # the true sign
        sigma = sigmas.sample(torch.tensor([h * w for h, w in batch.sizes]), gen)
        x_t, target = noisy_input(batch.tokens, torch.randn(batch.tokens.shape, generator=gen), sigma)
        err = (model(x_t, text.features, sigma, batch.sizes, text.mask, layout=layout) - target).square().mean(-1)
        on_sign = torch.stack([sign_tokens(sign_box(sign, args.size, args.size), args.size, h)
                               for sign, (h, _) in zip(signs, batch.sizes)])
        weight = 1.0 + (args.sign_weight - 1.0) * on_sign.float()
        loss = (err * weight).sum() / weight.sum()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        losses.append(loss.item())
    return rows


if __name__ == "__main__":
    main()
