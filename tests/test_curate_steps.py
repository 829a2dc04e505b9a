"""Each cleaning step on hand-made images (no model weights needed)."""

import io

import numpy as np
import pytest
from PIL import Image

from lensgen.data.curate import synth
from lensgen.data.curate.config import (
    BrightnessConfig,
    ClarityConfig,
    CorruptConfig,
    CurateConfig,
    DedupConfig,
    EntropyConfig,
    NsfwConfig,
    ResolutionConfig,
    load_config,
)
from lensgen.data.curate.inputs import Sample
from lensgen.data.curate.steps import plan_steps
from lensgen.data.curate.steps.base import Item
from lensgen.data.curate.steps.corrupt import decode_all
from lensgen.data.curate.steps.dedup import find_duplicates
from lensgen.data.curate.steps.embed import ThumbnailEmbedder
from lensgen.data.curate.steps.pixel_stats import BrightnessStep, ClarityStep, EntropyStep, ResolutionStep
from lensgen.errors import UserError


def item(data: bytes, ext: str = "jpg", name: str = "x") -> Item:
    return Item(Sample(name, f"{name}.{ext}", data, ext))


def decoded(image: Image.Image, fmt: str = "PNG") -> Item:
    it = item(synth.encode(image, fmt), "png")
    assert decode_all([it], CorruptConfig(), 384) == [it]
    return it


@pytest.fixture(scope="module")
def photo():
    return synth.photo_like(3, 480, 640)


