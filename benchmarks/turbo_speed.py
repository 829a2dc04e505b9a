"""A few-step (Turbo) student against its teacher, side by side in one run: images per second, each model
at its own defaults (the teacher's steps and CFG, the student's turbo preset), and the transformer passes
per image, counted (one image's row in one transformer call is one pass; a CFG step is two).

    python benchmarks/turbo_speed.py --student runs/distill-shapes/final          # teacher: the shipped model
    python benchmarks/turbo_speed.py --teacher DIR --student DIR --images 32 --rounds 5 --json out.json
    python benchmarks/turbo_speed.py --student DIR --grid grid.png      # also: teacher | student, same seeds
    python benchmarks/turbo_speed.py --student DIR --same-decoder       # also: the teacher with the student's VAE

The two are timed call by call in alternation, the same prompts and seeds, whole pipeline calls: text
encoding, sampling and decoding, so the ratio is what a user of `lensgen generate` gets. The speed-up is
the median over `--rounds` of each round's ratio: this machine's speed drifts by up to half within a
minute, and calls that alternate see the same drift where back-to-back runs of each model did not.
Lens-Turbo's targets: >= 4.5x the teacher's images/s, >= 8x where the teacher samples with CFG (40 passes
against 4).

Each model's FLOPs per image are counted too (`lensgen.compute.flop_counter`: text encoding, one
transformer pass, decoding, a classifier's guidance over the call where the model has one, and the whole
call). Their ratio is the speed-up on a device that runs every
FLOP at the same rate: the ceiling the measured ratio is read against. Text encoding and decoding are
paid once per image by both models, so they cap the ratio below the ratio of transformer passes. A student
may ship a lighter decoder for the same VAE (`lensgen train-vae --set teacher=...`); `--same-decoder` then
also times the teacher decoding through it, so the part of the speed-up the decoder buys is read apart from
the part the few-step transformer buys.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lensgen.compute import flop_counter
from lensgen.flow.schedule import sampling_sigmas
from lensgen.inference.classifier_guidance import prompt_rubrics
from lensgen.inference.pipeline import DEFAULT_MODEL_DIR, LensPipeline
from lensgen.models.latent_classifier import guidance

PROMPTS = ["a photo of a red circle", "a blue square above a yellow triangle", "three green stars",
           "a photo of a purple hexagon", "a white heart to the left of an orange circle",
           'a sign that says "LENS"', "two pink squares", "a black triangle below a brown star"]


class PassCounter:
    """Counts the image rows the transformer is called on (forward hook), i.e. transformer passes."""

    def __init__(self, transformer: torch.nn.Module):
        self.rows = 0
        transformer.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.rows += output.shape[0]


def _flops(fn) -> int:
    with flop_counter() as counter:
        fn()
    return counter.get_total_flops()


@torch.no_grad()
def flops_per_image(pipe: LensPipeline, prompts: list[str], seed: int = 0) -> dict:
    """GFLOPs per image of one pipeline call on `prompts` at the model's defaults, and of its parts: text
    encoding, one transformer pass (one image row, no CFG) and decoding."""
    n = len(prompts)
    height, width = pipe.default_height, pipe.default_width
    f = pipe.codec.spatial_factor
    grid = (height // f, width // f)
    text = pipe.text_encoder.encode(prompts)
    features = text.features.to(pipe.device, pipe.transformer.img_in.weight.dtype)
    tokens = pipe.initial_noise(list(range(n)), height, width)
    sigma = torch.full((n,), 0.5, device=pipe.device)
    latents = tokens.transpose(1, 2).unflatten(2, grid).to(pipe.codec.dtype)
    parts = {"text": _flops(lambda: pipe.text_encoder.encode(prompts)),
             "transformer_pass": _flops(lambda: pipe.transformer(tokens, features, sigma, grid, text.mask)),
             "decode": _flops(lambda: pipe.codec.decode(latents)),
             "call": _flops(lambda: pipe(prompts, seed=seed, output_type="pt"))}
    parts["guidance"] = guidance_flops(pipe, prompts, tokens, grid)
    return {name: value / n / 1e9 for name, value in parts.items()}


def guidance_flops(pipe: LensPipeline, prompts: list[str], tokens: torch.Tensor, grid: tuple[int, int]) -> int:
    """FLOPs a call at the defaults spends on classifier guidance: one classifier forward and backward over the
    batch at each sampling step at or below the cut-off (0 for a model without a classifier)."""
    d = pipe.defaults
    if pipe.classifier is None or not d.classifier_scale:
        return 0
    sigmas = sampling_sigmas(d.steps, grid[0] * grid[1], schedule=d.schedule)
    active = int((sigmas[:-1] <= d.classifier_max_sigma).sum())
    rubrics = prompt_rubrics(prompts)
    sigma = torch.full((len(prompts),), d.classifier_max_sigma / 2, device=pipe.device)
    return active * _flops(lambda: guidance(pipe.classifier, tokens, sigma, grid, rubrics, d.classifier_scale,
                                            d.classifier_max_sigma))


def compare(teacher_dir: str, student_dir: str, images: int, batch: int, rounds: int, seed: int = 0,
            same_decoder: bool = False) -> dict:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(images)]
    models = {"teacher": LensPipeline.from_pretrained(teacher_dir),
              "student": LensPipeline.from_pretrained(student_dir)}
    if same_decoder:  # the teacher's transformer and text encoder, the student's codec (checked: same tokens)
        from lensgen.models.vae import check_same_latents

        teacher, student = models["teacher"], models["student"]
        check_same_latents(student.codec, teacher.codec, f"the student's codec ({student_dir})")
        models["teacher_student_decoder"] = LensPipeline(teacher.transformer, student.codec, teacher.text_encoder,
                                                         teacher.defaults, name=f"{teacher.name}, student's VAE",
                                                         classifier=teacher.classifier)
    counter = {}  # one per transformer (the teacher's may serve two rows); passes are read around each call
    for pipe in models.values():
        counter.setdefault(id(pipe.transformer), PassCounter(pipe.transformer))
    for pipe in models.values():  # warm-up: first-call allocations, thread pools
        pipe(prompts[:batch], seed=seed)
    gflops = {name: flops_per_image(pipe, prompts[:batch], seed) for name, pipe in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    passes = dict.fromkeys(models, 0)
    for _ in range(rounds):  # call by call in alternation: the machine's speed drifts, both models share it
        spent = dict.fromkeys(models, 0.0)
        for start in range(0, len(prompts), batch):
            for name, pipe in models.items():
                rows_before = counter[id(pipe.transformer)].rows
                t0 = time.perf_counter()
                pipe(prompts[start:start + batch], seed=seed + start)
                spent[name] += time.perf_counter() - t0
                passes[name] += counter[id(pipe.transformer)].rows - rows_before
        for name in models:
            times[name].append(spent[name])
    rows: dict = {}
    for name, pipe in models.items():
        seconds = statistics.median(times[name])
        d = pipe.defaults
        rows[name] = {"model": student_dir if name == "student" else teacher_dir, "steps": d.steps, "cfg": d.cfg,
                      "solver": d.solver, "size": f"{pipe.default_width}x{pipe.default_height}",
                      "passes_per_image": passes[name] / (rounds * images),
                      "seconds": seconds, "seconds_rounds": times[name], "images_per_s": images / seconds,
                      "gflops_per_image": gflops[name]}
    def paired(name: str) -> float:
        """The median over rounds of the student's speed-up on `name` within each round."""
        return statistics.median(t / s for t, s in zip(times[name], times["student"]))

    ratio = paired("teacher")
    flop_ratio = rows["teacher"]["gflops_per_image"]["call"] / rows["student"]["gflops_per_image"]["call"]
    target = 8.0 if rows["teacher"]["cfg"] != 1.0 else 4.5
    result = {"images": images, "batch": batch, "rounds": rounds, "threads": torch.get_num_threads(), **rows,
              "speedup": ratio, "flop_ratio": flop_ratio, "target": target, "meets_target": ratio >= target}
    if same_decoder:
        same = rows["teacher_student_decoder"]
        result["speedup_same_decoder"] = paired("teacher_student_decoder")
        result["flop_ratio_same_decoder"] = same["gflops_per_image"]["call"] / rows["student"]["gflops_per_image"]["call"]
    return result


