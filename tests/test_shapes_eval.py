"""ShapesEval: prompt files, GenEval scoring rules on hand-built scenes, ceiling and floor."""

import pytest

from lensgen.errors import UserError
from lensgen.eval.shapes import (
    SampleResult,
    evaluate,
    format_table,
    geneval_check,
    ground_truth_generator,
    noise_generator,
    standard_errors,
)
from lensgen.shapes import render
from lensgen.shapes.evalset import TASKS, build_prompts, load_prompts, prompt_path
from lensgen.shapes.groundtruth import scene_for_prompt
from lensgen.shapes.heldout import HELDOUT_WORDS, is_heldout_pair, is_heldout_position
from lensgen.shapes.judge import detect
from lensgen.shapes.prompt import parse_prompt
from lensgen.shapes.scene import Background, ObjectSpec, Scene


def test_committed_prompt_files_match_the_seeded_build():
    built = build_prompts()
    loaded = load_prompts()
    assert [s.to_dict() for s in loaded] == [s.to_dict() for s in built]
    assert {s.task for s in loaded} == set(TASKS)
    assert len({s.prompt for s in loaded}) == len(loaded)
    assert all(prompt_path(t).exists() for t in TASKS)
    for s in loaded:  # each record's text says what its structure says
        parsed = parse_prompt(s.prompt)
        assert parsed.objects == s.objects and parsed.relation == s.relation and parsed.text == s.text
        if s.task == "text":
            assert s.text in HELDOUT_WORDS
        if s.task == "color_attr":
            a, b = s.objects
            assert is_heldout_pair((a.colour, a.shape), (b.colour, b.shape))
        if s.task == "position":
            assert is_heldout_position(s.objects[0].shape, s.relation.relation, s.objects[1].shape)
    with pytest.raises(UserError):
        load_prompts(["nope"])


def _scene(*objs):
    return Scene([ObjectSpec(*o) for o in objs], Background("plain", 140))


def _check(prompt, scene, exact=False):
    spec = parse_prompt(prompt)
    spec.exact_count = exact
    return geneval_check(spec, detect(render(scene, 64, 64)))[0]


def test_scoring_rules_on_hand_built_scenes():
    two_left = _scene(("circle", "red", 0.25, 0.5, 0.16), ("star", "blue", 0.75, 0.5, 0.16))
    assert _check("a photo of a red circle left of a blue star", two_left)
    assert not _check("a photo of a red circle right of a blue star", two_left)  # wrong position
    assert not _check("a photo of a blue circle and a red star", two_left)  # swapped colours
    assert _check("a photo of a circle and a star", two_left)
    three = _scene(*[("heart", "green", x, y, 0.14) for x, y in ((0.2, 0.25), (0.75, 0.25), (0.5, 0.75))])
    assert _check("a photo of three hearts", three, exact=True)
    assert not _check("a photo of two hearts", three, exact=True)  # counting is exact
    assert _check("a photo of two hearts", three, exact=False)  # other tasks need "at least"
    assert not _check("a photo of four hearts", three, exact=True)
    diagonal = _scene(("square", "white", 0.3, 0.3, 0.15), ("triangle", "black", 0.36, 0.75, 0.15))
    assert _check("a photo of a square above a triangle", diagonal)
    assert not _check("a photo of a square left of a triangle", diagonal)  # within GenEval's margin


def test_ground_truth_is_the_ceiling_and_noise_the_floor():
    specs = [s for t in TASKS if t != "text" for s in load_prompts([t], limit=3)] + load_prompts(["text"], limit=1)
    for spec in specs:
        scene = scene_for_prompt(spec, 0, 1.0)
        assert scene_for_prompt(spec, 0, 1.0) == scene
    gt = evaluate(ground_truth_generator(specs, 64, 64), prompts=specs, n_per_prompt=2, batch_size=8, progress=False)
    assert gt.overall >= 0.98 and gt.geneval_overall >= 0.98
    assert len(gt.samples) == 2 * len(specs) and {s.seed for s in gt.samples} == {0, 1}
    floor = evaluate(noise_generator(64, 64), prompts=specs, n_per_prompt=1, progress=False)
    assert floor.overall <= 0.05
    table = format_table(gt)
    assert "| counting |" in table and "overall" in table


