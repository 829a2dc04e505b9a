"""Sign layouts: the drawing a model copies (shapes.sign_layout), the transformer's layout input, the pipeline
that plans one for every quoted word, and `lensgen train-signs`, which teaches a model to copy it."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lensgen import cli
from lensgen.errors import UserError
from lensgen.inference.pipeline import LensPipeline, PipelineDefaults
from lensgen.models.text_encoder import build_text_encoder
from lensgen.models.transformer import LensTransformer2DModel, ZeroLinear, preset
from lensgen.models.vae import build_codec
from lensgen.shapes.heldout import TRAIN_WORDS
from lensgen.shapes.ocr import read_text
from lensgen.shapes.scene import sign_box
from lensgen.shapes.sign_layout import layout_drawing, layout_tokens, planned_sign, quoted_word
from lensgen.train.sign_writing import SignTrainConfig, SignTrainer, sign_scene, with_layout_input


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random one-block model of the shapes-tiny architecture, without a layout input, as a pipeline folder."""
    torch.manual_seed(0)
    transformer = LensTransformer2DModel(replace(preset("shapes-tiny"), num_layers=1, num_attention_heads=1))
    pipe = LensPipeline(transformer, build_codec({"backend": "flux2-vae"}), build_text_encoder({"backend": "minilm"}),
                        PipelineDefaults(height=32, width=32, steps=2, cfg=1.0, max_side=128, schedule="train"),
                        name="tiny random")
    path = tmp_path_factory.mktemp("tiny") / "model"
    pipe.save_pretrained(path)
    return path


def test_a_planned_sign_is_drawn_where_it_goes_and_reads_as_its_word():
    """The quoted word's sign: fixed by (prompt, seed), placed anew for another seed, drawn as a white board
    with the word on black that the judge's OCR reads, and cut into tokens that put back together are the
    drawing."""
    prompt = 'a photo of a sign reading "KEY"'
    assert quoted_word(prompt) == "KEY" and quoted_word("a sign that says \u201cOPEN\u201d") == "OPEN"
    assert quoted_word("a red star") is None and planned_sign("a red star", 0) is None
    sign = planned_sign(prompt, 0)
    assert sign == planned_sign(prompt, 0) and sign.word == "KEY"
    assert len({(planned_sign(prompt, s).x, planned_sign(prompt, s).y) for s in range(4)}) > 1
    drawing = layout_drawing(sign, 64, 64)
    x0, y0, x1, y1 = (round(v) for v in sign_box(sign, 64, 64))
    assert drawing[y0 + 1:y1 - 1, x0 + 1:x1 - 1].mean() > 0.5 and drawing[:, : max(0, x0 - 1)].max(initial=0) == 0
    image = Image.fromarray((drawing * 255).astype(np.uint8)).convert("RGB")
    assert read_text(image, sign_box(sign, 64, 64)) == "KEY"
    tokens = layout_tokens(sign, 64, 64, 8)
    assert tokens.shape == (64, 64)
    assert np.array_equal(tokens.reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).reshape(64, 64), drawing)
    assert not layout_tokens(None, 32, 48, 8).any() and layout_tokens(None, 32, 48, 8).shape == (24, 64)
    with pytest.raises(ValueError, match="multiple"):
        layout_tokens(sign, 60, 64, 8)


def test_the_layout_input_starts_at_zero_and_changes_the_velocity_once_trained(tmp_path):
    """A layout input added to a model leaves its velocity as it was (also after a meta build's reset), moves
    it once its weights are not zero, and is refused where it does not fit; a model with one is stored as its
    difference to the model without it."""
    torch.manual_seed(0)
    base = LensTransformer2DModel(replace(preset("shapes-tiny"), num_layers=1))
    model = with_layout_input(base, 64)
    assert model.config.layout_channels == 64 and with_layout_input(model, 64) is model
    x, txt, sigma = torch.randn(2, 16, 16), torch.randn(2, 3, 4, 384), torch.tensor([0.3, 0.8])
    layout = torch.from_numpy(np.stack([layout_tokens(planned_sign('a sign that says "CAT"', 0), 32, 32, 8)] * 2))
    assert torch.equal(model(x, txt, sigma, (4, 4), layout=layout), base(x, txt, sigma, (4, 4)))
    model.layout_in.weight.data.normal_()
    assert not torch.allclose(model(x, txt, sigma, (4, 4), layout=layout), base(x, txt, sigma, (4, 4)))
    assert torch.equal(model(x, txt, sigma, (4, 4)), base(x, txt, sigma, (4, 4)))  # no layout: no sign
    ZeroLinear.reset_parameters(model.layout_in)
    assert not model.layout_in.weight.any()
    with pytest.raises(ValueError, match="no layout input"):
        base(x, txt, sigma, (4, 4), layout=layout)
    with pytest.raises(ValueError, match="layout must be"):
        model(x, txt, sigma, (4, 4), layout=layout[:, :, :32])
    with pytest.raises(UserError, match="pixels a token"):
        with_layout_input(model, 16)
    model.layout_in.weight.data.normal_()
    base.save_pretrained(tmp_path / "base")
    model.save_pretrained(tmp_path / "tuned", delta_from=tmp_path / "base")
    loaded = LensTransformer2DModel.from_pretrained(tmp_path / "tuned")
    assert loaded.config == model.config
    assert all(torch.allclose(loaded.state_dict()[k], v, atol=1e-6) for k, v in model.state_dict().items())


