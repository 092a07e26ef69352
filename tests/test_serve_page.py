"""The search page of ``proxyembed serve`` in a real headless Chromium (Debian's package), driven by Playwright.

Playwright's own browser download is not used (no network in CI): the system Chromium is launched by
path. Skipped, saying why, where either is missing; ``.ci/run`` installs both so CI runs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright: pip install playwright")

import httpx  # noqa: E402

from helpers.bundles import make_tiny_bundle  # noqa: E402
from helpers.servers import live_server, make_gallery  # noqa: E402
from proxyembed.serve import ServeOptions, create_app  # noqa: E402

CHROMIUM = os.environ.get("PROXYEMBED_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH: apt-get install chromium (or set PROXYEMBED_CHROMIUM)")
# Flags for a sandboxed, offline machine: as root Chromium needs --no-sandbox, and its background
# services would otherwise try (and fail) to reach the network at every start.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def test_upload_an_image_and_click_through_results(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle", with_int8=False)
    gallery = make_gallery(bundle, tmp_path / "images", tmp_path / "gallery")
    query = tmp_path / "images" / "blue" / "blue_1.png"
    with live_server(create_app(ServeOptions(gallery=gallery))) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.set_default_timeout(30_000)
            page.goto(url)
            page.wait_for_function("document.getElementById('info').textContent.includes('12 items')")
            page.fill("#k", "4")
            page.set_input_files("#file", str(query))
            page.wait_for_selector("#results .card")
            cards = page.locator("#results .card")
            assert cards.count() == 4
            assert cards.nth(0).get_attribute("data-id") == "blue/blue_1.png"  # its own top-1
            assert "blue" in cards.nth(1).inner_text() and "1.0000" in cards.nth(0).inner_text()
            page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
            assert "result(s) for blue_1.png" in page.inner_text("#status")

            clicked = cards.nth(1).get_attribute("data-id")
            cards.nth(1).click()  # search by a result: its neighbours, itself left out
            page.wait_for_function(f"document.getElementById('status').textContent.includes('item {clicked}')")
            ids = [page.locator("#results .card").nth(i).get_attribute("data-id") for i in range(page.locator("#results .card").count())]
            assert clicked not in ids and len(ids) == 4
            page.screenshot(path=str(tmp_path / "page.png"))

            # an id with path syntax in it: the page encodes it as the server routes it
            added = httpx.post(f"{url}/items", files={"images": ("n.png", query.read_bytes())}, data={"ids": "a/neighbors"}, timeout=30)
            assert added.status_code == 200
            assert page.evaluate("async () => (await call(`/items/${idSegment('a/neighbors')}`)).id") == "a/neighbors"
            page.evaluate("searchById('a/neighbors')")
            page.wait_for_function("document.getElementById('status').textContent.includes('item a/neighbors')")
            assert page.locator("#results .card").count() == 4 and "error" not in (page.get_attribute("#status", "class") or "")

            page.set_input_files("#file", files=[{"name": "broken.png", "mimeType": "image/png", "buffer": b"not an image"}])
            page.wait_for_selector("#status.error")
            assert "cannot read image" in page.inner_text("#status")
        finally:
            browser.close()
