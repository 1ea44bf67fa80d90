"""Anthropic's Messages format in front of any provider: the reverse of `providers.anthropic`.

A client speaking Anthropic's API (the Anthropic SDK, Claude Code) sends a Messages request; it becomes the
gateway's internal OpenAI chat request, which every adapter already serves, and the OpenAI-shaped answer
(or stream of chunks) becomes an Anthropic `message` (or its SSE events). Translation decisions:

- `system` (a string or text blocks) -> one leading system message; `cache_control` marks are kept on
  text parts. `stop_sequences` -> `stop`; `metadata.user_id` -> `user`; `top_k` only for kinds that take
  it (Gemini); `service_tier` goes on, as the hold read it (OpenAI's names, `flex`, `priority`, pass as they are,
  Anthropic's `standard_only` becomes OpenAI's `default`; a kind that carries no tier, Gemini, leaves it behind).
- `thinking` and `output_config.effort` become the chat request's reasoning fields only for a model whose
  reasoning limits the gateway hands in (`reasoning.Limits`, from the model's config): a value the model
  does not take is a 400 where the client's thinking was simply left out before, so a model whose limits are
  unknown keeps leaving it out. With limits (`reasoning_fields`): a budget (`thinking.enabled.budget_tokens`)
  becomes `reasoning.max_tokens` within the model's token range, or a `reasoning_effort` (the one
  `output_config.effort` names, else the effort of the budget's share of `max_tokens`) snapped to the
  nearest the model takes; an effort alone the same ("max": the highest it takes; for a token range, the
  effort's share of `max_tokens`); `disabled` -> budget 0, or effort "none", or "minimal" (OpenAI: "very few
  or no reasoning tokens", the nearest to off before gpt-5.1) where the model takes it, else the model's
  default (Gemini 2.5 Pro refuses budget 0); `adaptive` -> the model's default, as is no budget; an effort
  Anthropic does not have is refused in its words, whatever the model (`_effort`).
- Blocks: text -> text parts; images (base64 / url sources) -> `image_url` (data URI / URL);
  `tool_use` -> assistant `tool_calls` (input as JSON text); each `tool_result` -> a `tool` message placed
  before the rest of its user turn (its images, which a `tool` message cannot hold, open the user message
  after the tool messages, behind a text naming the tool call); `thinking` / `redacted_thinking` blocks of
  earlier turns are dropped (one of ours still hands its Gemini signature to the call after it, below), and
  an assistant turn left with nothing is dropped whole.
- Tools: `input_schema` -> `parameters`; `tool_choice` auto/any/tool/none -> auto/required/named/none; any
  other type, a `tool` without its name, `any`/`tool` without tools are refused in Anthropic's words (dropped,
  the model would choose freely); `auto`/`none` without tools send no choice (OpenAI refuses one without
  tools); `disable_parallel_tool_use` -> `parallel_tool_calls: false`. A tool_use id marked as Gemini's
  (`anthropic_answer.GEMINI_CALL_ID`) goes back as that id, marked in the call's `extra_content` as the Gemini
  adapter reads it, so the call and its `functionResponse` carry its id.
- `thinking.display: "omitted"`: the client gets no thinking text (`thinking_shown`; Anthropic answers blocks
  with empty `thinking`), and a budget sent as `reasoning` gets `exclude` (Gemini then sends no thoughts).
- `output_config.format` (or the beta's `output_format`) json_schema -> `response_format` json_schema.
- The answer (message or stream events) is `providers.anthropic_answer`'s job.
- Gemini thought signatures: Gemini 3 refuses the next turn unless each signed function call comes back with
  its signature (chat: the tool call's `extra_content.google.thought_signature`). Anthropic's `tool_use` has
  no field for it, but clients keep `thinking` blocks and their signatures, so it travels as the `signature`
  of a thinking block right before the call's `tool_use` (the reasoning block just before, else a new one with
  empty `thinking`), behind `GEMINI_SIGNATURE` ("gemini:"), and comes back to that call. The prefix marks the
  signatures this module wrote: a conversation begun on Claude carries Anthropic's own before its tool_use
  blocks, which Gemini 3 refuses ("Corrupted thought signature"), and no base64 signature starts with
  "gemini:". On Claude's native route, `anthropic_history.claude_history` leaves ours behind (Anthropic checks
  every signature it is sent).

Pure and synchronous: no I/O, no aiohttp. `ProviderError` means the request cannot be expressed.
"""

