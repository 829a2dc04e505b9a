"""Dense and short captions, and the prompt grammar."""

import re

import numpy as np
import pytest

from lensgen.errors import UserError
from lensgen.shapes import captions, choose_caption, generate_scene, parse_prompt
from lensgen.shapes.captions import short_spec
from lensgen.shapes.prompt import ObjectReq, PromptSpec, Relation, format_prompt
from lensgen.shapes.scene import SceneConfig
from lensgen.shapes.vocab import NUMBER_WORDS, plural

GENEVAL_FORM = re.compile(
    r'^(a photo of |an image of |a picture of )?'
    r'(((a|an|one|two|three|four|five|six) ([a-z]+ )?[a-z]+)'
    r'(( left of| right of| above| below) (a|an) ([a-z]+ )?[a-z]+'
    r'|(, (a|an|two|three|four|five|six) ([a-z]+ )?[a-z]+)*( and (a|an|two|three|four|five|six) ([a-z]+ )?[a-z]+)?)'
    r'( and a sign (that says|with the word|reading) "[A-Z]+")?'
    r'|a sign (that says|with the word|reading) "[A-Z]+")$')


def _scenes(n=200):
    return [generate_scene(s, [0.5, 1.0, 2.0][s % 3], SceneConfig(p_text=0.3)) for s in range(n)]


def test_dense_caption_mentions_every_object_and_the_text():
    words = []
    for i, scene in enumerate(_scenes()):
        dense = captions(scene, i)["dense"]
        words.append(len(dense.split()))
        for (colour, shape), n in __import__("collections").Counter((o.colour, o.shape) for o in scene.objects).items():
            assert dense.count(f"{colour} {shape}") >= n, (dense, colour, shape)
        total = len(scene.objects)
        assert (NUMBER_WORDS[total] if total > 1 else "single") in dense
        if scene.sign:
            assert f'"{scene.sign.word}"' in dense
        assert "background" in dense or "gradient" in dense
    words = np.array(words)
    assert words.min() >= 55 and words.max() <= 125 and 75 <= words.mean() <= 110


def test_short_captions_are_geneval_form_and_parse_back():
    forms = set()
    for i, scene in enumerate(_scenes()):
        short = captions(scene, i)["short"]
        assert GENEVAL_FORM.match(short), short
        spec = parse_prompt(short)
        forms.add((spec.relation is not None, spec.text is not None, max(o.count for o in spec.objects)))
        for o in spec.objects:
            matching = [p for p in scene.objects if p.shape == o.shape and (o.colour is None or p.colour == o.colour)]
            assert len(matching) == o.count, (short, scene)
        assert spec.text == (scene.sign.word if scene.sign else None)
    assert len(forms) >= 4  # positions, signs, counts and plain lists all occur


def test_captions_vary_and_are_deterministic():
    scene = generate_scene(3, 1.0)
    assert captions(scene, 1) == captions(scene, 1)
    dense = {captions(scene, s)["dense"] for s in range(10)}
    short = {captions(scene, s)["short"] for s in range(10)}
    assert len(dense) > 3 and len(short) > 1


def test_mixed_sampling():
    caps = {"dense": "D", "short": "S"}
    rng = np.random.default_rng(0)
    picks = [choose_caption(caps, "mixed", rng, p_dense=0.5) for _ in range(400)]
    assert 150 < picks.count("D") < 250
    assert choose_caption(caps, "short", rng) == "S"
    with pytest.raises(ValueError):
        choose_caption(caps, "long", rng)


def test_prompt_round_trip_and_errors():
    spec = PromptSpec([ObjectReq("circle", "red"), ObjectReq("star", "blue")], Relation(0, "left of", 1))
    text = format_prompt(spec, 0)
    assert text == "a photo of a red circle left of a blue star"
    back = parse_prompt(text)
    assert back.objects == spec.objects and back.relation == spec.relation
    three = parse_prompt("an image of three hearts and a sign reading \"OPEN\"")
    assert three.objects == [ObjectReq("heart", None, 3)] and three.text == "OPEN"
    assert plural("star", 2) == "stars"
    for bad in ("a photo of a dragon", "a photo of three star", "a photo of"):
        with pytest.raises(UserError):
            parse_prompt(bad)
    assert short_spec(generate_scene(0), np.random.default_rng(0)).objects
