"""Incremental stream decoders: raw upstream bytes -> SSE events or NDJSON lines.

Both decoders accept arbitrary chunkings of the byte stream (a line, an event, or even a CRLF pair may be
split across two `feed` calls) and never loop over single bytes: new bytes are normalised to LF with
`bytes.replace` and cut with `split`, and only the unterminated tail is kept between calls.

Unlike aiohttp's `StreamReader.readline` (which fails at 128 KiB) there is no line-length limit of its own;
the only bound is `max_event_bytes` / `max_line_bytes`, past which `ProviderError` is raised so a broken or
hostile upstream cannot make the gateway buffer without end.

SSE follows the WHATWG "event stream interpretation" rules: lines end in LF, CRLF or CR; a leading UTF-8
BOM is skipped; `data:` values (one leading space stripped) are joined with LF; `event:` names the event;
`id:` sets the last event id (kept for later events, as the spec says; ignored when it contains NUL);
`retry:` and unknown fields are ignored; lines starting with ':' are comments; a blank line dispatches the
event unless no `data:` line was seen. Two exceptions, both errors a server wrote outside the format: a stream
that ends in a bare JSON error object instead of an event (Gemini's `streamGenerateContent?alt=sse` failing
mid-answer writes the error body unframed) gets it from `flush` as its last event, and an `error:` field
(llama.cpp's `llama-server` writes a stream's failure as `error: {"code", "message", "type"}`, then
`data: [DONE]`) is an event of data `{"error": ...}`; the adapter raises either as it raises an error event.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from providers.types import ProviderError, SSEEvent

DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024
MAX_STRAY_BYTES = 64 * 1024  # unframed lines kept after the last event: an error body, not an answer
_BOM = b"\xef\xbb\xbf"
# A relay's finder of a span of named events it takes whole (`SSEDecoder.feed_named`)
RunFinder = Callable[[bytes], "tuple[int, int, SSEEvent] | None"]


class _LineSplitter:
    """Bytes in, complete lines out (without their line end); CR, LF and CRLF all end a line."""

    __slots__ = ("_head", "_limit", "_rest", "_skip_lf")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._rest = bytearray()
        self._skip_lf = False  # the previous chunk ended in CR: a LF first in the next one belongs to it
        self._head: bytes | None = b""  # stream start while it may still be a (split) BOM; None once decided

    def unread(self, data: bytes) -> bytes | None:
        """`data` after the unterminated line, without a stream-opening BOM: what the splitter would cut
        next, for another reader to take over (then `clear`). None while it must decide itself (a CR
        whose LF may follow, a BOM not yet whole)."""
        if self._skip_lf:
            return None
        if self._head is not None:
            data = self._head + data
            if len(data) < len(_BOM) and _BOM.startswith(data):
                return None
            return data[len(_BOM):] if data.startswith(_BOM) else data
        return bytes(self._rest) + data if self._rest else data

    def clear(self) -> None:
        """Forget what `unread` handed over."""
        self._head = None
        if self._rest:
            self._rest = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of the current, not yet terminated line."""
        return len(self._rest)

    def feed(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        if self._head is not None:
            data = self._head + data
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self._head = data
                return []
            self._head = None
            if data.startswith(_BOM):
                data = data[len(_BOM):]
        if self._skip_lf and data[:1] == b"\n":
            data = data[1:]
        self._skip_lf = data.endswith(b"\r")
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = data.rfind(b"\n")
        if end < 0:
            self._rest += data
            if len(self._rest) > self._limit:
                raise ProviderError(f"upstream stream line exceeds {self._limit} bytes")
            return []
        head = data[:end]
        if self._rest:
            head = bytes(self._rest) + head
        self._rest = bytearray(data[end + 1:])
        if len(self._rest) > self._limit:
            raise ProviderError(f"upstream stream line exceeds {self._limit} bytes")
        return head.split(b"\n")


class SSEDecoder:
    """Incremental `text/event-stream` decoder: `feed(bytes) -> list[SSEEvent]`."""

    __slots__ = ("_data", "_event", "_id", "_lines", "_max", "_size", "_stray", "_tail")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._lines = _LineSplitter(max_event_bytes)
        self._data: list[bytes] = []
        self._size = 0  # bytes of data lines in the current event
        self._event = ""
        self._id = ""
        self._tail = b""  # the shortcut's unfinished event, raw; the line machinery holds nothing meanwhile
        self._stray = bytearray()  # lines of no SSE field since the last event: maybe an unframed error body

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Decode the next chunk of the stream; returns the events it completed, in order."""
        run = self.feed_run(data)
        if run is not None:
            return [self.event(line) for line in run]
        return self.feed_rest(data)

    def feed_rest(self, data: bytes, runs: RunFinder | None = None) -> list[SSEEvent]:
        """`feed` for a read `feed_run` just refused (it consumed nothing): named events by `feed_named` (`runs`
        as it takes them), anything else by the line machinery. A relay that tried `feed_run` itself need not
        have it tried twice."""
        named = self.feed_named(data, runs)
        if named is not None:
            return named
        if self._tail:  # the start of an event a shortcut kept: the line machinery takes it over
            data, self._tail = self._tail + data, b""
        return self._feed(data)

    def feed_run(self, data: bytes) -> list[bytes] | None:
        """The common read, taken without the line machinery: starting at an event, whole events of one
        `data: ` line each (as OpenAI-compatible servers write them), then maybe the start of the next,
        kept raw for the next read. Returns the `data: ...` lines of those events (`event` makes one an
        event), or None, consuming nothing, for anything else (comments, named or multi-line events, lone
        CRs), which `feed` decodes with `feed_named` or the line machinery."""
        taken = self._whole_events(data, b"data: ")
        if taken is None:
            return None
        whole, rest = taken
        lines: list[bytes] = []
        if whole:
            lines = whole.split(b"\n\n")
            if whole.count(b"\n") != 2 * (len(lines) - 1):
                return None  # a part holds a line end of its own: more lines in an event, or blank lines
            if whole.count(b"\n\ndata: ") != len(lines) - 1:
                return None  # each part a `data: ` line (the first one's start is checked)
            if max(map(len, lines)) > self._max + 5:  # `data: ` and the line end, as the general path counts
                return None
        self._lines.clear()
        self._tail = rest
        return lines

    def feed_named(self, data: bytes, runs: RunFinder | None = None) -> list[SSEEvent] | None:
        """`feed_run` for a server that names every event (Anthropic): whole events of an `event: ` line and
        one `data: ` line each, then maybe the start of the next, kept raw; None, consuming nothing, for
        anything else. The line machinery costs ~30 Python lines an event, and a long answer is thousands.

        `runs`: a relay's finder of a span of these events that it takes whole, given the read's whole events
        (joined by blank lines): the span's start and end there, at event boundaries, and one event of its own
        standing for the span (Claude's text deltas, `providers.anthropic_runs`); the events around it are
        decoded one by one (a text delta costs ~8 Python lines here by itself, and as many again in the relay)."""
        taken = self._whole_events(data, b"event: ")
        if taken is None:
            return None
        whole, rest = taken
        # one event alone is no run: fed by itself, as cheaply (a finder costs more than it saves under ~2); an
        # event is two lines, and counting line ends costs a single event half what looking for a blank line does
        found = runs(whole) if runs is not None and whole.count(b"\n") > 1 and len(whole) <= self._max else None
        if found is None:
            events = self._named(whole)
        else:
            start, end, run = found
            before = self._named(whole[:start - 2]) if start else []
            after = self._named(whole[end + 2:]) if end < len(whole) else []
            events = None if before is None or after is None else [*before, run, *after]
        if events is None:
            return None
        self._lines.clear()
        self._tail = rest
        return events

    def _named(self, whole: bytes) -> list[SSEEvent] | None:
        """`feed_named`'s events of whole events joined by blank lines; None where one is not of its shape."""
        events = []
        for part in whole.split(b"\n\n") if whole else ():
            name, _, line = part.partition(b"\n")
            if not line.startswith(b"data: ") or b"\n" in line or not name.startswith(b"event: ") \
                    or len(line) > self._max + 5:
                return None
            events.append(SSEEvent(line[6:], name[7:].decode("utf-8", "replace"), self._id))
        return events

    def _whole_events(self, data: bytes, first: bytes) -> tuple[bytes, bytes] | None:
        """For the shortcuts, with nothing consumed: a read's whole events (up to their last blank line) and
        the start of the next, when the read begins an event whose first line starts with `first`, the line
        machinery holds nothing and no CR stands alone; else None."""
        if self._data or self._event or self._stray:
            return None
        if b"\r" in data:  # CRLF line ends (Gemini's): the same events, unless a CR stands alone or may
            if data.endswith(b"\r"):  # be half of a pair split across reads
                return None
            data = data.replace(b"\r\n", b"\n")
            if b"\r" in data:
                return None
        if (unread := self._lines.unread(data)) is None:
            return None
        data = self._tail + unread  # at an event's start: the splitter's line or the kept tail, not both
        if not data.startswith(first) and not (len(data) < len(first) and first.startswith(data)):
            return None
        end = data.rfind(b"\n\n")
        rest = data[end + 2:] if end >= 0 else data
        if len(rest) > self._max:
            return None  # the general path raises where it must
        return (data[:end] if end >= 0 else b""), rest

    def event(self, line: bytes) -> SSEEvent:
        """The event of a `data: ...` line that `feed_run` returned."""
        return SSEEvent(line[6:], "", self._id)

    def _feed(self, data: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        for line in self._lines.feed(data):
            if not line:
                if self._data:
                    events.append(SSEEvent(data=b"\n".join(self._data), event=self._event, id=self._id))
                    if self._stray:
                        self._stray = bytearray()
                self._data = []
                self._size = 0
                self._event = ""
            elif line[0] != 0x3A:  # ':' starts a comment (keep-alives such as ": OPENROUTER PROCESSING")
                self._field(line)
        if self._size + self._lines.pending > self._max:
            raise ProviderError(f"upstream SSE event exceeds {self._max} bytes")
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: the pending event if it has data (WHATWG would drop it; some servers omit the
        final blank line). The caller decides whether to use it."""
        tail, self._tail = self._tail, b""
        if tail:
            events = self._feed(tail + b"\n\n")
        else:
            events = self._feed(b"\n\n") if (self._data or self._lines.pending) else []
        if self._stray and (error := _error_body(bytes(self._stray))) is not None:
            events.append(SSEEvent(error, "", self._id))
        return events

    def _field(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._size += len(value) + 1
            if self._size > self._max:
                raise ProviderError(f"upstream SSE event exceeds {self._max} bytes")
            self._data.append(value)
        elif name == b"error":  # llama.cpp's failure: ignored as the spec says, it would end the answer silently
            self._field(b"data:" + _error_data(value))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            self._id = value.decode("utf-8", "replace")
        elif name != b"retry" and len(self._stray) < MAX_STRAY_BYTES:
            self._stray += line + b"\n"


def _error_data(value: bytes) -> bytes:
    """The data of an event for an `error:` field: `{"error": value}`, the value as text when it is no JSON."""
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return orjson.dumps({"error": {"message": value.decode("utf-8", "replace")}})
    return b'{"error":' + value + b"}"


def _error_body(text: bytes) -> bytes | None:
    """The JSON error object unframed lines hold (alone, or first in a JSON array, as Gemini's answers without
    SSE framing are), as an event's data; None for anything else, which stays ignored."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, list) and body:
        body = body[0]
    return orjson.dumps(body) if isinstance(body, dict) and "error" in body else None


class NDJSONDecoder:
    """Incremental newline-delimited JSON framing (Ollama's native API): `feed(bytes) -> list[bytes]`.

    Returns complete, non-blank lines without their line end; parsing the JSON is the adapter's job.
    """

    __slots__ = ("_lines",)

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._lines = _LineSplitter(max_line_bytes)

    def feed(self, data: bytes) -> list[bytes]:
        return [line for line in self._lines.feed(data) if line.strip()]

    def flush(self) -> list[bytes]:
        """End of stream: a last line that had no line end, if any."""
        return self.feed(b"\n") if self._lines.pending else []
