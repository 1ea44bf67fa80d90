"""gateway.streaming's relay of OpenAI-kind streams: the bytes-level shortcut must change nothing.

A stream's content-only chunks are relayed from their bytes once a template was learnt (see
`gateway.template.Template`). Every test here relays the same upstream bytes twice, read the same way: once as
the gateway does and once with learning switched off (every event parsed and encoded), and requires the
same client bytes, the same error at the same place, the same text count for the bill and the same
stream state. The upstream bytes are the recorded OpenAI streams and synthetic ones built to hit every
way out of the shortcut: escapes, non-ASCII and invalid UTF-8 text, control characters, fields that
change mid-stream, a second "content" key, events after [DONE], spaced JSON.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from gateway import streaming
from gateway.endpoints import CompletionCodec
from gateway.messages import PROMPT_COUNTS, REWRITTEN, MessagesCodec, NativeCodec
from gateway.template import Template
from providers import anthropic, openai, registry
from providers.framing import SSEDecoder
from providers.types import REASONING_FIELDS, ChatRequest, StreamState, Target

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RECORDED = sorted((SHARED / "wire" / "openai").glob("sdk-stream-*.sse"))
BILLING = {"request_cost": "0.000001", "balance": "1.00"}


def chunk(text: str | None = None, *, finish: str | None = None, delta: dict[str, Any] | None = None,
          spaced: bool = False, **top: Any) -> bytes:
    """One upstream event as an OpenAI-compatible server writes it."""
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
                            "model": "gpt-4o-mini", "system_fingerprint": "fp_1"}
    body.update(top)
    if "choices" not in top:
        body["choices"] = [{"index": 0, "delta": delta if delta is not None else {"content": text},
                            "logprobs": None, "finish_reason": finish}]
    raw = json.dumps(body, ensure_ascii=False).encode() if spaced else orjson.dumps(body)
    return b"data: " + raw + b"\n\n"


def stream(texts: list[str], spaced: bool = False) -> bytes:
    """A whole stream: the role chunk, one chunk a text, the finish, usage, [DONE]."""
    n = len(texts)
    role = chunk(delta={"role": "assistant", "content": "", "refusal": None}, spaced=spaced)
    usage = chunk(choices=[], usage={"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n})
    body = b"".join(chunk(t, spaced=spaced) for t in texts)
    return role + body + chunk(delta={}, finish="stop", spaced=spaced) + usage + b"data: [DONE]\n\n"


def relay(raw: bytes, reads: list[int], learn: bool, codec_type: type = streaming.ChunkCodec,
          wants_usage: bool = True, hide_reasoning: bool = False,
          kind: str = "openai") -> tuple[bytes, str | None, int, StreamState, int]:
    """Client bytes, error, text bytes counted, final state and events parsed, for `raw` read in pieces
    that end at `reads`, from an upstream of `kind`."""
    adapter = Counting(registry.get(kind))
    state = adapter.new_stream_state(ChatRequest(body={}, stream=True), CLAUDE) if kind != "openai" \
        else StreamState(public_model="gw/model")
    if kind == "gemini":
        state.response_id = "gen-gemini"  # (random: the same in every relay of one test)
    codec = codec_type(adapter, state, "gen-42", wants_usage, hide_reasoning)
    if not learn:
        codec.learning = 0
    out, error, text_bytes = relay_reads(codec, raw, reads)
    return out, error, text_bytes, codec.state, adapter.parsed


class Counting:
    """An adapter that counts the events it parses."""

    def __init__(self, adapter: Any) -> None:
        self.adapter, self.parsed = adapter, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.adapter, name)

    def parse_stream_event(self, state: StreamState, event: Any) -> list[Any]:
        self.parsed += 1
        return self.adapter.parse_stream_event(state, event)  # type: ignore[no-any-return]


def relay_reads(codec: Any, raw: bytes, reads: list[int]) -> tuple[bytes, str | None, int]:
    """`raw` through `codec` in reads that end at `reads` (then an empty read, the end): the client's bytes with
    the held tail, the error that stopped it, and the text bytes counted."""
    decoder, relayed = SSEDecoder(), streaming.Relayed()
    out, error, start = bytearray(), None, 0
    for end in [*reads, len(raw), None]:
        data = raw[start:end] if end is not None else b""
        start = end or start
        batch, broken = streaming.relay_read(codec, decoder, data, relayed)
        out += batch
        if broken is not None:
            error = str(broken)
            break
        if codec.state.done:
            break
    codec.catch_up()  # as the pipeline does before it bills from the state
    if error is None:
        out += codec.finish(BILLING, False, codec.state.usage)
    return bytes(out), error, relayed.text_bytes


def same_either_way(raw: bytes, reads: list[int], **kw: Any) -> int:
    """Relay with and without the shortcut; returns the events the shortcut run parsed."""
    fast = relay(raw, reads, True, **kw)
    slow = relay(raw, reads, False, **kw)
    assert fast[:4] == slow[:4]
    return fast[4]


def event_ends(raw: bytes) -> list[int]:
    """Where each event ends (LF line ends, or Gemini's CRLF)."""
    return [match.end() for match in re.finditer(rb"\r\n\r\n|\n\n", raw)]


READINGS: dict[str, Callable[[bytes], list[int]]] = {
    "whole": lambda raw: [],
    "per_event": event_ends,
    "every_7": lambda raw: list(range(7, len(raw), 7)),
    "every_500": lambda raw: list(range(500, len(raw), 500)),
    "random": lambda raw: sorted(random.Random(len(raw)).sample(range(1, len(raw)), min(40, len(raw) - 1))),
}


@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_recorded_streams_relay_identically(path: Path, reading: Callable[[bytes], list[int]]) -> None:
    raw = path.read_bytes()
    same_either_way(raw, reading(raw))


TEXTS = {
    "ascii": [" Hello", ",", " world", "!"] * 5,
    "x_and_y": ["x", "y", "x", "xy"] * 4,  # the learning probe's own letters
    "escapes": [" a", ' "quoted"', " back\\slash", " line\nend", " tab\there", " a", " b"],
    "non_ascii": [" café", " 日本語", " emoji 🎉", " a", " naïve", " ok"] * 3,
    "u2028": [" a", " sep\u2028arator", " b", " c"],
    "long": [" " + "w" * 5000, " short", " " + "é" * 3000, " end"],
    "empty_text": [" a", "", " b", "", " c"],
}


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("texts", TEXTS.values(), ids=list(TEXTS))
def test_synthetic_streams_relay_identically(texts: list[str], reading: Callable[[bytes], list[int]],
                                             spaced: bool) -> None:
    raw = stream(texts, spaced=spaced)
    same_either_way(raw, reading(raw))
    same_either_way(raw, reading(raw), codec_type=CompletionCodec)
    same_either_way(raw, reading(raw), wants_usage=False)


def test_the_shortcut_carries_a_long_stream() -> None:
    """A 1,000-chunk stream parses only the events around its content chunks (the role chunk, the one
    the template is learnt from, the finish, usage, [DONE]), whichever way it is read."""
    raw = stream([f" tok{i}" for i in range(1000)])
    for reading in READINGS.values():
        assert same_either_way(raw, reading(raw)) <= 6
    assert relay(raw, event_ends(raw), False)[4] == 1004


COMPANIONS = {  # what compatible servers put next to the text on every chunk
    "role_on_every_chunk": {"role": "assistant"},  # OpenRouter, some vLLM builds
    "null_reasoning": {"reasoning_content": None},  # DeepSeek
    "null_refusal_and_calls": {"refusal": None, "tool_calls": None},
    "empty_reasoning": {"reasoning_content": ""},
    "null_reasoning_named_reasoning": {"reasoning": None},  # OpenRouter
    "empty_reasoning_named_reasoning": {"reasoning": ""},
}


@pytest.mark.parametrize("hide", [False, True], ids=["shown", "reasoning_hidden"])
@pytest.mark.parametrize("companion", COMPANIONS.values(), ids=list(COMPANIONS))
def test_chunks_with_fixed_companions_of_the_text_take_the_shortcut(companion: dict[str, Any], hide: bool) -> None:
    texts = [f" t{i}" for i in range(200)]
    raw = chunk(delta={"role": "assistant", "content": ""}) + b"".join(chunk(delta={"content": t, **companion})
                                                                         for t in texts)
    raw += chunk(delta={}, finish="stop") + b"data: [DONE]\n\n"
    for reading in READINGS.values():
        fast = relay(raw, reading(raw), True, hide_reasoning=hide)
        assert fast[:4] == relay(raw, reading(raw), False, hide_reasoning=hide)[:4]
        assert fast[4] <= 5


@pytest.mark.parametrize("hide", [False, True], ids=["shown", "reasoning_hidden"])
@pytest.mark.parametrize("field", REASONING_FIELDS)
def test_a_chunk_with_more_text_than_its_content_teaches_nothing(field: str, hide: bool) -> None:
    """Reasoning next to the content counts for the bill too, under either name and hidden or not: such
    chunks are parsed one by one (a template learnt from one would relay the next without its reasoning's
    bytes counted)."""
    raw = b"".join(chunk(delta={"content": f" t{i}", field: " r"}) for i in range(20))
    raw += chunk(delta={}, finish="stop") + b"data: [DONE]\n\n"
    fast = relay(raw, [], True, hide_reasoning=hide)
    assert fast[:4] == relay(raw, [], False, hide_reasoning=hide)[:4]
    assert fast[2] == sum(len(f" t{i}") for i in range(20)) + 20 * len(" r")
    assert fast[4] == 22


def client_chunks(out: bytes) -> list[dict[str, Any]]:
    """The chat chunks a client got (no [DONE])."""
    return [orjson.loads(block.removeprefix(b"data: ")) for block in out.split(b"\n\n")
            if block.startswith(b"data: {")]


@pytest.mark.parametrize("hide", [False, True], ids=["shown", "reasoning_hidden"])
@pytest.mark.parametrize("names", [("reasoning_content",), ("reasoning",), REASONING_FIELDS],
                         ids=["deepseek", "openrouter_ollama", "vllm_both"])
def test_reasoning_deltas_under_either_name(names: tuple[str, ...], hide: bool) -> None:
    """Reasoning streamed as `reasoning_content` or `reasoning` (vLLM sends both, the same text), before and
    after content chunks the shortcut relays: shown, it goes out under the upstream's name(s) and never as
    content; hidden (`reasoning.exclude`), no client chunk holds it; either way it counts once for the bill."""
    thoughts = [f" thought{i}" for i in range(6)]
    texts = [f" t{i}" for i in range(10)]

    def thinking(parts: list[str]) -> bytes:
        return b"".join(chunk(delta=dict.fromkeys(names, part)) for part in parts)

    raw = chunk(delta={"role": "assistant", "content": ""}) + thinking(thoughts[:3])
    raw += b"".join(chunk(t) for t in texts) + thinking(thoughts[3:]) + chunk(" end")
    raw += chunk(delta={}, finish="stop") + b"data: [DONE]\n\n"
    for reading in READINGS.values():
        fast = relay(raw, reading(raw), True, hide_reasoning=hide)
        assert fast[:4] == relay(raw, reading(raw), False, hide_reasoning=hide)[:4]
        assert fast[2] == len("".join(thoughts + texts + [" end"]))
        deltas = [c["choices"][0]["delta"] for c in client_chunks(fast[0]) if c["choices"]]
        assert "".join(d.get("content") or "" for d in deltas) == "".join(texts) + " end"
        seen = {name: "".join(d[name] for d in deltas if name in d) for name in REASONING_FIELDS}
        shown = "".join(thoughts)
        assert seen == {name: shown if name in names and not hide else "" for name in REASONING_FIELDS}


@pytest.mark.parametrize("bad", [b"\t", b"\x01", b"\xff\xfe", b"\xc3"], ids=["tab", "control", "bad_utf8", "cut_utf8"])
def test_unreadable_text_fails_where_parsing_fails(bad: bytes) -> None:
    """Raw control characters and invalid UTF-8 inside a string are no JSON: the same frames reach the
    client before the same error, shortcut or not."""
    good = b"".join(chunk(f" t{i}") for i in range(5))
    raw = chunk(delta={"role": "assistant", "content": ""}) + good + chunk(" BAD").replace(b"BAD", bad) + good
    for reading in READINGS.values():
        fast, slow = relay(raw, reading(raw), True), relay(raw, reading(raw), False)
        assert fast[:4] == slow[:4]
        assert fast[1] is not None


CHANGES = {
    "id_changes": lambda i: {"id": "chatcmpl-2"} if i > 5 else {},
    "model_changes": lambda i: {"model": "gpt-4o"} if i > 5 else {},
    "created_changes": lambda i: {"created": 1700000000 + i},
    "fingerprint_null_later": lambda i: {"system_fingerprint": None} if i % 3 else {},
    "usage_null_on_every_chunk": lambda i: {"usage": None},
    "a_padding_field_of_varying_length": lambda i: {"obfuscation": "p" * (i % 4)},
    "second_content_key": lambda i: {"note": {"content": f" t{i}"}},
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=list(CHANGES))
def test_chunks_that_differ_beyond_the_text_are_parsed(change: Callable[[int], dict[str, Any]]) -> None:
    texts = [f" t{i % 3}" for i in range(12)]
    raw = chunk(delta={"role": "assistant", "content": ""})
    raw += b"".join(chunk(t, **change(i)) for i, t in enumerate(texts))
    raw += chunk(delta={}, finish="stop") + b"data: [DONE]\n\n"
    for reading in READINGS.values():
        same_either_way(raw, reading(raw))


def test_tool_call_and_reasoning_streams_relay_identically() -> None:
    call = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "f", "arguments": ""}}]}
    args = [{"tool_calls": [{"index": 0, "function": {"arguments": part}}]} for part in ('{"a"', ': 1', "}")]
    reasoning = [{"reasoning_content": part} for part in ("think", "ing")]
    raw = b"".join(chunk(delta=d) for d in [*reasoning, {"content": "a"}, {"content": "b"}, call, *args])
    raw += chunk(delta={}, finish="tool_calls") + b"data: [DONE]\n\n"
    for reading in READINGS.values():
        same_either_way(raw, reading(raw))


