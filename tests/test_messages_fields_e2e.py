"""/v1/messages to models of other kinds, with the official anthropic SDK through the running gateway, on both
stores: a `tool_choice` Anthropic refuses is refused (it was dropped, and the model chose freely), the parallel
switch reaches the upstream, and the ids Gemini gives its function calls come back to it with the calls and their
results (they were lost, so Gemini could not match a `functionResponse` to its call).
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from harness import Gateway

MESSAGES: list[Any] = [{"role": "user", "content": "What time is it?"}]
NOW_TOOL = [{"name": "now", "description": "The current time", "input_schema": {"type": "object"}}]
ALLOWED = "'auto', 'any', 'tool', 'none'"


def _sent(gateway: Gateway, model: str) -> int:
    upstreams = gateway.extra["upstreams"]
    return len((upstreams.gemini if model.startswith("google/") else upstreams.openai).requests)


@pytest.mark.parametrize("model", ["oai/gpt-4o", "google/flash"])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
async def test_an_unknown_tool_choice_is_anthropics_400(api_gateway: Gateway, claude: anthropic.AsyncAnthropic,
                                                        model: str, stream: bool) -> None:
    before = _sent(api_gateway, model)
    with pytest.raises(anthropic.BadRequestError) as info:
        await claude.messages.create(model=model, max_tokens=40, messages=MESSAGES, tools=NOW_TOOL, stream=stream,
                                     tool_choice={"type": "required"})  # type: ignore[typeddict-item]
    error = info.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and error["param"] == "tool_choice.type"
    assert "'required'" in error["message"] and ALLOWED in error["message"]
    assert _sent(api_gateway, model) == before  # refused before anything was held or sent
    with pytest.raises(anthropic.BadRequestError) as counted:
        await claude.messages.count_tokens(model=model, messages=MESSAGES, tools=NOW_TOOL,
                                           tool_choice={"type": "required"})  # type: ignore[typeddict-item]
    assert counted.value.body["error"]["param"] == "tool_choice.type"  # type: ignore[index]


@pytest.mark.parametrize("model", ["oai/gpt-4o", "google/flash"])
async def test_a_tool_choice_without_tools_is_anthropics_400(api_gateway: Gateway, claude: anthropic.AsyncAnthropic,
                                                             model: str) -> None:
    """OpenAI was sent `tool_choice` and `parallel_tool_calls: false` without `tools`, which it refuses ("only
    allowed when 'tools' are specified"); Gemini's translation dropped them. Anthropic refuses a choice that a tool
    be called without tools; `auto` without tools is served with no choice sent."""
    before = _sent(api_gateway, model)
    choice: Any = {"type": "any", "disable_parallel_tool_use": True}
    with pytest.raises(anthropic.BadRequestError) as info:
        await claude.messages.create(model=model, max_tokens=40, messages=MESSAGES, tool_choice=choice)
    error = info.value.body["error"]  # type: ignore[index]
    assert (error["type"], error["param"]) == ("invalid_request_error", "tool_choice"), error
    assert "may only be specified while providing tools" in error["message"]
    assert _sent(api_gateway, model) == before
    with pytest.raises(anthropic.BadRequestError) as counted:
        await claude.messages.count_tokens(model=model, messages=MESSAGES, tool_choice=choice)
    assert counted.value.body["error"]["param"] == "tool_choice"  # type: ignore[index]
    await claude.messages.create(model=model, max_tokens=40, messages=MESSAGES,
                                 tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert _sent(api_gateway, model) == before + 1
    if model.startswith("oai/"):
        sent = api_gateway.extra["upstreams"].openai.requests[-1].body
        assert not {"tool_choice", "parallel_tool_calls"} & sent.keys(), sent


async def test_disable_parallel_tool_use_reaches_openai(api_gateway: Gateway,
                                                        claude: anthropic.AsyncAnthropic) -> None:
    await claude.messages.create(model="oai/gpt-4o", max_tokens=40, messages=MESSAGES, tools=NOW_TOOL,
                                 tool_choice={"type": "any", "disable_parallel_tool_use": True})
    sent = api_gateway.fake.last.body
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("required", False)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
async def test_geminis_call_id_comes_back_with_the_call_and_its_result(
        api_gateway: Gateway, claude: anthropic.AsyncAnthropic, stream: bool) -> None:
    fake = api_gateway.extra["upstreams"].gemini
    fake.function_call = {"name": "now", "arguments": {"tz": "UTC"}, "id": "fc-7hq2"}
    if stream:
        async with claude.messages.stream(model="google/flash", max_tokens=40, messages=MESSAGES,
                                          tools=NOW_TOOL) as events:
            message = await events.get_final_message()
    else:
        message = await claude.messages.create(model="google/flash", max_tokens=40, messages=MESSAGES, tools=NOW_TOOL)
    [tool_use] = [block for block in message.content if block.type == "tool_use"]
    assert tool_use.name == "now" and tool_use.input == {"tz": "UTC"} and "fc-7hq2" in tool_use.id
    fake.function_call = None
    turns: list[Any] = [*MESSAGES, {"role": "assistant", "content": message.content}, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": tool_use.id, "content": '{"time": "10:00"}'}]}]
    answer = await claude.messages.create(model="google/flash", max_tokens=40, messages=turns, tools=NOW_TOOL)
    assert answer.content[-1].type == "text"
    model_turn, results = fake.last.body["contents"][1:]
    assert [part["functionCall"] for part in model_turn["parts"] if "functionCall" in part] == [
        {"name": "now", "args": {"tz": "UTC"}, "id": "fc-7hq2"}]
    assert results["parts"] == [{"functionResponse": {"id": "fc-7hq2", "name": "now", "response": {"time": "10:00"}}}]


async def test_a_gemini_call_without_an_id_sends_none_back(api_gateway: Gateway,
                                                           claude: anthropic.AsyncAnthropic) -> None:
    """Endpoints that give no ids refuse the field: the gateway's own id for such a call never reaches Gemini."""
    fake = api_gateway.extra["upstreams"].gemini
    fake.function_call = {"name": "now", "arguments": {}}
    message = await claude.messages.create(model="google/flash", max_tokens=40, messages=MESSAGES, tools=NOW_TOOL)
    [tool_use] = [block for block in message.content if block.type == "tool_use"]
    fake.function_call = None
    await claude.messages.create(model="google/flash", max_tokens=40, tools=NOW_TOOL, messages=[
        *MESSAGES, {"role": "assistant", "content": message.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "10:00"}]}])
    model_turn, results = fake.last.body["contents"][1:]
    assert "id" not in model_turn["parts"][0]["functionCall"]
    assert "id" not in results["parts"][0]["functionResponse"]


async def test_claudes_own_refusal_of_an_effort_reaches_the_client(api_gateway: Gateway,
                                                                  claude: anthropic.AsyncAnthropic) -> None:
    """The native route sends `output_config` as it came: Claude's 400 for an effort it does not have is relayed."""
    with pytest.raises(anthropic.BadRequestError) as info:
        await claude.messages.create(model="claude/sonnet", max_tokens=40, messages=MESSAGES,
                                     extra_body={"output_config": {"effort": "extreme"}})
    assert "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'" in info.value.message
    schema = {"type": "object", "properties": {"time": {"type": "string"}}, "required": ["time"],
              "additionalProperties": False}
    message = await claude.messages.create(model="claude/sonnet", max_tokens=40, messages=MESSAGES, output_config={
        "effort": "low", "format": {"type": "json_schema", "schema": schema}})
    assert json.loads(message.content[0].text) == {"time": ""}  # type: ignore[union-attr]
    assert api_gateway.extra["upstreams"].anthropic.last.body["output_config"]["effort"] == "low"
