"""The gateway's own OpenAPI 3.1 description, served at GET /openapi.json (no key needed).

It describes this gateway's surface, not OpenAI's whole API: the request fields the gateway checks
(`gateway.validation`), the statuses it can answer, and OpenAI's error envelope on every non-2xx. Model
ids of the running config appear as examples, so a client generator or a fuzzer (the test suite runs
schemathesis against it) starts from requests that can succeed.
"""

from __future__ import annotations

from typing import Any

from gateway.keyops import CAPS, MAX_USD
from gateway.validation import MAX_MODEL_NAME, MAX_PROVIDER_KEY, ROLES
from providers import reasoning

_MAX_USD = float(int(MAX_USD))  # whole dollars: a float of the exact bound could round above it

JSON = dict[str, Any]
ERROR_STATUSES = {
    "400": "Malformed request: bad JSON, a field out of range, an unknown role",
    "401": "Missing, malformed or unknown key",
    "402": "The key's balance does not cover the request's worst case",
    "403": "Key disabled, or model not allowed for this key",
    "404": "Unknown model, generation or path",
    "413": "Body larger than server.max_body_bytes",
    "429": "Rate limit of key x model, or the upstream's",
    "502": "Upstream failed or answered what the gateway cannot read",
    "503": "Provider not configured, no egress, or the store is unavailable",
    "504": "Upstream did not answer in time",
}
# answered before any handler (gateway/edge.py, the body reader): 417 and 505 on every operation, 408 on each that
# reads a body. A method a path does not take is a 405 naming those it takes in `Allow`: OpenAPI lists only the
# methods a path takes, so Error405 is referenced by no operation (a method absent from a path item is the 405).
EDGE_STATUSES = {
    "408": "The request body stalled (60 s without a byte) or was not whole after server.body_timeout_s",
    "417": "An Expect header other than 100-continue (the body is not read, the connection is closed)",
    "505": "An HTTP version other than 1.1 and 1.0 (the connection is closed; not worth a retry)",
}
_METHOD_NOT_ALLOWED = {"405": "A method the path does not take (Anthropic's error shape under /v1/messages)"}
_RETRY_AFTER = {"description": "Seconds to wait before trying again", "schema": {"type": "string"}}
_HEADERS: JSON = {
    "405": {"Allow": {"description": "The methods the path takes", "required": True, "schema": {"type": "string"}}},
    "429": {"Retry-After": _RETRY_AFTER},
    "503": {"Retry-After": _RETRY_AFTER},
    "505": {"x-should-retry": {"description": "false: the official SDKs do not retry", "required": True,
                               "schema": {"const": "false"}}},
}


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: JSON, description: str = "OK") -> JSON:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> JSON:
    return {s: {"$ref": f"#/components/responses/Error{s}"} for s in statuses}


def _number(low: float, high: float, integer: bool = False) -> JSON:
    return {"type": "integer" if integer else "number", "minimum": low, "maximum": high}


def _chat_request(models: list[str]) -> JSON:
    part = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
    message = {"type": "object", "required": ["role"], "properties": {
        "role": {"type": "string", "enum": sorted(ROLES)},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": part}, {"type": "null"}]},
        "name": {"type": "string"}}}
    return {"type": "object", "required": ["model", "messages"], "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": MAX_MODEL_NAME, "examples": models[:5]},
        "messages": {"type": "array", "minItems": 1, "items": message,
                     "examples": [[{"role": "user", "content": "Hello"}]]},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": _number(1, 2**31 - 1, integer=True),
        "max_completion_tokens": _number(1, 2**31 - 1, integer=True),
        "temperature": _number(0, 2), "top_p": _number(0, 1),
        "presence_penalty": _number(-2, 2), "frequency_penalty": _number(-2, 2),
        "n": _number(1, 128, integer=True),
        "reasoning_effort": {"type": "string", "enum": sorted(reasoning.EFFORTS)},
        "reasoning": {"type": "object", "description": "OpenRouter's unified reasoning control", "properties": {
            "effort": {"type": "string", "enum": sorted(reasoning.EFFORTS)},
            "max_tokens": {"type": "integer", "minimum": 0}, "exclude": {"type": "boolean"},
            "enabled": {"type": "boolean"}}},
        "models": {"type": "array", "items": {"type": "string"}, "description": "OpenRouter-style fallbacks"},
        "provider_api_key": {"type": "string", "minLength": 1, "maxLength": MAX_PROVIDER_KEY,
                             "pattern": "^[!-~]+$", "description": "BYOK: the client's own provider key"},
    }}


