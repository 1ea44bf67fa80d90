"""Type-confused client bodies: every field of a valid request (nested message, content, tool fields too)
replaced by a value of the wrong type (null, a bool, numbers, a float, a number beyond 64 bits, strings,
arrays, objects) or left out, posted to each endpoint for a model of each provider kind. None may be a 500:
bad input is a 4xx in the endpoint's error shape (OpenAI's, Anthropic's on /v1/messages), never an
unhandled error.

A fixed table (no randomness): each variant is one field of the base body changed, so a failure names the
field; the memory store keeps it fast.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from apis_config import Upstreams, config_doc
from harness import Gateway, start_gateway, validate
from pdfs import make_pdf

from gateway.config_load import parse

PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
       "RU5ErkJggg==")
PDF = base64.b64encode(make_pdf(1)).decode()
ODD: list[Any] = [None, True, 0, -1, 1.5, 2**64, "", "x" * 2000, [], [["x"]], {}, {"x": {"y": 1}}]
GONE = object()  # the field left out

CHAT = {
    "model": "", "max_tokens": 20, "temperature": 0.5, "top_p": 1, "n": 1, "seed": 1, "user": "u",
    "presence_penalty": 0, "frequency_penalty": 0, "stop": ["END"], "parallel_tool_calls": True,
    "metadata": {"a": "b"}, "reasoning_effort": "low", "service_tier": "default",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "user", "content": "go on", "name": "bob"},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {
        "type": "object", "properties": {"x": {"type": "string"}}}}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
    "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
}
MESSAGES = {
    "model": "", "max_tokens": 20, "temperature": 0.5, "top_k": 5, "stop_sequences": ["END"],
    "metadata": {"user_id": "u"}, "output_config": {"effort": "high"},
    "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "hi"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG.split(",")[1]}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hm", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": "y"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "42"}]}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "go on"},
    ],
    "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object",
                                                                 "properties": {"x": {"type": "string"}}}}],
    "tool_choice": {"type": "tool", "name": "f"},
}
COMPLETIONS = {"model": "", "prompt": "hi", "max_tokens": 5, "temperature": 0.5, "stop": ["x"], "n": 1,
               "echo": False, "user": "u", "seed": 1}
# what only a completions model takes
NATIVE_COMPLETIONS = {**COMPLETIONS, "prompt": ["hi", "there"], "best_of": 1, "suffix": "!"}
EMBEDDINGS = {"model": "", "input": ["hi", "there"], "dimensions": 8, "encoding_format": "float", "user": "u"}

# fields the bases leave out, added one at a time (at a path of the base): each as given, then each of its
# nodes type-confused
CHAT_EXTRAS: list[tuple[tuple[Any, ...], Any]] = [
    *(((name,), {"x": 1}) for name in (
        "stream_options", "logit_bias", "logprobs", "top_logprobs", "functions", "function_call", "modalities",
        "audio", "prediction", "web_search_options", "reasoning", "max_completion_tokens", "store", "verbosity",
        "provider_api_key", "safety_identifier", "prompt_cache_key", "thinking", "extra_body", "stream",
        "speed", "inference_geo", "top_k", "cache_control")),
    (("messages", 1, "content", 2), {"type": "file", "file": {"filename": "a.pdf",
                                                               "file_data": f"data:application/pdf;base64,{PDF}"}}),
    (("messages", 1, "content", 2), {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}),
    (("messages", 1, "content", 2), {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}),
    (("messages", 2, "refusal"), "no"),
    (("messages", 2, "audio"), {"id": "a", "transcript": "t"}),
    (("messages", 2, "reasoning_content"), "hm"),
    (("messages", 2, "tool_calls", 0, "extra_content"), {"google": {"thought_signature": "s"}}),
    (("messages", 3, "name"), "f"),
]
MESSAGES_EXTRAS: list[tuple[tuple[Any, ...], Any]] = [
    *(((name,), {"x": 1}) for name in (
        "thinking", "stream", "top_p", "service_tier", "speed", "inference_geo", "container", "mcp_servers",
        "context_management", "output_format", "provider_api_key", "reasoning_effort", "n", "response_format")),
    (("thinking",), {"type": "enabled", "budget_tokens": 1024}),
    (("output_config",), {"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}}),
    (("messages", 0, "content", 2), {"type": "document", "title": "a.pdf", "source": {
        "type": "base64", "media_type": "application/pdf", "data": PDF}}),
    (("messages", 0, "content", 2), {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}),
    (("messages", 1, "content", 2), {"type": "redacted_thinking", "data": "x"}),
    (("messages", 2, "content", 0, "is_error"), True),
    (("messages", 2, "content", 1), {"type": "text", "text": "more"}),
    (("tools", 1), {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}),
]
COMPLETIONS_EXTRAS = [((name,), {"x": 1}) for name in ("logprobs", "logit_bias", "stream_options", "stream",
                                                         "suffix", "best_of", "presence_penalty", "top_p")]
EMBEDDINGS_EXTRAS = [((name,), {"x": 1}) for name in ("task_type", "title", "input_type", "truncate")]

# (path, base body, models of each kind that serve it)
CASES = [
    ("/v1/chat/completions", CHAT, CHAT_EXTRAS, ["oai/gpt-4o", "claude/sonnet", "google/flash", "@preset/support"]),
    ("/v1/messages", MESSAGES, MESSAGES_EXTRAS,
     ["claude/sonnet", "oai/gpt-4o", "google/flash", "@preset/open-support"]),
    ("/v1/messages/count_tokens", MESSAGES, MESSAGES_EXTRAS, ["claude/sonnet", "oai/gpt-4o", "google/flash"]),
    ("/v1/completions", NATIVE_COMPLETIONS, COMPLETIONS_EXTRAS, ["oai/gpt-3.5-turbo-instruct"]),
    ("/v1/completions", COMPLETIONS, COMPLETIONS_EXTRAS, ["oai/gpt-4o", "claude/sonnet", "google/flash"]),
    ("/v1/embeddings", EMBEDDINGS, EMBEDDINGS_EXTRAS, ["oai/text-embedding-3-small", "google/embedding"]),
]


def variants(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, replacement) for every node below the root: each odd value, and left out."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        here = (*path, key)
        for odd in [*ODD, GONE]:
            if odd != child or type(odd) is not type(child):
                yield here, odd
        yield from variants(child, here)


def replaced(body: dict[str, Any], path: tuple[Any, ...], odd: Any) -> dict[str, Any]:
    """`body` with the node at `path` set to `odd` (appended where `path` ends one past a list's end)."""
    out = copy.deepcopy(body)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    if odd is GONE:
        del node[path[-1]]
    elif isinstance(node, list) and path[-1] == len(node):
        node.append(odd)
    else:
        node[path[-1]] = odd
    return out


def bodies(base: dict[str, Any], extras: list[tuple[tuple[Any, ...], Any]]) -> Iterator[tuple[str, Any]]:
    """(what was changed, body): the base's variants, then each extra field as given and its variants."""
    for where, odd in variants(base):
        yield f"{'.'.join(map(str, where))} = {shown(odd)}", replaced(base, where, odd)
    for at, value in extras:
        added = replaced(base, at, value)
        yield f"{'.'.join(map(str, at))} = {shown(value)} added", added
        for where, odd in variants(value, at):
            yield f"{'.'.join(map(str, where))} = {shown(odd)} (added)", replaced(added, where, odd)
        for odd in ODD:
            yield f"{'.'.join(map(str, at))} = {shown(odd)} (added)", replaced(base, at, odd)


def shown(value: Any) -> str:
    return "left out" if value is GONE else repr(value)[:30]


def well_shaped(path: str, payload: Any) -> bool:
    if path.startswith("/v1/messages"):
        error = payload.get("error") if isinstance(payload, dict) else None
        return (payload.get("type") == "error" and isinstance(error, dict) and isinstance(error.get("type"), str)
                and isinstance(error.get("message"), str))
    validate(payload, "ErrorResponse")
    return True


def last_frame(traceback: str) -> str:
    """The traceback's last frame and its exception, to name a crash in the failure message."""
    lines = traceback.strip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.lstrip().startswith("File ")]
    return " | ".join([lines[frames[-1]].strip(), lines[-1]]) if frames else traceback[-200:]


