"""The official SDKs' higher-level helpers through the running gateway, on each provider kind behind a model:
the openai SDK's `chat.completions.stream(...)` helper (tool-call events, final completion) and plain
streamed tool calls, as a tool loop reads them (`json.loads(call.function.arguments)`)."""

from __future__ import annotations

import json
from typing import Any

import openai
from apis_config import Upstreams
from harness import Gateway, validate
from pydantic import BaseModel

MESSAGES: list[Any] = [{"role": "user", "content": "What time is it?"}]


class CurrentTime(BaseModel):
    """A tool without parameters (`now()`, `list_files()`...): what the SDK makes of a model with no fields."""


TOOL = openai.pydantic_function_tool(CurrentTime)
FORCED: Any = {"type": "function", "function": {"name": "CurrentTime"}}


async def test_claude_streamed_call_without_arguments_has_json_arguments(api_gateway: Gateway) -> None:
    """Claude streams a call of a tool without parameters as one empty `input_json_delta`: the chat stream
    must still give the call JSON arguments (`{}`, as OpenAI and the non-streamed answer give), or the SDK's
    stream helper fails to parse them and a tool loop's `json.loads` raises."""
    ups: Upstreams = api_gateway.extra["upstreams"]
    ups.anthropic.forced_tool_input = {}
    client = api_gateway.openai()
    async with client.chat.completions.stream(model="claude/sonnet", messages=MESSAGES, tools=[TOOL],
                                              tool_choice=FORCED) as stream:
        done = [event async for event in stream if event.type == "tool_calls.function.arguments.done"]
        final = await stream.get_final_completion()
    assert [(event.name, event.arguments) for event in done] == [("CurrentTime", "{}")]
    assert done[0].parsed_arguments == CurrentTime()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.arguments == "{}" and final.choices[0].finish_reason == "tool_calls"

    chunks = [chunk async for chunk in await client.chat.completions.create(
        model="claude/sonnet", messages=MESSAGES, tools=[TOOL], tool_choice=FORCED, stream=True)]
    for chunk in chunks:
        validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    arguments = "".join(call.function.arguments or "" for chunk in chunks for choice in chunk.choices
                        for call in choice.delta.tool_calls or () if call.function)
    assert json.loads(arguments) == {}
    # the same call unstreamed
    completion = await client.chat.completions.create(model="claude/sonnet", messages=MESSAGES, tools=[TOOL],
                                                      tool_choice=FORCED)
    assert (completion.choices[0].message.tool_calls or [])[0].function.arguments == "{}"