def messages_codec(adapter: Any, state: StreamState, generation_id: str, wants_usage: bool,
                   hide_reasoning: bool) -> MessagesCodec:
    """What /v1/messages streams from an OpenAI-kind model: the chat codec's chunks as Anthropic events."""
    chat = streaming.ChunkCodec(adapter, state, generation_id, True, hide_reasoning)
    return MessagesCodec(chat, "gw/model", None, 12)


@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("texts", TEXTS.values(), ids=list(TEXTS))
def test_translated_messages_streams_relay_identically(texts: list[str], reading: Callable[[bytes], list[int]]) -> None:
    raw = stream(texts)
    same_either_way(raw, reading(raw), codec_type=messages_codec)


def test_a_translated_template_holds_only_while_its_text_block_is_open() -> None:
    """Text, a tool call, text again, reasoning, text: each text block gets its own index, its own
    content_block_start, and the deltas inside it come from bytes once learnt; the client gets the same
    events, byte for byte, as when every chunk is parsed."""
    call = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "f", "arguments": ""}}]}
    args = [{"tool_calls": [{"index": 0, "function": {"arguments": part}}]} for part in ('{"a"', "}")]
    texts = [{"content": f" t{i}"} for i in range(8)]
    deltas = [*texts, call, *args, *texts, {"reasoning_content": "hm"}, *texts]
    raw = b"".join(chunk(delta=d) for d in deltas) + chunk(delta={}, finish="stop") + b"data: [DONE]\n\n"
    for reading in READINGS.values():
        parsed = same_either_way(raw, reading(raw), codec_type=messages_codec)
        assert parsed <= len(deltas) - 12  # most of the 24 text chunks were relayed from their bytes
    out = relay(raw, [], True, codec_type=messages_codec)[0]
    starts = [orjson.loads(line[6:]) for line in out.split(b"\n")
              if line.startswith(b'data: {"type":"content_block_start"')]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [
        (0, "text"), (1, "tool_use"), (2, "text"), (3, "thinking"), (4, "text")]
    assert out.count(b'"index":2,"delta":{"type":"text_delta"') == 8


