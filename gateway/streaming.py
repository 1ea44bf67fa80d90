"""Relaying an upstream event stream to the client, with the bill attached at the end.

Each upstream read becomes one client write, as soon as it arrives. The chunk that carries
`finish_reason` is held back until the request is settled, then sent with `billing` on it: a plain
`for chunk in stream: chunk.choices[0]` loop of the official SDKs sees nothing unusual. When the client
asked for usage, the usage chunk carries `billing` too; the named `billing_update` event (which the SDKs
turn into a chunk without `choices`) is sent only on request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gateway.billing import Bill
from gateway.errors import UpstreamFailed
from gateway.relay import next_data
from gateway.sse import DONE, SSEWriter, frame
from providers.framing import SSEDecoder
from providers.registry import Adapter
from providers.types import JSON, ProviderError, StreamState, UpstreamHTTPError


@dataclass(slots=True)
class Relayed:
    """What reached the client so far: for the bill when the upstream's usage never comes."""

    text_bytes: int = 0
    first_at: float | None = None
    held: list[JSON] = field(default_factory=list)  # finish and usage chunks waiting for the bill


def _text_bytes(chunk: JSON) -> int:
    n = 0
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        for key in ("content", "reasoning_content", "refusal"):
            value = delta.get(key)
            if isinstance(value, str):
                n += len(value.encode())
        for call in delta.get("tool_calls") or ():
            args = (call.get("function") or {}).get("arguments")
            if isinstance(args, str):
                n += len(args.encode())
    return n


def _is_tail(chunk: JSON) -> bool:
    choices = chunk.get("choices")
    return not choices or any(c.get("finish_reason") for c in choices)


async def pump(resp: aiohttp.ClientResponse, adapter: Adapter, state: StreamState, out: SSEWriter,
               wants_usage: bool, silence_s: float, keepalive_s: float, relayed: Relayed, now: Any,
               generation_id: str) -> None:
    """Relay until the upstream says it is done; tail chunks are kept in `relayed.held`.

    Every chunk carries the gateway's generation id, the handle for /v1/generation.
    """
    decoder = SSEDecoder()
    try:
        while not state.done:
            data = await next_data(resp.content, silence_s, keepalive_s, out.keepalive)
            events = decoder.feed(data) if data else decoder.flush()  # a last event may lack its blank line
            batch, broken = _frame(adapter, state, events, relayed, wants_usage, generation_id)
            if batch:
                if relayed.first_at is None:
                    relayed.first_at = now()
                await out.write(batch)
            if broken is not None:
                raise broken
            if not data and not state.done:
                if state.finish_reason is not None:
                    break  # some servers end without [DONE]; the answer itself was complete
                raise UpstreamFailed("the upstream closed the stream before it finished",
                                     code="upstream_truncated")
    except UpstreamHTTPError:
        raise
    except (aiohttp.ClientError, ProviderError) as exc:
        raise UpstreamFailed(f"the upstream stream broke ({type(exc).__name__})",
                             code="upstream_stream_error") from exc


def _frame(adapter: Adapter, state: StreamState, events: list[Any], relayed: Relayed, wants_usage: bool,
           generation_id: str) -> tuple[bytes, ProviderError | None]:
    """One read's events as client frames, and the error of an event that could not be read.

    The frames before a broken event still go out: they are counted in `relayed`, so they are billed,
    and a client must receive everything it pays for.
    """
    batch = bytearray()
    try:
        for event in events:
            for chunk in adapter.parse_stream_event(state, event):
                chunk["id"] = generation_id
                relayed.text_bytes += _text_bytes(chunk)
                if _is_tail(chunk):
                    if chunk.get("choices") or wants_usage:
                        relayed.held.append(chunk)
                    continue
                batch += frame(chunk)
    except ProviderError as exc:
        return bytes(batch), exc
    return bytes(batch), None


async def finish(out: SSEWriter, relayed: Relayed, bill: Bill, billing_event: bool) -> None:
    """The held tail with the bill on it, the opt-in billing event, then [DONE]."""
    block = bill.block()
    tail = bytearray()
    for chunk in relayed.held:
        chunk["billing"] = block
        if not chunk.get("choices") and isinstance(chunk.get("usage"), dict):
            chunk["usage"]["cost"] = block["request_cost"]
        tail += frame(chunk)
    if billing_event:
        tail += frame({"billing": block}, event="billing_update")
    tail += DONE
    await out.write(bytes(tail))
    await out.finish()
