"""The differentiable reading equals the judge's (shapes and colours), matches objects to the asked ones, and
its gradients move a drawn object toward what is asked."""

import numpy as np
import pytest
import torch

from lensgen.images import image_to_tensor
from lensgen.shapes import SceneConfig, generate_scene, render
from lensgen.shapes.judge import detect
from lensgen.shapes.rubrics import rubrics_for
from lensgen.shapes.scene import Background, ObjectSpec, Scene
from lensgen.shapes.soft_judge import (
    SoftObject,
    asked_objects,
    colour_margin,
    margin_reward,
    margin_scale,
    match_objects,
    shape_margin,
    soft_objects,
)
from lensgen.shapes.vocab import COLOUR_NAMES, SHAPES


@pytest.mark.parametrize("size", [64, 160])  # at 160 px most objects are shrunk by area before the warp
def test_soft_objects_read_shapes_and_colours_as_the_judge_does(size):
    objects = 0
    for i in range(12):
        scene = generate_scene(500 + i, 1.0, SceneConfig(p_text=0.3), split="any")
        image = render(scene, size, size)
        judged = detect(image).objects
        soft = soft_objects(image_to_tensor(image))
        assert len(soft) == len(judged)  # signs and specks are left out as the judge leaves them
        for obj, s in zip(judged, soft):
            expected = np.array([obj.shape_scores[name] for name in SHAPES])
            np.testing.assert_allclose(s.shapes.detach().numpy(), expected, atol=1e-5)
            assert COLOUR_NAMES[int(s.colours.argmin())] == obj.colour
            assert colour_margin(s, obj.colour) > 0 > colour_margin(s, next(c for c in COLOUR_NAMES
                                                                             if c != obj.colour))
            objects += 1
    assert objects >= 20


def _object(colour: str = "red", **cosines: float) -> SoftObject:
    residuals = torch.full((len(COLOUR_NAMES),), 10.0)
    residuals[COLOUR_NAMES.index(colour)] = 5.0
    return SoftObject(torch.tensor([cosines.get(s, 0.5) for s in SHAPES], requires_grad=True),
                      residuals.requires_grad_(True))


def test_objects_are_matched_to_the_asked_ones_and_their_margins_capped():
    star, circle = _object("blue", star=0.95, heart=0.90), _object("red", circle=0.99, hexagon=0.985)
    matches = match_objects([circle, star], [("star", None), ("circle", "red")], cap=0.5)
    assert len(matches) == 2
    want_shape = {(0.99 - 0.985) / margin_scale("circle"), (0.95 - 0.90) / margin_scale("star")}
    assert {round(float(m.shape.detach()), 4) for m in matches} == {round(w, 4) for w in want_shape}
    colours = [m.colour for m in matches if m.colour is not None]
    assert len(colours) == 1 and float(colours[0].detach()) == pytest.approx(np.log10(11 / 6))
    reward = margin_reward(matches, cap=0.5, colour_weight=2.0)
    expected = (sum(min(w, 0.5) for w in want_shape) + 2.0 * np.log10(11 / 6)) / 2
    assert float(reward.detach()) == pytest.approx(expected, rel=1e-5)
    reward.backward()
    assert circle.shapes.grad[SHAPES.index("circle")] > 0 and circle.shapes.grad[SHAPES.index("hexagon")] < 0
    assert circle.colours.grad[COLOUR_NAMES.index("red")] < 0  # a smaller residual for the asked colour
    assert star.colours.grad is None or not star.colours.grad.any()  # no colour asked of the star
    # two stars asked, one drawn: the one object is matched once; nothing drawn: no reward
    assert len(match_objects([star], [("star", None), ("star", None)], cap=0.5)) == 1
    assert match_objects([], [("star", None)], cap=0.5) == [] and margin_reward([], cap=0.5) is None


def test_asked_objects_follow_the_rubrics_count_items():
    assert sorted(asked_objects(rubrics_for("two red stars and a circle")), key=str) == \
        [("circle", None), ("star", "red"), ("star", "red")]


def test_the_gradients_turn_a_drawn_red_circle_toward_a_blue_hexagon():
    scene = Scene([ObjectSpec("circle", "red", 0.5, 0.5, 0.3, 0.0)], Background(), None, 1.0)
    pixels = image_to_tensor(render(scene, 64, 64)).requires_grad_(True)

    def margins(image):
        (obj,) = soft_objects(image)
        return shape_margin(obj, "hexagon"), colour_margin(obj, "blue")

    for which in (0, 1):
        pixels.grad = None
        before = margins(pixels)[which]
        assert before < 0  # a red circle is neither a hexagon nor blue
        before.backward()
        step = pixels.grad / pixels.grad.abs().max()
        after = margins((pixels + 0.05 * step).clamp(-1, 1).detach())[which]
        assert after > before + 1e-4, which  # uphill: corners appear, the colour moves toward blue
