"""`lensgen serve`'s HTTP API on a real uvicorn with the shipped model: OpenAI compatibility (its own client),
every 4xx with its message, the API key, 429 + Retry-After, the timeout, metrics, the page, shutdown."""

import base64
import copy
import dataclasses
import io
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest
import requests
import torch
from PIL import Image
from serve_helpers import GatedHost, running

import lensgen.cli
import lensgen.serve.api
from lensgen.serve.api import create_app
from lensgen.serve.config import ServeConfig
from lensgen.serve.host import ModelHost

KEY = "sk-serve-DO-NOT-LEAK-31337"
FAST = {"size": "32x32", "steps": 2}


@pytest.fixture(scope="module")
def pipelines(shipped_pipeline):
    torch.set_num_threads(1)
    return {"shapes-tiny": shipped_pipeline}


@pytest.fixture(scope="module")
def server(pipelines):
    with running(create_app(ModelHost(pipelines), ServeConfig(max_wait_ms=20))) as (srv, url):
        yield url


def post(url, body, **kw):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return requests.post(f"{url}/v1/images/generations", data=data, timeout=60, **kw)


def png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_generation_returns_the_pipelines_images_with_their_settings(server, shipped_pipeline):
    r = post(server, {"prompt": "a red circle", "n": 2, "seed": 7, "cfg": 2.0, **FAST})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "shapes-tiny" and body["size"] == "32x32" and len(body["data"]) == 2
    assert body["lensgen"] | {"seconds": 0} == {"steps": 2, "cfg": 2.0, "classifier_scale": 20.0, "seed": 7,
                                                 "negative_prompt": "",
                                                 "reasoner": "none", "reasoner_fallback": None, "seconds": 0}
    want = shipped_pipeline(["a red circle"] * 2, height=32, width=32, steps=2, cfg=2.0, seed=[7, 8])
    for item, seed, expected in zip(body["data"], (7, 8), want):
        image = png(item["b64_json"])
        assert image.size == (32, 32) and item["seed"] == seed and item["revised_prompt"] == "a red circle"
        assert image.text["prompt"] == "a red circle" and image.text["seed"] == str(seed)
        assert image.text["steps"] == "2" and image.text["cfg"] == "2.0" and image.text["size"] == "32x32"
        assert image.text["classifier_scale"] == "20.0"  # the shipped model's default guidance
        diff = np.abs(np.asarray(image.convert("RGB"), float) - np.asarray(expected, float))
        assert diff.max() <= 2  # the same image as the pipeline's (within float reordering in a batch)


def test_shapes_reasoner_rewrite_is_returned_and_sampled(server):
    r = post(server, {"prompt": "two red stars left of a blue circle", "reasoner": "shapes", "n": 2, "seed": 1,
                      **FAST})
    assert r.status_code == 200, r.text
    first, second = r.json()["data"]
    assert "The two red stars are to the left of the blue circle." in first["revised_prompt"]
    assert first["revised_prompt"] != second["revised_prompt"]  # each seed its own planned layout
    assert png(first["b64_json"]).text["revised_prompt"] == first["revised_prompt"]
    passthrough = post(server, {"prompt": "a cat", "reasoner": "shapes", **FAST}).json()
    assert passthrough["data"][0]["revised_prompt"] == "a cat"
    assert passthrough["lensgen"]["reasoner_fallback"].startswith("not a Shapes prompt")


