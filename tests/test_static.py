"""The static bundle a finished turn leaves in the notebook: every channel, no script, no widget."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from gptoss_lab import Chat, load
from gptoss_lab.display.bundle import MIME
from gptoss_lab.display.static import failed_bundle, turn_bundle

pytestmark = pytest.mark.sandbox

# A hand-written recording (not model output): the analysis mentions <b>markup</b>, the final answer
# tries a script; both must arrive as text.
RECORDING = (
    "<|channel|>analysis<|message|>We need 12*34. <b>Use</b> python.<|end|>"
    "<|start|>assistant<|channel|>analysis to=python code<|message|>import sys\nprint(12*34)<|call|>"
    "<|start|>assistant<|channel|>final<|message|>12 × 34 = **408**. <script>alert(1)</script><|return|>\n"
)


class Text(HTMLParser):
    """The page's text outside any <script>, and the tags seen."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self._script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._script = self._script or tag == "script"

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = False

    def handle_data(self, data):
        if not self._script:
            self.parts.append(data)


def parsed(page: str) -> Text:
    p = Text()
    p.feed(page)
    return p


@pytest.fixture(scope="module")
def turn(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "rec.txt"
    path.write_text(RECORDING, encoding="utf-8")
    chat = Chat(load(f"replay:{path}"), tools=["python"])
    try:
        yield chat.send("What is 12*34?")
    finally:
        chat.toolbox.close()


def test_every_channel_is_in_the_html_as_text(turn):
    data = turn_bundle(turn, {"model": "replay", "status": "done", "tokens": 40})
    assert set(data) == {MIME, "text/html", "text/markdown", "text/plain"}
    page = parsed(data["text/html"])
    text = "".join(page.parts)
    assert not any(tag == "script" for tag, _ in page.tags)  # the model's <script> is text, not markup
    assert "<script>alert(1)</script>" in text and "<b>Use</b> python." in text
    assert "import sys\nprint(12*34)" in text  # the call's code
    assert "408\n" in text  # the sandbox's real output
    assert ("strong", {}) in page.tags and "408" in text  # the final answer rendered from Markdown
    assert "analysis: raw, unfiltered chain of thought" in text and "analysis → python" in text
    assert "python returned" in text and "model" in text and "replay" in text
    details = [attrs for tag, attrs in page.tags if tag == "details"]
    assert len(details) == 1 and "open" not in details[0]  # the analysis, collapsed


def test_the_analysis_the_user_opened_stays_open(turn):
    page = parsed(turn_bundle(turn, {}, open_messages=[0])["text/html"])
    assert [attrs for tag, attrs in page.tags if tag == "details"] == [{"class": "gls-msg gls-analysis", "open": None}]


def test_text_and_markdown(turn):
    data = turn_bundle(turn, {})
    assert data["text/markdown"].startswith("12 × 34 = **408**")
    plain = data["text/plain"]
    for label in ("[analysis: raw, unfiltered chain of thought]", "[analysis → python code]", "[python returned]", "[final]"):
        assert label in plain
    assert "We need 12*34" in plain and "print(12*34)" in plain
    assert data[MIME] is turn.transcript


def test_a_failed_turn_keeps_what_was_shown():
    messages = [{"id": 0, "role": "assistant", "name": None, "channel": "analysis", "recipient": None,
                 "content_type": None, "content": "Thinking so far"}]
    data = failed_bundle(messages, {"status": "failed"}, RuntimeError("the server went away"))
    text = "".join(parsed(data["text/html"]).parts)
    assert "Thinking so far" in text and "failed: RuntimeError: the server went away" in text
    assert data[MIME]["stop_reason"] == "failed" and data[MIME]["messages"][0]["content"] == "Thinking so far"
    assert "[failed: RuntimeError: the server went away]" in data["text/plain"]
