"""providers.openai on recorded OpenAI / Ollama / OpenRouter wire bytes, checked against OpenAI's schemas."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from jsonschema import Draft202012Validator
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from providers import openai, openai_request
from providers.anthropic_answer import MessageStream
from providers.framing import SSEDecoder
from providers.types import ChatRequest, ProviderError, SSEEvent, Target, UpstreamHTTPError, Usage

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WIRE = SHARED / "wire"
OPENAI_STREAMS = sorted((WIRE / "openai").glob("sdk-stream-*.sse"))
OPENAI_ERRORS = sorted((WIRE / "openai").glob("error-*.json"))

TARGET = Target(provider="openai", base_url="https://api.openai.com/v1", api_key="sk-upstream",
                upstream_model="gpt-5", public_model="openai/gpt-5")


@cache
def validator(root: str) -> Draft202012Validator:
    bundle = json.loads((SHARED / "openai-schemas.json").read_text())
    schema = {"$schema": bundle["$schema"], "$defs": bundle["$defs"], "$ref": f"#/$defs/{root}"}
    return Draft202012Validator(schema)


def assert_valid(root: str, obj: Any) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator(root).iter_errors(obj)]
    assert not errors, errors


def wire_json(*parts: str) -> Any:
    return json.loads(WIRE.joinpath(*parts).read_text())


# -- streams ---------------------------------------------------------------------------------------


def aggregate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """content, refusal, tool-call arguments per index, last finish_reason and usage of a chunk list."""
    out: dict[str, Any] = {"content": "", "refusal": "", "args": {}, "finish_reason": None, "usage": None}
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            out["content"] += delta.get("content") or ""
            out["refusal"] += delta.get("refusal") or ""
            for call in delta.get("tool_calls") or []:
                args = out["args"]
                args[call["index"]] = args.get(call["index"], "") + call["function"].get("arguments", "")
            out["finish_reason"] = choice["finish_reason"] or out["finish_reason"]
        if chunk.get("usage"):
            out["usage"] = chunk["usage"]
    return out


def naive_chunks(raw: bytes) -> list[dict[str, Any]]:
    blocks = [b.strip() for b in raw.decode().split("\n\n") if b.strip()]
    assert blocks[-1] == "data: [DONE]"
    return [json.loads(b.removeprefix("data: ")) for b in blocks[:-1]]


# What the recordings hold, read off by hand:
# (content or refusal, tool-call arguments by index, finish_reason, prompt_tokens, completion_tokens)
RECORDED = {
    "sdk-stream-finish-length": ('{"', {}, "length", 79, 1),
    "sdk-stream-logprobs": ("Foo!", {}, "stop", 9, 2),
    "sdk-stream-refusal": ("I'm sorry, I can't assist with that request.", {}, "stop", 79, 11),
    "sdk-stream-text-with-usage": (
        "I'm unable to provide real-time weather updates. To get the current weather in San Francisco, "
        "I recommend checking a reliable weather website or a weather app.", {}, "stop", 14, 30),
    "sdk-stream-tool-call-strict": ("", {0: '{"city":"San Francisco","state":"CA"}'}, "tool_calls", 48, 19),
    "sdk-stream-tool-call": ("", {0: '{"city":"New York City"}'}, "tool_calls", 44, 16),
    "sdk-stream-tool-calls-parallel": (
        "", {0: '{"city": "Edinburgh", "country": "GB", "units": "c"}',
             1: '{"ticker": "AAPL", "exchange": "NASDAQ"}'}, "tool_calls", 149, 60),
}


def translate(raw: bytes, chunk_size: int) -> tuple[list[dict[str, Any]], Any]:
    req = ChatRequest(body={"model": "openai/gpt-5", "messages": [], "stream": True}, stream=True)
    state = openai.new_stream_state(req, TARGET)
    decoder = SSEDecoder()
    out: list[dict[str, Any]] = []
    for i in range(0, len(raw), chunk_size):
        for event in decoder.feed(raw[i:i + chunk_size]):
            out.extend(openai.parse_stream_event(state, event))
    return out, state


@pytest.mark.parametrize("path", OPENAI_STREAMS, ids=[p.stem for p in OPENAI_STREAMS])
@pytest.mark.parametrize("chunk_size", [1 << 20, 7], ids=["whole", "every_7"])
def test_recorded_stream_translation(path: Path, chunk_size: int) -> None:
    raw = path.read_bytes()
    upstream = naive_chunks(raw)
    expected = aggregate(upstream)
    text, args, finish_reason, prompt, completion = RECORDED[path.stem]
    assert (expected["content"] or expected["refusal"], expected["args"]) == (text, args)

    chunks, state = translate(raw, chunk_size)

    assert len(chunks) == len(upstream)  # the include_usage chunk (choices: []) is passed on too
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
        assert chunk["model"] == "openai/gpt-5"
    got = aggregate(chunks)
    assert got == expected
    assert (got["finish_reason"], state.finish_reason) == (finish_reason, finish_reason)
    assert state.usage == Usage(prompt_tokens=prompt, completion_tokens=completion, reported=True)
    assert state.done
    assert (state.response_id, state.created) == (upstream[0]["id"], upstream[0]["created"])


def _at_index_0(raw: bytes) -> bytes:
    """The recorded parallel tool calls as Ollama's /v1 sends them: every call's deltas at `index` 0, each call
    with its own id (ollama/ollama#15457)."""
    return raw.replace(b'"index":1,', b'"index":0,').replace(b'"tool_calls":[{"index":1', b'"tool_calls":[{"index":0')


def test_parallel_tool_calls_sent_at_one_index_stay_apart() -> None:
    """A new call id at an index another call holds is a new call: the SDKs would merge the two into one call
    whose arguments are two JSON objects run together (chat), or drop the second (/v1/messages)."""
    raw = (WIRE / "openai" / "sdk-stream-tool-calls-parallel.sse").read_bytes()
    assert _at_index_0(raw).count(b'"index":1') == 0
    recorded = aggregate(translate(raw, 1 << 20)[0])["args"]
    assert aggregate(translate(_at_index_0(raw), 7)[0])["args"] == recorded and len(recorded) == 2
    ids = [call["id"] for chunk in translate(raw, 1 << 20)[0] for choice in chunk["choices"]
           for call in choice["delta"].get("tool_calls") or () if call.get("id")]
    calls = [(call_id, json.loads(recorded[i])) for i, call_id in enumerate(ids)]
    sdk = ChatCompletionStreamState()
    for chunk in translate(_at_index_0(raw), 1 << 20)[0]:
        sdk.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    made = sdk.current_completion_snapshot.choices[0].message.tool_calls or []
    assert [(c.id, json.loads(c.function.arguments)) for c in made] == calls
    stream = MessageStream("gen-1", "ollama/qwen3")
    events = [event for chunk in translate(_at_index_0(raw), 1 << 20)[0] for event in stream.feed(chunk)]
    events += stream.end(Usage(prompt_tokens=149, completion_tokens=60, reported=True))
    snapshot, bufs = None, {}  # type: ignore[var-annotated]
    for _, data in events:
        snapshot = accumulate_event(event=json.loads(json.dumps(data)), current_snapshot=snapshot, json_bufs=bufs)
    assert snapshot is not None
    assert [(b.id, b.input) for b in snapshot.content] == calls  # two tool_use blocks, as the SDK sees them


def test_a_legacy_completion_chunk_keeps_its_shape() -> None:
    """A streamed `text_completion` passed through (`completions: native`) comes back as the upstream sent it:
    no chat `delta` in its choices, no chat-only keys in its legacy `logprobs`."""
    chunk = {"id": "cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe", "object": "text_completion", "created": 1690759702,
             "choices": [{"text": "This", "index": 0, "finish_reason": None,
                          "logprobs": {"tokens": ["This"], "token_logprobs": [-0.1], "top_logprobs": [{"This": -0.1}],
                                       "text_offset": [0]}}],
             "model": "gpt-3.5-turbo-instruct"}
    [out] = openai.parse_stream_event(new_state(), SSEEvent(json.dumps(chunk).encode()))
    assert out["choices"][0] == chunk["choices"][0]


def new_state() -> Any:
    return openai.new_stream_state(ChatRequest(body={}, stream=True), TARGET)


STREAM_EVENT_CASES = {
    "done": (b"[DONE]", 0, None),
    "usage_null_ignored": (
        b'{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":'
        b'[{"index":0,"delta":{"content":"a"},"finish_reason":null}],"usage":null}', 1, None),
    "openrouter_usage_on_last_choice_chunk": (
        b'{"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"openai/gpt-4o","provider":"OpenAI",'
        b'"choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,'
        b'"completion_tokens":15,"total_tokens":25,"cost":0.0012,"prompt_tokens_details":{"cached_tokens":2,'
        b'"cache_write_tokens":3},"completion_tokens_details":{"reasoning_tokens":5}}}',
        1, Usage(10, 15, cached_tokens=2, cache_write_tokens=3, reasoning_tokens=5, reported=True)),
    "ollama_chunk_missing_fields": (
        b'{"id":"chatcmpl-1","model":"llama3.2","choices":[{"index":0,"delta":{"content":"hi"},'
        b'"finish_reason":"eos"}]}', 1, None),
}


@pytest.mark.parametrize(("data", "count", "usage"), STREAM_EVENT_CASES.values(),
                         ids=list(STREAM_EVENT_CASES))
def test_stream_event_cases(data: bytes, count: int, usage: Usage | None) -> None:
    state = new_state()
    chunks = openai.parse_stream_event(state, SSEEvent(data=data))
    assert len(chunks) == count
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
        assert chunk["model"] == "openai/gpt-5"
    assert state.done == (data == b"[DONE]")
    assert state.usage == (usage or Usage())


def test_events_after_done_are_ignored() -> None:
    state = new_state()
    assert openai.parse_stream_event(state, SSEEvent(b"[DONE]")) == []
    assert openai.parse_stream_event(state, SSEEvent(b'{"choices":[]}')) == []


STREAM_ERROR_CASES = {
    "openrouter_numeric_code": (wire_json("openrouter", "stream-notes.json")["mid_stream_error_line"],
                                "Provider disconnected unexpectedly", "server_error", False),
    "openrouter_typed": (
        'data: {"id":"gen-abc123","object":"chat.completion.chunk","created":1234567890,'
        '"model":"openai/gpt-4o","provider":"OpenAI","error":{"code":429,"message":"Rate limit exceeded",'
        '"metadata":{"error_type":"rate_limit_exceeded"}},"choices":[{"index":0,"delta":{"content":""},'
        '"finish_reason":"error"}]}',
        "Rate limit exceeded", "429", True),
    "bare_string": ('data: {"error":"an error was encountered while running the model"}',
                    "an error was encountered while running the model", None, False),
}


@pytest.mark.parametrize(("line", "message", "code", "retryable"), STREAM_ERROR_CASES.values(),
                         ids=list(STREAM_ERROR_CASES))
def test_mid_stream_error_raises(line: str, message: str, code: str | None, retryable: bool) -> None:
    with pytest.raises(UpstreamHTTPError) as info:
        openai.parse_stream_event(new_state(), SSEEvent(line.removeprefix("data: ").encode()))
    err = info.value
    assert (err.status, err.message, err.code, err.retryable) == (502, message, code, retryable)


@pytest.mark.parametrize("data", [b"{not json", b"[1,2]", b'"text"'], ids=["bad_json", "array", "string"])
def test_unreadable_stream_chunk(data: bytes) -> None:
    with pytest.raises(ProviderError):
        openai.parse_stream_event(new_state(), SSEEvent(data))


# -- non-streamed responses ------------------------------------------------------------------------

OLLAMA_MINIMAL = {"id": "chatcmpl-7", "model": "llama3.2", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
DEEPSEEK_REASONER = {
    "id": "d1", "object": "chat.completion", "created": 1738000000, "model": "deepseek-reasoner",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "9.11 < 9.8",
                                         "reasoning_content": "Compare 9.11 and 9.8..."},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 40, "total_tokens": 60, "prompt_cache_hit_tokens": 16,
              "prompt_cache_miss_tokens": 4, "completion_tokens_details": {"reasoning_tokens": 30}}}
