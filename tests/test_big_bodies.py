"""Big but legitimate bodies (coding agents send 100 KB - 2 MB a turn: tools with schemas, dozens of tool-call
rounds holding source files) cost the gateway per byte and per block only where it must: each block of the
history is translated and measured once a request, not once per step that needs the result (issue #6).

Structural properties, not timings: how often a whole-history function runs per request, how many bytes are
serialized only to be measured.
"""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

import anthropic
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pdfs import make_pdf

from gateway import billing
from gateway.billing import LONG_TEXT, PDF_DATA_URI, estimate_tokens, pdf_tokens
from providers import anthropic_inbound

SOURCE = "".join(f"def handler_{i}(request):\n    return {{'n': {i}, \"q\": '\\\\'}}\n\n" for i in range(40))


def agent_turns(turns: int) -> list[dict[str, Any]]:
    """Claude Code's history: tool_use blocks and tool_result blocks holding a source file."""
    history: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": "Read the repo."}]}]
    for turn in range(turns):
        call = f"toolu_{turn:04d}"
        history += [{"role": "assistant", "content": [
                        {"type": "text", "text": "Reading."},
                        {"type": "tool_use", "id": call, "name": "read", "input": {"path": f"m{turn}.py"}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call, "content": SOURCE},
                                                 {"type": "text", "text": f"Next ({turn})."}]}]
    return history


