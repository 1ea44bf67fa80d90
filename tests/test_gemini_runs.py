"""Gemini's text events relayed from their bytes (`Template`, `gateway.template.state_view`): it must change nothing.

A Gemini stream restates its usage on every event and leaves the role to the gateway's first chunk, so a template
may stand for parsing an event only while the stream's state is what it was when the template was learnt: learnt
from an event that left the state as it was, dropped by a parsed event that moved it. Every test relays the same
upstream bytes, read the same ways, with templates and runs, with templates line by line and without any, and
requires the same client bytes, error, text count and final state (usage included): the recorded streams, and
synthetic ones whose usage stays, grows, and goes back to an earlier count.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import orjson
import pytest
from harness import Gateway
from test_stream_relay import SHARED, Counting, event_ends, messages_codec, relay
from test_template_runs import READINGS, mutated_reads, run_is_line_by_line, same_with_and_without_runs
from test_upstream_oddities import (
    MESSAGES,
    MODELS,
    RawUpstream,
    gemini_chunk,
    gemini_error_tail,
    ledger,
    odd,  # noqa: F401 - a fixture, used by name
    raw_upstream,  # noqa: F401 - a fixture, used by name
    sse,
)

from gateway import billing, streaming
from gateway.state import RUNTIME
from providers import gemini
from providers.framing import SSEDecoder
from providers.types import Usage

GEMINI = sorted((SHARED / "wire" / "gemini").glob("*/streaming-*.txt"))


@pytest.fixture(autouse=True)
def fixed_gemini_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunks carry the time the stream's state was made, a tool call without Gemini's id a random one: relays
    compared byte for byte must agree."""
    monkeypatch.setattr(gemini, "time", SimpleNamespace(time=lambda: 1_700_000_000.0))
    monkeypatch.setattr(gemini, "uuid", SimpleNamespace(uuid4=lambda: SimpleNamespace(hex="5" * 32)))