@pytest.fixture
async def gateway(aiohttp_server: Any, all_upstreams: Upstreams) -> Gateway:
    doc = config_doc(all_upstreams.urls)
    doc["limits"]["default"] = {"rpm": 1_000_000, "rpd": 10_000_000}
    for model in doc["models"].values():
        model.pop("limits", None)
        model["vision"] = True
    gateway = await start_gateway(aiohttp_server, parse(json.dumps(doc), {}), all_upstreams.openai)
    gateway.extra["upstreams"] = all_upstreams
    return gateway


@pytest.mark.parametrize(("path", "base", "extras", "model"), [
    pytest.param(path, base, extras, model, id=f"{path.removeprefix('/v1/')}-{model}")
    for path, base, extras, models in CASES for model in models])
async def test_no_type_confused_field_is_a_500(gateway: Gateway, log_lines: Any, path: str, base: dict[str, Any],
                                               extras: list[tuple[tuple[Any, ...], Any]], model: str) -> None:
    base = {**base, "model": model}
    headers = {**gateway.auth(), "Content-Type": "application/json"}
    failures: list[str] = []
    async with aiohttp.ClientSession(gateway.url, headers=headers) as http:
        async with http.post(path, data=json.dumps(base)) as r:
            assert r.status == 200, await r.text()  # the base is served: each variant changes one thing

        async def post(change: str, body: dict[str, Any]) -> None:
            async with http.post(path, data=json.dumps(body)) as r:
                text = await r.text()
            if r.status >= 500 or (r.status >= 400 and not well_shaped(path, json.loads(text))) \
                    or "internal_error" in text:  # a stream's error event after its 200
                failures.append(f"{change}: {r.status} {text[:200]}")

        todo = list(bodies(base, extras))
        for i in range(0, len(todo), 16):
            await asyncio.gather(*(post(change, body) for change, body in todo[i:i + 16]))
    crashes = [line for line in log_lines() if line.get("event") == "unhandled error"]
    frames = sorted({last_frame(str(line.get("exception", ""))) for line in crashes})
    assert not failures and not crashes, "\n".join(failures) + "\n\n" + "\n----\n".join(frames)


