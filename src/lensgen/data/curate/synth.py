"""Hand-made images with known defects, for tests, benchmarks and demonstrations of the steps.

`photo_like` draws a detailed image that passes every CPU step (shapes over a smooth background,
multi-scale texture, film grain); each defect function turns it into an image that one step, and
only that one, should reject. `write_mixed_set` writes a folder mixing all of them.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo_like(seed: int, height: int = 480, width: int = 640) -> Image.Image:
    rng = np.random.default_rng(seed)
    grid = rng.integers(40, 215, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 16))):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = x0 + rng.integers(20, width // 2), y0 + rng.integers(20, height // 2)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=color)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=color)
        else:
            pts = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(3)]
            draw.polygon(pts, fill=color)
    arr = np.asarray(image, np.float32)
    for cells, amplitude in ((8, 20.0), (32, 12.0), (128, 8.0)):
        noise = rng.normal(0, 1, (max(2, height * cells // width), cells)).astype(np.float32)
        up = np.asarray(Image.fromarray(noise, "F").resize((width, height), Image.Resampling.BILINEAR))
        arr += amplitude * up[..., None]
    # grain at a fixed 384 px scale (survives the clarity step's downscale at any size), plus pixel grain
    gh, gw = max(2, round(384 * height / min(height, width))), max(2, round(384 * width / min(height, width)))
    grain = rng.normal(0, 18.0, (gh, gw)).astype(np.float32)
    arr += np.asarray(Image.fromarray(grain, "F").resize((width, height), Image.Resampling.BILINEAR))[..., None]
    arr += rng.normal(0, 5.0, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def blurred(image: Image.Image, radius: float = 4.0) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def flat(color: tuple[int, int, int] = (120, 140, 160), height: int = 480, width: int = 640) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def _textured(level: float, spread: float, seed: int, height: int, width: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.asarray(photo_like(seed, height, width), np.float32) / 255.0
    arr = level + spread * (base - 0.5) + rng.normal(0, 16.0, base.shape) / 255.0
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))


def too_dark(seed: int, height: int = 480, width: int = 640) -> Image.Image:
    """Detailed (sharp, many grey levels) but nearly black: only the brightness step rejects it."""
    return _textured(0.04, 0.12, seed, height, width)


def too_bright(seed: int, height: int = 480, width: int = 640) -> Image.Image:
    return _textured(0.965, 0.12, seed, height, width)


def near_copy(image: Image.Image, scale: float = 0.9, quality: int = 80) -> bytes:
    """A slightly smaller JPEG re-encode of `image` (the original, being larger, is the one kept)."""
    small = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    return encode(small, "JPEG", quality)


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 92) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def truncated_jpeg(image: Image.Image, keep: float = 0.5) -> bytes:
    data = encode(image, "JPEG")
    return data[: int(len(data) * keep)]


def decompression_bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (no pixel data is ever allocated)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


DEFECTS = ("clean", "near_copy", "exact_copy", "blurred", "flat", "dark", "bright", "small", "truncated",
           "empty", "not_an_image", "bomb")


def write_mixed_set(folder: str | Path, count: int, seed: int = 0,
                    weights: dict[str, float] | None = None) -> dict[str, int]:
    """Write `count` files mixing clean photo-like images (random sizes and aspect ratios) with every
    defect; returns how many of each kind were written. Copies refer to a clean image written earlier."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = weights or {"clean": 0.5, "near_copy": 0.08, "exact_copy": 0.04, "blurred": 0.07, "flat": 0.05,
                          "dark": 0.04, "bright": 0.04, "small": 0.07, "truncated": 0.04, "empty": 0.02,
                          "not_an_image": 0.02, "bomb": 0.01}
    kinds, probs = list(weights), np.asarray(list(weights.values()), float)
    rng = np.random.default_rng(seed)
    written = {kind: 0 for kind in kinds}
    clean: list[tuple[str, Image.Image]] = []
    for i in range(count):
        kind = str(rng.choice(kinds, p=probs / probs.sum())) if clean else "clean"
        if kind in ("near_copy", "exact_copy") and not clean:
            kind = "clean"
        short = int(rng.integers(400, 900))
        ratio = float(2 ** rng.uniform(-1.1, 1.1))  # width / height, a little beyond 1:2..2:1
        h, w = (short, round(short * ratio)) if ratio >= 1 else (round(short / ratio), short)
        name = f"{i:06d}-{kind}"
        if kind == "clean":
            image = photo_like(int(rng.integers(1 << 30)), h, w)
            clean.append((name, image))
            data = encode(image, "JPEG", 92)
        elif kind == "near_copy":
            data = near_copy(clean[int(rng.integers(len(clean)))][1])
        elif kind == "exact_copy":
            data = encode(clean[int(rng.integers(len(clean)))][1], "JPEG", 92)
        elif kind == "blurred":
            data = encode(blurred(photo_like(int(rng.integers(1 << 30)), h, w)))
        elif kind == "flat":
            data = encode(flat(tuple(int(c) for c in rng.integers(0, 256, 3)), h, w), "PNG")
        elif kind == "dark":
            data = encode(too_dark(int(rng.integers(1 << 30)), h, w))
        elif kind == "bright":
            data = encode(too_bright(int(rng.integers(1 << 30)), h, w))
        elif kind == "small":
            data = encode(photo_like(int(rng.integers(1 << 30)), max(64, h // 3), max(64, w // 3)))
        elif kind == "truncated":
            data = truncated_jpeg(photo_like(int(rng.integers(1 << 30)), h, w))
        elif kind == "empty":
            data = b""
        elif kind == "not_an_image":
            data = b"this is a text file with an image extension\n" * 20
        else:
            data = decompression_bomb_png()
        if len(clean) > 64:  # bound memory: keep a window of recent originals for copies
            clean.pop(0)
        (folder / f"{name}.{'png' if kind in ('flat', 'bomb') else 'jpg'}").write_bytes(data)
        written[kind] += 1
    return written