TOOLS_NO_FINISH = {"id": "t", "object": "chat.completion", "created": 1, "model": "x", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
     "finish_reason": None}]}

RESPONSE_CASES = {
    "docs_chat_default": (
        wire_json("openai", "docs-chat-default.response.json"),
        Usage(19, 10, reported=True, service_tier="default")),  # the answer names the tier that served it
    "docs_chat_tools": (wire_json("openai", "docs-chat-tools.response.json"), Usage(82, 17, reported=True)),
    "docs_chat_image_input": (
        wire_json("openai", "docs-chat-image-input.response.json"),
        Usage(1117, 46, reported=True, service_tier="default")),
    "docs_chat_logprobs": (wire_json("openai", "docs-chat-logprobs.response.json"), None),
    "openrouter_example": (
        wire_json("openrouter", "api-chat-completions.usage.json")["chat_completion_example"],
        Usage(25, 10, reported=True)),
    "ollama_minimal": (OLLAMA_MINIMAL, Usage(3, 1, reported=True)),
    "deepseek_reasoner": (
        DEEPSEEK_REASONER, Usage(20, 40, cached_tokens=16, reasoning_tokens=30, reported=True)),
    "tool_calls_without_finish_reason_no_usage": (TOOLS_NO_FINISH, Usage()),
}