def side_by_side(teacher_dir: str, student_dir: str, path: str, seed: int = 0, scale: int = 2) -> None:
    """A PNG with one row per prompt of PROMPTS: the teacher's image, then the student's, same seed."""
    from PIL import Image

    columns = [LensPipeline.from_pretrained(d)(PROMPTS, seed=seed) for d in (teacher_dir, student_dir)]
    w, h = columns[0][0].size
    sheet = Image.new("RGB", (2 * w * scale + scale * 4, len(PROMPTS) * h * scale), (255, 255, 255))
    for row, pair in enumerate(zip(*columns)):
        for col, image in enumerate(pair):
            sheet.paste(image.resize((w * scale, h * scale), Image.NEAREST),
                        (col * (w * scale + scale * 4), row * h * scale))
    sheet.save(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=str(DEFAULT_MODEL_DIR), help="teacher pipeline folder "
                                                                           "(default: the shipped model)")
    parser.add_argument("--student", required=True, help="student pipeline folder (a `lensgen distill` export)")
    parser.add_argument("--images", type=int, default=32, help="images per model per round (default 32)")
    parser.add_argument("--batch", type=int, default=8, help="images per pipeline call (default 8)")
    parser.add_argument("--rounds", type=int, default=15,
                        help="rounds (default 15; the speed-up is the median of the rounds' ratios, which one "
                             "round of this noisy machine moves by +-8 %%, fifteen by ~1 %%)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--same-decoder", action="store_true",
                        help="also time the teacher decoding through the student's VAE (a lighter decoder for the "
                             "same latents): the speed-up owed to the transformer alone")
    parser.add_argument("--grid", help="also write a PNG: one row per prompt, teacher left, student right, "
                                       "same seeds")
    args = parser.parse_args(argv)
    if min(args.images, args.batch, args.rounds) < 1:
        parser.error("--images, --batch and --rounds must be at least 1")
    result = compare(args.teacher, args.student, args.images, args.batch, args.rounds,
                     same_decoder=args.same_decoder)
    names = [name for name in ("teacher", "teacher_student_decoder", "student") if name in result]
    print(f"{result['images']} images per model per round, batch {result['batch']}, {result['rounds']} rounds "
          f"(medians; calls alternate), threads={result['threads']}")
    print(f"{'model':23s} {'steps':>5} {'cfg':>5} {'solver':>6} {'size':>7} {'passes/img':>10} {'s/round':>8} "
          f"{'img/s':>7}")
    for name in names:
        r = result[name]
        print(f"{name:23s} {r['steps']:5d} {r['cfg']:5.1f} {r['solver']:>6} {r['size']:>7} "
              f"{r['passes_per_image']:10.1f} {r['seconds']:8.2f} {r['images_per_s']:7.2f}")
    print(f"{'GFLOP per image':23s} {'text':>6} {'1 pass':>7} {'decode':>7} {'guide':>7} {'call':>7}")
    for name in names:
        g = result[name]["gflops_per_image"]
        print(f"{name:23s} {g['text']:6.3f} {g['transformer_pass']:7.3f} {g['decode']:7.3f} {g['guidance']:7.3f} "
              f"{g['call']:7.3f}")
    print(f"FLOP ratio (teacher / student per image): {result['flop_ratio']:.2f}x, the speed-up if every FLOP ran "
          f"at one rate")
    print(f"speed-up (student / teacher images/s, median of the rounds' ratios): {result['speedup']:.2f}x "
          f"(target >= {result['target']:g}x: {'met' if result['meets_target'] else 'not met'})")
    if args.same_decoder:
        print(f"with the student's decoder in both: {result['speedup_same_decoder']:.2f}x measured, "
              f"{result['flop_ratio_same_decoder']:.2f}x in FLOPs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.grid:
        side_by_side(args.teacher, args.student, args.grid)
        print(f"wrote {args.grid}: rows {', '.join(repr(p) for p in PROMPTS)}; teacher left, student right")
    return result


if __name__ == "__main__":
    main()
