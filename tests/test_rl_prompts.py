"""The RL prompt set: the whole default Shapes set is held-out safe (the proof), the checker catches each kind
of leak, files are deterministic and read back strictly, and the LLM mode survives a hostile local server."""

import json
import logging
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from chat_server import CountingServer

import lensgen.cli
from lensgen.data.rl_prompts import grammar, llm
from lensgen.data.rl_prompts.config import load_rl_prompts_config
from lensgen.data.rl_prompts.grammar import (
    CATEGORIES,
    DEFAULT_N,
    generate_shapes_prompts,
    write_shapes_prompts,
)
from lensgen.data.rl_prompts.llm import BadAnswer, parse_answer, read_seeds, run_llm_prompts
from lensgen.data.rl_prompts.records import GLOBAL_RULE, load_rl_prompts
from lensgen.data.rl_prompts.safety import heldout_violations
from lensgen.errors import UserError
from lensgen.shapes.evalset import load_prompts
from lensgen.shapes.heldout import (
    HELDOUT_WORDS,
    TRAIN_WORDS,
    heldout_pairs,
    heldout_positions,
    is_heldout_pair,
    is_heldout_position,
)
from lensgen.shapes.prompt import parse_prompt
from lensgen.shapes.rubrics import DIMENSIONS, MAX_ITEMS, Rubrics, rubrics_for

ROOT = Path(__file__).resolve().parent.parent


def norm(text):
    return " ".join(text.lower().split())


# --- the Shapes mode: the proof over the whole default set ----------------------------------------------

@pytest.fixture(scope="module")
def default_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "rl-prompts.jsonl"
    start = time.perf_counter()
    summary = write_shapes_prompts(out, load_rl_prompts_config())
    seconds = time.perf_counter() - start
    print(f"default RL prompt set: {summary['records']} prompts in {seconds:.1f} s")
    return out, summary


def test_the_whole_default_set_is_heldout_safe_parses_and_covers_every_cell(default_set):
    out, summary = default_set
    lines = out.read_text().splitlines()
    assert len(lines) == DEFAULT_N == 8406 == summary["records"] == summary["n"]
    records = [json.loads(line) for line in lines]
    eval_texts = {norm(p.prompt) for p in load_prompts()}
    assert len(eval_texts) == 149
    for r in records:
        assert heldout_violations(r) == [], r
        assert norm(r["prompt"]) not in eval_texts
        # the rules checked again here directly on the parsed structure, not through the checker
        spec = parse_prompt(r["prompt"])
        assert spec.text is None or spec.text in TRAIN_WORDS, r
        coloured = [(o.colour, o.shape) for o in spec.objects if o.colour]
        assert not any(is_heldout_pair(a, b) for i, a in enumerate(coloured) for b in coloured[i + 1:]), r
        if spec.relation is not None:
            a, b = spec.objects[spec.relation.a].shape, spec.objects[spec.relation.b].shape
            assert not is_heldout_position(a, spec.relation.relation, b), r
        assert r["rubric"] == rubrics_for(r["prompt"]).to_dict()
        assert 1 <= len(r["rubric"]["items"]) <= MAX_ITEMS
        assert r["global_rule"] == GLOBAL_RULE == "structurally coherent and physically plausible"
        assert r["id"].startswith(f"{r['category']}-{r['dimension']}-")
    assert len({r["id"] for r in records}) == len(records)
    assert len({norm(r["prompt"]) for r in records}) == len(records)
    cells = Counter((r["category"], r["dimension"]) for r in records)
    assert set(cells) == {(c, d) for c in CATEGORIES for d in DIMENSIONS}  # all 7 x 5 cells
    assert min(cells.values()) == 240 and max(cells.values()) == 241
    assert summary["per_category_dimension"] == {c: {d: cells[c, d] for d in DIMENSIONS} for c in CATEGORIES}
    assert set(summary["rejected"]) <= {"duplicate", "eval prompt", "held-out pair", "held-out position",
                                        "held-out word", "does not parse back"}
    # the loader agrees (it runs the same check on every line)
    assert len(load_rl_prompts(out)) == DEFAULT_N


