"""gpt-oss's ``browser`` tool (``browser.search``, ``browser.open``, ``browser.find``), pluggable backends.

The display follows OpenAI's reference ``simple_browser`` tool, the format gpt-oss was taught: every
display gets the next cursor and starts ``[{cursor}] {title} ({url})`` and
``**viewing lines [{first} - {last}] of {total - 1}**``; page lines are wrapped at 80 characters and
numbered ``L{n}: ``; links read ``【{id}†{text}】`` (same site) or ``【{id}†{text}†{site}】``. The model
cites ``【{cursor}†L{a}-L{b}】``; :meth:`BrowserTool.citations` maps those back to pages and lines.

Backends: :class:`LocalBackend` searches a folder of ``.md``/``.txt``/``.html`` files offline (BM25,
standard library only); :class:`FunctionBackend` adapts your own ``search`` and ``fetch`` functions.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from .base import reply
from .browser_backends import FunctionBackend, LocalBackend, to_document
from .browser_pages import (
    _CITATION,
    Backend,
    BrowserError,
    Citation,
    Document,
    Link,
    Page,
    SearchResult,
    _clean,
    _field,
    _page,
    _plain,
    _site,
    _wrap,
)

if TYPE_CHECKING:
    from openai_harmony import Message, ToolNamespaceConfig

    from ..harmony.events import ParsedMessage

__all__ = [
    "Backend", "BrowserError", "BrowserTool", "Citation", "Document", "FunctionBackend", "Link", "LocalBackend",
    "Page", "SearchResult", "to_document",
]


class BrowserTool:
    """gpt-oss's built-in ``browser`` tool. The displays it showed are kept by cursor in ``pages``.

    Parameters
    ----------
    backend
        Where to search and fetch: :class:`LocalBackend`, :class:`FunctionBackend` or your own.
    view_lines
        Lines shown when the model gives no ``num_lines``; ``max_lines`` caps what it may ask for.
    max_results
        The most search results shown, whatever ``topn`` the model asks for.
    """

    namespace = "browser"

    def __init__(
        self, backend: Backend, *, view_lines: int = 50, max_lines: int = 200, max_results: int = 20
    ) -> None:
        self.backend = backend
        self.view_lines, self.max_lines, self.max_results = view_lines, max_lines, max_results
        self.pages: list[Page] = []  # the cursor is the index
        self._cache: dict[str, Page] = {}

    def system_config(self) -> ToolNamespaceConfig:
        """openai-harmony's own browser declaration, for the system message."""
        from openai_harmony import ToolNamespaceConfig

        return ToolNamespaceConfig.browser()

    def matches(self, recipient: str) -> bool:
        return recipient == "browser" or recipient.startswith("browser.")

    def call(self, message: ParsedMessage) -> list[Message]:
        """Run ``browser.search``, ``browser.open`` or ``browser.find``; a failure is an ``Error:`` reply."""
        name = (message.recipient or "browser").strip()
        function = name.partition(".")[2]
        try:
            if function not in ("search", "open", "find"):
                raise BrowserError(f"there is no `{name}`; call browser.search, browser.open or browser.find")
            try:
                args = json.loads(message.content) if message.content.strip() else {}
            except json.JSONDecodeError as e:
                raise BrowserError(f"the arguments are not JSON ({e.msg}); send one JSON object") from None
            if not isinstance(args, dict):
                raise BrowserError('the arguments must be a JSON object, like {"query": "..."}')
            text = getattr(self, f"_{function}")(args)
        except BrowserError as e:
            text = f"Error: {e}"
        return [reply(message, text, name=name)]

    def citations(self, text: str) -> list[Citation]:
        """The ``【{cursor}†L{a}(-L{b})?】`` citations in ``text``, resolved to their page's URL and lines."""
        out = []
        for m in _CITATION.finditer(text):
            cursor, start = int(m[1]), int(m[2])
            end = int(m[3]) if m[3] else start
            page = self.pages[cursor] if cursor < len(self.pages) else None
            lines = tuple(_plain(x) for x in page.lines[start : end + 1]) if page else ()
            url, title = (page.url, page.title) if page else (None, None)
            out.append(Citation(m.span(), cursor, start, end, url, title, lines))
        return out

    def _search(self, args: dict[str, Any]) -> str:
        query = str(args.get("query", "")).strip()
        if not query:
            raise BrowserError('browser.search needs a `query`, like {"query": "..."}')
        asked = args.get("topn", args.get("top_n"))  # top_n: the reference accepts both spellings
        topn = min(max(10 if asked is None else _int(asked, "topn"), 1), self.max_results)
        try:
            results = list(self.backend.search(query, topn))[:topn]
            urls, titles = [_field(r, "url") for r in results], [_field(r, "title") for r in results]
            snippets = [_clean(_field(r, "snippet")) for r in results]
        except Exception as e:  # noqa: BLE001 - whatever the backend raises, the model reads it
            raise BrowserError(
                f"the search for `{query}` failed: {_short(e)}; try again, or rephrase"
            ) from None
        # the page is written with anchors directly: titles and URLs need no Markdown round trip
        items = [
            f"  * 【{k}†{_clean(t or u).replace('†', '‡')}†{_site(u)}】 {s}".rstrip()
            for k, (u, t, s) in enumerate(zip(urls, titles, snippets, strict=True))
        ]
        body = "# Search Results\n\n" + ("\n".join(items) if items else f"No results for `{query}`.")
        lines = tuple(w for line in body.split("\n") for w in _wrap(line))
        return self._show(Page("", query, lines, tuple(Link(u) for u in urls), "search"), -1, -1)

    def _open(self, args: dict[str, Any]) -> str:
        target = -1 if args.get("id") is None else args["id"]
        if isinstance(target, str) and re.fullmatch(r"\s*-?\d+\s*", target):
            target = int(target)  # a quoted link id is still a link id, never a URL
        loc, num_lines = _int(args.get("loc", -1), "loc"), _int(args.get("num_lines", -1), "num_lines")
        landing = None
        if isinstance(target, str):
            page = self._load(target.strip(), fresh=True)
        else:
            current, link_id = self._page_at(_int(args.get("cursor", -1), "cursor")), _int(target, "id")
            if link_id < 0:  # no link: scroll the page itself
                page = current
            elif link_id < len(current.links):
                link = current.links[link_id]
                page, landing = self._load(link.url, fresh=False), link.line
            else:
                valid = f"0 - {len(current.links) - 1}" if current.links else "this page has none"
                raise BrowserError(
                    f"invalid link id `{link_id}` (valid: {valid}); use an id shown as 【id†…】"
                )
        if args.get("view_source") and page.kind == "page":
            page = self._load(page.url, fresh=True, raw=True)
        if loc < 0 and landing is not None:
            loc = max(landing - 4, 0)  # a few lines of context above a find match, as the reference does
        return self._show(page, loc, num_lines)

    def _find(self, args: dict[str, Any]) -> str:
        pattern = str(args.get("pattern", ""))
        if not pattern.strip():
            raise BrowserError('browser.find needs a `pattern`, like {"pattern": "..."}')
        page = self._page_at(_int(args.get("cursor", -1), "cursor"))
        if page.kind != "page":
            raise BrowserError("cannot run `find` on a search or find results page; open a page first")
        plain, needle, i = [_plain(x) for x in page.lines], pattern.lower(), 0
        hits: list[int] = []
        while i < len(plain) and len(hits) < 50:
            if needle in plain[i].lower():
                hits.append(i)
                i += 4  # the lines shown with a match are not searched again
            else:
                i += 1
        chunks = [f"# 【{k}†match at L{i}】\n" + "\n".join(plain[i : i + 4]) for k, i in enumerate(hits)]
        body = "\n\n".join(chunks) or f"No `find` results for pattern: `{pattern}`"
        title = f"Find results for text: `{pattern}` in `{page.title}`"
        links = tuple(Link(page.url, i) for i in hits)  # a match opens the page at its line
        url = f"{page.url}/find?pattern={quote(pattern)}"
        return self._show(Page(url, title, tuple(body.split("\n")), links, "find"), -1, -1)

    def _page_at(self, cursor: int) -> Page:
        if not self.pages:
            raise BrowserError("no page is open yet; call browser.search, or browser.open with a URL as `id`")
        if cursor == -1:
            return self.pages[-1]
        if not 0 <= cursor < len(self.pages):
            valid = f"0 - {len(self.pages) - 1}"
            raise BrowserError(
                f"cursor `{cursor}` does not exist (valid: {valid}); use one shown as [cursor]"
            )
        return self.pages[cursor]

    def _load(self, url: str, *, fresh: bool, raw: bool = False) -> Page:
        # a URL the model types is a refresh; a link followed again shows the page it saw before
        if not url:
            raise BrowserError("`id` is an empty URL; give a link id from the page, or a full URL")
        if fresh or raw or url not in self._cache:
            try:
                page = _page(self.backend.fetch(url), raw=raw)
            except Exception as e:  # noqa: BLE001 - whatever the backend raises, the model reads it
                raise BrowserError(f"could not open `{url}`: {_short(e)}; check the URL, or search") from None
            if raw:
                return page
            self._cache[url] = page
        return self._cache[url]

    def _show(self, page: Page, loc: int, num_lines: int) -> str:
        total, loc = len(page.lines), max(loc, 0)
        if loc >= total:
            raise BrowserError(
                f"invalid `loc` {loc}: the page's last line is L{total - 1}; give a smaller one"
            )
        end = min(loc + min(num_lines if num_lines > 0 else self.view_lines, self.max_lines), total)
        self.pages.append(page)
        body = "\n".join(f"L{i}: {page.lines[i]}" for i in range(loc, end))
        where = f" ({_short(unquote(page.url), 1024)})" if page.url else ""
        scrollbar = f"**viewing lines [{loc} - {end - 1}] of {total - 1}**"
        return f"[{len(self.pages) - 1}] {page.title}{where}\n{scrollbar}\n\n{body}"


def _int(value: Any, name: str) -> int:
    if value is None:  # the model wrote the argument as null: it means "not given"
        return -1
    try:
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        raise BrowserError(f"`{name}` must be an integer, not {json.dumps(value)}") from None


def _short(value: Any, size: int = 300) -> str:
    text = str(value) or type(value).__name__
    return text if len(text) <= size else text[: size - 3] + "..."