def test_events_after_done_are_not_relayed() -> None:
    raw = stream([" a", " b", " c"]) + b"".join(chunk(f" late{i}") for i in range(5))
    assert b"late" not in relay(raw, [], True)[0]
    same_either_way(raw, [])


def test_a_template_needs_its_text_cut_out_exactly() -> None:
    """Learning refuses a chunk whose text cannot be told apart from the rest of its bytes."""
    codec = streaming.ChunkCodec(openai, StreamState(public_model="m"), "gen-1", True)

    def learn(raw: bytes) -> Template | None:
        [event] = SSEDecoder().feed(raw)
        [parsed] = openai.parse_stream_event(StreamState(public_model="m"), event)
        parsed["id"] = "gen-1"
        text = parsed["choices"][0]["delta"].get("content")
        return Template.learn(event.data, parsed, text, codec.encode, openai.TEXT_AT)

    assert learn(chunk(" hi")) is not None
    assert learn(chunk(" hi", note={"content": " hi"})) is None  # twice there: which one?
    assert learn(chunk(' "hi"')) is None  # escaped in the upstream's bytes
    spaced = learn(chunk(" hi", spaced=True))  # `"content": "` with a space, as Google writes JSON
    assert spaced is not None and spaced.head.endswith(b'"content": "')
    assert learn(chunk(" hi", spaced=True, note={"content": " hi"})) is None  # spaced and twice there


