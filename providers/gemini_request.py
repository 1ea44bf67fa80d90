"""An OpenAI chat request as a Gemini `GenerateContentRequest` body (see `providers.gemini` for the
decisions where the two formats differ). Pure: no I/O; `ProviderError` when the request cannot be expressed.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from providers import reasoning
from providers.types import (
    JSON,
    ProviderError,
    Untranslatable,
    allowed_tools,
    assistant_text,
    gemini_call_id,
    images_follow,
    images_heading,
    refuse_openai_only,
    thought_signature,
    tool_arguments,
)

_SYSTEM_ROLES = frozenset({"system", "developer"})
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_SAMPLING = {"temperature": "temperature", "top_p": "topP", "top_k": "topK", "seed": "seed"}  # plain renames
_MAX_TOKENS_FIELDS = ("max_completion_tokens", "max_tokens")
_RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})  # what `_response_format` can express
# the fields of Gemini's OpenAPI-subset `Schema`; a schema using others goes as JSON Schema instead
_SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "items", "properties", "required",
    "anyOf", "propertyOrdering", "default", "example", "minItems", "maxItems", "minLength", "maxLength",
    "pattern", "minimum", "maximum", "minProperties", "maxProperties"})
_NO_PARAMETERS = frozenset({"type", "properties", "required", "additionalProperties", "$schema"})
# effort -> thinkingBudget: Google's own OpenAI-compatible endpoint's figures (low 1k, medium 8k, high 24k);
# the higher efforts stay at 24k, the most every Gemini 2.5 model takes
THINKING_BUDGETS = {"minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576, "max": 24576}


def gemini_body(body: JSON) -> JSON:
    """The `GenerateContentRequest` for an OpenAI chat request body (which is left unchanged)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ProviderError("messages must be a list")
    refuse_openai_only(body, "Gemini")
    contents, system = _contents(messages)
    out: JSON = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    tools, choice = body.get("tools"), body.get("tool_choice")
    if (allowed := allowed_tools(choice, tools)) is not None:
        choice, tools = allowed  # only the allowed tools go, with its mode (Gemini has no such field)
    if tools:
        if not isinstance(tools, list):
            raise ProviderError("tools must be a list")
        out["tools"] = [{"functionDeclarations": [_declaration(tool) for tool in tools]}]
    if choice is not None:
        calling = _calling_config(choice)  # checked even when unused: a bad one is still a 400
        if out.get("tools"):  # without tools Gemini has nothing to choose from, and a toolConfig only risks a 400
            out["toolConfig"] = {"functionCallingConfig": calling}
    if config := _generation_config(body):
        out["generationConfig"] = config
    return out


def _contents(messages: list[Any]) -> tuple[list[JSON], list[JSON]]:
    """(contents, systemInstruction parts); tool results find their function's name by tool_call_id.

    Images a tool returned (a functionResponse holds JSON only) follow all the functionResponse parts of
    their turn as inlineData, each group behind a text naming its call, as /v1/messages does for Claude's
    tool_result images on OpenAI-kind models."""
    contents: list[JSON] = []
    system: list[JSON] = []
    call_names: dict[str, JSON] = {}  # tool call id -> its functionCall (name, and Gemini's id when it gave one)
    images: list[JSON] = []  # of the tool results just read, for the end of their run
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role != "tool" and images:
            _append(contents, "user", images)
            images = []
        if role in _SYSTEM_ROLES:
            system += [{"text": text} for text in _texts(message.get("content"), where)]
            continue
        if role == "user":
            gemini_role, parts = "user", _parts(message.get("content"), where)
        elif role == "assistant":
            gemini_role, parts = "model", _assistant_parts(message, call_names, where)
        elif role == "tool":
            response, returned = _function_response(message, call_names, where)
            gemini_role, parts, images = "user", [response], images + returned
        else:
            raise ProviderError(f"{where} has an unsupported role {role!r}")
        _append(contents, gemini_role, parts)
    _append(contents, "user", images)
    return contents, system


def _append(contents: list[JSON], role: str, parts: list[JSON]) -> None:
    """Parts onto the last turn when it has the same role (Gemini wants turns to alternate), else a new turn."""
    if parts and contents and contents[-1]["role"] == role:
        contents[-1]["parts"] += parts
    elif parts:
        contents.append({"role": role, "parts": parts})


def _texts(content: Any, where: str) -> list[str]:
    """The non-empty texts of a system or tool message's content (a string or text parts)."""
    if content is None or isinstance(content, str):
        return [content] if content else []
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return [part["text"] for part in content if isinstance(part.get("text"), str) and part["text"]]
    raise ProviderError(f"{where}.content must be a string or a list of text parts")