@pytest.mark.parametrize(("upstream", "usage"), RESPONSE_CASES.values(), ids=list(RESPONSE_CASES))
def test_parse_response(upstream: dict[str, Any], usage: Usage | None) -> None:
    original = copy.deepcopy(upstream)
    result = openai.parse_response(orjson.dumps(upstream), TARGET)
    body = result.body
    assert_valid("CreateChatCompletionResponse", body)
    assert body["model"] == "openai/gpt-5"
    assert body["id"] == original["id"]
    for got, sent in zip(body["choices"], original["choices"], strict=True):
        for key, value in sent["message"].items():  # upstream fields kept (reasoning_content, tool_calls)
            assert got["message"][key] == value
        if sent.get("finish_reason"):
            assert got["finish_reason"] == sent["finish_reason"]
    if usage is not None:
        assert result.usage == usage


def test_parse_response_fills_omitted_fields() -> None:
    body = openai.parse_response(orjson.dumps(OLLAMA_MINIMAL), TARGET).body
    choice = body["choices"][0]
    assert (body["object"], choice["logprobs"], choice["message"]["refusal"], choice["finish_reason"]) == (
        "chat.completion", None, None, "stop")
    assert isinstance(body["created"], int)
    tools = openai.parse_response(orjson.dumps(TOOLS_NO_FINISH), TARGET).body
    assert tools["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("raw", [b"<html>502</html>", b"[]", b'{"id":"x"}', b'{"choices":{}}', b""],
                         ids=["not_json", "array", "no_choices", "choices_not_list", "empty"])
