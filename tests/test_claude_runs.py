"""The native Claude relay's runs of text deltas (`providers.anthropic_runs`): taken whole, they must change nothing.

A read of Claude's stream that holds consecutive text deltas of one block, each written as Claude writes them
with plain text (no escapes, no control characters, valid UTF-8), is relayed as its own bytes and counted in a
few C-level operations over the whole read, without an event or a Python call per delta. Every test here relays
the same upstream bytes, read the same way, with the runs and without them (`codec.runs = None`: every event
fed one by one, as before), and requires the same client bytes, the same error, the same text count for the bill
and the same final stream state. The streams are the recorded ones and synthetic ones built to leave a run every
way there is: escapes, quotes, control characters, invalid UTF-8, another block, thinking, a tool call, an error
event, a ping, a response_format answer, events after message_stop, spaced JSON, CRLF line ends.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from test_stream_relay import event_ends, relay_reads

from gateway.messages import NativeCodec
from providers import anthropic, anthropic_runs
from providers.anthropic_request import JSON_TOOL
from providers.framing import SSEDecoder
from providers.types import SSEEvent, StreamState, Target

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RECORDED = sorted((SHARED / "wire" / "anthropic").glob("*stream*.sse"))
CLAUDE = Target(provider="anthropic", base_url="https://api.anthropic.com", api_key="k",
                upstream_model="claude-haiku-4-5", public_model="anthropic/claude-haiku-4-5")


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The state records when its first chunk was made: runs compared whole must not fall either side of a second."""
    clock = SimpleNamespace(time=lambda: 1_700_000_000.0)
    monkeypatch.setattr(anthropic, "time", clock)
    monkeypatch.setattr(anthropic_runs, "time", clock)


def relay(raw: bytes, reads: list[int], runs: bool) -> tuple[bytes, str | None, int, StreamState, int]:
    """Client bytes, error, text bytes counted, final state, and the deltas looked at one by one
    (`delta_text_bytes` calls), for `raw` read in pieces that end at `reads`."""
    codec = NativeCodec(CLAUDE, "gen-7")
    if not runs:
        codec.runs = None
    looked = 0
    count = anthropic.delta_text_bytes

    def counting(state: StreamState, data: bytes) -> int | None:
        nonlocal looked
        looked += 1
        return count(state, data)

    original, anthropic.delta_text_bytes = anthropic.delta_text_bytes, counting
    try:
        out, error, text_bytes = relay_reads(codec, raw, reads)
    finally:
        anthropic.delta_text_bytes = original
    return out, error, text_bytes, codec.state, looked


def same_either_way(raw: bytes, reads: list[int]) -> int:
    """Relay with and without the runs; returns the deltas the run relay looked at one by one."""
    fast, slow = relay(raw, reads, True), relay(raw, reads, False)
    assert fast[:4] == slow[:4]
    return fast[4]


READINGS: dict[str, Callable[[bytes], list[int]]] = {
    "whole": lambda raw: [],
    "per_event": event_ends,
    "two_events": lambda raw: event_ends(raw)[1::2],
    "every_7": lambda raw: list(range(7, len(raw), 7)),
    "every_300": lambda raw: list(range(300, len(raw), 300)),
    "random": lambda raw: sorted(random.Random(len(raw)).sample(range(1, len(raw)), min(40, len(raw) - 1))),
}


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def delta(index: int, text: str, kind: str = "text_delta") -> bytes:
    field = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}[kind]
    return event("content_block_delta", {"index": index, "delta": {"type": kind, field: text}})