def _parts(content: Any, where: str) -> list[JSON]:
    """Gemini parts of a user or assistant content: text, and images/audio/files as inlineData."""
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise ProviderError(f"{where}.content must be a string or a list of parts")
    parts: list[JSON] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            parts += [{"text": part[kind]}] if part[kind] else []
        elif kind == "image_url":
            image = part.get("image_url")
            parts.append(_inline_data(image.get("url") if isinstance(image, dict) else image, where))
        elif kind == "input_audio" and isinstance(audio := part.get("input_audio"), dict) and audio.get("data"):
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format') or 'wav'}", "data": audio["data"]}})
        elif kind == "file" and isinstance(file := part.get("file"), dict) and file.get("file_data"):
            parts.append(_inline_data(file["file_data"], where))
        else:
            raise ProviderError(f"{where}: a content part of type {kind!r} cannot be sent to Gemini")
    return parts


def _inline_data(url: Any, where: str) -> JSON:
    """`inlineData` from a base64 data: URI; Gemini does not fetch URLs."""
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        raise ProviderError(f"{where}: Gemini takes image bytes only and the image URL {url[:100]!r} was not "
                            "inlined; send it as a data: URI")
    header, comma, data = url.partition(",") if isinstance(url, str) else ("", "", "")
    mime_type = header.removeprefix("data:").split(";")[0]
    if not (header.startswith("data:") and comma and header.endswith(";base64") and mime_type):
        raise ProviderError(f"{where}: images and files must be base64 data: URIs (data:<type>;base64,...)")
    return {"inlineData": {"mimeType": mime_type, "data": data}}


def _assistant_parts(message: JSON, call_names: dict[str, JSON], where: str) -> list[JSON]:
    parts = _parts(message.get("content"), where)
    if not parts and (text := assistant_text(message, where)):
        parts = [{"text": text}]
    calls = message.get("tool_calls") or ()
    if not isinstance(calls, list | tuple):  # a number is not iterable; a string or object iterates as nonsense
        raise Untranslatable(f"{where}.tool_calls must be an array of tool calls", param=f"{where}.tool_calls")
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ProviderError(f"{where}: a tool call has no function name")
        args = tool_arguments(function.get("arguments"), f"{where}.tool_calls[{j}].function")
        part: JSON = {"functionCall": {"name": function["name"], "args": args}}
        if own_id := gemini_call_id(call):
            part["functionCall"]["id"] = own_id
        if isinstance(call.get("id"), str):
            call_names[call["id"]] = part["functionCall"]
        if signature := thought_signature(call):
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _function_response(message: JSON, call_names: dict[str, JSON], where: str) -> tuple[JSON, list[JSON]]:
    """A `functionResponse` part (the JSON object the tool returned, else {"content": its text}; the call's
    Gemini id when it had one) and the parts that carry the images it returned, a text naming the call first
    (none without images)."""
    call_id = message.get("tool_call_id")
    call = call_names.get(call_id) if isinstance(call_id, str) else None
    if call is None:
        raise ProviderError(f"{where}: tool_call_id {call_id!r} matches no earlier assistant tool call")
    content = message.get("content")
    if isinstance(content, list):
        is_image = [isinstance(part, dict) and part.get("type") == "image_url" for part in content]
        images = _parts([part for part, image in zip(content, is_image, strict=True) if image], where)
        content = [part for part, image in zip(content, is_image, strict=True) if not image]
    else:
        images = []
    text = "".join(_texts(content, where))
    try:
        response = orjson.loads(text)
    except orjson.JSONDecodeError:
        response = None
    if not isinstance(response, dict):
        response = {"content": images_follow(text, len(images), "the tool results") if images else text}
    returned = [{"text": images_heading(str(call_id))}, *images] if images else []
    function_response: JSON = {"name": call["name"], "response": response}
    if "id" in call:
        function_response = {"id": call["id"], **function_response}
    return {"functionResponse": function_response}, returned


def _declaration(tool: Any) -> JSON:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ProviderError("only function tools with a name can be sent to Gemini")
    declaration: JSON = {"name": function["name"]}
    if function.get("description"):
        declaration["description"] = function["description"]
    params = function.get("parameters")
    # Gemini refuses an OBJECT schema without properties: a function without parameters sends none
    if isinstance(params, dict) and (params.get("properties") or not set(params) <= _NO_PARAMETERS):
        declaration["parameters" if _fits_gemini_schema(params) else "parametersJsonSchema"] = params
    return declaration


