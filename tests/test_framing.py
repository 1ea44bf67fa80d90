"""providers.framing: SSE and NDJSON decoding under every chunking, on recorded upstream bytes."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from providers.framing import NDJSONDecoder, SSEDecoder
from providers.types import ProviderError, SSEEvent

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OPENAI_STREAMS = sorted((SHARED / "wire" / "openai").glob("sdk-stream-*.sse"))
OLLAMA_NDJSON = sorted((SHARED / "wire" / "ollama").glob("*.ndjson"))


def whole(raw: bytes) -> list[bytes]:
    return [raw]


def every(n: int) -> Callable[[bytes], list[bytes]]:
    def split(raw: bytes) -> list[bytes]:
        return [raw[i:i + n] for i in range(0, len(raw), n)]
    split.__name__ = f"every_{n}"
    return split


def at_line_ends(raw: bytes) -> list[bytes]:
    """Cut right before and right after every CR and LF, so CRLF pairs are split too."""
    return [part for part in re.split(rb"([\r\n])", raw) if part]


CHUNKINGS = [whole, every(1), every(7), every(4096), at_line_ends]
LINE_ENDS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def decode(decoder: SSEDecoder, chunks: list[bytes]) -> list[SSEEvent]:
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def naive_sse_data(raw: bytes) -> list[bytes]:
    """The recordings are plain `data: X\\n\\n` events: split them without the code under test."""
    blocks = [block for block in raw.split(b"\n\n") if block.strip()]
    assert all(block.startswith(b"data: ") and b"\n" not in block for block in blocks)
    return [block[len(b"data: "):] for block in blocks]


@pytest.mark.parametrize("path", OPENAI_STREAMS, ids=[p.stem for p in OPENAI_STREAMS])
@pytest.mark.parametrize("line_end", LINE_ENDS.values(), ids=list(LINE_ENDS))
@pytest.mark.parametrize("chunking", CHUNKINGS, ids=lambda f: f.__name__)
def test_recorded_openai_streams_decode_identically(
    path: Path, line_end: bytes, chunking: Callable[[bytes], list[bytes]]
) -> None:
    raw = path.read_bytes()
    expected = [SSEEvent(data=data) for data in naive_sse_data(raw)]
    assert expected[-1].data == b"[DONE]"
    events = decode(SSEDecoder(), chunking(raw.replace(b"\n", line_end)))
    assert events == expected


SSE_CASES = {
    "crlf_split_across_chunks": ([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"], [SSEEvent(b"a\nb")]),
    "cr_then_cr_is_two_line_ends": ([b"data: a\r", b"\r"], [SSEEvent(b"a")]),
    "lone_cr_then_data": ([b"data: a\r", b"\rdata: b\r\r"], [SSEEvent(b"a"), SSEEvent(b"b")]),
    "multi_line_data_joined_with_lf": ([b"data: {\ndata:  x\ndata:y\n\n"], [SSEEvent(b"{\n x\ny")]),
    "only_one_space_stripped": ([b"data:   two\n\n"], [SSEEvent(b"  two")]),
    "empty_data_line_dispatches": ([b"data:\n\n"], [SSEEvent(b"")]),
    "field_without_colon": ([b"data\n\n"], [SSEEvent(b"")]),
    "comments_ignored": ([b": OPENROUTER PROCESSING\n\n:ping\ndata: x\n\n"], [SSEEvent(b"x")]),
    "no_data_not_dispatched": ([b"event: ping\n\nid: 3\n\n"], []),
    "event_name_reset_after_dispatch": (
        [b"event: message_start\ndata: 1\n\ndata: 2\n\n"],
        [SSEEvent(b"1", event="message_start"), SSEEvent(b"2")],
    ),
    "id_kept_for_later_events": (
        [b"id: 7\ndata: 1\n\ndata: 2\n\n"], [SSEEvent(b"1", id="7"), SSEEvent(b"2", id="7")]),
    "id_with_nul_ignored": ([b"id: a\0b\ndata: 1\n\n"], [SSEEvent(b"1")]),
    "unknown_and_retry_fields_ignored": ([b"retry: 10\nfoo: bar\ndata: 1\n\n"], [SSEEvent(b"1")]),
    "bom_skipped": ([b"\xef\xbb\xbfdata: 1\n\n"], [SSEEvent(b"1")]),
    "unterminated_event_not_dispatched": ([b"data: 1\n\ndata: 2\n"], [SSEEvent(b"1")]),
    "empty_chunks": ([b"", b"data: 1\n", b"", b"\n"], [SSEEvent(b"1")]),
    "colon_in_value": ([b'data: {"a":"b: c"}\n\n'], [SSEEvent(b'{"a":"b: c"}')]),
}


@pytest.mark.parametrize(("chunks", "expected"), SSE_CASES.values(), ids=list(SSE_CASES))
def test_sse_rules(chunks: list[bytes], expected: list[SSEEvent]) -> None:
    assert decode(SSEDecoder(), chunks) == expected
    assert decode(SSEDecoder(), every(1)(b"".join(chunks))) == expected


def test_flush_dispatches_pending_event_without_final_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n\ndata: [DONE]") == [SSEEvent(b"1")]
    assert decoder.flush() == [SSEEvent(b"[DONE]")]
    assert decoder.flush() == []


GIANT = b"x" * (1024 * 1024)


GEMINI_ERROR_TAIL = (SHARED / "wire" / "gemini" / "vertexai" / "streaming-failure-error-mid-stream.txt").read_bytes()


@pytest.mark.parametrize("chunking", CHUNKINGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("line_end", list(LINE_ENDS), ids=list(LINE_ENDS))
def test_a_bare_json_error_after_the_events_is_the_last_event(chunking: Callable[[bytes], list[bytes]],
                                                              line_end: str) -> None:
    """Gemini's stream as recorded failing mid-answer: its events, then the error body without SSE framing, which
    the decoder ignored (no `data:` field). `flush` hands it over as one last event, whatever the chunking."""
    raw = GEMINI_ERROR_TAIL.replace(b"\n", LINE_ENDS[line_end])
    decoder = SSEDecoder()
    events = [event for chunk in chunking(raw) for event in decoder.feed(chunk)] + decoder.flush()
    assert len(events) == 3 and events[0].data.startswith(b'{"candidates"')
    assert events[2].data == (
        b'{"error":{"code":499,"message":"The operation was cancelled.","status":"CANCELLED","details":'
        b'[{"@type":"type.googleapis.com/google.rpc.DebugInfo","detail":"[ORIGINAL ERROR] generic::cancelled: "}]}}')


@pytest.mark.parametrize("tail", [b"retry: 10\n", b"garbage\n", b'{"choices": []}\n', b'{"error": \n'],
                         ids=["retry", "text", "json-not-an-error", "cut-json"])
def test_other_unframed_lines_stay_ignored(tail: bytes) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n\n" + tail) == [SSEEvent(b"1", "", "")]
    assert decoder.flush() == []


def test_unframed_lines_before_an_event_are_forgotten() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'{"error": {"code": 500}}\n\ndata: 1\n\n') == [SSEEvent(b"1", "", "")]
    assert decoder.flush() == []


@pytest.mark.parametrize("chunking", [whole, every(65536), every(1000)], ids=lambda f: f.__name__)
def test_one_mebibyte_data_line_passes(chunking: Callable[[bytes], list[bytes]]) -> None:
    raw = b'data: {"c":"' + GIANT + b'"}\r\n\r\ndata: [DONE]\r\n\r\n'
    started = time.perf_counter()
    events = decode(SSEDecoder(), chunking(raw))
    assert time.perf_counter() - started < 2.0
    assert [len(e.data) for e in events] == [len(GIANT) + 8, 6]
    assert events[0].data == b'{"c":"' + GIANT + b'"}'


LIMIT_CASES = {
    "single_line_whole": [b"data: " + b"x" * 2000 + b"\n\n"],
    "single_line_unterminated": [b"data: " + b"x" * 2000],
    "single_line_in_pieces": every(100)(b"data: " + b"x" * 2000),
    "many_lines_one_event": [b"data: " + b"x" * 300 + b"\n"] * 8,
}


@pytest.mark.parametrize("chunks", LIMIT_CASES.values(), ids=list(LIMIT_CASES))
def test_max_event_bytes_raises(chunks: list[bytes]) -> None:
    decoder = SSEDecoder(max_event_bytes=1024)
    with pytest.raises(ProviderError, match="exceeds 1024 bytes"):
        decode(decoder, chunks)


def test_max_event_bytes_counts_per_event() -> None:
    decoder = SSEDecoder(max_event_bytes=1024)
    events = decode(decoder, [b"data: " + b"x" * 900 + b"\n\n"] * 5)
    assert len(events) == 5


class LinesOnly(SSEDecoder):
    """The decoder without its whole-events shortcut: every byte through the line machinery."""

    def feed(self, data: bytes) -> list[SSEEvent]:
        return self._feed(data)


SIMPLE = [b"data: a\n\n", b'data: {"x":1}\n\n', b"data: \n\n", b"data:  c\n\n", b"data: [DONE]\n\n"]
OTHER = [b"data:b\n\n", b": ping\n\n", b"event: e\n", b"id: 4\n", b"data: m\ndata: n\n\n", b"data: r\r\n\r\n", b"\n",
         b"data: half"]


@pytest.mark.parametrize("seed", range(300))
def test_whole_event_reads_decode_as_the_line_machinery_does(seed: int) -> None:
    """Reads of one-line events skip the line splitter, a read that ends inside an event too; everything
    else (a named or multi-line event, comments, CRs, a pending id) must come out exactly as the general
    path decodes it, whichever way the reads fall."""
    rng = random.Random(seed)
    chunks = []
    for _ in range(rng.randint(1, 10)):  # reads of a few events each, now and then something else
        read = b"".join(rng.choice(SIMPLE if rng.random() < 0.8 else OTHER) for _ in range(rng.randint(1, 4)))
        cut = rng.randint(1, len(read)) if rng.random() < 0.4 else len(read)
        chunks += [read[:cut], read[cut:]]
    decoder, reference = SSEDecoder(), LinesOnly()
    assert decode(decoder, chunks) == decode(reference, chunks)
    assert decoder.flush() == reference.flush()


NAMED = [b'event: message_start\ndata: {"type":"message_start"}\n\n', b"event: ping\ndata: {}\n\n",
         b"event: content_block_delta\ndata: \n\n", b"event: e\ndata:  two spaces\n\n", b"event: \xff\ndata: x\n\n"]
NAMED_OTHER = [b"event:e\ndata: x\n\n", b"event: e\ndata: a\ndata: b\n\n", b"event: e\nid: 9\ndata: x\n\n",
               b"event: e\n\n", b"event: e\ndata:x\n\n", b"event: e\r\ndata: x\r\n\r\n", b": ping\n\n", b"junk\n",
               b"event: e\n: comment\ndata: x\n\n", b"data: unnamed\n\n", b"\n"]


@pytest.mark.parametrize("seed", range(300))
def test_named_event_reads_decode_as_the_line_machinery_does(seed: int) -> None:
    """Reads of named events (Anthropic's `event: ` and `data: ` line each) skip the line splitter too; with
    anything else among them, cut anywhere, the events, names and ids come out as the general path's."""
    rng = random.Random(seed)
    chunks = []
    for _ in range(rng.randint(1, 10)):
        read = b"".join(rng.choice(NAMED if rng.random() < 0.8 else NAMED_OTHER + SIMPLE)
                        for _ in range(rng.randint(1, 4)))
        cut = rng.randint(1, len(read)) if rng.random() < 0.4 else len(read)
        chunks += [read[:cut], read[cut:]]
    decoder, reference = SSEDecoder(), LinesOnly()
    assert decode(decoder, chunks) == decode(reference, chunks)
    assert decoder.flush() == reference.flush()


class Counting(SSEDecoder):
    """The decoder, counting the bytes its line machinery is given."""

    general = 0

    def _feed(self, data: bytes) -> list[SSEEvent]:
        self.general += len(data)
        return super()._feed(data)


def test_a_claude_stream_read_by_whole_events_never_reaches_the_line_machinery() -> None:
    raw = (SHARED / "wire" / "anthropic" / "sdk-stream-basic.sse").read_bytes()
    events = [e + b"\n\n" for e in raw.strip().split(b"\n\n")]
    decoder = Counting()
    got = decode(decoder, events) + decoder.flush()
    assert [e.event for e in got][:2] == ["message_start", "content_block_start"] and got[-1].event == "message_stop"
    assert got == decode(LinesOnly(), events)
    assert b"event: ping\ndata: {\"type\": \"ping\"}\n\n" in events  # a recording as Claude writes it
    assert decoder.general == 0


@pytest.mark.parametrize("seed", range(200))
def test_crlf_event_reads_decode_as_the_line_machinery_does(seed: int) -> None:
    """Gemini ends its lines with CRLF: such reads take the shortcuts too, but not a lone CR, nor a read that
    ends between the CR and the LF of a pair."""
    rng = random.Random(seed)
    crlf = [e.replace(b"\n", b"\r\n") for e in SIMPLE + NAMED]
    chunks = []
    for _ in range(rng.randint(1, 10)):
        read = b"".join(rng.choice(crlf if rng.random() < 0.8 else SIMPLE + OTHER + NAMED_OTHER + [b"data: x\r\r"])
                        for _ in range(rng.randint(1, 4)))
        cut = rng.randint(1, len(read)) if rng.random() < 0.5 else len(read)
        chunks += [read[:cut], read[cut:]]
    decoder, reference = SSEDecoder(), LinesOnly()
    assert decode(decoder, chunks) == decode(reference, chunks)
    assert decoder.flush() == reference.flush()


def test_a_gemini_stream_read_by_whole_events_never_reaches_the_line_machinery() -> None:
    raw = (SHARED / "wire" / "gemini" / "googleai" / "streaming-success-basic-reply-long.txt").read_bytes()
    assert b"\r\n\r\n" in raw
    events = [e + b"\r\n\r\n" for e in raw.strip().split(b"\r\n\r\n")]
    decoder = Counting()
    got = decode(decoder, events) + decoder.flush()
    assert len(got) == len(events) > 2 and got == decode(LinesOnly(), events)
    assert decoder.general == 0


def test_whole_event_reads_keep_the_size_limit() -> None:
    at_limit = b"data: " + b"x" * 1023 + b"\n\n"  # the value and its line end: 1,024 bytes
    assert len(decode(SSEDecoder(max_event_bytes=1024), [at_limit, at_limit])) == 2
    with pytest.raises(ProviderError, match="exceeds 1024 bytes"):
        decode(SSEDecoder(max_event_bytes=1024), [at_limit, b"data: " + b"x" * 1024 + b"\n\n"])
    named = b"event: e\n" + at_limit
    assert len(decode(SSEDecoder(max_event_bytes=1024), [named, named])) == 2
    with pytest.raises(ProviderError, match="exceeds 1024 bytes"):
        decode(SSEDecoder(max_event_bytes=1024), [named, b"event: e\ndata: " + b"x" * 1024 + b"\n\n"])


def naive_ndjson(raw: bytes) -> list[bytes]:
    return [line for line in raw.split(b"\n") if line.strip()]


@pytest.mark.parametrize("path", OLLAMA_NDJSON, ids=[p.stem for p in OLLAMA_NDJSON])
@pytest.mark.parametrize("line_end", LINE_ENDS.values(), ids=list(LINE_ENDS))
@pytest.mark.parametrize("chunking", CHUNKINGS, ids=lambda f: f.__name__)
def test_recorded_ollama_ndjson(
    path: Path, line_end: bytes, chunking: Callable[[bytes], list[bytes]]
) -> None:
    raw = path.read_bytes()
    expected = naive_ndjson(raw)
    assert len(expected) >= 2
    decoder = NDJSONDecoder()
    lines = [line for chunk in chunking(raw.replace(b"\n", line_end)) for line in decoder.feed(chunk)]
    assert lines == expected


NDJSON_CASES = {
    "blank_lines_skipped": ([b'{"a":1}\n\n  \n{"b":2}\n'], [b'{"a":1}', b'{"b":2}']),
    "crlf_split": ([b'{"a":1}\r', b'\n{"b":2}\r\n'], [b'{"a":1}', b'{"b":2}']),
    "unterminated_kept_until_flush": ([b'{"a":1}\n{"b"', b":2}"], [b'{"a":1}']),
}


@pytest.mark.parametrize(("chunks", "expected"), NDJSON_CASES.values(), ids=list(NDJSON_CASES))
def test_ndjson_rules(chunks: list[bytes], expected: list[bytes]) -> None:
    decoder = NDJSONDecoder()
    assert [line for chunk in chunks for line in decoder.feed(chunk)] == expected


def test_ndjson_flush_and_limit() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":1}\n{"b":2}') == [b'{"a":1}']
    assert decoder.flush() == [b'{"b":2}']
    with pytest.raises(ProviderError):
        NDJSONDecoder(max_line_bytes=10).feed(b"x" * 11)


@pytest.mark.parametrize("chunking", CHUNKINGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("line_end", list(LINE_ENDS), ids=list(LINE_ENDS))
def test_an_error_field_is_an_error_event(chunking: Callable[[bytes], list[bytes]], line_end: str) -> None:
    """llama.cpp's server writes a stream's failure as an `error:` field, which the spec ignores: the failure
    vanished and the [DONE] after it ended the stream as if answered. It is an event of data `{"error": ...}`
    (its text as the message when it is no JSON), whatever the chunking."""
    raw = (b'data: {"choices":[]}\n\nerror: {"code":500,"message":"boom","type":"server_error"}\n\n'
           b"error: not json\n\ndata: [DONE]\n\n").replace(b"\n", LINE_ENDS[line_end])
    decoder = SSEDecoder()
    events = [event for chunk in chunking(raw) for event in decoder.feed(chunk)] + decoder.flush()
    assert [event.data for event in events] == [
        b'{"choices":[]}', b'{"error":{"code":500,"message":"boom","type":"server_error"}}',
        b'{"error":{"message":"not json"}}', b"[DONE]"]