def test_standard_errors_take_the_prompt_as_the_unit():
    """Two prompts of a task scoring 1,1 and 0,0: prompt means 1 and 0, std 0.707 over 2 prompts -> 0.5
    (not the 0.29 four independent images would give); a second task's prompts 1,0 / 1,0 agree -> 0."""
    def sample(task, prompt, score):
        return SampleResult(prompt, task, prompt, 0, score)

    samples = [sample("a", "a1", 1.0), sample("a", "a1", 1.0), sample("a", "a2", 0.0), sample("a", "a2", 0.0),
               sample("b", "b1", 1.0), sample("b", "b1", 0.0), sample("b", "b2", 1.0), sample("b", "b2", 0.0)]
    per_task, overall = standard_errors(samples)
    assert per_task == pytest.approx({"a": 0.5, "b": 0.0})
    assert overall == pytest.approx(0.25)  # sqrt(0.5^2 + 0^2) / 2 tasks
    per_task, overall = standard_errors(samples + [sample("c", "c1", 1.0)])
    assert per_task["c"] is None and overall is None  # one prompt: no spread to measure

    specs = load_prompts(["single_object"], limit=3) + load_prompts(["counting"], limit=3)
    half = evaluate(lambda p, s: [ground_truth_generator(specs, 64, 64)([q], [d])[0] if i % 2 == 0 else
                                  noise_generator(64, 64)([q], [d])[0] for i, (q, d) in enumerate(zip(p, s))],
                    prompts=specs, n_per_prompt=2, batch_size=2, progress=False)
    assert set(half.tasks_se) == {"single_object", "counting"} and half.overall_se is not None
    assert f"{half.overall:.3f} ± {half.overall_se:.3f}" in format_table(half)


def test_evaluate_calls_any_batched_callable():
    specs = load_prompts(["single_object"], limit=2)
    calls = []

    def generate(prompts, seeds):
        calls.append((list(prompts), list(seeds)))
        return ground_truth_generator(specs, 64, 96)(prompts, seeds)

    res = evaluate(generate, prompts=specs, n_per_prompt=3, batch_size=4, seed=10, progress=False)
    assert [len(p) for p, _ in calls] == [4, 2] and calls[0][1] == [10, 11, 12, 10]
    assert res.tasks == {"single_object": 1.0}

    with pytest.raises(ValueError):
        evaluate(lambda p, s: [], prompts=specs, n_per_prompt=1, progress=False)


