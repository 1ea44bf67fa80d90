"""`anthropic.delta_text_bytes`: a text or tool-input delta counted from its bytes, as parsing it would count it.

The native Claude route relays those events as they came and needs only their text's size (what a stream cut
short is billed by) and the state parsing would leave; the count must be the parsed chunk's to the byte, for any
text Claude may write (escapes, quotes, non-ASCII), and any other shape must be left to the parser.
"""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.streaming import text_bytes
from providers import anthropic
from providers.types import ChatRequest, SSEEvent, Target

CLAUDE = Target(provider="anthropic", base_url="https://api.anthropic.com", api_key="k",
                upstream_model="claude-haiku-4-5", public_model="anthropic/claude-haiku-4-5")
TEXTS = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # what JSON can carry (no lone surrogate)


def _state(tool_blocks: list[int]) -> anthropic.AnthropicStreamState:
    state = anthropic.new_stream_state(ChatRequest(body={}, stream=True), CLAUDE)
    assert isinstance(state, anthropic.AnthropicStreamState)
    for i, block in enumerate(tool_blocks):
        state.tool_index[block] = i
    return state


def _delta(index: int, kind: str, text: str) -> bytes:
    field = "text" if kind == "text_delta" else "partial_json"
    return orjson.dumps({"type": "content_block_delta", "index": index, "delta": {"type": kind, field: text}})


def _parsed(state: anthropic.AnthropicStreamState, data: bytes) -> int:
    return sum(map(text_bytes, anthropic.parse_stream_event(state, SSEEvent(data, "content_block_delta"))))


@settings(max_examples=500, deadline=None)
@given(index=st.integers(0, 4), kind=st.sampled_from(["text_delta", "input_json_delta"]), text=TEXTS,
       tool_blocks=st.lists(st.integers(0, 4), max_size=3, unique=True))
def test_counted_from_bytes_as_parsing_counts(index: int, kind: str, text: str, tool_blocks: list[int]) -> None:
    data = _delta(index, kind, text)
    fast, slow = _state(tool_blocks), _state(tool_blocks)
    counted = anthropic.delta_text_bytes(fast, data)
    assert counted is not None  # Claude's own writing of any text is taken from its bytes
    assert counted == _parsed(slow, data)
    assert fast == slow  # the tool calls that got arguments, and all else


def test_other_shapes_are_left_to_the_parser() -> None:
    state = _state([1])
    plain = _delta(0, "text_delta", "hi")
    for data in [plain.replace(b'"index":0,', b'"index": 0,'),  # spaced: another server's writing
                 b'{"index":0,"type":"content_block_delta","delta":{"type":"text_delta","text":"hi"}}',
                 _delta(0, "thinking_delta", "hm").replace(b"partial_json", b"thinking"),
                 _delta(0, "text_delta", "hi").replace(b'"text":"hi"', b'"text":"hi","citations":[]'),
                 plain.replace(b'"index":0', b'"index":01'), plain.replace(b"hi", b"h\\x"),  # JSON refuses both
                 plain.replace(b"hi", b"h\xffi"), plain.replace(b"hi", b"h\ni")]:
        assert anthropic.delta_text_bytes(state, data) is None, data
    assert anthropic.delta_text_bytes(state, plain) == 2
    state.answer_block = 1  # a response_format tool's input is the answer's content: parsed
    assert anthropic.delta_text_bytes(state, plain) is None
    state.answer_block, state.done = None, True  # after message_stop the parser counts nothing
    assert anthropic.delta_text_bytes(state, plain) is None
