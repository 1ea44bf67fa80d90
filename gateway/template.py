"""Relaying a stream's content chunks from their bytes: the template of one parsed chunk, applied to the rest.

OpenAI-compatible servers send most of a stream as chunks that differ only in their text (Claude: text deltas).
Once one such chunk was parsed and encoded for the client, `Template` knows the bytes around the text on both
sides, and `gateway.streaming` relays every later event that matches without decoding or encoding JSON.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any

import orjson

from gateway.billing import utf8_len
from providers.types import JSON, SSEEvent, is_utf8

# Bytes a JSON string holds only escaped, or that are not text: such a chunk goes the parsing way.
_NOT_VERBATIM = re.compile(rb'["\\\x00-\x1f]')
# Top-level strings that change from chunk to chunk besides the text: OpenAI pads every chunk with random
# characters in `obfuscation` (on by default, against length side channels; relayed as they came).
VARYING = ("obfuscation",)
# Counts that change from event to event: Gemini restates its usage on every event (`usageMetadata`), the answer's
# tokens so far among them (Gemini 2.5 on). Cut out of the upstream's bytes (the client's chunk holds no usage);
# the adapter's `RESTATES` says the last event relayed so must be parsed for its usage before the state is read.
_COUNTS = re.compile(rb'"(candidatesTokenCount|totalTokenCount)": ?([0-9]+)')
_LEADING_ZERO = re.compile(rb"(?:^| )0[0-9]")  # in counts joined by spaces: one that is no JSON number
_NAMED = b"event: content_block_delta\n"  # before a Claude text delta's `data:` line (`find_run`)
_MARK = "\x7fgateway-%d\x7f"  # stands for a cut-out string while a template's client side is encoded
_MARKS = tuple(_MARK % i for i in range(1 + len(VARYING)))
_MARKED = tuple(mark.encode() for mark in _MARKS)


class Template:
    """One content-only chunk of a stream, upstream bytes and client bytes, with its strings cut out.

    OpenAI-compatible servers send most of a stream as chunks that differ only in the text (and OpenAI's
    padding, `VARYING`): same id, created, model, fingerprint, one choice with a null finish_reason.
    Parsing such a chunk changes nothing but what is relayed (the adapter's `VERBATIM_CHUNKS`), so once one
    was parsed and encoded, a later event with the same bytes around plain strings (no escapes, no control
    characters, valid UTF-8) is relayed as the same client bytes around those strings, without decoding
    and encoding JSON. Learnt from the first such chunk; what does not match (the role chunk, tool calls,
    the finish, usage) is parsed as ever. Claude's text deltas are such events too (same block index, the
    text their only string, at the adapter's `TEXT_AT`), relayed as OpenAI chunks to a chat client, and so are
    Gemini's text events, whose running counts (`_COUNTS`) are cut out too.
    """

    __slots__ = ("between", "counts", "cuts", "head", "heads", "inner", "order", "out", "seams", "shortest", "size",
                 "tail", "text_at")

    def __init__(self, pieces: list[bytes], out: list[bytes], order: list[int], text_at: int,
                 counts: frozenset[int] = frozenset()) -> None:
        # pieces: the upstream's bytes around its strings; out: the client's around them; order[i]: which
        # of the upstream's strings (by position) goes after out[i] (a client may drop the padding: then
        # fewer); text_at: which one is the text; counts: which ones are counts (digits, dropped by the client)
        self.head, self.inner, self.tail = b"data: " + pieces[0], pieces[1:-1], pieces[-1]
        self.counts = counts
        self.size = len(self.head) + sum(map(len, self.inner)) + len(self.tail)
        self.out, self.order, self.text_at = out, order, text_at
        # for `relay_run`, its lines plain or named: what precedes a text, a line's text, the upstream's bytes
        # between one text and the next; the client's
        named, seam, end = _NAMED + self.head, self.tail + b"\n\n", -len(self.tail)  # (no generator: per stream)
        self.heads = (self.head, named)
        self.cuts = (itemgetter(slice(len(self.head), end)), itemgetter(slice(len(named), end)))
        self.seams = (seam + self.head, seam + named)
        self.between = out[-1] + out[0]
        # the fewest lines `relay_run` takes: below them its fixed cost is more than `relay`'s a line (timeit, one
        # read: 2 lines alone 1.3 against 1.2 us, padded 2.9 against 2.4, 4 padded 3.7 against 4.8; two counts
        # beside the text, Gemini 2.5's: 4 lines 15.7 against 12.1 us, 8: 22.8 against 25.1)
        self.shortest = (2, 4, 8)[min(len(self.inner), 2)]

    def relay(self, line: bytes, out: list[bytes]) -> int | None:
        """For a `data: ...` line that matches, its client bytes put on `out` and its text's length (UTF-8
        only if the line is); None, `out` untouched, when it must be parsed."""
        if len(line) <= self.size or not line.startswith(self.head) or not line.endswith(self.tail):
            return None
        rest = line[len(self.head):len(line) - len(self.tail)]
        if not self.inner:  # the text alone
            if not rest or _NOT_VERBATIM.search(rest) is not None:
                return None
            out += (self.out[0], rest, self.out[1])
            return len(rest)
        strings = []
        for separator in self.inner:  # each string ends at its separator: none holds a quote
            string, found, rest = rest.partition(separator)
            if not found:
                return None
            strings.append(string)
        strings.append(rest)
        counts = self.counts
        for i, string in enumerate(strings):  # (no generator: a line)
            if i in counts:  # a JSON number: digits, no leading zero
                if not string.isdigit() or (string[0] == 48 and len(string) > 1):
                    return None
            elif _NOT_VERBATIM.search(string) is not None:
                return None
        text = strings[self.text_at]
        if not text:
            return None
        pieces = self.out
        out.append(pieces[0])
        for i, at in enumerate(self.order):
            out += (strings[at], pieces[i + 1])
        return len(text)

    def relay_run(self, lines: list[bytes], named: bool = False) -> tuple[bytes, int] | None:
        """A read's `data: ...` lines (of valid UTF-8; `named`: Claude's events, each a text delta's `event:`
        line and its `data:` line) as `relay` relays each, client bytes and texts' length, when every one
        matches; else None. A few C-level operations over the read instead of a Python call a line: cut each
        line's strings at the head's and tail's lengths, check the lines are the head, those strings, the tail
        each (rebuilt and joined as the read's lines are: line ends stand only between them, as the strings
        hold none), the strings plain and the texts not empty. For the text alone, or the text and more strings
        (OpenAI's padding, kept or dropped by the client's side; Gemini's counts, dropped)."""
        if len(lines) < self.shortest:
            return None
        head, tail = self.heads[named], self.tail  # a read that starts or ends with another chunk (role, finish,
        # usage; Gemini's finish starts as its text events do): at once
        if not (lines[0].startswith(head) and lines[-1].startswith(head) and lines[0].endswith(tail)
                and lines[-1].endswith(tail)):
            return None
        cut = list(map(self.cuts[named], lines))  # empty where a line is no longer than head and tail
        if self.inner:  # each line's cut must be strings around the separators (none holds its quote)
            columns, rest = [], cut
            for separator in self.inner:  # a column off the front at each separator, in turn
                strings = separator.join(rest).split(separator)
                if len(strings) != 2 * len(rest):
                    return None
                columns.append(strings[0::2])
                rest = strings[1::2]
            columns.append(rest)
            middles: Iterable[bytes] = columns[-1]  # each line's strings joined again, from the last: checked below
            for separator, column in zip(self.inner[::-1], columns[-2::-1], strict=True):
                middles = map(separator.join, zip(column, middles, strict=True))
            texts = columns[self.text_at]
            plain: bytes | None = b"".join([b"".join(column) for column in columns])
        else:
            middles, texts, plain = cut, cut, None
        if head + self.seams[named].join(middles) + self.tail != b"\n\n".join(lines):
            return None
        text = b"".join(texts)
        if not all(texts) or _NOT_VERBATIM.search(text if plain is None else plain) is not None:
            return None
        for at in self.counts:  # a count: digits, no leading zero
            numbers = columns[at]
            if not (all(numbers) and b"".join(numbers).isdigit()) or _LEADING_ZERO.search(b" ".join(numbers)):
                return None
        out = self.out
        if len(out) == 2:  # the client gets the text alone
            return out[0] + self.between.join(texts) + out[1], len(text)
        first, second = self.order
        pairs = map(out[1].join, zip(columns[first], columns[second], strict=True))
        return out[0] + self.between.join(pairs) + out[2], len(text)

    @classmethod
    def learn(cls, data: bytes, chunk: JSON, text: str, encode: Any, text_at: tuple[str | int, ...],
              counting: bool = False) -> Template | None:
        """The template of event `data`, parsed into the content-only `chunk` (as it will be relayed) of
        `text`, whose client bytes `encode` makes; None unless its strings can be cut out of both (the padding may
        be missing from the client's: an Anthropic client gets none). `text_at`:
        where the text sits in the event (the adapter's `TEXT_AT`: OpenAI's chunk, Anthropic's text delta);
        `counting`: the event's counts change from event to event, and are cut out too (`_COUNTS`)."""
        delta = chunk["choices"][0]["delta"]
        # where each string sits in the chunk, and its key in the event (no generators: once a stream, but ~40 us)
        fields: list[tuple[JSON, str, str]] = [(delta, "content", str(text_at[-1]))]
        for name in VARYING:
            if type(chunk.get(name)) is str:
                fields.append((chunk, name, name))
        spaced = b'": "' in data  # `"key": "text"` as Google writes JSON, where most servers write `"key":"text"`
        cuts = []  # (start, end) of each string in `data`, in `fields` order, then of each count
        for where, name, key in fields:
            raw = where[name].encode()
            if _NOT_VERBATIM.search(raw) is not None:
                return None
            marker = b'"' + key.encode() + b'":"' + raw + b'"'
            found = data.count(marker)
            if spaced and (more := data.count(other := b'"' + key.encode() + b'": "' + raw + b'"')):
                marker, found = other, found + more
            if found != 1:
                return None
            start = data.index(marker) + len(marker) - len(raw) - 1
            cuts.append((start, start + len(raw)))
        strings = len(cuts)
        names = []  # the counts' keys (Gemini's alone: no scan of the others' events)
        if counting and b'TokenCount"' in data:
            for match in _COUNTS.finditer(data):
                names.append(match.group(1).decode())
                cuts.append(match.span(2))
            if len(set(names)) != len(names):
                return None  # a count named twice: which one?
        positions = sorted(range(len(cuts)), key=cuts.__getitem__)
        pieces, at = [], 0
        for i in positions:
            if cuts[i][0] < at:
                return None
            pieces.append(data[at:cuts[i][0]])
            at = cuts[i][1]
        pieces.append(data[at:])
        # The cuts are those strings and nothing else when other strings there parse to the same chunk but
        # for them: a letter outside a string is no JSON, and inside any other string it would change that (a
        # count: another number).
        others: list[Any] = ["y" if where[name] == "x" else "x" for where, name, _ in fields]
        for start, end in cuts[strings:]:
            others.append(int(data[start:end]) + 1)
        probe = [pieces[0]]
        for i, piece in zip(positions, pieces[1:], strict=True):
            probe += (str(others[i]).encode(), piece)
        try:
            upstream = orjson.loads(data)
            holder = upstream
            for step in text_at[:-1]:
                holder = holder[step]
            holder[fields[0][2]] = others[0]
            for i in range(1, strings):
                upstream[fields[i][2]] = others[i]
            for name, other in zip(names, others[strings:], strict=True):
                upstream["usageMetadata"][name] = other  # (a count elsewhere: a KeyError, no template)
            if orjson.loads(b"".join(probe)) != upstream:
                return None
        except (orjson.JSONDecodeError, LookupError, TypeError):
            return None
        kept = [where[name] for where, name, _ in fields]
        for i, (where, name, _) in enumerate(fields):
            where[name] = _MARKS[i]
        try:
            encoded = encode(chunk)
        finally:
            for (where, name, _), value in zip(fields, kept, strict=True):
                where[name] = value
        marked = _MARKED[:strings]
        if encoded.count(marked[0]) != 1:  # the text once; the padding once, or dropped
            return None
        found_at = []
        for mark in marked:
            if encoded.count(mark) > 1:
                return None
            found_at.append(encoded.find(mark))
        out, at = [], 0
        order = sorted([i for i in range(strings) if found_at[i] >= 0], key=found_at.__getitem__)
        for i in order:
            out.append(encoded[at:found_at[i]])
            at = found_at[i] + len(marked[i])
        out.append(encoded[at:])
        # strings travel in the upstream's order; the client's order may differ
        counted = frozenset([positions.index(i) for i in range(strings, len(cuts))]) if names else frozenset()
        return cls(pieces, out, [positions.index(i) for i in order], positions.index(0), counted)


_VIEWS: dict[tuple[type, tuple[str, ...]], attrgetter[Any]] = {}


def state_view(state: Any, restated: tuple[str, ...] = ()) -> attrgetter[Any]:
    """Reads every field of a stream state (`providers.types.StreamState` or an adapter's subclass) but the
    `restated` ones at once.

    A template stands for parsing an event that changes nothing in the state (`ChunkCodec.feed` learns it
    only from such an event, and drops it once a parsed event changes the state). A Gemini event restates the
    stream's usage (the adapter's `RESTATES`, left out of the view: the codec parses the last event relayed from
    its bytes for them before the state is read); its first event also marks the role as sent. Fields replaced
    by a parse are seen; containers changed in place (the choices seen, a Claude stream's block maps) are compared
    by identity only: no text event changes them."""
    key = type(state), restated
    view = _VIEWS.get(key)
    if view is None:
        names = [field.name for field in dataclasses.fields(key[0]) if field.name not in restated]
        view = _VIEWS[key] = attrgetter(*names)
    return view


def content_text(chunk: JSON, counted: int) -> str | None:
    """The text of a chunk whose only generated text is its `content`: one choice, unfinished, no usage;
    `counted` is its `text_bytes` as it came, before hidden reasoning left it (a template learnt from a chunk
    whose reasoning was hidden would relay the chunks like it without counting their reasoning). What else
    it holds (a role on every chunk, `reasoning_content: null`, `reasoning: ""`...) is part of its template."""
    choices = chunk.get("choices")
    if type(choices) is not list or len(choices) != 1 or isinstance(chunk.get("usage"), dict):
        return None
    choice = choices[0]
    delta = choice.get("delta") if type(choice) is dict else None
    if type(delta) is not dict or choice.get("finish_reason") is not None:
        return None
    text = delta.get("content")
    if type(text) is not str or not text or counted != utf8_len(text):
        return None
    return text


@dataclass(slots=True)
class TemplatedRun(SSEEvent):
    """A read of Claude's text deltas `find_run` relayed whole: the client's bytes and their texts' UTF-8 size."""

    out: bytes = b""
    text_bytes: int = 0


def find_run(codec: Any, whole: bytes) -> tuple[int, int, SSEEvent] | None:
    """A chat codec's finder of runs in a read of Claude's stream (`SSEDecoder.feed_named`'s `runs`, a whole
    read's events): the span of events its template relays (text deltas of the block it was learnt in, plain
    text) between the other events at the read's ends (the block's start or stop, message_delta, message_stop),
    as one `TemplatedRun` that `gateway.streaming.ChunkCodec.feed` sends as it is; else None. Relayed as the
    state is now, as `_frame` would relay its events one by one: the events before it cannot change the template
    (a chat codec keeps the one it learnt), and the codec drops the run after message_stop as it would drop
    each of its deltas. Its empty data matches no template there (and is valid UTF-8)."""
    template = codec.template
    if template is None or codec.state.done or not (whole.isascii() or is_utf8(whole)):
        return None
    events = whole.split(b"\n\n")
    start, end = edges(events, template.heads[1], template.tail)
    found = template.relay_run(events[start:end] if start or end < len(events) else events, True)
    if found is None:
        return None
    # the span's offsets in `whole`, from the few events around it
    at = sum(map(len, events[:start])) + 2 * start
    to = len(whole) - sum(map(len, events[end:])) - 2 * (len(events) - end)
    return at, to, TemplatedRun(b"", "content_block_delta", "", *found)


def edges(lines: list[bytes], head: bytes, tail: bytes) -> tuple[int, int]:
    """Where the lines that may match a template with `head` and `tail` start and end: other chunks around them
    are few. Both ends are looked at: Gemini's finish starts as its text events do (the text comes first)."""
    start, end = 0, len(lines)
    while start < end and not (lines[start].startswith(head) and lines[start].endswith(tail)):
        start += 1
    while end > start and not (lines[end - 1].startswith(head) and lines[end - 1].endswith(tail)):
        end -= 1
    return start, end
