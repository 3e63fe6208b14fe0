"""The browser tool's pages: what a backend returns (:class:`SearchResult`, :class:`Document`), what the
model was shown (:class:`Page`, :class:`Link`), what it cited (:class:`Citation`), and the text rules of
OpenAI's reference ``simple_browser`` that both the tool and its backends follow (wrapping at 80
characters, ``【id†text(†site)】`` anchors, forged brackets neutralised).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

WIDTH = 80  # the reference wraps page text at 80 characters: a line is a citable unit of that size
LOCAL = "local://"
_MD_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_ANCHOR = re.compile(r"【\d+†([^†】]*)(?:†[^†】]*)?】")
_CITATION = re.compile(r"【(\d+)†L(\d+)(?:-L(\d+))?】")
_CHUNK = re.compile(r"【[^】\n]*】|\s+|[^\s【]+|【")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"([{_CJK}]+)|[^\W_{_CJK}]+")


@dataclass(frozen=True)
class SearchResult:
    """One search hit: where it is, what it is called, and a snippet of why it matched."""

    url: str
    title: str
    snippet: str = ""


@dataclass(frozen=True)
class Document:
    """A fetched page. ``text`` is Markdown or plain text: its Markdown links become numbered links.
    ``source`` is the raw file, shown by ``open(view_source=true)`` (``None``: the text)."""

    url: str
    title: str
    text: str
    source: str | None = None


@dataclass(frozen=True)
class Link:
    """A numbered link of a display; ``line`` is where to land on the target (find results)."""

    url: str
    line: int | None = None


@dataclass(frozen=True)
class Page:
    """One display the model saw: wrapped lines with link anchors. ``kind``: page, search or find."""

    url: str
    title: str
    lines: tuple[str, ...]
    links: tuple[Link, ...] = ()
    kind: str = "page"


@dataclass(frozen=True)
class Citation:
    """A ``【{cursor}†L{start}-L{end}】`` found at ``span`` of an answer, with the page's URL, title and
    the cited lines (links shown as their text). ``url`` is None for a cursor the tool never showed."""

    span: tuple[int, int]
    cursor: int
    start: int
    end: int
    url: str | None
    title: str | None
    lines: tuple[str, ...]


class Backend(Protocol):
    """Where the browser searches and fetches. Any exception is reported to the model as ``Error:``."""

    def search(self, query: str, topn: int) -> Sequence[SearchResult]: ...

    def fetch(self, url: str) -> Document: ...


class BrowserError(Exception):
    """A failure the model can act on; its text becomes the tool's ``Error: ...`` reply."""


def _site(url: str) -> str:
    # a local page has no domain worth naming: its path is what tells the model where it is
    return url.removeprefix(LOCAL) if url.startswith(LOCAL) else urlsplit(url).netloc or url


def _join(base: str, target: str) -> str:
    if _SCHEME.match(target) or not base.startswith(LOCAL):
        return urljoin(base, target)
    path = re.split(r"[#?]", target)[0]  # urljoin ignores schemes it does not know
    joined = path if path.startswith("/") else posixpath.join(posixpath.dirname(base[len(LOCAL) :]), path)
    return LOCAL + posixpath.normpath(joined).lstrip("/")


def _wrap(line: str, width: int = WIDTH) -> list[str]:
    # like the reference's textwrap, but an anchor is never split, and long unspaced runs (CJK, URLs)
    # are cut, so that every line stays a short citable unit
    if len(line) <= width:
        return [line]
    out, cur = [], ""
    for chunk in _CHUNK.findall(line):
        if chunk.isspace():
            cur += chunk
            continue
        if len(cur) + len(chunk) > width and cur.strip() and (chunk[0] == "【" or len(chunk) <= width):
            out.append(cur.rstrip())
            cur = ""
        while chunk[0] != "【" and len(cur) + len(chunk) > width:
            room = max(width - len(cur), 1)
            out.append(cur + chunk[:room])
            cur, chunk = "", chunk[room:]
        cur += chunk
    return [*out, cur] if cur or not out else out


def _unbracket(text: str) -> str:
    return text.replace("【", "〖").replace("】", "〗")  # a page must not forge anchors or citations


def _clean(text: str) -> str:
    return _unbracket(" ".join(text.split()))


def _anchor_links(text: str, url: str) -> tuple[str, list[Link]]:
    """Markdown links to ``【id†text(†site)】`` anchors, numbered in order, one id per target URL."""
    text = _unbracket(text)
    ids: dict[str, int] = {}
    images: list[str] = []

    def sub(m: re.Match[str]) -> str:
        bang, label, target = m[1], _clean(m[2]).replace("†", "‡"), m[3]
        if bang:
            images.append(label)
            return f"[Image {len(images) - 1}{': ' + label if label else ''}]"
        if not label or not target or target.startswith(("#", "mailto:", "javascript:")):
            return label
        href = _join(url, target)
        link_id = ids.setdefault(href, len(ids))
        site = "" if _site(href) == _site(url) else f"†{_site(href)}"  # the reference names other sites only
        return f"【{link_id}†{label}{site}】"

    return _MD_LINK.sub(sub, text), [Link(u) for u in ids]


def _page(doc: Document, *, raw: bool = False) -> Page:
    text, links = (_unbracket(doc.source or doc.text), []) if raw else _anchor_links(doc.text, doc.url)
    text = re.sub(r"\n[ \t]*\n(?:[ \t]*\n)+", "\n\n", text.replace("\r\n", "\n").strip("\n"))
    lines = [w for line in text.split("\n") for w in _wrap(line.rstrip())]
    return Page(doc.url, doc.title, tuple(lines), tuple(links))


def _plain(line: str) -> str:
    return _ANCHOR.sub(lambda m: m[1], line)


def _field(item: Any, name: str, default: str = "") -> str:
    value = item.get(name, default) if isinstance(item, dict) else getattr(item, name, default)
    return "" if value is None else str(value)