# -- Anthropic upstreams on the Anthropic format: relayed as they came ------------------------------

ANTHROPIC = sorted(p for p in (SHARED / "wire" / "anthropic").glob("*stream*.sse") if "error" not in p.name)
CLAUDE = Target(provider="anthropic", base_url="https://api.anthropic.com", api_key="k",
                upstream_model="claude-haiku-4-5", public_model="anthropic/claude-haiku-4-5")


@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("path", ANTHROPIC, ids=[p.stem for p in ANTHROPIC])
def test_native_claude_events_reach_the_client_as_they_came(path: Path, reading: Callable[[bytes], list[int]]) -> None:
    """Events the gateway changes nothing in go out as the upstream's bytes; message_start carries the
    gateway's id and model, message_delta the bill and message_start's prompt counts where it lacks them (what
    LangChain's ChatAnthropic reads a stream's usage from); the JSON of every event is the upstream's otherwise."""
    raw = path.read_bytes()
    codec = NativeCodec(CLAUDE, "gen-7")
    decoder, relayed, out, start = SSEDecoder(), streaming.Relayed(), bytearray(), 0
    for end in [*reading(raw), len(raw), None]:
        batch, broken = streaming.relay_read(codec, decoder, raw[start:end] if end is not None else b"", relayed)
        assert broken is None
        out += batch
        start = end or start
    out += codec.finish(BILLING, False, codec.state.usage)
    upstream_decoder = SSEDecoder()
    sent = upstream_decoder.feed(raw) + upstream_decoder.flush()  # a recording may end without a blank line
    got = SSEDecoder().feed(bytes(out))
    assert [e.event for e in got] == [e.event for e in sent]
    prompt: dict[str, Any] = {}
    for upstream, client in zip(sent, got, strict=True):
        theirs, ours = orjson.loads(upstream.data), orjson.loads(client.data)
        if upstream.event == "message_start":
            theirs["message"].update(id="gen-7", model="anthropic/claude-haiku-4-5")
            prompt = {k: v for k, v in theirs["message"].get("usage", {}).items() if k in PROMPT_COUNTS}
        elif upstream.event == "message_delta":
            theirs["billing"] = BILLING
            if "usage" in theirs:
                theirs["usage"] = {**prompt, **theirs["usage"]}
        elif upstream.event not in REWRITTEN:
            assert b"data: " + upstream.data + b"\n\n" in out  # its own bytes
        assert ours == theirs
    state = anthropic.new_stream_state(ChatRequest(body={}, stream=True), CLAUDE)
    chunks = [c for e in sent for c in anthropic.parse_stream_event(state, e)]
    assert relayed.text_bytes == sum(map(streaming.text_bytes, chunks))


