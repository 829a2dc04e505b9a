"""The judge reads rendered scenes back: counts, colours, shapes, boxes, text."""

import numpy as np
import pytest
from PIL import Image

from lensgen.shapes import SceneConfig, generate_scene, render
from lensgen.shapes.judge import detect
from lensgen.shapes.ocr import normalise_text, text_similarity
from lensgen.shapes.scene import ObjectSpec, Scene, object_box
from lensgen.sizes import size_table


def _match(scene, det, h, w):
    """Per true object: the detection nearest its centre (objects are far apart)."""
    out = []
    for o in scene.objects:
        cx, cy = o.x * w, o.y * h
        best = min(det.objects, key=lambda d: (d.centre[0] - cx) ** 2 + (d.centre[1] - cy) ** 2, default=None)
        out.append(best)
    return out


@pytest.mark.parametrize("base,n", [(64, 100), (256, 12)])
def test_judge_accuracy_on_rendered_scenes(base, n):
    sizes = size_table(base, 8)
    count_ok = colour_ok = shape_ok = objects = 0
    for i in range(n):
        h, w = sizes[i % 9]
        scene = generate_scene(1000 + i, w / h, SceneConfig(p_text=0.2), split="any")
        det = detect(render(scene, h, w))
        count_ok += len(det.shapes()) == len(scene.objects) == len(det.objects)
        assert len(det.signs) == (scene.sign is not None)
        for o, d in zip(scene.objects, _match(scene, det, h, w)):
            objects += 1
            colour_ok += d is not None and d.colour == o.colour
            shape_ok += d is not None and d.shape == o.shape
    assert count_ok / n >= 0.99 and colour_ok / objects >= 0.99 and shape_ok / objects >= 0.99


def test_boxes_and_centres_match_the_spec():
    scene = generate_scene(42, 1.0, SceneConfig(p_text=0.0, min_objects=3), split="any")
    det = detect(render(scene, 128, 128))
    for o, d in zip(scene.objects, _match(scene, det, 128, 128)):
        assert abs(d.centre[0] - o.x * 128) < 2.5 and abs(d.centre[1] - o.y * 128) < 2.5
        tb = object_box(o, 128, 128)
        assert all(abs(a - b) <= 1.5 for a, b in zip(d.box, tb)), (d.box, tb)
    back = det.as_scene()
    assert sorted((o.shape, o.colour) for o in back.objects) == sorted((o.shape, o.colour) for o in scene.objects)


def test_judge_finds_nothing_in_blank_or_noise_images():
    """(Its speed is measured by benchmarks/shapes_judge.py, not asserted here.)"""
    blank = Image.new("RGB", (64, 64), (140, 140, 140))
    assert detect(blank).objects == []
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    assert detect(noise).shapes() == []


def test_malformed_blob_is_not_a_shape():
    img = np.full((64, 64, 3), 140, np.uint8)
    img[10:50, 20:26] = (220, 30, 30)  # a thin bar: no shape of the world looks like it
    img[10:16, 20:50] = (220, 30, 30)
    det = detect(Image.fromarray(img))
    assert len(det.objects) == 1 and det.objects[0].shape is None and det.shapes() == []


def test_ocr_reads_signs_at_64_and_128_px():
    scene = Scene([ObjectSpec("circle", "red", 0.25, 0.75, 0.15)], sign=None)
    from lensgen.shapes.scene import make_sign

    scene.sign = make_sign(np.random.default_rng(0), 1.0, "HELLO")
    scene.sign.y = 0.25
    for size in (64, 128):
        det = detect(render(scene, size, size), ocr=True)
        assert det.text == "HELLO" and len(det.shapes()) == 1
    assert detect(render(scene, 64, 64)).text is None  # no OCR unless asked


def test_text_similarity():
    assert text_similarity("hello", "HELLO") == 1.0
    assert text_similarity("HELO", "HELLO") == pytest.approx(0.8)
    assert text_similarity("", "HELLO") == 0.0
    assert normalise_text(" a-b c ") == "ABC"
