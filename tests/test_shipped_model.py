"""The shipped Shapes models sample exactly as they did when they were evaluated.

Their images for fixed prompts and seeds were recorded once (tests/data/shipped_*_images.safetensors); any
change to the model code, the sampler, the schedule, the text encoder, the codec or the weight storage that
moves them fails here. The bounds (images in [-1, 1]) sit between two measured effects. Float reordering on
another CPU (an AMD EPYC against the recording machine) moved the pretrained model's images by at most
4.6e-6 (mean 1.9e-7) and an earlier Turbo model's by at most 1.5e-5 (mean 2.2e-7: four large Euler steps
amplify it); a QK-norm eps of 1e-6 instead of the 1e-5 the models were trained with moves them by at most 2.9e-5
(mean 9.2e-7), 3.8e-5 (mean 7.1e-7, the RL model) and 3.8e-5 (mean 6.4e-7, Turbo). Each check bounds both
the largest and the mean difference. The default model's classifier guidance amplifies small differences:
its classifier's weights scaled by 1 + 1e-7 noise move its images by up to 1.4e-5 (mean 2.4e-7), its scale
changed by one part in 10,000 by 5.5e-4 (mean 9.2e-6), so its bound is 1e-4 (mean 2e-6).
"""

from pathlib import Path

import torch
from safetensors.torch import load_file

from lensgen.inference.pipeline import DEFAULT_MODEL_DIR, LensPipeline

RECORDED = Path(__file__).parent / "data" / "shipped_model_images.safetensors"  # shapes-tiny-base
RL_RECORDED = Path(__file__).parent / "data" / "shipped_rl_images.safetensors"  # shapes-tiny, the default
PROMPTS = ["a photo of a red circle", "two blue squares", "a yellow star to the left of a green triangle"]


def assert_as_recorded(got: torch.Tensor, want: torch.Tensor, max_abs: float, mean_abs: float) -> None:
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=max_abs, rtol=0)
    mean = (got - want).abs().mean().item()
    assert mean <= mean_abs, f"mean difference {mean:.2e} > {mean_abs:.0e}"


def assert_square_and_wide_as_recorded(pipe: LensPipeline, recorded: Path, max_abs: float = 1.5e-5,
                                       mean_abs: float = 5e-7) -> None:
    expected = load_file(recorded)
    square = pipe(PROMPTS, height=64, width=64, seed=[0, 1, 2], output_type="pt")
    wide = pipe(["three purple hexagons"], height=48, width=96, seed=[7], output_type="pt")
    for got, want in ((square, expected["square"]), (wide, expected["wide"])):
        assert_as_recorded(got, want, max_abs=max_abs, mean_abs=mean_abs)


def test_pretrained_model_images_for_fixed_seeds_are_unchanged():
    """shapes-tiny-base: the pretrained model (20 Euler steps, CFG 3), the RL reference and Turbo teacher."""
    pipe = LensPipeline.from_pretrained("shapes-tiny-base")
    assert (pipe.defaults.steps, pipe.defaults.cfg, pipe.defaults.solver) == (20, 3.0, "euler")
    assert_square_and_wide_as_recorded(pipe, RECORDED)


def test_default_model_is_the_rl_model_sampling_cfg_free_with_classifier_guidance_as_recorded():
    """shapes-tiny: the RL model with a sign layout input, stored as int4 differences to shapes-tiny-base (its
    layout input whole); 20 DPM++ 2M steps at CFG 1,
    one transformer pass per step, guided by its latent classifier (scale 20 up to sigma 0.9)."""
    pipe = LensPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    assert DEFAULT_MODEL_DIR.name == "shapes-tiny"
    d = pipe.defaults
    assert (d.steps, d.cfg, d.solver, d.classifier_scale, d.classifier_max_sigma) == (20, 1.0, "dpm2", 20.0, 0.9)
    calls = []
    pipe.transformer.register_forward_hook(lambda module, args, output: calls.append(output.shape[0]))
    assert_square_and_wide_as_recorded(pipe, RL_RECORDED, max_abs=1e-4, mean_abs=2e-6)
    assert calls == [3] * 20 + [1] * 20


