"""Legacy text completions (`POST /v1/completions`) on chat-only providers: the request becomes one chat
turn, the chat answer (or each stream chunk) becomes a `text_completion` object.

- `prompt` (a string, or a list holding one string) -> one user message. Several prompts, token-id
  prompts, `suffix`, `echo`, `logprobs` and `best_of` > 1 have no chat equivalent: `Untranslatable`
  naming the field.
- `max_tokens` defaults to 16, the legacy endpoint's own default, so a request costs what it would at
  OpenAI; sampling fields that chat shares (`temperature`, `top_p`, `n`, `stop`, penalties, `seed`,
  `user`, `logit_bias`, `stream_options`) are kept.
- Answers: `choices[].message.content` -> `choices[].text`; `tool_calls` finishes become `stop`.

Pure and synchronous: no I/O, no aiohttp.
"""

from __future__ import annotations

from typing import Any

from providers.passthrough import completion_finish
from providers.types import JSON, Untranslatable

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_SHARED = ("temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty", "seed", "user",
           "logit_bias", "stream", "stream_options")
_UNSUPPORTED = ("suffix", "echo", "logprobs")


def chat_body(body: JSON) -> JSON:
    """The chat request a legacy completion request stands for."""
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, False):
            raise Untranslatable(f"'{name}' has no equivalent on chat models", param=name)
    best_of = body.get("best_of")
    if best_of not in (None, 1):
        raise Untranslatable("'best_of' has no equivalent on chat models", param="best_of")
    out: JSON = {"model": body.get("model"), "messages": [{"role": "user", "content": prompt_text(body.get("prompt"))}]}
    for name in _SHARED:
        if name in body:
            out[name] = body[name]
    max_tokens = body.get("max_tokens")
    out["max_tokens"] = max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) \
        else DEFAULT_MAX_TOKENS
    return out


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    raise Untranslatable("'prompt' must be one string for chat models (batches and token ids are not supported)",
                         param="prompt")


def completion_from_chat(answer: JSON) -> JSON:
    """A `chat.completion` as the `text_completion` the client asked for."""
    out: JSON = {"id": answer.get("id", ""), "object": "text_completion", "created": answer.get("created", 0),
                 "model": answer.get("model", ""),
                 "choices": [_choice(c, (c.get("message") or {}).get("content")) for c in answer.get("choices") or ()]}
    if isinstance(answer.get("system_fingerprint"), str):
        out["system_fingerprint"] = answer["system_fingerprint"]
    if isinstance(answer.get("usage"), dict):
        out["usage"] = answer["usage"]
    return out


def completion_chunk(chunk: JSON) -> JSON:
    """A `chat.completion.chunk` as a streamed `text_completion` (the usage chunk keeps `choices: []`)."""
    out: JSON = {key: chunk[key] for key in ("id", "created", "model", "usage", "billing") if key in chunk}
    out["object"] = "text_completion"
    out["choices"] = [_choice(c, (c.get("delta") or {}).get("content"), streamed=True)
                      for c in chunk.get("choices") or ()]
    return out


def _choice(choice: JSON, text: Any, streamed: bool = False) -> JSON:
    finish = choice.get("finish_reason")
    return {"text": text if isinstance(text, str) else "", "index": choice.get("index", 0), "logprobs": None,
            "finish_reason": completion_finish(finish) if finish is not None or not streamed else None}