BAD = [
    ('{"prompt": "x",', 400, None, "not valid JSON"),
    ("[1, 2]", 400, None, "must be a JSON object"),
    ({"n": 1}, 400, "prompt", "prompt is required"),
    ({"prompt": "   "}, 400, "prompt", "prompt is required"),
    ({"prompt": "x" * 2001}, 400, "prompt", "at most 2,000"),
    ({"prompt": 5}, 400, "prompt", "must be a string"),
    ({"prompt": "x", "n": 0}, 400, "n", "from 1 to 4"),
    ({"prompt": "x", "n": 5}, 400, "n", "from 1 to 4"),
    ({"prompt": "x", "n": "2"}, 400, "n", "whole number"),
    ({"prompt": "x", "size": "65x64"}, 400, "size", "multiples of 8"),
    ({"prompt": "x", "size": "32x96"}, 400, "size", "outside 1:2 .. 2:1"),
    ({"prompt": "x", "size": "256x256"}, 400, "size", "at most 224"),
    ({"prompt": "x", "size": "big"}, 400, "size", "expected WIDTHxHEIGHT"),
    ({"prompt": "x", "steps": 0}, 400, "steps", "from 1 to 100"),
    ({"prompt": "x", "steps": 2.5}, 400, "steps", "whole number"),
    ({"prompt": "x", "cfg": -1}, 400, "cfg", "from 0 to 20"),
    ('{"prompt": "x", "cfg": NaN}', 400, "cfg", "from 0 to 20"),
    ({"prompt": "x", "classifier_scale": -1}, 400, "classifier_scale", "from 0 to 1000"),
    ('{"prompt": "x", "classifier_scale": Infinity}', 400, "classifier_scale", "from 0 to 1000"),
    ({"prompt": "x", "classifier_scale": True}, 400, "classifier_scale", "from 0 to 1000"),
    ({"prompt": "x", "seed": -3}, 400, "seed", "from 0 to"),
    ({"prompt": "x", "response_format": "url"}, 400, "response_format", "only b64_json"),
    ({"prompt": "x", "model": "dall-e-3"}, 400, "model", "available: shapes-tiny"),
    ({"prompt": "x", "reasoner": "llm"}, 400, "reasoner", "available: none, shapes"),
    ({"prompt": "x", "step": 3}, 400, "step", "unknown field(s) step; allowed: prompt"),
    ({"prompt": "x" * 70000}, 413, None, "at most 65,536"),
]


@pytest.mark.parametrize("body,status,param,message", BAD)
def test_bad_input_gets_a_4xx_that_names_the_field_and_what_is_allowed(server, body, status, param, message):
    r = post(server, body)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param and message in error["message"] and error["type"] == "invalid_request_error"


def test_classifier_guidance_is_refused_up_front_for_a_model_without_a_classifier(pipelines):
    plain = copy.copy(pipelines["shapes-tiny"])  # the same weights, no classifier/ folder
    plain.classifier, plain.defaults = None, dataclasses.replace(plain.defaults, classifier_scale=0.0)
    host = GatedHost({"shapes-tiny": pipelines["shapes-tiny"], "plain": plain})
    host.gate.set()
    with running(create_app(host, ServeConfig(max_wait_ms=0))) as (_, url):
        r = post(url, {"prompt": "a red circle", "model": "plain", "classifier_scale": 5, **FAST})
        assert r.status_code == 400 and r.json()["error"]["param"] == "classifier_scale"
        assert "'plain' has no classifier" in r.json()["error"]["message"]
        assert host.calls == []  # refused before it queued
        assert post(url, {"prompt": "a red circle", "model": "plain", **FAST}).status_code == 200  # its default: 0
        assert post(url, {"prompt": "a red circle", "classifier_scale": 5, **FAST}).status_code == 200
    assert len(host.calls) == 2


def test_openai_client_and_api_key(pipelines, caplog):
    caplog.set_level(logging.DEBUG)
    app = create_app(ModelHost(pipelines), ServeConfig(max_wait_ms=0), api_key=KEY)
    with running(app, log_level="debug") as (_, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        result = client.images.generate(model="shapes-tiny", prompt="a blue square", n=1, size="32x32",
                                        response_format="b64_json", extra_body={"steps": 2, "seed": 3})
        assert png(result.data[0].b64_json).text["seed"] == "3" and result.data[0].revised_prompt == "a blue square"
        assert [m.id for m in client.models.list()] == ["shapes-tiny"]
        with pytest.raises(openai.BadRequestError, match="multiples of 8"):
            client.images.generate(prompt="a blue square", size="33x32", response_format="b64_json")
        with pytest.raises(openai.AuthenticationError, match="invalid API key"):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        missing = requests.get(f"{url}/metrics", timeout=10)
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
        assert "Authorization: Bearer" in missing.json()["error"]["message"]
        assert post(url, {"prompt": "x", **FAST}).status_code == 401
        assert requests.get(f"{url}/healthz", timeout=10).json()["auth"] is True  # open: the page asks for a key
        assert requests.get(f"{url}/", timeout=10).status_code == 200
        assert requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).ok
    assert "POST /v1/images/generations" in caplog.text and KEY not in caplog.text


