"""ShapesEval: GenEval's six tasks plus text, on the Shapes world, for any prompt -> image callable.

The callable protocol is batched: `generate(prompts: list[str], seeds: list[int]) -> list[PIL.Image]`,
one image per (prompt, seed) pair. Scoring follows GenEval's rules with our judge as the detector:
an object group needs at least `count` objects of its shape (the most template-like first); a colour
needs that many of them in that colour; counting needs exactly the number (no extra of that shape);
position compares box centres with a 0.1 margin (relations.py). The text task scores
1 - normalised edit distance of the OCR'd sign. The overall score is the mean over tasks. Each score
comes with its standard error over prompts (a prompt's images share it, so the prompt is the unit), the
yardstick for whether two models' scores differ at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from lensgen.shapes.evalset import GENEVAL_TASKS, TASKS, load_prompts
from lensgen.shapes.judge import Detection, detect
from lensgen.shapes.ocr import text_similarity
from lensgen.shapes.prompt import PromptSpec
from lensgen.shapes.relations import relative_position

Generate = Callable[[list[str], list[int]], list[Image.Image]]


@dataclass
class SampleResult:
    id: str
    task: str
    prompt: str
    seed: int
    score: float  # 1/0 for GenEval tasks, 1 - NED for text
    reason: str = ""


@dataclass
class ShapesEvalResult:
    tasks: dict[str, float]  # task -> mean score
    overall: float  # mean over the evaluated tasks
    geneval_overall: float | None  # mean over GenEval's six tasks when all were evaluated
    samples: list[SampleResult] = field(default_factory=list)
    n_per_prompt: int = 1
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    tasks_se: dict[str, float | None] = field(default_factory=dict)  # task -> standard error over prompts
    overall_se: float | None = None  # of the overall mean (tasks independent); None if a task has one prompt

    def to_dict(self) -> dict:
        return asdict(self)


def geneval_check(spec: PromptSpec, det: Detection) -> tuple[bool, str]:
    """GenEval's rule for one image: (correct, reason when not)."""
    groups = []
    reasons = []
    for req in spec.objects:
        found = det.of(req.shape)[: req.count]
        if len(found) < req.count:
            reasons.append(f"expected {req.shape}>={req.count}, found {len(found)}")
            groups.append(None)
            continue
        if req.colour is not None:
            colours = [o.colour for o in found]
            if colours.count(req.colour) < req.count:
                reasons.append(f"expected {req.colour} {req.shape}>={req.count}, found {colours}")
                groups.append(None)
                continue
        groups.append(found)
    if spec.exact_count:
        for req in spec.objects:
            n = len(det.of(req.shape))
            if n > req.count:
                reasons.append(f"expected {req.shape}<{req.count + 1}, found {n}")
    r = spec.relation
    if r is not None and groups[r.a] is not None:
        if groups[r.b] is None:
            reasons.append(f"no target for {spec.objects[r.a].shape} to be {r.relation}")
        else:
            for a in groups[r.a]:
                for b in groups[r.b]:
                    rels = relative_position(a.box, b.box)
                    if r.relation not in rels:
                        reasons.append(f"expected {spec.objects[r.a].shape} {r.relation} target, found {sorted(rels)}")
                        break
    return not reasons, "; ".join(reasons)


def score_image(spec: PromptSpec, image: Image.Image, detection: Detection | None = None) -> tuple[float, str]:
    """(score, reason) of one image; `detection`: the judge's reading of it, when already made (with OCR
    if the prompt's text is scored)."""
    reads_text = spec.task == "text" or bool(spec.text and not spec.objects)  # OCR only when text is scored
    det = detection if detection is not None and (detection.text is not None or not reads_text) \
        else detect(image, ocr=reads_text)
    if reads_text:
        sim = text_similarity(det.text or "", spec.text)
        return sim, "" if sim == 1.0 else f"read '{det.text}' for '{spec.text}'"
    ok, reason = geneval_check(spec, det)
    return float(ok), reason


def standard_errors(samples: list[SampleResult]) -> tuple[dict[str, float | None], float | None]:
    """Per task, the standard error of its mean score with prompts as the sampling unit (the images of one
    prompt are not independent draws); and the overall mean's, the tasks taken as independent. A task
    with a single prompt has none."""
    by_prompt: dict[str, dict[str, list[float]]] = {}
    for s in samples:
        by_prompt.setdefault(s.task, {}).setdefault(s.id, []).append(s.score)
    per_task: dict[str, float | None] = {}
    for task, prompts in by_prompt.items():
        means = np.array([np.mean(v) for v in prompts.values()])
        per_task[task] = float(means.std(ddof=1) / np.sqrt(len(means))) if len(means) > 1 else None
    return per_task, combined_se(list(per_task.values()))


def combined_se(task_se: list[float | None]) -> float | None:
    """The standard error of a mean over tasks, the tasks independent; None if any task has none."""
    if not task_se or any(v is None for v in task_se):
        return None
    return float(np.sqrt(sum(v * v for v in task_se)) / len(task_se))


