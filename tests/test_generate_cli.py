"""`lensgen generate` as a user meets it: quiet loads, clear one-line errors, checks before the slow load,
bounded batches written as they finish, prompt files, file modes."""

import os
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image

from lensgen import cli
from lensgen.inference import generate
from lensgen.inference.pipeline import DEFAULT_MODEL_DIR, LensPipeline, model_dir, shipped_models


@pytest.fixture(scope="module")
def shipped():
    return LensPipeline.from_pretrained(DEFAULT_MODEL_DIR)


@pytest.fixture
def fast(shipped, monkeypatch):
    """generate with the shipped model loaded once for the module; returns the batch sizes it sampled."""
    calls = []
    real_call = LensPipeline.__call__

    def spy(self, prompt, **kwargs):
        calls.append({"n": len(prompt), "prompt": list(prompt), **kwargs})
        return real_call(self, prompt, **kwargs)

    monkeypatch.setattr(generate, "load_pipeline", lambda model, device=None: shipped)
    monkeypatch.setattr(LensPipeline, "__call__", spy)
    return calls


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lensgen: error: "), err  # one line, no traceback
    return err


def test_quiet_generate_prints_no_loading_noise_and_files_follow_the_umask(tmp_path, capfd):
    """Neither diffusers' "accelerate was not found" warning nor transformers' "Loading weights" bar; and the
    PNG gets the umask's mode (0644 under 022), not mkstemp's 0600."""
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # so the bar would show if our loads did not hide it
    out = tmp_path / "a.png"
    old = os.umask(0o022)
    try:
        assert cli.main(["generate", "a red circle", "--steps", "1", "-o", str(out), "-q"]) == 0
    finally:
        os.umask(old)
    captured = capfd.readouterr()
    assert captured.out.strip() == str(out)
    assert "accelerate" not in captured.err and "Loading weights" not in captured.err
    assert captured.err == ""
    assert hf_logging.is_progress_bar_enabled()  # restored after the load
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