def test_parse_response_rejects(raw: bytes) -> None:
    with pytest.raises(ProviderError):
        openai.parse_response(raw, TARGET)


# -- requests --------------------------------------------------------------------------------------

MSGS = [{"role": "user", "content": "Hello!"}]
GPT5 = Target(provider="openai", base_url="https://api.openai.com/v1", api_key="sk-upstream",
              upstream_model="gpt-5", public_model="openai/gpt-5",
              max_tokens_field="max_completion_tokens", drop=("temperature", "top_p"),
              headers=(("OpenAI-Organization", "org-1"),))
OLLAMA = Target(provider="ollama", base_url="http://127.0.0.1:11434/v1", api_key="",
                upstream_model="llama3.2", public_model="ollama/llama3.2", max_tokens_field="max_tokens")

BUILD_CASES = {
    "gpt5_rename_and_drop": (
        GPT5, {"model": "gpt-5", "messages": MSGS, "max_tokens": 50, "temperature": 0.3, "top_p": 1}, False,
        {"model": "gpt-5", "messages": MSGS, "max_completion_tokens": 50}),
    "client_already_set_target_field": (
        GPT5, {"model": "gpt-5", "messages": MSGS, "max_tokens": 50, "max_completion_tokens": 70}, False,
        {"model": "gpt-5", "messages": MSGS, "max_completion_tokens": 70}),
    "stream_forces_include_usage": (
        TARGET, {"model": "openai/gpt-5", "messages": MSGS, "stream": True}, True,
        {"model": "gpt-5", "messages": MSGS, "stream": True, "stream_options": {"include_usage": True}}),
    "stream_merges_client_stream_options": (
        TARGET, {"model": "x", "messages": MSGS, "stream": True,
                 "stream_options": {"include_usage": False, "include_obfuscation": False}}, True,
        {"model": "gpt-5", "messages": MSGS, "stream": True,
         "stream_options": {"include_usage": True, "include_obfuscation": False}}),
    "no_stream_options_without_stream": (
        TARGET, {"model": "x", "messages": MSGS, "stream": False, "stream_options": {"include_usage": True}},
        False, {"model": "gpt-5", "messages": MSGS}),
    "ollama_max_completion_tokens_to_max_tokens": (
        OLLAMA, {"model": "x", "messages": MSGS, "max_completion_tokens": 9, "temperature": 0.2}, False,
        {"model": "llama3.2", "messages": MSGS, "max_tokens": 9, "temperature": 0.2}),
    "no_field_config_passes_through": (
        TARGET, {"model": "x", "messages": MSGS, "max_tokens": 5, "seed": 1, "reasoning_effort": "low"},
        False, {"model": "gpt-5", "messages": MSGS, "max_tokens": 5, "seed": 1, "reasoning_effort": "low"}),
}


@pytest.mark.parametrize(("target", "body", "stream", "expected"), BUILD_CASES.values(),
                         ids=list(BUILD_CASES))
def test_build_request_body(
    target: Target, body: dict[str, Any], stream: bool, expected: dict[str, Any]
) -> None:
    original = copy.deepcopy(body)
    upstream = openai.build_request(ChatRequest(body=body, stream=stream), target)
    assert body == original  # the client's body is never mutated
    assert orjson.loads(upstream.body) == expected
    assert (upstream.method, upstream.url, upstream.stream) == (
        "POST", f"{target.base_url}/chat/completions", stream)
    assert_valid("CreateChatCompletionRequest", orjson.loads(upstream.body))