def claude_stream(texts: list[str], tool_between: bool = False) -> bytes:
    """A Claude stream as Anthropic writes it: message_start, a text block of one delta a text (and, with
    `tool_between`, a tool_use block and a second text block in the middle), message_delta, message_stop."""
    def event(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"

    def text_block(index: int, part: list[str]) -> bytes:
        return (event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                + b"".join(event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": t}})
                           for t in part) + event("content_block_stop", {"index": index}))

    start = {"message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
                         "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}}}
    raw = event("message_start", start) + event("ping", {})
    if tool_between:
        half = len(texts) // 2
        raw += text_block(0, texts[:half])
        raw += event("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "toolu_1",
                                                                          "name": "f", "input": {}}})
        raw += event("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}})
        raw += event("content_block_stop", {"index": 1}) + text_block(2, texts[half:])
    else:
        raw += text_block(0, texts)
    return raw + event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                         "usage": {"output_tokens": len(texts)}}) + event("message_stop", {})


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Claude's chunks are stamped with the time the first was made: two runs compared byte for byte must not
    fall on either side of a second."""
    monkeypatch.setattr(anthropic, "time", SimpleNamespace(time=lambda: 1_700_000_000.0))


@pytest.mark.usefixtures("fixed_clock")
@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("path", ANTHROPIC, ids=[p.stem for p in ANTHROPIC])
def test_recorded_claude_streams_on_chat_relay_identically(path: Path, reading: Callable[[bytes], list[int]]) -> None:
    """A Claude model on /v1/chat/completions: its text deltas, once one was parsed, relayed from their bytes as
    OpenAI chunks, byte for byte what parsing each would send."""
    raw = path.read_bytes()
    same_either_way(raw, reading(raw), kind="anthropic")


@pytest.mark.usefixtures("fixed_clock")
@pytest.mark.parametrize("tool_between", [False, True], ids=["one_block", "tool_between"])
@pytest.mark.parametrize("reading", READINGS.values(), ids=list(READINGS))
@pytest.mark.parametrize("texts", TEXTS.values(), ids=list(TEXTS))
def test_synthetic_claude_streams_on_chat_relay_identically(texts: list[str], reading: Callable[[bytes], list[int]],
                                                            tool_between: bool) -> None:
    raw = claude_stream(texts, tool_between)
    same_either_way(raw, reading(raw), kind="anthropic")


@pytest.mark.usefixtures("fixed_clock")
def test_a_long_claude_stream_on_chat_takes_the_shortcut() -> None:
    raw = claude_stream([f" tok{i}" for i in range(1000)])
    for reading in READINGS.values():
        assert same_either_way(raw, reading(raw), kind="anthropic") <= 10


def padded(text: str | None, pad: str, first: bool = False, **kw: Any) -> bytes:
    """A chunk as OpenAI sends it by default: `obfuscation` random characters after (or before) the rest."""
    event = orjson.loads(chunk(text, **kw)[6:])
    if first:
        event = {"obfuscation": pad, **event}
    else:
        event["obfuscation"] = pad
    return b"data: " + orjson.dumps(event) + b"\n\n"


@pytest.mark.parametrize("first", [False, True], ids=["padding_last", "padding_first"])
def test_openais_padding_is_relayed_as_it_came_and_the_shortcut_holds(first: bool) -> None:
    rng = random.Random(7)
    pads = ["".join(rng.choice("abcXYZ0189") for _ in range(rng.randint(0, 12))) for _ in range(300)]
    pads[50] = 'a"b'  # one the upstream had to escape: that chunk is parsed
    raw = padded(None, "x", first, delta={"role": "assistant", "content": ""})
    raw += b"".join(padded(f" t{i}", pad, first) for i, pad in enumerate(pads))
    raw += padded(None, "q", first, delta={}, finish="stop") + b"data: [DONE]\n\n"
    for reading in READINGS.values():
        fast, slow = relay(raw, reading(raw), True), relay(raw, reading(raw), False)
        assert fast[:4] == slow[:4]
        assert fast[4] <= 6
    assert b'"obfuscation":"' + pads[7].encode() + b'"' in fast[0]
