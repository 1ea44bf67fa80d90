"""A read's lines relayed whole from a stream's template (`Template.relay_run`): it must change nothing.

Once a stream's template is known, a read whose `data:` lines all match it is relayed with a few C-level operations
over the read instead of `Template.relay` a line. Every test here relays the same upstream bytes, read the same way,
with the whole-read path and without it (`Template.relay_run` refusing every read: line by line, as before), and
requires the same client bytes, the same error, the same text count and the same final state; the recorded OpenAI
streams and synthetic ones are read whole, an event a read, two events a read and at random cuts. The synthetic ones
leave a run every way there is: escapes, empty texts, OpenAI's padding, a role chunk, tool calls, the finish, usage,
[DONE], an error event, non-ASCII and invalid UTF-8, control characters, spaced JSON.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_stream_relay import (
    ANTHROPIC,
    CLAUDE,
    RECORDED,
    chunk,
    claude_stream,
    event_ends,
    fixed_clock,  # noqa: F401 - a fixture, used by name
    messages_codec,
    padded,
    relay,
    stream,
)

from gateway import streaming
from gateway.endpoints import CompletionCodec
from gateway.template import Template
from providers import anthropic, openai
from providers.framing import SSEDecoder
from providers.types import ChatRequest, StreamState


def pairs(raw: bytes) -> list[int]:
    """Reads of two events each."""
    return event_ends(raw)[1::2]


READINGS: dict[str, Callable[[bytes], list[int]]] = {
    "whole": lambda raw: [],
    "per_event": event_ends,
    "two_a_read": pairs,
    "three_a_read": lambda raw: event_ends(raw)[2::3],
    "random": lambda raw: sorted(random.Random(len(raw)).sample(range(1, len(raw)), min(40, len(raw) - 1))),
}


def same_with_and_without_runs(monkeypatch: pytest.MonkeyPatch, raw: bytes, reads: list[int],
                               **kw: Any) -> tuple[int, int]:
    """Relay with runs, without them and without any template; returns the events parsed and the lines
    `Template.relay` looked at, with runs."""
    looked = 0
    one = Template.relay

    def counting(self: Template, line: bytes, out: list[bytes]) -> int | None:
        nonlocal looked
        looked += line != b"data: "  # (a read relayed whole, Claude's, is tried as an event of no data, and fails)
        return one(self, line, out)

    monkeypatch.setattr(Template, "relay", counting)
    fast = relay(raw, reads, True, **kw)
    fast_looked = looked
    with monkeypatch.context() as off:  # no runs: no read relayed whole, Claude's text deltas come one by one
        off.setattr(Template, "relay_run", lambda self, lines, named=False: None)
        off.setattr(streaming, "AnthropicStreamState", type(None))
        lines = relay(raw, reads, True, **kw)
        parsed = relay(raw, reads, False, **kw)
    assert fast[:4] == lines[:4]
    assert fast[:4] == parsed[:4]
    return fast[4], fast_looked


@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_recorded_streams(monkeypatch: pytest.MonkeyPatch, path: Path, reading: Callable[[bytes], list[int]]) -> None:
    raw = path.read_bytes()
    same_with_and_without_runs(monkeypatch, raw, reading(raw))


TEXTS = {
    "ascii": [" Hello", ",", " world", "!"] * 5,
    "escapes": [" a", " b", ' "quoted"', " c", " d", " back\\slash", " e", " line\nend", " f", " tab\there", " g"],
    "empty_texts": [" a", " b", "", " c", " d", "", "", " e", " f"],
    "non_ascii": [" café", " 日本語", " emoji 🎉", " a", " naïve", " ok", "\x7f", " \u2028"] * 3,
    "seam_like": [" a", ' "}}]}\n\ndata: {', " b", " c"],  # the bytes between two texts, escaped inside one
    "long": [" " + "w" * 5000, " short", " " + "é" * 3000, " end", " x"],
}


@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("texts", TEXTS.values(), ids=list(TEXTS))
def test_synthetic_streams(monkeypatch: pytest.MonkeyPatch, texts: list[str],
                           reading: Callable[[bytes], list[int]]) -> None:
    raw = stream(texts)
    same_with_and_without_runs(monkeypatch, raw, reading(raw))
    same_with_and_without_runs(monkeypatch, raw, reading(raw), wants_usage=False)
    same_with_and_without_runs(monkeypatch, raw, reading(raw), codec_type=messages_codec)
    spaced = stream(texts, spaced=True)
    same_with_and_without_runs(monkeypatch, spaced, reading(spaced))


def test_reads_of_matching_lines_take_no_python_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1,000-chunk stream looks at a line by itself only for the other chunks (the role chunk and the first
    text, which teach the template; the finish, usage, [DONE]), however many events a read holds: a read's run
    between them is relayed whole, as is the rest of the read the template was learnt in. One event a read:
    every line."""
    raw = stream([f" tok{i}" for i in range(1000)])
    for codec_type in (streaming.ChunkCodec, messages_codec):
        for reads in ([], pairs(raw), event_ends(raw)[9::10], event_ends(raw)[499::500]):
            parsed, looked = same_with_and_without_runs(monkeypatch, raw, reads, codec_type=codec_type)
            assert parsed <= 6
            assert looked <= 4
        assert same_with_and_without_runs(monkeypatch, raw, event_ends(raw), codec_type=codec_type)[1] >= 999


