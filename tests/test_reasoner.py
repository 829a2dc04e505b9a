"""The Reasoner: the offline Shapes planner (its scenes satisfy the prompt by the judge's own rules), the
LLM backend against a hostile local chat server, `lensgen reason`, and LensPipeline's reasoner option."""

import json
import logging
import time
import warnings

import pytest
import torch
from chat_server import GOOD, KEY, ChatServer

import lensgen.cli
from lensgen.errors import LensgenWarning, UserError
from lensgen.eval.shapes import score_image
from lensgen.reasoner import make_reasoner
from lensgen.reasoner.llm import SYSTEM_PROMPT, LLMReasoner, ReasonerConfig, quoted_texts
from lensgen.reasoner.shapes import ShapesReasoner
from lensgen.shapes.evalset import load_prompts
from lensgen.shapes.prompt import parse_prompt
from lensgen.shapes.render import render

# ---- the Shapes planner --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["single_object", "two_object", "counting", "colors", "position", "color_attr"])
def test_shapes_plan_satisfies_every_held_out_prompt_by_the_judges_rules(task):
    reasoner = ShapesReasoner()
    for spec in load_prompts([task], limit=3):
        for seed, (h, w) in ((0, (64, 64)), (1, (48, 96))):
            _, scene = reasoner.plan(spec.prompt, aspect=w / h, seed=seed)
            score, reason = score_image(spec, render(scene, 4 * h, 4 * w))
            assert score == 1.0, (spec.prompt, reason)
            text = reasoner.rewrite(spec.prompt, aspect=w / h, seed=seed).text
            for obj in spec.objects:  # every asked object is named, with its colour when one was asked
                assert obj.shape in text and (obj.colour is None or f"{obj.colour} {obj.shape}" in text)


def test_shapes_rewrite_states_relation_counts_and_quoted_word():
    r = ShapesReasoner().rewrite("two red stars left of a blue circle", seed=3)
    assert not r.fallback and r.backend == "shapes"
    assert "The two red stars are to the left of the blue circle." in r.text
    assert "In total there are three objects (two stars, one circle)" in r.text
    assert 40 <= len(r.text.split()) <= 140
    sign = ShapesReasoner().rewrite('a photo of a green hexagon and a sign that says "OPEN"', seed=0)
    assert '"OPEN"' in sign.text and "green hexagon" in sign.text
    only_sign = ShapesReasoner().rewrite('a sign reading "HELLO"', aspect=2.0)
    assert '"HELLO"' in only_sign.text and not only_sign.fallback


def test_shapes_rewrite_is_deterministic_per_seed_and_open_colours_are_chosen():
    reasoner = ShapesReasoner()
    a, b = reasoner.rewrite("three stars", seed=5), reasoner.rewrite("three stars", seed=5)
    assert a == b
    assert len({reasoner.rewrite("three stars", seed=s).text for s in range(6)}) > 1  # layouts differ by seed
    colours = {w for s in range(6) for w in reasoner.rewrite("a circle", seed=s).text.split()}
    assert colours & {"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"}


def test_shapes_reasoner_passes_through_what_it_cannot_read_and_reads_lead_ins():
    reasoner = ShapesReasoner()
    for prompt in ("a cat on a sofa", "seven red circles", ""):
        r = reasoner.rewrite(prompt)
        assert r.text == prompt and r.fallback and "not a Shapes prompt" in r.reason
    assert not reasoner.rewrite("Draw two blue squares.").fallback
    assert reasoner(["a red circle", "a dog"], aspect=1.0, seeds=[0, 1])[1] == "a dog"


def test_make_reasoner_names_the_backends():
    assert make_reasoner("none").rewrite("x").text == "x"
    with pytest.raises(UserError, match="none, shapes, llm"):
        make_reasoner("gpt")


# ---- the LLM backend against a hostile server ------------------------------------------------------------

@pytest.fixture
def chat():
    server = ChatServer()
    yield server
    server.close()


def llm(chat, monkeypatch, **extra) -> LLMReasoner:
    monkeypatch.setenv("LENSGEN_TEST_REASONER_KEY", KEY)
    fields = {"base_url": chat.url, "model": "test-llm", "api_key_env": "LENSGEN_TEST_REASONER_KEY", "timeout_s": 0.3,
              "max_retries": 3, "max_bad_answers": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    config = ReasonerConfig(**{**fields, **extra})
    return LLMReasoner(config)


@pytest.mark.parametrize("scenario,requests", [("plain", 1), ("ratelimited", 2), ("flaky", 3), ("slow", 2),
                                               ("malformed", 2), ("truncated", 2), ("terse", 2), ("fenced", 1)])
def test_llm_rewrites_through_transient_failures_and_bad_answers(chat, monkeypatch, scenario, requests):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LensgenWarning)  # no fallback warning on the way
        r = llm(chat, monkeypatch).rewrite(f"{scenario} a boat on a lake", aspect=1.5, seed=4)
    assert r.text == GOOD and not r.fallback and r.backend == "llm"
    assert chat.calls[scenario] == requests
    body = chat.bodies[-1]
    assert body["model"] == "test-llm" and body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert body["messages"][1]["content"][0]["text"] == f"{scenario} a boat on a lake"


