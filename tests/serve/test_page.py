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
ONLINE = "document.getElementById('status').textContent === 'online'"
LATEST_CARD = """(function () {
    var f = document.querySelector('#results .result');
    if (!f || f.getAttribute('data-state') === 'pending') return null;
    var img = f.querySelector('img.overlay'), d = f.querySelector('.decision');
    var row = document.querySelector('#recent tbody tr');
    return {state: f.getAttribute('data-state'), decision: f.getAttribute('data-decision'),
            text: d ? d.textContent : f.textContent, complete: img ? img.complete : false,
            width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0,
            rows: document.querySelectorAll('#recent tbody tr').length, row: row ? row.textContent : '',
            thresholds: document.querySelectorAll('#thresholds tbody tr').length};
})()"""


def choose_and_read(chromium, image: Path) -> dict:
    """Choose ``image`` in the page's file input and return the result card once it is filled."""
    chromium.set_files("#file", [str(image)])
    return chromium.wait_for(LATEST_CARD, 60, "the result card")


def decision_of(prediction) -> str:
    if prediction.is_anomalous is None:
        return "uncalibrated"
    return "anomalous" if prediction.is_anomalous else "normal"


def test_page_is_self_contained(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    text = r.text
    # no external script, style sheet, image, font or frame: everything is inline
    assert not re.search(r"<(script|link|img|iframe|source)\b[^>]*\b(src|href)\s*=", text, re.I)
    assert not re.search(r"https?://", text) and "@import" not in text and "url(" not in text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp


def test_page_scores_a_chosen_image(server, tiny_run, expected, chromium, tmp_path):
    image = next(p for p in tiny_run.images if "good" not in p.parts and p.suffix == ".png")
    want = expected(image, None)
    chromium.navigate(server.url + "/")
    chromium.wait_for(ONLINE, 30, "the page reading /health")
    card = choose_and_read(chromium, image)
    assert card["state"] == "done", card
    assert card["decision"] == decision_of(want) and card["text"] == LABELS[decision_of(want)], card
    assert want.is_anomalous is not None  # the tiny run is calibrated: a real decision is shown
    assert card["complete"] and card["width"] > 0 and card["height"] > 0, card  # the overlay rendered
    assert (
        card["rows"] == 1 and image.name in card["row"] and card["thresholds"] == 2
    )  # global + the calibrated category

    shot = chromium.screenshot(tmp_path / "serve_page.png")
    arr = np.asarray(Image.open(shot).convert("RGB"))
    assert arr.shape[0] > 400 and arr.shape[1] >= 1000 and arr.std() > 10  # drawn, not blank
    if os.environ.get("DPDIFF_TEST_ARTIFACTS"):
        dest = Path(os.environ["DPDIFF_TEST_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / shot.name)

    host = urlsplit(server.url).netloc
    urls = chromium.requested_urls()
    assert any(u.endswith("/predict?overlay=1") for u in urls) and any(u.endswith("/health") for u in urls)
    elsewhere = [u for u in urls if not u.startswith(("data:", "blob:")) and urlsplit(u).netloc != host]
    assert elsewhere == [], elsewhere


def test_page_asks_for_the_token(token_server, tiny_run, expected, chromium):
    chromium.navigate(token_server.url + "/")
    chromium.wait_for(
        "!document.getElementById('token-box').hidden && "
        "document.getElementById('status').textContent.indexOf('offline') === 0",
        30,
        "the token prompt after a 401",
    )
    chromium.evaluate(
        f"document.getElementById('token').value = {token_server.token!r}; "
        f"document.getElementById('token-use').click(); true"
    )
    chromium.wait_for(ONLINE, 30, "the page reading /health with the token")
    image = tiny_run.images[0]
    card = choose_and_read(chromium, image)
    assert card["state"] == "done" and card["decision"] == decision_of(expected(image, None)), card