def test_the_checker_catches_each_kind_of_leak():
    (ca, sa), (cb, sb) = heldout_pairs()[0]
    a, rel, b = heldout_positions()[0]
    flip = {"left of": "right of", "above": "below"}[rel]
    word = HELDOUT_WORDS[0]
    ev = load_prompts(["color_attr"])[0].prompt  # "a photo of a black circle and a purple heart"
    cases = {
        f"a {ca} {sa} and a {cb} {sb}": "held-out pair",
        f"three {ca} {sa}s, a {cb} {sb} and a {'green' if 'green' not in (ca, cb) else 'pink'} triangle": "held-out pair",
        f"a photo of a {a} {rel} a {b}": "held-out position",
        f"a red {b} {flip} a blue {a}": "held-out position",
        f'a sign that says "{word}"': "held-out word",
        'a sign reading "QWERTY"': "held-out word",  # not a training word either
        ev: "eval prompt",
        "  " + ev.upper().replace(" ", "   ") + ".": "eval prompt",  # case and spaces do not matter
        "an image of" + ev.removeprefix("a photo of"): "eval prompt",  # nor the prefix
        # free text (the LLM mode): a best-effort scan, both orders for relations
        f"A glossy {ca.capitalize()} {sa.capitalize()} rests beside a matte {cb} {sb} on a table": "held-out pair",
        f"under the {b}, a small {a} is painted on the wall": "held-out position",
        f"a shop window with a neon sign that reads '{word.lower()}'": "held-out word",
        f"a poster with the word {word} in big letters": "held-out word",
    }
    for prompt, kind in cases.items():
        problems = heldout_violations(prompt)
        assert any(p.startswith(kind) for p in problems), (prompt, problems)
    for clean in ["a photo of a red circle", 'a sign that says "' + TRAIN_WORDS[0] + '"',
                  "a golden retriever catching a frisbee in a park at sunset"]:
        assert heldout_violations(clean) == [], clean
    # records as dicts are checked the same way
    assert heldout_violations({"prompt": ev}) == heldout_violations(ev)


def test_the_proof_is_not_vacuous_the_sampler_does_propose_heldout_prompts(monkeypatch):
    """With the checker switched off inside the generator, the real checker finds leaks in the output:
    so the zero above is the checker's work, and a generator that stopped calling it would fail."""
    monkeypatch.setattr(grammar.safety, "heldout_violations", lambda prompt: [])
    records, _ = generate_shapes_prompts(1400, seed=0)
    monkeypatch.undo()
    kinds = Counter(p.split(":")[0] for r in records for p in heldout_violations(r.prompt))
    assert kinds["held-out pair"] > 0 and kinds["held-out position"] > 0 and kinds["eval prompt"] > 0


def test_same_seed_same_bytes_other_seed_other_file(tmp_path):
    paths = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        paths[name] = tmp_path / name / "rl.jsonl"
        write_shapes_prompts(paths[name], load_rl_prompts_config(None, {"n": 300, "seed": seed}))
    assert paths["a"].read_bytes() == paths["b"].read_bytes()
    assert (tmp_path / "a" / "summary.json").read_bytes() == (tmp_path / "b" / "summary.json").read_bytes()
    assert paths["a"].read_bytes() != paths["c"].read_bytes()
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["seed"] == 2 and summary["n"] == 300 and summary["mode"] == "shapes"
    assert sum(summary["per_category"].values()) == 300


def test_small_n_is_spread_over_cells_and_a_spent_space_is_a_clear_error(monkeypatch):
    records, _ = generate_shapes_prompts(35, seed=0)
    assert len({(r.category, r.dimension) for r in records}) == 35
    with pytest.raises(UserError, match="positive number"):
        generate_shapes_prompts(0)
    # a tiny space: the sign alone with one word has 3 sign forms x 4 prefixes = 12 prompts
    monkeypatch.setattr(grammar, "CATEGORIES", ("sign",))
    monkeypatch.setattr(grammar, "DIMENSIONS", ("attributes",))
    monkeypatch.setattr(grammar, "TRAIN_WORDS", (TRAIN_WORDS[0],))
    monkeypatch.setattr(grammar, "MAX_MISSES", 300)
    with pytest.raises(UserError, match=r"only 12 distinct .* choose n <= 12"):
        generate_shapes_prompts(20)


