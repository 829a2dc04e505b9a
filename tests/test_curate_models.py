"""Model-backed steps through their real loading paths, with tiny random models of the real classes."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lensgen.data.curate import synth
from lensgen.data.curate.config import AestheticConfig, CorruptConfig, WatermarkConfig, load_config
from lensgen.data.curate.inputs import Sample
from lensgen.data.curate.manifest import read_manifest
from lensgen.data.curate.pipeline import run_curation
from lensgen.data.curate.steps.aesthetic import AestheticStep
from lensgen.data.curate.steps.base import Item
from lensgen.data.curate.steps.corrupt import decode_all
from lensgen.data.curate.steps.embed import ClipEmbedder
from lensgen.data.curate.steps.watermark import WatermarkStep
from lensgen.errors import UserError

RAPIDOCR_CLS = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    path = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def laion_mlp_state(dim: int, final_bias: float | None = None, seed: int = 0) -> dict:
    """A head in the improved-aesthetic-predictor layout (layers.0/2/4/6/7, dropouts between)."""
    torch.manual_seed(seed)
    layers = torch.nn.Sequential(
        torch.nn.Linear(dim, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
    )
    if final_bias is not None:  # a head whose every score is known: zero weights, fixed bias
        torch.nn.init.zeros_(layers[7].weight)
        torch.nn.init.constant_(layers[7].bias, final_bias)
    return {f"layers.{k}": v for k, v in layers.state_dict().items()}


def decoded_items(images: list[Image.Image]) -> list[Item]:
    items = [Item(Sample(str(i), f"{i}.png", synth.encode(im, "PNG"), "png")) for i, im in enumerate(images)]
    assert len(decode_all(items, CorruptConfig(), 384)) == len(items)
    return items


def test_aesthetic_head_in_laion_format_scores_clip_embeddings(tiny_clip, tmp_path):
    head = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    state = laion_mlp_state(16)
    torch.save(state, head)
    clip = ClipEmbedder(tiny_clip)
    step = AestheticStep(AestheticConfig(head_path=str(head), min_score=3.0), clip)
    items = decoded_items([synth.photo_like(s, 400, 500) for s in range(3)])
    scores = step.score(items)
    # the same numbers by hand: transformers' CLIP, L2 normalisation, the MLP (dropout is inert in eval)
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(tiny_clip).eval()
    pixels = CLIPImageProcessor.from_pretrained(tiny_clip)(images=[i.image for i in items], return_tensors="pt")
    with torch.no_grad():
        e = model(**pixels).image_embeds
        e = e / e.norm(dim=-1, keepdim=True)
        for k in (0, 2, 4, 6, 7):
            e = e @ state[f"layers.{k}.weight"].T + state[f"layers.{k}.bias"]
    np.testing.assert_allclose(scores, e.squeeze(-1).numpy(), rtol=1e-4, atol=1e-5)
    assert all("clip" in i.cache for i in items)  # embeddings cached for the dedup step


def test_aesthetic_linear_head_safetensors_and_errors(tiny_clip, tmp_path):
    from safetensors.torch import save_file

    clip = ClipEmbedder(tiny_clip)
    linear = tmp_path / "linear.safetensors"
    save_file({"weight": torch.zeros(1, 16), "bias": torch.tensor([5.5])}, str(linear))
    step = AestheticStep(AestheticConfig(head_path=str(linear)), clip)
    assert step.score(decoded_items([synth.photo_like(1, 400, 400)])) == [pytest.approx(5.5)]
    wrong_dim = tmp_path / "l14.pth"
    torch.save(laion_mlp_state(768), wrong_dim)
    with pytest.raises(UserError, match="expects 768-d embeddings but the CLIP model at clip_path gives 16-d"):
        AestheticStep(AestheticConfig(head_path=str(wrong_dim)), clip)
    junk = tmp_path / "junk.pth"
    torch.save({"foo": torch.zeros(2)}, junk)
    with pytest.raises(UserError, match="not a LAION aesthetic head"):
        AestheticStep(AestheticConfig(head_path=str(junk)), clip)


def test_full_clip_checkpoint_loads_its_vision_tower(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=24,
    )
    full = CLIPModel(cfg).eval()
    full.save_pretrained(tmp_path)  # no preprocessor config: CLIP's standard preprocessing is used
    clip = ClipEmbedder(tmp_path)
    image = synth.photo_like(2, 64, 64)
    got = clip.embed([image])
    with torch.no_grad():
        pixels = clip.processor(images=[image], return_tensors="pt")["pixel_values"]
        want = full.get_image_features(pixel_values=pixels)
        want = getattr(want, "pooler_output", want)
        want = want / want.norm(dim=-1, keepdim=True)
    assert clip.dim == 24
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_watermark_vit(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    path = tmp_path_factory.mktemp("wm")
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, id2label={0: "clear", 1: "watermark"},
                       label2id={"clear": 0, "watermark": 1})
    model = ViTForImageClassification(config)
    with torch.no_grad():  # a classifier whose answer is known: P(watermark) = sigmoid(5)
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 5.0]))
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_watermark_transformers_classifier(tiny_watermark_vit):
    step = WatermarkStep(WatermarkConfig(model_path=str(tiny_watermark_vit)))
    items = decoded_items([synth.photo_like(4, 400, 400), synth.photo_like(5, 400, 600)])
    scores = step.score(items)
    assert scores == [pytest.approx(1 / (1 + np.exp(-5.0)))] * 2
    assert step.apply(items) == [] and items[0].rejected_by == "watermark"
    with pytest.raises(UserError, match="positive_label 'wm' is not a label"):
        WatermarkStep(WatermarkConfig(model_path=str(tiny_watermark_vit), positive_label="wm"))


def test_watermark_onnx_classifier_runs_with_onnxruntime():
    import onnxruntime
    import rapidocr_onnxruntime

    # a real binary image classifier shipped as ONNX (rapidocr's text-direction model: 3x48x192 in,
    # 2 probabilities out), standing in for an ONNX export of LAION's watermark model
    model = Path(rapidocr_onnxruntime.__file__).parent.parent / RAPIDOCR_CLS
    config = WatermarkConfig(model_path=str(model), input_size=[48, 192], mean=[0.5] * 3, std=[0.5] * 3,
                             outputs="probs", positive_index=1)
    step = WatermarkStep(config)
    images = [synth.photo_like(6, 400, 800), synth.photo_like(7, 400, 400)]
    items = decoded_items(images)
    scores = step.score(items)
    session = onnxruntime.InferenceSession(str(model))
    batch = np.stack([np.asarray(i.image.resize((192, 48), Image.Resampling.BILINEAR), np.float32) for i in items])
    batch = (batch.transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.5
    want = session.run(None, {session.get_inputs()[0].name: batch.astype(np.float32)})[0][:, 1]
    np.testing.assert_allclose(scores, want, rtol=1e-5)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_pipeline_runs_model_steps_and_uses_clip_for_dedup(tiny_clip, tiny_watermark_vit, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for s in range(4):
        synth.photo_like(s, 400, 480).save(folder / f"{s}.png")
    head = tmp_path / "head.pth"
    torch.save(laion_mlp_state(16, final_bias=2.0), head)  # every score is 2.0 < 3: all rejected
    overrides = {"clip_path": str(tiny_clip), "aesthetic": {"head_path": str(head)},
                 "watermark": {"model_path": str(tiny_watermark_vit)},
                 "run": {"workers": 1, "progress": False}}
    summary = run_curation(folder, tmp_path / "out", load_config(None, overrides))
    steps = {s["step"]: s for s in summary["steps"]}
    assert steps["aesthetic"]["status"] == "ran" and steps["aesthetic"]["rejected"] == 4
    assert summary["kept"] == 0 and summary["conservation_ok"]
    assert read_manifest(tmp_path / "out").column("aesthetic_score").to_pylist() == [pytest.approx(2.0)] * 4
    # a passing head: watermark (P=0.993 > 0.8) rejects all; dedup would use CLIP embeddings
    torch.save(laion_mlp_state(16, final_bias=6.0), head)
    summary = run_curation(folder, tmp_path / "out2", load_config(None, overrides))
    steps = {s["step"]: s for s in summary["steps"]}
    assert steps["watermark"]["rejected"] == 4 and steps["aesthetic"]["rejected"] == 0
    assert "clip embedding" in steps["dedup"]["rule"]
