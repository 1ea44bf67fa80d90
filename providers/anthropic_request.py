"""An OpenAI chat request as an Anthropic Messages request body.

The body is built from scratch, so what Anthropic does not know (`n`, penalties, `stream_options`, ...)
stays behind; what would change the answer's meaning if dropped (`logprobs`,
`top_logprobs`, legacy `functions` / `function_call`) is refused (`Untranslatable`). Translation decisions:

- `system` / `developer` messages, wherever they stand, become the top-level `system`: an array of text
  blocks, one per non-empty text, in order (keeps message boundaries and `cache_control` marks).
- Consecutive messages of one role share one turn; `tool` messages become `tool_result` blocks of a user
  turn, which a following user message joins, so turns alternate. A turn that is one plain text is sent
  as a string, as the SDK does. Empty texts are left out (Anthropic rejects empty text blocks).
- Content parts (text, images, inline PDF files) become Claude's blocks in `providers.anthropic_parts`.
- `tool_choice`: auto -> auto, none -> `{"type": "none"}` (tools are still sent, so `tool_use` blocks in
  the history stay valid), required -> any, a named function -> tool, `allowed_tools` -> its tools alone
  with its mode (`providers.types.allowed_tools`); `parallel_tool_calls: false` -> `disable_parallel_tool_use`.
- `response_format` `json_schema` / `json_object` becomes one more tool, `json_response_format`, whose
  `input_schema` is the client's schema (`{"type": "object"}` for json_object), forced with
  `tool_choice: {"type": "tool"}` (Anthropic's own recipe for JSON output); `providers.anthropic` reads that
  tool's input back as the message content. With the client's own tools beside it, the model must call one
  of them or answer through the JSON tool (`{"type": "any"}`); `tool_choice: none` forces the JSON tool;
  `required` or a named function ask for a tool call, which is then the answer, so the JSON tool is left
  out. A client tool of that reserved name is refused. `{"type": "text"}` asks for nothing.
- `strict: true` (a strict `json_schema`, a strict function) makes the tool strict, Claude's structured outputs;
  a model without them (before Claude 4.5, `enforces_schemas`) gets the tool without it, as before: a schema it
  follows closely but is not held to (such models refuse the field).
- An assistant message without content stands for its `refusal` or audio `transcript` (`assistant_text`).
- Tool call ids: Claude takes only `^[a-zA-Z0-9_-]+$`; an id from another provider with other characters
  (`functions.get_weather:0`) is rewritten by `claude_tool_id`, the same way in the `tool_use` and its
  `tool_result`, so the pair still matches.
- `max_tokens` is required upstream: `max_completion_tokens`, else `max_tokens`, else the model's default.
  `temperature` is clamped to Anthropic's 0..1. Claude's own tier fields, `speed` (fast mode) and
  `inference_geo`, go as they are (the hold covers the tier they ask for); OpenAI's `service_tier` names none
  Claude takes. `target.drop` applies to the client's field names before
  translation and to Anthropic's after it (model, messages and max_tokens are never dropped).
- Reasoning (`reasoning_effort`, OpenRouter's `reasoning`; see `providers.reasoning`) becomes
  `thinking: {"type": "enabled", "budget_tokens": B}`. B is `reasoning.max_tokens`, else the effort's share of
  max_tokens (max/xhigh 95 %, high 80 %, medium 50 %, low 20 %, minimal 10 %), at least 1024 (Anthropic's
  minimum). Anthropic wants B < max_tokens: when it is not, max_tokens becomes B + the client's max_tokens (the
  answer keeps the room the client asked for), both bounded by the model's max_output_tokens; a model whose
  maximum leaves no room for 1024 thinking tokens is refused. Thinking allows no other temperature than 1,
  no top_k and no top_p below 0.95: those are left out rather than refused (clients and frameworks set them
  by default). Thinking is not sent when Anthropic would refuse it: a forced tool (`tool_choice` required or
  a named function, or the tool that carries `response_format`), or a last assistant turn that called tools
  without its thinking blocks (a history from another model, or a client that dropped `extra_content`) —
  Anthropic lets such a turn go without thinking. Claude's thinking blocks come back on a tool call's
  `extra_content.anthropic.thinking_blocks` (see `providers.anthropic`) and go out again at the place they
  stood: the first call's before the turn's text, a later call's right before its `tool_use`; without
  thinking on the request they stay behind.

Pure: no I/O. `ProviderError` means the request cannot be expressed for Anthropic.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from providers import reasoning
from providers.anthropic_parts import parts
from providers.types import (
    JSON,
    THINKING_BLOCKS,
    ChatRequest,
    ProviderError,
    Target,
    Untranslatable,
    allowed_tools,
    assistant_text,
    claude_thinking,
    refuse_openai_only,
    tool_arguments,
    whole_number,
)

DEFAULT_MAX_TOKENS = 4096
MIN_THINKING_BUDGET = 1024  # Anthropic refuses a smaller budget_tokens
MIN_THINKING_TOP_P = 0.95  # the lowest top_p Anthropic takes with thinking
_FORCED_CHOICES = frozenset({"any", "tool"})  # tool_choice types Anthropic refuses with thinking
JSON_TOOL = "json_response_format"  # the forced tool that carries a `response_format` answer
_TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any"}
_REQUIRED = frozenset({"model", "messages", "max_tokens"})

# Claude's structured outputs (a tool's `strict: true` makes its input follow the schema) start with Claude 4.5
STRICT_SINCE = (4, 5)
_CLAUDE_VERSION = re.compile(r"claude-(?:(?:opus|sonnet|haiku)-)?(\d+)(?:[-.](\d{1,2})(?!\d))?")
_TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
_NOT_TOOL_ID = re.compile(r"[^a-zA-Z0-9_-]")

__all__ = ["DEFAULT_MAX_TOKENS", "JSON_TOOL", "claude_tool_id", "enforces_schemas", "max_tokens", "translate_body",
           "translate_messages"]


def claude_tool_id(call_id: str) -> str:
    """`call_id` as Claude accepts it: unchanged when it fits `^[a-zA-Z0-9_-]+$`, else its other characters
    made `_` and a digest of the whole id appended, so that two ids differing only there stay apart and a
    tool_use and its tool_result, rewritten apart, still agree. Claude's own ids always fit."""
    if _TOOL_ID.fullmatch(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:12]
    return f"{_NOT_TOOL_ID.sub('_', call_id)}_{digest}" if call_id else f"toolu_{digest}"


