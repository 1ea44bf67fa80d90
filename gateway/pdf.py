"""How many pages a PDF has, cheaply and without a PDF library: the prompt estimate of a document block
(`gateway.billing`) is a per-page allowance, since its base64 length says nothing about its tokens.

Each page of a PDF is a dictionary with `/Type /Page` (the page tree's inner nodes are `/Type /Pages`).
PDF 1.5 and later may keep those dictionaries inside compressed object streams (`/Type /ObjStm`,
FlateDecode), so those streams are inflated (within a byte budget) and searched too. A count may run high
(an incremental update repeats a changed page), which suits an estimate that must err high; None when no
page could be found, so the caller falls back to a figure by size.
"""

from __future__ import annotations

import re
import zlib

PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z0-9])")
STREAM = re.compile(rb"\bstream\r?\n")
DICT_WINDOW = 512  # bytes before a `stream` keyword searched for its dictionary's /ObjStm
INFLATE_BUDGET = 4 * 1024 * 1024  # inflated bytes read from object streams per request (page dicts are small)
KEYWORD_COST = 256  # of that budget, per `stream` keyword looked at (real files have a few per page)


class InflateBudget:
    """Inflated bytes one request's documents may still take: a budget per document would let a body of a
    thousand 4 kB zip bombs inflate a thousand times INFLATE_BUDGET on the event loop."""

    __slots__ = ("left",)

    def __init__(self, total: int = INFLATE_BUDGET) -> None:
        self.left = total


def count_pages(data: bytes, budget: InflateBudget | None = None) -> int | None:
    """The number of page objects in a PDF's bytes, or None when none was found."""
    pages = len(PAGE.findall(data))
    if not pages:
        chunks = _object_streams(data, budget if budget is not None else InflateBudget())
        pages = sum(len(PAGE.findall(chunk)) for chunk in chunks)
    return pages or None


def _object_streams(data: bytes, budget: InflateBudget) -> list[bytes]:
    """The inflated contents of the compressed object streams, until the budget is spent. Each `stream`
    keyword looked at costs the budget `KEYWORD_COST` too: a file of nothing but keywords inflates nothing,
    yet cost seconds of the event loop a request."""
    found: list[bytes] = []
    view = memoryview(data)
    pos = 0
    while budget.left > 0 and (match := STREAM.search(data, pos)) is not None:
        budget.left -= KEYWORD_COST
        pos = match.end()
        head = data[max(0, match.start() - DICT_WINDOW):match.start()]
        own = head[max(0, head.rfind(b"obj")):]  # this object's dictionary, not the one before it
        if b"/ObjStm" not in own:
            continue
        end = data.find(b"endstream", match.end())
        # the search goes on after this stream: a keyword inside it is its data, and searching (and handing
        # zlib) the rest of the file again from each of many keywords was quadratic in the file's size
        pos = end if end >= 0 else len(data)
        inflater = zlib.decompressobj()
        try:  # only this stream's bytes: the rest of the file as input would be copied once per stream
            chunk = inflater.decompress(view[match.end():pos], max(budget.left, 1))  # 0: no limit to zlib
        except zlib.error:
            continue
        budget.left -= len(chunk)
        found.append(chunk)
    return found
