"""Backends for the browser tool: a folder of documents (offline, BM25) or your own functions.

A backend answers ``search(query, topn)`` with :class:`SearchResult` values and ``fetch(url)`` with a
:class:`Document`; the :class:`~gptoss_lab.tools.browser.BrowserTool` turns them into displays.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .browser_pages import (
    _HEADING,
    _SCHEME,
    _TOKEN,
    LOCAL,
    BrowserError,
    Document,
    SearchResult,
    _anchor_links,
    _clean,
    _field,
    _plain,
    _site,
)

_PREFIX = {"li": "  * ", **{f"h{n}": "#" * n + " " for n in range(1, 7)}}
_BLOCKS = {"p", "div", "br", "tr", "section", "article", "header", "footer", "main", "nav", "ul", "ol"}
_BLOCKS |= {"table", "blockquote", "pre", "hr", "dl", "dt", "dd"}


class _HTMLText(HTMLParser):
    # HTML to Markdown-ish text: block tags break lines, headings get #, items "  * ", links stay links
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.title = self.h1 = self._in = ""  # _in: "title" or "h1" while inside them
        self._skip = self._pre = 0
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "style", "noscript", "template", "svg"):
            self._skip += 1
        elif tag == "title":
            self._in = "title"
        elif tag == "a" and a.get("href"):
            self._href = a["href"]
            self.out.append("[")
        elif tag == "img":
            self.out.append(f"![{a.get('alt') or a.get('title') or ''}]({a.get('src') or ''})")
        elif tag in _BLOCKS or tag in _PREFIX:
            self.out.append("\n" + _PREFIX.get(tag, ""))
            self._pre += tag == "pre"
            self._in = "h1" if tag == "h1" and not self.h1 else self._in

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "noscript", "template", "svg"):
            self._skip = max(self._skip - 1, 0)
        elif tag == "a" and self._href is not None:
            self.out.append(f"]({self._href.strip().replace(' ', '%20')})")
            self._href = None
        elif tag in _BLOCKS or (tag in _PREFIX and tag != "li"):  # the next item starts its own line
            self.out.append("\n")
            self._pre = max(self._pre - (tag == "pre"), 0)
        if tag in ("title", "h1"):
            self._in = ""

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif not self._skip:
            self.h1 += data if self._in == "h1" else ""
            self.out.append(data if self._pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = (re.sub(r"^\*\s+", "  * ", line.strip()) for line in "".join(self.out).split("\n"))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def to_document(url: str, text: str, title: str | None = None, *, html: bool | None = None) -> Document:
    """A Document from Markdown, plain text or HTML (``html=None``: sniffed from the start of ``text``).

    HTML is stripped to text, its ``<a href>`` kept as links; the title defaults to the HTML
    ``<title>`` or first ``<h1>``, or the first Markdown heading.
    """
    if html or (html is None and re.match(r"\s*<(!doctype|html|head|body)\b", text, re.IGNORECASE)):
        parser = _HTMLText()
        parser.feed(text)
        parser.close()
        return Document(url, title or _clean(parser.title or parser.h1) or _site(url), parser.text(), text)
    heading = _HEADING.search(text)
    return Document(url, title or (heading[1] if heading else _site(url)), text, text)


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    for m in _TOKEN.finditer(text.lower()):
        run = m[0]  # CJK has no spaces between words: index its character bigrams
        out += ([run[i : i + 2] for i in range(len(run) - 1)] or [run]) if m[1] else [run]
    return out


class LocalBackend:
    """Offline search over a folder of ``.md``, ``.markdown``, ``.txt``, ``.html`` and ``.htm`` files.

    Pages are ``local://<path relative to the folder>``; links between files of the folder open them,
    and nothing outside the folder can be opened. Search ranks by BM25 over title and text; the index
    is rebuilt when the files change.

    Parameters
    ----------
    folder
        The folder of documents (searched recursively).
    k1, b
        BM25's term-frequency saturation and length normalisation.
    """

    SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm")

    def __init__(self, folder: str | Path, *, k1: float = 1.5, b: float = 0.75):
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise NotADirectoryError(f"not a folder: {self.folder}")
        self.k1, self.b = k1, b
        self._key: list[tuple[Path, int, int]] | None = None
        self._docs: list[tuple[Document, list[str], Counter[str], int]] = []
        self._df: Counter[str] = Counter()

    def _index(self) -> None:
        files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in self.SUFFIXES and p.is_file())
        key = [(p, p.stat().st_mtime_ns, p.stat().st_size) for p in files]
        if key == self._key:
            return
        self._docs = []
        for path in files:
            doc = self._read(path)
            lines = [_plain(x).strip() for x in _anchor_links(doc.text, doc.url)[0].split("\n")]
            terms = Counter(_tokens(doc.title + "\n" + "\n".join(lines)))
            self._docs.append((doc, lines, terms, sum(terms.values())))
        self._df = Counter(t for _, _, terms, _ in self._docs for t in terms)
        self._key = key

    def _read(self, path: Path) -> Document:
        url = LOCAL + path.relative_to(self.folder).as_posix()
        raw = path.read_text(encoding="utf-8", errors="replace")
        is_html = path.suffix.lower() in (".html", ".htm")
        doc = to_document(url, raw, html=is_html)
        return doc if is_html or _HEADING.search(raw) else Document(url, path.name, raw, raw)

    def search(self, query: str, topn: int) -> list[SearchResult]:
        """The ``topn`` best documents for ``query`` by BM25; documents matching no term are left out."""
        self._index()
        terms, n = set(_tokens(query)), len(self._docs)
        avg = max(sum(d[3] for d in self._docs) / max(n, 1), 1.0)
        idf = {t: math.log(1 + (n - self._df[t] + 0.5) / (self._df[t] + 0.5)) for t in terms}
        scored = []
        for doc, lines, tf, length in self._docs:
            norm = self.k1 * (1 - self.b + self.b * length / avg)
            score = sum(idf[t] * tf[t] * (self.k1 + 1) / (tf[t] + norm) for t in terms if tf[t])
            if score > 0:
                scored.append((score, doc, lines))
        scored.sort(key=lambda s: -s[0])  # stable: ties keep path order
        return [SearchResult(d.url, d.title, _snippet(lines, terms)) for _, d, lines in scored[:topn]]

    def fetch(self, url: str) -> Document:
        """The document at ``local://<relative path>`` (or a bare relative path) inside the folder."""
        rel = re.split(r"[#?]", unquote(url.removeprefix(LOCAL)))[0]
        if _SCHEME.match(rel):
            raise BrowserError(f"this browser is offline: it opens only the {LOCAL} pages of its folder")
        path = (self.folder / rel.lstrip("/")).resolve()
        if not path.is_relative_to(self.folder) or path.suffix.lower() not in self.SUFFIXES:
            raise BrowserError(f"`{url}` is not a document of this browser's folder")
        if not path.is_file():
            raise BrowserError(f"there is no page `{url}`")
        return self._read(path)