TOOLS = [{"name": "read", "description": "Reads a file.",
          "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}]


@pytest.mark.parametrize("model", ["oai/gpt-4o", "google/flash"])
async def test_a_translated_stream_translates_and_estimates_its_history_once(
        claude: anthropic.AsyncAnthropic, monkeypatch: pytest.MonkeyPatch, model: str) -> None:
    """A streamed /v1/messages request to another kind was translated to chat twice (the upstream request, then
    again for the stream's codec) and its prompt estimated twice (the hold, then message_start), each a pass
    over every block of the history."""
    calls: Counter[str] = Counter()
    translate, estimate = anthropic_inbound.chat_body, billing.estimate_prompt_tokens

    def counted_translate(*args: Any, **kwargs: Any) -> Any:
        calls["chat_body"] += 1
        return translate(*args, **kwargs)

    def counted_estimate(body: dict[str, Any]) -> int:
        calls["estimate"] += 1
        return estimate(body)

    monkeypatch.setattr(anthropic_inbound, "chat_body", counted_translate)
    monkeypatch.setattr(billing, "estimate_prompt_tokens", counted_estimate)
    stream = await claude.messages.create(model=model, max_tokens=50, system="Be brief.", tools=TOOLS,  # type: ignore[arg-type]
                                          messages=agent_turns(20), stream=True)  # type: ignore[arg-type]
    events = [event async for event in stream]
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    assert events[0].message.usage.input_tokens > len(SOURCE) * 20 // 4  # the estimate, stated on message_start
    assert calls == {"chat_body": 1, "estimate": 1}


class _DumpsSpy:
    """`billing`'s orjson, counting the bytes it serializes."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def dumps(self, value: Any) -> bytes:
        out = orjson.dumps(value)
        self.sizes.append(len(out))
        return out


def test_an_estimate_serializes_no_long_text_or_pdf_only_to_measure_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The prompt estimate (the hold of every request, count_tokens) serialized each block to measure it: the
    source files of a coding agent's tool results and the megabytes of base64 of a PDF were copied as JSON only to
    take their length. A long text is measured by its UTF-8 length, a PDF's base64 by its own length."""
    pdf = base64.b64encode(make_pdf(3, padding=200_000)).decode()
    body = {"system": [{"type": "text", "text": "Be brief."}], "tools": TOOLS, "messages": [
        *agent_turns(20),
        {"role": "user", "content": [{"type": "text", "text": SOURCE},
                                     {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                                     "data": pdf}}]},
        {"role": "user", "content": [{"type": "file", "file": {"filename": "a.pdf", "file_data": PDF_DATA_URI + pdf}},
                                     {"type": "tool_result", "tool_use_id": "t", "content": [
                                         {"type": "text", "text": SOURCE}]}]}]}
    spy = _DumpsSpy()
    monkeypatch.setattr(billing, "orjson", spy)
    tokens = billing.estimate_prompt_tokens(body)
    assert tokens > 2 * pdf_tokens(pdf) + 22 * estimate_tokens(len(SOURCE))
    assert sum(spy.sizes) < 5_000, max(spy.sizes)  # the blocks around the texts, the tools, the tool calls' input


plain_text = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'), min_size=1)
fields = st.dictionaries(st.sampled_from(["cache_control", "citations", "is_error", "tool_use_id", "name"]),
                         st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | plain_text
                         | st.fixed_dictionaries({"type": st.just("ephemeral")}), max_size=3)


@settings(max_examples=150, deadline=None)
@given(text=plain_text, pad=st.integers(0, 2 * LONG_TEXT), kind=st.sampled_from(["text", "tool_result"]),
       extra=fields)
def test_a_long_text_is_measured_as_its_block_serialized(text: str, pad: int, kind: str, extra: dict[str, Any]) -> None:
    """Measuring a block's long string apart gives what serializing the block gave, for any text JSON writes as it
    is (escapes aside, which a string content is not counted either), long or short, whatever the block's other
    fields."""
    field = "text" if kind == "text" else "content"
    block = {**extra, "type": kind, field: text + "x" * pad}
    body = {"messages": [{"role": "user", "content": [block]}]}
    empty = billing.estimate_prompt_tokens({"messages": [{"role": "user", "content": []}]})
    assert billing.estimate_prompt_tokens(body) - empty == estimate_tokens(len(orjson.dumps(block)))


@settings(max_examples=50, deadline=None)
@given(data=st.text(st.sampled_from("ABCDEFabcdef0123456789+/="), max_size=3000), extra=fields,
       openai_shape=st.booleans())
def test_a_pdf_block_is_measured_as_before_without_its_base64(data: str, extra: dict[str, Any],
                                                              openai_shape: bool) -> None:
    """The block around a PDF is measured without serializing the PDF: the same figure as the block serialized
    less its base64."""
    block = ({**extra, "type": "file", "file": {"file_data": PDF_DATA_URI + data, "filename": "a.pdf"}} if openai_shape
             else {**extra, "type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                           "data": data}})
    body = {"messages": [{"role": "user", "content": [block]}]}
    empty = billing.estimate_prompt_tokens({"messages": [{"role": "user", "content": []}]})
    assert billing.estimate_prompt_tokens(body) - empty == (
        pdf_tokens(data) + estimate_tokens(len(orjson.dumps(block)) - len(data)))


def lines_run(module: str, call: Any) -> int:
    """Python lines `call()` executes in `module`'s file: what a per-element loop in Python costs, counted."""
    import sys

    target = sys.modules[module].__file__
    lines = 0

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal lines
        lines += event == "line"
        return local

    def on_call(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == target else None

    sys.settrace(on_call)
    try:
        call()
    finally:
        sys.settrace(None)
    return lines


BATCH = [[(i * 7919 + j) % 100_000 for j in range(150)] for i in range(200)]  # an embeddings batch of token ids


def test_token_id_arrays_are_not_read_one_id_at_a_time_in_python() -> None:
    """An embeddings (or legacy completions) batch of token-id arrays (up to 300k ids, 2 MB) was tested id by id in
    Python, by the depth check and by the token count of the hold: per id, where C reads the arrays."""
    from gateway import endpoints, requests

    ids = sum(map(len, BATCH))
    assert endpoints.input_tokens(BATCH) == ids and endpoints.prompt_count(BATCH) == len(BATCH)
    assert requests._depth_exceeds({"input": BATCH}, 3) is False and requests._depth_exceeds({"input": BATCH}, 2)
    assert lines_run("gateway.endpoints", lambda: endpoints.input_tokens(BATCH)) < 10 * len(BATCH)
    assert lines_run("gateway.requests", lambda: requests._depth_exceeds({"input": BATCH}, 64)) < 10 * len(BATCH)


@settings(max_examples=150, deadline=None)
@given(value=st.lists(st.integers(-(2**63), 2**63 - 1) | st.booleans() | st.none() | st.floats(allow_nan=False)
                      | st.text(max_size=3) | st.lists(st.integers(), max_size=2) | st.just({}), max_size=40))
def test_the_token_id_test_is_the_one_by_one_test(value: list[Any]) -> None:
    from gateway import endpoints

    assert endpoints.token_ids(value) == (bool(value) and all(isinstance(v, int) for v in value))
