"""LensPipeline and `lensgen generate`: folders, sizes, seeds, CFG batching, PNG metadata, clear errors."""

import json
import shutil

import pytest
import torch
from PIL import Image

from lensgen import cli
from lensgen.errors import UserError
from lensgen.inference.pipeline import LensPipeline


@pytest.fixture(scope="module")
def pipe(untrained_pipeline):
    return untrained_pipeline


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(path)
    return path


def test_call_returns_images_of_the_requested_size(pipe):
    images = pipe(["a red circle", "two blue squares"], height=48, width=96, steps=2, cfg=5.0, seed=0)
    assert [im.size for im in images] == [(96, 48), (96, 48)]
    assert all(im.mode == "RGB" for im in images)


def test_latent_output_is_what_the_images_decode_from(pipe):
    latents = pipe("a red circle", height=48, width=64, steps=2, seed=3, output_type="latent")
    f = pipe.codec.spatial_factor
    assert latents.shape == (1, pipe.codec.token_channels, 48 // f, 64 // f)
    images = pipe("a red circle", height=48, width=64, steps=2, seed=3, output_type="pt")
    torch.testing.assert_close(pipe.codec.decode(latents).clamp(-1, 1), images)
    with pytest.raises(UserError, match='output_type must be "pil", "pt" or "latent"'):
        pipe("a red circle", steps=2, output_type="np")


def test_seeds_reproduce_and_are_per_sample(pipe):
    a = pipe("a red circle", height=64, width=64, steps=2, seed=7, output_type="pt")
    b = pipe("a red circle", height=64, width=64, steps=2, seed=7, output_type="pt")
    torch.testing.assert_close(a, b)
    batch = pipe(["x", "a red circle"], height=64, width=64, steps=2, seed=[3, 7], output_type="pt")
    torch.testing.assert_close(batch[1:], a, rtol=1e-4, atol=1e-4)  # independent of batch mates
    c = pipe("a red circle", height=64, width=64, steps=2, seed=8, output_type="pt")
    assert not torch.allclose(a, c)


def test_cfg_one_skips_the_uncond_pass(pipe, monkeypatch):
    batches = []
    real = pipe.transformer.forward

    def spy(img, *args, **kwargs):
        batches.append(img.shape[0])
        return real(img, *args, **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", spy)
    pipe(["a", "b"], height=64, width=64, steps=3, cfg=1.0)
    assert batches == [2, 2, 2]
    batches.clear()
    pipe(["a", "b"], height=64, width=64, steps=3, cfg=5.0)
    assert batches == [4, 4, 4]  # [cond; uncond] in one batch


def test_bad_sizes_are_refused(pipe):
    with pytest.raises(UserError, match="multiples of 8"):
        pipe("x", height=60, width=64, steps=1)
    with pytest.raises(UserError, match="1:2 .. 2:1"):
        pipe("x", height=32, width=96, steps=1)


def test_save_and_load_gives_the_same_images(pipe, saved):
    loaded = LensPipeline.from_pretrained(saved)
    a = pipe("a red circle", height=64, width=64, steps=2, seed=1, output_type="pt")
    b = loaded("a red circle", height=64, width=64, steps=2, seed=1, output_type="pt")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert loaded.default_height == 64 and loaded.defaults.steps == 20


def test_missing_or_malformed_folders(tmp_path, saved):
    with pytest.raises(UserError, match="does not exist"):
        LensPipeline.from_pretrained(tmp_path / "nope")
    with pytest.raises(UserError, match="model_index.json is missing"):
        LensPipeline.from_pretrained(tmp_path)
    (tmp_path / "model_index.json").write_text("{oops")
    with pytest.raises(UserError, match="malformed"):
        LensPipeline.from_pretrained(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(UserError, match="transformer/"):
        LensPipeline.from_pretrained(tmp_path)
    bad = tmp_path / "bad-schedule"
    shutil.copytree(saved, bad)
    index = json.loads((bad / "model_index.json").read_text())
    index["lensgen"]["schedule"] = "fast"
    (bad / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="lensgen.schedule"):
        LensPipeline.from_pretrained(bad)


def test_generate_cli_writes_png_with_metadata(saved, tmp_path, capsys):
    out = tmp_path / "out.png"
    code = cli.main(["generate", "a yellow star", "--model", str(saved), "--size", "96x48", "--steps", "2",
                     "--cfg", "3", "--seed", "5", "-o", str(out), "-q"])
    assert code == 0
    image = Image.open(out)
    assert image.size == (96, 48)
    assert image.text["prompt"] == "a yellow star" and image.text["seed"] == "5"
    assert image.text["steps"] == "2" and image.text["cfg"] == "3.0" and image.text["model"] == str(saved)


def test_generate_cli_errors_are_one_line(tmp_path, capsys):
    code = cli.main(["generate", "x", "--model", str(tmp_path / "none"), "-o", str(tmp_path / "o.png")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    code = cli.main(["generate", "x", "--size", "100x64", "-o", str(tmp_path / "o.png"), "-q"])
    assert code == 2
    assert "multiples of 8" in capsys.readouterr().err


def test_a_prompt_longer_than_the_encoder_reads_is_warned_about(pipe, tmp_path, capsys):
    from lensgen.errors import LensgenWarning

    long_prompt = "a red circle above a blue square " * 100
    with pytest.warns(LensgenWarning, match=r"of \d[\d,]* tokens was cut to the text encoder's 256"):
        pipe(long_prompt, height=64, width=64, steps=1, seed=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prompt within the limit warns about nothing
        pipe("a red circle", height=64, width=64, steps=1, seed=0)


def test_zero_negative_and_non_finite_settings_are_refused(pipe):
    """0 is refused like -5, not taken as "use the default"; NaN/inf CFG would give a black image."""
    for steps in (0, -5):
        with pytest.raises(UserError, match=rf"steps must be a whole number of at least 1, got {steps}"):
            pipe("x", steps=steps)
    for height, width in ((0, 64), (64, 0)):
        with pytest.raises(UserError, match="both sides must be positive"):
            pipe("x", height=height, width=width, steps=1)
    for cfg in (float("nan"), float("inf"), -1.0):
        with pytest.raises(UserError, match="cfg must be a finite number >= 0"):
            pipe("x", cfg=cfg, steps=1)


def test_missing_or_unknown_devices_are_user_errors(saved, monkeypatch):
    from lensgen.inference.pipeline import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="device 'cuda': CUDA is not available on this machine"):
        LensPipeline.from_pretrained(saved, device="cuda")
    with pytest.raises(UserError, match="unknown device 'gpu0': expected cpu, cuda"):
        LensPipeline.from_pretrained(saved, device="gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"'cuda:3' does not exist: this machine has 1 CUDA device"):
        check_device("cuda:3")
    assert check_device("cpu") == torch.device("cpu") and check_device(None) is None


def test_size_multiple_is_saved_checked_and_optional(pipe, saved, tmp_path):
    from lensgen.inference.pipeline import DEFAULT_MODEL_DIR, read_defaults

    assert read_defaults(saved).size_multiple == pipe.codec.spatial_factor == 8
    assert read_defaults(DEFAULT_MODEL_DIR).size_multiple == 8  # the shipped model says it too
    for name, value in (("old", None), ("wrong", 16)):
        folder = tmp_path / name
        shutil.copytree(saved, folder)
        index = json.loads((folder / "model_index.json").read_text())
        index["lensgen"].pop("size_multiple")
        if value is not None:
            index["lensgen"]["size_multiple"] = value
        (folder / "model_index.json").write_text(json.dumps(index))
    old = LensPipeline.from_pretrained(tmp_path / "old")  # saved before the field existed: still loads
    assert read_defaults(tmp_path / "old").size_multiple is None and old.defaults.size_multiple == 8
    with pytest.raises(UserError, match="lensgen.size_multiple is 16 but the codec in vae/ has 8 pixels"):
        LensPipeline.from_pretrained(tmp_path / "wrong")


def test_image_to_image_starts_part_way_down_the_schedule(pipe, monkeypatch):
    """strength 1 is text-to-image exactly; a low strength starts from the image's own tokens and runs only
    the last levels, so the result stays near the image's round trip through the codec; the start is
    resized to the sampling size."""
    from lensgen.flow.schedule import sampling_sigmas
    from lensgen.images import image_to_tensor
    from lensgen.inference import pipeline as pipeline_module
    from lensgen.shapes import render
    from lensgen.shapes.scene import SceneConfig, generate_scene

    scene = generate_scene((3, 1), aspect=1.0, config=SceneConfig(min_objects=1, max_objects=1, p_text=0.0))
    start = render(scene, 64, 64)
    kw = dict(height=64, width=64, steps=20, cfg=1.0, seed=4, output_type="pt")
    torch.testing.assert_close(pipe("a red circle", image=start, strength=1.0, **kw), pipe("a red circle", **kw))

    levels = []
    real_sample = pipeline_module.sample
    monkeypatch.setattr(pipeline_module, "sample",
                        lambda fn, x, sigmas, **k: levels.append(sigmas) or real_sample(fn, x, sigmas, **k))
    near = pipe("a red circle", image=start, strength=0.5, **kw)
    full = sampling_sigmas(20, 64, schedule=pipe.defaults.schedule)
    torch.testing.assert_close(levels[0], full[full <= 0.5])  # the schedule's own levels from 0.5 down
    round_trip = pipe.codec.decode(pipe.codec.encode(image_to_tensor(start)[None]))
    far = pipe("a red circle", **kw)
    assert (near - round_trip).abs().mean() < 0.5 * (far - round_trip).abs().mean()

    assert pipe("a red circle", image=start.resize((96, 96)), strength=0.5, **kw).shape == near.shape
    tiny = pipe("a red circle", image=start, strength=1e-6, **kw)  # below the last level: still one step
    assert len(levels[-1]) == 2 and tiny.shape == near.shape


def test_image_to_image_arguments_are_checked(pipe):
    start = Image.new("RGB", (64, 64), "white")
    for strength in (0, -0.5, 1.5, float("nan"), True):
        with pytest.raises(UserError, match=r"strength must be a number in \(0, 1\]"):
            pipe("x", image=start, strength=strength, steps=1)
    with pytest.raises(UserError, match=r"image must be one PIL image or one per prompt \(3\), got 2"):
        pipe(["x", "y", "z"], image=[start, start], steps=1)
    images = pipe(["x", "y"], image=start, strength=0.5, steps=2, height=64, width=64, cfg=1.0)
    assert len(images) == 2  # one image serves every prompt
