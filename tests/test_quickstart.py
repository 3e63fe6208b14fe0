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
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Loading nano: no GPU" in text  # %gptoss load with no model says what it chose, and why
    # nano, live: the python call ran in the sandbox and the answer quotes its output
    arithmetic = next(t for t in transcripts if t["messages"][0]["content"] == "What is 1234*5678?")
    tool = [m for m in arithmetic["messages"] if m["role"] == "tool"][0]
    assert tool["content"] == "7006652\n"
    assert "7006652" in arithmetic["messages"][-1]["content"]
    weather = next(t for t in transcripts if t["messages"][0]["content"] == "What's the weather in Lisbon?")
    assert [m["content"] for m in weather["messages"] if m["role"] == "tool"] == [
        '{"city": "Lisbon", "temperature": 21, "unit": "celsius"}'
    ]
    assert "21" in weather["messages"][-1]["content"]
    replay = next(t for t in transcripts if t["messages"][0]["content"] == "What is 1234 * 5678?")
    assert "7,006,652" in replay["messages"][-1]["content"]
    assert "gpt-oss-nano" in text and "teaching toy" in text  # the report says what the model is
    assert '"stop_reason": "return"' in text and "text after <|return|>" in text
