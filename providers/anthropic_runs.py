"""Runs of Claude's text deltas, counted whole: the native Claude relay's loop without a Python call per delta.

The native route (`gateway.messages.NativeCodec`) relays Claude's events as they came and needs of a text delta
only what `anthropic.delta_text_bytes` tells: its text's UTF-8 size, and the state parsing it would leave. A long
answer is thousands of deltas, and most reads of it are nothing else: consecutive text deltas of one block, each
written as Claude writes it (`_WRITTEN_DELTA`'s shape) with plain text (no escapes, no control characters). Such
a run has fixed bytes around each text, so `find` checks and counts all of it with a few C-level operations over
the read (split on the fixed bytes, count quotes and line ends, one regex search, one UTF-8 check), and the relay
sends its bytes on as one piece. Anything else in the read is decoded and fed event by event, as before.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from providers.anthropic import AnthropicStreamState
from providers.types import SSEEvent, StreamState, is_utf8

NAME = "content_block_delta"
_EVENT = b"event: content_block_delta\ndata: "
# the first text delta of a read, at an event's start: its bytes up to the text, and its block's index
_FIRST = re.compile(rb'(?:^|\n\n)(event: content_block_delta\ndata: \{"type":"content_block_delta","index":'
                    rb'(0|[1-9][0-9]*),"delta":\{"type":"text_delta","text":")')
_END = b'"}}'  # after the text
_NOT_PLAIN = re.compile(rb"[\\\x00-\x09\x0b-\x1f]")  # an escape or a control character (line ends are counted)


@dataclass(slots=True)
class TextRun(SSEEvent):
    """Consecutive text deltas of one block with plain text, standing for them all: `data` holds the events as
    they came (each its `event:` and `data:` line, joined by blank lines), `text_bytes` their texts' UTF-8 size."""

    text_bytes: int = 0

    def events(self) -> list[SSEEvent]:
        """The run's events one by one, as the decoder would have given them."""
        return [SSEEvent(part[len(_EVENT):], NAME, self.id) for part in self.data.split(b"\n\n")]


def find(whole: bytes) -> tuple[int, int, TextRun] | None:
    """In a read's whole events (`SSEDecoder.feed_named`: joined by blank lines, LF line ends), the span from the
    first text delta to the last one of the same block, when every event in it is such a delta with plain text:
    its start, its end (both at event boundaries) and the run; None for anything else."""
    match = _FIRST.search(whole)
    if match is None:
        return None
    start, head = match.start(1), match.group(1)
    end = whole.find(b"\n\n", whole.rfind(head))
    run = whole[start:] if end < 0 else whole[start:end]
    k = run.count(b"\n\n") + 1  # events: no blank line inside one, as the events come whole
    # every event `head` text `_END`: the blank lines all stand between an `_END` and a `head`, and the texts
    # hold no quote (so no other string, nor the end of theirs), no line end, no escape, no control character
    # (an event shorter than `head` and `_END` would share their quote: `head` then `}}` is such an event, or a text
    # starting `}}`, which is left to the event-by-event way)
    if not run.endswith(_END) or run.count(_END + b"\n\n" + head) != k - 1 or head + b"}}" in run \
            or run.count(b'"') != k * (head.count(b'"') + 1) or run.count(b"\n") != 3 * k - 2 \
            or _NOT_PLAIN.search(run) is not None or not (run.isascii() or is_utf8(run)):
        return None  # (valid UTF-8 whole: the texts are, as ASCII bytes surround each)
    n = len(run) - k * (len(head) + len(_END)) - 2 * (k - 1)
    return start, start + len(run), TextRun(run, NAME, "", n)


def take(state: StreamState, run: TextRun) -> bool:
    """The state as `anthropic.delta_text_bytes` would leave it after each of the run's deltas, and True; False,
    the state untouched, where that counts none of them (after message_stop, inside a response_format answer):
    the run is fed event by event then."""
    if not isinstance(state, AnthropicStreamState) or state.done or state.answer_block is not None:
        return False
    if run.text_bytes:
        state.created = state.created or int(time.time())  # as the first chunk with text would be stamped
    return True
