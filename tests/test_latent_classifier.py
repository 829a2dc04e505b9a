"""The latent classifier behind RL's guided KL pull: its targets, the rubric's log-probability, the guidance's
direction and cut-off, training on true scenes and `lensgen train-classifier`."""

import json
import math

import pytest
import torch
from torch.nn import functional as F

from lensgen import cli
from lensgen.errors import UserError
from lensgen.inference.pipeline import StartingPoint, model_dir
from lensgen.models.latent_classifier import (
    MAX_COUNT,
    PAIRS,
    TRIPLES,
    ClassifierLogits,
    LatentClassifier,
    LatentClassifierConfig,
    guidance,
    rubric_log_prob,
    scene_targets,
)
from lensgen.rl.classifier_train import train_classifier
from lensgen.shapes.scene import ObjectSpec, Scene
from lensgen.shapes.vocab import SHAPES


def test_scene_targets_count_shapes_and_name_pairs_and_relations():
    scene = Scene([ObjectSpec("circle", "red", 0.2, 0.5, 0.12), ObjectSpec("star", "blue", 0.8, 0.5, 0.12),
                   ObjectSpec("star", "blue", 0.8, 0.15, 0.1)])
    t = scene_targets([scene], 64, 64)
    assert t.counts[0].tolist() == [1 if s == "circle" else 2 if s == "star" else 0 for s in SHAPES]
    assert {PAIRS[i] for i in t.pairs[0].nonzero().flatten().tolist()} == {("red", "circle"), ("blue", "star")}
    held = {TRIPLES[i] for i in t.relations[0].nonzero().flatten().tolist()}
    assert ("circle", "left of", "star") in held and ("star", "right of", "circle") in held
    assert ("star", "above", "star") in held and ("star", "below", "star") in held  # the two stars, stacked
    assert ("circle", "right of", "star") not in held and ("circle", "above", "circle") not in held


def _rubric(exact: bool) -> dict:
    return {"expected": {"circle": 1}, "exact": exact, "items": [
        {"kind": "shape", "params": {"shape": "circle"}},
        {"kind": "colour", "params": {"shape": "circle", "colour": "red", "count": 1}},
        {"kind": "relation", "params": {"a": ["circle", "red"], "relation": "left of", "b": ["star", None]}},
        {"kind": "text", "params": {"word": "CAT"}},  # not read by the classifier: adds nothing
    ]}


def test_rubric_log_prob_adds_the_asked_counts_pairs_and_relations():
    logits = ClassifierLogits(torch.zeros(2, len(SHAPES), MAX_COUNT + 1), torch.zeros(2, len(PAIRS)),
                              torch.zeros(2, len(TRIPLES)))
    logits.pairs[:, PAIRS.index(("red", "circle"))] = 2.0
    logits.relations[:, TRIPLES.index(("circle", "left of", "star"))] = -1.0
    got = rubric_log_prob(logits, [_rubric(exact=True), _rubric(exact=False)])
    rest = F.logsigmoid(torch.tensor(2.0)) + F.logsigmoid(torch.tensor(-1.0))
    assert got[0] == pytest.approx(float(-math.log(MAX_COUNT + 1) + rest), abs=1e-5)  # exactly one circle
    assert got[1] == pytest.approx(float(math.log(MAX_COUNT / (MAX_COUNT + 1)) + rest), abs=1e-5)  # at least one
    with pytest.raises(UserError, match="expects 'cat'"):
        rubric_log_prob(logits, [{"expected": {"cat": 1}, "items": []}, _rubric(True)])


def _classifier(channels: int = 4, seed: int = 0) -> LatentClassifier:
    torch.manual_seed(seed)
    return LatentClassifier(LatentClassifierConfig(channels=channels, width=16, depth=2)).eval()


def test_guidance_moves_the_sampler_toward_the_rubric_and_stops_above_max_sigma():
    clf, grid, rubrics = _classifier(), (4, 4), [_rubric(True), _rubric(True), _rubric(True)]
    tokens = torch.randn(3, 16, 4, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.3, 0.7, 0.9])
    offset = guidance(clf, tokens, sigma, grid, rubrics, scale=5.0, max_sigma=0.8)
    assert offset[2].abs().max() == 0 and (offset[:2].flatten(1).abs().amax(1) > 0).all()
    assert guidance(clf, tokens, sigma, grid, rubrics, scale=0.0, max_sigma=0.8).abs().max() == 0
    x = tokens.transpose(1, 2).unflatten(2, grid).requires_grad_(True)
    (grad,) = torch.autograd.grad(rubric_log_prob(clf(x, sigma), rubrics).sum(), x)
    expected = -5.0 * (sigma / (1 - sigma))[:, None, None] * grad.flatten(2).transpose(1, 2)
    assert torch.allclose(offset[:2], expected[:2], atol=1e-6)

    def log_p(t):
        with torch.no_grad():
            return rubric_log_prob(clf(t.transpose(1, 2).unflatten(2, grid), sigma), rubrics)

    # a sampler step from sigma to sigma - d adds -d * offset: the rubric becomes more likely
    stepped = tokens - 1e-3 * offset
    assert (log_p(stepped)[:2] > log_p(tokens)[:2]).all()
    assert torch.equal(stepped[2], tokens[2])


def test_classifier_saves_and_loads_and_refuses_other_folders(tmp_path):
    clf = _classifier(channels=6)
    clf.save_pretrained(tmp_path / "clf")
    loaded = LatentClassifier.from_pretrained(tmp_path / "clf")
    x, s = torch.randn(2, 6, 3, 5), torch.tensor([0.1, 0.6])
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(clf(x, s), loaded(x, s)))
    with pytest.raises(UserError, match="not a latent classifier folder"):
        LatentClassifier.from_pretrained(tmp_path)


@pytest.mark.slow
def test_training_on_true_scenes_learns_and_the_command_writes_a_usable_folder(tmp_path, capsys):
    codec = StartingPoint.load(model_dir("shapes-tiny-base"), torch.device("cpu"), torch.float32).codec
    torch.set_num_threads(2)
    clf, report = train_classifier(codec, scenes=1024, steps=1500, batch_size=64, lr=2e-3, width=32, depth=2,
                                   val_scenes=256, progress=False)
    low, high = report["validation"][0.2], report["validation"][0.9]
    # what a scene holds is readable at low noise, not at high (untrained: nothing anywhere)
    assert low["relations_recall"] > high["relations_recall"] + 0.03 and low["pairs_exact"] > high["pairs_exact"]
    out = tmp_path / "clf"
    # 20 steps: a one-step warm-up, where the one-cycle schedule divided by zero
    assert cli.main(["train-classifier", "--out", str(out), "--scenes", "64", "--steps", "20", "--batch-size", "16",
                     "--threads", "1", "-q"]) == 0
    assert "optim.kl_classifier=" in capsys.readouterr().out
    assert LatentClassifier.from_pretrained(out).config.channels == codec.token_channels
    assert set(json.loads((out / "report.json").read_text())["validation"]) == {"0.2", "0.4", "0.6", "0.7", "0.8",
                                                                                 "0.9"}
    assert cli.main(["train-classifier", "--out", str(out), "--size", "60"]) == 2
    assert "multiple of 8" in capsys.readouterr().err
