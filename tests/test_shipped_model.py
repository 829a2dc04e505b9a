"""The shipped Shapes model samples exactly as it did when it was trained and evaluated.

Its images for fixed prompts and seeds were recorded once (tests/data/shipped_model_images.safetensors);
any change to the model code, the sampler, the schedule, the text encoder or the codec that moves a
pixel of them fails here: a QK-norm eps of 1e-6 instead of the 1e-5 it was trained with moves them by
1.2e-5, so the tolerance (5e-6, on images in [-1, 1]) leaves room only for float reordering across CPUs.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file

from lensgen.inference.pipeline import DEFAULT_MODEL_DIR, LensPipeline

RECORDED = Path(__file__).parent / "data" / "shipped_model_images.safetensors"
PROMPTS = ["a photo of a red circle", "two blue squares", "a yellow star to the left of a green triangle"]


def test_shipped_model_images_for_fixed_seeds_are_unchanged():
    expected = load_file(RECORDED)
    pipe = LensPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    square = pipe(PROMPTS, height=64, width=64, seed=[0, 1, 2], output_type="pt")
    wide = pipe(["three purple hexagons"], height=48, width=96, seed=[7], output_type="pt")
    for got, want in ((square, expected["square"]), (wide, expected["wide"])):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=5e-6, rtol=0)


TURBO_RECORDED = Path(__file__).parent / "data" / "shipped_turbo_images.safetensors"


def test_shipped_turbo_model_samples_in_four_cfg_free_steps_as_recorded():
    """The Turbo student ships by name: 4 Euler steps, CFG 1 (one transformer pass per step), and its images
    for fixed seeds are the ones recorded when it was evaluated."""
    pipe = LensPipeline.from_pretrained("shapes-tiny-turbo")
    assert (pipe.defaults.steps, pipe.defaults.cfg, pipe.defaults.solver) == (4, 1.0, "euler")
    calls = []
    pipe.transformer.register_forward_hook(lambda module, args, output: calls.append(output.shape[0]))
    got = pipe(PROMPTS, height=64, width=64, seed=[0, 1, 2], output_type="pt")
    assert calls == [3] * 4
    torch.testing.assert_close(got, load_file(TURBO_RECORDED)["square"], atol=5e-6, rtol=0)


def test_shipped_models_fit_the_package_budget():
    """Everything under lensgen/assets (the base and Turbo models) stays under 40 MB."""
    total = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.parent.rglob("*") if p.is_file())
    assert total < 40e6, f"{total / 1e6:.1f} MB"
