"""OpenAI request fields that Claude and Gemini models handle differently from OpenAI's own models.

`response_format` on Claude becomes a forced tool whose input is the answer (the request side, then that
tool's call read back as the message content, non-streamed and streamed, from the recorded tool-use wire
shapes); the fields no translation can honour (`logprobs`, `top_logprobs`, legacy `functions` /
`function_call`) are refused with the field named, on both kinds, while values that ask for nothing pass.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from typing import Any

import orjson
import pytest
from fakes.anthropic_upstream import WIRE, forced_tool_answer, forced_tool_events
from jsonschema import Draft202012Validator

from providers import anthropic, gemini
from providers.anthropic_request import JSON_TOOL
from providers.framing import SSEDecoder
from providers.types import ChatRequest, ProviderError, Target, Untranslatable

SHARED = WIRE.parents[1]
CLAUDE = Target(provider="anthropic", base_url="https://api.anthropic.com", api_key="k",
                upstream_model="claude-sonnet-4-5", public_model="claude/sonnet")
OLD_CLAUDE = replace(CLAUDE, upstream_model="claude-sonnet-4-0")  # before Claude's structured outputs
GEMINI = Target(provider="google", base_url="https://generativelanguage.googleapis.com", api_key="k",
                upstream_model="gemini-2.5-flash", public_model="google/flash")
HI = {"role": "user", "content": "Name a person."}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]


@cache
def validator(root: str) -> Draft202012Validator:
    bundle = json.loads((SHARED / "openai-schemas.json").read_text())
    return Draft202012Validator({"$schema": bundle["$schema"], "$defs": bundle["$defs"], "$ref": f"#/$defs/{root}"})


def sent(body: dict[str, Any], target: Target = CLAUDE, stream: bool = False) -> dict[str, Any]:
    adapter = anthropic if target.provider == "anthropic" else gemini
    upstream = adapter.build_request(ChatRequest(body=body, stream=stream), target)
    return dict(orjson.loads(upstream.body))


# -- request: response_format as a forced tool -----------------------------------------------------

# (client fields besides messages, names of the tools sent, tool_choice sent)
FORMAT_CASES: dict[str, tuple[dict[str, Any], list[str] | None, dict[str, Any] | None]] = {
    "json_schema_alone_forces_the_tool": ({"response_format": JSON_SCHEMA}, [JSON_TOOL],
                                          {"type": "tool", "name": JSON_TOOL}),
    "json_object_alone_forces_the_tool": ({"response_format": {"type": "json_object"}}, [JSON_TOOL],
                                          {"type": "tool", "name": JSON_TOOL}),
    "text_asks_for_nothing": ({"response_format": {"type": "text"}}, None, None),
    "own_tools_auto_any_of_all": ({"response_format": JSON_SCHEMA, "tools": TOOLS}, ["f", JSON_TOOL],
                                  {"type": "any"}),
    "own_tools_explicit_auto_no_parallel": (
        {"response_format": JSON_SCHEMA, "tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False},
        ["f", JSON_TOOL], {"type": "any", "disable_parallel_tool_use": True}),
    "own_tools_none_forces_the_tool": ({"response_format": JSON_SCHEMA, "tools": TOOLS, "tool_choice": "none"},
                                       ["f", JSON_TOOL], {"type": "tool", "name": JSON_TOOL}),
    "own_tools_required_is_a_tool_call": (
        {"response_format": JSON_SCHEMA, "tools": TOOLS, "tool_choice": "required"}, ["f"], {"type": "any"}),
    "own_tools_named_is_that_call": (
        {"response_format": JSON_SCHEMA, "tools": TOOLS,
         "tool_choice": {"type": "function", "function": {"name": "f"}}}, ["f"], {"type": "tool", "name": "f"}),
}


@pytest.mark.parametrize(("fields", "names", "choice"), FORMAT_CASES.values(), ids=list(FORMAT_CASES))
def test_response_format_becomes_a_forced_tool(fields: dict[str, Any], names: list[str] | None,
                                               choice: dict[str, Any] | None) -> None:
    body = sent({"messages": [HI], **fields})
    assert ([tool["name"] for tool in body["tools"]] if "tools" in body else None) == names
    assert body.get("tool_choice") == choice
    assert "response_format" not in body
    schemas = {tool["name"]: tool["input_schema"] for tool in body.get("tools", [])}
    if JSON_TOOL in schemas:
        fmt = fields["response_format"]
        assert schemas[JSON_TOOL] == (SCHEMA if fmt["type"] == "json_schema" else {"type": "object"})
        (tool,) = (tool for tool in body["tools"] if tool["name"] == JSON_TOOL)
        assert tool.get("strict") is (True if fmt["type"] == "json_schema" else None)  # JSON_SCHEMA is strict


STRICT_TOOLS = [{"type": "function", "function": {**TOOLS[0]["function"], "strict": True}}]


def test_strict_tools_and_schemas_stay_strict() -> None:
    """OpenAI's `strict: true` promises an answer that follows the schema: Claude's strict tool keeps it."""
    body = sent({"messages": [HI], "tools": STRICT_TOOLS})
    assert body["tools"] == [{"name": "f", "input_schema": TOOLS[0]["function"]["parameters"], "strict": True}]
    loose = {**JSON_SCHEMA, "json_schema": {**JSON_SCHEMA["json_schema"], "strict": False}}
    assert [tool.get("strict") for tool in sent({"messages": [HI], "response_format": loose, "tools": TOOLS},
                                                 OLD_CLAUDE)["tools"]] == [None, None]


@pytest.mark.parametrize("fields", [{"response_format": JSON_SCHEMA}, {"tools": STRICT_TOOLS}],
                         ids=["response_format", "tools"])
@pytest.mark.parametrize("model", ["claude-sonnet-4-0", "claude-3-7-sonnet-20250219", "claude-opus-4-1-20250805",
                                   "claude-sonnet-4-20250514"])
def test_a_strict_schema_goes_to_an_older_claude_as_an_ordinary_tool(fields: dict[str, Any], model: str) -> None:
    """Claude before 4.5 has no strict tools and refuses the field: it gets the schema as a tool, as always."""
    body = sent({"messages": [HI], **fields}, replace(CLAUDE, upstream_model=model))
    assert body["tools"] and all("strict" not in tool for tool in body["tools"])


@pytest.mark.parametrize("model", ["claude-sonnet-4-5-20250929", "claude-haiku-4-5", "claude-opus-4-6", "claude-opus-5",
                                   "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-latest"])
def test_claude_45_and_later_take_strict_tools(model: str) -> None:
    body = sent({"messages": [HI], "response_format": JSON_SCHEMA}, replace(CLAUDE, upstream_model=model))
    assert body["tools"][0]["strict"] is True


def test_the_tool_says_what_it_is_for() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "description": "one person", "schema": SCHEMA}}
    (tool,) = sent({"messages": [HI], "response_format": fmt})["tools"]
    assert "person" in tool["description"] and "one person" in tool["description"]


BAD_FORMATS = {
    "json_schema_without_spec": {"type": "json_schema"},
    "schema_not_an_object": {"type": "json_schema", "json_schema": {"name": "x", "schema": "string"}},
    "unknown_type": {"type": "xml"},
    "not_an_object": "json",
}


@pytest.mark.parametrize("fmt", BAD_FORMATS.values(), ids=list(BAD_FORMATS))
def test_unreadable_response_format_is_refused(fmt: Any) -> None:
    with pytest.raises(Untranslatable, match="response_format") as info:
        sent({"messages": [HI], "response_format": fmt})
    assert info.value.param == "response_format"


def test_a_client_tool_of_the_reserved_name_is_refused() -> None:
    tools = [{"type": "function", "function": {"name": JSON_TOOL}}]
    with pytest.raises(Untranslatable, match="reserved") as info:
        sent({"messages": [HI], "response_format": {"type": "json_object"}, "tools": tools})
    assert info.value.param == "tools"
    assert sent({"messages": [HI], "tools": tools})["tools"][0]["name"] == JSON_TOOL  # without response_format: fine


# -- answers: the tool's input is the content -------------------------------------------------------


def test_non_streamed_answer_is_the_tools_input_as_content() -> None:
    person = {"name": "Ada", "age": 36}
    result = anthropic.parse_response(orjson.dumps(forced_tool_answer(JSON_TOOL, person)), CLAUDE)
    validator("CreateChatCompletionResponse").validate(result.body)
    (choice,) = result.body["choices"]
    assert json.loads(choice["message"]["content"]) == person
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"
    recorded = json.loads((WIRE / "sdk-messages-tool-use.response.json").read_text())
    assert result.usage.completion_tokens == recorded["usage"]["output_tokens"]


def test_non_streamed_answer_beside_a_client_tool_call() -> None:
    """`any` over both: a call of the client's own tool stays a tool call."""
    result = anthropic.parse_response(orjson.dumps(forced_tool_answer("get_weather", None)), CLAUDE)
    (choice,) = result.body["choices"]
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert choice["message"]["content"] is None and choice["finish_reason"] == "tool_calls"