def enforces_schemas(model: str) -> bool:
    """Whether the Claude `model` (an upstream name) takes `strict` tools, held to their schemas: Claude 4.5 and
    later, and a name without a version; older ones (`claude-sonnet-4-0`) follow a schema only mostly."""
    version = _CLAUDE_VERSION.search(model)
    return version is None or (int(version.group(1)), int(version.group(2) or 0)) >= STRICT_SINCE


def translate_body(req: ChatRequest, target: Target) -> JSON:
    """The Anthropic request body for a client's OpenAI chat body (which is left untouched)."""
    src = {k: v for k, v in req.body.items() if k not in target.drop or k in _REQUIRED}
    messages = src.get("messages")
    if not isinstance(messages, list):
        raise ProviderError("messages must be a list")
    if src.get("n") not in (None, 1):
        raise ProviderError("Anthropic models give one choice per request: n must be 1")
    refuse_openai_only(src, "Anthropic")
    system, turns = translate_messages(messages)
    out: JSON = {"model": target.upstream_model, "max_tokens": max_tokens(src, target), "messages": turns}
    if system:
        out["system"] = system
    _sampling(src, out)
    _tools(src, out, target.upstream_model)
    _thinking(src, out, target)
    user = src.get("user") or src.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if req.stream:
        out["stream"] = True
    for name in target.drop:
        if name not in _REQUIRED:
            out.pop(name, None)
    return out


def max_tokens(src: JSON, target: Target) -> int:
    """The max_tokens Claude is sent before thinking's room: the client's, else the model's, else 4096."""
    for value in (whole_number(src.get("max_completion_tokens")), whole_number(src.get("max_tokens"))):
        if value is not None:
            return value
    return target.default_max_tokens or DEFAULT_MAX_TOKENS


