"""The captioner against a real HTTP server on localhost speaking the chat-completions protocol,
with injected 429s, 500s, timeouts, malformed replies, refusals and too-short answers."""

import base64
import io
import json
import logging
import threading
import time
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from chat_server import CountingServer
from PIL import Image

import lensgen.cli
from lensgen.data.caption.config import load_caption_config
from lensgen.data.caption.runner import run_captioning
from lensgen.data.shards import iter_samples, write_shard
from lensgen.errors import UserError

KEY = "sk-test-DO-NOT-LEAK-4242"
SCENARIOS = ["ok", "429", "500x2", "slow", "malformed", "refusal", "short_once", "no_choices"]
# sample n gets scenario SCENARIOS[n % 8]; 18 samples over two shards
N = 18


def caption_for(n: int) -> str:
    filler = " ".join(["a small red cube sits left of a tall blue cylinder on a grey table"] * 7)
    return f"Sample number {n} shows {filler}."


def image_for(n: int) -> bytes:
    k = n % len(SCENARIOS)
    colour = (30 * k + 15, 8 * (n % 32) + 4, 8 * (n // 32) + 4)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buf, format="PNG")
    return buf.getvalue()


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
        parts = body["messages"][0]["content"]
        assert parts[0]["type"] == "text" and "about 100 to 120 words" in parts[0]["text"]
        url = parts[1]["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        r, g, b = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"),
                             float).reshape(-1, 3).mean(0)
        n = int(g // 8) + 32 * int(b // 8)
        scenario = SCENARIOS[int(r // 30)]
        with self.lock:
            self.calls[n] += 1
            attempt = self.calls[n]
        ok = {"id": "x", "object": "chat.completion", "model": body["model"],
              "choices": [{"index": 0, "message": {"role": "assistant", "content": caption_for(n)},
                           "finish_reason": "stop"}]}
        if scenario == "429" and attempt == 1:
            return h.reply(429, {"error": "rate limited"}, {"Retry-After": "0"})
        if scenario == "500x2" and attempt <= 2:
            return h.reply(500, b"internal error")
        if scenario == "slow" and attempt == 1:
            self.uncount(h)  # the client gives up after 0.3 s: from then on it is not in flight
            time.sleep(0.8)
        if scenario == "malformed" and attempt == 1:
            return h.reply(200, b"{this is not json")
        if scenario == "no_choices" and attempt == 1:
            return h.reply(200, {"object": "error", "message": "overloaded"})
        if scenario == "refusal":
            ok["choices"][0]["message"]["content"] = "I'm sorry, but I can't help with describing this image."
        if scenario == "short_once" and attempt == 1:
            ok["choices"][0]["message"]["content"] = "A coloured rectangle."
        return h.reply(200, ok)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def shards(tmp_path):
    samples = [{"__key__": f"{n:09d}", "png": image_for(n), "txt": f"short caption {n}",
                "json": {"n": n}} for n in range(N)]
    samples.append({"__key__": "noimage00", "txt": "a sample without an image"})
    write_shard(tmp_path / "in" / "00000.tar", samples[:10])
    write_shard(tmp_path / "in" / "00001.tar", samples[10:])
    return tmp_path / "in"


def make_config(server, **extra):
    return load_caption_config(None, {
        "base_url": server.url, "model": "test-vlm", "api_key_env": "LENSGEN_TEST_KEY", "concurrency": 3,
        "timeout_s": 0.3, "max_retries": 3, "max_bad_answers": 1, "backoff_base_s": 0.01,
        "backoff_max_s": 0.05, "min_words": 20, "progress": False, **extra})


def read_parts(out):
    return pq.read_table(out / "captions").to_pylist()


def test_nothing_lost_nothing_duplicated_and_retries_happen(server, shards, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("LENSGEN_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    summary = run_captioning(shards, out, make_config(server))
    refusals = [n for n in range(N) if SCENARIOS[n % 8] == "refusal"]
    assert summary["samples"] == N + 1
    assert summary["ok"] == N - len(refusals) and summary["failed"] == len(refusals) + 1
    assert summary["failure_reasons"] == {"refusal": len(refusals), "no image member in the sample": 1}
    rows = read_parts(out)
    assert sorted(r["key"] for r in rows) == sorted([f"{n:09d}" for n in range(N)] + ["noimage00"])
    written = [s for s in iter_samples(out / "shards", decode=None)]
    keys = [s["__key__"] for s in written]
    assert len(keys) == len(set(keys)) == N - len(refusals)
    for s in written:  # each image got its own caption; the short caption stays beside it
        n = int(s["__key__"])
        assert s["dense.txt"].decode() == caption_for(n)
        assert s["txt"].decode() == f"short caption {n}"
        assert json.loads(s["json"])["dense_caption"]["model"] == "test-vlm"
    # retries: one extra request per injected failure, two for 500x2; refusals retried once then given up
    expected = {"ok": 1, "429": 2, "500x2": 3, "slow": 2, "malformed": 2, "refusal": 2, "short_once": 2,
                "no_choices": 2}
    assert {n: server.calls[n] for n in range(N)} == {n: expected[SCENARIOS[n % 8]] for n in range(N)}
    assert 1 < server.max_inflight <= 3
    assert any("HTTP 429" in r.message for r in caplog.records)
    assert any("timeout" in r.message for r in caplog.records)
    # the key never shows up: not in logs, output, or any file written
    printed = capsys.readouterr()
    assert KEY not in caplog.text and KEY not in printed.out and KEY not in printed.err
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    # resuming a finished run asks nothing more
    before = sum(server.calls.values())
    again = run_captioning(shards, out, make_config(server))
    assert sum(server.calls.values()) == before and again["ok"] == summary["ok"]


def test_cache_is_keyed_by_image_hash_and_prompt_version(server, shards, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSGEN_TEST_KEY", KEY)
    cache = str(tmp_path / "cache")
    first = run_captioning(shards, tmp_path / "a", make_config(server, cache_dir=cache, max_bad_answers=0))
    calls = sum(server.calls.values())
    second = run_captioning(shards, tmp_path / "b", make_config(server, cache_dir=cache, max_bad_answers=0))
    failures = first["failed"] - 1  # refusals and too-short answers (no retry here); not the imageless one
    short_once = sum(SCENARIOS[n % 8] == "short_once" for n in range(N))
    assert second["cached"] == first["ok"] and second["ok"] == first["ok"] + short_once
    assert sum(server.calls.values()) - calls == failures  # failures are not cached: asked again
    calls = sum(server.calls.values())
    third = run_captioning(shards, tmp_path / "c", make_config(server, cache_dir=cache, prompt_version="v2"))
    assert third["cached"] == 0 and sum(server.calls.values()) - calls >= N


def test_resume_redoes_only_missing_shards_and_retry_failed(server, shards, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSGEN_TEST_KEY", KEY)
    out = tmp_path / "out"
    run_captioning(shards, out, make_config(server))
    (out / "captions" / "00001.parquet").unlink()  # as if the run died while on shard 1
    (out / "shards" / "00001.tar").unlink()
    summary = run_captioning(shards, out, make_config(server))
    rows = read_parts(out)
    assert summary["samples"] == N + 1 and len({r["key"] for r in rows}) == N + 1
    assert all(r["cached"] for r in rows if r["shard"] == "00001.tar" and r["status"] == "ok")
    assert not any(r["cached"] for r in rows if r["shard"] == "00000.tar")
    refusal_calls = sum(server.calls[n] for n in range(N) if SCENARIOS[n % 8] == "refusal")
    run_captioning(shards, out, make_config(server), retry_failed=True)
    assert sum(server.calls[n] for n in range(N) if SCENARIOS[n % 8] == "refusal") > refusal_calls


def test_bad_credentials_stop_the_run_and_config_errors(server, shards, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSGEN_TEST_KEY", "wrong-key")
    with pytest.raises(UserError, match="refused the credentials"):
        run_captioning(shards, tmp_path / "out", make_config(server))
    assert 0 < server.unauthorised <= 6  # stopped early, not once per image with retries
    monkeypatch.delenv("LENSGEN_CAPTION_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(UserError, match="no captioning endpoint"):
        run_captioning(shards, tmp_path / "out", load_caption_config(None, {"model": "m"}))
    with pytest.raises(UserError, match="no .tar shards"):
        run_captioning(tmp_path, tmp_path / "out", make_config(server))


def test_cli_caption_then_stats(server, shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LENSGEN_TEST_KEY", KEY)
    modules = lensgen.cli.COMMAND_MODULES
    extra = [m for m in ["lensgen.data.caption.cli", "lensgen.data.curate.cli"] if m not in modules]
    monkeypatch.setattr(lensgen.cli, "COMMAND_MODULES", modules + extra)
    cfg = tmp_path / "caption.yaml"
    cfg.write_text("model: test-vlm\napi_key_env: LENSGEN_TEST_KEY\ntimeout_s: 0.3\nmin_words: 20\n"
                   "backoff_base_s: 0.01\nbackoff_max_s: 0.05\nmax_bad_answers: 0\n")
    out = tmp_path / "out"
    code = lensgen.cli.main(["data", "caption", "--config", str(cfg), "--base-url", server.url, "--no-progress",
                             str(shards), str(out)])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["samples"] == N + 1
    assert lensgen.cli.main(["data", "stats", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"samples: {N + 1}" in printed and "words_mean" in printed
    cfg.write_text("concurency: 3\n")
    assert lensgen.cli.main(["data", "caption", "--config", str(cfg), str(shards), str(out)]) == 2
    assert "unknown field(s) concurency" in capsys.readouterr().err
