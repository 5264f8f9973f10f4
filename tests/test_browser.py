"""The served page in a real browser: a briefly trained tiny model behind uvicorn, headless
Chromium types German, presses Ctrl+Enter and reads the English, the model's name and BLEU.

Skips without selenium, ``/usr/bin/chromium`` or ``/usr/bin/chromedriver`` (``.ci/run`` installs
them). GAPLESS_SCREENSHOT=1 saves the page as docs/serve_page.png (else in a temporary folder);
for a real model: ``gapless serve RUN`` and ``python -m gapless.serve.screenshot URL OUT.png``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from gapless import config as config_mod
from gapless.serve import screenshot as page

WHY_NOT = page.missing()
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(WHY_NOT is not None, reason=f"no browser: {WHY_NOT}")]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def trained_run(tiny_corpus, tmp_path) -> Path:
    """The tiny preset trained for a few dozen updates on the tiny corpus, with test BLEU."""
    from gapless.evaluate import evaluate
    from gapless.training import train

    cfg = config_mod.load("tiny", {
        "data.corpus": str(tiny_corpus), "train.device": "cpu", "train.dtype": "fp32",
        "train.threads": 1, "train.max_updates": 120, "train.valid_every": 1000,
        "train.save_every": 1000, "decode.max_len_b": 5})
    run = tmp_path / "runs" / "tiny"
    train(cfg, run)
    evaluate(run, "test2016", device="cpu")
    return run


def test_the_page_translates_in_chromium(trained_run, tiny_corpus, tmp_path):
    from gapless.inference import load
    from gapless.serve import Background, ServeSettings, create_app

    german = (tiny_corpus / "test2016.de").read_text(encoding="utf-8").splitlines()[0]
    out = (ROOT / "docs" / "serve_page.png" if os.environ.get("GAPLESS_SCREENSHOT") == "1"
           else tmp_path / "serve_page.png")
    app = create_app(load(trained_run, device="cpu"), ServeSettings(max_wait_ms=1))
    with Background(app) as url:
        api = httpx.post(f"{url}/v1/translate", timeout=60,
                         json={"text": german, "beam": 3, "n_best": 2}).json()
        driver = page.chromium()
        try:
            page.open_page(driver, url)
            order = page.focus_order(driver)
            shown = page.translate(driver, german, beam=3, n_best=2)
            page.save_page(driver, out)
        finally:
            driver.quit()
    assert order == ["source", "beam", "nbest", "translate"]  # autofocus, then Tab
    assert shown["error"] == "" and shown["focused"] == "source"
    [best] = shown["translations"]
    assert best["text"] and best["text"] == api["translations"][0]["text"]
    assert best["alternatives"] == [a["text"] for a in api["translations"][0]["alternatives"]]
    assert len(best["alternatives"]) == 1
    assert "Translated 1 sentence in" in shown["status"] and "beam 3" in shown["status"]
    assert "tiny" in shown["model"] and "BLEU test2016" in shown["model"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