@pytest.mark.parametrize(("path", "model", "at", "odd", "param"), [
    pytest.param("/v1/chat/completions", "google/flash", ("messages", 2, "tool_calls"), 7, "messages[2].tool_calls",
                 id="gemini-tool-calls-a-number"),
    pytest.param("/v1/chat/completions", "google/flash", ("response_format", "type"), ["json_object"],
                 "response_format", id="gemini-response-format-type-a-list"),
    pytest.param("/v1/messages", "oai/gpt-4o", ("messages", 1, "content", 0, "type"), {"x": 1}, "messages",
                 id="translated-assistant-block-type-an-object"),
    pytest.param("/v1/messages", "google/flash", ("tool_choice", "type"), ["auto"], "tool_choice",
                 id="translated-tool-choice-type-a-list"),
    pytest.param("/v1/messages/count_tokens", "oai/gpt-4o", ("tool_choice", "type"), ["auto"], "tool_choice",
                 id="count-tokens-tool-choice-type-a-list"),
])
async def test_type_confused_field_is_a_400_naming_it(gateway: Gateway, path: str, model: str, at: tuple[Any, ...],
                                                      odd: Any, param: str) -> None:
    """Each was a 500 (an unhashable value looked up in a set, a number iterated): now the client's 400, in the
    endpoint's shape, naming the field; nothing sent upstream."""
    base = MESSAGES if path.startswith("/v1/messages") else CHAT
    body = replaced({**base, "model": model}, at, odd)
    async with aiohttp.ClientSession(gateway.url, headers=gateway.auth()) as http, \
            http.post(path, json=body) as r:
        assert r.status == 400, await r.text()
        payload = await r.json()
    assert well_shaped(path, payload)
    if path.startswith("/v1/messages"):
        assert param.split("[")[0] in payload["error"]["message"], payload
    else:
        assert payload["error"]["param"] == param, payload
    assert not gateway.extra["upstreams"].gemini.requests and not gateway.extra["upstreams"].openai.requests


async def test_claude_block_of_odd_type_is_estimated_not_a_500(gateway: Gateway) -> None:
    """count_tokens walks every block for its estimate (`billing.estimate_prompt_tokens`): a block whose `type`
    is a list was looked up in the set of image types, a 500; it is estimated by its size, as any other block."""
    body = replaced({**MESSAGES, "model": "claude/sonnet"}, ("messages", 0, "content", 0, "type"), ["text"])
    async with aiohttp.ClientSession(gateway.url, headers=gateway.auth()) as http, \
            http.post("/v1/messages/count_tokens", json=body) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["input_tokens"] > 0