def test_corrupt_catches_every_kind_of_broken_file(photo):
    png = synth.encode(photo, "PNG")
    cases = {
        "truncated": (synth.truncated_jpeg(photo), "jpg", "decode failed"),
        "zero": (b"", "jpg", "empty file"),
        "text": (b"not an image at all\n" * 10, "jpg", "not a readable image"),
        "bomb": (synth.decompression_bomb_png(), "png", "decompression bomb"),
        "truncated_png": (png[: len(png) // 2], "png", "decode failed"),
    }
    items = {k: item(data, ext, k) for k, (data, ext, _) in cases.items()}
    good = item(synth.encode(photo, "JPEG"), "jpg", "good")
    wrong_ext = item(png, "jpg", "png_named_jpg")  # decodes fine: kept, with its real format recorded
    survivors = decode_all([*items.values(), good, wrong_ext], CorruptConfig(), 384)
    assert survivors == [good, wrong_ext]
    for key, (_, _, message) in cases.items():
        assert items[key].rejected_by == "corrupt"
        assert message in items[key].scores["decode_error"], items[key].scores
    assert good.scores["decode_error"] is None and (good.width, good.height) == (640, 480)
    assert min(good.image.size) == 384 and good.sha256 is not None
    assert wrong_ext.format == "PNG"
    strict = item(png, "jpg", "strict")
    assert decode_all([strict], CorruptConfig(reject_wrong_extension=True), 384) == []
    assert "wrong extension" in strict.scores["decode_error"]
    small_limit = item(synth.encode(photo, "JPEG"), "jpg")
    assert decode_all([small_limit], CorruptConfig(max_pixels=1000), 384) == []
    assert "decompression bomb" in small_limit.scores["decode_error"]


def test_decode_applies_exif_rotation_and_flattens_alpha():
    arr = np.zeros((40, 500, 4), np.uint8)  # fully transparent -> white after flattening
    it = item(synth.encode(Image.fromarray(arr, "RGBA"), "PNG"), "png")
    decode_all([it], CorruptConfig(), 384)
    assert np.asarray(it.image).min() == 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    buf = io.BytesIO()
    Image.new("RGB", (600, 400)).save(buf, "JPEG", exif=exif)
    rotated = item(buf.getvalue())
    decode_all([rotated], CorruptConfig(), 384)
    assert (rotated.width, rotated.height) == (400, 600) and rotated.needs_reencode


def test_resolution_uses_the_shorter_side(photo):
    step = ResolutionStep(ResolutionConfig(min_short_side=384))
    small, big = decoded(photo.resize((600, 300))), decoded(photo)
    assert step.apply([small, big]) == [big]
    assert small.scores["short_side"] == 300 and small.rejected_by == "resolution"


def test_clarity_rejects_the_blurred_copy_and_keeps_the_original(photo):
    step = ClarityStep(ClarityConfig())
    original, blurry = decoded(photo), decoded(synth.blurred(photo))
    assert step.apply([original, blurry]) == [original]
    assert blurry.rejected_by == "clarity"
    assert original.scores["laplacian_var"] > 3 * 100 > 100 > 10 * blurry.scores["laplacian_var"]
    # the fixed-size downscale makes the score nearly independent of resolution
    bigger = decoded(photo.resize((1280, 960), Image.Resampling.BICUBIC))
    step.apply([bigger])
    assert bigger.scores["laplacian_var"] == pytest.approx(original.scores["laplacian_var"], rel=0.35)


def test_entropy_rejects_flat_and_two_tone_images(photo):
    step = EntropyStep(EntropyConfig())
    flat = decoded(synth.flat())
    rng = np.random.default_rng(0)
    blocks = (rng.random((48, 64)) > 0.5).astype(np.uint8) * 255  # black / white 8 px blocks, 384 x 512
    two_tone = decoded(Image.fromarray(blocks.repeat(8, 0).repeat(8, 1)).convert("RGB"))
    original = decoded(photo)
    assert step.apply([flat, two_tone, original]) == [original]
    assert flat.scores["entropy_bits"] == 0.0
    assert two_tone.scores["entropy_bits"] == pytest.approx(1.0, abs=0.01)
    assert original.scores["entropy_bits"] > 6.5
    # the two-tone image is sharp: it passes clarity, so entropy is the step that catches it
    assert ClarityStep(ClarityConfig()).apply([two_tone]) == [two_tone]


def test_brightness_rejects_too_dark_and_too_bright(photo):
    step = BrightnessStep(BrightnessConfig())
    dark, bright, original = decoded(synth.too_dark(1)), decoded(synth.too_bright(2)), decoded(photo)
    # both pass clarity and entropy: brightness is the step that catches them
    assert ClarityStep(ClarityConfig()).apply([dark, bright]) == [dark, bright]
    assert EntropyStep(EntropyConfig()).apply([dark, bright]) == [dark, bright]
    assert step.apply([dark, bright, original]) == [original]
    assert dark.scores["luma"] < 0.08 < 0.94 < bright.scores["luma"]


def test_nsfw_runs_the_bundled_nudenet_model(photo):
    from lensgen.data.curate.steps.nsfw import NsfwStep

    step = NsfwStep(NsfwConfig())
    clean = decoded(photo)
    assert step.apply([clean]) == [clean]
    assert clean.scores["nsfw_score"] == 0.0
    assert step.rejects(0.7) and not step.rejects(0.3)


def _embed(images):
    items = [decoded(im) if isinstance(im, Image.Image) else item(im) for im in images]
    decode_all([i for i in items if i.image is None], CorruptConfig(), 384)
    return np.stack([ThumbnailEmbedder(16).embed([i.image])[0] for i in items]), items


def test_near_copy_is_removed_and_the_original_kept(photo):
    other = synth.photo_like(11, 480, 640)
    # input order: the copy comes first, yet the larger original is kept
    emb, items = _embed([synth.near_copy(photo), other, photo, synth.encode(photo, "JPEG", 60)])
    pixels = np.array([i.width * i.height for i in items])
    result = find_duplicates(emb, pixels, DedupConfig())
    assert result.dup_of.tolist() == [2, -1, -1, 2]
    assert result.similarity[0] > 0.985 and np.isnan(result.similarity[1])  # nothing above report_min
    assert result.mode == "exact" and result.pairs == 3


def test_weight_free_embedder_misses_flips_and_crops(photo):
    emb, _ = _embed([photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo.crop((100, 80, 600, 460))])
    assert emb[0] @ emb[1] < 0.985 and emb[0] @ emb[2] < 0.985


def test_semdedup_mode_agrees_with_exact_search_on_clustered_data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 32))
    base = centres[rng.integers(0, 8, 300)] + 0.5 * rng.normal(size=(300, 32))
    copies = base[:40] + 0.01 * rng.normal(size=(40, 32))
    emb = np.concatenate([base, copies]).astype(np.float32)
    pixels = np.concatenate([np.full(300, 1000), np.full(40, 900)])
    exact = find_duplicates(emb, pixels, DedupConfig())
    sem = find_duplicates(emb, pixels, DedupConfig(exact_max=100, cluster_size=60))
    assert sem.mode == "semdedup" and sem.clusters == 6
    assert exact.dup_of[300:].tolist() == list(range(40))
    assert (exact.dup_of[:300] == -1).all()
    agree = (sem.dup_of == exact.dup_of).mean()
    assert agree > 0.98  # a pair split across two clusters may be missed, never invented
    assert set(np.flatnonzero(sem.dup_of >= 0)) <= set(np.flatnonzero(exact.dup_of >= 0))


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("clarity:\n  min_varience: 3\n")
    with pytest.raises(UserError, match=r"c.yaml.clarity: unknown field\(s\) min_varience"):
        load_config(bad)
    bad.write_text("run:\n  executor: spark\n")
    with pytest.raises(UserError, match="run.executor"):
        load_config(bad)
    bad.write_text("brightness:\n  min_luma: 0.9\n  max_luma: 0.1\n")
    with pytest.raises(UserError, match="min_luma < max_luma"):
        load_config(bad)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    from lensgen.data.caption.config import load_caption_config

    configs = Path(__file__).resolve().parent.parent / "configs"
    assert load_config(configs / "curate-default.yaml") == CurateConfig()  # documents the real defaults
    assert load_caption_config(configs / "caption-example.yaml").concurrency == 8


def test_steps_without_weights_are_skipped_or_refused(tmp_path):
    plans = {p.name: p.status for p in plan_steps(CurateConfig())}
    assert plans["aesthetic"].startswith("skipped: no weights") and plans["watermark"].startswith("skipped")
    assert plans["nsfw"] == plans["dedup"] == plans["clarity"] == "ran"
    with pytest.raises(UserError, match="'aesthetic' is marked required"):
        plan_steps(load_config(None, {"aesthetic": {"required": True}}))
    with pytest.raises(UserError, match="watermark.model_path: .* does not exist"):
        plan_steps(load_config(None, {"watermark": {"model_path": str(tmp_path / "nope.onnx")}}))
    off = {p.name: p.status for p in plan_steps(load_config(None, {"entropy": {"enabled": False}}))}
    assert off["entropy"] == "disabled"
