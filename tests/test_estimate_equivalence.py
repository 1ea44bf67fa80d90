"""The prompt estimate and the image scans were rewritten for speed (issue #6: a Claude Code turn has hundreds of
blocks, each walked in Python): the same figures and answers as before, for any body. The functions as they were
are kept here as the reference, and compared with the gateway's over generated bodies: Claude Code and OpenAI
shapes, images, PDFs (sharing one inflate budget, so the order PDFs are read in counts), long texts with escapes
and non-ASCII, nested tool_result blocks, and any JSON where a block or a field is expected."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pdfs import make_pdf

from gateway import billing, images, pdf
from gateway.billing import (
    IMAGE_PARTS,
    IMAGE_TOKENS,
    LONG_TEXT,
    MESSAGE_OVERHEAD,
    PDF_DATA_URI,
    TEXT_FIELDS,
    estimate_tokens,
    pdf_tokens,
    utf8_len,
)

# hypothesis describes a strategy by its repr, which for these nested ones runs to kilobytes (harmless)
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
EXAMPLES = settings(max_examples=int(os.environ.get("GW_FUZZ_EXAMPLES", "200")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])

# --- the reference: gateway/billing.py and gateway/images.py before the rewrite ---------------------------


def old_estimate_prompt_tokens(body: dict[str, Any]) -> int:
    budget = pdf.InflateBudget()
    tokens = 0
    for message in body.get("messages") or ():
        tokens += MESSAGE_OVERHEAD
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            tokens += estimate_tokens(utf8_len(content))
        elif isinstance(content, list):
            tokens += sum(_old_part_tokens(part, budget) for part in content)
        if isinstance(message, dict) and message.get("tool_calls"):
            tokens += estimate_tokens(len(orjson.dumps(message["tool_calls"])))
    for name in ("system", "tools"):
        if body.get(name):
            tokens += estimate_tokens(len(orjson.dumps(body[name])))
    return tokens


def _old_part_tokens(part: Any, budget: pdf.InflateBudget) -> int:
    if not isinstance(part, dict):
        return estimate_tokens(len(orjson.dumps(part)))
    kind = part.get("type")
    if isinstance(kind, str) and kind in IMAGE_PARTS:
        return IMAGE_TOKENS
    if (pdf_part := _old_pdf_base64(part)) is not None:
        encoded, rest = pdf_part
        return pdf_tokens(encoded, budget) + estimate_tokens(len(orjson.dumps(rest)))
    nested = part.get("content")
    if isinstance(nested, list):
        rest = {name: value for name, value in part.items() if name != "content"}
        return estimate_tokens(len(orjson.dumps(rest))) + sum(_old_part_tokens(block, budget) for block in nested)
    field = TEXT_FIELDS.get(kind) if isinstance(kind, str) else None
    text = part.get(field) if field else None
    if text.__class__ is str and len(text) > LONG_TEXT:
        return estimate_tokens(len(orjson.dumps({**part, field: ""})) + utf8_len(text))  # type: ignore[arg-type]
    return estimate_tokens(len(orjson.dumps(part)))


def _old_pdf_base64(part: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    source = part.get("source")
    if part.get("type") == "document" and isinstance(source, dict) and source.get("type") == "base64" \
            and source.get("media_type") == "application/pdf" and isinstance(source.get("data"), str):
        return str(source["data"]), {**part, "source": {**source, "data": ""}}
    file = part.get("file")
    data = file.get("file_data") if part.get("type") == "file" and isinstance(file, dict) else None
    if isinstance(data, str) and data.startswith(PDF_DATA_URI):
        return data.removeprefix(PDF_DATA_URI), {**part, "file": {**file, "file_data": PDF_DATA_URI}}  # type: ignore[dict-item]
    return None


def _old_parts(content: Any) -> Iterator[dict[str, Any]]:
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict):
            yield part
            if part.get("type") == "tool_result":
                yield from _old_parts(part.get("content"))


def _old_all_parts(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for message in body.get("messages") or ():
        yield from _old_parts(message.get("content") if isinstance(message, dict) else None)


def old_has_images(body: dict[str, Any]) -> bool:
    return any(part.get("type") == "image" or (part.get("type") == "image_url"
                                               and isinstance(part.get("image_url"), dict))
               for part in _old_all_parts(body))


def old_has_remote_images(body: dict[str, Any]) -> bool:
    return any(images._remote_url(part) is not None for part in _old_all_parts(body))  # _remote_url is unchanged


# --- generated bodies ---------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False,
                                                                                  allow_infinity=False) | st.text()
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=10)


def mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any] = json_values) -> st.SearchStrategy[Any]:
    """The usual shape three times in four, anything else the fourth."""
    return usual | usual | usual | odd


# around LONG_TEXT, with what JSON escapes (quotes, backslashes, newlines, controls) and what it does not (non-ASCII)
texts = st.builds(lambda head, size: head + "x" * (size - len(head)), st.text(max_size=40),
                  st.sampled_from([0, LONG_TEXT - 1, LONG_TEXT, LONG_TEXT + 1, 2 * LONG_TEXT]))
_PDFS = [base64.b64encode(make_pdf(pages, object_stream=compressed)).decode()
         for pages in (1, 3) for compressed in (False, True)]
pdfs = st.integers(0, len(_PDFS) - 1).map(_PDFS.__getitem__)  # not sampled_from: its repr would hold the PDFs
pdf_data = mostly(pdfs, st.text("ABCDEFabcdef0123456789+/=", max_size=60) | json_values)
urls = st.sampled_from(["https://x.test/a.png", "http://10.0.0.1/a.png", "data:image/png;base64,AA", ""])
extra = st.dictionaries(st.sampled_from(["cache_control", "id", "name", "input", "is_error", "citations", "title"]),
                        json_values, max_size=2)


def block(kinds: st.SearchStrategy[Any], fields: dict[str, st.SearchStrategy[Any]],
          inner: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A block of one of `kinds`, maybe with its fields, maybe with a `content` list too (which comes first in
    the estimate), and a few fields any block may carry."""
    typed = st.fixed_dictionaries({"type": kinds}, optional={
        **fields, "content": st.lists(inner, min_size=1, max_size=3) | json_values})
    return st.builds(lambda own, more: {**more, **own}, typed, extra)