def test_full_queue_answers_429_with_retry_after_then_serves_again(pipelines):
    host = GatedHost(pipelines)
    app = create_app(host, ServeConfig(queue_size=4, max_n=4, max_wait_ms=0))
    with running(app) as (_, url), ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, url, {"prompt": "a red circle", "n": 4, **FAST})
        assert host.entered.wait(30)  # 4 images sampling: the queue is full
        busy = post(url, {"prompt": "a red circle", **FAST})
        assert busy.status_code == 429 and int(busy.headers["Retry-After"]) >= 1
        assert busy.json()["error"]["type"] == "rate_limit_error" and "retry in" in busy.json()["error"]["message"]
        depth = requests.get(f"{url}/metrics", timeout=10).text
        assert "lensgen_queue_depth 4" in depth and 'lensgen_requests_total{status="429"} 1' in depth
        host.gate.set()
        assert first.result(60).status_code == 200
        assert post(url, {"prompt": "a red circle", **FAST}).status_code == 200


def test_timeout_answers_504_and_its_images_are_never_sampled(pipelines):
    host = GatedHost(pipelines)
    app = create_app(host, ServeConfig(timeout_s=1.0, max_wait_ms=0))
    with running(app) as (_, url), ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, url, {"prompt": "a red circle", "seed": 1, **FAST})
        assert host.entered.wait(30)
        late = post(url, {"prompt": "a green star", "seed": 2, **FAST})  # waits behind the gated call
        assert late.status_code == 504 and "timeout" in late.json()["error"]["message"]
        host.gate.set()
        assert first.result(60).status_code == 504  # it was sampling when its time ran out
    assert app.state.service.batcher.depth == 0  # shutdown drained the queue: nothing else was waiting
    assert [j.prompt for call in host.calls for j in call] == ["a red circle"]


def test_shutdown_finishes_requests_in_flight(pipelines):
    host = GatedHost(pipelines)
    with running(create_app(host, ServeConfig(max_wait_ms=0))) as (srv, url), ThreadPoolExecutor(2) as pool:
        inflight = [pool.submit(post, url, {"prompt": "a red circle", "seed": s, **FAST}) for s in (1, 2)]
        assert host.entered.wait(30)
        srv.should_exit = True  # what SIGTERM / Ctrl-C does
        threading.Timer(0.5, host.gate.set).start()
        assert [f.result(60).status_code for f in inflight] == [200, 200]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=5)


