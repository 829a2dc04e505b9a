"""RL rewards: the Shapes rubric and GenEval rewards on ground truth and on junk, the VLM judge against a
hostile local chat-completions server, weighted sums, building from config, async scoring, logged stats."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lensgen.errors import UserError
from lensgen.rl.rewards import (
    GenEvalReward,
    ShapesRubricReward,
)
from lensgen.shapes import parse_prompt, render
from lensgen.shapes.groundtruth import scene_for_prompt
from lensgen.shapes.rubrics import DIMENSIONS, rubrics_for

PROMPTS = ["a photo of a red circle left of a blue star", "a photo of three stars",
           "a photo of a green square and a yellow heart", 'a sign that says "OPEN"']


def ground_truth(prompt: str, seed: int = 0, size: int = 128) -> Image.Image:
    return render(scene_for_prompt(parse_prompt(prompt), seed), size, size)


def blank(size: int = 128) -> Image.Image:
    return Image.new("RGB", (size, size), (128, 128, 128))


def noise(seed: int, size: int = 128) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8))


# ---------------------------------------------------------------- Shapes rubric and GenEval


def test_rubric_and_geneval_rewards_high_on_ground_truth_low_on_junk():
    images = [ground_truth(p) for p in PROMPTS] + [blank(), noise(1)]
    prompts = PROMPTS + PROMPTS[:2]
    stored = [json.loads(json.dumps(rubrics_for(p).to_dict())) for p in PROMPTS]  # as in the RL prompt file
    rubric = ShapesRubricReward()(images, prompts, stored + [None, None])
    assert rubric.scores.dtype == torch.float32 and rubric.valid.all()
    assert (rubric.scores[:4] > 0.9).all() and (rubric.scores[4:] < 0.1).all(), rubric.scores
    derived = ShapesRubricReward(workers=2)(images[:4], PROMPTS, [None] * 4)  # None: derive from the prompt
    assert torch.equal(derived.scores, rubric.scores[:4]) and derived.details == rubric.details[:4]
    relation = rubric.details[0]
    assert {it["dimension"] for it in relation["items"]} == {"attributes", "colour", "quantity", "spatial"}
    assert all(it["score"] == 1.0 for it in relation["items"]) and relation["global"] > 0.9
    assert all(it["dimension"] in DIMENSIONS for d in rubric.details for it in d["items"])
    assert rubric.details[4]["global"] == 0.0 and "global rule" in rubric.details[4]["reason"]

    geneval = GenEvalReward()(images, prompts, [None] * len(images))
    assert geneval.scores.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0] and geneval.valid.all()
    failed = geneval.details[4]
    assert failed["reason"] and failed["items"] == [] and failed["global"] is None


def test_geneval_counts_exactly_and_reads_signs():
    five = ground_truth("a photo of five stars")
    three = ground_truth("a photo of three stars")
    result = GenEvalReward()([five, three], ["a photo of three stars"] * 2, [None, None])
    assert result.scores.tolist() == [0.0, 1.0]  # at least three would reward five: GenEval counts exactly
    sign = GenEvalReward()([ground_truth('a sign that says "OPEN"')], ['a sign that says "OPEN"'], [None])
    wrong = GenEvalReward()([ground_truth('a sign that says "OPAL"')], ['a sign that says "OPEN"'], [None])
    assert sign.scores.item() == 1.0 and 0.3 < wrong.scores.item() < 1.0  # 1 - NED: partial credit


def test_shapes_rewards_refuse_prompts_and_rubrics_they_cannot_check():
    image = [blank(64)]
    with pytest.raises(UserError, match="'a cat asleep on a sofa'"):
        ShapesRubricReward()(image, ["a cat asleep on a sofa"], [None])
    with pytest.raises(UserError, match="free-form rubric"):
        ShapesRubricReward()(image, ["a cat"], [{"items": [{"dimension": "colour", "description": "a cat"}]}])
    with pytest.raises(UserError, match="incomplete"):
        items_only = {"items": rubrics_for("a red circle").to_dict()["items"]}
        ShapesRubricReward()(image, ["a red circle"], [items_only])
    with pytest.raises(UserError, match="geneval reward needs a prompt in the Shapes grammar"):
        GenEvalReward()(image, ["a cat asleep on a sofa"], [None])
    with pytest.raises(ValueError, match="2 prompts"):
        GenEvalReward()(image, ["a red circle"] * 2, [None])
