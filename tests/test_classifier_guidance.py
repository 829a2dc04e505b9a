"""Classifier guidance in the pipeline: rubrics from the prompt's words, the guided velocity, the classifier/
component of a model folder, its defaults and checks, the commands' --classifier-scale, and the benchmark."""

import importlib.util
import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lensgen import cli
from lensgen.errors import UserError
from lensgen.inference.classifier_guidance import NOTHING_ASKED, guided_velocity_fn, prompt_rubric
from lensgen.inference.pipeline import LensPipeline, PipelineDefaults, model_dir
from lensgen.models.latent_classifier import MAX_COUNT, LatentClassifier, LatentClassifierConfig, guidance
from lensgen.shapes.evalset import load_prompts
from lensgen.shapes.rubrics import rubrics_for
from lensgen.shapes.vocab import SHAPES

SHAPES_PROMPT = "a photo of a red circle left of a blue star"


def _classifier(channels: int, seed: int = 0) -> LatentClassifier:
    """A small random classifier, its weights rounded to fp16 (what a saved folder holds)."""
    torch.manual_seed(seed)
    clf = LatentClassifier(LatentClassifierConfig(channels=channels, width=16, depth=2))
    return clf.half().float().eval()


@pytest.fixture(scope="module")
def guided(untrained_pipeline):
    pipe = untrained_pipeline
    defaults = replace(pipe.defaults, cfg=1.0, steps=4, classifier_scale=1e4, classifier_max_sigma=0.9)
    return LensPipeline(pipe.transformer, pipe.codec, pipe.text_encoder, defaults, name="guided (untrained)",
                        classifier=_classifier(pipe.codec.token_channels))


@pytest.fixture(scope="module")
def saved(guided, tmp_path_factory):
    path = tmp_path_factory.mktemp("guided")
    guided.save_pretrained(path)
    return path


def test_the_rubric_is_read_from_the_prompt_words_exact_only_where_a_number_is_named():
    rubric = prompt_rubric("a photo of two red circles and a star")
    assert rubric["expected"] == {"circle": 2, "star": 1} and rubric["exact"] is True
    assert prompt_rubric("a photo of a red circle and a star")["exact"] is False  # "a star": at least one
    assert ("colour", {"shape": "circle", "colour": "red", "count": 2}) in \
        [(it["kind"], it["params"]) for it in rubric["items"]]
    left = prompt_rubric("a yellow star left of a green triangle")
    assert left is not None and prompt_rubric("a yellow star to the left of a green triangle") == left
    assert prompt_rubric("a watercolour of a dog on a beach") is None  # outside the Shapes grammar
    assert prompt_rubric('a photo of a sign with the word "CAT"')["expected"] == {}  # nothing the classifier reads
    # every held-out prompt's words ask the same items and counts as its ShapesEval spec; exact where it names
    # a number, which is every counting prompt (GenEval's counting task: exactly that many)
    for spec in load_prompts():
        numbered = any(o.count > 1 for o in spec.objects)
        assert prompt_rubric(spec.prompt) == {**rubrics_for(spec).to_dict(), "exact": numbered}, spec.prompt
        assert numbered or not spec.exact_count, spec.prompt


