"""The differentiable sign reading equals the judge's OCR (the ONNX recogniser run in torch, the same crop and
resize), scores the asked word, and its gradient makes the judge read the asked word."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

from lensgen.images import image_to_tensor
from lensgen.shapes import SceneConfig, generate_scene, render
from lensgen.shapes.judge import detect
from lensgen.shapes.onnx_graph import OnnxGraph
from lensgen.shapes.soft_reader import (
    bicubic_weights,
    greedy_text,
    recogniser,
    recogniser_path,
    sign_boxes,
    sign_log_probs,
    word_log_likelihood,
)


def test_the_recogniser_in_torch_equals_onnxruntime():
    import onnxruntime as ort

    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 48, 200)).astype(np.float32)
    session = ort.InferenceSession(recogniser_path())
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(recogniser()(torch.from_numpy(x)).numpy(), expected, atol=1e-5)


def test_an_operator_the_interpreter_lacks_is_named_when_the_graph_loads(tmp_path):
    graph = helper.make_graph([helper.make_node("Erf", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(NotImplementedError, match=r"erf.onnx.*Erf"):
        OnnxGraph(path)


@pytest.mark.parametrize("size", [9, 13, 40])  # shrink, same, enlarge
def test_bicubic_weights_resize_as_pil_does(size):
    """Along each axis the matrix gives PIL's result to the uint8 level (PIL rounds between its two passes,
    so a 2-D resize of a noisy image may differ by more where an overshoot clips)."""
    pixels = np.random.default_rng(1).integers(0, 256, (13, 21), dtype=np.uint8)
    x = torch.from_numpy(pixels.astype(np.float64))
    across = np.asarray(Image.fromarray(pixels).resize((size, 13), Image.BICUBIC))
    down = np.asarray(Image.fromarray(pixels).resize((21, size), Image.BICUBIC))
    np.testing.assert_array_equal((x @ bicubic_weights(size, 21).T).clamp(0, 255).round().numpy(), across)
    np.testing.assert_array_equal((bicubic_weights(size, 13) @ x).clamp(0, 255).round().numpy(), down)


def _sign_scenes(n: int):
    """Rendered scenes with a sign, at the size ShapesEval samples."""
    out = []
    for seed in range(400, 1000):
        scene = generate_scene(seed, 1.0, SceneConfig(p_text=1.0), split="any")
        if scene.sign is not None:
            out.append((scene.sign.word, render(scene, 64, 64)))
        if len(out) == n:
            return out
    raise AssertionError("too few sign scenes")


def test_signs_read_as_the_judge_reads_them_and_their_own_word_scores_best():
    for word, image in _sign_scenes(6):
        judged = detect(image, ocr=True, read_unsigned=False).text
        x = image_to_tensor(image)
        assert len(sign_boxes(x)) == 1
        log_probs = sign_log_probs(x)
        assert greedy_text(log_probs) == judged == word
        own = word_log_likelihood(log_probs, word)
        other = word_log_likelihood(log_probs, word[1:] + word[0] if len(set(word)) > 1 else word + "X")
        assert own > np.log(0.5) and other < own - 1.0


def test_an_image_without_a_sign_has_no_reading():
    scene = generate_scene(3, 1.0, SceneConfig(p_text=0.0), split="any")
    assert sign_log_probs(image_to_tensor(render(scene, 64, 64))) is None


def test_the_word_gradient_makes_the_judge_read_the_asked_word():
    word, image = _sign_scenes(1)[0]
    target = "EXIT" if word != "EXIT" else "PARK"
    x = image_to_tensor(image).clone().requires_grad_(True)
    boxes = sign_boxes(x)
    start = float(word_log_likelihood(sign_log_probs(x.detach(), boxes), target))
    optimiser = torch.optim.Adam([x], lr=0.02)
    for _ in range(80):
        loss = -word_log_likelihood(sign_log_probs(x, boxes), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            x.clamp_(-1, 1)
    pixels = ((x.detach().permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    assert -float(loss) > start + 2.0
    assert detect(Image.fromarray(pixels), ocr=True, read_unsigned=False).text == target


def test_a_word_with_nothing_a_sign_can_say_is_refused():
    with pytest.raises(ValueError, match="letters and digits"):
        word_log_likelihood(torch.zeros(10, 6625), "--")