@pytest.mark.parametrize("args,message", [
    (["--size", "0x64"], "size 0x64 (WxH) is not allowed: both sides must be positive"),
    (["--size", "100x64"], "both sides must be multiples of 8"),
    (["--size", "64x448"], "outside 1:2 .. 2:1"),
    (["--size", "448x448"], "the longest side may be at most 224"),
    (["--size", "big"], "cannot read size 'big'"),
    (["--steps", "0"], "--steps must be a whole number of at least 1, got 0"),
    (["--steps", "-5"], "--steps must be a whole number of at least 1, got -5"),
    (["--cfg", "nan"], "--cfg must be a finite number >= 0"),
    (["--cfg", "inf"], "--cfg must be a finite number >= 0"),
    (["--cfg", "-1"], "--cfg must be a finite number >= 0"),
    (["--num", "0"], "--num must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["-o", "/proc/x.png"], "cannot write /proc/x.png: cannot create a file in /proc: No such file or directory"),
    (["-o", "out.jpg"], "must end in .png"),
    (["--device", "cuda"], "device 'cuda': CUDA is not available on this machine"),
    (["--device", "tpu9"], "unknown device 'tpu9'"),
    (["--model", "/nonexistent"], "model folder /nonexistent does not exist"),
    (["--model", "shapes-huge"], "model folder shapes-huge does not exist (shipped models, usable by name: "
                                 "shapes-tiny"),
])
def test_bad_arguments_fail_before_the_model_loads(args, message, tmp_path, capsys, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("the weights were loaded before the arguments were checked")

    monkeypatch.setattr(LensPipeline, "from_pretrained", no_load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "a red circle", *args]) == 2
    assert message in _err_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_many_images_are_made_in_batches_and_written_as_each_batch_ends(fast, tmp_path, capsys, monkeypatch):
    out = tmp_path / "img.png"
    written_before = []
    real_save = generate.save_png

    def save(path, image, info):
        real_save(path, image, info)
        written_before.append(len(fast))  # how many batches had been sampled when this file was written

    monkeypatch.setattr(generate, "save_png", save)
    assert cli.main(["generate", "a red circle", "--num", "5", "--batch-size", "2", "--size", "32x32",
                     "--steps", "1", "--seed", "10", "-o", str(out)]) == 0
    assert [c["n"] for c in fast] == [2, 2, 1]
    assert [c["seed"] for c in fast] == [[10, 11], [12, 13], [14]]
    assert written_before == [1, 1, 2, 2, 3]  # batch k's files exist before batch k + 1 is sampled
    names = [f"img-{i:04d}.png" for i in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for i, name in enumerate(names):
        text = Image.open(tmp_path / name).text
        assert text["seed"] == str(10 + i) and text["size"] == "32x32" and text["steps"] == "1"
        assert text["prompt"] == "a red circle" and text["negative_prompt"] == "" and text["cfg"] == "1.0"
    captured = capsys.readouterr()
    assert captured.out.split() == [str(tmp_path / n) for n in names]
    assert "5/5" in captured.err and "img" in captured.err  # the progress bar counts images


def test_quiet_hides_the_progress_bar_and_one_image_keeps_its_name(fast, tmp_path, capsys):
    out = tmp_path / "one.png"
    assert cli.main(["generate", "a red circle", "--size", "32x32", "--steps", "1", "-o", str(out), "-q"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["one.png"]
    assert capsys.readouterr().err == ""


def test_prompts_from_a_text_file(fast, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n   \ntwo blue squares  \n")
    out = tmp_path / "out" / "p.png"
    assert cli.main(["generate", "--prompts", str(prompts), "--num", "2", "--size", "32x32", "--steps", "1",
                     "--seed", "3", "--negative-prompt", "blurry", "-o", str(out), "-q"]) == 0
    texts = [Image.open(out.parent / f"p-{i:04d}.png").text for i in range(4)]
    assert [(t["prompt"], t["seed"], t["negative_prompt"]) for t in texts] == [
        ("a red circle", "3", "blurry"), ("a red circle", "4", "blurry"),
        ("two blue squares", "5", "blurry"), ("two blue squares", "6", "blurry")]
    assert len(list(out.parent.iterdir())) == 4


def test_prompts_from_a_jsonl_file_with_own_seeds_and_negative_prompts(fast, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle", "seed": 100}\n\n'
                       '{"prompt": "a green star", "negative_prompt": "red"}\n')
    out = tmp_path / "j.png"
    assert cli.main(["generate", "--prompts", str(prompts), "--size", "32x32", "--steps", "1", "--seed", "7",
                     "--batch-size", "8", "-o", str(out), "-q"]) == 0
    assert [c["n"] for c in fast] == [2] and fast[0]["negative_prompt"] == ["", "red"]
    texts = [Image.open(tmp_path / f"j-{i:04d}.png").text for i in range(2)]
    assert [(t["prompt"], t["seed"], t["negative_prompt"]) for t in texts] == [
        ("a red circle", "100", ""), ("a green star", "8", "red")]


@pytest.mark.parametrize("content,message", [
    ('{"prompt": "a"}\n{"prompt": 3}\n', ':2: "prompt" must be a non-empty string'),
    ('{"prompt": "a"}\n\n{"prompt": "b", "seed": "x"}\n', ':3: "seed" must be a whole number'),
    ('{"prompt": "a", "negative-prompt": "b"}\n', ":1: unknown field(s) negative-prompt; allowed: prompt, seed"),
    ('{"prompt": "a"}\n{oops\n', ":2: not valid JSON"),
    ('{"prompt": "a"}\n["b"]\n', ":2: expected a JSON object"),
    ("\n  \n", "has no prompts"),
])
def test_prompts_file_errors_name_the_file_and_line(content, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(LensPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    assert cli.main(["generate", "--prompts", str(path), "-o", str(tmp_path / "o.png")]) == 2
    err = _err_line(capsys)
    assert str(path) in err and message in err


def test_exactly_one_of_prompt_and_prompts_file(tmp_path, capsys):
    path = tmp_path / "p.txt"
    path.write_text("a red circle\n")
    assert cli.main(["generate", "x", "--prompts", str(path)]) == 2
    assert "either a PROMPT or --prompts FILE, not both" in _err_line(capsys)
    assert cli.main(["generate"]) == 2
    assert "either a PROMPT or --prompts FILE" in _err_line(capsys)
    assert cli.main(["generate", "--prompts", str(tmp_path / "missing.txt")]) == 2
    assert f"prompts file {tmp_path / 'missing.txt'} does not exist" in _err_line(capsys)


def test_output_names_sort_for_any_count():
    from pathlib import Path

    out = Path("d/out.png")
    assert generate.output_path(out, 0, 1) == out
    assert generate.output_path(out, 7, 12) == Path("d/out-0007.png")
    assert generate.output_path(out, 7, 100_000) == Path("d/out-00007.png")


def test_png_metadata_is_one_helper_for_every_writer():
    """generate, the demo and eval all write these fields; steps/cfg only where a sampler made the image."""
    import io

    def text(info):
        buf = io.BytesIO()
        Image.new("RGB", (96, 48)).save(buf, format="PNG", pnginfo=info)
        return Image.open(buf).text

    info = generate.png_metadata(prompt="p", seed=1, height=48, width=96, model="m", steps=2, cfg=3.0, score=0.5)
    assert text(info) == {"prompt": "p", "negative_prompt": "", "seed": "1", "steps": "2", "cfg": "3.0",
                          "size": "96x48", "model": "m", "score": "0.5"}
    assert "steps" not in text(generate.png_metadata(prompt="p", seed=1, height=48, width=96, model="truth"))


def test_a_shipped_model_is_found_by_name_from_any_directory(tmp_path, monkeypatch):
    """`--model shapes-tiny` names the shipped folder; a folder of that name here would win."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "named.png"
    assert cli.main(["generate", "a red circle", "--model", "shapes-tiny", "--steps", "1", "-o", str(out),
                     "-q"]) == 0
    with Image.open(out) as image:
        assert image.size == (64, 64)
    assert model_dir("shapes-tiny") == DEFAULT_MODEL_DIR and "shapes-tiny" in shipped_models()
    (tmp_path / "shapes-tiny").mkdir()
    assert model_dir("shapes-tiny") == Path("shapes-tiny")


def test_image_to_image_keeps_the_pictured_shape_and_records_its_start(fast, tmp_path):
    """--image with the shipped model: a true scene noised half-way comes back as the same shape and colour
    where the picture has it (the prompt does not say where), and the PNG says which picture and strength it
    started from."""
    from lensgen.shapes import captions, generate_scene, render
    from lensgen.shapes.judge import detect
    from lensgen.shapes.scene import SceneConfig, to_pixels

    single = SceneConfig(min_objects=1, max_objects=1, p_text=0.0)
    key, scene = next(((0, i), s) for i in range(100) for s in [generate_scene((0, i), aspect=1.0, config=single)]
                      if s.objects[0].shape == "circle")
    start, out = tmp_path / "start.png", tmp_path / "edit.png"
    render(scene, 64, 64).save(start)
    prompt = captions(scene, key)["short"]
    assert cli.main(["generate", prompt, "--image", str(start), "--strength", "0.5", "--seed", "3",
                     "-o", str(out), "-q"]) == 0
    assert fast[-1]["strength"] == 0.5 and fast[-1]["image"].size == (64, 64)
    image = Image.open(out)
    assert image.text["image"] == str(start) and image.text["strength"] == "0.5"
    largest = max(detect(image.convert("RGB")).objects, key=lambda o: o.area)
    assert (largest.shape, largest.colour) == ("circle", scene.objects[0].colour)
    x, y, _ = to_pixels(scene.objects[0], 64, 64)  # (seed 3 alone draws it at (49, 50), not (43, 30))
    assert abs(largest.centre[0] - x) < 4 and abs(largest.centre[1] - y) < 4


def test_bad_start_images_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(LensPipeline, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.png").write_text("not a picture")
    Image.new("RGB", (100, 64)).save(tmp_path / "odd.png")
    for args, message in ((["--image", "missing.png"], "--image missing.png does not exist"),
                          (["--image", "notes.png"], "--image notes.png is not an image file PIL can read"),
                          (["--image", "notes.png", "--strength", "0"], "--strength must be a number in (0, 1]"),
                          (["--image", "notes.png", "--strength", "1.5"], "--strength must be a number in (0, 1]"),
                          (["--strength", "0.5"], "give --image FILE with it"),
                          (["--image", "odd.png"], "--image odd.png is 100x64, which this model cannot sample "
                                                   "(size 100x64 (WxH) is not allowed: both sides must be multiples "
                                                   "of 8")):
        assert cli.main(["generate", "a red circle", *args]) == 2
        assert message in _err_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.png", "odd.png"]


def test_image_to_image_samples_at_the_pictures_size_unless_told(fast, tmp_path):
    Image.new("RGB", (96, 48), "white").save(tmp_path / "wide.png")
    for extra, size in (([], (96, 48)), (["--size", "64x64"], (64, 64))):
        out = tmp_path / f"out-{size[0]}.png"
        assert cli.main(["generate", "a red circle", "--image", str(tmp_path / "wide.png"), "--steps", "2",
                         "-o", str(out), "-q", *extra]) == 0
        assert Image.open(out).size == size and fast[-1]["strength"] == 0.6  # the default strength