def evaluate(generate: Generate, tasks: list[str] | None = None, n_per_prompt: int = 4, batch_size: int = 16,
             limit: int | None = None, seed: int = 0, prompts: list[PromptSpec] | None = None,
             progress: bool = True,
             on_image: Callable[[SampleResult, Image.Image], None] | None = None) -> ShapesEvalResult:
    """Generate n_per_prompt images per held-out prompt (seeds seed + k) and score them.
    on_image(sample, image) sees each image with its score as soon as it is scored (to keep it: images are
    not held, so a long run stays small in memory)."""
    from tqdm import tqdm

    specs = prompts if prompts is not None else load_prompts(tasks, limit=limit)
    jobs = [(spec, seed + k) for spec in specs for k in range(n_per_prompt)]
    samples: list[SampleResult] = []
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="ShapesEval", unit="img", disable=not progress)
    for i in range(0, len(jobs), batch_size):
        batch = jobs[i : i + batch_size]
        images = generate([s.prompt for s, _ in batch], [sd for _, sd in batch])
        if len(images) != len(batch):
            raise ValueError(f"generate returned {len(images)} images for {len(batch)} prompts")
        for (spec, sd), img in zip(batch, images):
            value, reason = score_image(spec, img)
            samples.append(SampleResult(spec.id, spec.task or "", spec.prompt, sd, value, reason))
            if on_image is not None:
                on_image(samples[-1], img)
        bar.update(len(batch))
    bar.close()
    order = [t for t in TASKS if any(s.task == t for s in samples)]
    per_task = {t: float(np.mean([s.score for s in samples if s.task == t])) for t in order}
    geneval = float(np.mean([per_task[t] for t in GENEVAL_TASKS])) if all(t in per_task for t in GENEVAL_TASKS) \
        else None
    overall = float(np.mean(list(per_task.values()))) if per_task else 0.0
    tasks_se, overall_se = standard_errors(samples)
    return ShapesEvalResult(per_task, overall, geneval, samples, n_per_prompt, time.perf_counter() - start,
                            tasks_se={t: tasks_se[t] for t in order}, overall_se=overall_se)


def _with_se(value: float, se: float | None) -> str:
    return f"{value:.3f}" if se is None else f"{value:.3f} ± {se:.3f}"


def format_table(result: ShapesEvalResult, title: str = "ShapesEval") -> str:
    """A markdown table: one row per task (score ± its standard error over prompts), then the overall means."""
    counts = {t: sum(s.task == t for s in result.samples) for t in result.tasks}
    lines = [f"### {title}", "", "| task | score ± s.e. | images |", "| --- | ---: | ---: |"]
    lines += [f"| {t} | {_with_se(v, result.tasks_se.get(t))} | {counts[t]} |" for t, v in result.tasks.items()]
    if result.geneval_overall is not None:
        lines.append(f"| GenEval six-task mean | {result.geneval_overall:.3f} | |")
    lines.append(f"| **overall** | **{_with_se(result.overall, result.overall_se)}** | {len(result.samples)} |")
    return "\n".join(lines) + "\n"


def ground_truth_generator(specs: list[PromptSpec], height: int, width: int) -> Generate:
    """Render each prompt's own scene: the judge's ceiling."""
    from lensgen.shapes.groundtruth import scene_for_prompt
    from lensgen.shapes.render import render

    by_prompt = {s.prompt: s for s in specs}

    def generate(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        return [render(scene_for_prompt(by_prompt[p], sd, width / height), height, width)
                for p, sd in zip(prompts, seeds)]

    return generate


def codec_round_trip(generate: Generate, codec) -> Generate:
    """`generate`'s images encoded and decoded by a latent codec: the ceiling a model in that codec's
    latent space can reach (its reconstruction loss is charged to the score)."""
    import torch

    from lensgen.images import image_to_tensor, to_pil

    def round_trip(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        images = torch.stack([image_to_tensor(im) for im in generate(prompts, seeds)])
        with torch.no_grad():
            return to_pil(codec.decode(codec.encode(images)))

    return round_trip


def noise_generator(height: int, width: int) -> Generate:
    """Uniform RGB noise per (prompt, seed): the floor."""

    def generate(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        return [Image.fromarray(np.random.default_rng([sd, len(p)]).integers(0, 256, (height, width, 3), np.uint8))
                for p, sd in zip(prompts, seeds)]

    return generate


def reasoned_generator(generate: Generate, reasoner: Callable[..., list[str]], aspect: float) -> Generate:
    """`generate` given each prompt as the reasoner rewrote it (scoring still reads the original prompt):
    how much a prompt rewrite helps, measured. reasoner(prompts, aspect=..., seeds=...) -> list[str]."""

    def generate_rewritten(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        return generate(list(reasoner(list(prompts), aspect=aspect, seeds=list(seeds))), seeds)

    return generate_rewritten


def pipeline_generator(pipe, height: int, width: int, steps: int | None, cfg: float | None,
                       classifier_scale: float | None = None) -> Generate:
    """Wrap a LensPipeline (or anything with its call signature) as the batched protocol; None: its default."""
    kwargs = {"height": height, "width": width}
    if steps is not None:
        kwargs["steps"] = steps
    if cfg is not None:
        kwargs["cfg"] = cfg
    if classifier_scale is not None:
        kwargs["classifier_scale"] = classifier_scale

    def generate(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        return pipe(list(prompts), seed=list(seeds), **kwargs)

    return generate
