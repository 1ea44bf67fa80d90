"""Property-based fuzzing (hypothesis) of the parts that read hostile bytes: the SSE/NDJSON decoders, the
request translators, and the readers of upstream answers.

The contract under fuzzing: whatever arrives, a translator either returns well-formed data or raises
`ProviderError` (which the gateway maps to a clear 4xx/502) — never another exception, which would be a
500 or a broken stream.
"""

from __future__ import annotations

import gc
import json
import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import billing, requests, validation
from gateway.errors import InvalidRequest
from gateway.images import has_images
from providers import registry
from providers.framing import NDJSONDecoder, SSEDecoder
from providers.types import ChatRequest, ProviderError, SSEEvent, Target

FUZZ = settings(max_examples=int(os.environ.get("GW_FUZZ_EXAMPLES", "150")), deadline=None,  # raise it to hunt
                suppress_health_check=[HealthCheck.too_slow])
KINDS = sorted(registry.KINDS)
TARGET = Target(provider="p", base_url="https://upstream.example", api_key="k", upstream_model="m",
                public_model="p/m", max_tokens_field=None, drop=(), headers=(), default_max_tokens=64)

# --- strategies ---------------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False,
                                                                                  allow_infinity=False) | st.text()
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]) | st.text(max_size=6)
part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio", "file"]) | st.text()},
                             optional={"text": json_values, "image_url": json_values})
message = st.fixed_dictionaries({"role": roles}, optional={
    "content": st.none() | st.text() | st.lists(part | json_values, max_size=3) | json_values,
    "tool_calls": json_values | st.lists(st.fixed_dictionaries({"id": st.text(), "type": st.just("function"),
                                                                "function": json_values},
                                                               optional={"extra_content": json_values})),
    "tool_call_id": st.text() | json_values, "name": st.text()})
efforts = st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh", "max"]) | json_values
reasoning_objects = st.fixed_dictionaries({}, optional={
    "effort": efforts, "max_tokens": st.integers(-5, 100_000) | json_values, "exclude": st.booleans() | json_values,
    "enabled": st.booleans() | json_values}) | json_values
chat_bodies = st.fixed_dictionaries(
    {"model": st.text(max_size=20), "messages": st.lists(message | json_values, min_size=1, max_size=4)},
    optional={**{name: json_values | st.integers(-5, 300) | st.floats(-3, 3) for name in (
        "temperature", "top_p", "n", "max_tokens", "max_completion_tokens", "stop", "tools", "tool_choice",
        "response_format", "stream_options", "seed", "user", "logprobs", "top_logprobs")},
        "reasoning_effort": efforts, "reasoning": reasoning_objects})


def chunkings(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """Every way of cutting `data` into pieces, as an upstream's TCP reads might."""
    cuts = st.lists(st.integers(0, len(data)), max_size=8).map(sorted)
    return cuts.map(lambda points: [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)])


sse_bytes = st.lists(st.sampled_from([b"data: ", b"event: x", b"id: 7", b": comment", b"{\"a\":1}", b"[DONE]",
                                      b"\n", b"\r\n", b"\r", b"\n\n", b"retry: 5", b"data:", b"\xff\xfe", b" "])
                     | st.binary(max_size=8), max_size=30).map(b"".join)

# --- framing --------------------------------------------------------------------------------------------


def _decode_sse(pieces: list[bytes]) -> list[SSEEvent] | str:
    decoder = SSEDecoder(max_event_bytes=4096)
    try:
        events = [event for piece in pieces for event in decoder.feed(piece)]
        return events + decoder.flush()
    except ProviderError as exc:
        return str(exc)


@FUZZ
@given(st.data(), sse_bytes)
def test_sse_decoding_is_independent_of_chunking(data: st.DataObject, raw: bytes) -> None:
    whole = _decode_sse([raw])
    assert _decode_sse(data.draw(chunkings(raw))) == whole


@FUZZ
@given(st.data(), st.lists(st.binary(max_size=10) | st.just(b"\n") | st.just(b"\r\n"), max_size=20).map(b"".join))
def test_ndjson_decoding_is_independent_of_chunking(data: st.DataObject, raw: bytes) -> None:
    def decode(pieces: list[bytes]) -> list[bytes] | str:
        decoder = NDJSONDecoder(max_line_bytes=4096)
        try:
            return [line for piece in pieces for line in decoder.feed(piece)] + decoder.flush()
        except ProviderError as exc:
            return str(exc)

    assert decode(data.draw(chunkings(raw))) == decode([raw])


# --- requests -------------------------------------------------------------------------------------------


@FUZZ
@pytest.mark.parametrize("kind", KINDS)
@given(body=chat_bodies, stream=st.booleans())
def test_translators_take_any_body_or_refuse_it_cleanly(kind: str, body: dict[str, Any], stream: bool) -> None:
    """Bodies the gateway's checks let through reach the translator; anything else must be a clean 400."""
    try:
        validation.check_chat(body)
    except InvalidRequest:
        return
    billing.estimate_prompt_tokens(body)  # runs before the translator, on the same body
    has_images(body)
    ceiling = registry.get(kind).max_output_tokens(body, TARGET)  # the hold's figure, also before the translator
    assert ceiling is None or (isinstance(ceiling, int) and ceiling > 0)
    try:
        req = registry.get(kind).build_request(ChatRequest(body=body, stream=stream), TARGET)
    except ProviderError:
        return
    assert req.url.startswith(TARGET.base_url)
    assert all(isinstance(k, str) and isinstance(v, str) and "\n" not in v for k, v in req.headers.items())
    assert isinstance(orjson.loads(req.body), dict)