def test_metrics_count_batches_latency_and_images(pipelines):
    app = create_app(ModelHost(pipelines), ServeConfig(max_wait_ms=500, max_batch=8))
    with running(app) as (_, url), ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda s: post(url, {"prompt": "a red circle", "seed": s, "n": 2, **FAST}), range(4)))
        assert [r.status_code for r in replies] == [200] * 4
        text = requests.get(f"{url}/metrics", timeout=10).text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values["lensgen_images_served_total"] == 8 and values['lensgen_requests_total{status="200"}'] == 4
    assert values["lensgen_batch_size_sum"] == 8 and values["lensgen_request_seconds_count"] == 4
    assert values["lensgen_batch_size_count"] < 4  # requests shared sampler calls
    buckets = [v for k, v in values.items() if k.startswith("lensgen_request_seconds_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == 4
    assert "# TYPE lensgen_batch_size histogram" in text and "# TYPE lensgen_queue_depth gauge" in text


def test_models_health_and_page(server):
    models = requests.get(f"{server}/v1/models", timeout=10).json()
    assert models["object"] == "list" and models["reasoners"] == ["none", "shapes"]
    assert models["data"][0]["lensgen"] | {"description": ""} == {
        "default_size": "64x64", "size_multiple": 8, "max_side": 224, "steps": 20, "cfg": 1.0, "classifier_scale": 20.0,
        "classifier": True, "description": ""}
    assert requests.get(f"{server}/healthz", timeout=10).json()["status"] == "ok"
    page = requests.get(f"{server}/", timeout=10)
    assert page.status_code == 200 and "default-src 'self'" in page.headers["Content-Security-Policy"]
    for name in ("app.js", "style.css"):
        assert requests.get(f"{server}/static/{name}", timeout=10).status_code == 200
    assert requests.get(f"{server}/static/..%2Fapi.py", timeout=10).status_code == 404
    web = Path(lensgen.serve.api.__file__).parent / "web"
    for path in web.iterdir():  # nothing loaded from the internet
        assert "http://" not in path.read_text() and "https://" not in path.read_text(), path


def test_serve_command_checks_before_loading(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("LENSGEN_UNSET_KEY", raising=False)
    assert lensgen.cli.main(["serve", "--api-key-env", "LENSGEN_UNSET_KEY"]) == 2
    assert "LENSGEN_UNSET_KEY: that environment variable is empty or unset" in capsys.readouterr().err
    assert lensgen.cli.main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert lensgen.cli.main(["serve", "--queue-size", "2", "--max-n", "4"]) == 2
    assert "queue_size: expected >= max_n" in capsys.readouterr().err


def test_llm_reasoner_rewrites_and_its_failure_never_fails_the_request(pipelines, monkeypatch):
    from chat_server import GOOD, ChatServer
    from chat_server import KEY as LLM_KEY

    from lensgen.reasoner import NoReasoner
    from lensgen.reasoner.llm import LLMReasoner, ReasonerConfig

    chat = ChatServer()
    monkeypatch.setenv("LENSGEN_TEST_REASONER_KEY", LLM_KEY)
    llm = LLMReasoner(ReasonerConfig(base_url=chat.url, model="m", api_key_env="LENSGEN_TEST_REASONER_KEY",
                                     timeout_s=0.5, max_retries=1, backoff_base_s=0.01, backoff_max_s=0.02))
    app = create_app(ModelHost(pipelines), ServeConfig(max_wait_ms=0, reasoner="llm"),
                     reasoners={"none": NoReasoner(), "llm": llm})
    try:
        with running(app) as (_, url):
            good = post(url, {"prompt": "plain a boat", "n": 2, **FAST}).json()  # the server's default reasoner
            assert [d["revised_prompt"] for d in good["data"]] == [GOOD, GOOD] and chat.calls["plain"] == 1
            assert png(good["data"][0]["b64_json"]).text["revised_prompt"] == GOOD
            with pytest.warns(Warning, match="using the prompt as typed"):
                down = post(url, {"prompt": "down a boat", **FAST})
            assert down.status_code == 200 and down.json()["data"][0]["revised_prompt"] == "down a boat"
            assert "HTTP 503" in down.json()["lensgen"]["reasoner_fallback"]
            metrics = requests.get(f"{url}/metrics", timeout=10).text
            assert 'lensgen_rewrites_total{backend="llm",fallback="true"} 1' in metrics
            assert 'lensgen_rewrites_total{backend="llm",fallback="false"} 1' in metrics
    finally:
        chat.close()


def test_several_models_are_listed_chosen_and_never_share_a_call(shipped_pipeline):
    host = GatedHost({"first": shipped_pipeline, "second": shipped_pipeline})
    host.gate.set()
    with running(create_app(host, ServeConfig(max_wait_ms=300))) as (_, url), ThreadPoolExecutor(4) as pool:
        assert [m["id"] for m in requests.get(f"{url}/v1/models", timeout=10).json()["data"]] == ["first", "second"]
        replies = list(pool.map(lambda m: post(url, {"prompt": "a red circle", "model": m, **FAST}),
                                ["first", "second", "first", "second"]))
    assert [r.json()["model"] for r in replies] == ["first", "second", "first", "second"]
    assert [png(r.json()["data"][0]["b64_json"]).text["model"] for r in replies] == ["first", "second"] * 2
    assert sum(len(call) for call in host.calls) == 4  # (a call mixing models would mislabel an image above)
