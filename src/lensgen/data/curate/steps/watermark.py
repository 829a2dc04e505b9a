"""Step 5, watermarks: a binary image classifier from a local path; the score is P(watermark).

Two kinds of model:
- a transformers image-classification folder (config.json + weights + preprocessor config); the
  watermark class is `watermark.positive_label`, or else the one label naming a watermark;
- an ONNX file run with onnxruntime, e.g. LAION's watermark_model_v1 (EfficientNet-B3) exported
  to ONNX. Preprocessing follows the config: resize to `input_size`, scale to 0..1, normalise with
  `mean` / `std` (LAION: 256x256, ImageNet statistics); `outputs` says whether the model gives
  logits (softmaxed here) or probabilities; `positive_index` is the watermark class (LAION: 0).
Reject when P(watermark) > `watermark.threshold` (0.8: LAION-Aesthetics kept pwatermark < 0.8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lensgen.data.curate.config import WatermarkConfig
from lensgen.data.curate.steps.base import Item, Step
from lensgen.errors import UserError


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


class _OnnxClassifier:
    def __init__(self, path: Path, config: WatermarkConfig, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise UserError(f"watermark.model_path: cannot load ONNX model {path}: {err}") from err
        self.input_name = self.session.get_inputs()[0].name
        self.height, self.width = config.input_size
        self.mean = np.asarray(config.mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(config.std, np.float32).reshape(1, 3, 1, 1)
        self.softmax = config.outputs == "logits"
        self.index = config.positive_index

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        batch = np.stack([
            np.asarray(im.resize((self.width, self.height), Image.Resampling.BILINEAR), np.float32)
            for im in images
        ]).transpose(0, 3, 1, 2) / 255.0
        batch = ((batch - self.mean) / self.std).astype(np.float32)
        out = np.asarray(self.session.run(None, {self.input_name: batch})[0], np.float64)
        if out.ndim != 2 or not 0 <= self.index < out.shape[1]:
            raise UserError(f"watermark: the ONNX model outputs shape {out.shape}; "
                            f"watermark.positive_index {self.index} does not fit")
        probs = _softmax(out) if self.softmax else out
        return probs[:, self.index]


class _TransformersClassifier:
    def __init__(self, path: Path, config: WatermarkConfig):
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.torch = torch
        from lensgen.data.curate.steps.embed import quiet_transformers

        try:
            with quiet_transformers():
                self.model = AutoModelForImageClassification.from_pretrained(path).eval()
                self.processor = AutoImageProcessor.from_pretrained(path)
        except Exception as err:
            raise UserError(f"watermark.model_path: cannot load an image classifier from {path}: {err}") from err
        labels = {int(i): str(name) for i, name in self.model.config.id2label.items()}
        self.index = self._positive_index(labels, config.positive_label, path)

    @staticmethod
    def _positive_index(labels: dict[int, str], wanted: str | None, path: Path) -> int:
        if wanted is not None:
            matches = [i for i, name in labels.items() if name == wanted]
            if not matches:
                raise UserError(f"watermark.positive_label {wanted!r} is not a label of {path}: {labels}")
            return matches[0]
        negative = ("no", "non", "clear", "clean", "without")
        matches = [
            i for i, name in labels.items()
            if "watermark" in name.lower() and not any(name.lower().startswith(n) for n in negative)
        ]
        if len(matches) != 1:
            raise UserError(f"watermark: cannot tell which label of {path} means 'watermark' ({labels}); "
                            "set watermark.positive_label")
        return matches[0]

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        with self.torch.inference_mode():
            inputs = self.processor(images=images, return_tensors="pt")
            logits = self.model(**inputs).logits.float()
            return logits.softmax(-1)[:, self.index].numpy().astype(np.float64)


def load_classifier(config: WatermarkConfig, threads: int = 1):
    path = Path(config.model_path)
    if path.is_dir() and (path / "config.json").is_file():
        return _TransformersClassifier(path, config)
    if path.is_file() and path.suffix.lower() == ".onnx":
        return _OnnxClassifier(path, config, threads)
    raise UserError(
        f"watermark.model_path: {path} is neither a transformers image-classification folder "
        "(with config.json) nor a .onnx file"
    )


class WatermarkStep(Step):
    name, column = "watermark", "watermark_score"

    def __init__(self, config: WatermarkConfig, threads: int = 1):
        self.classifier = load_classifier(config, threads)
        self.threshold = config.threshold

    def score(self, items: list[Item]) -> list[float]:
        return [float(p) for p in self.classifier.probabilities([item.image for item in items])]

    def rejects(self, value: float) -> bool:
        return value > self.threshold

