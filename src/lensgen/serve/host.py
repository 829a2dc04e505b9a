"""The models a server holds, and the one function the batcher calls: a batch of images -> PNG bytes.

Every PNG carries the text metadata `lensgen generate` writes (prompt, seed, steps, CFG, size, model), plus
the rewritten prompt when a reasoner changed it, so an image saved from the page can be made again.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from lensgen.inference.generate import png_metadata
from lensgen.inference.pipeline import LensPipeline, PipelineDefaults


@dataclass(frozen=True)
class ImageJob:
    """One image of a request: the prompt as typed, what the model is given, and its seed."""

    prompt: str
    model_prompt: str
    negative_prompt: str
    seed: int


class ModelHost:
    def __init__(self, pipelines: dict[str, LensPipeline]):
        if not pipelines:
            raise ValueError("a server needs at least one model")
        self.pipelines = pipelines

    @classmethod
    def load(cls, folders: list[str | os.PathLike], device: str | None = None) -> ModelHost:
        """Each folder's pipeline, named by the folder (two folders of one name get -2, -3 ...)."""
        pipelines: dict[str, LensPipeline] = {}
        for folder in folders:
            name = base = Path(folder).resolve().name
            k = 1
            while name in pipelines:
                k += 1
                name = f"{base}-{k}"
            pipelines[name] = LensPipeline.from_pretrained(folder, device=device)
        return cls(pipelines)

    @property
    def defaults(self) -> dict[str, PipelineDefaults]:
        return {name: pipe.defaults for name, pipe in self.pipelines.items()}

    @property
    def guided(self) -> frozenset[str]:
        """The models with a classifier: the only ones a request may ask for classifier guidance."""
        return frozenset(name for name, pipe in self.pipelines.items() if pipe.classifier is not None)

    def describe(self, name: str) -> dict:
        """What a client (the page) needs to offer this model's choices."""
        d = self.pipelines[name].defaults
        return {"default_size": f"{d.width}x{d.height}", "size_multiple": d.size_multiple, "max_side": d.max_side,
                "steps": d.steps, "cfg": d.cfg, "classifier_scale": d.classifier_scale,
                "classifier": self.pipelines[name].classifier is not None, "description": self.pipelines[name].name}

    def run(self, key: tuple, jobs: list[ImageJob]) -> list[bytes]:
        """One sampler call for jobs sharing `key` = (model, height, width, steps, cfg, classifier_scale): PNG bytes
        in order."""
        model, height, width, steps, cfg, classifier_scale = key
        pipe = self.pipelines[model]
        images = pipe([j.model_prompt for j in jobs], height=height, width=width, steps=steps, cfg=cfg,
                      seed=[j.seed for j in jobs], negative_prompt=[j.negative_prompt for j in jobs],
                      classifier_scale=classifier_scale)
        out = []
        for job, image in zip(jobs, images):
            extra = {"revised_prompt": job.model_prompt} if job.model_prompt != job.prompt else {}
            if pipe.classifier is not None:
                extra["classifier_scale"] = classifier_scale
            info = png_metadata(prompt=job.prompt, negative_prompt=job.negative_prompt, seed=job.seed, steps=steps,
                                cfg=cfg, height=height, width=width, model=model, **extra)
            buf = io.BytesIO()
            image.save(buf, format="PNG", pnginfo=info)
            out.append(buf.getvalue())
        return out
