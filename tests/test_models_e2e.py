"""GET /v1/models/{id} and OpenRouter's /v1/models/{author}/{slug}/endpoints through the running gateway:
OpenAI's Model object and OpenRouter's ListEndpointsResponse, validated against both vendors' schemas."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml
from harness import Gateway, validate

OPENROUTER_SPEC = Path(__file__).resolve().parents[2] / "shared" / "wire" / "openrouter" / "openrouter-openapi.yaml"


@cache
def _openrouter_defs() -> dict[str, Any]:
    schemas = yaml.load(OPENROUTER_SPEC.read_text(), Loader=yaml.CSafeLoader)["components"]["schemas"]
    defs: dict[str, Any] = _rewrite_refs(copy.deepcopy(schemas))
    # provider names are the operator's own config names, not OpenRouter's list of companies
    defs["ProviderName"] = {"type": "string"}
    return defs


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (v.replace("#/components/schemas/", "#/$defs/") if k == "$ref" else _rewrite_refs(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def validate_openrouter(obj: Any, root: str) -> None:
    schema = {"$defs": _openrouter_defs(), "$ref": f"#/$defs/{root}"}
    jsonschema.Draft202012Validator(schema).validate(obj)


async def _get(gateway: Gateway, path: str, key: str | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(gateway.url + path, headers=gateway.auth(key)) as r:
        return r.status, await r.json()


async def test_one_model_with_its_provider_pricing_and_parameters(api_gateway: Gateway) -> None:
    status, body = await _get(api_gateway, "/v1/models/claude/sonnet")
    assert status == 200
    validate(body, "Model")
    assert body["id"] == "claude/sonnet" and body["provider"] == "claude" and body["context_window"] == 200000
    assert body["pricing"]["input_per_mtok"] == 3 and body["pricing"]["cached_input_per_mtok"] == 0.3
    assert body["pricing"]["cache_write_per_mtok"] == 3.75
    assert "top_k" in body["supported_parameters"] and "logit_bias" not in body["supported_parameters"]
    client = api_gateway.openai()
    model = await client.models.retrieve("oai/gpt-4o")  # the SDK's own call
    assert model.id == "oai/gpt-4o" and model.owned_by == "oai"


async def test_openrouter_endpoints_listing(api_gateway: Gateway) -> None:
    status, body = await _get(api_gateway, "/v1/models/oai/gpt-4o/endpoints")
    assert status == 200
    validate_openrouter(body["data"], "ListEndpointsResponse")
    endpoint = body["data"]["endpoints"][0]
    assert endpoint["provider_name"] == "oai" and endpoint["context_length"] == 128000
    assert endpoint["pricing"]["prompt"] == "0.0000025" and endpoint["pricing"]["completion"] == "0.00001"
    assert endpoint["max_completion_tokens"] == 16384 and "seed" in endpoint["supported_parameters"]
    assert body["data"]["architecture"]["input_modalities"] == ["text", "image"]
    assert endpoint["pricing"]["input_cache_read"] == endpoint["pricing"]["input_cache_write"] == "0.0000025"
    status, claude = await _get(api_gateway, "/v1/models/claude/sonnet/endpoints")
    validate_openrouter(claude["data"], "ListEndpointsResponse")
    assert claude["data"]["endpoints"][0]["pricing"]["input_cache_read"] == "0.0000003"
    assert claude["data"]["endpoints"][0]["pricing"]["input_cache_write"] == "0.00000375"
    status, image = await _get(api_gateway, "/v1/models/oai/gpt-image-1/endpoints")
    assert image["data"]["endpoints"][0]["pricing"]["image"] == "0.04"


@pytest.mark.parametrize("path", ["/v1/models/nope/nothing", "/v1/models/nope/nothing/endpoints",
                                  "/v1/models/oai/gpt-4o/extra"])
async def test_unknown_models_are_404(api_gateway: Gateway, path: str) -> None:
    status, body = await _get(api_gateway, path)
    assert status == 404 and body["error"]["code"] == "model_not_found"


async def test_models_a_key_may_not_use_stay_hidden(api_gateway: Gateway) -> None:
    key, _ = await api_gateway.add_key("scoped", models=("oai/*",))
    assert (await _get(api_gateway, "/v1/models/oai/gpt-4o", key))[0] == 200
    assert (await _get(api_gateway, "/v1/models/claude/sonnet", key))[0] == 404
    assert (await _get(api_gateway, "/v1/models/claude/sonnet/endpoints", key))[0] == 404


async def test_structured_outputs_listed_per_model(make_api_gateway: Any) -> None:
    """Claude carries `response_format` (as a forced tool); a model that drops it lists neither name; a Claude
    before 4.5 cannot enforce a strict schema (`structured_outputs`), which it refuses."""
    gateway = await make_api_gateway({"oai/gpt-4o": {"params": {"drop": ["response_format"]}},
                                      "claude/old": {"upstream": "claude-sonnet-4-0", "price": {"input_per_mtok": 3}}})
    expected = {"claude/sonnet": {"response_format", "structured_outputs"}, "claude/old": {"response_format"},
                "google/flash": {"response_format", "structured_outputs"}, "oai/gpt-4o": set()}
    for model, names in expected.items():
        status, body = await _get(gateway, f"/v1/models/{model}")
        assert status == 200
        assert {"response_format", "structured_outputs"} & set(body["supported_parameters"]) == names, model
    status, body = await _get(gateway, "/v1/models/claude/sonnet/endpoints")
    validate_openrouter(body["data"], "ListEndpointsResponse")  # both are names OpenRouter's enum knows
    assert "structured_outputs" in body["data"]["endpoints"][0]["supported_parameters"]
