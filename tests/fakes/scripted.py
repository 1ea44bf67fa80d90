"""Recorded answers made to say a chosen text or call a chosen function, for clients that act on what the model
said (LangChain's structured output parses the text; a tool loop runs the call it names).

Only the words or the call change: each answer is the recorded one of the fake's wire folder with its text or
its function call replaced, streamed in as many events as the recording has for it (the text cut into that many
pieces), every other field and the events around them as recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Call = dict[str, Any]  # {"name": ..., "arguments": {...}} (Gemini: and an optional "id", `functionCall.id`)


def pieces(text: str, count: int) -> list[str]:
    """`text` cut into `count` pieces (the last ones may be empty when the text is short; none for no place)."""
    size = -(-len(text) // max(count, 1))
    return [text[i * size:(i + 1) * size] for i in range(count)]


# --- OpenAI chat -------------------------------------------------------------------------------------------


def openai_answer(wire: Path, answer: dict[str, Any], content: str | None, call: Call | None) -> dict[str, Any]:
    """A chat completion saying `content`, or calling `call` (`docs-chat-tools.response.json` with its call)."""
    if call is not None:
        answer = json.loads((wire / "docs-chat-tools.response.json").read_bytes())
        message = answer["choices"][0]["message"]
        message.setdefault("refusal", None)  # the documented example predates the field, which OpenAI now sends
        (tool_call,) = message["tool_calls"]
        tool_call["function"] = {"name": call["name"], "arguments": json.dumps(call["arguments"])}
    elif content is not None:
        answer["choices"][0]["message"]["content"] = content
    return answer


def _data(event: bytes) -> Any:
    data = event.removeprefix(b"data: ").strip()
    return None if data == b"[DONE]" else json.loads(data)


def _openai_event(chunk: Any) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def openai_events(events: list[bytes], content: str | None, call: Call | None) -> list[bytes]:
    """The recorded stream's content deltas (or, with `call`, the tool call's argument deltas of
    `sdk-stream-tool-call.sse`) replaced by pieces of `content` (of `call`'s arguments as JSON)."""
    if content is None and call is None:
        return events
    field = "content" if call is None else "arguments"
    chunks = [_data(event) for event in events]

    def carries(chunk: Any) -> bool:
        if not (chunk and chunk["choices"]):
            return False
        delta = chunk["choices"][0].get("delta") or {}
        if call is None:
            return bool(delta.get("content"))
        calls = delta.get("tool_calls") or [{}]
        return "id" not in calls[0] and bool(calls[0].get("function", {}).get("arguments"))

    spots = [i for i, chunk in enumerate(chunks) if carries(chunk)]
    text = content if call is None else json.dumps(call["arguments"])
    out = list(events)
    for i, piece in zip(spots, pieces(text, len(spots)), strict=True):
        delta = chunks[i]["choices"][0]["delta"]
        if field == "content":
            delta["content"] = piece
        else:
            delta["tool_calls"][0]["function"]["arguments"] = piece
        out[i] = _openai_event(chunks[i])
    if call is not None:
        first = chunks[0]
        first["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] = call["name"]
        out[0] = _openai_event(first)
    return out


# --- Gemini -------------------------------------------------------------------------------------------------


def _gemini_parts(chunk: Any) -> list[dict[str, Any]]:
    candidates = chunk.get("candidates") if isinstance(chunk, dict) else None
    content = candidates[0].get("content") if candidates else None
    return [p for p in (content or {}).get("parts") or () if isinstance(p, dict)]


def gemini_chunks(chunks: list[Any], text: str | None, call: Call | None) -> list[Any]:
    """GenerateContentResponses (a unary answer is one) with their text parts (not thought summaries) saying
    `text` between them, or their function calls calling `call`."""
    if text is not None:
        spots = [part for chunk in chunks for part in _gemini_parts(chunk)
                 if "text" in part and not part.get("thought")]
        for part, piece in zip(spots, pieces(text, len(spots)), strict=True):
            part["text"] = piece
    if call is not None:
        for chunk in chunks:
            for part in _gemini_parts(chunk):
                if "functionCall" in part:  # with the call's `id` when it names one, as newer Gemini models send
                    part["functionCall"] = {"name": call["name"], "args": call["arguments"],
                                            **({"id": call["id"]} if "id" in call else {})}
    return chunks


def gemini_events(events: list[bytes], text: str | None, call: Call | None) -> list[bytes]:
    """`gemini_chunks` over a recorded SSE body's events, each keeping its own line ends."""
    if text is None and call is None:
        return events
    datas = [event.startswith(b"data:") for event in events]
    chunks = gemini_chunks([json.loads(e.strip().removeprefix(b"data:")) if d else None
                            for e, d in zip(events, datas, strict=True)], text, call)
    return [b"data: " + json.dumps(chunk).encode() + event[len(event.rstrip()):] if is_data else event
            for event, chunk, is_data in zip(events, chunks, datas, strict=True)]