def usage(candidates: int | None = None, thoughts: int = 0, prompt: int = 10) -> dict[str, Any]:
    """`usageMetadata` as Gemini restates it on each event (no candidates' count on the early ones)."""
    meta: dict[str, Any] = {"promptTokenCount": prompt, "totalTokenCount": prompt + (candidates or 0) + thoughts,
                            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
    if candidates is not None:
        meta["candidatesTokenCount"] = candidates
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    return meta


def event(text: str, meta: dict[str, Any] | None, *, finish: str | None = None, thought: bool = False,
          google: bool = True) -> bytes:
    """One event as Gemini writes it: `"key": value` with a space (`google`), CRLF line ends."""
    part: dict[str, Any] = {"text": text, **({"thought": True} if thought else {})}
    candidate: dict[str, Any] = {"content": {"parts": [part], "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    body: dict[str, Any] = {"candidates": [candidate]}
    if meta is not None:
        body["usageMetadata"] = meta
    body["modelVersion"] = "gemini-2.0-flash"
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ": ")).encode() if google else orjson.dumps(body)
    return b"data: " + raw + (b"\r\n\r\n" if google else b"\n\n")


def gemini_stream(texts: list[str], metas: list[dict[str, Any] | None], end: bool = True, **kw: Any) -> bytes:
    """The texts with their usage, then (`end`) the finish with the whole count."""
    raw = b"".join(event(text, meta, **kw) for text, meta in zip(texts, metas, strict=True))
    if end:
        raw += event("", usage(len(texts)), finish="STOP", **kw)
    return raw


def same(monkeypatch: pytest.MonkeyPatch, raw: bytes, reads: list[int]) -> tuple[int, int]:
    """`same_with_and_without_runs` for a Gemini upstream, to a chat client and to an Anthropic one."""
    same_with_and_without_runs(monkeypatch, raw, reads, kind="gemini", codec_type=messages_codec)
    same_with_and_without_runs(monkeypatch, raw, reads, kind="gemini", wants_usage=False)
    return same_with_and_without_runs(monkeypatch, raw, reads, kind="gemini")


@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("path", GEMINI, ids=[f"{p.parent.name}-{p.stem}" for p in GEMINI])
def test_recorded_streams(monkeypatch: pytest.MonkeyPatch, path: Path, reading: Any) -> None:
    raw = path.read_bytes()
    same(monkeypatch, raw, reading(raw))


TEN = [f" t{i}" for i in range(10)]
STREAMS = {
    "usage_stays": gemini_stream(TEN, [usage()] * 10),
    "lf_and_compact": gemini_stream(TEN, [usage()] * 10, google=False),
    "usage_grows": gemini_stream(TEN, [usage(i) for i in range(10)]),
    # an earlier count again after another: a template learnt at the first must not stand for the third
    "usage_goes_back": gemini_stream(TEN, [usage(1), usage(1), usage(3), usage(1), usage(1), usage(2), usage(1),
                                           usage(1), None, usage(1)]),
    "no_usage": gemini_stream(TEN, [None] * 10),
    "cut_before_the_end": gemini_stream(TEN, [usage()] * 5 + [usage(2)] * 3 + [usage()] * 2, end=False),
    "escapes_between": gemini_stream([" a", " b", ' "q"', " c", " line\nend", " d", " é", " e", "", " f"],
                                     [usage()] * 10),
    "thoughts_then_text": b"".join(event(f" think{i}", usage(thoughts=30 * i + 20), thought=True) for i in range(3))
    + gemini_stream(TEN, [usage(thoughts=80)] * 10),
    # Gemini 2.5 on: the answer's count so far on every event (one digit, then two: the bytes' length changes)
    "running_counts": gemini_stream(TEN, [usage(3 * i + 5, thoughts=40) for i in range(10)]),
    "running_counts_cut": gemini_stream(TEN, [usage(3 * i + 5) for i in range(10)], end=False),
    "running_counts_go_back": gemini_stream(TEN, [usage(5), usage(9), usage(7), None, usage(12), usage(11),
                                                  usage(0), usage(10), usage(10), usage(13)]),
    "odd_counts": gemini_stream(TEN, [usage(5), usage(6), {**usage(7), "candidatesTokenCount": "8"}, usage(9),
                                      {**usage(9), "totalTokenCount": 1.5}, usage(10), usage(11), usage(12),
                                      usage(13), usage(14)]),
}


@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("raw", STREAMS.values(), ids=list(STREAMS))
def test_synthetic_streams(monkeypatch: pytest.MonkeyPatch, raw: bytes, reading: Any) -> None:
    same(monkeypatch, raw, reading(raw))


def test_a_long_answer_is_relayed_from_its_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 text events under one usage: the first (which sends the role) and the second (which teaches the
    template) are parsed, then the finish; the rest is relayed whole in reads of many events (the finish, which
    starts as a text event does, at a read's end too), line by line in reads of one. The role goes out once."""
    raw = gemini_stream([f" tok{i}" for i in range(1000)], [usage()] * 1000)
    for reads in ([], event_ends(raw)[9::10], event_ends(raw)):
        parsed, looked = same(monkeypatch, raw, reads)
        assert parsed <= 4
        assert looked <= 4 if reads != event_ends(raw) else looked >= 998
    state = gemini.new_stream_state(None, SimpleNamespace(public_model="gw/g"))  # type: ignore[arg-type]
    codec = streaming.ChunkCodec(gemini, state, "gen-1", True)
    streaming.relay_read(codec, SSEDecoder(), raw[:event_ends(raw)[2]], streaming.Relayed())
    assert codec.template is not None and not codec.template.counts  # counts that stay are kept in its bytes
    out, error, counted, state, _ = relay(raw, [], True, kind="gemini")
    assert error is None and state.done and out.count(b'"role":"assistant"') == 1
    assert counted == sum(len(f" tok{i}") for i in range(1000))
    assert (state.usage.prompt_tokens, state.usage.completion_tokens) == (10, 1000)


def test_running_counts_keep_the_template() -> None:
    """Events whose counts differ from the template's are relayed from their bytes all the same: after every read
    (and `catch_up`, as the pipeline does before it bills) the state holds the last event's usage, as parsing
    every event would; the first event, which sends the role, teaches no template."""
    raw = STREAMS["running_counts_cut"]
    state = gemini.new_stream_state(None, SimpleNamespace(public_model="gw/g"))  # type: ignore[arg-type]
    codec = streaming.ChunkCodec(parsing := Counting(gemini), state, "gen-1", True)  # type: ignore[arg-type]
    decoder, relayed = SSEDecoder(), streaming.Relayed()
    ends = event_ends(raw)
    for i, end in enumerate(ends):
        streaming.relay_read(codec, decoder, raw[ends[i - 1] if i else 0:end], relayed)
        assert (codec.template is not None) == (i >= 1)
        assert codec.template is None or codec.template.counts  # the counts move: cut out of the template
        codec.catch_up()
        assert (state.usage.prompt_tokens, state.usage.completion_tokens) == (10, 3 * i + 5)
    assert parsing.parsed == 2 + 8  # the first two, then each read's catch-up (a read of one event each)


@pytest.mark.parametrize("counts", [("totalTokenCount",), ("candidatesTokenCount", "totalTokenCount")],
                         ids=["one_count", "two_counts"])
def test_relay_run_with_counts_is_relay_line_by_line(counts: tuple[str, ...]) -> None:
    """Reads of Gemini lines whose counts change (Gemini 2.0's total, 2.5's candidates' and total), mutated at
    random: whole, the same client bytes and count as line by line when every line matches, None when any does
    not (a count that is no JSON number included)."""
    def line(text: str, n: int) -> bytes:
        return event(text, {**usage(), **dict.fromkeys(counts, n)}, google=False)[:-2]

    raw = line(" a", 10) + b"\n\n" + line(" b", 11) + b"\n\n"  # the counts moved: cut out
    codec = streaming.ChunkCodec(gemini, gemini.new_stream_state(None, SimpleNamespace(public_model="m")),  # type: ignore[arg-type]
                                 "gen-1", True)
    streaming.relay_read(codec, SSEDecoder(), raw, streaming.Relayed())
    learnt = codec.template
    assert learnt is not None and len(learnt.counts) == len(learnt.inner) == len(counts)
    assert learnt.shortest == 4 * len(counts)
    rng = random.Random(5)
    good = [line(t, n) for t, n in ((" a", 1), (" bb", 11), ("x", 123), (" é", 7), ("  c", 99999))]
    specials = [b"0", b"00", b"07", b"-1", b"1.5", b" ", b"", b'"', b"}", *learnt.inner, learnt.tail]
    taken = 0
    for lines in mutated_reads(rng, good, specials, learnt.shortest):
        taken += run_is_line_by_line(learnt, lines, learnt.relay_run(lines))
    assert taken > 300
    for name in counts:  # each count spelt as no JSON number, or as a number that is no count: parsed
        for bad in (b"011", b"1.5", b"-1", b"", b"1e3", b" 11"):
            wrong = good[1].replace(b'"' + name.encode() + b'":11', b'"' + name.encode() + b'":' + bad)
            assert wrong != good[1] and learnt.relay(wrong, []) is None
            assert learnt.relay_run([*good, *good[:2], wrong]) is None
    assert learnt.relay_run(good[:4] * 2) is not None


async def test_a_cut_stream_is_billed_the_last_count_relayed(odd: tuple[Gateway, RawUpstream]) -> None:  # noqa: F811
    """Through the gateway: a Gemini 2.5 stream (the answer's count so far on every event) that fails after its
    eighth event is billed that event's count, though only the first two were parsed (the rest relayed from their
    bytes, their counts read again before the bill: `StreamCodec.catch_up`)."""
    gw, up = odd
    up.answer = sse(*(gemini_chunk(f" w{i}", 10 * (i + 1)) for i in range(8)), gemini_error_tail())
    before, _, _ = await ledger(gw)
    stream = await gw.openai().chat.completions.create(model=MODELS["gemini"], messages=MESSAGES, max_tokens=500,
                                                       stream=True)  # type: ignore[arg-type]
    text = ""
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
    assert text == "".join(f" w{i}" for i in range(8))
    balance, usage, held = await ledger(gw)
    route = gw.app[RUNTIME].snapshot.catalog.routes[MODELS["gemini"]]
    assert billing.estimate_tokens(len(text)) < 80  # the count, not the text relayed, is what bills
    assert held == 0 and before - balance == usage == billing.token_cost(
        route.price, Usage(prompt_tokens=10, completion_tokens=80))


async def test_a_client_that_leaves_is_billed_the_last_count_relayed(odd: tuple[Gateway, RawUpstream]) -> None:  # noqa: F811
    """The same stream, open and silent after its eighth event, which the client leaves: no event is parsed after
    the eighth, and the bill (499) still holds its count (the pipeline's `catch_up` before it bills)."""
    gw, up = odd
    up.answer, up.hold = sse(*(gemini_chunk(f" w{i}", 10 * (i + 1)) for i in range(8))), asyncio.Event()
    before, _, _ = await ledger(gw)
    stream = await gw.openai().chat.completions.create(model=MODELS["gemini"], messages=MESSAGES, max_tokens=500,
                                                       stream=True)  # type: ignore[arg-type]
    text = ""
    async for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        if text.endswith(" w7"):
            break
    await stream.close()
    try:
        for _ in range(100):  # the gateway sees the client gone at its next keep-alive (0.2 s)
            await asyncio.sleep(0.05)
            balance, usage, held = await ledger(gw)
            if not held:
                break
    finally:
        up.hold.set()
    route = gw.app[RUNTIME].snapshot.catalog.routes[MODELS["gemini"]]
    assert held == 0 and before - balance == usage == billing.token_cost(
        route.price, Usage(prompt_tokens=10, completion_tokens=80))