from __future__ import annotations

from typing import Any

import orjson

from providers import reasoning
from providers.anthropic_answer import GEMINI_CALL_ID, GEMINI_SIGNATURE
from providers.types import (
    JSON,
    THINKING_BLOCKS,
    ProviderError,
    Untranslatable,
    images_follow,
    images_heading,
    signed,
    whole_number,
)

_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_NEEDS_TOOLS = ("any", "tool")
_SAMPLING = ("temperature", "top_p", "stream")


# -- request ---------------------------------------------------------------------------------------


def chat_body(body: JSON, top_k: bool = False, reasoning_limits: reasoning.Limits | None = None) -> JSON:
    """The OpenAI chat request an Anthropic Messages request stands for. `top_k`: the target kind takes a
    `top_k` field in its chat body (Gemini's adapter makes it `topK`); OpenAI itself refuses one.
    `reasoning_limits`: what the model's reasoning control takes (None: unknown, and `thinking` stays behind)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ProviderError("'messages' must be a list")
    out: JSON = {"model": body.get("model"), "messages": [*_system(body.get("system")), *_messages(messages)]}
    if isinstance(body.get("max_tokens"), int):
        out["max_tokens"] = body["max_tokens"]
    for name in (*_SAMPLING, "top_k") if top_k else _SAMPLING:
        if body.get(name) is not None:
            out[name] = body[name]
    if isinstance(body.get("stop_sequences"), list) and body["stop_sequences"]:
        out["stop"] = body["stop_sequences"]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    if (tier := body.get("service_tier")).__class__ is str:  # else the account's default tier would serve it
        out["service_tier"] = "default" if tier == "standard_only" else tier
    _tools(body, out)
    if (response_format := _response_format(body)) is not None:
        out["response_format"] = response_format
    if reasoning_limits is not None:
        out.update(reasoning_fields(body, reasoning_limits))
        if isinstance(out.get("reasoning"), dict) and not thinking_shown(body):
            out["reasoning"]["exclude"] = True  # a budget's kinds (Gemini, OpenRouter) then send no thought text
    elif "output_config" in body:
        _effort(body)  # refused as Anthropic refuses it, whatever the model
    return out


# -- thinking ----------------------------------------------------------------------------------------

_EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})  # Anthropic's `output_config.effort` values


def reasoning_fields(body: JSON, limits: reasoning.Limits) -> JSON:
    """The chat reasoning fields (`reasoning` with `max_tokens`, or `reasoning_effort`) for the request's
    `thinking` and `output_config.effort`, as the model with `limits` takes them ({}: the model's default)."""
    thinking = body.get("thinking") if isinstance(body.get("thinking"), dict) else None
    kind = thinking.get("type") if thinking is not None else None
    if kind == "disabled":
        return _off(limits)
    budget = _count(thinking.get("budget_tokens")) if thinking is not None and kind == "enabled" else None
    effort = _effort(body)
    if budget is None and effort is None:
        return {}  # adaptive, or nothing readable: the model's default
    room = _count(body.get("max_tokens"))
    if limits.budget is not None:
        if budget is None:  # the effort's share of the answer's tokens (without them, of the most the model takes)
            budget = int((room or limits.budget[1]) * reasoning.EFFORT_SHARE[str(effort)])
        return {"reasoning": {"max_tokens": limits.clamp(budget)}}
    level = effort or (reasoning.level_for_share(budget / room) if budget and room else "medium")
    snapped = limits.snap(str(level))
    return {"reasoning_effort": snapped} if snapped else {}


def _effort(body: JSON) -> str | None:
    """`output_config.effort`, None when absent. A value Anthropic does not have is its 400, in its words (it
    was left to the model's default without a word), one of another type too (tested before the set: unhashable)."""
    config = body.get("output_config")
    effort = config.get("effort") if config.__class__ is dict else None
    if effort is None or (effort.__class__ is str and effort in _EFFORTS):
        return effort
    raise Untranslatable("output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'",
                         param="output_config.effort")


def thinking_shown(body: JSON) -> bool:
    """Whether the client wants the thinking's text: not with `thinking.display: "omitted"`, where Anthropic answers
    thinking blocks with empty `thinking` (billed the same; only a signature to send back)."""
    thinking = body.get("thinking")
    return not (isinstance(thinking, dict) and thinking.get("display") == "omitted")


def _count(value: Any) -> int | None:
    """A whole number above 0, else None (a bool is no count)."""
    number = whole_number(value)
    return number if number is not None and number > 0 else None


def _off(limits: reasoning.Limits) -> JSON:
    """Thinking off where the model can stop it; else nothing, and the model thinks as it does by default."""
    if limits.budget is not None:
        return {"reasoning": {"max_tokens": 0}} if limits.can_disable else {}
    for effort in ("none", "minimal"):
        if effort in limits.efforts:
            return {"reasoning_effort": effort}
    return {}


def _response_format(body: JSON) -> JSON | None:
    """OpenAI's `response_format` for `output_config.format` (or the beta's top-level `output_format`).

    Claude decodes to the schema; OpenAI does so only in strict mode, which refuses schemas with optional
    or open-ended properties that Claude takes. So strict when the schema fits it, else the schema as a
    guide (the model still answers JSON), rather than a refusal of a request Claude would have served."""
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    fmt = body.get("output_format") if fmt is None else fmt
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise ProviderError("output_config.format must be {\"type\": \"json_schema\", \"schema\": {...}}")
    schema = fmt["schema"]
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": _strict_fit(schema)}}


def _strict_fit(schema: Any) -> bool:
    """Whether OpenAI's strict mode takes the schema: every object closed and all its properties required."""
    if isinstance(schema, list):
        return all(_strict_fit(item) for item in schema)
    if not isinstance(schema, dict):
        return True
    properties = schema.get("properties")
    if isinstance(properties, dict) or schema.get("type") == "object":
        names = set(properties) if isinstance(properties, dict) else set()
        if schema.get("additionalProperties") is not False or set(schema.get("required") or ()) != names:
            return False
    return all(_strict_fit(value) for key, value in schema.items() if key not in ("required", "enum", "const"))


def _system(system: Any) -> list[JSON]:
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise ProviderError("'system' must be a string or a list of text blocks")
    parts = [_text_part(block, f"system[{i}]") for i, block in enumerate(system)]
    return [{"role": "system", "content": parts}]


def _text_part(block: Any, where: str) -> JSON:
    if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise ProviderError(f"{where} must be a text block")
    part: JSON = {"type": "text", "text": block["text"]}
    if isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


def _messages(messages: list[Any]) -> list[JSON]:
    out: list[JSON] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            raise ProviderError(f"messages[{i}] must be an object with role user or assistant")
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": content})
        elif isinstance(content, list):
            out += _assistant(content, i) if msg["role"] == "assistant" else _user(content, i)
        else:
            raise ProviderError(f"messages[{i}].content must be a string or a list of blocks")
    return out


def _user(blocks: list[Any], i: int) -> list[JSON]:
    """Tool results first (each its own `tool` message, answering the previous assistant turn), then the rest.

    A `tool` message holds text only, so a tool result's images go into the user message after the tool
    messages, each group behind a text naming its tool call, ahead of the user's own blocks."""
    results: list[JSON] = []
    moved: list[JSON] = []
    parts: list[JSON] = []
    for j, block in enumerate(blocks):
        where = f"messages[{i}].content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            message, images = _tool_message(block, where)
            results.append(message)
            if images:
                moved += [{"type": "text", "text": images_heading(block["tool_use_id"])}, *images]
        elif kind == "text":
            parts.append(_text_part(block, where))
        elif kind == "image":
            parts.append(_image_part(block, where))
        else:
            raise ProviderError(f"{where}: block type {str(kind)[:40]!r} is not supported on this model")
    parts = moved + parts
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _image_part(block: JSON, where: str) -> JSON:
    return {"type": "image_url", "image_url": {"url": _image_url(block.get("source"), where)}}


def _image_url(source: Any, where: str) -> str:
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise ProviderError(f"{where}: images need a base64 or url source")


def _tool_message(block: JSON, where: str) -> tuple[JSON, list[JSON]]:
    """The `tool` message of a tool_result, and its images as `image_url` parts (for the next user message;
    the tool message says they follow)."""
    if not isinstance(block.get("tool_use_id"), str):
        raise ProviderError(f"{where}: tool_result needs a tool_use_id")
    content = block.get("content")
    images: list[JSON] = []
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text")))
            elif kind == "image":
                images.append(_image_part(part, f"{where}.content[{k}]"))
            else:
                raise ProviderError(f"{where}: only text and image tool results are supported on this model")
        content = "".join(texts)
    text = content if isinstance(content, str) else ""
    if images:
        text = images_follow(text, len(images), "in the next user message")
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": _geminis(block["tool_use_id"]) or block["tool_use_id"],
            "content": text}, images


