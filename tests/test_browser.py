"""The browser tool: what the model reads after browser.search / open / find, offline over a folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from gptoss_lab.harmony.events import ParsedMessage
from gptoss_lab.tools.browser import BrowserTool, Document, FunctionBackend, LocalBackend

CJK_LINE = "检索增强生成把搜索引擎和语言模型结合起来。" * 6  # 126 characters with no spaces


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    (tmp_path / "guide").mkdir()
    (tmp_path / "index.md").write_text(
        "# Lab notes\n\nWelcome to the lab. Read the [setup guide](guide/setup.md) first,\n"
        "then the [BM25 page](bm25.html). Outside: [Python docs](https://docs.python.org/3/).\n"
        "![the logo](logo.png)\n",
        encoding="utf-8",
    )
    (tmp_path / "guide" / "setup.md").write_text(
        "# Setup guide\n\nInstall the package with pip, then run the tests.\n\n"
        "Back to the [lab notes](../index.md#top).\n\n## 中文说明\n\n" + CJK_LINE + "\n",
        encoding="utf-8",
    )
    (tmp_path / "bm25.html").write_text(
        "<!doctype html><html><head><title>Okapi BM25 ranking</title><style>p {color: red}</style></head>"
        "<body><h1>BM25</h1><p>BM25 is a ranking function: search engines rank documents\n by relevance "
        "with it.</p><ul><li>k1 saturates term frequency</li><li>b normalises length</li></ul>"
        '<p>See the <a href="index.md">lab notes</a> or <a href="https://en.wikipedia.org/wiki/Okapi_BM25">'
        "Wikipedia</a>.</p><script>var hidden = 1;</script></body></html>",
        encoding="utf-8",
    )
    (tmp_path / "long.txt").write_text("\n".join(f"row {i} of the long ledger" for i in range(120)), "utf-8")
    return tmp_path


@pytest.fixture
def browser(docs: Path) -> BrowserTool:
    return BrowserTool(LocalBackend(docs))


def call(tool: BrowserTool, function: str, args: object, channel: str = "commentary") -> str:
    content = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    messages = tool.call(ParsedMessage("assistant", None, channel, f"browser.{function}", None, content))
    assert len(messages) == 1
    return messages[0].content[0].text


def body(display: str) -> dict[int, str]:
    """The numbered lines of a display: {n: text}."""
    _, _, rest = display.partition("\n\n")
    lines = rest.split("\n")
    assert all(re.match(r"L\d+: ", line) for line in lines), lines
    return {int(line[1 : line.index(":")]): line[line.index(": ") + 2 :] for line in lines}


def test_search_ranks_the_relevant_document_first_in_the_reference_format(browser: BrowserTool) -> None:
    shown = call(browser, "search", {"query": "BM25 ranking"})
    header, scrollbar, blank, *_ = shown.split("\n")
    assert header == "[0] BM25 ranking"  # the reference titles a results page with the query, no URL
    lines = body(shown)
    assert scrollbar == f"**viewing lines [0 - {max(lines)}] of {max(lines)}**" and blank == ""
    assert list(lines) == list(range(len(lines)))
    assert lines[0] == "# Search Results"
    assert lines[2].startswith("  * 【0†Okapi BM25 ranking†bm25.html】 BM25 is a ranking function")
    results = re.findall(r"【(\d+)†([^†】]+)†([^†】]+)】", shown)
    assert results[0] == ("0", "Okapi BM25 ranking", "bm25.html")
    assert ("1", "Lab notes", "index.md") in results  # it links to the BM25 page: it matches, lower
    assert all(len(line) <= 80 for line in lines.values())


def test_open_a_result_by_link_id_gives_the_next_cursor_and_the_page_as_text(browser: BrowserTool) -> None:
    call(browser, "search", {"query": "BM25 ranking"})
    shown = call(browser, "open", {"id": 0})
    assert shown.startswith("[1] Okapi BM25 ranking (local://bm25.html)\n**viewing lines [0 - ")
    lines = body(shown)
    assert lines[0] == "# BM25"
    assert "BM25 is a ranking function: search engines rank documents by relevance with it." in lines.values()
    assert ["  * k1 saturates term frequency", "  * b normalises length"] == [
        v for v in lines.values() if v.startswith("  * ")
    ]
    text = "\n".join(lines.values())
    assert "<" not in text and "hidden" not in text and "color" not in text  # tags, script and style gone
    # a link to another file of the folder names its path; a link out names its domain
    assert "See the 【0†lab notes†index.md】 or 【1†Wikipedia†en.wikipedia.org】." in text


def test_links_between_documents_resolve_to_the_files_of_the_folder(browser: BrowserTool) -> None:
    call(browser, "open", {"id": "local://bm25.html"})
    index = call(browser, "open", {"id": 0})  # "lab notes" on the HTML page
    assert index.startswith("[1] Lab notes (local://index.md)")
    assert "【0†setup guide†guide/setup.md】" in index and "【1†BM25 page†bm25.html】" in index
    assert "【2†Python docs†docs.python.org】" in index and "[Image 0: the logo]" in index
    setup = call(browser, "open", {"id": 0})
    assert setup.startswith("[2] Setup guide (local://guide/setup.md)")
    back = call(browser, "open", {"id": 0})  # ../index.md#top, relative to guide/
    assert back.startswith("[3] Lab notes (local://index.md)")
    again = call(browser, "open", {"id": 1, "cursor": 1})  # a link on an earlier display, by its cursor
    assert again.startswith("[4] Okapi BM25 ranking (local://bm25.html)")


def test_open_shows_the_window_asked_for_and_windows_long_pages(browser: BrowserTool) -> None:
    shown = call(browser, "open", {"id": "local://long.txt", "loc": 10, "num_lines": 5})
    assert shown.split("\n")[:2] == ["[0] long.txt (local://long.txt)", "**viewing lines [10 - 14] of 119**"]
    assert body(shown) == {i: f"row {i} of the long ledger" for i in range(10, 15)}
    default = call(browser, "open", {"id": "local://long.txt"})
    assert "**viewing lines [0 - 49] of 119**" in default and len(body(default)) == 50  # never the whole page
    scrolled = call(browser, "open", {"loc": 100})  # no id: scroll the latest page
    assert scrolled.startswith("[2] long.txt") and "**viewing lines [100 - 119] of 119**" in scrolled
    capped = BrowserTool(browser.backend, max_lines=30)
    assert "**viewing lines [0 - 29] of 119**" in call(
        capped, "open", {"id": "local://long.txt", "num_lines": 10_000}
    )


def test_find_lists_the_matching_lines_and_opens_at_a_match(browser: BrowserTool) -> None:
    call(browser, "open", {"id": "local://long.txt"})
    shown = call(browser, "find", {"pattern": "ROW 7"})  # case-insensitive, like the reference
    assert shown.startswith(
        "[1] Find results for text: `ROW 7` in `long.txt` (local://long.txt/find?pattern=ROW 7)"
    )
    lines = body(shown)
    assert lines[0] == "# 【0†match at L7】" and lines[1] == "row 7 of the long ledger"
    matches = re.findall(r"【(\d+)†match at L(\d+)】", shown)
    # the lines shown with a match are not searched again, as in the reference
    assert [int(line) for _, line in matches] == [7, 70, 74, 78]
    opened = call(browser, "open", {"id": 1})  # match at L70: shown with a little context above
    assert opened.startswith("[2] long.txt (local://long.txt)\n**viewing lines [66 - ")
    assert "No `find` results for pattern: `zebra`" in call(
        browser, "find", {"pattern": "zebra", "cursor": 0}
    )


def test_cjk_text_is_searched_wrapped_and_found(browser: BrowserTool) -> None:
    results = call(browser, "search", {"query": "搜索引擎"})
    assert "【0†Setup guide†guide/setup.md】" in results
    page = body(call(browser, "open", {"id": 0}))
    wrapped = [line for line in page.values() if "检索" in line or "模型" in line]
    assert "".join(wrapped) == CJK_LINE and all(len(line) <= 80 for line in wrapped) and len(wrapped) == 2
    found = call(browser, "find", {"pattern": "语言模型"})
    assert re.search(r"【0†match at L\d+】", found)


def test_a_citation_resolves_to_the_cited_lines_and_url(browser: BrowserTool) -> None:
    call(browser, "search", {"query": "setup"})
    shown = body(call(browser, "open", {"id": "local://guide/setup.md"}))
    answer = "Install it with pip【1†L2-L4】, as the guide says【1†L0】; not this【7†L1】."
    first, second, unknown = browser.citations(answer)
    assert answer[slice(*first.span)] == "【1†L2-L4】"
    assert (first.cursor, first.start, first.end, first.url) == (1, 2, 4, "local://guide/setup.md")
    assert first.lines == (shown[2], shown[3], "Back to the lab notes.")  # links read as their text
    assert second.lines == ("# Setup guide",) and second.title == "Setup guide"
    assert unknown.url is None and unknown.lines == ()


@pytest.mark.parametrize(
    ("function", "args", "says"),
    [
        ("search", "{not json", "not JSON"),
        ("search", "[1, 2]", "must be a JSON object"),
        ("search", {}, "needs a `query`"),
        ("open", {"id": 0, "cursor": 9}, "cursor `9` does not exist (valid: 0 - 0)"),
        ("open", {"id": 42}, "invalid link id `42`"),
        ("open", {"id": "local://nowhere.md"}, "there is no page"),
        ("open", {"id": "local://../../etc/passwd"}, "not a document of this browser's folder"),
        ("open", {"id": "https://example.com"}, "offline"),
        ("open", {"loc": 500}, "invalid `loc` 500"),
        ("open", {"cursor": "first"}, "`cursor` must be an integer"),
        ("find", {"pattern": "bm25"}, "cannot run `find` on a search or find results page"),
        ("click", {"id": 1}, "there is no `browser.click`; call browser.search"),
    ],
)
def test_errors_come_back_as_text_the_model_can_act_on(browser: BrowserTool, function, args, says) -> None:
    call(browser, "search", {"query": "BM25"})
    shown = call(browser, function, args)
    assert shown.startswith("Error: ") and says in shown
    assert call(browser, "open", {"id": 0}).startswith("[1] ")  # a failed call takes no cursor


def test_a_call_before_any_page_says_what_to_do(browser: BrowserTool) -> None:
    for function, args in (("open", {"id": 3}), ("find", {"pattern": "x"})):
        assert call(browser, function, args).startswith("Error: no page is open yet; call browser.search")


def test_replies_are_authored_by_the_function_to_the_assistant_on_the_calls_channel(
    browser: BrowserTool,
) -> None:
    for function, args, channel in (
        ("search", {"query": "BM25"}, "commentary"),
        ("open", {"id": 0}, "analysis"),
        ("find", {"pattern": "rank"}, "analysis"),
        ("find", "{oops", "commentary"),
    ):
        content = args if isinstance(args, str) else json.dumps(args)
        (msg,) = browser.call(ParsedMessage("assistant", None, channel, f"browser.{function}", None, content))
        assert msg.author.role.value == "tool" and msg.author.name == f"browser.{function}"
        assert msg.recipient == "assistant" and msg.channel == channel


def test_system_config_is_openai_harmonys_own_declaration(browser: BrowserTool, enc) -> None:
    from openai_harmony import ToolNamespaceConfig

    from gptoss_lab.harmony.conversation import render_conversation, system_message

    assert browser.system_config() == ToolNamespaceConfig.browser()
    assert browser.namespace == "browser"
    assert (
        browser.matches("browser") and browser.matches("browser.search") and not browser.matches("browsers")
    )

    def tokens(tool: object) -> list[int]:
        return render_conversation(
            [system_message(current_date="2025-01-01", builtin_tools=[tool])], encoding=enc
        )

    assert tokens(browser.system_config()) == tokens(ToolNamespaceConfig.browser()) == tokens("browser")
    assert "【{cursor}†L{line_start}(-L{line_end})?】" in enc.decode(tokens(browser.system_config()))


def test_function_backend_adapts_plain_callables() -> None:
    asked: list[tuple[str, int]] = []

    def search(query: str, topn: int) -> list[object]:
        asked.append((query, topn))
        return [
            {
                "url": "https://example.org/tea",
                "title": "Green tea",
                "snippet": "Steep at 80 °C\nfor two minutes.",
            },
            SimpleNamespace(url="https://other.net/cake", title="Cake", snippet="Bake it."),
        ]

    pages = {
        "https://example.org/tea": "# Green tea\n\nSee [brewing](/brew) and [cake](https://other.net/cake).",
        "https://example.org/brew": {"title": "Brewing", "text": "Use soft water."},
        "https://other.net/cake": Document("https://other.net/cake", "Cake", "Flour, eggs."),
    }

    def fetch(url: str) -> object:
        return pages[url]  # a KeyError is the backend's failure, reported to the model

    tool = BrowserTool(FunctionBackend(search=search, fetch=fetch))
    results = call(tool, "search", {"query": "tea", "topn": 3})
    assert asked == [("tea", 3)]
    assert "L2:   * 【0†Green tea†example.org】 Steep at 80 °C for two minutes." in results
    assert "【1†Cake†other.net】 Bake it." in results
    tea = call(tool, "open", {"id": 0})
    assert tea.startswith("[1] Green tea (https://example.org/tea)")
    assert "See 【0†brewing】 and 【1†cake†other.net】." in tea  # same site: no domain, like the reference
    assert body(call(tool, "open", {"id": 0})) == {0: "Use soft water."}
    assert call(tool, "open", {"id": 1, "cursor": 1}).startswith("[3] Cake (https://other.net/cake)")
    call(tool, "search", {"query": "cake", "topn": None})  # null means "not given": the default 10
    assert asked[-1] == ("cake", 10)
    missing = call(tool, "open", {"id": "https://example.org/nope"})
    assert missing.startswith("Error: could not open `https://example.org/nope`: ")


def test_each_tool_keeps_its_own_pages_and_a_new_file_is_found(docs: Path) -> None:
    first, second = BrowserTool(LocalBackend(docs)), BrowserTool(LocalBackend(docs))
    call(first, "search", {"query": "setup"})
    call(first, "search", {"query": "lab"})
    assert call(second, "search", {"query": "lab"}).startswith("[0] ")
    assert "No results for `zeppelin`." in call(first, "search", {"query": "zeppelin"})
    (docs / "airships.md").write_text("# Airships\n\nThe zeppelin flew in 1900.\n", encoding="utf-8")
    assert "【0†Airships†airships.md】 The zeppelin flew in 1900." in call(
        first, "search", {"query": "zeppelin"}
    )


def test_view_source_shows_the_raw_file(browser: BrowserTool) -> None:
    shown = call(browser, "open", {"id": "local://bm25.html", "view_source": True})
    assert shown.startswith("[0] Okapi BM25 ranking (local://bm25.html)") and "<title>Okapi BM25" in shown


def test_importing_the_browser_is_cheap() -> None:
    code = (
        "import sys, gptoss_lab.tools; before = set(sys.modules); import gptoss_lab.tools.browser; "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in new if m.split('.')[0] not in sys.stdlib_module_names))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # the standard library only (and its own modules); harmony loads on use
    assert out.strip() == "['gptoss_lab.tools.browser', 'gptoss_lab.tools.browser_backends', 'gptoss_lab.tools.browser_pages']"


def test_every_browser_module_imports_first_in_a_fresh_process() -> None:
    for module in ("gptoss_lab.tools.browser_backends", "gptoss_lab.tools.browser_pages", "gptoss_lab.tools.browser"):
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)


def test_the_toolbox_declares_and_dispatches_the_browser(browser: BrowserTool) -> None:
    from openai_harmony import ToolNamespaceConfig

    from gptoss_lab.tools.base import Toolbox

    box = Toolbox([browser])
    assert box.names() == ["browser"] and box.builtin_configs() == [ToolNamespaceConfig.browser()]
    call_ = ParsedMessage("assistant", None, "commentary", "browser.search", None, '{"query": "pip"}')
    shown = box.dispatch(call_).messages[0].content[0].text
    assert shown.startswith("[0] pip\n") and "【0†Setup guide†guide/setup.md】" in shown
