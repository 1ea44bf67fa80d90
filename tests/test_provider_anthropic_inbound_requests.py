"""Anthropic Messages requests the translation used to lose or refuse: images inside tool results, assistant
turns of thinking only, structured output, `top_k` for Gemini, and tool ids Claude would refuse.

Each translated request is checked as the upstream would see it: OpenAI chat bodies validate against
OpenAI's own schema, Gemini and Anthropic bodies come out of the real adapters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from harness import validate

from gateway.messages import NativeExchange, TranslatedExchange
from providers import anthropic, anthropic_inbound, gemini, openai, registry
from providers.anthropic_request import claude_tool_id
from providers.types import ChatRequest, ProviderError, Target

ANTHROPIC = Path(__file__).resolve().parents[1].parent / "shared" / "wire" / "anthropic"
PNG = json.loads((ANTHROPIC / "request-image-base64.json").read_text())["messages"][0]["content"][1]
CLAUDE = Target(provider="claude", base_url="https://api.anthropic.com", api_key="k", upstream_model="claude-x",
                public_model="claude/x")
OPENAI = Target(provider="oai", base_url="https://api.openai.com/v1", api_key="k", upstream_model="gpt-4o",
                public_model="oai/gpt-4o")
GEMINI = Target(provider="google", base_url="https://generativelanguage.googleapis.com", api_key="k",
                upstream_model="gemini-2.0-flash", public_model="google/flash")
CLAUDE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")  # what Claude accepts as a tool_use id


def _body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 100, "messages": list(messages), **fields}


def _call(call_id: str, name: str = "screenshot") -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": {}}


def _upstream(kind: str, target: Target, body: dict[str, Any]) -> dict[str, Any]:
    """The body the translated /v1/messages route sends to an upstream of `kind`."""
    return dict(json.loads(TranslatedExchange(registry.get(kind)).build(body, target, stream=False).body))


# -- images inside tool_result -------------------------------------------------------------------------

URL_IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
TOOL_TURN = _body(
    {"role": "user", "content": "Take two screenshots."},
    {"role": "assistant", "content": [_call("toolu_1"), _call("toolu_2")]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "the desktop"}, PNG]},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": [URL_IMAGE]},
        {"type": "text", "text": "What do you see?"}]})


def test_tool_result_images_move_to_a_user_message_after_the_tool_messages() -> None:
    chat = anthropic_inbound.chat_body(TOOL_TURN)
    validate(chat, "CreateChatCompletionRequest")
    first_image = {"type": "image_url", "image_url": {
        "url": f"data:{PNG['source']['media_type']};base64,{PNG['source']['data']}"}}
    assert chat["messages"][2:] == [
        {"role": "tool", "tool_call_id": "toolu_1",
         "content": "the desktop\n[1 image(s) follow in the next user message]"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "[1 image(s) follow in the next user message]"},
        {"role": "user", "content": [
            {"type": "text", "text": "[Image(s) of the result of tool call toolu_1]"}, first_image,
            {"type": "text", "text": "[Image(s) of the result of tool call toolu_2]"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            {"type": "text", "text": "What do you see?"}]}]


def test_tool_result_images_reach_gemini_as_inline_data_after_the_function_responses() -> None:
    body = {**TOOL_TURN, "messages": [*TOOL_TURN["messages"][:2], {**TOOL_TURN["messages"][2], "content": [
        TOOL_TURN["messages"][2]["content"][0]]}]}  # the base64 image only: URLs are inlined before translation
    contents = _upstream("gemini", GEMINI, body)["contents"]
    last = contents[-1]["parts"]
    assert last[0]["functionResponse"]["name"] == "screenshot"
    assert last[1:] == [{"text": "[Image(s) of the result of tool call toolu_1]"},
                        {"inlineData": {"mimeType": PNG["source"]["media_type"], "data": PNG["source"]["data"]}}]


def test_a_tool_result_of_other_blocks_is_still_refused() -> None:
    body = _body({"role": "assistant", "content": [_call("t1")]}, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "document", "source": {}}]}]})
    with pytest.raises(ProviderError, match="text and image"):
        anthropic_inbound.chat_body(body)


# -- assistant turns of thinking only ------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [
    [{"type": "thinking", "thinking": "Let me think.", "signature": "EqQBCkYIBxgCKkA"}],
    [{"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}],
    [{"type": "thinking", "thinking": "", "signature": "s"}, {"type": "text", "text": ""}],
], ids=["thinking", "redacted", "thinking-and-empty-text"])
def test_an_assistant_turn_of_thinking_only_is_dropped(blocks: list[dict[str, Any]]) -> None:
    body = _body({"role": "user", "content": "Hi"}, {"role": "assistant", "content": blocks},
                 {"role": "user", "content": "Go on."})
    chat = anthropic_inbound.chat_body(body)
    validate(chat, "CreateChatCompletionRequest")
    assert chat["messages"] == [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Go on."}]
    contents = json.loads(gemini.build_request(ChatRequest(body=chat, stream=False), GEMINI).body)["contents"]
    assert [c["role"] for c in contents] == ["user"]  # no empty model turn: the two user turns are one


def test_the_native_route_leaves_out_a_turn_of_our_thinking_only() -> None:
    """A reasoning-only answer of another model (thinking with our empty signature) would be an assistant
    turn with no content once that block stays behind, which Claude refuses: the turn goes."""
    body = _body({"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": [{"type": "thinking", "thinking": "Hmm.", "signature": ""}]},
                 {"role": "user", "content": "Well?"})
    sent = json.loads(NativeExchange("").build(body, CLAUDE, stream=False).body)
    assert sent["messages"] == [body["messages"][0], body["messages"][2]]


# -- structured output ---------------------------------------------------------------------------------

CLOSED = {"type": "object", "properties": {"name": {"type": "string"}, "tags": {
    "type": "array", "items": {"type": "object", "properties": {"t": {"type": "string"}}, "required": ["t"],
                               "additionalProperties": False}}},
          "required": ["name", "tags"], "additionalProperties": False}
OPEN = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name"], "additionalProperties": False}


@pytest.mark.parametrize(("fields", "schema", "strict"), [
    ({"output_config": {"format": {"type": "json_schema", "schema": CLOSED}}}, CLOSED, True),
    ({"output_format": {"type": "json_schema", "schema": CLOSED}}, CLOSED, True),
    ({"output_config": {"format": {"type": "json_schema", "schema": OPEN}}}, OPEN, False),
], ids=["output_config", "beta-output_format", "optional-property"])
def test_structured_output_becomes_response_format(fields: dict[str, Any], schema: dict[str, Any],
                                                   strict: bool) -> None:
    """Strict when OpenAI's strict mode takes the schema (it refuses optional properties Claude accepts)."""
    sent = _upstream("openai", OPENAI, _body({"role": "user", "content": "Who?"}, **fields))
    validate(sent, "CreateChatCompletionRequest")
    assert sent["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": schema, "strict": strict}}
    config = _upstream("gemini", GEMINI, _body({"role": "user", "content": "Who?"}, **fields))["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert (config.get("responseSchema") or config.get("responseJsonSchema")) == schema


def test_other_output_formats_are_refused() -> None:
    with pytest.raises(ProviderError, match="json_schema"):
        anthropic_inbound.chat_body(_body({"role": "user", "content": "x"},
                                          output_config={"format": {"type": "xml"}}))
    assert "response_format" not in anthropic_inbound.chat_body(
        _body({"role": "user", "content": "x"}, output_config={"effort": "high"}))


# -- top_k ---------------------------------------------------------------------------------------------


def test_top_k_reaches_gemini_and_not_openai() -> None:
    body = _body({"role": "user", "content": "Hi"}, top_k=5, top_p=0.7)
    assert _upstream("gemini", GEMINI, body)["generationConfig"]["topK"] == 5
    sent = _upstream("openai", OPENAI, body)
    assert "top_k" not in sent and sent["top_p"] == 0.7  # OpenAI refuses an unknown top_k


# -- tool ids Claude refuses ---------------------------------------------------------------------------

FOREIGN_IDS = ["functions.get_weather:0", "call:1", "call.1", "tool 7", ""]


@pytest.mark.parametrize("call_id", FOREIGN_IDS)
def test_claude_tool_id_fits_claudes_pattern_and_is_stable(call_id: str) -> None:
    rewritten = claude_tool_id(call_id)
    assert CLAUDE_ID.match(rewritten) and claude_tool_id(call_id) == rewritten
    assert claude_tool_id(rewritten) == rewritten


def test_ids_differing_only_in_refused_characters_stay_apart() -> None:
    assert len({claude_tool_id(i) for i in ["call:1", "call.1", "call_1", "call 1"]}) == 4
    assert claude_tool_id("toolu_01A09q90qw90lq917835lq9") == "toolu_01A09q90qw90lq917835lq9"


def _history(call_id: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [_call(call_id, "get_weather")]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "18 C"}]}]