def _assistant(blocks: list[Any], i: int) -> list[JSON]:
    texts, calls = [], []
    signature = None  # the Gemini signature of the block just before, when it was one of our thinking blocks
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            calls.append(_tool_call(block, signature))
        elif not isinstance(kind, str) or kind not in THINKING_BLOCKS:  # a list or object is unhashable
            raise ProviderError(f"messages[{i}].content[{j}]: block type {str(kind)[:40]!r} is not supported on "
                                "this model")
        signature = _gemini_signature(block) if kind == "thinking" else None
    text = "".join(texts)
    if not text and not calls:
        return []  # only thinking (Claude Code sends such turns back): no empty assistant message
    message: JSON = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tool_call(block: JSON, signature: str | None) -> JSON:
    """The chat tool call of a tool_use: one whose id Gemini gave goes back under that id, marked as Gemini's
    (`extra_content.google.function_call_id`, which the Gemini adapter sends back on the call and its response)."""
    call_id = str(block.get("id"))
    own = _geminis(call_id)
    call: JSON = {"id": own or call_id, "type": "function",
                  "function": {"name": str(block.get("name")),
                               "arguments": orjson.dumps(block.get("input") or {}).decode()}}
    if signature:
        call["extra_content"] = signed(signature)
    if own:
        call.setdefault("extra_content", {"google": {}})["google"]["function_call_id"] = own
    return call