START = event("message_start", {"message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [], "stop_reason": None,
    "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}}})
END = (event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": 9}}) + event("message_stop", {}))


def block(index: int, texts: list[str], kind: str = "text") -> bytes:
    opened = {"text": {"type": "text", "text": ""}, "thinking": {"type": "thinking", "thinking": "", "signature": ""},
              "tool_use": {"type": "tool_use", "id": f"toolu_{index}", "name": "f", "input": {}},
              "answer": {"type": "tool_use", "id": "toolu_a", "name": JSON_TOOL, "input": {}}}[kind]
    deltas = {"text": "text_delta", "thinking": "thinking_delta"}.get(kind, "input_json_delta")
    return (event("content_block_start", {"index": index, "content_block": opened})
            + b"".join(delta(index, t, deltas) for t in texts) + event("content_block_stop", {"index": index}))


WORDS = [" Hello", ",", " world", "!", " tok", " more"] * 4
STREAMS = {
    "plain": START + event("ping", {}) + block(0, WORDS) + END,
    "empty_texts": START + block(0, [" a", "", " b", "", ""]) + END,
    "escapes": START + block(0, [" a", ' "q"', " b", " back\\slash", " c", " line\nend", " d", " tab\t", " e"]) + END,
    "non_ascii": START + block(0, [" café", " 日本語", " 🎉", " a", "\u2028", " naïve"] * 3) + END,
    "invalid_utf8": START + block(0, [" a", " b"]) .replace(b'" b"', b'" \xff"') + END,
    "control_char": START + block(0, [" a", " b", " c"]).replace(b'" b"', b'" \x01"') + END,
    "raw_line_end": START + block(0, [" a", " b", " c"]).replace(b'" b"', b'" b\nc"') + END,
    "leading_zero_index": START + block(0, [" a", " b", " c"]).replace(b'"index":0,"delta"', b'"index":00,"delta"')
    + END,
    "spaced": START + block(0, WORDS).replace(b'"text":', b'"text": ') + END,
    "thinking_then_text": START + block(0, ["hm", " so", "\nthen"], "thinking") + block(1, WORDS) + END,
    "tool_between": START + block(0, WORDS[:7]) + block(1, ["", '{"a":', " 1}"], "tool_use") + block(2, WORDS) + END,
    "plain_tool_args": START + block(0, [" a"]) + block(1, ["", "{", "}"], "tool_use") + END,
    "ping_inside": START + block(0, WORDS).replace(b"\n\nevent: content_block_delta", b"\n\n" + event("ping", {})
                                                   + b"event: content_block_delta", 1) + END,
    "interleaved": START + event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    + event("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}})
    + b"".join(delta(i % 2, f" t{i}") for i in range(12)) + END,
    "error_inside": START + block(0, WORDS[:6]) + event("error", {"error": {"type": "overloaded_error",
                                                                            "message": "Overloaded"}}) + END,
    "answer_block": START + block(0, ["{", '"a"', ": 1}"], "answer") + block(1, WORDS[:4]) + END,
    "after_stop": START + block(0, WORDS[:4]) + END + delta(0, " late") + delta(0, " later"),
    "bad_json_tail": START + block(0, [" a", " b"]) + b'event: content_block_delta\ndata: {"type":"content_block_'
    b'delta","index":0,"delta":{"type":"text_delta","text":" c"}}}\n\n' + END,
    "multi_line_data": START + block(0, [" a", " b", " c"]).replace(b'"text":" b"}}', b'"text":" b"}}\ndata: ')
    + END,
    "id_lines": START + block(0, [" a", " b", " c"]).replace(b"event: content_block_delta\n",
                                                               b"id: 4\nevent: content_block_delta\n", 2) + END,
}


@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_recorded_claude_streams_relay_identically(path: Path, reading: Callable[[bytes], list[int]]) -> None:
    raw = path.read_bytes()
    same_either_way(raw, reading(raw))
    crlf = raw.replace(b"\n", b"\r\n")
    same_either_way(crlf, reading(crlf))


@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("raw", STREAMS.values(), ids=list(STREAMS))
def test_synthetic_claude_streams_relay_identically(raw: bytes, reading: Callable[[bytes], list[int]]) -> None:
    same_either_way(raw, reading(raw))
    crlf = raw.replace(b"\n", b"\r\n")
    same_either_way(crlf, reading(crlf))


@pytest.mark.parametrize("seed", range(60))
def test_random_mixes_relay_identically(seed: int) -> None:
    """Blocks of every kind, texts of every sort, cut anywhere."""
    rng = random.Random(seed)
    texts = [" a", " bb", "", ' "q"', " \\", " é", " 日本", "\n", " \t", " ccc", " d"]
    raw = START + (event("ping", {}) if rng.random() < 0.5 else b"")
    for index in range(rng.randint(1, 4)):
        kind = rng.choice(["text", "text", "text", "thinking", "tool_use"])
        pool = texts[:-4] if kind == "tool_use" else texts
        raw += block(index, [rng.choice(pool) for _ in range(rng.randint(0, 30))], kind)
    raw += END if rng.random() < 0.9 else event("error", {"error": {"type": "api_error", "message": "x"}})
    if rng.random() < 0.3:
        raw = raw.replace(b"\n", b"\r\n")
    for reads in (sorted(rng.sample(range(1, len(raw)), rng.randint(1, 30))), event_ends(raw)[::rng.randint(1, 9)]):
        same_either_way(raw, reads)


def test_a_long_stream_looks_at_no_delta_one_by_one() -> None:
    """The benchmark's 1,000-delta stream: read in pieces of several events, no delta is looked at by itself; a
    read of one event is fed by itself (`delta_text_bytes`), which costs less than looking for a run in it."""
    raw = START + event("ping", {}) + block(0, [f" tok{i}" for i in range(1000)]) + END
    assert same_either_way(raw, []) == 0
    assert same_either_way(raw, list(range(4096, len(raw), 4096))) <= 2 * len(raw) // 4096  # a delta cut in two
    assert same_either_way(raw, event_ends(raw)[1::2]) == 0  # two events a read
    assert same_either_way(raw, event_ends(raw)) == 1000  # one event a read
    assert relay(raw, [], False)[4] == 1000
    assert relay(raw, [], True)[2] == sum(len(f" tok{i}") for i in range(1000))


def test_a_run_is_found_only_where_it_is_whole_and_plain() -> None:
    def whole(*events: bytes) -> bytes:
        return b"".join(events)[:-2]

    run = [delta(0, " a"), delta(0, ""), delta(0, " é")]
    found = anthropic_runs.find(whole(START, *run, event("content_block_stop", {"index": 0})))
    assert found is not None
    start, end, taken = found
    text = whole(START, *run, event("content_block_stop", {"index": 0}))
    assert text[start:end] == taken.data == whole(*run)
    assert isinstance(taken, anthropic_runs.TextRun) and taken.text_bytes == len(" a é".encode())
    assert taken.events() == [SSEEvent(d[len(b"event: content_block_delta\ndata: "):-2], "content_block_delta")
                              for d in run]
    assert anthropic_runs.find(whole(delta(3, " x"))) is not None
    two_blocks = whole(delta(0, " a"), delta(0, " b"), delta(1, " c"))  # the first block's run, the second's event
    first = whole(delta(0, " a"), delta(0, " b"))
    assert anthropic_runs.find(two_blocks) == (0, len(first), anthropic_runs.TextRun(first, anthropic_runs.NAME, "", 4))
    for refused in [whole(delta(0, " a"), delta(0, ' "')), whole(delta(0, " a"), delta(0, "\\")),
                    whole(delta(0, " a"), delta(0, "\x7f\x1f")), whole(delta(0, " a"), delta(1, " b"), delta(0, " c")),
                    whole(delta(0, " a"), event("ping", {}), delta(0, " b")),
                    whole(delta(0, " a"), delta(0, " b")).replace(b" b", b" \xe9"),
                    whole(delta(0, " a"), delta(0, " b")).replace(b" b", b" b\nc"),
                    whole(delta(0, " a")).replace(b'"index":0', b'"index":01'),
                    whole(delta(0, "x", "thinking_delta")), whole(delta(0, "x", "input_json_delta")),
                    whole(START),
                    # a text that never closes (its quote the end's), then one with a bare quote: the quotes add up
                    whole(delta(0, "x"), delta(0, "a")).replace(b'"text":"x"}}', b'"text":"}}', 1)
                    .replace(b'"text":"a"}}', b'"text":"a"b"}}', 1)]:
        assert anthropic_runs.find(refused) is None, refused
    # a text that starts like the end, `}}`, is plain text (taken by itself where it stands alone)
    assert same_either_way(START + block(0, [" a", "}} b", " c"]) + END, []) == 3


def test_a_run_after_the_stream_ended_or_in_an_answer_is_not_taken() -> None:
    run = anthropic_runs.find(delta(0, " a")[:-2])
    assert run is not None
    state = anthropic.AnthropicStreamState(public_model="m")
    assert anthropic_runs.take(state, run[2]) and state.created == 1_700_000_000
    state = anthropic.AnthropicStreamState(public_model="m", done=True)
    assert not anthropic_runs.take(state, run[2]) and state.created == 0
    state = anthropic.AnthropicStreamState(public_model="m", answer_block=0)
    assert not anthropic_runs.take(state, run[2]) and state.created == 0
    empty = anthropic_runs.find(delta(0, "")[:-2])
    assert empty is not None
    state = anthropic.AnthropicStreamState(public_model="m")
    assert anthropic_runs.take(state, empty[2]) and state.created == 0  # no chunk would have been made


@pytest.mark.parametrize("seed", range(40))
def test_the_decoder_gives_the_same_events_with_runs_expanded(seed: int) -> None:
    rng = random.Random(seed)
    raw = START + block(0, [rng.choice([" a", " é", "", ' "', "\n"]) for _ in range(40)]) + END
    cuts = sorted(rng.sample(range(1, len(raw)), 12))
    plain, with_runs = SSEDecoder(), SSEDecoder()
    got: list[SSEEvent] = []
    want: list[SSEEvent] = []
    for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        want += plain.feed(raw[a:b])
        lines = with_runs.feed_run(raw[a:b])  # as `streaming.relay_read` reads: never one of Claude's
        assert lines is None or not lines
        for e in with_runs.feed_rest(raw[a:b], anthropic_runs.find) if lines is None else []:
            got += e.events() if isinstance(e, anthropic_runs.TextRun) else [e]
    assert got == want


def test_a_run_stays_within_the_event_size_limit() -> None:
    """A read's whole events longer than the decoder's limit are decoded one by one, each held to the limit."""
    few, many = b"".join(delta(0, f" t{i}") for i in range(3)), b"".join(delta(0, f" t{i}") for i in range(20))
    assert len(few) < 1024 < len(many)
    taken = SSEDecoder(max_event_bytes=1024).feed_rest(few, anthropic_runs.find)
    assert [type(e) for e in taken] == [anthropic_runs.TextRun]
    taken = SSEDecoder(max_event_bytes=1024).feed_rest(many, anthropic_runs.find)
    assert [type(e) for e in taken] == [SSEEvent] * 20
