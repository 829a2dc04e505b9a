"""The nine cleaning steps, in the Lens order, and which of them run under a given config.

A step runs, is disabled (`enabled: false`), or is skipped because its weights are not configured;
skipped steps are reported as such in the summary (never silently passed), and a step marked
`required: true` refuses to start without its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lensgen.data.curate.config import CurateConfig
from lensgen.errors import UserError

STEP_ORDER = (
    "corrupt", "resolution", "nsfw", "aesthetic", "watermark", "clarity", "entropy", "brightness", "dedup",
)
SCORE_COLUMNS = {
    "corrupt": "decode_error",
    "resolution": "short_side",
    "nsfw": "nsfw_score",
    "aesthetic": "aesthetic_score",
    "watermark": "watermark_score",
    "clarity": "laplacian_var",
    "entropy": "entropy_bits",
    "brightness": "luma",
    "dedup": "dup_similarity",
}


@dataclass
class StepPlan:
    name: str
    status: str  # "ran", "disabled" or "skipped: <why>"
    rule: str

    @property
    def runs(self) -> bool:
        return self.status == "ran"


def dedup_embedder_name(config: CurateConfig) -> str:
    if config.dedup.embedder == "auto":
        return "clip" if config.clip_path else "thumbnail"
    return config.dedup.embedder


def _rules(c: CurateConfig) -> dict[str, str]:
    return {
        "corrupt": f"fails a full decode, or more than {c.corrupt.max_pixels} pixels",
        "resolution": f"shorter side < {c.resolution.min_short_side} px",
        "nsfw": f"NudeNet exposed-class confidence >= {c.nsfw.threshold:g}",
        "aesthetic": f"LAION aesthetic score < {c.aesthetic.min_score:g}",
        "watermark": f"P(watermark) > {c.watermark.threshold:g}",
        "clarity": f"Laplacian variance at {c.clarity.size} px < {c.clarity.min_variance:g}",
        "entropy": f"grey-level entropy < {c.entropy.min_bits:g} bits",
        "brightness": f"mean luma outside [{c.brightness.min_luma:g}, {c.brightness.max_luma:g}]",
        "dedup": f"{dedup_embedder_name(c)} embedding cosine similarity > {c.dedup.threshold:g} to a kept image",
    }


def _check_path(field_name: str, path: str | None) -> None:
    if path and not Path(path).exists():
        raise UserError(f"{field_name}: {path} does not exist")


def plan_steps(config: CurateConfig, strict: bool = True) -> list[StepPlan]:
    """Decide which steps run, without loading any model. `strict`: check that configured weight paths
    exist and refuse a required step without weights (off when only describing a finished run)."""
    if strict:
        _check_path("clip_path", config.clip_path)
        _check_path("aesthetic.head_path", config.aesthetic.head_path)
        _check_path("watermark.model_path", config.watermark.model_path)
        _check_path("nsfw.model_path", config.nsfw.model_path)
    rules = _rules(config)
    status = {"corrupt": "ran"}
    for name in ("resolution", "nsfw", "clarity", "entropy", "brightness", "dedup"):
        status[name] = "ran" if getattr(config, name).enabled else "disabled"
    weights = {
        "aesthetic": ([config.clip_path, config.aesthetic.head_path], "clip_path and aesthetic.head_path"),
        "watermark": ([config.watermark.model_path], "watermark.model_path"),
    }
    for name, (paths, fields) in weights.items():
        section = getattr(config, name)
        if not section.enabled:
            status[name] = "disabled"
        elif all(paths):
            status[name] = "ran"
        elif section.required and strict:
            raise UserError(f"step '{name}' is marked required but its weights are not configured: set {fields}")
        else:
            status[name] = f"skipped: no weights configured (set {fields})"
    if strict and config.dedup.enabled and config.dedup.embedder == "clip" and not config.clip_path:
        raise UserError("dedup.embedder is 'clip' but clip_path is not set")
    return [StepPlan(name, status[name], rules[name]) for name in STEP_ORDER]


def build_steps(config: CurateConfig, plans: list[StepPlan], threads: int = 1):
    """Load the steps 2-8 that run (in order) and the near-duplicate embedder (None when disabled)."""
    from lensgen.data.curate.steps.pixel_stats import BrightnessStep, ClarityStep, EntropyStep, ResolutionStep

    runs = {p.name for p in plans if p.runs}
    clip = None
    if config.clip_path and ("aesthetic" in runs or ("dedup" in runs and dedup_embedder_name(config) == "clip")):
        from lensgen.data.curate.steps.embed import ClipEmbedder

        clip = ClipEmbedder(config.clip_path)
    steps = []
    for name in STEP_ORDER[1:8]:
        if name not in runs:
            continue
        if name == "resolution":
            steps.append(ResolutionStep(config.resolution))
        elif name == "nsfw":
            from lensgen.data.curate.steps.nsfw import NsfwStep

            steps.append(NsfwStep(config.nsfw, threads))
        elif name == "aesthetic":
            from lensgen.data.curate.steps.aesthetic import AestheticStep

            steps.append(AestheticStep(config.aesthetic, clip))
        elif name == "watermark":
            from lensgen.data.curate.steps.watermark import WatermarkStep

            steps.append(WatermarkStep(config.watermark, threads))
        elif name == "clarity":
            steps.append(ClarityStep(config.clarity))
        elif name == "entropy":
            steps.append(EntropyStep(config.entropy))
        elif name == "brightness":
            steps.append(BrightnessStep(config.brightness))
    embed = None
    if "dedup" in runs:
        from lensgen.data.curate.steps.dedup import EmbedStep
        from lensgen.data.curate.steps.embed import ThumbnailEmbedder

        embed = EmbedStep(clip if dedup_embedder_name(config) == "clip" else ThumbnailEmbedder(config.dedup.thumbnail_size))
    return steps, embed