def _other_requests(models: list[str]) -> JSON:
    """Bodies of the endpoints beside chat: legacy completions, embeddings, moderations, images, Anthropic's."""
    model = {"type": "string", "minLength": 1, "maxLength": MAX_MODEL_NAME, "examples": models[:5]}
    text_or_list = {"anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1}]}
    return {
        "CompletionRequest": {"type": "object", "required": ["model", "prompt"], "properties": {
            "model": model, "prompt": text_or_list, "stream": {"type": "boolean"},
            "max_tokens": _number(1, 2**31 - 1, integer=True), "n": _number(1, 128, integer=True),
            "temperature": _number(0, 2)}},
        "EmbeddingRequest": {"type": "object", "required": ["model", "input"], "properties": {
            "model": model, "input": text_or_list, "encoding_format": {"enum": ["float", "base64"]},
            "dimensions": _number(1, 2**31 - 1, integer=True)}},
        "ModerationRequest": {"type": "object", "required": ["input"], "properties": {
            "model": model, "input": text_or_list}},
        "ImageRequest": {"type": "object", "required": ["prompt"], "properties": {
            "model": model, "prompt": {"type": "string", "minLength": 1}, "n": _number(1, 10, integer=True)}},
        "AnthropicMessagesRequest": {"type": "object", "required": ["model", "max_tokens", "messages"], "properties": {
            "model": model, "max_tokens": _number(1, 2**31 - 1, integer=True), "stream": {"type": "boolean"},
            "messages": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["role", "content"], "properties": {
                    "role": {"enum": ["user", "assistant"]},
                    "content": {"anyOf": [{"type": "string"}, {"type": "array"}]}}},
                "examples": [[{"role": "user", "content": "Hello"}]]}}},
        "AnthropicCountRequest": {"type": "object", "required": ["model", "messages"], "properties": {
            "model": model, "messages": {"type": "array", "minItems": 1, "items": {"type": "object"},
                                         "examples": [[{"role": "user", "content": "Hello"}]]}}},
        "AnthropicError": {"type": "object", "required": ["type", "error"], "properties": {
            "type": {"const": "error"}, "error": {"type": "object", "required": ["type", "message"], "properties": {
                "type": {"type": "string"}, "message": {"type": "string"}}}}},
    }


