"""The page of `dpdiff serve` in headless Chromium: a person chooses an image, sees the decision and the overlay;
the page asks nothing of any host but the server (it must work offline, behind a line's firewall)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration

LABELS = {"anomalous": "ANOMALOUS", "normal": "NORMAL", "uncalibrated": "NO DECISION (not calibrated)"}


@pytest.fixture(scope="module")
def page_server(tiny_run, tmp_path_factory, start_server):
    with start_server(tiny_run.run, tmp_path_factory.mktemp("page_server")) as srv:
        yield srv


def test_page_is_self_contained(page_server):
    r = httpx.get(page_server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    text = r.text
    # no external script, style sheet, image, font or frame: everything is inline
    assert not re.search(r"<(script|link|img|iframe|source)\b[^>]*\b(src|href)\s*=", text, re.I)
    assert not re.search(r"https?://", text) and "@import" not in text and "url(" not in text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp


def test_page_scores_a_chosen_image(page_server, tiny_run, expected, chromium, tmp_path):
    image = next(p for p in tiny_run.images if "good" not in p.parts and p.suffix == ".png")
    want = expected(image, None)
    chromium.navigate(page_server.url + "/")
    chromium.wait_for("document.getElementById('status').textContent === 'online'", 30, "the page reading /health")
    chromium.set_files("#file", [str(image)])
    chromium.wait_for(
        "(function () { var f = document.querySelector('#results .result');"
        " return f && f.getAttribute('data-state') !== 'pending'; })()",
        60,
        "the result card",
    )
    card = chromium.evaluate("""(function () {
        var f = document.querySelector('#results .result'), img = f.querySelector('img.overlay');
        var d = f.querySelector('.decision');
        return {state: f.getAttribute('data-state'), decision: f.getAttribute('data-decision'),
                text: d ? d.textContent : f.textContent, complete: img ? img.complete : false,
                width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0,
                rows: document.querySelectorAll('#recent tbody tr').length,
                row: document.querySelector('#recent tbody tr').textContent,
                thresholds: document.querySelectorAll('#thresholds tbody tr').length};
    })()""")
    expected_decision = "uncalibrated" if want.is_anomalous is None else "anomalous" if want.is_anomalous else "normal"
    assert card["state"] == "done", card
    assert card["decision"] == expected_decision and card["text"] == LABELS[expected_decision], card
    assert card["complete"] and card["width"] > 0 and card["height"] > 0, card  # the overlay rendered
    assert card["rows"] == 1 and image.name in card["row"] and card["thresholds"] >= 1

    shot = chromium.screenshot(tmp_path / "serve_page.png")
    arr = np.asarray(Image.open(shot).convert("RGB"))
    assert arr.shape[0] > 400 and arr.shape[1] >= 1000 and arr.std() > 10  # drawn, not blank
    if os.environ.get("DPDIFF_TEST_ARTIFACTS"):
        dest = Path(os.environ["DPDIFF_TEST_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / shot.name)

    server = urlsplit(page_server.url).netloc
    urls = chromium.requested_urls()
    assert any(u.endswith("/predict?overlay=1") for u in urls) and any(u.endswith("/health") for u in urls)
    elsewhere = [u for u in urls if not u.startswith(("data:", "blob:")) and urlsplit(u).netloc != server]
    assert elsewhere == [], elsewhere
