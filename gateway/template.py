"""Relaying a stream's content chunks from their bytes: the template of one parsed chunk, applied to the rest.

OpenAI-compatible servers send most of a stream as chunks that differ only in their text (Claude: text deltas).
Once one such chunk was parsed and encoded for the client, `Template` knows the bytes around the text on both
sides, and `gateway.streaming` relays every later event that matches without decoding or encoding JSON.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from providers.types import JSON

# Bytes a JSON string holds only escaped, or that are not text: such a chunk goes the parsing way.
_NOT_VERBATIM = re.compile(rb'["\\\x00-\x1f]')
# Top-level strings that change from chunk to chunk besides the text: OpenAI pads every chunk with random
# characters in `obfuscation` (on by default, against length side channels; relayed as they came).
VARYING = ("obfuscation",)
_MARK = "\x7fgateway-%d\x7f"  # stands for a cut-out string while a template's client side is encoded


class Template:
    """One content-only chunk of a stream, upstream bytes and client bytes, with its strings cut out.

    OpenAI-compatible servers send most of a stream as chunks that differ only in the text (and OpenAI's
    padding, `VARYING`): same id, created, model, fingerprint, one choice with a null finish_reason.
    Parsing such a chunk changes nothing but what is relayed (the adapter's `VERBATIM_CHUNKS`), so once one
    was parsed and encoded, a later event with the same bytes around plain strings (no escapes, no control
    characters, valid UTF-8) is relayed as the same client bytes around those strings, without decoding
    and encoding JSON. Learnt from the first such chunk; what does not match (the role chunk, tool calls,
    the finish, usage) is parsed as ever. Claude's text deltas are such events too (same block index, the
    text their only string, at the adapter's `TEXT_AT`), relayed as OpenAI chunks to a chat client.
    """

    __slots__ = ("head", "inner", "order", "out", "size", "tail", "text_at")

    def __init__(self, pieces: list[bytes], out: list[bytes], order: list[int], text_at: int) -> None:
        # pieces: the upstream's bytes around its strings; out: the client's around them; order[i]: which
        # of the upstream's strings (by position) goes after out[i]; text_at: which one is the text
        self.head, self.inner, self.tail = b"data: " + pieces[0], pieces[1:-1], pieces[-1]
        self.size = len(self.head) + sum(map(len, self.inner)) + len(self.tail)
        self.out, self.order, self.text_at = out, order, text_at

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
            if not found or _NOT_VERBATIM.search(string) is not None:
                return None
            strings.append(string)
        if _NOT_VERBATIM.search(rest) is not None:
            return None
        strings.append(rest)
        text = strings[self.text_at]
        if not text:
            return None
        pieces = self.out
        out.append(pieces[0])
        for i, at in enumerate(self.order):
            out += (strings[at], pieces[i + 1])
        return len(text)

    @classmethod
    def learn(cls, data: bytes, chunk: JSON, text: str, encode: Any, text_at: tuple[str | int, ...]) -> Template | None:
        """The template of event `data`, parsed into the content-only `chunk` (as it will be relayed) of
        `text`, whose client bytes `encode` makes; None unless its strings can be cut out of both. `text_at`:
        where the text sits in the event (the adapter's `TEXT_AT`: OpenAI's chunk, Anthropic's text delta)."""
        delta = chunk["choices"][0]["delta"]
        fields: list[tuple[JSON, str]] = [(delta, "content")]  # where each string sits in the chunk
        fields += [(chunk, name) for name in VARYING if type(chunk.get(name)) is str]
        keys = [str(text_at[-1]), *(name for _, name in fields[1:])]  # each string's key in the event
        cuts = []  # (start, end) of each string in `data`, in `fields` order
        for (where, name), key in zip(fields, keys, strict=True):
            raw = where[name].encode()
            marker = b'"' + key.encode() + b'":"' + raw + b'"'
            if _NOT_VERBATIM.search(raw) is not None or data.count(marker) != 1:
                return None
            start = data.index(marker) + len(marker) - len(raw) - 1
            cuts.append((start, start + len(raw)))
        positions = sorted(range(len(cuts)), key=lambda i: cuts[i][0])
        pieces, at = [], 0
        for i in positions:
            if cuts[i][0] < at:
                return None
            pieces.append(data[at:cuts[i][0]])
            at = cuts[i][1]
        pieces.append(data[at:])
        # The cuts are those strings and nothing else when other strings there parse to the same chunk but
        # for them: a letter outside a string is no JSON, and inside any other string it would change that.
        others = ["y" if where[name] == "x" else "x" for where, name in fields]
        probe = pieces[0] + b"".join(others[i].encode() + piece for i, piece in zip(positions, pieces[1:], strict=True))
        try:
            upstream = orjson.loads(data)
            holder = upstream
            for step in text_at[:-1]:
                holder = holder[step]
            for i, (key, other) in enumerate(zip(keys, others, strict=True)):
                (holder if i == 0 else upstream)[key] = other
            if orjson.loads(probe) != upstream:
                return None
        except (orjson.JSONDecodeError, LookupError, TypeError):
            return None
        kept = [where[name] for where, name in fields]
        marks = [_MARK % i for i in range(len(fields))]
        for (where, name), mark in zip(fields, marks, strict=True):
            where[name] = mark
        try:
            encoded = encode(chunk)
        finally:
            for (where, name), value in zip(fields, kept, strict=True):
                where[name] = value
        marked = [mark.encode() for mark in marks]
        if any(encoded.count(mark) != 1 for mark in marked):
            return None
        found = [encoded.index(mark) for mark in marked]
        out, at = [], 0
        order = sorted(range(len(fields)), key=lambda i: found[i])
        for i in order:
            out.append(encoded[at:found[i]])
            at = found[i] + len(marked[i])
        out.append(encoded[at:])
        # strings travel in the upstream's order; the client's order may differ
        return cls(pieces, out, [positions.index(i) for i in order], positions.index(0))