def _snippet(lines: list[str], terms: set[str], size: int = 200) -> str:
    body = [x for x in lines if x and not x.startswith("#")] or [x for x in lines if x] or [""]
    best = max(body, key=lambda x: len(terms & set(_tokens(x))))  # the first line with most query terms
    return best if len(best) <= size else best[: size - 1].rstrip() + "…"



class FunctionBackend:
    """A backend from two plain functions.

    Parameters
    ----------
    search
        ``search(query, topn)`` returning dicts or objects with ``url``, ``title`` and ``snippet``.
    fetch
        ``fetch(url)`` returning text (Markdown, plain or HTML), a dict with ``title`` and ``text``
        (and optionally ``url``), or a :class:`Document`.
    """

    def __init__(self, search: Callable[[str, int], Iterable[Any]], fetch: Callable[[str], Any]):
        self._search, self._fetch = search, fetch

    def search(self, query: str, topn: int) -> list[SearchResult]:
        found = list(self._search(query, topn))[:topn]
        return [SearchResult(_field(r, "url"), _field(r, "title"), _field(r, "snippet")) for r in found]

    def fetch(self, url: str) -> Document:
        got = self._fetch(url)
        if isinstance(got, Document):
            return got
        if isinstance(got, dict):
            return to_document(_field(got, "url", url), _field(got, "text"), _field(got, "title") or None)
        return to_document(url, str(got))