def test_llm_asks_again_when_a_quoted_text_is_lost(chat, monkeypatch):
    prompt = 'quoted a boat with a sign that says "SEA BREEZE"'
    assert quoted_texts(prompt) == ["SEA BREEZE"]
    r = llm(chat, monkeypatch).rewrite(prompt)
    assert '"SEA BREEZE"' in r.text and chat.calls["quoted"] == 2


@pytest.mark.parametrize("scenario,why", [("refuses", "unusable answer: refusal"), ("down", "HTTP 503")])
def test_llm_failure_falls_back_to_the_prompt_with_a_warning_and_no_key(chat, monkeypatch, caplog, scenario, why):
    caplog.set_level(logging.DEBUG)
    with pytest.warns(LensgenWarning, match="using the prompt as typed") as record:
        r = llm(chat, monkeypatch).rewrite(f"{scenario} a boat")
    assert r.text == f"{scenario} a boat" and r.fallback and why in r.reason
    assert chat.calls[scenario] == (2 if scenario == "refuses" else 4)  # max_bad_answers + 1, max_retries + 1
    assert KEY not in caplog.text and all(KEY not in str(w.message) for w in record)


def test_llm_wrong_key_and_time_budget_fall_back(chat, monkeypatch):
    reasoner = llm(chat, monkeypatch)
    monkeypatch.setenv("LENSGEN_TEST_REASONER_KEY", "wrong")
    with pytest.warns(LensgenWarning, match="refused the credentials"):
        assert reasoner.__class__(reasoner.config).rewrite("plain x").fallback
    budget = llm(chat, monkeypatch, total_timeout_s=0.05, max_retries=50, backoff_base_s=0.04)
    start = time.monotonic()
    with pytest.warns(LensgenWarning, match="no answer within 0.05 s"):
        assert budget.rewrite("down a boat").fallback
    assert time.monotonic() - start < 5  # gave up on the budget, not after 50 retries


def test_llm_needs_an_endpoint_at_start(monkeypatch):
    for name in ("LENSGEN_REASONER_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match="no reasoner endpoint"):
        LLMReasoner(ReasonerConfig(model="m"))


# ---- the command and the pipeline option -----------------------------------------------------------------


def test_cli_reason_shapes_llm_and_errors(chat, monkeypatch, capsys):
    assert lensgen.cli.main(["reason", "three purple hexagons", "--size", "96x48", "--seed", "2"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == ShapesReasoner().rewrite("three purple hexagons", aspect=2.0, seed=2).text
    monkeypatch.setenv("LENSGEN_REASONER_BASE_URL", chat.url)
    monkeypatch.setenv("LENSGEN_REASONER_MODEL", "test-llm")
    monkeypatch.setenv("LENSGEN_TEST_REASONER_KEY", KEY)
    assert lensgen.cli.main(["reason", "plain a boat", "--backend", "llm", "--json",
                             "--set", "api_key_env=LENSGEN_TEST_REASONER_KEY"]) == 0
    assert json.loads(capsys.readouterr().out) == {"prompt": "plain a boat", "text": GOOD, "backend": "llm",
                                                   "fallback": False, "reason": ""}
    assert lensgen.cli.main(["reason", "x", "--backend", "llm", "--set", "timeout_s=-1"]) == 2
    assert "timeout_s" in capsys.readouterr().err


def test_pipeline_reasoner_option_samples_the_rewritten_prompt(shipped_pipeline):
    torch.set_num_threads(1)
    reasoner = ShapesReasoner()
    prompts, seeds = ["a yellow star left of a green triangle", "a cat"], [3, 4]
    # without the classifier's guidance, which reads the user's words where the rewrite is outside the grammar
    # (tests/test_classifier_guidance.py)
    settings = {"height": 32, "width": 48, "steps": 2, "seed": seeds, "output_type": "pt", "classifier_scale": 0}
    got = shipped_pipeline(prompts, reasoner=reasoner, **settings)
    rewritten = reasoner(prompts, aspect=48 / 32, seeds=seeds)
    assert rewritten[0] != prompts[0] and rewritten[1] == "a cat"
    assert parse_prompt(prompts[0]).relation is not None
    want = shipped_pipeline(rewritten, **settings)
    plain = shipped_pipeline(prompts, **settings)
    torch.testing.assert_close(got, want)
    assert (got[0] - plain[0]).abs().max() > 1e-3  # the rewrite reached the model


def test_shapes_eval_reasoner_option_rewrites_prompts_but_scores_the_originals(capsys):
    from lensgen.eval.shapes import reasoned_generator

    seen = []

    def generate(prompts, seeds):
        seen.append((list(prompts), list(seeds)))
        return ["image"] * len(prompts)

    wrapped = reasoned_generator(generate, ShapesReasoner(), aspect=1.0)
    assert wrapped(["two blue squares", "a dog"], [4, 5]) == ["image", "image"]
    assert seen == [([ShapesReasoner().rewrite("two blue squares", seed=4).text, "a dog"], [4, 5])]
    assert lensgen.cli.main(["eval", "shapes", "--ground-truth", "--reasoner", "shapes", "--limit", "1"]) == 2
    assert "--reasoner goes with --model" in capsys.readouterr().err