def test_the_guided_velocity_adds_the_classifier_guidance_toward_each_prompt():
    clf, grid = _classifier(4), (4, 4)
    x, sigma = torch.randn(3, 16, 4), torch.tensor([0.5, 0.5, 0.5])

    def velocity(x, sigma):
        return x * 0.5

    prompts = [SHAPES_PROMPT, "a dog", "a photo of three squares"]
    fn = guided_velocity_fn(velocity, clf, grid, prompts, 2.0, 0.8, fallback_prompts=[SHAPES_PROMPT] * 3)
    rubrics = [prompt_rubric(SHAPES_PROMPT), prompt_rubric(SHAPES_PROMPT), prompt_rubric("a photo of three squares")]
    torch.testing.assert_close(fn(x, sigma), velocity(x, sigma) + guidance(clf, x, sigma, grid, rubrics, 2.0, 0.8))
    unread = guided_velocity_fn(velocity, clf, grid, ["a dog", "a sign reading \"HI\""], 2.0, 0.8)
    assert unread is velocity  # nothing the classifier reads: no classifier pass at all
    assert guided_velocity_fn(velocity, clf, grid, prompts, 0.0, 0.8) is velocity
    plain = guided_velocity_fn(velocity, clf, grid, ["a dog", SHAPES_PROMPT], 2.0, 0.8)(x[:2], sigma[:2])
    both = guidance(clf, x[:2], sigma[:2], grid, [NOTHING_ASKED, prompt_rubric(SHAPES_PROMPT)], 2.0, 0.8)
    assert torch.equal(plain[0], velocity(x, sigma)[0]) and torch.equal(plain, velocity(x[:2], sigma) + both)


def test_the_pipeline_guides_grammar_prompts_and_leaves_the_others_alone(guided, untrained_pipeline):
    prompts, seeds = [SHAPES_PROMPT, "a watercolour of a dog"], [3, 4]
    default = guided(prompts, seed=seeds, output_type="pt")  # the folder's default scale, 1e4
    off = guided(prompts, seed=seeds, output_type="pt", classifier_scale=0)
    plain = untrained_pipeline(prompts, seed=seeds, output_type="pt", steps=4, cfg=1.0)
    assert torch.equal(off, plain)  # scale 0 is the model as it samples without a classifier
    assert not torch.allclose(default[0], off[0], atol=1e-3)  # the grammar prompt is steered
    torch.testing.assert_close(default[1], off[1])  # the other prompt is not
    stronger = guided(prompts, seed=seeds, output_type="pt", classifier_scale=3e4)
    assert not torch.allclose(stronger[0], default[0], atol=1e-3)
    for bad in (-1, float("nan"), float("inf"), True):
        with pytest.raises(UserError, match="classifier_scale must be a finite number >= 0"):
            guided(SHAPES_PROMPT, classifier_scale=bad)
    with pytest.raises(UserError, match="has no classifier"):
        untrained_pipeline(SHAPES_PROMPT, steps=1, classifier_scale=5)


def test_a_reasoner_rewrite_outside_the_grammar_falls_back_to_the_user_words(guided):
    def rewrite(prompts, aspect, seeds):
        return [f"{p}, drawn carefully" for p in prompts]  # the grammar cannot read it

    rewritten = guided(SHAPES_PROMPT, seed=1, output_type="pt", reasoner=rewrite)
    unguided = guided(SHAPES_PROMPT, seed=1, output_type="pt", reasoner=rewrite, classifier_scale=0)
    assert not torch.allclose(rewritten, unguided, atol=1e-3)