@pytest.mark.parametrize(("target", "stream", "expected"), [
    (GPT5, False, {"Content-Type": "application/json", "Accept": "application/json",
                   "Authorization": "Bearer sk-upstream", "OpenAI-Organization": "org-1"}),
    (TARGET, True, {"Content-Type": "application/json", "Accept": "text/event-stream",
                    "Authorization": "Bearer sk-upstream"}),
    (OLLAMA, True, {"Content-Type": "application/json", "Accept": "text/event-stream"}),
], ids=["extra_headers", "streaming_accept", "no_authorization_without_key"])
def test_build_request_headers(target: Target, stream: bool, expected: dict[str, str]) -> None:
    upstream = openai.build_request(ChatRequest(body={"model": "m", "messages": MSGS}, stream=stream), target)
    assert upstream.headers == expected


# -- errors ----------------------------------------------------------------------------------------

# file stem -> (type, code, param, retryable)
OPENAI_ERROR_EXPECTED = {
    "error-400-unsupported-parameter-max-tokens": (
        "invalid_request_error", "unsupported_parameter", "max_tokens", False),
    "error-400-unsupported-value-temperature": (
        "invalid_request_error", "unsupported_value", "temperature", False),
    "error-401-invalid-api-key": ("invalid_request_error", "invalid_api_key", None, False),
    "error-429-insufficient-quota": ("insufficient_quota", "insufficient_quota", None, False),
    "error-429-rate-limit-exceeded": ("tokens", "rate_limit_exceeded", None, True),
}


@pytest.mark.parametrize("path", OPENAI_ERRORS, ids=[p.stem for p in OPENAI_ERRORS])
def test_parse_error_recorded_openai(path: Path) -> None:
    recorded = json.loads(path.read_text())
    assert_valid("ErrorResponse", recorded["body"])
    err = openai.parse_error(recorded["_status"], orjson.dumps(recorded["body"]))
    assert err.status == recorded["_status"]
    assert err.message == recorded["body"]["error"]["message"]
    assert (err.type, err.code, err.param, err.retryable) == OPENAI_ERROR_EXPECTED[path.stem]


OPENROUTER_ERRORS = {status: case["example"] for status, case in
                     wire_json("openrouter", "api-chat-completions.errors.json")["responses"].items()
                     if case["example"]}


@pytest.mark.parametrize("status", list(OPENROUTER_ERRORS),
                         ids=[f"openrouter_{s}" for s in OPENROUTER_ERRORS])
def test_parse_error_openrouter(status: str) -> None:
    body = OPENROUTER_ERRORS[status]
    err = openai.parse_error(int(status), orjson.dumps(body))
    assert (err.status, err.message, err.code) == (int(status), body["error"]["message"], status)
    assert err.retryable == (int(status) in (429, 500, 502, 503, 524, 529))


OTHER_ERROR_CASES = {
    # the body documented in wire/ollama/errors.mdx.txt
    "ollama_string": (500, b'{"error": "the model failed to generate a response"}',
                      "the model failed to generate a response", "upstream_error", None, True),
    "ollama_404": (404, b'{"error":"model \\"llama9\\" not found, try pulling it first"}',
                   'model "llama9" not found, try pulling it first', "upstream_error", None, False),
    "openrouter_metadata_type": (
        429, orjson.dumps({"error": {"code": 429, "message": "Rate limit exceeded",
                                     "metadata": {"error_type": "rate_limit_exceeded"}}}),
        "Rate limit exceeded", "rate_limit_exceeded", "429", True),
    "openrouter_402_with_metadata": (
        402, orjson.dumps(wire_json("openrouter", "stream-notes.json")["http_error_shape"]),
        "Insufficient credits. Add more using https://openrouter.ai/credits", "upstream_error", "402", False),
    "vllm_top_level": (
        400, b'{"object":"error","message":"max_tokens too large","type":"BadRequestError",'
             b'"param":null,"code":400}', "max_tokens too large", "BadRequestError", "400", False),
    "html_body": (
        502, b"<html><body>502 Bad Gateway</body></html>", "<html><body>502 Bad Gateway</body></html>",
        "upstream_error", None, True),
    "empty_body_uses_reason": (503, b"", "Service Unavailable", "upstream_error", None, True),
    "unknown_status_529": (529, b"", "HTTP 529", "upstream_error", None, True),
    "null_message": (400, b'{"error":{"message":null,"type":"x"}}', "Bad Request", "x", None, False),
}


@pytest.mark.parametrize(("status", "body", "message", "type_", "code", "retryable"),
                         OTHER_ERROR_CASES.values(), ids=list(OTHER_ERROR_CASES))
