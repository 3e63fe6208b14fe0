"""The recordings that ship with the notebooks say what they are, and the replay reads them as such."""

from __future__ import annotations

from pathlib import Path

import pytest

import gptoss_lab
from gptoss_lab.backends.replay import split_header

RECORDINGS = sorted((Path(__file__).resolve().parent.parent / "notebooks" / "recordings").glob("*.txt"))


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_every_recording_is_labelled_for_what_it_is(path):
    header, body = split_header(path.read_text(encoding="utf-8"))
    said = " ".join(header)
    # either hand-written (and never called model output) or recorded, with the model and source named
    assert said.startswith("Hand-written, not model output") or ("Recorded from" in said and "source:" in said), said
    assert body.startswith("<|channel|>") and "#" not in body.split("<|", 1)[0]


def test_the_replay_skips_the_label_and_reports_it(tmp_path):
    rec = tmp_path / "rec.txt"
    rec.write_text("# Hand-written, not model output: a test.\n# Second line.\n\n"
                   "<|channel|>final<|message|># a heading the model wrote<|return|>\n", encoding="utf-8")
    b = gptoss_lab.load(f"replay:{rec}")
    assert b.report.notes[0] == "Hand-written, not model output: a test. Second line."
    text = gptoss_lab.encoding().decode([s.token for s in b.stream([1])])
    assert text == "<|channel|>final<|message|># a heading the model wrote<|return|>"
    assert split_header("# not a header: no blank line follows\n<|channel|>x")[0] == []