def test_tool_calls_usage_and_an_error_mid_read(monkeypatch: pytest.MonkeyPatch) -> None:
    call = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "f", "arguments": ""}}]}
    args = [{"tool_calls": [{"index": 0, "function": {"arguments": part}}]} for part in ('{"a"', ": 1", "}")]
    texts = [chunk(f" t{i}") for i in range(9)]
    raw = chunk(delta={"role": "assistant", "content": ""}) + b"".join(texts[:5])
    raw += b"".join(chunk(delta=d) for d in (call, *args)) + b"".join(texts[5:])
    raw += chunk(delta={}, finish="tool_calls") + chunk(choices=[], usage={"prompt_tokens": 1, "completion_tokens": 9,
                                                                             "total_tokens": 10}) + b"data: [DONE]\n\n"
    error = b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n'
    broken = chunk(delta={"role": "assistant", "content": ""}) + b"".join(texts[:6]) + error + b"".join(texts[6:])
    for reading in READINGS.values():
        same_with_and_without_runs(monkeypatch, raw, reading(raw))
        same_with_and_without_runs(monkeypatch, raw, reading(raw), codec_type=messages_codec)
        same_with_and_without_runs(monkeypatch, broken, reading(broken))
        assert relay(broken, reading(broken), True)[1] is not None