def test_the_pipeline_plans_a_layout_for_each_quoted_word_and_passes_it_to_every_pass(tiny_model):
    """Prompts that quote a word get their planned sign's tokens, the others none, on each of the
    transformer's passes (twice over with CFG); a model without a layout input gets none."""
    pipe = LensPipeline.from_pretrained(tiny_model)
    prompts = ['a sign that says "CAT"', "a red star"]
    assert pipe.sign_layouts(prompts, [0, 1], 32, 32) is None  # no layout input
    pipe.transformer = with_layout_input(pipe.transformer, 64)
    assert pipe.sign_layouts(["a red star"], [0], 32, 32) is None
    layouts = pipe.sign_layouts(prompts, [0, 1], 32, 32)
    expected = layout_tokens(planned_sign(prompts[0], 0, 1.0), 32, 32, 8)
    assert torch.equal(layouts[0], torch.from_numpy(expected)) and not layouts[1].any()
    seen, forward = [], pipe.transformer.forward
    pipe.transformer.forward = lambda *a, layout=None, **k: seen.append(layout) or forward(*a, layout=layout, **k)
    pipe(prompts, seed=[0, 1], steps=2)
    pipe(prompts, seed=[0, 1], steps=2, cfg=2.0)
    assert [tuple(s.shape) for s in seen] == [(2, 16, 64)] * 2 + [(4, 16, 64)] * 2
    assert torch.equal(seen[-1][:2], seen[-1][2:]) and torch.equal(seen[0], layouts)
    with pytest.raises(UserError, match="pixels a token"):
        LensPipeline(with_layout_input(LensPipeline.from_pretrained(tiny_model).transformer, 16), pipe.codec,
                     pipe.text_encoder)


def test_train_signs_copies_layouts_anchors_the_rest_resumes_exactly_and_exports_a_pipeline(tiny_model, tmp_path,
                                                                                            capsys):
    """Two steps: sign scenes of training words with their own signs as layouts; the anchor half starts at 0
    (before any update the model is its teacher); a run stopped after step 1 and resumed takes the same
    step 2; OUT/final loads and samples with a layout; a resume with other settings is refused."""
    scenes = [sign_scene(np.random.default_rng(i), 64) for i in range(4)]
    assert all(s[2].word in TRAIN_WORDS and f'"{s[2].word}"' in s[1] for s in scenes)
    threads = str(torch.get_num_threads())
    args = ["train-signs", "--set", f"model={tiny_model}", "--set", "batch_size=2", "--set", "anchor_batch_size=2",
            "--set", "checkpoint_every=1", "--set", f"threads={threads}", "-q"]
    assert cli.main([*args, "--out-dir", str(tmp_path / "a"), "--steps", "2"]) == 0
    assert "pipeline:" in capsys.readouterr().out
    whole = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in whole] == [1, 2] and whole[0]["anchor_loss"] < 1e-10 < whole[1]["anchor_loss"]
    assert cli.main([*args, "--out-dir", str(tmp_path / "b"), "--steps", "1"]) == 0
    assert cli.main([*args, "--out-dir", str(tmp_path / "b"), "--steps", "2", "--resume"]) == 0
    resumed = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert resumed == whole
    pipe = LensPipeline.from_pretrained(tmp_path / "a" / "final")
    assert pipe.transformer.config.layout_channels == 64 and "train-signs" in pipe.name
    assert pipe(['a sign that says "HELLO"'], steps=2)[0].size == (32, 32)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["final"] == str(tmp_path / "a" / "final")
    config = SignTrainConfig(model=str(tiny_model), out_dir=str(tmp_path / "a"), steps=3, batch_size=2,
                             anchor_batch_size=2, lr=1e-3)
    with pytest.raises(UserError, match="lr"):
        SignTrainer(config, resume=True, progress=False)
    with pytest.raises(UserError, match="sign_weight"):
        SignTrainConfig(sign_weight=0)
