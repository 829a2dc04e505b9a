"""RL rewards: the Shapes rubric and GenEval rewards on ground truth and on junk, the VLM judge against a
hostile local chat-completions server, weighted sums, building from config, async scoring, logged stats."""

import base64
import io
import json
import logging
import math
import threading
import time
from collections import Counter

import numpy as np
import pytest
import torch
from chat_server import CountingServer
from PIL import Image

from lensgen.data.caption.client import TransientError
from lensgen.errors import UserError
from lensgen.rl.rewards import (
    GLOBAL_RULE,
    AsyncRewards,
    GenEvalReward,
    RewardResult,
    ShapesRubricReward,
    VLMJudgeReward,
    WeightedReward,
    build_reward,
    parse_verdict,
    reward_stats,
)
from lensgen.shapes import parse_prompt, render
from lensgen.shapes.groundtruth import scene_for_prompt
from lensgen.shapes.rubrics import DIMENSIONS, rubrics_for

PROMPTS = ["a photo of a red circle left of a blue star", "a photo of three stars",
           "a photo of a green square and a yellow heart", 'a sign that says "OPEN"']


def ground_truth(prompt: str, seed: int = 0, size: int = 128) -> Image.Image:
    return render(scene_for_prompt(parse_prompt(prompt), seed), size, size)


def blank(size: int = 128) -> Image.Image:
    return Image.new("RGB", (size, size), (128, 128, 128))


def noise(seed: int, size: int = 128) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8))


# ---------------------------------------------------------------- Shapes rubric and GenEval


def test_rubric_and_geneval_rewards_high_on_ground_truth_low_on_junk():
    images = [ground_truth(p) for p in PROMPTS] + [blank(), noise(1)]
    prompts = PROMPTS + PROMPTS[:2]
    stored = [json.loads(json.dumps(rubrics_for(p).to_dict())) for p in PROMPTS]  # as in the RL prompt file
    rubric = ShapesRubricReward()(images, prompts, stored + [None, None])
    assert rubric.scores.dtype == torch.float32 and rubric.valid.all()
    assert (rubric.scores[:4] > 0.9).all() and (rubric.scores[4:] < 0.1).all(), rubric.scores
    derived = ShapesRubricReward(workers=2)(images[:4], PROMPTS, [None] * 4)  # None: derive from the prompt
    assert torch.equal(derived.scores, rubric.scores[:4]) and derived.details == rubric.details[:4]
    relation = rubric.details[0]
    assert {it["dimension"] for it in relation["items"]} == {"attributes", "colour", "quantity", "spatial"}
    assert all(it["score"] == 1.0 for it in relation["items"]) and relation["global"] > 0.9
    assert all(it["dimension"] in DIMENSIONS for d in rubric.details for it in d["items"])
    assert rubric.details[4]["global"] == 0.0 and "global rule" in rubric.details[4]["reason"]

    geneval = GenEvalReward()(images, prompts, [None] * len(images))
    assert geneval.scores.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0] and geneval.valid.all()
    failed = geneval.details[4]
    assert failed["reason"] and failed["items"] == [] and failed["global"] is None


def test_rubric_items_reward_is_the_item_mean_without_the_global_rule():
    """The curriculum reward: the items' mean alone. A blue star where a red one is asked keeps its shape
    item's full credit (the strict total gates it by the failed colour item); an extra object costs the
    strict total (global rule), not the item mean; ground truth scores 1 under both."""
    prompts = ["a photo of a red star", "a photo of a red star", "a photo of two blue squares"]
    images = [ground_truth("a photo of a blue star"), ground_truth("a photo of a red star"),
              ground_truth("a photo of two blue squares and a green heart")]  # the heart is extra
    strict = ShapesRubricReward()(images, prompts, [None] * 3)
    items = build_reward({"rubric_items": 1.0})(images, prompts, [None] * 3)
    for i, detail in enumerate(strict.details):
        mean = sum(it["score"] for it in detail["items"]) / len(detail["items"])  # every item weighs 1 here
        assert items.scores[i].item() == pytest.approx(mean)
    assert items.scores[0] == pytest.approx(1 / 3) and strict.scores[0] < 0.15  # star 1, red 0, one red star 0
    assert items.scores[1] == pytest.approx(1.0, abs=1e-6)
    assert items.scores[2] == pytest.approx(1.0, abs=1e-6) and strict.scores[2] < 0.8  # no global-rule penalty