def test_load_round_trip(tmp_path):
    out = tmp_path / "rl.jsonl"
    write_shapes_prompts(out, load_rl_prompts_config(None, {"n": 50, "seed": 5}))
    records = load_rl_prompts(out)
    lines = out.read_text().splitlines()
    assert [json.dumps(r.to_dict(), ensure_ascii=False) for r in records] == lines
    for r, line in zip(records, lines):
        assert Rubrics.from_dict(json.loads(line)["rubric"]) == r.rubric


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


GOOD = {"id": "x-colour-1", "prompt": "a red circle and a blue star", "category": "circle", "dimension": "colour",
        "rubric": {"items": [{"dimension": "colour", "description": "the circle is red"}], "expected": {},
                   "exact": False}, "global_rule": GLOBAL_RULE}


@pytest.mark.parametrize("bad, line, message", [
    ("{not json", 2, "not valid JSON"),
    ({**GOOD, "id": "y", "dimension": "size"}, 2, "field 'dimension': expected one of attributes"),
    ({k: v for k, v in GOOD.items() if k != "prompt"} | {"id": "y"}, 2, "field 'prompt': expected a non-empty"),
    ({**GOOD, "id": "y", "prompt": "p2", "rubric": {"items": [GOOD["rubric"]["items"][0]] * 11}}, 2,
     r"field 'rubric.items': expected 1 to 10 items, got '11 items'"),
    ({**GOOD, "id": "y", "prompt": "p2", "rubric": {"items": []}}, 2, "field 'rubric.items': expected 1 to 10"),
    ({**GOOD, "id": "y", "prompt": "p2", "rubric": {"items": [{"dimension": "colour"}]}}, 2,
     r"field 'rubric.items\[0\].description'"),
    ({**GOOD, "id": "y", "prompt": "p2", "rubric": {"items": [{"dimension": "mood", "description": "d"}]}}, 2,
     r"field 'rubric.items\[0\].dimension': expected one of"),
    ({**GOOD, "prompt": "p2"}, 2, "field 'id': expected an id not used before \\(line 1 has it\\)"),
    ({**GOOD, "id": "y", "prompt": "A  Red Circle and a blue star."}, 2, "field 'prompt': expected a prompt not given"),
    ({**GOOD, "id": "y", "prompt": "a photo of a black circle and a purple heart"}, 2, "held out for ShapesEval"),
    ({**GOOD, "id": "y", "prompt": "p2", "colour": "red"}, 2, "field 'colour': expected only the fields"),
    ([1, 2], 2, "expected a JSON object"),
])
def test_load_errors_name_file_line_and_field(tmp_path, bad, line, message):
    path = _write(tmp_path / "rl.jsonl", [GOOD, bad])
    with pytest.raises(UserError, match=re.escape(f"{path}:{line}: ") + ".*" + message):
        load_rl_prompts(path)


def test_load_errors_for_the_file_itself(tmp_path):
    with pytest.raises(UserError, match="RL prompt file not found"):
        load_rl_prompts(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="no records"):
        load_rl_prompts(_write(tmp_path / "empty.jsonl", []))
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\n")
    with pytest.raises(UserError, match="not UTF-8"):
        load_rl_prompts(tmp_path / "bin.jsonl")
    # an LLM-style record (items with dimension and description only) is accepted
    (r,) = load_rl_prompts(_write(tmp_path / "ok.jsonl", [GOOD]))
    assert r.rubric.items[0].kind == "vlm" and r.rubric.items[0].weight == 1.0


# --- the LLM mode: answers and seeds --------------------------------------------------------------------

