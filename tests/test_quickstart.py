"""The quickstart notebook runs top to bottom on a CPU-only machine with no downloads (as `make lab` opens it)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from gptoss_lab.display.bundle import MIME

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_runs_and_shows_real_tool_output(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTOSS_LAB_CACHE_DIR", str(tmp_path / "cache"))  # a fresh cache: nothing pre-made
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    transcripts = [o.data[MIME] for o in outputs if o.output_type in ("display_data", "update_display_data") and MIME in o.get("data", {})]
    arithmetic = transcripts[0]
    tool = [m for m in arithmetic["messages"] if m["role"] == "tool"][0]
    assert tool["content"] == "7006652\n"  # the sandbox really ran the model's code
    assert "7,006,652" in arithmetic["messages"][-1]["content"]
    weather = transcripts[1]
    assert [m["content"] for m in weather["messages"] if m["role"] == "tool"] == [
        '{"city": "Lisbon", "temperature": 21, "unit": "celsius"}'
    ]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "moe_path   dequantized-float32" in text  # the tiny model's report
    assert '"stop_reason": "return"' in text and "text after <|return|>" in text
