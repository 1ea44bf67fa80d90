"""The request bodies of the benchmark's variants beside the tiny one (`rig.VARIANTS`): what coding agents send
each turn, in OpenAI's chat format and in Anthropic's Messages format.
"""

from __future__ import annotations

import json
from typing import Any

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly and precisely."},
    {"role": "user", "content": "Summarise in two sentences why a gateway should add almost no latency "
                                "to each request it relays to a language model provider."},
]


def agent_conversation(turns: int) -> dict[str, Any]:
    """An agent's request after `turns` tool calls (~7 KB each: the call, a source file as its result, a
    remark), with the tools it may call: the shape coding agents send every turn, a few hundred KB."""
    source = "".join(f"def handler_{i}(request, store):\n    if request.get('items', [])[{i}:]:\n"
                     f"        return {{'ok': store.put({{'n': {i}}})}}\n    return None\n\n" for i in range(60))
    tools = [{"type": "function", "function": {
        "name": f"tool_{t}", "description": f"Tool number {t}: reads, edits or runs something in the workspace.",
        "parameters": {"type": "object", "required": ["path"], "properties": {
            "path": {"type": "string", "description": "A path in the workspace."},
            "lines": {"type": "array", "items": {"type": "integer"}, "description": "Line numbers."},
            "options": {"type": "object", "properties": {"recursive": {"type": "boolean"},
                                                         "limit": {"type": "integer", "minimum": 1}}}}}}}
        for t in range(30)]
    messages: list[dict[str, Any]] = list(PROMPT)
    for turn in range(turns):
        call = {"id": f"call_{turn:04d}", "type": "function",
                "function": {"name": f"tool_{turn % 30}", "arguments": json.dumps({"path": f"src/m{turn}.py"})}}
        messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": call["id"], "content": source},
                     {"role": "user", "content": f"Now look at the next file ({turn})."}]
    return {"messages": messages, "tools": tools}


def agent_messages(turns: int) -> dict[str, Any]:
    """`agent_conversation` in Anthropic's Messages format, as Claude Code sends it each turn."""
    chat = agent_conversation(turns)
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
              "input_schema": t["function"]["parameters"]} for t in chat["tools"]]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": PROMPT[1]["content"]}]}]
    for call, result, remark in zip(*[iter(chat["messages"][2:])] * 3, strict=True):
        tool = call["tool_calls"][0]
        messages += [{"role": "assistant", "content": [
                         {"type": "text", "text": "Let me read it."},
                         {"type": "tool_use", "id": f"toolu_{tool['id']}", "name": tool["function"]["name"],
                          "input": json.loads(tool["function"]["arguments"])}]},
                     {"role": "user", "content": [
                         {"type": "tool_result", "tool_use_id": f"toolu_{tool['id']}", "content": result["content"]},
                         {"type": "text", "text": remark["content"]}]}]
    messages[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
    return {"max_tokens": 4096, "tools": tools, "messages": messages,
            "system": [{"type": "text", "text": PROMPT[0]["content"], "cache_control": {"type": "ephemeral"}}]}