CATS = ["people", "animals", "food and plants", "objects", "vehicles", "architecture", "landscapes",
        "indoor scenes", "text and signs", "art and abstract"]


def answer_for(i, **overrides):
    exp = {d: {"prompt": f"seed {i} {d}: a dog and a cat in a sunny garden, version {d}",
               "rubric": [{"dimension": d, "description": f"check {d} {k} of seed {i}"} for k in range(1 + i % 3)]}
           for d in DIMENSIONS}
    exp.update(overrides)
    return {"category": CATS[i % len(CATS)], "expansions": exp}


def test_parse_answer_is_strict():
    good = answer_for(1)
    assert parse_answer(json.dumps(good), CATS)["category"] == "animals"
    fenced = "```json\n" + json.dumps(good).replace('"colour"', '"color"') + "\n```"
    assert parse_answer(fenced, CATS)["expansions"]["colour"] == good["expansions"]["colour"] | {
        "rubric": [{"dimension": "colour", "description": "check colour 0 of seed 1"},
                   {"dimension": "colour", "description": "check colour 1 of seed 1"}]}
    bad = [
        ("Here you go: {}", "malformed JSON"),
        (json.dumps({**good, "category": "robots"}), "category 'robots' is not one of"),
        (json.dumps({**good, "notes": "x"}), "the answer has keys"),
        (json.dumps(answer_for(1) | {"expansions": {d: good["expansions"][d] for d in DIMENSIONS[:4]}}),
         "expansions has keys"),
        (json.dumps(answer_for(1, spatial={"prompt": "p", "rubric": [{"dimension": "spatial", "description": "d"}] * 11})),
         "must list 1 to 10 items"),
        (json.dumps(answer_for(1, spatial={"prompt": "p", "rubric": [{"dimension": "mood", "description": "d"}]})),
         "expected one of attributes"),
        (json.dumps(answer_for(1, spatial={"prompt": "", "rubric": [{"dimension": "spatial", "description": "d"}]})),
         "prompt must be a non-empty string"),
        (json.dumps(answer_for(1, spatial=good["expansions"]["colour"])), "not all different"),
        (json.dumps(answer_for(1, spatial={"prompt": "p", "rubric": [{"dimension": "spatial", "text": "d"}]})),
         "expected \\['description', 'dimension'\\]"),
    ]
    for text, message in bad:
        with pytest.raises(BadAnswer, match=message):
            parse_answer(text, CATS)