def test_rubric_rewards_take_the_pair_shape_credit():
    """reward.shape_credit reaches the shape items: a circle drawn for a hexagon earns less under "pair"
    (the two shapes are 0.011 apart in template distance) than under "fixed"; a recognised shape earns
    the same under both; an unknown margin is a user error naming the field."""
    prompts = ["a photo of a red hexagon", "a photo of a red hexagon"]
    images = [ground_truth("a photo of a red circle"), ground_truth("a photo of a red hexagon")]
    fixed = build_reward({"rubric_items": 1.0})(images, prompts, [None] * 2)
    pair = build_reward({"rubric_items": 1.0}, shape_credit="pair")(images, prompts, [None] * 2)
    shape = [[it["score"] for it in d["items"] if it["dimension"] == "attributes"][0] for d in pair.details]
    assert pair.scores[0] < fixed.scores[0] - 0.05 and 0 <= shape[0] < 0.3
    assert pair.scores[1] == pytest.approx(fixed.scores[1]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(UserError, match="reward.shape_credit: 'wide'"):
        build_reward({"rubric": 1.0}, shape_credit="wide")


def test_geneval_counts_exactly_and_reads_signs():
    five = ground_truth("a photo of five stars")
    three = ground_truth("a photo of three stars")
    result = GenEvalReward()([five, three], ["a photo of three stars"] * 2, [None, None])
    assert result.scores.tolist() == [0.0, 1.0]  # at least three would reward five: GenEval counts exactly
    sign = GenEvalReward()([ground_truth('a sign that says "OPEN"')], ['a sign that says "OPEN"'], [None])
    wrong = GenEvalReward()([ground_truth('a sign that says "OPAL"')], ['a sign that says "OPEN"'], [None])
    assert sign.scores.item() == 1.0 and 0.3 < wrong.scores.item() < 1.0  # 1 - NED: partial credit


def test_shapes_rewards_refuse_prompts_and_rubrics_they_cannot_check():
    image = [blank(64)]
    with pytest.raises(UserError, match="'a cat asleep on a sofa'"):
        ShapesRubricReward()(image, ["a cat asleep on a sofa"], [None])
    with pytest.raises(UserError, match="free-form rubric"):
        ShapesRubricReward()(image, ["a cat"], [{"items": [{"dimension": "colour", "description": "a cat"}]}])
    with pytest.raises(UserError, match="incomplete"):
        items_only = {"items": rubrics_for("a red circle").to_dict()["items"]}
        ShapesRubricReward()(image, ["a red circle"], [items_only])
    with pytest.raises(UserError, match="geneval reward needs a prompt in the Shapes grammar"):
        GenEvalReward()(image, ["a cat asleep on a sofa"], [None])
    with pytest.raises(ValueError, match="2 prompts"):
        GenEvalReward()(image, ["a red circle"] * 2, [None])


# ---------------------------------------------------------------- the VLM judge against a hostile server

KEY = "sk-test-DO-NOT-LEAK-7731"
SCENARIOS = ["ok", "429", "500x2", "slow", "http_malformed", "not_json", "wrong_count", "out_of_range",
             "fenced", "always_500", "always_wrong", "rejected"]
NEVER_ANSWERED = {"always_500", "always_wrong", "rejected"}
N = 15  # image n gets SCENARIOS[n % 12]
MAX_RETRIES = 3
CALLS = {"ok": 1, "429": 2, "500x2": 3, "slow": 2, "http_malformed": 2, "not_json": 2, "wrong_count": 2,
         "out_of_range": 2, "fenced": 1, "always_500": MAX_RETRIES + 1, "always_wrong": MAX_RETRIES + 1,
         "rejected": 1}  # requests per image: one more per injected failure


def scenario(n: int) -> str:
    return SCENARIOS[n % len(SCENARIOS)]


def vlm_image(n: int) -> Image.Image:
    """Scenario in red, index in green and blue: the server reads both back from the JPEG it receives."""
    colour = (20 * SCENARIOS.index(scenario(n)) + 10, 8 * (n % 32) + 4, 8 * (n // 32) + 4)
    return Image.new("RGB", (96, 64), colour)


def vlm_case(n: int) -> tuple[str, dict | None, list[str]]:
    """(prompt, stored rubric, the item descriptions the server must see): free-form, Shapes, derived."""
    if n % 3 == 0:
        descriptions = [f"object number {n} has feature {i}" for i in range(n % 4 + 1)]
        dims = ["attributes", "spatial", "quantity", "interaction", "colour"]
        return (f"object number {n} in a field",
                {"items": [{"dimension": dims[i], "description": d} for i, d in enumerate(descriptions)]},
                descriptions)
    prompt = PROMPTS[n % 3]
    descriptions = [it.description for it in rubrics_for(prompt).items]
    return prompt, (rubrics_for(prompt).to_dict() if n % 3 == 1 else None), descriptions


def item_score(n: int, i: int) -> float:
    return 0.25 * (1 + (n + i) % 4)


def global_score(n: int) -> float:
    return 0.5 if n % 2 else 1.0


class JudgeServer(CountingServer):
    def __init__(self):
        self.lock = threading.Lock()
        self.calls: Counter = Counter()
        self.unauthorised = 0
        self.retry_after = "0"  # what a 429 asks the client to wait
        self.problems: list[str] = []  # what the server found wrong in a request (the tests want none)
        super().__init__()

    def check(self, ok: bool, what: str):
        if not ok:
            with self.lock:
                self.problems.append(what)

    def read_request(self, body) -> tuple[int, str]:
        """Which image this is (from its pixels) and the judge's text; records anything missing."""
        messages = body["messages"]
        self.check(messages[0]["role"] == "system" and "JSON" in messages[0]["content"], "no system turn")
        parts = messages[-1]["content"]
        text = next(p["text"] for p in parts if p["type"] == "text")
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        self.check(url.startswith("data:image/jpeg;base64,"), "not a JPEG data URL")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
        r, g, b = np.asarray(image, float).reshape(-1, 3).mean(0)
        n = int(g // 8) + 32 * int(b // 8)
        self.check(SCENARIOS[int(r // 20)] == scenario(n), f"image {n}: colour does not match its scenario")
        prompt, _, descriptions = vlm_case(n)
        self.check(f'"{prompt}"' in text and GLOBAL_RULE in text, f"image {n}: prompt or global rule missing")
        self.check(all(f"{i}. (" in text and d in text for i, d in enumerate(descriptions, 1)),
                   f"image {n}: rubric items missing")
        return n, text

    def handle(self, h):
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        if h.path != "/v1/chat/completions" or h.headers.get("Authorization") != f"Bearer {KEY}":
            with self.lock:
                self.unauthorised += 1
            return h.reply(401, {"error": {"message": "bad key"}})
        n, _ = self.read_request(body)
        kind = scenario(n)
        with self.lock:
            self.calls[n] += 1
            attempt = self.calls[n]
        k = len(vlm_case(n)[2])
        verdict = {"items": [{"id": i, "score": item_score(n, i)} for i in range(1, k + 1)],
                   "global": global_score(n)}
        content = json.dumps(verdict)
        if kind == "429" and attempt == 1:
            return h.reply(429, {"error": "rate limited"}, {"Retry-After": self.retry_after})
        if kind == "500x2" and attempt <= 2 or kind == "always_500":
            return h.reply(500, b"internal error")
        if kind == "rejected":
            return h.reply(400, {"error": {"message": "image too large"}})
        if kind == "slow" and attempt == 1:
            self.uncount(h)  # the client gives up after 0.3 s: from then on it is not in flight
            time.sleep(0.8)
        if kind == "http_malformed" and attempt == 1:
            return h.reply(200, b"{this is not json")
        if kind == "not_json" and attempt == 1:
            content = "The image shows a flat colour, so I would give it a low score overall."
        if kind == "wrong_count" and attempt == 1 or kind == "always_wrong":
            content = json.dumps({"items": verdict["items"][:-1], "global": 1.0})
        if kind == "out_of_range" and attempt == 1:
            content = json.dumps({**verdict, "global": 1.5})
        if kind == "fenced":
            content = f"```json\n{content}\n```"
        return h.reply(200, {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]})


@pytest.fixture
def server():
    s = JudgeServer()
    yield s
    s.close()


def judge_settings(server, **extra) -> dict:
    return {"base_url": server.url, "model": "test-judge", "api_key_env": "LENSGEN_TEST_KEY",
            "concurrency": 3, "timeout_s": 0.3, "max_retries": MAX_RETRIES, "backoff_base_s": 0.01,
            "backoff_max_s": 0.05, **extra}


def vlm_batch(ns):
    cases = [vlm_case(n) for n in ns]
    return [vlm_image(n) for n in ns], [c[0] for c in cases], [c[1] for c in cases]


def expected_total(n: int) -> float:
    k = len(vlm_case(n)[2])
    return global_score(n) * float(np.mean([item_score(n, i) for i in range(1, k + 1)]))


def test_vlm_judge_scores_or_invalidates_every_image_and_retries(server, monkeypatch, caplog, capsys):
    monkeypatch.setenv("LENSGEN_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    judge = VLMJudgeReward(judge_settings(server))
    result = judge(*vlm_batch(range(N)))
    assert not server.problems, server.problems
    invalid = {n for n in range(N) if not result.valid[n]}
    assert invalid == {n for n in range(N) if scenario(n) in NEVER_ANSWERED}  # those never answered well
    for n in range(N):
        if n in invalid:  # unscored, never a fabricated 0
            assert math.isnan(result.scores[n]) and result.details[n]["global"] is None
            assert result.details[n]["items"] == [] and result.details[n]["reason"]
        else:
            assert result.scores[n].item() == pytest.approx(expected_total(n)) and result.scores[n] > 0
            detail = result.details[n]
            _, rubric, descriptions = vlm_case(n)
            assert [it["description"] for it in detail["items"]] == descriptions
            assert [it["score"] for it in detail["items"]] == [item_score(n, i)
                                                                for i in range(1, len(descriptions) + 1)]
            assert detail["global"] == global_score(n)
            assert all(it["dimension"] in DIMENSIONS for it in detail["items"])
    assert "rejected" in result.details[11]["reason"] and "after 4 requests" in result.details[9]["reason"]
    assert {n: server.calls[n] for n in range(N)} == {n: CALLS[scenario(n)] for n in range(N)}  # the retries
    assert judge.requests == sum(server.calls.values())
    assert 1 < server.max_inflight <= 3
    for needle in ("HTTP 429", "HTTP 500", "timeout", "malformed reply", "wrong-schema reply", "[0, 1]"):
        assert any(needle in r.getMessage() for r in caplog.records), needle
    printed = capsys.readouterr()
    assert KEY not in caplog.text and KEY not in printed.out + printed.err
    assert KEY not in json.dumps(result.details) and KEY not in repr(judge.endpoint)
    # a second look at the same images: good verdicts come from the cache, failures are asked again
    before = Counter(server.calls)
    again = judge(*vlm_batch(range(N)))
    asked = {n for n in range(N) if server.calls[n] > before[n]}
    assert asked == invalid and torch.equal(again.valid, result.valid)
    assert torch.equal(again.scores[again.valid], result.scores[result.valid])
    judge.close()


def test_vlm_judge_honours_retry_after(server, monkeypatch, caplog):
    monkeypatch.setenv("LENSGEN_TEST_KEY", KEY)
    caplog.set_level(logging.WARNING)
    server.retry_after = "0.4"
    judge = VLMJudgeReward(judge_settings(server, backoff_max_s=5.0, backoff_base_s=0.001))
    start = time.perf_counter()
    result = judge(*vlm_batch([1]))  # scenario 429: rate limited once
    assert time.perf_counter() - start >= 0.4 and result.valid.all() and server.calls[1] == 2
    assert any("HTTP 429; retry 1/3 in 0.40 s" in r.getMessage() for r in caplog.records)
    judge.close()


def test_vlm_judge_stops_on_bad_credentials_and_needs_an_endpoint(server, monkeypatch):
    monkeypatch.setenv("LENSGEN_TEST_KEY", "wrong-key")
    judge = VLMJudgeReward(judge_settings(server))
    with pytest.raises(UserError, match="refused the credentials.*LENSGEN_TEST_KEY") as err:
        judge(*vlm_batch(range(12)))
    assert "wrong-key" not in str(err.value)
    time.sleep(0.1)
    assert 0 < server.unauthorised <= 3  # stopped at once: no retries, not once per image
    judge.close()
    for var in ("LENSGEN_RL_JUDGE_BASE_URL", "OPENAI_BASE_URL", "LENSGEN_RL_JUDGE_MODEL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="no RL judge endpoint.*LENSGEN_RL_JUDGE_BASE_URL"):
        VLMJudgeReward({"model": "m"})
    monkeypatch.setenv("LENSGEN_RL_JUDGE_BASE_URL", server.url)
    with pytest.raises(UserError, match="no RL judge model.*LENSGEN_RL_JUDGE_MODEL"):
        VLMJudgeReward()
    with pytest.raises(UserError, match="concurrency: expected >= 1"):
        VLMJudgeReward(judge_settings(server, concurrency=0))
    with pytest.raises(UserError, match="not usable by the vlm reward"):
        VLMJudgeReward(judge_settings(server))([blank(32)], ["a cat"], [{"items": [{"dimension": "colour"}]}])


def test_parse_verdict_is_strict():
    assert parse_verdict('{"items": [{"id": 2, "score": 0.5}, {"id": 1, "score": 1}], "global": 0}', 2) == \
        ([1.0, 0.5], 0.0)
    assert parse_verdict('```json\n{"items": [], "global": 0.25}\n```', 0) == ([], 0.25)
    for bad in ['{"items": [{"id": 1, "score": 0.5}], "global": 1}',  # too few
                '{"items": [{"id": 1, "score": 0.5}, {"id": 1, "score": 0.5}], "global": 1}',  # id twice
                '{"items": [{"id": 1, "score": true}, {"id": 2, "score": 0.5}], "global": 1}',  # a bool
                '{"items": [{"id": 1, "score": "0.5"}, {"id": 2, "score": 0.5}], "global": 1}',  # a string
                '{"items": [{"id": 1, "score": NaN}, {"id": 2, "score": 0.5}], "global": 1}',
                '{"items": [{"id": 1, "score": 0.5}, {"id": 2, "score": -0.1}], "global": 1}',
                '{"items": [{"id": 1, "score": 0.5}, {"id": 2, "score": 0.5}]}',  # no global
                '[0.5, 0.5]', 'scores: 0.5, 0.5']:
        with pytest.raises(TransientError):
            parse_verdict(bad, 2)


# ---------------------------------------------------------------- weighted sums, building, async


class Fixed:
    """A stand-in reward with set scores and validity (what a component would return)."""

    def __init__(self, name, scores, valid, dimension="spatial", delay=0.0):
        self.name, self.scores, self.valid, self.dimension, self.delay = name, scores, valid, dimension, delay
        self.closed = False

    def __call__(self, images, prompts, rubrics):
        time.sleep(self.delay)
        details = [{"items": [{"dimension": self.dimension, "description": p, "score": s}] if ok else [],
                    "global": 1.0 if ok else None, "reason": "" if ok else "judge failed"}
                   for p, s, ok in zip(prompts, self.scores, self.valid)]
        scores = [s if ok else math.nan for s, ok in zip(self.scores, self.valid)]
        return RewardResult(torch.tensor(scores), torch.tensor(self.valid), details)

    def close(self):
        self.closed = True


def test_weighted_reward_sums_with_weights_and_combines_validity():
    a = Fixed("a", [1.0, 0.5, 0.2, 0.0], [True, True, False, True], "spatial")
    b = Fixed("b", [0.0, 1.0, 0.4, 0.8], [True, False, True, True], "colour")
    weighted = WeightedReward({"a": (a, 0.5), "b": (b, 0.25)})
    result = weighted([blank(8)] * 4, ["p0", "p1", "p2", "p3"], [None] * 4)
    assert weighted.name == "0.5*a+0.25*b"
    assert result.valid.tolist() == [True, False, False, True]
    assert result.scores[0].item() == pytest.approx(0.5) and result.scores[3].item() == pytest.approx(0.2)
    assert result.scores[1:3].isnan().all() and result.scores.dtype == torch.float32
    first = result.details[0]
    assert [(it["reward"], it["dimension"]) for it in first["items"]] == [("a", "spatial"), ("b", "colour")]
    assert first["a/global"] == 1.0 and first["b/global"] == 1.0 and first["global"] is None
    assert result.details[1]["reason"] == "b: judge failed" and result.details[1]["a/global"] == 1.0
    weighted.close()
    assert a.closed and b.closed


def test_build_reward_from_config_and_its_errors(server, monkeypatch):
    with pytest.raises(UserError, match="unknown reward.*'clip'.*known rewards: geneval, rubric, rubric_items, vlm"):
        build_reward({"rubric": 0.5, "clip": 0.5})
    with pytest.raises(UserError, match="expected a mapping"):
        build_reward({})
    with pytest.raises(UserError, match="rewards.geneval: weight -1"):
        build_reward({"geneval": -1})
    with pytest.raises(UserError, match="rewards.rubric: weight 'high'"):
        build_reward({"rubric": "high"})
    with pytest.raises(UserError, match="unknown field"):
        build_reward({"vlm": 1.0}, {"base_url": server.url, "concurency": 3})
    images = [ground_truth(PROMPTS[0]), blank()]
    prompts, rubrics = [PROMPTS[0]] * 2, [None, None]
    both = build_reward({"rubric": 0.5, "geneval": 0.5})(images, prompts, rubrics)
    rubric = ShapesRubricReward()(images, prompts, rubrics)
    geneval = GenEvalReward()(images, prompts, rubrics)
    assert torch.allclose(both.scores, 0.5 * rubric.scores + 0.5 * geneval.scores) and both.valid.all()
    monkeypatch.setenv("LENSGEN_TEST_KEY", KEY)
    vlm = build_reward({"vlm": 1.0}, judge_settings(server))
    assert vlm(*vlm_batch([1])).scores.item() == pytest.approx(expected_total(1))
    vlm.close()


def test_async_scoring_matches_a_direct_call_and_runs_in_the_background():
    reward = build_reward({"rubric": 1.0, "geneval": 1.0})
    images, prompts = [ground_truth(p) for p in PROMPTS[:3]] + [noise(3)], PROMPTS[:3] + PROMPTS[:1]
    rubrics = [None] * 4
    direct = reward(images, prompts, rubrics)
    with AsyncRewards(reward) as scorer:
        future = scorer.submit(images, prompts, rubrics)
        images.clear()  # the trainer may reuse its lists at once
        queued = future.result(timeout=60)
    assert torch.equal(queued.scores, direct.scores) and torch.equal(queued.valid, direct.valid)
    assert queued.details == direct.details
    slow = Fixed("slow", [0.5], [True], delay=0.5)
    with AsyncRewards(slow) as scorer:
        start = time.perf_counter()
        future = scorer.submit([blank(8)], ["p"], [None])
        assert time.perf_counter() - start < 0.2 and not future.done()  # the trainer goes on sampling
        assert future.result(timeout=5).scores.tolist() == [0.5]
    assert slow.closed


def test_reward_stats_on_a_hand_made_example():
    def detail(spatial, colour):
        return {"items": [{"dimension": "spatial", "description": "x left of y", "score": spatial},
                          {"dimension": "colour", "description": "x is red", "score": colour}],
                "global": 1.0, "reason": ""}

    scores = [0.5, 0.5, 0.5, 0.2, 0.8, math.nan]
    valid = [True, True, True, True, True, False]
    details = [detail(1.0, 0.0), detail(1.0, 0.5), detail(1.0, 1.0), detail(0.0, 0.5), detail(0.5, 0.5),
               {"items": [], "global": None, "reason": "judge failed"}]
    result = RewardResult(torch.tensor(scores), torch.tensor(valid), details)
    spatial_only = {"items": [{"dimension": "spatial", "description": "x left of y"}]}
    both = {"items": [{"dimension": "spatial", "description": "x left of y"},
                      {"dimension": "colour", "description": "x is red"}]}
    rubrics = [spatial_only] * 3 + [both] * 3
    stats = reward_stats(result, rubrics, groups=[0, 0, 0, 1, 1, 1])
    assert stats["count"] == 6 and stats["invalid_share"] == pytest.approx(1 / 6)
    assert stats["reward/mean"] == pytest.approx(0.5)
    assert stats["reward/std"] == pytest.approx(np.std([.5] * 3 + [.2, .8]))
    assert stats["dim/spatial/mean"] == pytest.approx(0.7) and stats["dim/colour/mean"] == pytest.approx(0.5)
    assert stats["dim/colour/std"] == pytest.approx(np.std([0, .5, 1, .5, .5]))
    assert stats["dim/global/mean"] == 1
    assert stats["by_dim/spatial/mean"] == pytest.approx(0.5)  # all six prompts ask for a relation
    assert stats["by_dim/colour/mean"] == pytest.approx(0.5)  # the last three (one invalid) ask for a colour
    assert stats["groups"] == 2 and stats["zero_variance_group_share"] == 0.5  # group 0: all alike
    assert stats["group_std/mean"] == pytest.approx((0.0 + 0.3) / 2)
    halves = [RewardResult(result.scores[i:i + 3], result.valid[i:i + 3], details[i:i + 3]) for i in (0, 3)]
    split = reward_stats(halves, groups=[0, 0, 0, 1, 1, 1])
    assert split["zero_variance_group_share"] == 0.5 and split["reward/mean"] == stats["reward/mean"]
    with pytest.raises(ValueError, match="2 group ids for 6 images"):
        reward_stats(result, groups=[0, 1])