def _fits_gemini_schema(schema: Any) -> bool:
    """Whether a JSON Schema stays inside the OpenAPI subset of Gemini's `Schema` message."""
    if not isinstance(schema, dict) or not set(schema) <= _SCHEMA_KEYS or not isinstance(schema.get("type", ""), str):
        return False
    properties, any_of, enum = schema.get("properties", {}), schema.get("anyOf", []), schema.get("enum", [])
    if not isinstance(properties, dict) or not isinstance(any_of, list):
        return False
    if not isinstance(enum, list) or not all(isinstance(value, str) for value in enum):
        return False  # `Schema.enum` holds strings only: Gemini refuses 1, true or null there with a 400
    children = [*properties.values(), *any_of, *([schema["items"]] if "items" in schema else [])]
    return all(_fits_gemini_schema(child) for child in children)


def _calling_config(choice: Any) -> JSON:
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"mode": "ANY", "allowedFunctionNames": [function["name"]]}
    raise Untranslatable(f"tool_choice {choice!r} cannot be sent to Gemini", param="tool_choice")


def _generation_config(body: JSON) -> JSON:
    if body.get("n") not in (None, 1):
        raise ProviderError("Gemini models give one choice per request: n must be 1")
    config: JSON = {}
    max_tokens = next((body[k] for k in _MAX_TOKENS_FIELDS if body.get(k) is not None), None)
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    config.update({name: body[field] for field, name in _SAMPLING.items() if body.get(field) is not None})
    if stop := body.get("stop"):
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    config.update(_response_format(body.get("response_format")))
    if thinking := _thinking_config(body, max_tokens):
        config["thinkingConfig"] = thinking
    return config


def _response_format(fmt: Any) -> JSON:
    """The generationConfig fields for OpenAI's `response_format`. A type Gemini cannot honour is refused, not
    ignored: the client would read a prose answer where it asked for a format."""
    if fmt is None:
        return {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if not isinstance(kind, str) or kind not in _RESPONSE_FORMATS:  # a list or object is unhashable
        raise Untranslatable(f"response_format type {str(kind)[:40]!r} cannot be sent to Gemini: use text, "
                             "json_object or json_schema", param="response_format")
    if kind == "text":
        return {}
    config: JSON = {"responseMimeType": "application/json"}
    schema = fmt["json_schema"].get("schema") if isinstance(fmt.get("json_schema"), dict) else None
    if kind == "json_schema" and isinstance(schema, dict):
        config["responseSchema" if _fits_gemini_schema(schema) else "responseJsonSchema"] = schema
    return config


def _thinking_config(body: JSON, max_tokens: Any) -> JSON:
    """`thinkingConfig` for `reasoning_effort` / `reasoning` (see `providers.reasoning`): off is budget 0 (a
    model that cannot stop thinking, Gemini 2.5 Pro, answers 400); an effort is Google's own budget for it, at
    most the effort's share of `max_tokens` when the client set one (Gemini's thoughts count against it);
    `reasoning.max_tokens` is the budget. Thought summaries come back as `reasoning_content` unless `exclude`."""
    wish = reasoning.requested(body)
    if wish is None:
        return {}
    config: JSON = {"includeThoughts": bool(wish.on) and not wish.exclude}
    if wish.on is False:
        config["thinkingBudget"] = 0
    elif wish.on and wish.budget is not None:
        config["thinkingBudget"] = wish.budget
    elif wish.on:
        budget = THINKING_BUDGETS[wish.effort]
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
            budget = min(budget, wish.budget_for(max_tokens))
        config["thinkingBudget"] = budget
    return config


# Google's documented stand-in for a thought signature the history does not have: it skips the check
SKIP_SIGNATURE = "skip_thought_signature_validator"
_GEMINI_VERSION = re.compile(r"gemini-(\d+)")


def checks_signatures(model: str) -> bool:
    """Whether the upstream model may be one that refuses unsigned function calls: Gemini 3 and later, and a
    Gemini name without a version (`gemini-flash-latest` moves to new models by itself)."""
    if "gemini" not in model:
        return False
    version = _GEMINI_VERSION.search(model)
    return version is None or int(version.group(1)) >= 3


def sign_current_turn(contents: list[JSON]) -> None:
    """Gemini 3 refuses the request (400) unless the first functionCall of each model step in the current
    turn (the steps since the last user content that is not function responses) carries its thought
    signature. A conversation begun on another model, or a client that dropped `extra_content`, has none to
    give: such a step's first call gets `SKIP_SIGNATURE`, in place on the parts this module built. Steps with
    a signature and earlier turns (not checked) are left as they are."""
    for content in reversed(contents):
        parts = content["parts"]
        if content["role"] == "user":
            if not any("functionResponse" in part for part in parts):
                return
            continue
        calls = [part for part in parts if "functionCall" in part]
        if calls and not any("thoughtSignature" in call for call in calls):
            calls[0]["thoughtSignature"] = SKIP_SIGNATURE