def test_eval_cli_runs_a_model_folder(tmp_path, untrained_pipeline):
    """`lensgen eval shapes --model DIR` samples the pipeline and scores what it draws."""
    import json

    from lensgen.cli import main
    untrained_pipeline.save_pretrained(tmp_path / "model")
    out = tmp_path / "eval"
    assert main(["eval", "shapes", "--model", str(tmp_path / "model"), "--tasks", "single_object,counting",
                 "--limit", "2", "--n-per-prompt", "2", "--steps", "2", "--no-progress", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert set(result["tasks"]) == {"single_object", "counting"}
    assert len(result["samples"]) == 2 * 2 * 2 and 0 <= result["overall"] <= 1
    assert "model" in (out / "results.md").read_text()
    # the settings sampled with are recorded: steps as given, CFG the model's default
    default_cfg = json.loads((tmp_path / "model" / "model_index.json").read_text())["lensgen"]["cfg"]
    assert result["extra"]["steps"] == 2 and result["extra"]["cfg"] == default_cfg
    assert f"CFG {default_cfg:g}" in (out / "results.md").read_text()


def test_eval_save_images_keeps_every_scored_image_with_its_score(tmp_path, capsys):
    """--save-images: OUT/images/TASK/ID-SEED.png with prompt, seed, score and reason, and an index.jsonl."""
    import json

    from PIL import Image

    from lensgen.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "shapes", "--noise", "--tasks", "single_object,text", "--limit", "1", "--n-per-prompt",
                 "2", "--seed", "4", "--no-progress", "--out", str(out), "--save-images"]) == 0
    index = [json.loads(line) for line in (out / "images" / "index.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())["samples"]
    assert len(index) == len(results) == 4
    for entry, sample in zip(index, results):
        assert entry["file"] == f"{sample['task']}/{sample['id']}-{sample['seed']}.png"
        assert {k: entry[k] for k in ("prompt", "seed", "score", "reason")} == \
            {k: sample[k] for k in ("prompt", "seed", "score", "reason")}
        text = Image.open(out / "images" / entry["file"]).text
        assert text["prompt"] == entry["prompt"] and text["seed"] == str(entry["seed"])
        assert text["score"] == str(entry["score"]) and text["reason"] == entry["reason"]
        assert text["model"] == "noise" and text["size"] == "64x64" and "steps" not in text
    assert {e["seed"] for e in index} == {4, 5} and any(e["reason"] for e in index)  # noise fails, with a reason
    assert "wrote 4 images" in capsys.readouterr().out


def test_eval_save_images_from_a_model_records_its_settings(tmp_path):
    import json

    from PIL import Image

    from lensgen.cli import main
    from lensgen.inference.pipeline import DEFAULT_MODEL_DIR

    out = tmp_path / "eval"
    assert main(["eval", "shapes", "--model", str(DEFAULT_MODEL_DIR), "--tasks", "single_object", "--limit", "1",
                 "--n-per-prompt", "1", "--steps", "1", "--no-progress", "--out", str(out), "--save-images"]) == 0
    (entry,) = [json.loads(line) for line in (out / "images" / "index.jsonl").read_text().splitlines()]
    text = Image.open(out / "images" / entry["file"]).text
    assert text["steps"] == "1" and text["cfg"] == "1.0" and text["model"] == str(DEFAULT_MODEL_DIR)
    assert text["score"] == str(entry["score"]) and text["id"] == entry["id"] == "single_object-000"


def test_eval_save_images_needs_out_and_bad_settings_fail_before_loading(tmp_path, capsys, monkeypatch):
    from lensgen.cli import main
    from lensgen.inference.pipeline import DEFAULT_MODEL_DIR, LensPipeline

    monkeypatch.setattr(LensPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded before checking"))
    assert main(["eval", "shapes", "--noise", "--save-images"]) == 2
    assert "--save-images needs --out" in capsys.readouterr().err
    for flags, message in ((["--steps", "0"], "--steps must be"), (["--cfg", "nan"], "--cfg must be"),
                           (["--size", "60x64"], "multiples of 8")):
        assert main(["eval", "shapes", "--model", str(DEFAULT_MODEL_DIR), *flags]) == 2
        assert message in capsys.readouterr().err


def test_compare_pairs_images_and_its_cli_reads_eval_folders(tmp_path, capsys):
    """B - A per task on matched (prompt, seed) images, with the paired standard error over prompts: two
    prompts gaining +1 and 0 -> differences 1 and 0 -> +0.5 ± 0.5; images only one run scored are ignored."""
    import json

    from lensgen.cli import main
    from lensgen.eval.compare import compare, load_scores

    def run(folder, rows):
        samples = [{"id": i, "task": t, "prompt": i, "seed": sd, "score": v, "reason": ""} for t, i, sd, v in rows]
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "results.json").write_text(json.dumps({"samples": samples}))
        return tmp_path / folder

    a = run("a", [("counting", "p1", 0, 0.0), ("counting", "p1", 1, 0.0), ("counting", "p2", 0, 1.0),
                  ("counting", "p2", 1, 1.0), ("colors", "q1", 0, 1.0), ("colors", "q2", 0, 0.0)])
    b = run("b", [("counting", "p1", 0, 1.0), ("counting", "p1", 1, 1.0), ("counting", "p2", 0, 1.0),
                  ("counting", "p2", 1, 1.0), ("counting", "p3", 0, 1.0), ("colors", "q1", 0, 1.0),
                  ("colors", "q2", 0, 0.0)])
    c = compare(load_scores(a), load_scores(b / "results.json"))
    assert c.images == 6  # p3 is in B only
    counting, colors = c.tasks  # ShapesEval's task order
    assert (counting.task, counting.a, counting.b, counting.prompts) == ("counting", 0.5, 1.0, 2)
    assert counting.diff == 0.5 and counting.se == pytest.approx(0.5)
    assert colors.diff == 0 and colors.se == 0
    assert c.overall_se == pytest.approx(0.25)

    assert main(["eval", "compare", str(a), str(b), "--out", str(tmp_path / "cmp.md")]) == 0
    table = (tmp_path / "cmp.md").read_text()
    assert "| counting | 2 | 0.500 | 1.000 | +0.500 ± 0.500 |" in table and "| colors | 2 | 0.500 | 0.500 | +0.000" in table
    assert table in capsys.readouterr().out

    other = run("other", [("counting", "p9", 0, 1.0)])
    for args, message in ((["eval", "compare", str(a), str(other)], "share no"),
                          (["eval", "compare", str(tmp_path / "none"), str(b)], "no ShapesEval results")):
        assert main(args) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "a" / "results.json").write_text("{}")
    assert main(["eval", "compare", str(a), str(b)]) == 2
    assert "malformed" in capsys.readouterr().err
