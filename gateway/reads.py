"""One upstream read of an event stream as client bytes: the loop a long stream spends its time in.

`gateway.streaming.pump` hands every read here. Whole one-line events (what OpenAI-compatible servers write) go
through `_relay_run`, the rest through the decoder's event machinery and `_frame`. Wherever the codec's template
(`gateway.template`) matches, events are relayed from their bytes, a read's run of them at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.template import edges
from providers.framing import SSEDecoder
from providers.types import ProviderError, SSEEvent, is_utf8

if TYPE_CHECKING:  # streaming imports this module
    from gateway.streaming import Relayed, StreamCodec


def relay_read(codec: StreamCodec, decoder: SSEDecoder, data: bytes,
               relayed: Relayed) -> tuple[bytes, ProviderError | None]:
    """One upstream read (b"" at the body's end) as client bytes, and the error of an event that could
    not be read; what was relayed is counted in `relayed`."""
    if data and (lines := decoder.feed_run(data)) is not None:
        return _relay_run(codec, decoder, lines, relayed)
    if data:
        return _frame(codec, decoder.feed_rest(data, codec.runs), relayed)  # feed_run refused it just now
    batch, broken = _frame(codec, decoder.flush(), relayed)  # a last event may lack its blank line
    if broken is None and not codec.state.done:  # the adapter's last word: a finish it held back (Gemini)
        more, n = codec.feed_end()
        relayed.text_bytes += n
        batch += more
    return batch, broken


def _frame(codec: StreamCodec, events: list[SSEEvent], relayed: Relayed) -> tuple[bytes, ProviderError | None]:
    """One read's events as client bytes, and the error of an event that could not be read.

    The frames before a broken event still go out: they are counted in `relayed`, so they are billed,
    and a client must receive everything it pays for. Events the codec's template matches (named ones,
    Anthropic's, come this way) are relayed from their bytes, as `_relay_run` relays one-line events.
    """
    out: list[bytes] = []
    state = codec.state
    try:
        for event in events:
            template = codec.template
            if template is not None and not state.done and (event.data.isascii() or is_utf8(event.data)) \
                    and (counted := template.relay(line := b"data: " + event.data, out)) is not None:
                relayed.text_bytes += counted
                codec.last = line
                continue
            relay, n = codec.feed(event)
            relayed.text_bytes += n
            out.append(relay)
    except ProviderError as exc:
        return b"".join(out), exc
    return b"".join(out), None


def _relay_run(codec: StreamCodec, decoder: SSEDecoder, lines: list[bytes],
               relayed: Relayed) -> tuple[bytes, ProviderError | None]:
    """A read of whole one-line events (`SSEDecoder.feed_run`) as client bytes, as `_frame` would make
    them: the events the codec's template matches are relayed from their bytes, the others fed to the
    codec. This is the loop a long stream spends its time in. A read that holds other chunks at its ends
    (the role and first text, the finish, usage, [DONE]: a fast upstream's last read holds half a stream's
    events at c=16) has those fed one by one and the run between them relayed whole."""
    template = codec.template
    utf8 = all(map(bytes.isascii, lines)) or all(map(is_utf8, lines))  # then so is any text cut out of them
    if not utf8 or (template is None and not codec.learning):
        return _frame(codec, [decoder.event(line) for line in lines], relayed)
    out: list[bytes] = []
    try:
        if template is None:  # fed one by one until a template is learnt; the rest as a read of its own
            for i, line in enumerate(lines):
                if codec.template is not None:
                    more, broken = _relay_run(codec, decoder, lines[i:], relayed)
                    out.append(more)
                    return b"".join(out), broken
                relay, k = codec.feed(decoder.event(line))
                out.append(relay)
                relayed.text_bytes += k
            return b"".join(out), None
        if len(lines) > 1 and not codec.state.done:
            if (run := template.relay_run(lines)) is not None:
                relayed.text_bytes += run[1]  # every line matched: no event, no Python call a line
                codec.last = lines[-1]
                return run[0], None
            start, end = edges(lines, template.head, template.tail)
            if start or end < len(lines):
                _relay_lines(codec, decoder, lines[:start], out, relayed)
                if codec.template is template and not codec.state.done \
                        and (run := template.relay_run(lines[start:end])) is not None:
                    out.append(run[0])
                    relayed.text_bytes += run[1]
                    codec.last = lines[end - 1]
                else:
                    _relay_lines(codec, decoder, lines[start:end], out, relayed)
                _relay_lines(codec, decoder, lines[end:], out, relayed)
                return b"".join(out), None
        _relay_lines(codec, decoder, lines, out, relayed)
    except ProviderError as exc:
        return b"".join(out), exc
    return b"".join(out), None


def _relay_lines(codec: StreamCodec, decoder: SSEDecoder, lines: list[bytes], out: list[bytes],
                 relayed: Relayed) -> None:
    """One line at a time onto `out`: relayed by the template when it matches, else fed to the codec."""
    template, state = codec.template, codec.state
    n = 0
    try:
        for line in lines:
            if template is not None and not state.done and (counted := template.relay(line, out)) is not None:
                n += counted
                codec.last = line
                continue
            relay, k = codec.feed(decoder.event(line))
            out.append(relay)
            n += k
            template = codec.template  # maybe learnt from this event
    finally:
        relayed.text_bytes += n