def test_the_classifier_is_saved_in_fp16_and_loads_to_the_same_images(guided, saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["classifier"] == ["lensgen", "LatentClassifier"]
    assert index["lensgen"]["classifier_scale"] == 1e4 and index["lensgen"]["classifier_max_sigma"] == 0.9
    with safe_open(saved / "classifier" / "latent_classifier.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    loaded = LensPipeline.from_pretrained(saved)
    assert next(loaded.classifier.parameters()).dtype == torch.float32
    torch.testing.assert_close(loaded(SHAPES_PROMPT, seed=2, output_type="pt"),
                               guided(SHAPES_PROMPT, seed=2, output_type="pt"), rtol=1e-4, atol=1e-4)


def test_folders_whose_classifier_settings_do_not_hold_are_refused(saved, untrained_pipeline, tmp_path):
    def variant(name: str, edit=None, drop_classifier=False) -> Path:
        path = tmp_path / name
        shutil.copytree(saved, path)
        if drop_classifier:
            shutil.rmtree(path / "classifier")
        if edit:
            index = json.loads((path / "model_index.json").read_text())
            edit(index)
            (path / "model_index.json").write_text(json.dumps(index))
        return path

    with pytest.raises(UserError, match="no classifier/ sub-folder"):
        LensPipeline.from_pretrained(variant("listed-but-missing", drop_classifier=True))
    no_listing = variant("scale-without-classifier", lambda i: i.pop("classifier"), drop_classifier=True)
    with pytest.raises(UserError, match="classifier_scale 10000 by default, but the pipeline has no classifier"):
        LensPipeline.from_pretrained(no_listing)
    with pytest.raises(UserError, match="lensgen.classifier_scale must be a finite number >= 0"):
        LensPipeline.from_pretrained(variant("bad-scale", lambda i: i["lensgen"].update(classifier_scale=-2)))
    with pytest.raises(UserError, match=r"lensgen.classifier_max_sigma must be a noise level in \(0, 1\)"):
        LensPipeline.from_pretrained(variant("bad-sigma", lambda i: i["lensgen"].update(classifier_max_sigma=1)))
    pipe = untrained_pipeline
    with pytest.raises(UserError, match="the classifier reads 3-channel tokens but the codec gives"):
        LensPipeline(pipe.transformer, pipe.codec, pipe.text_encoder, PipelineDefaults(), classifier=_classifier(3))


def test_a_classifier_folder_may_name_another_that_holds_its_weights(saved, tmp_path):
    """`weights_from` in a classifier's config: two model folders share one classifier's bytes (the shipped
    Turbo model reads the default's); a copy of such a folder elsewhere finds the shipped one, a missing
    target is a clear error."""
    shared = tmp_path / "models" / "b" / "classifier"
    shared.mkdir(parents=True)
    config = json.loads((saved / "classifier" / "latent_classifier.json").read_text())
    (shared / "latent_classifier.json").write_text(json.dumps({**config, "weights_from": "../../a/classifier"}))
    with pytest.raises(UserError, match="its weights are in .*a/classifier .weights_from., which holds no"):
        LatentClassifier.from_pretrained(shared)
    shutil.copytree(saved / "classifier", tmp_path / "models" / "a" / "classifier")
    got, want = LatentClassifier.from_pretrained(shared), LatentClassifier.from_pretrained(saved / "classifier")
    assert all(torch.equal(v, want.state_dict()[k]) for k, v in got.state_dict().items())
    turbo = tmp_path / "copy" / "shapes-tiny-turbo"
    shutil.copytree(model_dir("shapes-tiny-turbo"), turbo)
    assert LatentClassifier.from_pretrained(turbo / "classifier").config.width == 128  # the shipped default's


def test_generate_and_eval_take_classifier_scale(saved, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert cli.main(["generate", SHAPES_PROMPT, "--model", str(saved), "--classifier-scale", "50", "-o", str(out),
                     "-q"]) == 0
    assert Image.open(out).text["classifier_scale"] == "50.0"
    assert cli.main(["generate", SHAPES_PROMPT, "--model", str(saved), "-o", str(out), "-q"]) == 0
    assert Image.open(out).text["classifier_scale"] == "10000.0"  # the folder's default, written down
    assert cli.main(["generate", "x", "--model", "shapes-tiny-base", "--classifier-scale", "5", "-o", str(out)]) == 2
    assert "has no classifier (classifier/) to guide with" in capsys.readouterr().err
    assert cli.main(["generate", "x", "--model", str(saved), "--classifier-scale", "-1", "-o", str(out)]) == 2
    assert "--classifier-scale must be a finite number >= 0" in capsys.readouterr().err
    assert cli.main(["eval", "shapes", "--ground-truth", "--classifier-scale", "5", "--limit", "1"]) == 2
    assert "--classifier-scale goes with --model" in capsys.readouterr().err
    assert cli.main(["eval", "shapes", "--model", str(saved), "--classifier-scale", "0", "--tasks", "single_object",
                     "--limit", "1", "--n-per-prompt", "1", "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    extra = json.loads((tmp_path / "eval" / "results.json").read_text())["extra"]
    assert extra["classifier_scale"] == 0 and "classifier guidance" not in extra["source"]


def _benchmark():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "classifier_guidance.py"
    spec = importlib.util.spec_from_file_location("classifier_guidance", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_guidance_benchmark_scores_training_prompts_and_writes_eval_results(saved, tmp_path, capsys):
    """benchmarks/classifier_guidance.py: per-dimension rewards on RL training prompts at each scale (scale 0
    is the model as it samples), and held-out ShapesEval results that `lensgen eval compare` reads."""
    from lensgen.data.rl_prompts.grammar import generate_shapes_prompts
    from lensgen.data.rl_prompts.records import jsonl, load_rl_prompts
    from lensgen.eval.compare import load_scores
    from lensgen.eval.shapes import evaluate, pipeline_generator

    records, _ = generate_shapes_prompts(n=40, seed=0)
    (tmp_path / "rl.jsonl").write_text(jsonl(records))
    bench = _benchmark()
    scores = bench.main([str(saved), "--scales", "0", "1e4", "--prompt-set", str(tmp_path / "rl.jsonl"),
                         "--num-prompts", "3", "--n-per-prompt", "1", "--threads", "1"])
    assert set(scores) == {0.0, 1e4} and scores[0.0]["all"]["images"] == 3
    assert all(0 <= s["rubric"] <= 1 and 0 <= s["geneval"] <= 1 for by_dim in scores.values() for s in by_dim.values())
    assert "| 10000 | all |" in capsys.readouterr().out
    # --agreement: every shape a prompt asks is found or missed by the judge, and the classifier's yes counted
    agreement = bench.main([str(saved), "--scales", "0", "--prompt-set", str(tmp_path / "rl.jsonl"), "--agreement",
                            "--num-prompts", "6", "--n-per-prompt", "1", "--threads", "1"])[0.0]
    asked = [r.prompt for r in random.Random(0).sample(records, 6)]
    assert sum(r["found"] + r["missed"] for r in agreement.values()) == \
        sum(len((prompt_rubric(p) or NOTHING_ASKED)["expected"]) for p in asked) > 0
    assert "| 0 | all |" in capsys.readouterr().out
    sure = LensPipeline.from_pretrained(saved)
    last = sure.classifier.head[-1]
    last.weight.data.zero_()
    last.bias.data.fill_(-30.0)
    last.bias.data[:len(SHAPES) * (MAX_COUNT + 1)].view(len(SHAPES), MAX_COUNT + 1)[:, MAX_COUNT] = 30.0
    for row in bench.judge_agreement(sure, load_rl_prompts(tmp_path / "rl.jsonl")[:4], 0.0, 1).values():
        assert row["found, classifier yes"] == row["found"] and row["missed, classifier yes"] == row["missed"]
    bench.main([str(saved), "--prompts", "eval", "--scales", "0", "--limit", "1", "--n-per-prompt", "1",
                "--threads", "1", "--out", str(tmp_path / "eval")])
    plain = evaluate(pipeline_generator(LensPipeline.from_pretrained(saved), 64, 64, None, None, classifier_scale=0),
                     limit=1, n_per_prompt=1, progress=False)
    assert load_scores(tmp_path / "eval-0") == {(s.task, s.id, s.seed): s.score for s in plain.samples}
    with pytest.raises(SystemExit):
        bench.main([str(saved), "--prompts", "eval", "--agreement"])
    with pytest.raises(SystemExit, match="has no classifier/: give one with --classifier"):
        bench.main(["shapes-tiny-base", "--threads", "1"])


def test_guided_sampling_runs_under_the_flop_counter_and_costs_the_classifier_passes(guided):
    """The benchmarks count a call's FLOPs (`lensgen.compute.flop_counter`); the guidance's gradient must run
    under it, and it costs more than the unguided call."""
    from lensgen.compute import flop_counter

    flops = {}
    for scale in (0.0, 1e4):
        with flop_counter() as counter:
            guided(SHAPES_PROMPT, seed=0, classifier_scale=scale)
        flops[scale] = counter.get_total_flops()
    assert flops[1e4] > flops[0.0] > 0