def _sampling(src: JSON, out: JSON) -> None:
    temperature = src.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        out["temperature"] = min(max(temperature, 0), 1)
    for name in ("top_p", "top_k"):
        if src.get(name) is not None:
            out[name] = src[name]
    stop = src.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and stop:
        out["stop_sequences"] = stop
    for name in ("speed", "inference_geo"):  # Claude's processing tier, at its price: held at what is sent
        if (tier := src.get(name)).__class__ is str:
            out[name] = tier


def _thinking(src: JSON, out: JSON, target: Target) -> None:
    """`thinking` (and the max_tokens and sampling it needs) when the request asks for reasoning and Anthropic
    would take it; otherwise the history's carried thinking blocks stay behind. See the module docstring."""
    wish = reasoning.requested(src)
    if wish is None or not wish.on or not _thinking_allowed(out):
        _strip_thinking(out["messages"])
        return
    asked = out["max_tokens"]
    budget = max(wish.budget_for(asked), MIN_THINKING_BUDGET)
    max_tokens = asked if budget < asked else budget + asked
    if target.default_max_tokens:
        max_tokens = min(max_tokens, target.default_max_tokens)
        budget = min(budget, max_tokens - 1)
    if budget < MIN_THINKING_BUDGET:
        raise Untranslatable(f"thinking needs at least {MIN_THINKING_BUDGET} tokens below max_tokens, and this "
                             f"model answers at most {max_tokens} tokens", param="reasoning")
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    out["max_tokens"] = max_tokens
    if out.get("temperature") != 1:
        out.pop("temperature", None)
    out.pop("top_k", None)
    top_p = out.get("top_p")
    if isinstance(top_p, int | float) and top_p < MIN_THINKING_TOP_P:
        del out["top_p"]


def _thinking_allowed(out: JSON) -> bool:
    """Whether Anthropic takes thinking with this body: no forced tool, and a last assistant turn that called
    tools starts with its thinking blocks (Anthropic's rule for the tool loop in progress)."""
    choice = out.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in _FORCED_CHOICES:
        return False
    last = next((turn for turn in reversed(out["messages"]) if turn["role"] == "assistant"), None)
    content = last["content"] if last is not None else None
    if not isinstance(content, list) or not any(block.get("type") == "tool_use" for block in content):
        return True
    return content[0].get("type") in THINKING_BLOCKS


def _strip_thinking(turns: list[JSON]) -> None:
    """Leave out the thinking blocks carried back from earlier answers: only a request with thinking on
    needs them, and one without has no use for them."""
    for turn in turns:
        if turn["role"] == "assistant" and isinstance(turn["content"], list):
            turn["content"] = [block for block in turn["content"] if block.get("type") not in THINKING_BLOCKS]


def translate_messages(messages: list[Any]) -> tuple[list[JSON], list[JSON]]:
    """(system text blocks, alternating user/assistant turns) for OpenAI `messages`."""
    system: list[JSON] = []
    turns: list[JSON] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ProviderError(f"messages[{i}] is not an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            blocks = parts(msg.get("content"), f"messages[{i}]")
            if any(block["type"] != "text" for block in blocks):
                raise ProviderError(f"messages[{i}]: system messages can hold only text for Anthropic models")
            system.extend(blocks)
            continue
        if role == "user":
            blocks = parts(msg.get("content"), f"messages[{i}]")
        elif role == "assistant":
            blocks = _assistant_blocks(msg, i)
        elif role == "tool":
            role, blocks = "user", [_tool_result(msg, i)]
        else:
            raise ProviderError(f"messages[{i}]: role {role!r} is not supported for Anthropic models")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and content[0].keys() == {"type", "text"}:
            turn["content"] = content[0]["text"]  # plain text turns as strings, the way the SDK sends them
    return system, turns


def _assistant_blocks(msg: JSON, i: int) -> list[JSON]:
    blocks = parts(msg.get("content"), f"messages[{i}]")
    if not blocks and (text := assistant_text(msg, f"messages[{i}]")):
        blocks = [{"type": "text", "text": text}]
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ProviderError(f"messages[{i}].tool_calls must be a list")
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(call.get("id"), str) or not isinstance(fn.get("name"), str):
            raise ProviderError(f"messages[{i}].tool_calls[{j}] needs an id and a function name")
        args = tool_arguments(fn.get("arguments"), f"messages[{i}].tool_calls[{j}].function")
        thinking = claude_thinking(call)
        if j == 0:
            blocks[:0] = thinking  # Claude's turn starts with its thinking, before any text
        else:
            blocks += thinking  # interleaved thinking stood right before its tool_use
        blocks.append({"type": "tool_use", "id": claude_tool_id(call["id"]), "name": fn["name"], "input": args})
    return blocks


def _tool_result(msg: JSON, i: int) -> JSON:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str):
        raise ProviderError(f"messages[{i}] (role tool) needs a tool_call_id")
    block: JSON = {"type": "tool_result", "tool_use_id": claude_tool_id(call_id)}
    content = msg.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif content := parts(content, f"messages[{i}]"):
        block["content"] = content
    return block


