"""Caption checks, cache keys, backoff and endpoint resolution (no server needed)."""

import pytest

from lensgen.data.caption.cache import CaptionCache
from lensgen.data.caption.checks import check_caption, clean_caption
from lensgen.data.caption.client import backoff_seconds, image_data_url, redact
from lensgen.data.caption.config import CaptionConfig, load_caption_config, resolve_endpoint
from lensgen.data.curate import synth
from lensgen.errors import UserError

GOOD = " ".join(["A red cube rests to the left of a blue sphere on a wooden table under warm light."] * 6)


def test_clean_caption_strips_markdown_quotes_and_prefixes():
    assert clean_caption('**Caption:** "A red cube\n\non a table."') == "A red cube on a table."
    assert clean_caption("- a cat\n- a dog\n# Title") == "a cat a dog Title"
    assert clean_caption("  plain   text \n") == "plain text"


@pytest.mark.parametrize("text,reason", [
    ("I'm sorry, but I can't help with that.", "refusal"),
    ("Sorry, I cannot describe people.", "refusal"),
    ("As an AI, I cannot see images.", "refusal"),
    ("I am unable to identify this image " + "word " * 50, "refusal"),
    ("A red cube.", "too short (3 words < 40)"),
    ("", "empty answer"),
    (GOOD * 5, "too long"),
])
def test_bad_answers_are_named(text, reason):
    got = check_caption(clean_caption(text), 40, 250)
    assert got is not None and got.startswith(reason)


def test_good_answers_pass_and_structured_refusals_and_truncation_fail():
    assert check_caption(GOOD, 40, 250) is None
    assert check_caption(GOOD, 40, 250, refusal="policy") == "refusal"
    assert check_caption(GOOD, 40, 250, finish_reason="length").startswith("truncated")


def test_cache_key_depends_on_image_hash_and_prompt_version(tmp_path):
    cache = CaptionCache(tmp_path)
    cache.put("aa" * 32, "v1", {"caption": "one"})
    assert cache.get("aa" * 32, "v1") == {"caption": "one"}
    assert cache.get("aa" * 32, "v2") is None and cache.get("bb" * 32, "v1") is None
    assert CaptionCache.key("x", "v1") != CaptionCache.key("x", "v2")


def test_backoff_grows_is_capped_and_honours_retry_after():
    delays = [backoff_seconds(a, 1.0, 10.0) for a in range(1, 8)]
    assert 0.5 <= delays[0] <= 1.0 and 2.0 <= delays[2] <= 4.0 and max(delays) <= 10.0
    assert backoff_seconds(3, 1.0, 10.0, retry_after=2.5) == 2.5
    assert backoff_seconds(3, 1.0, 10.0, retry_after=99) == 10.0


def test_redaction_and_endpoint_never_show_the_key(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    endpoint = resolve_endpoint(CaptionConfig(base_url="https://u:p@host/v1/", model="m", api_key_env="MY_KEY"))
    assert endpoint.url == "https://u:p@host/v1/chat/completions"
    assert endpoint.headers["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in repr(endpoint) and "sk-secret" not in redact("x sk-secret-123 y", endpoint.secret)
    assert redact(endpoint.url, None) == "https://***@host/v1/chat/completions"
    azure = resolve_endpoint(CaptionConfig(base_url="https://r.openai.azure.com/openai/deployments/d", model="d",
                                           api_key_env="MY_KEY", azure_api_version="2024-10-21"))
    assert azure.url.endswith("/chat/completions?api-version=2024-10-21") and azure.headers["api-key"]
    monkeypatch.setenv("LENSGEN_CAPTION_BASE_URL", "http://localhost:11434/v1")
    monkeypatch.setenv("LENSGEN_CAPTION_MODEL", "llava")
    env = resolve_endpoint(CaptionConfig(api_key_env="UNSET_VARIABLE_X"))
    assert env.model == "llava" and "Authorization" not in env.headers


def test_images_are_sent_as_downscaled_jpeg_data_urls():
    import base64
    import io

    from PIL import Image

    url = image_data_url(synth.encode(synth.photo_like(0, 600, 1200), "PNG"), 256, 90)
    assert url.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.format == "JPEG" and image.size == (256, 128)


def test_caption_config_validation():
    with pytest.raises(UserError, match="min_words <= max_words"):
        load_caption_config(None, {"min_words": 300, "max_words": 10})
    with pytest.raises(UserError, match="concurrency"):
        load_caption_config(None, {"concurrency": 0})