def _geminis(call_id: str) -> str | None:
    """The id Gemini gave a call, for a tool id `anthropic_answer.tool_use_id` marked as its, else None."""
    own = call_id[len(GEMINI_CALL_ID):] if call_id.startswith(GEMINI_CALL_ID) else ""
    return own or None


def _gemini_signature(block: JSON) -> str | None:
    """The Gemini thought signature a thinking block of ours carries. Only signatures behind our prefix are
    taken: an Anthropic one handed to Gemini would get the turn refused. Clients send back whatever they were
    given, so anything else (no string, no prefix, nothing after it) is no signature, not an error."""
    signature = block.get("signature")
    if isinstance(signature, str) and signature.startswith(GEMINI_SIGNATURE):
        return signature[len(GEMINI_SIGNATURE):] or None
    return None


def _tools(body: JSON, out: JSON) -> None:
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        converted = []
        for j, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or "input_schema" not in tool:
                raise ProviderError(f"tools[{j}]: only custom tools with a name and input_schema are supported")
            fn: JSON = {"name": tool["name"], "parameters": tool["input_schema"]}
            if tool.get("description"):
                fn["description"] = tool["description"]
            converted.append({"type": "function", "function": fn})
        out["tools"] = converted
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return
    tool_choice = _tool_choice(choice)
    if "tools" not in out:  # OpenAI refuses a choice (and the parallel switch) without tools
        if choice["type"] in _NEEDS_TOOLS:  # a tool must be called: Anthropic refuses it, and so do we
            raise Untranslatable(f"tool_choice.{choice['type']} may only be specified while providing tools",
                                 param="tool_choice")
        return  # auto or none without tools: nothing to choose from, what the model does either way
    out["tool_choice"] = tool_choice
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _tool_choice(choice: JSON) -> Any:
    """Chat's `tool_choice` for Anthropic's. What Anthropic refuses is refused here too, in its words: dropped, it
    would leave the model free to answer in a way the client had ruled out."""
    kind = choice.get("type")
    if not isinstance(kind, str | None):  # a list or object is unhashable: no lookup below could take it
        raise Untranslatable("tool_choice.type must be a string", param="tool_choice")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise Untranslatable("tool_choice.name: " + ("Field required" if name is None else
                                                         "Input should be a valid string"), param="tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    if kind in _TOOL_CHOICES:
        return _TOOL_CHOICES[kind]
    expected = "the expected tags: 'auto', 'any', 'tool', 'none'"
    if kind is None:
        raise Untranslatable(f"tool_choice: Unable to extract tag using discriminator 'type' ({expected})",
                             param="tool_choice.type")
    raise Untranslatable(f"tool_choice: Input tag {kind[:40]!r} found using 'type' does not match any of {expected}",
                         param="tool_choice.type")
