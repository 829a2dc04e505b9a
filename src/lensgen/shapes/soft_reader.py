"""The judge's sign reading, differentiable: how likely RapidOCR is to read the asked word off a sign.

The judge reads a sign by cropping the box it segmented, resizing it to 48 px high (PIL bicubic) and running
RapidOCR's recogniser (an ONNX CRNN with a CTC head) on it (`ocr.read_text`). Here the same recogniser runs in
torch (`onnx_graph.OnnxGraph` on the packaged model file), on the same crop resized by the same bicubic filter
written as two matrices, so the per-column character probabilities equal the judge's and have gradients with
respect to the image. The CTC log-likelihood of the asked word under them is a smooth score of "the sign says
the word", which reward backpropagation (`lensgen.rl.backprop`) ascends; the greedy decode of the same
probabilities is the text the judge reads (tests/test_soft_reader.py).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import torch.nn.functional as F

from lensgen.shapes.judge import is_sign
from lensgen.shapes.ocr import LINE_HEIGHT, line_width, normalise_text, sign_window
from lensgen.shapes.soft_judge import Segmented, segmented

REC_MIN_WIDTH = 320  # crops narrower than this are padded to it (with zeros, mid-grey once normalised)


def recogniser_path() -> str:
    """The recogniser's model file, as RapidOCR's own configuration names it (the judge's OCR loads this one)."""
    import rapidocr_onnxruntime
    import yaml

    package = os.path.dirname(rapidocr_onnxruntime.__file__)
    with open(os.path.join(package, "config.yaml")) as f:
        return os.path.join(package, yaml.safe_load(f)["Rec"]["model_path"])


@functools.lru_cache(maxsize=1)
def recogniser():
    """RapidOCR's text recogniser as a frozen torch module (loaded once per process, ~0.6 s)."""
    from lensgen.shapes.onnx_graph import OnnxGraph

    return OnnxGraph(recogniser_path()).eval()


@functools.lru_cache(maxsize=1)
def alphabet() -> tuple[str, ...]:
    """The recogniser's output classes: CTC blank first, its characters, then a space (RapidOCR's order)."""
    chars = recogniser().metadata["character"].splitlines()
    return ("", *chars, " ")


@functools.lru_cache(maxsize=1)
def _class_of() -> dict[str, int]:
    return {c: i for i, c in reversed(list(enumerate(alphabet()))) if c}


@functools.lru_cache(maxsize=256)
def bicubic_weights(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) PIL's BICUBIC resize along one axis as a matrix (Keys' kernel, a = -0.5, widened by the
    scale when shrinking, weights renormalised at the borders), so that a resize is two matmuls. Cached: a
    training run meets the same few sign sizes every step (callers copy it with `.to`, never change it)."""
    scale = n_in / n_out
    support = 2.0 * max(scale, 1.0)
    out = np.zeros((n_out, n_in), np.float64)
    for j in range(n_out):
        centre = (j + 0.5) * scale
        lo, hi = max(0, int(centre - support + 0.5)), min(n_in, int(centre + support + 0.5))
        x = (np.arange(lo, hi) - centre + 0.5) / max(scale, 1.0)
        ax = np.abs(x)
        w = np.where(ax < 1, (1.5 * ax - 2.5) * ax * ax + 1,
                     np.where(ax < 2, ((-0.5 * ax + 2.5) * ax - 4) * ax + 2, 0.0))
        out[j, lo:hi] = w / w.sum()
    return torch.from_numpy(out)


def sign_boxes(image: torch.Tensor, seg: Segmented | None = None) -> list[tuple[float, float, float, float]]:
    """The signs the judge finds in an image ((3, H, W) in [-1, 1]; `seg`: its segmentation, when already made):
    (x0, y0, x1, y1) boxes, left to right."""
    seg = segmented(image) if seg is None else seg
    if seg.background is None:
        return []
    return sorted((float(r.box[0]), float(r.box[1]), float(r.box[0] + r.box[2]), float(r.box[1] + r.box[3]))
                  for r in seg.regions if is_sign(seg.img, r))


def _recogniser_input(image: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    """The crop `ocr.read_text` gives the recogniser, (3, 48, >= 320) normalised to [-1, 1], differentiable."""
    _, h, w = image.shape
    x0, y0, x1, y1 = sign_window(box, w, h)
    crop = (image[:, y0:y1, x0:x1].float() + 1) * 127.5
    ch, cw = crop.shape[1:]
    width = line_width(cw, ch)
    resized = bicubic_weights(LINE_HEIGHT, ch).to(crop) @ crop @ bicubic_weights(width, cw).to(crop).T
    resized = resized.clamp(0, 255) / 127.5 - 1
    return F.pad(resized, (0, max(0, REC_MIN_WIDTH - width)))


def sign_log_probs(image: torch.Tensor, boxes: list | None = None) -> torch.Tensor | None:
    """(T, classes) log-probabilities of the recogniser's columns over the image's signs read left to right
    (their columns concatenated, as the judge joins their texts); None when the image has no sign."""
    boxes = sign_boxes(image) if boxes is None else boxes
    if not boxes:
        return None
    model = recogniser()
    columns = [model(_recogniser_input(image, box)[None])[0] for box in boxes]
    return torch.cat(columns).clamp(min=1e-12).log()


def greedy_text(log_probs: torch.Tensor) -> str:
    """The text a CTC head's columns spell (best class per column, repeats merged, blanks dropped), empty when
    the mean probability of its characters is 0.5 or less: what the judge reads (RapidOCR's decoding and
    `ocr.read_text`'s confidence rule)."""
    best, prob = log_probs.argmax(-1).tolist(), log_probs.max(-1).values.exp().tolist()
    chars, confidence, prev = [], [], 0
    for k, p in zip(best, prob):
        if k and k != prev:
            chars.append(alphabet()[k])
            confidence.append(p)
        prev = k
    return normalise_text("".join(chars)) if chars and sum(confidence) / len(confidence) > 0.5 else ""


def word_log_likelihood(log_probs: torch.Tensor, word: str) -> torch.Tensor:
    """log P(the columns spell `word`) under CTC, per character of the word (differentiable)."""
    target = normalise_text(word)
    if not target:
        raise ValueError(f"{word!r}: nothing a sign can say (letters and digits only)")
    classes = _class_of()
    ids = torch.tensor([classes[c] for c in target])
    loss = F.ctc_loss(log_probs[:, None], ids[None], torch.tensor([log_probs.shape[0]]), torch.tensor([len(ids)]),
                      blank=0, reduction="sum", zero_infinity=True)
    return -loss / len(target)


__all__ = ["alphabet", "bicubic_weights", "greedy_text", "recogniser", "sign_boxes", "sign_log_probs",
           "word_log_likelihood"]
