"""Rubrics: items across the five dimensions, graded scores, the global rule."""

import numpy as np
import pytest

from lensgen.shapes import generate_scene, parse_prompt, render
from lensgen.shapes.groundtruth import scene_for_prompt
from lensgen.shapes.rubrics import DIMENSIONS, MAX_ITEMS, rubrics_for, score
from lensgen.shapes.scene import Background, ObjectSpec, Scene, SceneConfig


def _img(spec_text, seed=0):
    spec = parse_prompt(spec_text)
    return render(scene_for_prompt(spec, seed), 64, 64)


def test_rubrics_from_prompt_scene_and_dict():
    r = rubrics_for("a photo of a red circle left of a blue star")
    kinds = {it.kind for it in r.items}
    assert {"shape", "colour", "count", "relation"} <= kinds and r.expected == {"circle": 1, "star": 1}
    scene = generate_scene(1, 1.0, SceneConfig(min_objects=4))
    rs = rubrics_for(scene)
    assert len(rs.items) <= MAX_ITEMS and {it.dimension for it in rs.items} <= set(DIMENSIONS)
    assert rubrics_for(scene.to_dict()).items == rs.items
    big = Scene([ObjectSpec("circle", "red", 0.25, 0.5, 0.25), ObjectSpec("star", "blue", 0.75, 0.5, 0.14)],
                Background())
    assert {it.dimension for it in rubrics_for(big).items} == set(DIMENSIONS)


def test_correct_image_scores_one_and_wrong_images_score_low():
    prompt = "a photo of a red circle left of a blue star"
    r = rubrics_for(prompt)
    good = score(_img(prompt), r)
    assert good.total > 0.95 and all(v == 1.0 for _, v in good.items)
    swapped = score(_img("a photo of a blue circle left of a red star"), r)
    moved = score(_img("a photo of a red circle right of a blue star"), r)
    wrong = score(_img("a photo of two green hearts"), r)
    assert swapped.total <= 0.25 and moved.total <= 0.25 and wrong.total < 0.05
    assert wrong.total < moved.total  # graded: closer images earn more


def test_partial_credit_for_counts_and_extra_objects():
    r = rubrics_for("a photo of three stars")
    exact = score(_img("a photo of three stars"), r).total
    two = score(_img("a photo of two stars"), r).total
    one = score(_img("a photo of a star"), r).total
    assert exact > 0.95 > two > one
    extra = score(_img("a photo of three stars and a circle"), r)
    assert extra.global_score < 0.8 and extra.total < exact


def test_scene_rubrics_on_own_render_and_text_item():
    for seed in range(5):
        scene = generate_scene(seed, 1.0, SceneConfig(p_text=0.0))
        assert score(render(scene, 64, 64), rubrics_for(scene)).total > 0.9
    text = score(_img('a sign that says "OPEN"'), rubrics_for('a sign that says "OPEN"'))
    assert [it.kind for it, _ in text.items] == ["text"] and text.total > 0.95


def test_rubrics_round_trip_through_json():
    import json

    from lensgen.shapes.rubrics import Rubrics, rubrics_for

    rubrics = rubrics_for("a photo of a red circle left of two blue stars")
    again = Rubrics.from_dict(json.loads(json.dumps(rubrics.to_dict())))
    assert again == rubrics and len(again.items) == 7 and again.expected == {"circle": 1, "star": 2}


def test_shape_items_give_partial_credit_to_blobs_near_the_shape():
    """A recognised shape earns 1; a blob the judge reads as another shape earns up to 1/2, more the closer
    its templates come to the asked shape; nothing earns 0."""
    from PIL import Image

    from lensgen.shapes.judge import detect
    from lensgen.shapes.render import render
    from lensgen.shapes.rubrics import shape_credit
    from lensgen.shapes.scene import Background, ObjectSpec, Scene

    def one(shape):
        scene = Scene([ObjectSpec(shape, "red", 0.5, 0.5, 0.3)], Background(), None, 1.0)
        return detect(render(scene, 64, 64))

    hexagon, circle = one("hexagon"), one("circle")
    assert hexagon.objects[0].shape_scores["hexagon"] == max(hexagon.objects[0].shape_scores.values())
    assert shape_credit(hexagon, "hexagon") == 1.0
    near, far = shape_credit(circle, "hexagon"), shape_credit(circle, "star")
    assert 0.3 < near <= 0.5 and 0 <= far < near  # a circle is nearly a hexagon, far from a star
    assert shape_credit(detect(Image.new("RGB", (64, 64), (140, 140, 140))), "hexagon") == 0.0


def test_template_distance_is_how_far_apart_the_judge_holds_two_shapes():
    from lensgen.shapes.shapefit import template_distance
    from lensgen.shapes.vocab import SHAPES

    pairs = {(a, b): template_distance(a, b) for a in SHAPES for b in SHAPES if a != b}
    assert all(template_distance(s, s) == pytest.approx(0.0, abs=1e-6) for s in SHAPES)
    assert all(d == pytest.approx(pairs[b, a]) and 0 < d < 1 for (a, b), d in pairs.items())
    assert min(pairs, key=pairs.get) in (("hexagon", "circle"), ("circle", "hexagon"))  # the closest pair
    assert pairs["hexagon", "circle"] < 0.02 < 0.1 < pairs["star", "triangle"]


def _blob(scores: dict[str, float]):
    from lensgen.shapes.judge import DetectedObject, Detection

    best = max(scores, key=scores.get)
    obj = DetectedObject(best, "red", (0, 0, 10, 10), (5, 5), 80.0, scores[best], 0.9, shape_scores=scores)
    return Detection(64, 64, [obj])


def test_pair_shape_credit_spans_the_gap_between_the_rival_shape_and_the_asked_one():
    """With margin "pair" a blob whose cosine to the asked shape trails its rival by the two shapes' whole
    template distance (a perfect rival) earns 0, by half of it 1/4, by a hair 1/2, whichever the pair; the
    fixed margin gives a blob that is a perfect circle nearly the credit of one that ties (0.45 vs 0.5) on a
    hexagon prompt, which is why discs could not learn to become hexagons."""
    from lensgen.shapes.rubrics import SHAPE_MARGIN_SCALE, shape_credit
    from lensgen.shapes.shapefit import template_distance

    for asked, rival in (("hexagon", "circle"), ("star", "heart"), ("square", "triangle")):
        d = template_distance(asked, rival)
        rest = {s: 0.5 for s in ("circle", "heart", "hexagon", "square", "star", "triangle")}
        for gap, pair in ((d, 0.0), (d / 2, 0.25), (d / 10, 0.45), (1e-9, 0.5)):  # the rival still wins
            det = _blob({**rest, rival: 0.95, asked: 0.95 - gap})
            assert shape_credit(det, asked, "pair") == pytest.approx(pair, abs=1e-6)
            fixed = float(np.clip(0.5 - gap / SHAPE_MARGIN_SCALE, 0, 0.5))
            assert shape_credit(det, asked) == pytest.approx(fixed, abs=1e-6)  # "fixed" is the default
    d = template_distance("hexagon", "circle")
    circle = _blob({"circle": 0.97, "hexagon": 0.97 - d, "square": 0.9, "star": 0.8, "heart": 0.8, "triangle": 0.8})
    assert shape_credit(circle, "hexagon") > 0.44 and shape_credit(circle, "hexagon", "pair") == pytest.approx(0)
    with pytest.raises(ValueError, match="margin 'wide'"):
        shape_credit(circle, "hexagon", "wide")
