"""The live panels in a real browser: JupyterLab in headless Chromium, driven by Playwright.
Screenshots are kept in artifacts/ui/."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "ui"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["jupyterlab", "notebook"])
def lab(request, tmp_path_factory):
    """JupyterLab, then Notebook 7: the panel needs no lab extension in either."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make test` installs it as root (apt-get install chromium)")
        pytest.skip("chromium is not installed here (apt-get install chromium)")
    root = tmp_path_factory.mktemp("lab")
    port, token = free_port(), "gptoss-lab-test"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(root / ".jupyter"), JUPYTER_RUNTIME_DIR=str(root / ".runtime"))
    server = subprocess.Popen(
        [sys.executable, "-m", request.param, "--no-browser", "--allow-root", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("JupyterLab did not start") from None
            time.sleep(0.5)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield root, url, token, browser, request.param
        browser.close()
    server.terminate()
    server.wait(timeout=20)


def notebook(root: Path, name: str, cells: list[str]) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / name)
    return name


def open_and_run(browser, url, token, app, name, cells: int):
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    if app == "jupyterlab":
        # A workspace of its own, so that notebooks opened by other tests are not restored over this one.
        page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page.wait_for_selector("text=| Idle", timeout=60_000)
    else:
        page.goto(f"{url}/notebooks/{name}?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        time.sleep(3)  # cells run once the kernel is up: executions wait for it
    page.click(".jp-Notebook .jp-Cell .jp-InputArea-editor")
    for _ in range(cells):
        page.keyboard.press("Shift+Enter")
        time.sleep(0.3)
    return page


def test_panel_appears_streams_and_shows_the_channels(lab):
    root, url, token, browser, app = lab
    (root / "rec.txt").write_text(
        "<|channel|>analysis<|message|>" + " ".join(["We need to compute 12*34 carefully."] * 8) + "<|end|>"
        "<|start|>assistant<|channel|>analysis to=python code<|message|>print(12*34)<|call|>"
        "<|start|>assistant<|channel|>final<|message|>12 × 34 = **408**<|return|>",
        encoding="utf-8",
    )
    name = notebook(root, "stream.ipynb", ["%load_ext gptoss_lab", "%gptoss load replay:rec.txt --tps 40",
                                           "%%gptoss --tools python -o r\nWhat is 12*34?"])
    page = open_and_run(browser, url, token, app, name, 3)
    page.wait_for_selector(".gl-panel .gl-status.gl-running", timeout=60_000)
    page.wait_for_selector(".gl-panel .gl-analysis", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / f"{app}-panel-streaming.png"))
    live = page.locator(".gl-panel details.gl-analysis").first
    assert live.get_attribute("open") is None  # collapsed by default
    assert "raw, unfiltered chain of thought" in live.locator("summary").text_content()
    live.locator("summary").click()  # opened while it streams: it must stay open, then and after
    time.sleep(1.0)
    if page.locator(".gl-panel details.gl-analysis").count():
        assert page.locator(".gl-panel details.gl-analysis").first.get_attribute("open") is not None
    # The turn ends: the panel gives way, in place, to the saved form (the extension renders it).
    page.wait_for_selector(".gls .gls-final", timeout=60_000)
    assert page.locator(".gl-panel").count() == 0
    done = page.locator(".gls").first
    assert done.locator("details.gls-analysis").first.get_attribute("open") is not None  # still open
    assert "408" in done.locator(".gls-tool .gls-content").first.inner_text()  # the sandbox's real output
    assert done.locator(".gls-final strong").inner_text() == "408"  # Markdown rendered
    assert "analysis → python" in done.locator(".gls-call .gls-label").first.text_content()  # in its own case
    page.screenshot(path=str(ARTIFACTS / f"{app}-panel-done.png"))
    page.close()


def test_stop_button_stops_the_turn(lab):
    root, url, token, browser, app = lab
    words = " ".join(f"step{i}" for i in range(3000))
    (root / "slow.txt").write_text(f"<|channel|>analysis<|message|>{words}<|end|><|start|>assistant<|channel|>final<|message|>done<|return|>",
                                   encoding="utf-8")
    name = notebook(root, "stop.ipynb", ["%load_ext gptoss_lab", "%gptoss load replay:slow.txt --tps 30",
                                         "%%gptoss -o r\nThink for a long time.", "r.stop_reason"])
    page = open_and_run(browser, url, token, app, name, 3)
    page.wait_for_selector(".gl-panel .gl-status.gl-running", timeout=60_000)
    page.wait_for_selector(".gl-panel .gl-analysis", timeout=30_000)
    page.click(".gl-panel .gl-stop")
    page.wait_for_selector(".gls .gls-head:has-text('stopped')", timeout=10_000)  # the saved form, ended by Stop
    page.locator(".jp-Notebook .jp-Cell").nth(3).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")  # r.stop_reason: the kernel is free again, the result kept
    page.wait_for_selector(".jp-OutputArea-output:has-text(\"'stopped'\")", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / f"{app}-panel-stopped.png"))
    page.close()


def test_inspection_view_shows_tokens_and_routing(lab):
    root, url, token, browser, app = lab
    name = notebook(root, "inspect.ipynb", ["%load_ext gptoss_lab", "%gptoss load",  # the default here: nano
                                            "%%gptoss --inspect --max-tokens 16 --seed 0 -o r\nWhat is the capital of Peru?"])
    page = open_and_run(browser, url, token, app, name, 3)
    # The turn's output carries the token and routing views (the extension renders them; no widget).
    page.wait_for_selector(".gls .gls-tok", timeout=120_000)
    view = page.locator(".gls").first
    assert view.locator(".gls-tok").count() == 16
    view.locator(".gls-tok").nth(2).click()
    page.wait_for_selector(".gls .gls-detail:has-text('logprob')", timeout=10_000)
    assert "alternatives (id: logprob)" in view.locator(".gls-detail").inner_text()
    assert view.locator(".gls-detail .gls-routing tr").count() == 4  # nano's 4 layers
    view.locator(".gls-tok").nth(6).click(modifiers=["Shift"])
    page.wait_for_selector(".gls .gls-detail:has-text('5 tokens selected')", timeout=10_000)
    assert view.locator(".gls-sel").count() == 5
    assert view.locator(".gls-map tr").count() == 4 and view.locator(".gls-legend").is_visible()  # heat map, scale
    page.screenshot(path=str(ARTIFACTS / f"{app}-inspect.png"), full_page=True)
    page.close()
