"""A notebook executed headless and saved keeps every channel: in nbconvert's HTML (offline, outside any
script), and reopened without running in JupyterLab and Notebook 7, where the lab extension renders the
saved turns with no kernel. The notebook is written here (held out: no test elsewhere runs it); the model
is nano, live, with the real sandbox. Screenshots go to artifacts/ui/."""

from __future__ import annotations

import json
import time

import nbformat
import pytest
from nbclient import NotebookClient

from gptoss_lab.display.bundle import MIME

from .test_lab_ui import ARTIFACTS, lab  # noqa: F401  (the JupyterLab / Notebook 7 fixture)
from .test_static import parsed

pytestmark = [pytest.mark.browser, pytest.mark.sandbox]

CELLS = [
    "%load_ext gptoss_lab",
    "%gptoss load nano",
    "%%gptoss --tools python --temperature 0 --seed 0\nWhat is 37*91?",
    "%%gptoss --inspect --temperature 0 --max-tokens 24 --new\nWhat is the capital of Peru?",
]
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook run top to bottom by nbclient in a real kernel, saved as a user would save it."""
    folder = tmp_path_factory.mktemp("saved")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    path = folder / "saved.ipynb"
    nbformat.write(nb, path)
    return path, nb


def transcripts(nb):
    return [o["data"][MIME] for c in nb.cells for o in c.get("outputs", []) if MIME in o.get("data", {})]


def test_the_saved_file_holds_static_bundles_only(executed):
    _, nb = executed
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not any(WIDGET in o.get("data", {}) for o in outputs)  # nothing left to say "Loading widget..."
    tool_turn, inspected = transcripts(nb)
    assert [m["recipient"] for m in tool_turn["messages"]].count("python") == 1 and tool_turn["complete"]
    assert inspected["tokens"] and all(t["routing"] is not None for t in inspected["tokens"][:-1])


def test_nbconvert_html_holds_every_channel_outside_any_script(executed):
    from nbconvert import HTMLExporter

    path, nb = executed
    page, _ = HTMLExporter().from_filename(str(path))
    text = "".join(parsed(page).parts)
    turn = transcripts(nb)[0]
    for m in turn["messages"]:  # the analysis, the python call's code, the tool's output, the final answer
        assert m["content"].strip() in text, m
    assert "3367" in text and "analysis: raw, unfiltered chain of thought" in text
    # no output needs the widget manager (its script comes from a CDN): every turn's output is static
    assert '<script type="application/vnd.jupyter.widget-view+json">' not in page


def test_reopened_without_running_shows_every_channel(executed, lab):  # noqa: F811
    import shutil

    root, url, token, browser, app = lab
    path, nb = executed
    shutil.copy(path, root / "saved.ipynb")
    page = browser.new_page(viewport={"width": 1200, "height": 1400})
    if app == "jupyterlab":
        page.goto(f"{url}/lab/workspaces/saved/tree/saved.ipynb?token={token}")
    else:
        page.goto(f"{url}/notebooks/saved.ipynb?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_selector(".gls .gls-final", timeout=60_000)  # the extension's renderer, not a widget
    time.sleep(1)
    shut_down_kernels(url, token)  # what follows works with no kernel at all
    body = page.locator(".jp-Notebook").inner_text()
    assert "Loading widget" not in body and "Error displaying widget" not in body
    turn = transcripts(nb)[0]
    final, tool = turn["messages"][-1]["content"], next(m for m in turn["messages"] if m["role"] == "tool")["content"]
    first = page.locator(".gls").first
    assert final in first.locator(".gls-final").inner_text()
    assert tool.strip() in first.locator(".gls-tool").inner_text() and first.locator(".gls-tool").is_visible()
    html = first.inner_html()
    assert "print(37*91)" in html and turn["messages"][1]["content"] in html  # the call and the analysis are in the page
    analysis = first.locator("details.gls-analysis").first
    assert analysis.get_attribute("open") is None and not analysis.locator("pre").is_visible()
    analysis.locator("summary").click()  # no kernel needed for any of this
    assert analysis.locator("pre").is_visible()
    first.locator(".gls-special").click()
    raw = first.locator(".gls-harmony")
    harmony = raw.inner_text()
    assert raw.is_visible() and not first.locator(".gls-body").is_visible()
    assert "<|start|>user<|message|>What is 37*91?<|end|>" in harmony
    assert " to=python" in harmony and "<|message|>print(37*91)<|call|>" in harmony and harmony.endswith("<|return|>")
    page.screenshot(path=str(ARTIFACTS / f"{app}-saved-special-tokens.png"), full_page=True)
    first.locator(".gls-special").click()
    assert first.locator(".gls-body").is_visible() and not raw.is_visible()
    page.screenshot(path=str(ARTIFACTS / f"{app}-saved-reopened.png"), full_page=True)
    # the inspected turn: tokens, and a click shows one's logprob and experts
    inspected = page.locator(".gls").nth(1)
    tokens = inspected.locator(".gls-tok")
    assert tokens.count() == len(transcripts(nb)[1]["tokens"])
    tokens.nth(3).click()
    detail = inspected.locator(".gls-detail")
    assert "logprob" in detail.inner_text() and detail.locator(".gls-routing tr").count() == 4  # nano's 4 layers
    inspected.locator(".gls-bar button[data-channel=analysis]").click()
    assert 0 < inspected.locator(".gls-tok").count() < len(transcripts(nb)[1]["tokens"])
    assert inspected.locator(".gls-legend").is_visible()
    page.screenshot(path=str(ARTIFACTS / f"{app}-saved-inspect.png"), full_page=True)
    page.close()


def shut_down_kernels(url: str, token: str) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{url}/api/kernels?token={token}", timeout=10) as r:
        kernels = json.load(r)
    for k in kernels:
        urllib.request.urlopen(urllib.request.Request(f"{url}/api/kernels/{k['id']}?token={token}", method="DELETE"), timeout=30)
    with urllib.request.urlopen(f"{url}/api/kernels?token={token}", timeout=10) as r:
        assert json.load(r) == []


def test_nbconvert_execute_to_html(tmp_path):
    """`jupyter nbconvert --to html --execute` on the notebook as a user writes it (no outputs yet)."""
    import subprocess
    import sys

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS[:3]]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "fresh.ipynb")
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--execute", str(tmp_path / "fresh.ipynb")],
                   check=True, capture_output=True, timeout=600, cwd=tmp_path)
    text = "".join(parsed((tmp_path / "fresh.html").read_text(encoding="utf-8")).parts)
    assert "print(37*91)" in text and "3367" in text and "analysis: raw, unfiltered chain of thought" in text
    assert "python returned" in text and "37*91 = 3367" in text


def test_the_extension_is_installed_and_enabled():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True, text=True, timeout=60)
    line = next((ln for ln in (out.stdout + out.stderr).splitlines() if "gptoss-lab" in ln), "")
    assert "enabled" in line and "OK" in line, out.stdout + out.stderr


def test_the_wheel_carries_the_lab_extension(tmp_path):
    """The wheel built from the sources (npm and the TypeScript build run by hatch-jupyter-builder)."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "-q", "-w", str(tmp_path)],
                   check=True, timeout=600)
    (wheel,) = tmp_path.glob("gptoss_lab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    share = "gptoss_lab-0.1.0.data/data/share/jupyter/labextensions/gptoss-lab/"
    assert share + "package.json" in names and share + "install.json" in names
    assert any(n.startswith(share + "static/remoteEntry.") for n in names)
    meta = json.loads(zipfile.ZipFile(wheel).read(share + "package.json"))
    assert meta["name"] == "gptoss-lab" and meta["jupyterlab"]["mimeExtension"]