# --- answers --------------------------------------------------------------------------------------------

answers = (st.binary(max_size=200)
           | json_values.map(lambda v: json.dumps(v).encode())
           | st.fixed_dictionaries({"choices": json_values, "usage": json_values, "content": json_values,
                                    "candidates": json_values, "usageMetadata": json_values,
                                    "type": st.sampled_from(["message", "error", "message_start",
                                                             "content_block_delta", "message_delta"]),
                                    "error": json_values}).map(lambda v: json.dumps(v).encode()))


@FUZZ
@pytest.mark.parametrize("kind", KINDS)
@given(raw=answers)
def test_upstream_answers_parse_or_raise_provider_error(kind: str, raw: bytes) -> None:
    adapter = registry.get(kind)
    try:
        result = adapter.parse_response(raw, TARGET)
    except ProviderError:
        pass
    else:
        assert isinstance(result.body, dict)
        orjson.dumps(result.body)
    err = adapter.parse_error(502, raw)
    assert isinstance(err.message, str) and err.status == 502


@FUZZ
@pytest.mark.parametrize("kind", KINDS)
@given(events=st.lists(st.builds(SSEEvent, data=answers, event=st.sampled_from(["", "message_start", "ping",
                                                                                  "content_block_delta",
                                                                                  "error"])), max_size=6))
def test_stream_events_translate_or_raise_provider_error(kind: str, events: list[SSEEvent]) -> None:
    adapter = registry.get(kind)
    state = adapter.new_stream_state(ChatRequest(body={"model": "p/m", "messages": []}, stream=True), TARGET)
    for event in events:
        try:
            chunks = adapter.parse_stream_event(state, event)
        except ProviderError:
            continue
        for chunk in chunks:
            assert isinstance(chunk, dict)
            orjson.dumps(chunk)


bracket_text = st.text(alphabet='[]{}"\\,:ab ', max_size=8)  # strings full of what the byte check must skip
nested_values = st.recursive(st.none() | st.integers(-(2**63), 2**63 - 1) | bracket_text,
                             lambda inner: st.lists(inner, max_size=3) | st.dictionaries(bracket_text, inner,
                                                                                          max_size=3), max_leaves=30)


@FUZZ
@given(value=st.dictionaries(bracket_text, nested_values, max_size=3), limit=st.integers(1, 8),
       budget=st.integers(0, 12))  # a body: an object
def test_the_byte_depth_check_agrees_with_the_walk(value: Any, limit: int, budget: int) -> None:
    """A body of very many objects and arrays is checked for depth on its bytes (walking 7M empty arrays took
    6 s); both checks must say the same of any JSON, whatever its strings hold, and a walk on a budget either
    says the same or gives up."""
    deeper = requests._depth_exceeds(value, limit)
    for raw in (orjson.dumps(value), json.dumps(value, indent=1).encode()):
        assert requests._nests_deeper(raw, limit) == deeper, raw
    assert requests._depth_exceeds(value, limit, budget) in (deeper, None)


def _nesting(value: Any) -> int:
    """How deep objects and arrays nest, by plain recursion: the reference the fast check is held to."""
    if isinstance(value, dict):
        return 1 + max(map(_nesting, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_nesting, value), default=0)
    return 0


@FUZZ
@given(value=st.dictionaries(bracket_text, nested_values, max_size=3), limit=st.integers(1, 8))
def test_the_depth_walk_counts_the_objects_the_collector_does_not_track(value: Any, limit: int) -> None:
    """The walk reads a level's children through the garbage collector and keeps those it tracks; an object of
    strings and numbers only is untracked (built so, or untracked by a collection) and one level deeper than the
    rest. Parsed by orjson or built in Python, before and after a collection, it says what recursion says."""
    deeper = _nesting(value) > limit
    parsed = orjson.loads(orjson.dumps(value))
    assert requests._depth_exceeds(value, limit) is deeper and requests._depth_exceeds(parsed, limit) is deeper
    gc.collect(1)  # untracks the young objects of atomic values that were built tracked
    assert requests._depth_exceeds(value, limit) is deeper and requests._depth_exceeds(parsed, limit) is deeper


def test_an_untracked_object_at_the_limit_is_one_level_too_deep() -> None:
    leaf = orjson.loads(b'{"a": [{"b": {"c": 1}}]}')
    assert not gc.is_tracked(leaf["a"][0]["b"])  # what the check must still count
    assert [requests._depth_exceeds(leaf, limit) for limit in (2, 3, 4)] == [True, True, False]
    assert requests._depth_exceeds(orjson.loads(b'{"a": "b"}'), 1) is False
    assert requests._depth_exceeds(orjson.loads(b'{"a": {}}'), 1) is True