def _tools(src: JSON, out: JSON, model: str) -> None:
    """`tools`, `tool_choice`, `parallel_tool_calls` and `response_format` -> Anthropic's tools and tool_choice
    for the upstream `model`."""
    tools, asked = src.get("tools"), src.get("tool_choice")
    if (allowed := allowed_tools(asked, tools)) is not None:
        asked, tools = allowed
    converted = [_tool(tool, j, model) for j, tool in enumerate(tools)] if isinstance(tools, list) else []
    choice = _tool_choice(asked) if converted else {}
    answer_tool = _answer_tool(src.get("response_format"), model)
    if answer_tool is not None and choice.get("type") in (None, "auto", "none"):
        if any(spec["name"] == JSON_TOOL for spec in converted):
            raise Untranslatable(f"the tool name {JSON_TOOL!r} is reserved for response_format on Anthropic models",
                                 param="tools")
        use_own = converted and choice.get("type") != "none"
        choice = {"type": "any"} if use_own else {"type": "tool", "name": JSON_TOOL}
        converted.append(answer_tool)
    if not converted:
        return
    out["tools"] = converted
    if src.get("parallel_tool_calls") is False and choice.get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice:
        out["tool_choice"] = choice


def _tool(tool: Any, j: int, model: str) -> JSON:
    fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise Untranslatable(f"tools[{j}]: only function tools with a name are supported for Anthropic models",
                             param="tools")
    spec: JSON = {"name": fn["name"]}
    if isinstance(fn.get("description"), str):
        spec["description"] = fn["description"]
    spec["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
    return _strict(spec, fn, model)


def _strict(spec: JSON, asked: JSON, model: str) -> JSON:
    """`spec` with `strict: true` when the client's function or JSON schema (`asked`) is strict and the model
    has strict tools (Claude 4.5 and later): OpenAI then promises an answer that follows the schema, and so
    does Claude's strict tool. An older model gets the tool as it always did, a schema it follows closely but
    is not held to (it refuses the field); `/v1/models` does not list `structured_outputs` for it."""
    if asked.get("strict") is True and enforces_schemas(model):
        spec["strict"] = True
    return spec


def _answer_tool(fmt: Any, model: str) -> JSON | None:
    """The tool whose input is the answer `response_format` asks for, or None for plain text."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    description = "Give your answer by calling this tool: its input is the answer, as a JSON object"
    if kind == "json_object":
        return {"name": JSON_TOOL, "description": description + ".", "input_schema": {"type": "object"}}
    spec = fmt.get("json_schema") if kind == "json_schema" else None
    spec = spec if isinstance(spec, dict) else {}
    schema = spec.get("schema", {"type": "object"}) if spec else None
    if not isinstance(schema, dict):
        raise Untranslatable("response_format must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                             "{\"type\": \"json_schema\", \"json_schema\": {\"name\", \"schema\": {...}}}",
                             param="response_format")
    if isinstance(spec.get("name"), str):
        description += f" following the schema {spec['name']!r}"
    if isinstance(spec.get("description"), str):
        description += f" ({spec['description']})"
    return _strict({"name": JSON_TOOL, "description": description + ".", "input_schema": schema}, spec, model)


def _tool_choice(choice: Any) -> JSON:
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return {"type": _TOOL_CHOICES[choice]}
    fn = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
        return {"type": "tool", "name": fn["name"]}
    if choice is None:
        return {}
    raise Untranslatable(f"tool_choice {choice!r} is not supported for Anthropic models", param="tool_choice")
