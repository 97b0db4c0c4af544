"""A small stdlib HTML reader for the report tests: table cells by table id, images under an
element id."""

from __future__ import annotations

from html.parser import HTMLParser


class _Parts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: dict[str, list[dict[str, str]]] = {}  # element id -> <img> attrs inside
        self.ids: set[str] = set()
        self._open: list[tuple[str, str | None]] = []  # (tag, id)
        self._table: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        element = values.get("id")
        if element:
            self.ids.add(element)
        if tag == "img":
            for _, open_id in self._open:
                if open_id:
                    self.images.setdefault(open_id, []).append(values)
            if element:
                self.images.setdefault(element, []).append(values)
            return
        self._open.append((tag, element))
        if tag == "table" and element:
            self._table = element
            self.tables[element] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._table and self._in_body:
            self.tables[self._table].append([])
        elif tag == "td" and self._table and self._in_body:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break
        if tag == "td" and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> _Parts:
    """The tables (``{id: [row cells]}``, body rows only), the images under each element
    id, and every id of a report page."""
    parts = _Parts()
    parts.feed(text)
    return parts