@pytest.mark.parametrize("bad", [b"\t", b"\x01", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"],
                         ids=["tab", "control", "bad_utf8", "cut_utf8", "surrogate"])
def test_unreadable_text_fails_where_parsing_fails(monkeypatch: pytest.MonkeyPatch, bad: bytes) -> None:
    good = b"".join(chunk(f" t{i}") for i in range(6))
    raw = chunk(delta={"role": "assistant", "content": ""}) + good + chunk(" BAD").replace(b"BAD", bad) + good
    for reading in READINGS.values():
        same_with_and_without_runs(monkeypatch, raw, reading(raw))
        assert relay(raw, reading(raw), True)[1] is not None


@pytest.mark.parametrize("first", [False, True], ids=["padding_last", "padding_first"])
def test_openais_padding(monkeypatch: pytest.MonkeyPatch, first: bool) -> None:
    """Padded chunks hold two strings, the text and the padding (kept for a chat client, dropped for an Anthropic
    one): the same bytes, and reads of them relayed whole."""
    rng = random.Random(3)
    pads = ["".join(rng.choice("abcXYZ0189") for _ in range(rng.randint(0, 12))) for _ in range(60)]
    pads[30] = 'a"b'  # one the upstream had to escape: that chunk is parsed
    raw = padded(None, "x", first, delta={"role": "assistant", "content": ""})
    raw += b"".join(padded(f" t{i}", pad, first) for i, pad in enumerate(pads))
    raw += padded(None, "q", first, delta={}, finish="stop") + b"data: [DONE]\n\n"
    for reading in READINGS.values():
        same_with_and_without_runs(monkeypatch, raw, reading(raw))
        same_with_and_without_runs(monkeypatch, raw, reading(raw), codec_type=messages_codec)
    for codec_type in (streaming.ChunkCodec, messages_codec):  # four events a read: padded runs are taken from 4
        parsed, looked = same_with_and_without_runs(monkeypatch, raw, event_ends(raw)[3::4], codec_type=codec_type)
        assert parsed <= 8 and looked <= 12  # the role, the first text, the escaped padding's read, the finish


def test_events_after_done_are_not_relayed_whole() -> None:
    """A read of matching lines after [DONE] relays nothing, as line by line."""
    raw = stream([" a", " b", " c"])
    late = b"".join(chunk(f" late{i}") for i in range(5))
    late_read_relays_nothing(streaming.ChunkCodec(openai, StreamState(public_model="gw/model"), "gen-42", True),
                             raw, late)


def late_read_relays_nothing(codec: streaming.ChunkCodec, raw: bytes, late: bytes) -> None:
    """After the stream `raw` (which ends it and teaches `codec` its template), the read `late` relays nothing:
    as the codec is (the end moved the state, which dropped the template), and with the template put back (the
    checks of `state.done` alone keep the late read out)."""
    decoder, relayed = SSEDecoder(), streaming.Relayed()
    learnt = None
    for event in raw.split(b"\n\n")[:-1]:  # an event a read, to catch the template between learning and the end
        streaming.relay_read(codec, decoder, event + b"\n\n", relayed)
        learnt = codec.template or learnt
    assert codec.state.done and codec.template is None and learnt is not None
    counted = relayed.text_bytes
    for template in (None, learnt):
        codec.template = template
        assert streaming.relay_read(codec, decoder, late, relayed) == (b"", None)
        assert relayed.text_bytes == counted


def template(make: Callable[[str], bytes] = chunk) -> Template:
    """The template of `make`'s content chunks as the chat codec learns it."""
    codec = streaming.ChunkCodec(openai, StreamState(public_model="m"), "gen-1", True)
    [event] = SSEDecoder().feed(make(" hi"))
    [parsed] = openai.parse_stream_event(StreamState(public_model="m"), event)
    parsed["id"] = "gen-1"
    learnt = Template.learn(event.data, parsed, " hi", codec.encode, openai.TEXT_AT)
    assert learnt is not None
    return learnt


def mutated_reads(rng: random.Random, good: list[bytes], specials: list[bytes], shortest: int) -> Any:
    """3,000 reads of `good` lines (at least `shortest`), some with bytes dropped, doubled or swapped in."""
    for _ in range(3000):
        lines = [rng.choice(good) for _ in range(rng.randint(shortest, shortest + 3))]
        for _ in range(rng.choice([0, 0, 1, 2])):
            i = rng.randrange(len(lines))
            line = lines[i]
            at, to = sorted(rng.randrange(len(line) + 1) for _ in range(2))
            lines[i] = line[:at] + rng.choice([b"", line[at:to], rng.choice(specials)]) + line[to:]
        if not any(b"\n" in line for line in lines):  # the decoder gives no such lines
            yield lines


def run_is_line_by_line(learnt: Template, lines: list[bytes], whole: tuple[bytes, int] | None) -> bool:
    """`whole`, the read relayed whole, is what `relay` makes of its lines one by one, or None when a line does not
    match; whether it was taken."""
    out: list[bytes] = []
    counts = [learnt.relay(line, out) for line in lines]
    if None in counts:
        assert whole is None, lines
        return False
    assert whole == (b"".join(out), sum(counts))  # type: ignore[arg-type]
    return True


LINES: dict[str, Callable[[str], bytes]] = {
    "text_alone": chunk,
    "padding_last": lambda t: padded(t, "p" * (len(t) % 3)),  # empty padding too
    "padding_first": lambda t: padded(t, "Zq9"[:len(t) % 4], True),
}


@pytest.mark.parametrize("make", LINES.values(), ids=list(LINES))
def test_relay_run_is_relay_line_by_line(make: Callable[[str], bytes]) -> None:
    """Reads of lines cut from template lines, mutated at random (bytes dropped, doubled, swapped in): whole,
    the same client bytes and count as line by line when every line matches, and None when any does not; the
    same for the lines as Claude's named events."""
    learnt = template(make)
    assert len(learnt.inner) == (make is not chunk) == len(learnt.out) - 2  # the padding is cut out, and kept
    rng = random.Random(11)
    good = [make(t)[:-2] for t in (" a", " bb", "x", " é", "\x7f", "  ccc")]
    specials = [b'"', b"\\", b"\n", b"\n\n", b"\x00", b"}", b"data: ", learnt.tail, learnt.head,
                learnt.tail + b"\n\n" + learnt.head, b"", *learnt.inner, *learnt.out]
    taken = 0
    for lines in mutated_reads(rng, good, specials, learnt.shortest):
        whole = learnt.relay_run(lines)
        taken += run_is_line_by_line(learnt, lines, whole)
        named = [b"event: content_block_delta\n" + line for line in lines]  # Claude's, as `find_run` gives them
        assert learnt.relay_run(named, True) == whole
        named[-1] = named[-1].replace(b"delta\n", b"delta_\n")  # another event's name
        assert learnt.relay_run(named, True) is None
    assert taken > 300
    texts = [" a", " b", " c", " d"][:learnt.shortest]
    assert learnt.relay_run([make(t)[:-2] for t in texts]) == \
        (b"".join(orjson.dumps(dict(orjson.loads(make(t)[6:]), id="gen-1", model="m")).join((b"data: ", b"\n\n"))
                  for t in texts), 2 * len(texts))
    assert learnt.relay_run([make(t)[:-2] for t in texts[1:]]) is None  # fewer lines: `relay` costs less


# -- Claude on a chat client: a read's run of text deltas (`providers.anthropic_runs`) relayed whole ----------

CLAUDE_TEXTS = {**TEXTS, "quote_free_brace": [" a", " }}", " b", " {", " c"]}


@pytest.mark.usefixtures("fixed_clock")
@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("path", ANTHROPIC, ids=[p.stem for p in ANTHROPIC])
def test_recorded_claude_streams(monkeypatch: pytest.MonkeyPatch, path: Path,
                                 reading: Callable[[bytes], list[int]]) -> None:
    raw = path.read_bytes()
    same_with_and_without_runs(monkeypatch, raw, reading(raw), kind="anthropic")


@pytest.mark.usefixtures("fixed_clock")
@pytest.mark.parametrize("tool_between", [False, True], ids=["one_block", "tool_between"])
@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("texts", CLAUDE_TEXTS.values(), ids=list(CLAUDE_TEXTS))
def test_synthetic_claude_streams(monkeypatch: pytest.MonkeyPatch, texts: list[str],
                                  reading: Callable[[bytes], list[int]], tool_between: bool) -> None:
    raw = claude_stream(texts, tool_between)
    same_with_and_without_runs(monkeypatch, raw, reading(raw), kind="anthropic")
    same_with_and_without_runs(monkeypatch, raw, reading(raw), kind="anthropic", wants_usage=False)
    same_with_and_without_runs(monkeypatch, raw, reading(raw), kind="anthropic", codec_type=CompletionCodec)


@pytest.mark.usefixtures("fixed_clock")
def test_claude_errors_and_events_after_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error event amid text deltas, bytes no JSON can hold in a text, and deltas after message_stop."""
    raw = claude_stream([f" t{i}" for i in range(12)])
    at = raw.index(b"event: content_block_delta", raw.index(b" t7"))
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    late = raw[raw.index(b"event: content_block_delta"):raw.index(b"event: content_block_stop")]
    for broken in (raw[:at] + error + raw[at:], raw.replace(b" t8", b" t\xff8"), raw.replace(b" t8", b" t\x018"),
                   raw + late):
        for reading in READINGS.values():
            same_with_and_without_runs(monkeypatch, broken, reading(broken), kind="anthropic")
    # a read of message_stop, then deltas: the run found before message_stop is fed relays nothing after it
    stop = raw.index(b"event: message_stop")
    same_with_and_without_runs(monkeypatch, raw + late, [at, stop], kind="anthropic")
    assert relay(raw + late, [at, stop], True, kind="anthropic")[0] == relay(raw, [at, stop], True, kind="anthropic")[0]


@pytest.mark.usefixtures("fixed_clock")
def test_a_long_claude_stream_relays_its_reads_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read two events at a time, a 1,000-delta answer's text deltas reach the template a line at a time only
    until it is learnt and where a read holds another event, and a read's deltas between other events are relayed
    whole; one event a read, or all of them in one read (the template learnt amid it), every delta by itself."""
    raw = claude_stream([f" tok{i}" for i in range(1000)])
    found = streaming.find_run
    taken = 0

    def finding(codec: Any, whole: bytes) -> Any:
        nonlocal taken
        run = found(codec, whole)
        taken += run is not None
        return run

    monkeypatch.setattr(streaming, "find_run", finding)
    parsed, looked = same_with_and_without_runs(monkeypatch, raw, pairs(raw), kind="anthropic")
    assert parsed <= 10 and looked <= 4 and taken >= 498
    # the template learnt in the first read; the second holds the rest, the block's stop and the message's end
    # after the deltas: those are fed one by one, the deltas relayed whole
    taken = 0
    parsed, looked = same_with_and_without_runs(monkeypatch, raw, event_ends(raw)[3:4], kind="anthropic")
    assert parsed <= 10 and looked <= 5 and taken == 1
    for reading in ([], event_ends(raw)):
        parsed, looked = same_with_and_without_runs(monkeypatch, raw, reading, kind="anthropic")
        assert parsed <= 10 and looked >= 999


@pytest.mark.usefixtures("fixed_clock")
@pytest.mark.parametrize("runs", [True, False], ids=["runs", "one_by_one"])
def test_claude_deltas_read_after_the_end(runs: bool) -> None:
    """A read of text deltas after message_stop (`pump` reads no more, a caller might): as one by one."""
    raw = claude_stream([f" t{i}" for i in range(4)])
    late = raw[raw.index(b"event: content_block_delta"):raw.index(b"event: content_block_stop")]
    state = anthropic.new_stream_state(ChatRequest(body={}, stream=True), CLAUDE)
    codec = streaming.ChunkCodec(anthropic, state, "gen-42", True)
    if not runs:
        codec.runs = None
    late_read_relays_nothing(codec, raw, late)
