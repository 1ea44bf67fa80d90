"""A conversation begun on other models that goes on with Claude on the native route of /v1/messages.

`providers.anthropic_inbound` and `providers.anthropic_answer` write what Claude would refuse into the history a
client keeps: thinking blocks of other models' answers (no signature, or a Gemini one behind `GEMINI_SIGNATURE`)
and tool ids Claude's pattern does not take. Claude checks every signature it is sent, so those blocks stay
behind, and the ids are rewritten (`anthropic_request.claude_tool_id`) the same way in a tool_use and its result.

Pure and synchronous: no I/O, no aiohttp.
"""

from __future__ import annotations

from typing import Any

from providers.anthropic_answer import GEMINI_SIGNATURE
from providers.anthropic_request import claude_tool_id


def claude_history(messages: Any) -> Any:
    """`messages` as Claude takes them, for a conversation that goes on with Claude on the native route:
    without the thinking blocks this module wrote for other models' answers (an empty signature, or a Gemini
    one; Anthropic checks every signature it is sent, and may drop any earlier turn's thinking), and with
    tool ids other providers made rewritten by `claude_tool_id`. A turn that held nothing else is left out
    (Claude refuses empty content). A copy where something changed."""
    if not isinstance(messages, list):
        return messages
    return [m for m in map(_for_claude, messages) if m is not None]


def _for_claude(message: Any) -> Any:
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list) or all(map(_as_is, content)):
        return message
    blocks = [_claude_ids(block) for block in content if not _ours(block)]
    return {**message, "content": blocks} if blocks else None


def _as_is(block: Any) -> bool:
    """Whether Claude takes `block` as it is. Every block of the history is asked, every turn (an agent's
    conversation: hundreds), and nearly all pass, so text passes at the first look and nothing is built."""
    if not isinstance(block, dict):
        return True
    kind = block.get("type")
    if kind == "text":
        return True
    if kind == "thinking":
        return not _ours(block)
    return _claude_ids(block) is block


_TOOL_ID_FIELDS = {"tool_use": "id", "tool_result": "tool_use_id"}


def _claude_ids(block: Any) -> Any:
    """A tool_use / tool_result block with its tool id as Claude accepts it (the block itself if it already is)."""
    field = _TOOL_ID_FIELDS.get(str(block.get("type"))) if isinstance(block, dict) else None
    call_id = block.get(field) if field else None
    if not isinstance(call_id, str) or claude_tool_id(call_id) == call_id:
        return block
    return {**block, field: claude_tool_id(call_id)}


def _ours(block: Any) -> bool:
    if not isinstance(block, dict) or block.get("type") != "thinking":
        return False
    signature = block.get("signature")
    return not signature or (isinstance(signature, str) and signature.startswith(GEMINI_SIGNATURE))