def test_parse_error_other_shapes(status: int, body: bytes, message: str, type_: str, code: str | None,
                                  retryable: bool) -> None:
    err = openai.parse_error(status, body)
    got = (err.status, err.message, err.type, err.code, err.retryable)
    assert got == (status, message, type_, code, retryable)


def test_parse_error_truncates_text_to_500_chars() -> None:
    err = openai.parse_error(500, b"x" * 2000)
    assert err.message == "x" * 500


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_content_is_stripped_from_history(field: str) -> None:
    """DeepSeek's reasoner rejects its own reasoning_content sent back in the message history, and OpenAI an
    unknown field in a message: an answer's reasoning under either name the gateway relays it by (`reasoning`
    is OpenRouter's, Ollama's and vLLM's) stays out of the history it forwards."""
    body = {"model": "deepseek/deepseek-reasoner", "messages": [
        {"role": "user", "content": "9.11 or 9.8?"},
        {"role": "assistant", "content": "9.8", field: "compare decimals"},
        {"role": "user", "content": "why?"}]}
    target = Target(provider="deepseek", base_url="https://api.deepseek.com/v1", api_key="k",
                    upstream_model="deepseek-reasoner", public_model="deepseek/deepseek-reasoner")
    sent = orjson.loads(openai.build_request(ChatRequest(body=body, stream=False), target).body)
    assert sent["messages"][1] == {"role": "assistant", "content": "9.8"}
    assert body["messages"][1][field] == "compare decimals"  # the client's body is untouched


def test_a_server_that_refuses_stream_options_is_sent_none() -> None:
    """Mistral answers 422 extra_forbidden to `stream_options`, which the gateway added to every stream: every
    streamed request failed. A target that drops the field (`params.drop`, Mistral's hosts by default) is
    sent no `stream_options`, the client's own included; its streams end with their usage anyway."""
    body = {"model": "m", "messages": MSGS, "stream": True, "stream_options": {"include_usage": True}}
    target = Target(provider="mistral", base_url="https://api.mistral.ai/v1", api_key="k",
                    upstream_model="mistral-large-latest", public_model="mistral/large", drop=("stream_options",))
    sent = orjson.loads(openai.build_request(ChatRequest(body=body, stream=True), target).body)
    assert sent["stream"] is True and "stream_options" not in sent

DETAILS = [{"type": "reasoning.encrypted", "data": "gAAAAB...", "id": "tool_1", "format": "google-gemini-v1",
            "index": 0}]


@pytest.mark.parametrize("keeps", [False, True], ids=["other-server", "openrouter"])
def test_reasoning_details_go_back_only_to_openrouter(keeps: bool) -> None:
    """OpenRouter answers with `reasoning_details` (Gemini 3's thought signatures, Claude's signed thinking) and
    wants them back with the turn; DeepSeek, MiniMax and OpenAI answer 400 to the field in a message, so a
    conversation begun through OpenRouter could not move to them."""
    body = {"model": "m", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "reasoning": "call it", "reasoning_details": DETAILS,
         "tool_calls": [{"id": "tool_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "tool_1", "content": "sunny"}]}
    target = Target(provider="p", base_url="https://x/v1", api_key="k", upstream_model="m", public_model="p/m",
                    keep_reasoning_details=keeps)
    sent = orjson.loads(openai.build_request(ChatRequest(body=body, stream=False), target).body)
    assert "reasoning" not in sent["messages"][1]
    assert ("reasoning_details" in sent["messages"][1]) is keeps
    if keeps:
        assert sent["messages"][1]["reasoning_details"] == DETAILS
    assert body["messages"][1]["reasoning_details"] == DETAILS  # type: ignore[index]

def test_deepseek_reasoning_deltas_pass_through_unchanged() -> None:
    target = Target(provider="deepseek", base_url="https://api.deepseek.com/v1", api_key="k",
                    upstream_model="deepseek-reasoner", public_model="deepseek/deepseek-reasoner")
    state = openai.new_stream_state(ChatRequest(body={"messages": []}, stream=True), target)
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "deepseek-reasoner",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": None,
                                                "reasoning_content": "First, compare"},
                          "logprobs": None, "finish_reason": None}]}
    [out] = openai.parse_stream_event(state, SSEEvent(data=orjson.dumps(chunk)))
    assert out["choices"][0]["delta"]["reasoning_content"] == "First, compare"
    assert out["model"] == "deepseek/deepseek-reasoner"


