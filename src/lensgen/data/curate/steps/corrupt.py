"""Step 1, corrupted files: a full decode of every pixel, not just the header.

Caught: unreadable and zero-byte files, content that is no image (whatever the extension says),
truncated files (Pillow refuses to fill the missing part: `LOAD_TRUNCATED_IMAGES` is forced off),
and decompression bombs (width x height above `corrupt.max_pixels`, checked from the header
before any pixel is allocated). The score is the error message (null when the file decodes).

A decoded image is rotated by its EXIF orientation, flattened onto white if it has alpha, and
downscaled to the working size the later steps share; only its size is kept from the original.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from lensgen.data.curate.config import CorruptConfig
from lensgen.data.curate.steps.base import Item

NAME, COLUMN = "corrupt", "decode_error"
FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"}
KEEP_BYTES_FORMATS = {"JPEG", "PNG", "WEBP"}  # written to shards as they came; others re-encoded as PNG
EXT_FORMATS = {
    "jpg": {"JPEG", "MPO"}, "jpeg": {"JPEG", "MPO"}, "png": {"PNG"}, "webp": {"WEBP"}, "gif": {"GIF"},
    "bmp": {"BMP"}, "tif": {"TIFF"}, "tiff": {"TIFF"},
}
EXIF_ORIENTATION = 0x0112


def _describe(err: Exception) -> str:
    """The error as text, without object addresses (the manifest must not depend on the run)."""
    return f"{type(err).__name__}: " + re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<data>", str(err))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        scale = 255.0 / max(float(arr.max()), 255.0) if image.mode == "I" else 255.0 / 65535.0
        image = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def working_copy(image: Image.Image, work_size: int) -> Image.Image:
    short = min(image.size)
    if short <= work_size:
        return image
    scale = work_size / short
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def decode_error(item: Item, config: CorruptConfig, work_size: int) -> str | None:
    """Decode `item.sample.data` into `item`; return the reason it is corrupt, or None."""
    sample = item.sample
    if sample.data is None:
        return sample.read_error or "no data"
    item.sha256 = hashlib.sha256(sample.data).hexdigest()
    if len(sample.data) == 0:
        return "empty file (0 bytes)"
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        # Pillow refuses at 2x its limit during open(); let ours (checked below) be the one that counts.
        Image.MAX_IMAGE_PIXELS = max(config.max_pixels, pil_limit or 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(sample.data))
    except Image.DecompressionBombError as err:
        return f"decompression bomb: {err}"
    except Image.UnidentifiedImageError:
        return "not a readable image: unrecognised format"
    except Exception as err:
        return f"not a readable image: {_describe(err)}"
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    fmt = image.format or "unknown"
    if fmt not in FORMATS:
        return f"unsupported image format {fmt}"
    width, height = image.size
    if width * height > config.max_pixels:
        return f"decompression bomb: {width}x{height} = {width * height} pixels > corrupt.max_pixels {config.max_pixels}"
    if config.reject_wrong_extension and fmt not in EXT_FORMATS.get(sample.ext, {fmt}):
        return f"wrong extension: named .{sample.ext} but the content is {fmt}"
    try:
        image.load()
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        if orientation not in (1, None):
            image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image)
    except Exception as err:  # truncated data, bad Huffman tables, CRC errors ...
        return f"decode failed: {_describe(err)}"
    if min(rgb.size) < 1:
        return "image has no pixels"
    item.format = fmt
    item.width, item.height = rgb.size
    item.needs_reencode = fmt not in KEEP_BYTES_FORMATS or orientation not in (1, None)
    item.image = working_copy(rgb, work_size)
    return None


def decode_all(items: list[Item], config: CorruptConfig, work_size: int) -> list[Item]:
    """Run step 1 on every item; return those that decoded."""
    survivors = []
    for item in items:
        error = decode_error(item, config, work_size)
        item.scores[COLUMN] = error
        if error is None:
            survivors.append(item)
        else:
            item.rejected_by = NAME
    return survivors