def stream(events: list[bytes]) -> tuple[list[dict[str, Any]], Any]:
    state = anthropic.new_stream_state(ChatRequest(body={}, stream=True), CLAUDE)
    decoder, chunks = SSEDecoder(), []
    for raw in events:
        for event in decoder.feed(raw):
            chunks.extend(anthropic.parse_stream_event(state, event))
    return chunks, state


@pytest.mark.parametrize("tool_input", [None, {"name": "Ada", "age": 36}], ids=["recorded_input", "given_input"])
def test_streamed_answer_is_the_tools_input_as_content(tool_input: dict[str, Any] | None) -> None:
    chunks, state = stream(forced_tool_events(JSON_TOOL, tool_input))
    for chunk in chunks:
        validator("CreateChatCompletionStreamResponse").validate(chunk)
    choices = [choice for chunk in chunks for choice in chunk["choices"]]
    assert not any("tool_calls" in choice["delta"] for choice in choices)
    content = "".join(choice["delta"].get("content") or "" for choice in choices)
    assert json.loads(content) == (tool_input or {"location": "Paris"})  # the recording's fragments spell that
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["stop"]
    assert state.finish_reason == "stop" and state.usage.completion_tokens == 65


def test_streamed_answer_without_input_fragments_is_an_empty_object() -> None:
    events = [e for e in forced_tool_events(JSON_TOOL, None) if b"input_json_delta" not in e]
    chunks, _ = stream(events)
    content = "".join(c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"])
    assert content == "{}"


def test_streamed_client_tool_call_is_still_a_tool_call() -> None:
    chunks, state = stream(forced_tool_events("get_weather", None))
    calls = [call for chunk in chunks for c in chunk["choices"] for call in c["delta"].get("tool_calls") or ()]
    assert calls[0]["function"]["name"] == "get_weather" and state.finish_reason == "tool_calls"


# -- fields no translation can honour --------------------------------------------------------------

REFUSED = {
    "logprobs": {"logprobs": True},
    "top_logprobs": {"top_logprobs": 3},
    "functions": {"functions": [{"name": "f", "parameters": {"type": "object"}}]},
    "function_call": {"function_call": {"name": "f"}},
    "logit_bias": {"logit_bias": {"50256": -100}},
    "web_search_options": {"web_search_options": {}},
    "moderation": {"moderation": {"model": "omni-moderation-latest"}},
    "modalities": {"modalities": ["text", "audio"]},
}


@pytest.mark.parametrize("target", [CLAUDE, GEMINI], ids=["anthropic", "gemini"])
@pytest.mark.parametrize("fields", REFUSED.values(), ids=list(REFUSED))
def test_fields_without_translation_are_refused_by_name(target: Target, fields: dict[str, Any]) -> None:
    (name,) = fields
    with pytest.raises(Untranslatable, match=f"'{name}'") as info:
        sent({"messages": [HI], **fields}, target)
    assert info.value.param == name
    assert isinstance(info.value, ProviderError)  # what the pipeline turns into 400 untranslatable


@pytest.mark.parametrize("target", [CLAUDE, GEMINI], ids=["anthropic", "gemini"])
def test_fields_that_ask_for_nothing_pass(target: Target) -> None:
    body = sent({"messages": [HI], "logprobs": False, "top_logprobs": 0, "functions": [], "function_call": None,
                 "logit_bias": {}, "web_search_options": None, "moderation": None, "modalities": ["text"]}, target)
    assert not {"logprobs", "top_logprobs", "functions", "function_call", "logit_bias", "web_search_options",
                "moderation", "modalities"} & set(body)


def test_a_model_that_drops_logprobs_is_not_refused() -> None:
    """An operator's `params.drop` of the field is a decision to ignore it: dropped before the check."""
    for target in (replace(CLAUDE, drop=("logprobs",)), replace(GEMINI, drop=("logprobs",))):
        assert "logprobs" not in sent({"messages": [HI], "logprobs": True}, target)
