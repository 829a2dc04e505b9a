"""Step 3, NSFW: NudeNet's detector (the ONNX model ships inside the `nudenet` package; offline).

Score: the highest confidence among the detections of the configured classes (by default the
five "exposed" classes), 0 when there is none. Reject at `nsfw.threshold` (0.5) or above. NudeNet
itself drops detections under 0.2, so scores between 0 and 0.2 do not occur.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lensgen.data.curate.config import NsfwConfig
from lensgen.data.curate.steps.base import Item, Step
from lensgen.errors import UserError


class NsfwStep(Step):
    name, column = "nsfw", "nsfw_score"

    def __init__(self, config: NsfwConfig, threads: int = 1):
        import onnxruntime as ort
        from nudenet import NudeDetector

        if config.model_path and not Path(config.model_path).is_file():
            raise UserError(f"nsfw.model_path: no ONNX file at {config.model_path}")
        self.detector = NudeDetector(model_path=config.model_path)
        model_file = config.model_path or str(Path(__import__("nudenet").__file__).parent / "320n.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.detector.onnx_session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
        self.classes = set(config.classes)
        self.threshold = config.threshold

    def score(self, items: list[Item]) -> list[float]:
        scores = []
        for item in items:
            rgb = np.asarray(item.image)
            # NudeNet converts with RGBA->BGR then swaps R and B again: hand it RGBA.
            rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
            detections = self.detector.detect(rgba)
            scores.append(max((d["score"] for d in detections if d["class"] in self.classes), default=0.0))
        return scores

    def rejects(self, value: float) -> bool:
        return value >= self.threshold

