"""The page in a real browser: Debian's chromium, headless, driven by playwright (no browser download).

It types a prompt, turns the Reasoner on, presses Generate, waits for the image, checks that it shows at
the chosen size with its settings and the rewritten prompt, and saves the screenshot docs/serving.md shows.
`make test` installs chromium when it is missing; here a missing browser fails, it does not skip.
"""

import shutil
import time
from pathlib import Path

import pytest
import torch
from playwright.sync_api import sync_playwright
from serve_helpers import running

from lensgen.io import atomic_write_bytes
from lensgen.serve.api import create_app
from lensgen.serve.config import ServeConfig
from lensgen.serve.host import ModelHost

SCREENSHOT = Path(__file__).parents[1] / "docs" / "serve-page.png"
PROMPT = "two red stars left of a blue circle"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: `make test` installs it (apt-get install -y chromium)")
    return path


def wait_until(page, expression: str, timeout_s: float = 120.0) -> None:
    """Poll a JavaScript expression from Python until it is true. (`page.wait_for_function` polls with eval()
    inside the page, which the page's CSP, `script-src 'self'`, forbids once the first check is false.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout_s:g} s: {expression}")
        time.sleep(0.05)


def test_page_generates_an_image_in_headless_chromium(shipped_pipeline, tmp_path):
    torch.set_num_threads(1)
    app = create_app(ModelHost({"shapes-tiny": shipped_pipeline}), ServeConfig(max_wait_ms=0))
    with running(app) as (_, url), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 620})
        failed = []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(url)
        wait_until(page, "document.querySelectorAll('#size option').length > 0")
        assert page.inner_text("#server-status") == "1 model(s) ready"
        page.fill("#prompt", PROMPT)
        page.select_option("#size", "96x96")
        page.fill("#steps", "4")
        page.fill("#seed", "5")
        assert page.get_attribute("#classifier_scale", "placeholder") == "20"  # the model's default guidance
        page.fill("#classifier_scale", "5")
        page.check("#use-reasoner")
        page.click("#generate")
        card = page.wait_for_selector(".card img", timeout=120_000)
        wait_until(page, "document.querySelector('.card img').complete && "
                         "document.querySelector('.card img').naturalWidth > 0")
        assert card.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [96, 96]
        assert card.is_visible() and card.bounding_box()["width"] > 100
        settings = page.inner_text(".card")
        assert PROMPT in settings and "96x96, 4 steps, CFG 1, guidance 5, seed 5" in settings
        rewritten = page.inner_text("#rewritten")
        assert "The two red stars are to the left of the blue circle." in rewritten
        assert page.get_attribute(".card a", "download") == "lensgen-5.png"
        assert page.is_hidden("#progress") and page.is_hidden("#error")
        page.fill("#prompt", "x" * 2001)  # a server refusal shows its message
        page.click("#generate")
        page.wait_for_selector("#error:not([hidden])")
        assert "prompt is 2,001 characters long; at most 2,000 are allowed" in page.inner_text("#error")
        page.fill("#prompt", PROMPT)
        page.evaluate("document.getElementById('error').hidden = true")
        atomic_write_bytes(SCREENSHOT, page.screenshot())
        browser.close()
    assert not failed  # no request went anywhere but this server (the page has no outside asset)
