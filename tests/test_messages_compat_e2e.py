"""/v1/messages as Claude Code and the anthropic SDK use it, through the running gateway: count_tokens taking
what Claude's endpoint takes, images (in tool results too) checked, inlined and counted as images, structured
output, refusals, `top_k`, foreign tool ids on the way to Claude, and the request id on a mid-stream error.
On both stores, with the official anthropic SDK as the client and fake upstreams speaking recorded wire formats.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import anthropic
import pytest
from harness import Gateway, validate
from test_apis_e2e import generation
from test_billing_e2e import key_state, nano

from gateway.billing import IMAGE_TOKENS

PIXELS = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 90).decode()  # ~31 kB of base64
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXELS}}
CLAUDE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def _screenshot_turns(result: list[dict[str, Any]]) -> list[Any]:
    call = {"type": "tool_use", "id": "toolu_1", "name": "screenshot", "input": {}}
    return [{"role": "user", "content": "Take a screenshot."}, {"role": "assistant", "content": [call]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": result}]}]


SCREENSHOT_TOOL = [{"name": "screenshot", "description": "A screenshot", "input_schema": {"type": "object"}}]


# -- count_tokens ----------------------------------------------------------------------------------


async def test_count_tokens_on_claude_takes_what_claudes_endpoint_takes(
        api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    """Documents, server tools, thinking, tool_choice, output_config, cache marks: no 400, no upstream call."""
    seen = len(api_gateway.extra["upstreams"].anthropic.requests)
    counted = await claude.messages.count_tokens(
        model="claude/sonnet", system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "The grass is green."}},
            IMAGE, {"type": "text", "text": "What colour is the grass?"}]}],
        tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}, *SCREENSHOT_TOOL],
        tool_choice={"type": "auto"}, thinking={"type": "enabled", "budget_tokens": 2048},
        output_config={"effort": "high"})
    assert IMAGE_TOKENS < counted.input_tokens < IMAGE_TOKENS + 200  # the image at its allowance, not 31 kB / 3
    assert len(api_gateway.extra["upstreams"].anthropic.requests) == seen


async def test_count_tokens_of_an_image_in_a_tool_result_on_a_translated_model(
        claude: anthropic.AsyncAnthropic) -> None:
    counted = await claude.messages.count_tokens(model="oai/gpt-4o", messages=_screenshot_turns([IMAGE]),
                                                 tools=SCREENSHOT_TOOL)
    assert IMAGE_TOKENS < counted.input_tokens < IMAGE_TOKENS + 200
    with pytest.raises(anthropic.BadRequestError):  # what cannot reach this model is still refused
        await claude.messages.count_tokens(model="oai/gpt-4o", messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}])


async def test_count_tokens_is_the_estimate_the_hold_uses(api_gateway: Gateway,
                                                          claude: anthropic.AsyncAnthropic) -> None:
    messages = _screenshot_turns([{"type": "text", "text": "the desktop"}, IMAGE])
    counted = await claude.messages.count_tokens(model="oai/gpt-4o", system="Be brief.", messages=messages,
                                                 tools=SCREENSHOT_TOOL)
    message = await claude.messages.create(model="oai/gpt-4o", max_tokens=40, system="Be brief.", messages=messages,
                                           tools=SCREENSHOT_TOOL)
    record = await generation(api_gateway, message.id)
    assert nano(record["reserved"]) == counted.input_tokens * 2_500 + 40 * 10_000  # gpt-4o: 2.5 / 10 USD per Mtok


# -- images ----------------------------------------------------------------------------------------


async def test_tool_result_images_reach_openai_in_a_user_message(api_gateway: Gateway,
                                                                 claude: anthropic.AsyncAnthropic) -> None:
    before, _, _ = await key_state(api_gateway)
    message = await claude.messages.create(model="oai/gpt-4o", max_tokens=40, tools=SCREENSHOT_TOOL,
                                           messages=_screenshot_turns([{"type": "text", "text": "done"}, IMAGE]))
    assert message.content[0].type == "text"
    sent = api_gateway.fake.last.body
    validate(sent, "CreateChatCompletionRequest")
    tool, user = sent["messages"][2:]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "toolu_1" and tool["content"].startswith("done\n")
    assert user == {"role": "user", "content": [
        {"type": "text", "text": "[Image(s) of the result of tool call toolu_1]"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXELS}"}}]}
    assert (await key_state(api_gateway))[0] < before  # served and charged


@pytest.mark.parametrize("where", ["message", "tool_result"])
async def test_an_anthropic_image_to_a_model_without_vision_is_an_anthropic_400(
        api_gateway: Gateway, claude: anthropic.AsyncAnthropic, where: str) -> None:
    messages = (_screenshot_turns([IMAGE]) if where == "tool_result"
                else [{"role": "user", "content": [IMAGE, {"type": "text", "text": "What is it?"}]}])
    before = await key_state(api_gateway)
    seen = len(api_gateway.extra["upstreams"].gemini.requests)
    with pytest.raises(anthropic.BadRequestError) as info:
        await claude.messages.create(model="google/flash", max_tokens=40, messages=messages, tools=SCREENSHOT_TOOL)
    error = info.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and error["code"] == "model_not_vision"
    assert "google/flash" in error["message"]
    assert len(api_gateway.extra["upstreams"].gemini.requests) == seen and await key_state(api_gateway) == before


@pytest.mark.parametrize("where", ["message", "tool_result"])
async def test_a_url_image_for_gemini_is_fetched_under_the_ssrf_guard(make_api_gateway: Any, where: str) -> None:
    """Gemini takes bytes only, so the gateway fetches Anthropic url images as it fetches image_url parts:
    a private address is refused with a 400 before anything is sent or held."""
    gw = await make_api_gateway({"google/flash": {"vision": True}})
    fake = gw.extra["upstreams"].gemini
    seen = len(fake.requests)
    image = {"type": "image", "source": {"type": "url", "url": "https://169.254.169.254/latest/meta-data/"}}
    messages = (_screenshot_turns([image]) if where == "tool_result"
                else [{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}])
    before = await key_state(gw)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.messages.create(model="google/flash", max_tokens=40, messages=messages, tools=SCREENSHOT_TOOL)
    await client.close()
    error = info.value.body["error"]  # type: ignore[index]
    assert error["code"] == "invalid_image_url" and "private" in error["message"]
    assert len(fake.requests) == seen and await key_state(gw) == before


async def test_a_base64_image_for_gemini_goes_inline(make_api_gateway: Any) -> None:
    gw = await make_api_gateway({"google/flash": {"vision": True}})
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
    await client.messages.create(model="google/flash", max_tokens=40, messages=_screenshot_turns([IMAGE]),
                                 tools=SCREENSHOT_TOOL)
    await client.close()
    parts = gw.extra["upstreams"].gemini.last.body["contents"][-1]["parts"]
    assert parts[-1] == {"inlineData": {"mimeType": "image/png", "data": PIXELS}}


# -- structured output, refusals, top_k, thinking-only turns ---------------------------------------


async def test_output_config_format_becomes_response_format(api_gateway: Gateway,
                                                            claude: anthropic.AsyncAnthropic) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
              "additionalProperties": False}
    await claude.messages.create(model="oai/gpt-4o", max_tokens=40, messages=[{"role": "user", "content": "Hi"}],
                                 output_config={"format": {"type": "json_schema", "schema": schema}})
    sent = api_gateway.fake.last.body
    validate(sent, "CreateChatCompletionRequest")
    assert sent["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": schema, "strict": True}}


async def test_a_refusal_is_a_refusal(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    api_gateway.fake.stream_recording = "sdk-stream-refusal.sse"
    async with claude.messages.stream(model="oai/gpt-4o", max_tokens=40,
                                      messages=[{"role": "user", "content": "Something bad"}]) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text.startswith("I'm sorry") and final.stop_reason == "refusal"
    assert final.content[0].text == text  # type: ignore[union-attr]


async def test_top_k_reaches_gemini(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    await claude.messages.create(model="google/flash", max_tokens=40, extra_body={"top_k": 7},
                                 messages=[{"role": "user", "content": "Hi"}])
    assert api_gateway.extra["upstreams"].gemini.last.body["generationConfig"]["topK"] == 7
    await claude.messages.create(model="oai/gpt-4o", max_tokens=40, extra_body={"top_k": 7},
                                 messages=[{"role": "user", "content": "Hi"}])
    assert "top_k" not in api_gateway.fake.last.body


async def test_a_thinking_only_assistant_turn_is_not_sent_empty(api_gateway: Gateway,
                                                                claude: anthropic.AsyncAnthropic) -> None:
    await claude.messages.create(model="oai/gpt-4o", max_tokens=40, messages=[
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Hmm.", "signature": "EqQBCkYIBxgCKkA"}]},
        {"role": "user", "content": "Well?"}])
    sent = api_gateway.fake.last.body
    validate(sent, "CreateChatCompletionRequest")
    assert [m["role"] for m in sent["messages"]] == ["user", "user"]


# -- Claude's tool ids, the mid-stream error's request id ------------------------------------------


async def test_foreign_tool_ids_reach_claude_rewritten_in_pairs(api_gateway: Gateway,
                                                                claude: anthropic.AsyncAnthropic) -> None:
    """A conversation begun on another provider (Kimi's ids look like this) goes on with Claude."""
    messages: list[Any] = [
        {"role": "user", "content": "Screenshot, please."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "functions.screenshot:0", "name": "screenshot",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "functions.screenshot:0",
                                      "content": "done"}]}]
    await claude.messages.create(model="claude/sonnet", max_tokens=40, messages=messages, tools=SCREENSHOT_TOOL)
    sent = api_gateway.extra["upstreams"].anthropic.last.body["messages"]
    use, result = sent[1]["content"][0], sent[2]["content"][0]
    assert CLAUDE_ID.match(use["id"]) and use["id"] == result["tool_use_id"]
    assert sent[0] == messages[0]


async def test_mid_stream_error_event_names_the_request(api_gateway: Gateway,
                                                        claude: anthropic.AsyncAnthropic) -> None:
    api_gateway.extra["upstreams"].anthropic.error_event_after = 3
    with pytest.raises(anthropic.APIStatusError) as info:
        async with claude.messages.stream(model="claude/sonnet", max_tokens=10,
                                          messages=[{"role": "user", "content": "Hi"}],
                                          extra_headers={"X-Request-Id": "req-mid-stream-42"}) as stream:
            async for _ in stream.text_stream:
                pass
    assert info.value.body["request_id"] == "req-mid-stream-42"  # type: ignore[index]
    assert info.value.response.headers["X-Request-Id"] == "req-mid-stream-42"