def test_gemini_thought_signature_is_stripped_from_history() -> None:
    """A conversation begun on a Gemini model carries `extra_content` on its tool calls; OpenAI refuses
    unknown fields in messages, so a client switching models must not have its turn refused for it."""
    recorded = wire_json("gemini", "googleai", "unary-success-thinking-function-call-thought-summary-signature.json")
    signature = recorded["candidates"][0]["content"]["parts"][1]["thoughtSignature"]
    signed = {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"},
              "extra_content": {"google": {"thought_signature": signature}}}
    plain = {"id": "call_2", "type": "function", "function": {"name": "sum", "arguments": '{"x":1}'}}
    body = {"model": "openai/gpt-5", "messages": [
        {"role": "user", "content": "Days until New Year's Eve?"},
        {"role": "assistant", "content": None, "reasoning_content": "I need the date.", "tool_calls": [signed, plain]},
        {"role": "tool", "tool_call_id": "call_1", "content": "2025-07-28"},
        {"role": "tool", "tool_call_id": "call_2", "content": "1"}]}
    original = copy.deepcopy(body)
    sent = orjson.loads(openai.build_request(ChatRequest(body=body, stream=True), TARGET).body)
    assert body == original  # the client's body, signature included, is untouched
    assert sent["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"}}, plain]}
    assert [sent["messages"][i] for i in (0, 2, 3)] == [original["messages"][i] for i in (0, 2, 3)]
    assert_valid("CreateChatCompletionRequest", sent)


def test_history_without_extra_content_is_not_copied() -> None:
    """The common case costs no copy: messages without anything to strip go out as the same objects."""
    assistant = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    body = {"model": "x", "messages": [{"role": "user", "content": "q"}, assistant]}
    adapted = openai_request.adapt_body(ChatRequest(body=body, stream=False), TARGET)
    assert all(a is b for a, b in zip(adapted["messages"], body["messages"], strict=True))


def marked_request() -> dict[str, Any]:
    """OpenAI's recorded image request, with `cache_control` where clients and /v1/messages leave it: a system
    text part (our translation of Anthropic's `system` blocks), a user text part, a tool, the top level."""
    body = json.loads((WIRE / "openai" / "docs-chat-image-input.request.json").read_text())
    mark = {"type": "ephemeral"}
    body["messages"][0]["content"][0]["cache_control"] = mark
    body["messages"].insert(0, {"role": "system", "content": [{"type": "text", "text": "Be brief.",
                                                               "cache_control": mark}]})
    body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}},
                      "cache_control": mark}]
    body["cache_control"] = mark
    return body


def marks(value: Any) -> int:
    """How many `cache_control` keys a JSON value holds anywhere."""
    if isinstance(value, dict):
        return ("cache_control" in value) + sum(marks(v) for v in value.values())
    return sum(marks(v) for v in value) if isinstance(value, list) else 0


def test_cache_control_marks_are_stripped_for_a_strict_openai_upstream() -> None:
    body = marked_request()
    original = copy.deepcopy(body)
    sent = orjson.loads(openai.build_request(ChatRequest(body=body, stream=False), TARGET).body)
    assert marks(original) == 4 and marks(sent) == 0
    assert body == original  # the client's body is untouched
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "Be brief."}]
    assert sent["messages"][1]["content"][1] == original["messages"][1]["content"][1]  # the image part as it was
    assert sent["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert_valid("CreateChatCompletionRequest", sent)


def test_cache_control_marks_are_kept_for_an_upstream_that_documents_them() -> None:
    """OpenRouter's ChatContentText and ChatFunctionTool (wire/openrouter/openrouter-openapi.yaml) take them."""
    body = marked_request()
    openrouter = Target(provider="openrouter", base_url="https://openrouter.ai/api/v1", api_key="sk-or",
                        upstream_model="anthropic/claude-sonnet-4", public_model="openrouter/claude",
                        keep_cache_control=True)
    sent = orjson.loads(openai.build_request(ChatRequest(body=body, stream=False), openrouter).body)
    assert marks(sent) == 4 and sent["messages"] == body["messages"] and sent["tools"] == body["tools"]


def test_openrouter_schema_documents_cache_control_on_text_parts() -> None:
    """What the default of `providers.*.cache_control` rests on, read off OpenRouter's own spec."""
    spec = (WIRE / "openrouter" / "openrouter-openapi.yaml").read_text()
    text_part = spec.split("\n    ChatContentText:\n", 1)[1].split("\n    ChatContentVideo:", 1)[0]
    assert "cache_control:" in text_part


# -- what OpenAI-compatible servers leave out ------------------------------------------------------

# chunks as xAI, DeepSeek, Ollama and OpenRouter's providers have been seen to send them:
# (upstream chunk, the (index, delta, finish_reason) of each relayed choice)
SPARSE_CHUNKS: dict[str, tuple[bytes, list[tuple[int, dict[str, Any], str | None]]]] = {
    "empty_choice": (b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"grok-4","choices":[{}]}',
                     [(0, {}, None)]),
    "finish_without_delta_or_index": (b'{"id":"c","created":1,"model":"deepseek-chat","choices":'
                                      b'[{"finish_reason":"stop"}]}', [(0, {}, "stop")]),
    "null_delta_null_fingerprint": (b'{"id":"c","created":1,"model":"m","system_fingerprint":null,"choices":'
                                    b'[{"index":0,"delta":null,"finish_reason":null}]}', [(0, {}, None)]),
    "two_choices_without_index": (b'{"id":"c","created":1,"model":"m","choices":[{"delta":{"content":"a"}},'
                                  b'{"delta":{"content":"b"},"finish_reason":"length"}]}',
                                  [(0, {"content": "a"}, None), (1, {"content": "b"}, "length")]),
    "tool_call_without_index": (
        b'{"id":"c","created":1,"model":"llama3.2","choices":[{"delta":{"role":"assistant","tool_calls":'
        b'[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"eos"}]}',
        [(0, {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                    "function": {"name": "f", "arguments": "{}"}}]}, "stop")]),
    "logprobs_without_refusal": (b'{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":'
                                 b'{"content":"a"},"logprobs":{"content":[]}}]}', [(0, {"content": "a"}, None)]),
    "non_object_choice_dropped": (b'{"id":"c","created":1,"model":"m","choices":[null,{"delta":{"content":"a"}}]}',
                                  [(0, {"content": "a"}, None)]),
}