@pytest.mark.parametrize("call_id", FOREIGN_IDS[:-1])
def test_native_route_rewrites_foreign_tool_ids_in_pairs(call_id: str) -> None:
    body = _body(*_history(call_id))
    before = json.dumps(body)
    sent = json.loads(NativeExchange("").build(body, CLAUDE, stream=False).body)
    use, result = sent["messages"][1]["content"][0], sent["messages"][2]["content"][0]
    assert CLAUDE_ID.match(use["id"]) and use["id"] == result["tool_use_id"] == claude_tool_id(call_id)
    assert json.dumps(body) == before  # the client's body is not changed


def test_native_route_leaves_claudes_own_ids_and_body_alone() -> None:
    body = _body(*_history("toolu_01A09q90qw90lq917835lq9"))
    sent = json.loads(NativeExchange("").build(body, CLAUDE, stream=False).body)
    assert sent["messages"] == body["messages"]


@pytest.mark.parametrize("call_id", FOREIGN_IDS[:-1])
def test_chat_to_claude_rewrites_foreign_tool_ids_in_pairs(call_id: str) -> None:
    chat = {"model": "m", "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "18 C"}]}
    sent = json.loads(anthropic.build_request(ChatRequest(body=chat, stream=False), CLAUDE).body)
    use, result = sent["messages"][1]["content"][0], sent["messages"][2]["content"][0]
    assert CLAUDE_ID.match(use["id"]) and use["id"] == result["tool_use_id"] == claude_tool_id(call_id)


def test_openai_history_keeps_its_ids() -> None:
    """Only Claude is particular: the same history to an OpenAI-kind model keeps the ids as they were."""
    sent = json.loads(openai.build_request(ChatRequest(body=anthropic_inbound.chat_body(
        _body(*_history("functions.get_weather:0"))), stream=False), OPENAI).body)
    assert sent["messages"][1]["tool_calls"][0]["id"] == sent["messages"][2]["tool_call_id"] == \
        "functions.get_weather:0"
