"""Cheap ways for one client to cost the gateway a lot: each must stay cheap for the gateway too."""

from __future__ import annotations

import base64
import zlib
from typing import Any

import aiohttp
import pytest
from harness import Gateway

from gateway import pdf
from gateway.billing import PDF_DATA_URI, estimate_prompt_tokens

# an object stream's opening with no `endstream` after it: each keyword used to search, and hand zlib, the
# whole rest of the file
OPEN_OBJSTM = b"1 0 obj<</Type/ObjStm>>stream\n\x00"
# a 4 kB zip bomb: an object stream inflating to 4 MB of nothing
BOMB = (b"%PDF-1.5\n1 0 obj<</Type/ObjStm/Filter/FlateDecode>>stream\n"
        + zlib.compress(b"\0" * pdf.INFLATE_BUDGET, 9) + b"\nendstream\nendobj\n%%EOF\n")


def file_part(data: bytes) -> dict[str, Any]:
    return {"type": "file", "file": {"filename": "a.pdf", "file_data": PDF_DATA_URI + base64.b64encode(data).decode()}}


class Inflated:
    """zlib.decompressobj, recording the bytes it was handed and the bytes it gave."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.given = self.taken = 0
        real, outer = zlib.decompressobj, self

        class Recording:
            def __init__(self) -> None:
                self.inner = real()

            def decompress(self, raw: Any, max_length: int = 0) -> bytes:
                outer.given += len(raw)
                out = self.inner.decompress(raw, max_length)
                outer.taken += len(out)
                return out

        monkeypatch.setattr(pdf.zlib, "decompressobj", Recording)


def test_stream_keywords_without_an_end_are_not_each_read_to_the_end_of_the_file(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """40,000 object-stream openings and no `endstream` (1.2 MB, within any body limit): every keyword handed
    zlib the rest of the file, 25 GB copied in all, ~11 s of the event loop for one request."""
    data = b"%PDF-1.5\n" + OPEN_OBJSTM * 40_000
    seen = Inflated(monkeypatch)
    assert pdf.count_pages(data) is None
    assert seen.given <= len(data)


def test_a_file_of_stream_keywords_is_looked_at_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """15 MB of bare `stream` keywords (20 MB of base64, the default body limit) inflate nothing, yet each
    keyword was looked at: ~4 s of the event loop per request, on the free count_tokens endpoint too. Each
    keyword now costs the inflate budget its share."""
    data = b"%PDF-1.5\n" + b"\nstream\n" * 1_900_000
    looked = 0
    real = pdf.STREAM

    class Counting:
        def search(self, where: bytes, pos: int = 0) -> Any:
            nonlocal looked
            looked += 1
            return real.search(where, pos)

        def finditer(self, where: bytes) -> Any:
            nonlocal looked
            for match in real.finditer(where):
                looked += 1
                yield match

    monkeypatch.setattr(pdf, "STREAM", Counting())
    assert pdf.count_pages(data) is None
    assert looked <= pdf.INFLATE_BUDGET // pdf.KEYWORD_COST + 1


def test_a_body_of_many_zip_bombs_inflates_one_budget_not_one_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each 4 kB document inflated INFLATE_BUDGET: a 20 MB body of them, 16 GB inflated on the event loop."""
    assert len(BOMB) < 5_000
    seen = Inflated(monkeypatch)
    estimate_prompt_tokens({"messages": [{"role": "user", "content": [file_part(BOMB)] * 20}]})
    assert 0 < seen.taken <= pdf.INFLATE_BUDGET


async def test_an_empty_key_makes_no_quadratic_pdf_count(make_gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key with $0 sends a 1.2 MB PDF of object-stream openings: it is refused for balance after the prompt
    estimate, which hands zlib no more than the file (it handed it 25 GB, ~11 s of everyone's event loop)."""
    gateway: Gateway = await make_gateway(max_body_bytes=4 * 1024 * 1024)
    broke, _ = await gateway.add_key("broke", balance=0)
    data = b"%PDF-1.5\n" + OPEN_OBJSTM * 40_000
    body = {"model": "fake/gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": [file_part(data)]}]}
    seen = Inflated(monkeypatch)
    async with aiohttp.ClientSession() as http, \
            http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth(broke)) as r:
        assert r.status == 402
    assert 0 < seen.given <= len(data)
    assert gateway.fake.requests == []