@pytest.mark.parametrize(("data", "expected"), SPARSE_CHUNKS.values(), ids=list(SPARSE_CHUNKS))
def test_sparse_chunks_are_completed_to_openais_schema(data: bytes, expected: list[Any]) -> None:
    validate = validator("CreateChatCompletionStreamResponse")
    assert not validate.is_valid(orjson.loads(data))  # as sent, they do not validate
    state = new_state()
    (chunk,) = openai.parse_stream_event(state, SSEEvent(data=data))
    assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert [(c["index"], c["delta"], c["finish_reason"]) for c in chunk["choices"]] == expected
    assert "system_fingerprint" not in chunk or isinstance(chunk["system_fingerprint"], str)
    finishes = [finish for _, _, finish in expected if finish]
    assert state.finish_reason == (finishes[-1] if finishes else None)


def test_sparse_response_is_completed_to_openais_schema() -> None:
    sparse = {"id": "x", "created": 1, "model": "llama3.2", "system_fingerprint": None, "choices": [
        {"message": {"content": "hi"}},
        {"message": {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}}]}
    assert not validator("CreateChatCompletionResponse").is_valid(sparse)
    body = openai.parse_response(orjson.dumps(sparse), TARGET).body
    assert_valid("CreateChatCompletionResponse", body)
    first, second = body["choices"]
    assert (first["index"], first["message"]["content"], first["finish_reason"]) == (0, "hi", "stop")
    (call,) = second["message"]["tool_calls"]
    assert (second["index"], second["finish_reason"], call["type"]) == (1, "tool_calls", "function")
    assert call["id"].startswith("call_") and json.loads(call["function"]["arguments"]) == {"a": 1}


@pytest.mark.parametrize("details", [[1], "x", 5, True], ids=str)
def test_usage_details_that_are_not_objects_hold_no_counts(details: Any) -> None:
    """A server's `*_tokens_details` that is not an object (a list, a string) was read with `.get`: an
    AttributeError, a 500 for a served answer. The counts beside it still count."""
    usage = openai.usage_from({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                               "prompt_tokens_details": details, "completion_tokens_details": details})
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens) == (3, 4, 0, 0)


def test_a_whole_answer_replayed_as_a_stream_names_its_tier_and_fingerprint_on_every_chunk() -> None:
    """A server that ignores `stream: true` answers the whole JSON answer, which the client gets as a stream's
    chunks. OpenAI names the processing tier that served the answer (and the system fingerprint) on every chunk
    of a stream; the replayed chunks said neither, so a client reading the tier from the stream (it is charged
    at it) saw none. Fields the answer does not have stay out of the chunks."""
    answer = {"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-5",
              "service_tier": "flex", "system_fingerprint": "fp_1",
              "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}]}
    chunks = openai.answer_chunks(answer)
    assert len(chunks) == 4
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
        assert (chunk["service_tier"], chunk["system_fingerprint"]) == ("flex", "fp_1")
    bare = openai.answer_chunks({k: v for k, v in answer.items() if k not in ("service_tier", "system_fingerprint")})
    assert all("service_tier" not in chunk and "system_fingerprint" not in chunk for chunk in bare)