def _schemas(models: list[str]) -> JSON:
    money = {"type": "number"}
    return {
        **_other_requests(models),
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"], "properties": {
                "message": {"type": "string"}, "type": {"type": "string"},
                "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
        "ChatRequest": _chat_request(models),
        "ChatCompletion": {"type": "object", "required": ["id", "object", "choices", "model"], "properties": {
            "id": {"type": "string"}, "object": {"const": "chat.completion"}, "model": {"type": "string"},
            "choices": {"type": "array"}, "usage": {"type": "object"}, "billing": _ref("Billing")}},
        "Billing": {"type": "object", "properties": {
            "request_cost": money, "balance_remaining": money, "using_own_key": {"type": "boolean"},
            "currency": {"const": "USD"}, "reserved": money, "estimated": {"type": "boolean"}}},
        "ModelList": {"type": "object", "required": ["object", "data"], "properties": {
            "object": {"const": "list"}, "data": {"type": "array", "items": {
                "type": "object", "required": ["id", "object", "owned_by"], "properties": {
                    "id": {"type": "string"}, "object": {"const": "model"}, "owned_by": {"type": "string"},
                    "pricing": {"type": "object"}}}}}},
        "Credits": {"type": "object", "required": ["data"], "properties": {"data": {
            "type": "object", "required": ["total_credits", "total_usage", "balance", "currency"],
            "properties": {"total_credits": money, "total_usage": money, "balance": money,
                           "currency": {"const": "USD"}}}}},
        "Generation": {"type": "object", "required": ["data"], "properties": {"data": {
            "type": "object", "required": ["id", "model", "total_cost"], "properties": {
                "id": {"type": "string"}, "model": {"type": "string"}, "total_cost": money}}}},
        "Key": {"type": "object", "required": ["id", "name", "prefix", "balance", "disabled"], "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "prefix": {"type": "string"},
            "balance": money, "credits": money, "usage": money, "disabled": {"type": "boolean"},
            "rpm": {"type": ["integer", "null"]}, "rpd": {"type": ["integer", "null"]},
            "models": {"type": "array", "items": {"type": "string"}}, "created": {"type": "integer"},
            **{cap: {"type": ["integer", "null"]} for cap in CAPS},
            "key": {"type": "string", "description": "the plaintext key, in the creation answer only"}}},
        "NewKey": {"type": "object", "required": ["name", "balance"], "properties": {
            "name": {"type": "string", "minLength": 1}, "balance": _number(0, _MAX_USD),
            "rpm": {"type": "integer", "minimum": 1}, "rpd": {"type": "integer", "minimum": 1},
            "models": {"type": "array", "items": {"type": "string"}},
            **{cap: {"type": "integer", "minimum": 1} for cap in CAPS}}},
        "Amount": {"type": "object", "required": ["amount"], "properties": {"amount": _number(-_MAX_USD, _MAX_USD)}},
    }


def _op(summary: str, responses: JSON, *errors: str, security: str | None = "gatewayKey",
        body: str | None = None, params: list[JSON] | None = None) -> JSON:
    edge = ("408", "417", "505") if body else ("417", "505")
    op: JSON = {"summary": summary, "responses": {**responses, **_errors(*errors, *edge)}}
    op["security"] = [{security: []}] if security else []
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if params:
        op["parameters"] = params
    return op


def _anthropic_errors() -> JSON:
    return {s: _error(d, s, "AnthropicError") for s, d in (ERROR_STATUSES | EDGE_STATUSES).items()}


def _error(description: str, status: str, shape: str = "Error") -> JSON:
    response = _json(_ref(shape), description)
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def _other_paths() -> JSON:
    """#8's endpoints: the same pipeline as chat, their own bodies and answers."""
    obj = {"type": "object"}
    stream = {"schema": {"type": "string"}, "description": "SSE events"}
    messages = _op("Anthropic's Messages API (errors in Anthropic's shape)", {"200": {
        "description": "An Anthropic message, or its event stream", "content": {
            "application/json": {"schema": obj}, "text/event-stream": stream}}}, body="AnthropicMessagesRequest")
    messages["responses"].update(_anthropic_errors())
    count = _op("Anthropic's token count: the gateway's own estimate, free", {"200": _json(
        {"type": "object", "required": ["input_tokens"], "properties": {"input_tokens": {"type": "integer"}}})},
        body="AnthropicCountRequest")
    count["responses"].update(_anthropic_errors())
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}]
    return {
        "/v1/completions": {"post": _op("Legacy text completion", {"200": {
            "description": "A text completion, or its SSE stream", "content": {
                "application/json": {"schema": obj}, "text/event-stream": stream}}},
            *ERROR_STATUSES, body="CompletionRequest")},
        "/v1/embeddings": {"post": _op("Embeddings", {"200": _json(obj)}, *ERROR_STATUSES, body="EmbeddingRequest")},
        "/v1/moderations": {"post": _op("Moderation", {"200": _json(obj)}, *ERROR_STATUSES,
                                        body="ModerationRequest")},
        "/v1/images/generations": {"post": _op("Image generation", {"200": _json(obj)}, *ERROR_STATUSES,
                                               body="ImageRequest")},
        "/v1/messages": {"post": messages},
        "/v1/messages/count_tokens": {"post": count},
        "/v1/models/{name}": {"get": _op("One model (or, with /endpoints, OpenRouter's endpoints listing)",
                                         {"200": _json(obj)}, "401", "403", "404", "503", params=name)},
    }


