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
INFLATE_BUDGET = 4 * 1024 * 1024  # inflated bytes read from object streams per document (page dicts are small)


def count_pages(data: bytes) -> int | None:
    """The number of page objects in a PDF's bytes, or None when none was found."""
    pages = len(PAGE.findall(data))
    if not pages:
        pages = sum(len(PAGE.findall(chunk)) for chunk in _object_streams(data))
    return pages or None


def _object_streams(data: bytes) -> list[bytes]:
    """The inflated contents of the compressed object streams, until the budget is spent."""
    found: list[bytes] = []
    budget = INFLATE_BUDGET
    view = memoryview(data)
    for match in STREAM.finditer(data):
        head = data[max(0, match.start() - DICT_WINDOW):match.start()]
        own = head[max(0, head.rfind(b"obj")):]  # this object's dictionary, not the one before it
        if b"/ObjStm" not in own or budget <= 0:
            continue
        end = data.find(b"endstream", match.end())
        inflater = zlib.decompressobj()
        try:  # only this stream's bytes: the rest of the file as input would be copied once per stream
            chunk = inflater.decompress(view[match.end():end if end >= 0 else len(data)], budget)
        except zlib.error:
            continue
        budget -= len(chunk)
        found.append(chunk)
    return found