def test_read_seeds(tmp_path):
    path = tmp_path / "seeds.txt"
    path.write_text("# seeds\n\na cat on a mat\nA  cat on a mat.\n  a red bicycle  \n")
    assert [(s.line, s.text) for s in read_seeds(path)] == [(3, "a cat on a mat"), (5, "a red bicycle")]
    assert len(read_seeds(path, limit=1)) == 1
    with pytest.raises(UserError, match="seeds file not found"):
        read_seeds(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(UserError, match="no seed prompts"):
        read_seeds(tmp_path / "empty.txt")
    (tmp_path / "long.txt").write_text("ok\n" + "x" * 3000 + "\n")
    with pytest.raises(UserError, match=r"long.txt:2: seed prompt of 3000 characters"):
        read_seeds(tmp_path / "long.txt")


# --- the LLM mode against a hostile local server --------------------------------------------------------

KEY = "sk-test-DO-NOT-LEAK-7777"
SCENARIOS = ["ok", "429", "500x2", "slow", "malformed", "schema", "refusal", "no_choices", "fenced", "heldout",
             "dup"]
N = 2 * len(SCENARIOS)  # seed i gets SCENARIOS[i % 11]
EXPECTED_CALLS = {"ok": 1, "429": 2, "500x2": 3, "slow": 2, "malformed": 2, "schema": 2, "refusal": 2,
                  "no_choices": 2, "fenced": 1, "heldout": 1, "dup": 1}
HELDOUT_PROMPT = "a photo of a black circle and a purple heart"  # a ShapesEval color_attr prompt
SHARED_PROMPT = "two dogs and a cat share one sunny garden bench"


class Server(CountingServer):
    def __init__(self):
        self.lock = threading.Lock()
        self.calls: Counter = Counter()
        self.unauthorised = 0
        super().__init__()

    def handle(self, h):
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        if h.path != "/v1/chat/completions" or h.headers.get("Authorization") != f"Bearer {KEY}":
            with self.lock:
                self.unauthorised += 1
            return h.reply(401, {"error": {"message": "bad key"}})
        system, user = body["messages"]
        assert system["role"] == "system" and "attributes" in system["content"] and "animals" in system["content"]
        i = int(re.match(r"Seed prompt: seed (\d+):", user["content"][0]["text"]).group(1))
        scenario = SCENARIOS[i % len(SCENARIOS)]
        with self.lock:
            self.calls[i] += 1
            attempt = self.calls[i]
        answer = json.dumps(answer_for(i))
        if scenario == "429" and attempt == 1:
            return h.reply(429, {"error": "rate limited"}, {"Retry-After": "0"})
        if scenario == "500x2" and attempt <= 2:
            return h.reply(500, b"internal error")
        if scenario == "slow" and attempt == 1:
            self.uncount(h)  # the client gives up after 0.3 s: from then on it is not in flight
            time.sleep(0.8)
        if scenario == "malformed" and attempt == 1:
            answer = answer[:-20]
        if scenario == "schema" and attempt == 1:
            answer = json.dumps({"category": "animals", "expansions": {"colour": answer_for(i)["expansions"]["colour"]}})
        if scenario == "no_choices" and attempt == 1:
            return h.reply(200, {"object": "error", "message": "overloaded"})
        if scenario == "refusal":
            answer = "I'm sorry, but I can't help with that request."
        if scenario == "fenced":
            answer = "```json\n" + answer.replace('"colour"', '"color"') + "\n```"
        if scenario == "heldout":
            answer = json.dumps(answer_for(i, colour={"prompt": HELDOUT_PROMPT, "rubric": [
                {"dimension": "colour", "description": "the circle is black"}]}))
        if scenario == "dup":
            answer = json.dumps(answer_for(i, interaction={"prompt": SHARED_PROMPT, "rubric": [
                {"dimension": "interaction", "description": "the dogs share the bench with the cat"}]}))
        return h.reply(200, {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def seeds(tmp_path):
    path = tmp_path / "seeds.txt"
    path.write_text("# seed prompts\n" + "".join(f"seed {i}: a dog and a cat in a garden\n" for i in range(N)))
    return path


def make_config(server, **extra):
    return load_rl_prompts_config(None, {
        "base_url": server.url, "model": "test-llm", "api_key_env": "LENSGEN_TEST_KEY", "concurrency": 3,
        "timeout_s": 0.3, "max_retries": 3, "max_bad_answers": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
        "progress": False, **extra})


def scenario_seeds(name):
    return [i for i in range(N) if SCENARIOS[i % len(SCENARIOS)] == name]


def test_llm_mode_every_seed_written_or_reported_none_duplicated_retries_no_key(
        server, seeds, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("LENSGEN_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out" / "rl.jsonl"
    summary = run_llm_prompts(seeds, out, make_config(server))
    records = load_rl_prompts(out)
    written = Counter(int(re.match(r"seed (\d+):", r.seed).group(1)) for r in records)
    failed = {int(re.match(r"seed (\d+):", f["seed"]).group(1)): f for f in summary["failed"]}
    # every seed: written or reported failed, never both, never invented
    assert set(written) | set(failed) == set(range(N)) and not set(written) & set(failed)
    assert set(failed) == set(scenario_seeds("refusal")) and all(f["reason"] == "refusal" for f in failed.values())
    assert all(f["line"] == i + 2 for i, f in failed.items())  # the line in the seeds file
    dup_first, dup_second = scenario_seeds("dup")
    for i, k in written.items():
        assert k == (4 if i in scenario_seeds("heldout") or i == dup_second else 5), i
    # none duplicated: ids and prompts unique (load_rl_prompts checks both), and no held-out prompt
    assert all(heldout_violations(r.prompt) == [] for r in records)
    dropped = Counter((d["dimension"], d["reasons"][0].split(":")[0]) for d in summary["dropped"])
    assert dropped == {("colour", "eval prompt"): 2, ("interaction", "duplicate"): 1}
    # records follow the seeds file; the rubric items are the LLM's, as kind "vlm"
    assert [int(re.match(r"seed (\d+):", r.seed).group(1)) for r in records] == sorted(
        int(re.match(r"seed (\d+):", r.seed).group(1)) for r in records)
    r = next(r for r in records if r.seed.startswith("seed 4:") and r.dimension == "spatial")
    assert r.prompt == answer_for(4)["expansions"]["spatial"]["prompt"] and r.category == "vehicles"
    assert [(it.dimension, it.kind, it.description) for it in r.rubric.items] == [
        ("spatial", "vlm", "check spatial 0 of seed 4"), ("spatial", "vlm", "check spatial 1 of seed 4")]
    assert r.id.startswith("vehicles-spatial-") and r.global_rule == GLOBAL_RULE
    assert summary["records"] == len(records) and summary["mode"] == "llm" and summary["answered"] == N - 2
    # retries happened: one extra request per injected failure, two for 500x2; refusals asked twice
    assert {i: server.calls[i] for i in range(N)} == {i: EXPECTED_CALLS[SCENARIOS[i % 11]] for i in range(N)}
    assert summary["requests"] == sum(server.calls.values())
    assert 1 < server.max_inflight <= 3
    for text in ["HTTP 429", "HTTP 500", "timeout", "malformed JSON", "wrong schema", "refusal"]:
        assert any(text in rec.message for rec in caplog.records), text
    # the key never shows up: not in logs, output, or any file written (out, summary, cache)
    printed = capsys.readouterr()
    assert KEY not in caplog.text and KEY not in printed.out and KEY not in printed.err
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("cache" in str(p) for p in files)
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
    # resuming asks only for the seeds that failed; the file comes back the same from the cache
    before, first = Counter(server.calls), out.read_bytes()
    again = run_llm_prompts(seeds, out, make_config(server))
    asked = {i: server.calls[i] - before[i] for i in range(N) if server.calls[i] != before[i]}
    assert asked == {i: 2 for i in scenario_seeds("refusal")}
    assert again["cached"] == N - 2 and out.read_bytes() == first


def test_llm_mode_resumes_after_a_partial_run(server, seeds, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSGEN_TEST_KEY", KEY)
    out = tmp_path / "rl.jsonl"
    run_llm_prompts(seeds, out, make_config(server, n=7))  # as if the run had stopped after 7 seeds
    assert json.loads((tmp_path / "summary.json").read_text())["seeds"] == 7
    before = Counter(server.calls)
    summary = run_llm_prompts(seeds, out, make_config(server))
    asked_again = [i for i in range(N) if server.calls[i] != before[i] and before[i]]
    assert asked_again == scenario_seeds("refusal")[:1] == [6]  # of the first seven, only the failed one
    assert summary["cached"] == 6 and summary["answered"] == N - 2


def test_llm_mode_bad_key_stops_and_config_errors(server, seeds, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSGEN_TEST_KEY", "wrong-key")
    with pytest.raises(UserError, match="refused the credentials"):
        run_llm_prompts(seeds, tmp_path / "rl.jsonl", make_config(server))
    assert 0 < server.unauthorised <= 6  # stopped early, not once per seed with retries
    assert not (tmp_path / "rl.jsonl").exists()
    for var in ("LENSGEN_RL_PROMPTS_BASE_URL", "LENSGEN_RL_PROMPTS_MODEL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="no prompt-writing endpoint.*LENSGEN_RL_PROMPTS_BASE_URL"):
        run_llm_prompts(seeds, tmp_path / "rl.jsonl", load_rl_prompts_config(None, {"model": "m"}))
    monkeypatch.setenv("LENSGEN_RL_PROMPTS_BASE_URL", server.url)
    with pytest.raises(UserError, match="no prompt-writing model.*LENSGEN_RL_PROMPTS_MODEL"):
        run_llm_prompts(seeds, tmp_path / "rl.jsonl", load_rl_prompts_config())
    with pytest.raises(UserError, match="categories: expected a list of distinct"):
        load_rl_prompts_config(None, {"categories": ["a", "A"]})


def test_llm_mode_all_seeds_failing_writes_nothing(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSGEN_TEST_KEY", KEY)
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(f"seed {scenario_seeds('refusal')[0]}: a dog\n")
    with pytest.raises(UserError, match="no prompts written: all 1 seeds failed.*refusal"):
        run_llm_prompts(seeds, tmp_path / "rl.jsonl", make_config(server))
    assert not (tmp_path / "rl.jsonl").exists()


# --- the command ----------------------------------------------------------------------------------------

def test_cli_shapes_end_to_end(tmp_path, capsys):
    out = tmp_path / "rl.jsonl"
    assert lensgen.cli.main(["data", "rl-prompts", str(out), "--n", "70", "--seed", "3", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("70 Shapes RL prompts (seed 3) in 7 categories x 5 dimensions")
    assert len(load_rl_prompts(out)) == 70
    cfg = tmp_path / "rl.yaml"
    cfg.write_text("n: 70\nseed: 0\n")
    other = tmp_path / "b" / "rl.jsonl"
    assert lensgen.cli.main(["data", "rl-prompts", str(other), "--config", str(cfg), "--set", "seed=3"]) == 0
    assert other.read_bytes() == out.read_bytes()


def test_cli_llm_end_to_end(server, seeds, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LENSGEN_TEST_KEY", KEY)
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(f"base_url: {server.url}\nmodel: test-llm\napi_key_env: LENSGEN_TEST_KEY\ntimeout_s: 0.3\n"
                   "backoff_base_s: 0.01\nbackoff_max_s: 0.05\nmax_bad_answers: 0\nprogress: false\n")
    out = tmp_path / "rl.jsonl"
    assert lensgen.cli.main(["data", "rl-prompts", "--llm", "--seeds", str(seeds), "--config", str(cfg),
                             "--n", "8", str(out)]) == 0
    printed = capsys.readouterr()
    assert re.match(r"25 prompts from 5 of 8 seeds .* 3 seeds failed", printed.out)  # malformed, schema, refusal
    assert "failed: refusal" in printed.err and KEY not in printed.out + printed.err


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n: expected a positive number, got 0"),
    (["--llm"], "--llm needs --seeds FILE"),
    (["--seeds", "s.txt"], "--seeds is for the LLM mode"),
    (["--llm", "--seeds", "s.txt", "--seed", "1"], "--seed is for the Shapes mode"),
    (["--set", "nn=3"], "unknown field(s) nn"),
    (["--set", "seed=x"], "config.seed: expected an integer"),
    (["--config", "missing.yaml"], "config file not found"),
    (["--llm", "--seeds", "missing.txt", "--set", "base_url=http://127.0.0.1:9/v1", "--set", "model=m"],
     "seeds file not found"),
])
def test_cli_errors(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert lensgen.cli.main(["data", "rl-prompts", "out.jsonl", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lensgen: error: ") and message in err and err.count("\n") == 1


def test_cli_output_path_errors(tmp_path, capsys):
    assert lensgen.cli.main(["data", "rl-prompts", str(tmp_path / "out.txt")]) == 2
    assert "expected a .jsonl file name" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert lensgen.cli.main(["data", "rl-prompts", str(tmp_path / "file" / "out.jsonl"), "--n", "5"]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_example_config_loads():
    config = load_rl_prompts_config(ROOT / "configs" / "rl-prompts-example.yaml")
    assert config.concurrency == 8 and len(config.categories) == 10 and config.n is None
    assert llm.SYSTEM_PROMPT.count("{categories}") == 1
