"""The demo: generation grid + a short from-scratch training run, on one HTML page."""

import json

from PIL import Image

from lensgen.cli import main
from lensgen.demo import DEMO_PROMPTS, loss_plot_png


def test_demo_writes_grid_training_run_and_loss_plot(tmp_path, monkeypatch):
    monkeypatch.setattr("lensgen.demo.DEMO_PROMPTS", DEMO_PROMPTS[:3])
    monkeypatch.setattr("lensgen.demo.TRAINED_SAMPLES", 2)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--train-steps", "6"]) == 0
    page = (out / "index.html").read_text()
    for i, (prompt, size) in enumerate(DEMO_PROMPTS[:3]):
        assert prompt in page and (out / "images" / f"{i:02d}.png").is_file()
        w, h = (int(v) for v in size.split("x"))
        assert Image.open(out / "images" / f"{i:02d}.png").size == (w, h)
    metrics = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 'src="loss.png"' in page
    assert (out / "train" / "final" / "model_index.json").is_file()
    # the model just trained is sampled too, and every PNG carries the metadata `lensgen generate` writes
    assert sorted(p.name for p in (out / "images").glob("train-*.png")) == ["train-00.png", "train-01.png"]
    for i, (prompt, size) in enumerate(DEMO_PROMPTS[:2]):
        assert f'src="images/train-{i:02d}.png"' in page
        text = Image.open(out / "images" / f"train-{i:02d}.png").text
        assert text["model"] == str(out / "train" / "final") and text["prompt"] == prompt and text["size"] == size
    for png in (out / "images").glob("*.png"):
        text = Image.open(png).text
        guided = {"classifier_scale"} if png.name[0].isdigit() or png.name.startswith("turbo") else set()
        assert set(text) == {"prompt", "negative_prompt", "seed", "steps", "cfg", "size", "model", *guided}, png
        assert int(text["steps"]) >= 1 and float(text["cfg"]) >= 0
    assert "20 steps, CFG 1.0, classifier guidance 20;" in page
    # a second run starts a fresh curve instead of appending to the old one
    assert main(["demo", "--out", str(out), "--train-steps", "6"]) == 0
    assert len((out / "train" / "metrics.jsonl").read_text().splitlines()) == 6


def test_loss_plot_includes_validation_points():
    metrics = [{"step": s, "loss": 1.0 / s, **({"val_loss@0.5": 0.5, "val_loss@0.9": 0.7} if s % 2 == 0 else {})}
               for s in range(1, 11)]
    assert loss_plot_png(metrics)[:4] == b"\x89PNG"


def test_demo_samples_the_grid_again_before_rl_and_with_a_turbo_model_and_times_each(tmp_path, monkeypatch):
    """--turbo: the same prompts and seeds from a few-step model (here the shipped weights with a 2-step,
    CFG-free preset, as a distill export would have), both wall times and the passes per image; and the
    same again from the shipped model before RL."""
    from dataclasses import replace

    from lensgen.inference.pipeline import DEFAULT_MODEL_DIR, LensPipeline

    monkeypatch.setattr("lensgen.demo.DEMO_PROMPTS", DEMO_PROMPTS[:2])
    fast = LensPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    fast.defaults = replace(fast.defaults, steps=2, cfg=1.0)
    fast.save_pretrained(tmp_path / "turbo")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--train-steps", "0", "--turbo", str(tmp_path / "turbo")]) == 0
    page = (out / "index.html").read_text()
    assert "2 transformer passes per image against the grid's 20" in page and "x</b> faster" in page
    for i, (prompt, size) in enumerate(DEMO_PROMPTS[:2]):
        text = Image.open(out / "images" / f"turbo-{i:02d}.png").text
        assert (text["prompt"], text["size"], text["seed"], text["steps"]) == (prompt, size, str(i), "2")
    # before RL: the same grid from the pretrained model the shipped one was post-trained from, at its CFG
    assert "Before RL" in page and "40 transformer passes per image against the grid's 20" in page
    for i, (prompt, size) in enumerate(DEMO_PROMPTS[:2]):
        text = Image.open(out / "images" / f"before-{i:02d}.png").text
        assert (text["prompt"], text["size"], text["seed"]) == (prompt, size, str(i))
        assert (text["model"], text["cfg"]) == ("shapes-tiny-base", "3.0")