def test_the_default_models_guidance_makes_what_the_prompts_ask_more_likely():
    """Sampled with its classifier's guidance, the default's final latents hold what each prompt asks more
    surely, by that classifier, than the same seeds sampled without it (on the first five the model is already
    sure unguided: the mean over all seven is what moves)."""
    from lensgen.inference.classifier_guidance import prompt_rubric
    from lensgen.models.latent_classifier import rubric_log_prob

    pipe = LensPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    prompts = [*PROMPTS, "a photo of a blue heart above a red square", "a photo of two green stars",
               "a red circle below a blue square", "a yellow star right of a green heart"]  # the last two: wrong unguided
    seeds = list(range(len(prompts)))
    rubrics = [prompt_rubric(p) for p in prompts]
    log_p = {}
    for scale in (0.0, None):  # None: the default
        latents = pipe(prompts, seed=seeds, classifier_scale=scale, output_type="latent")
        with torch.no_grad():
            log_p[scale] = rubric_log_prob(pipe.classifier(latents, torch.zeros(len(prompts))), rubrics)
    assert log_p[None].mean() > log_p[0.0].mean() + 0.5, log_p


TURBO_RECORDED = Path(__file__).parent / "data" / "shipped_turbo_images.safetensors"


def test_shipped_turbo_model_samples_in_four_cfg_free_steps_as_recorded():
    """The Turbo student ships by name: 4 Euler steps, CFG 1 (one transformer pass per step), guided by the
    default's classifier (its folder's classifier/ names those weights: one copy in the package), and its
    images for fixed seeds are the ones recorded when it was evaluated (the guidance's bound, as above)."""
    pipe = LensPipeline.from_pretrained("shapes-tiny-turbo")
    d = pipe.defaults
    assert (d.steps, d.cfg, d.solver, d.classifier_scale, d.classifier_max_sigma) == (4, 1.0, "euler", 2.0, 0.9)
    default = LensPipeline.from_pretrained(DEFAULT_MODEL_DIR).classifier.state_dict()
    assert all(torch.equal(v, default[k]) for k, v in pipe.classifier.state_dict().items())
    calls = []
    pipe.transformer.register_forward_hook(lambda module, args, output: calls.append(output.shape[0]))
    got = pipe(PROMPTS, height=64, width=64, seed=[0, 1, 2], output_type="pt")
    assert calls == [3] * 4
    assert_as_recorded(got, load_file(TURBO_RECORDED)["square"], max_abs=1e-4, mean_abs=2e-6)


def test_shipped_models_fit_the_package_budget():
    """Everything under lensgen/assets (the RL, pretrained and Turbo models) stays under 40 MB."""
    total = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.parent.rglob("*") if p.is_file())
    assert total < 40e6, f"{total / 1e6:.1f} MB"


def test_the_default_and_its_turbo_write_words_never_trained_on_where_the_pretrained_model_writes_none():
    """The default's sign layout input (`lensgen train-signs`), and its 4-step student distilled with the layouts:
    for words held out of every training stage their signs read as the word or close to it (the judge's OCR,
    1 - normalised edit distance), the pretrained model's as nothing like it. Recorded: the default 0.708 mean
    and two exact reads, the Turbo model 0.558 and one, the pretrained model 0.0."""
    from lensgen.eval.shapes import score_image
    from lensgen.shapes.heldout import TRAIN_WORDS
    from lensgen.shapes.prompt import parse_prompt

    prompts = ['a sign that says "LENS"', 'a photo of a sign reading "WIND"', 'a sign with the word "PARK"']
    assert not {parse_prompt(p).text for p in prompts} & set(TRAIN_WORDS)
    asked, seeds = [p for p in prompts for _ in range(2)], [s for _ in prompts for s in range(2)]
    scores = {}
    for model in ("shapes-tiny", "shapes-tiny-turbo", "shapes-tiny-base"):
        images = LensPipeline.from_pretrained(model)(asked, seed=seeds)
        scores[model] = [score_image(parse_prompt(p), im)[0] for p, im in zip(asked, images)]
    for model in ("shapes-tiny", "shapes-tiny-turbo"):
        assert sum(scores[model]) / 6 >= 0.5 and scores[model].count(1.0) >= 1, scores
    assert sum(scores["shapes-tiny-base"]) / 6 <= 0.2, scores
