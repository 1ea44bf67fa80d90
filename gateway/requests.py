"""Reading client bodies: size-capped before anything is buffered, JSON-checked with clear 400s.

JSON that parses can still be hostile: orjson parses any depth but serializes at most 254 levels, and
every translator walks the body, so a request nested deeper than `MAX_DEPTH` is refused here, for every
endpoint at once, before any code that could fail on it runs.
"""

from __future__ import annotations

import asyncio
import gc
import re
from typing import Any

import orjson
from aiohttp import StreamReader, web

from gateway.edge import send_continue
from gateway.errors import GatewayError, InvalidRequest, PayloadTooLarge
from gateway.state import RUNTIME

MAX_DEPTH = 64  # real requests (messages > content parts > tool schemas) stay far below
SCREEN_AT_MOST = 1024  # bytes of a body screened by counting its brackets (beyond, a walk costs less)
WALK_AT_MOST = 10_000  # objects and arrays of a body walked for its depth; beyond, its bytes are checked in C
# a JSON string, escapes included, unrolled: a run of plain bytes is one step of the regex engine, where an
# alternation per byte took 5.5 s over a 10 MB prompt (a big source file pasted: many brackets, one string)
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")  # matched pairs stay matched in valid JSON: one kind to remove
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
BODY_IDLE_TIMEOUT_S = 60.0  # the longest silence inside a request body


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body exceeds this gateway's limit of {limit} bytes.")


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The body, refusing past `limit` bytes as it decodes (a gzip or deflate body is counted inflated,
    not by its Content-Length), a body that does not decode, one that stalls for `BODY_IDLE_TIMEOUT_S`, and
    one that has not arrived whole after `server.body_timeout_s` (aiohttp would wait for either for ever,
    holding the connection and its buffer: a byte every 59 s is never a stall)."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        if request.content.is_eof():  # all of it came with the headers (nearly every request): what is buffered
            body = request.content.read_nowait()  # one piece as it is, several joined once
            if len(body) > limit:
                raise _too_large(limit)
            return body
        await send_continue(request)  # a client waiting for it (`Expect: 100-continue`) has sent no body yet
        return await _read_slowly(request.content, limit, request.app[RUNTIME].snapshot.config.server.body_timeout_s)
    except web.HTTPRequestEntityTooLarge:  # past aiohttp's own bound (the server's limit plus a margin)
        raise _too_large(limit) from None
    except web.RequestPayloadError as exc:  # a Content-Encoding that does not decode, broken framing
        raise InvalidRequest("The request body could not be read: it does not decode as its Content-Encoding "
                             "says.", code="invalid_body") from exc


async def _read_slowly(content: StreamReader, limit: int, deadline_s: float) -> bytes:
    """The body as the pieces the parser handed over, joined once at the end. `readany` joins what is
    buffered, a growing bytearray copies itself as it grows and `bytes()` copies it whole: for an agent's
    350 KB request, three copies more than this one (bench/README.md)."""
    pieces: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    ends = loop.time() + deadline_s

    def next_timeout() -> float:
        return min(loop.time() + BODY_IDLE_TIMEOUT_S, ends)

    try:
        async with asyncio.timeout_at(next_timeout()) as timeout:
            while True:
                piece, chunk_end = await content.readchunk()  # (b"", True): a chunked body's chunk ended
                if not piece:
                    if chunk_end:
                        continue
                    break  # (b"", False): the end of the body
                pieces.append(piece)
                size += len(piece)
                if size > limit:
                    raise _too_large(limit)
                if not content.is_eof():
                    timeout.reschedule(next_timeout())
    except TimeoutError as exc:
        why = (f"took too long: it had not arrived whole after {deadline_s:g} s" if timeout.when() == ends
               else f"stalled: nothing arrived for {BODY_IDLE_TIMEOUT_S:g} s")
        raise GatewayError(f"The request body {why}.", status=408, type_="invalid_request_error",
                           code="request_timeout") from exc
    return b"".join(pieces)  # one piece: itself


async def read_json(request: web.Request, limit: int) -> dict[str, Any]:
    raw = await read_limited(request, limit)
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    # nesting needs an opening bracket per level: a short body with few of them cannot be too deep, and
    # counting them is cheaper than a walk. Counting costs ~10 instructions a byte (a third of an agent's
    # 350 KB request), so a longer body is walked level by level, at the cost of its objects and arrays, and
    # one of very many of them checked by its bytes (walking 7M empty arrays, 20 MB, took 6 s of the loop)
    if len(raw) <= SCREEN_AT_MOST and raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return body
    deeper = _depth_exceeds(body, MAX_DEPTH, WALK_AT_MOST)
    if deeper is None:
        deeper = _nests_deeper(raw, MAX_DEPTH)
    if deeper:
        raise InvalidRequest(f"The request body exceeds the depth limit: it nests more than {MAX_DEPTH} levels.",
                             code="invalid_json")
    return body


def _nests_deeper(raw: bytes, limit: int) -> bool:
    """`_depth_exceeds` on valid JSON's bytes, in C: without its strings, only its brackets kept, each round
    removes the innermost (empty) pairs, one level of every branch; a body deeper than `limit` outlasts
    `limit` rounds."""
    brackets = _STRINGS.sub(b"", raw).translate(_AS_SQUARE, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")  # one pass over the old bytes: `[[]]` loses one level a round
    return bool(brackets)


def _depth_exceeds(value: dict[str, Any] | list[Any], limit: int, budget: int | None = None) -> bool | None:
    """Whether a parsed JSON value's objects/arrays nest deeper than `limit`, one level at a time (iterative, so
    depth itself cannot crash the check). None once more than `budget` of them were met undecided: the caller
    checks such a body another way.

    Each level is read in C: `gc.get_referents` hands over the children of all its objects and arrays at once, and
    `gc.is_tracked` keeps the arrays and the objects holding an array or an object. CPython leaves an object of
    only strings, numbers, booleans and None untracked (the case `gc.is_tracked`'s documentation names), so what is
    dropped is a leaf: it can only make the body one level deeper, which matters at the last level alone. A loop
    testing every child's class in Python cost an agent's 350 KB request (605 objects and arrays, 1,469 children)
    1.29M instructions; this, 0.13M (bench/README.md, nineteenth round).
    """
    level = [value]
    for depth in range(limit):
        if budget is not None:
            budget -= len(level)
            if budget < 0:
                return None
        children = gc.get_referents(*level)
        level = list(filter(gc.is_tracked, children))
        if not level:  # no child holds anything; one at the limit is still one level too deep
            return depth == limit - 1 and any(child.__class__ is dict or child.__class__ is list for child in children)
    return True
