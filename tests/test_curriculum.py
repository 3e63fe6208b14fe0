"""The curriculum: every teaching notebook under notebooks/ runs headless in a fresh kernel with no error, on a
CPU with no downloads, shows at least one figure, has exercises and says what changes with the real model.
(The quickstart runs in test_quickstart.py, with its own checks.)"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
TEACHING = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))


def markdown(nb: nbformat.NotebookNode) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_the_curriculum_is_indexed_in_order():
    assert len(TEACHING) >= 6, [p.name for p in TEACHING]
    index = (NOTEBOOKS / "README.md").read_text()
    places = [index.find(p.name) for p in TEACHING]
    assert -1 not in places, f"notebooks/README.md must list every notebook: {[p.name for p in TEACHING]}"
    assert places == sorted(places), "notebooks/README.md lists them in their order"
    assert "quickstart.ipynb" in index
    for p in TEACHING:  # the time each takes, beside its name
        line = next(line for line in index.splitlines() if p.name in line)
        assert re.search(r"\d+\s*min", line), f"no time given for {p.name}: {line!r}"


@pytest.mark.parametrize("path", TEACHING, ids=lambda p: p.stem)
def test_each_notebook_says_what_it_teaches_with_exercises_and_the_real_model(path):
    nb = nbformat.read(path, as_version=4)
    text = markdown(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "What this notebook teaches" in text
    assert "## Exercises" in text
    assert "## What changes with gpt-oss-20b and gpt-oss-120b" in text
    assert not [c for c in nb.cells if c.cell_type == "code" and c.get("outputs")], "saved without outputs"


@pytest.mark.parametrize("path", TEACHING, ids=lambda p: p.stem)
def test_each_notebook_runs_headless_and_shows_a_figure(path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} shows no figure"
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    # it says which model it uses (the best one present; nano on a machine with no gpt-oss weights)
    assert re.search(r"gpt-oss-nano|gpt-oss-20b|gpt-oss-120b", text + "\n".join(
        str(o.get("data", {}).get("text/plain", "")) for o in outputs)), f"{path.name} does not say which model it uses"