def blocks(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Each kind of block the estimate and the scans tell apart, well formed or with odd values, or any JSON."""
    source = st.fixed_dictionaries({}, optional={
        "type": mostly(st.sampled_from(["base64", "url"])), "url": mostly(urls),
        "media_type": mostly(st.sampled_from(["application/pdf", "image/png"])), "data": pdf_data})
    pdf_source = st.fixed_dictionaries({"type": mostly(st.just("base64")),
                                        "media_type": mostly(st.just("application/pdf")), "data": pdf_data})
    file = st.fixed_dictionaries({}, optional={
        "file_data": mostly(pdf_data.map(lambda d: PDF_DATA_URI + d if isinstance(d, str) else d)),
        "filename": st.text(max_size=5)})
    return st.one_of(
        block(st.just("text"), {"text": mostly(texts)}, inner),
        st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": st.text(max_size=4),
                               "content": texts | st.lists(inner, min_size=1, max_size=3) | json_values}),
        block(st.just("tool_use"), {"input": json_values}, inner),
        block(st.sampled_from(["image", "input_image"]), {"source": mostly(source)}, inner),
        block(st.sampled_from(["image_url", "input_image"]),
              {"image_url": mostly(st.fixed_dictionaries({}, optional={"url": mostly(urls)}))}, inner),
        block(st.just("document"), {"source": mostly(pdf_source | source), "title": st.text(max_size=4)}, inner),
        block(st.just("file"), {"file": mostly(file)}, inner),
        block(json_values | st.text(max_size=8), {"text": texts, "source": source, "file": file}, inner),
        json_values)


content_blocks = st.recursive(blocks(json_values), blocks, max_leaves=8)
message_dicts = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool"])}, optional={
    "content": mostly(st.lists(content_blocks, min_size=1, max_size=8), texts | json_values),
    "tool_calls": json_values})
# a turn of many blocks first (the images' and PDFs' order and the shared budget matter across blocks), then others
bodies = st.deferred(lambda: st.fixed_dictionaries(  # deferred: a short repr for hypothesis to print
    {"messages": mostly(st.builds(lambda many, more: [{"role": "user", "content": many}, *more],
                                  st.lists(content_blocks, min_size=2, max_size=12),
                                  st.lists(mostly(message_dicts), max_size=4)))},
    optional={"system": texts | st.lists(content_blocks, max_size=2) | json_values, "tools": json_values}))


def outcome(function: Any, body: dict[str, Any]) -> Any:
    """What a function returns, or the type of what it raises (any JSON may come: some of it orjson refuses)."""
    try:
        return function(body)
    except Exception as exc:  # the kind of failure is what is compared
        return type(exc)


@pytest.mark.parametrize("budget", [pdf.INFLATE_BUDGET, 2_000], ids=["default-budget", "tight-budget"])
@EXAMPLES
@given(body=bodies)
def test_the_estimate_is_the_one_before_the_rewrite(body: dict[str, Any], budget: int) -> None:
    """A tight inflate budget (the bytes of one or two of the compressed PDFs) makes the PDFs' order matter: the
    budget runs out in the same one."""

    class Budget(pdf.InflateBudget):
        def __init__(self, total: int = budget) -> None:
            super().__init__(total)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pdf, "InflateBudget", Budget)
        assert outcome(billing.estimate_prompt_tokens, body) == outcome(old_estimate_prompt_tokens, body)


@EXAMPLES
@given(body=bodies)
def test_the_image_scans_answer_as_before_the_rewrite(body: dict[str, Any]) -> None:
    assert outcome(images.has_images, body) == outcome(old_has_images, body)
    assert outcome(images.has_remote_images, body) == outcome(old_has_remote_images, body)


def test_a_claude_code_turn_is_estimated_as_before() -> None:
    """The bench's shape (bench/bodies.py): text, tool_use and long tool_result blocks, cache marks, tools."""
    source = "".join(f"def f_{i}(r):\n    return {{'n': {i}, \"q\": 'é\\\\'}}\n\n" for i in range(60))
    turns = [message for i in range(20) for message in (
        {"role": "assistant", "content": [{"type": "text", "text": "Let me read it."},
                                          {"type": "tool_use", "id": f"t{i}", "name": "read", "input": {"p": i}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}", "content": source},
                                     {"type": "text", "text": f"Next ({i}).", "cache_control": {"type": "x"}}]})]
    body = {"system": [{"type": "text", "text": "Be brief."}], "messages": turns,
            "tools": [{"name": "read", "input_schema": {"type": "object"}}]}
    assert billing.estimate_prompt_tokens(body) == old_estimate_prompt_tokens(body)
    assert not images.has_images(body) and not images.has_remote_images(body)
    with_image = {**body, "messages": [*turns, {"role": "user", "content": [{"type": "tool_result", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]}]}]}
    assert images.has_images(with_image) and images.has_remote_images(with_image)


def test_pdfs_share_the_budget_in_the_same_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compressed PDFs, one inside a tool_result, under a budget that does not cover them all: the same PDFs are
    counted by their pages, the same by their size, as before (a budget per PDF would give another figure)."""
    one, three = _PDFS[1], _PDFS[3]  # PDF 1.5 layouts: 1 page and 3 pages in compressed object streams

    def document(data: str) -> dict[str, Any]:
        return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}}

    body = {"messages": [{"role": "user", "content": [
        document(one),
        {"type": "tool_result", "content": [{"type": "file", "file": {"file_data": PDF_DATA_URI + three}}]},
        document(one), document(three)]}]}
    alone = old_estimate_prompt_tokens(body)
    budget = pdf.InflateBudget
    monkeypatch.setattr(pdf, "InflateBudget", lambda total=2_000: budget(total))
    assert billing.estimate_prompt_tokens(body) == old_estimate_prompt_tokens(body) != alone
    assert billing.estimate_prompt_tokens({"messages": [{"role": "user", "content": [document(three)]}]}) > (
        3 * billing.PDF_PAGE_TOKENS)  # the generated PDFs are read, their pages counted