def _paths() -> JSON:
    key_id = [{"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    keys = {"type": "object", "properties": {"data": {"type": "array", "items": _ref("Key")}}}
    stream = {"schema": {"type": "string"}, "description": "SSE chunks, then data: [DONE]"}
    chat_ok = {"description": "The completion, or its SSE stream when stream is true", "content": {
        "application/json": {"schema": _ref("ChatCompletion")}, "text/event-stream": stream}}
    status = {"type": "object", "properties": {"status": {"type": "string"}}}
    ready = {"type": "object", "required": ["status", "checks"], "properties": {
        "status": {"enum": ["ready", "not_ready"]}, "config_age_s": {"type": "number"},
        "checks": {"type": "object", "properties": {
            "config": {"const": "ok"}, "store": {"enum": ["ok", "refusing writes", "refusing login", "loading",
                                                              "unreachable"]}}},
        "store_error": {"type": "string", "description": "the store's own reply, when it refused the check"}}}
    return {
        **_other_paths(),
        "/v1/chat/completions": {"post": _op("OpenAI chat completion, any configured provider", {"200": chat_ok},
                                             *ERROR_STATUSES, body="ChatRequest")},
        "/v1/models": {"get": _op("Models this key may use", {"200": _json(_ref("ModelList"))}, "401", "403",
                                  "503")},
        "/v1/credits": {"get": _op("The calling key's credits", {"200": _json(_ref("Credits"))}, "401", "403",
                                   "404", "503")},
        "/v1/generation": {"get": _op("One of the calling key's requests", {"200": _json(_ref("Generation"))},
                                      "400", "401", "403", "404", "503", params=[
                                          {"name": "id", "in": "query", "required": True,
                                           "schema": {"type": "string"}}])},
        "/healthz": {"get": _op("The process is alive", {"200": _json(status)}, security=None)},
        "/readyz": {"get": _op("Ready to serve", {"200": _json(ready), "503": _json(ready, "Not ready")},
                               security=None)},
        "/metrics": {"get": _op("Prometheus metrics", {"200": {"description": "Prometheus text", "content": {
            "text/plain": {"schema": {"type": "string"}}}}}, "401", "404", security=None)},
        "/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"})}, security=None)},
        "/admin/keys": {
            "get": _op("All keys (never the keys themselves)", {"200": _json(keys)}, "401", "404", "503",
                       security="adminToken"),
            "post": _op("Create a key; the answer shows it once", {"201": _json(_ref("Key"), "Created")},
                        "400", "401", "404", "413", "503", security="adminToken", body="NewKey")},
        "/admin/keys/{key_id}/topup": {"post": _op(
            "Add (or with a negative amount, remove) USD", {"200": _json({"type": "object"})},
            "400", "401", "404", "413", "503", security="adminToken", body="Amount", params=key_id)},
        "/admin/keys/{key_id}/disable": {"post": _op(
            "Disable a key", {"200": _json({"type": "object"})}, "401", "404", "503", security="adminToken",
            params=key_id)},
        "/admin/egress": {"get": _op("Egress pools and proxies (names and hosts only)",
                                     {"200": _json({"type": "object"})}, "401", "404", security="adminToken")},
    }


def document(model_ids: list[str]) -> JSON:
    """The OpenAPI document for a gateway serving `model_ids`."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "LLM edge gateway", "version": "1",
                 "description": "OpenAI-compatible gateway: every error is {\"error\": {message, type, param, code}} "
                                "(Anthropic's shape under /v1/messages). A method a path does not list is a 405 "
                                "(components.responses.Error405) whose Allow header names those it does."},
        "paths": _paths(),
        "components": {
            "schemas": _schemas(model_ids),
            "responses": {f"Error{s}": _error(d, s)
                          for s, d in (ERROR_STATUSES | EDGE_STATUSES | _METHOD_NOT_ALLOWED).items()},
            "securitySchemes": {
                "gatewayKey": {"type": "http", "scheme": "bearer", "description": "a gateway key, gw-..."},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "server.admin_token"}},
        },
    }
