"""`anthropic_history.claude_history`: what the native Claude route sends of a conversation begun elsewhere.

Pure translation, no server: the blocks Claude would refuse are left out, tool ids it would refuse rewritten
alike in a call and its result, and a history that needs nothing is passed on as the very same objects (an
agent's history is hundreds of blocks, asked every turn).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from providers.anthropic_answer import GEMINI_SIGNATURE
from providers.anthropic_history import claude_history
from providers.anthropic_request import claude_tool_id


def _reference(messages: Any) -> Any:
    """The rule spelled out plainly (the module's first version): each message's blocks without ours, with
    Claude's ids; the message itself when nothing changed, left out when nothing stays."""
    if not isinstance(messages, list):
        return messages
    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            out.append(message)
            continue
        blocks = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "thinking":
                signature = block.get("signature")
                if not signature or (isinstance(signature, str) and signature.startswith(GEMINI_SIGNATURE)):
                    continue
            field = {"tool_use": "id", "tool_result": "tool_use_id"}.get(str(block.get("type"))) \
                if isinstance(block, dict) else None
            call_id = block.get(field) if field else None
            if isinstance(call_id, str) and claude_tool_id(call_id) != call_id:
                block = {**block, field: claude_tool_id(call_id)}
            blocks.append(block)
        if len(blocks) == len(content) and all(a is b for a, b in zip(blocks, content, strict=True)):
            out.append(message)
        elif blocks:
            out.append({**message, "content": blocks})
    return out


_IDS = st.sampled_from(["toolu_01A", "call_abc-1", "call:1", "gemini_x.y", "", "ид", "a b"])
_BLOCKS = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=5)}),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": st.just("t")},
                          optional={"signature": st.sampled_from(["", "sig", GEMINI_SIGNATURE + "abc", None, 3])}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "name": st.just("f"), "input": st.just({})},
                          optional={"id": st.one_of(_IDS, st.integers())}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "content": st.just("ok")},
                          optional={"tool_use_id": _IDS}),
    st.fixed_dictionaries({"type": st.sampled_from(["image", "document", "redacted_thinking", ["x"], None])}),
    st.just("a bare string"), st.none(), st.integers(),
)
_MESSAGES = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                           "content": st.one_of(st.lists(_BLOCKS, max_size=5), st.text(max_size=5), st.none())}),
    st.just("not a message")), max_size=6)  # (the handler refuses any but objects first)


@settings(max_examples=400, deadline=None)
@given(_MESSAGES)
def test_same_as_the_rule_spelled_out(messages: list[Any]) -> None:
    got, want = claude_history(messages), _reference(messages)
    assert got == want
    same = [[new is old for new, old in zip(out, messages, strict=False)] for out in (got, want)]
    assert same[0] == same[1]


def test_a_history_that_needs_nothing_is_passed_on_as_the_same_objects() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "real"},
                                                  {"type": "tool_use", "id": "toolu_01", "name": "f", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "ok"}]}]
    got = claude_history(messages)
    assert all(g is m for g, m in zip(got, messages, strict=True))


def test_ours_left_out_and_ids_rewritten_alike_in_a_call_and_its_result() -> None:
    messages = [{"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": ""},
                                                  {"type": "text", "text": "reading"},
                                                  {"type": "tool_use", "id": "call:7", "name": "f", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call:7", "content": "ok"}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "t",
                                                   "signature": GEMINI_SIGNATURE + "xyz"}]},
                {"role": "user", "content": [{"type": "text", "text": "go on"}]}]
    got = claude_history(messages)
    assert [m["role"] for m in got] == ["assistant", "user", "user"]  # the thinking-only turn is left out
    assert [b["type"] for b in got[0]["content"]] == ["text", "tool_use"]
    call_id, result_id = got[0]["content"][1]["id"], got[1]["content"][0]["tool_use_id"]
    assert call_id == result_id != "call:7"
    assert call_id.startswith("call_7_")
    assert got[2] is messages[3]
    assert messages[0]["content"][2]["id"] == "call:7"  # the client's body is not changed in place
