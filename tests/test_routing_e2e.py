"""Retries, fallbacks and vision checks through the running gateway (fake OpenAI upstream, memory store)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import openai
import pytest

from gateway.state import RUNTIME

MESSAGES = [{"role": "user", "content": "hi"}]
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
         "AAAABJRU5ErkJggg==")
FAST_RETRIES = {"max_retries": 2, "base_delay_s": 0.01, "max_delay_s": 0.05, "deadline_s": 10}


def image_message(url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


async def test_retryable_failures_are_retried_then_served(make_gateway: Any) -> None:
    gw = await make_gateway(retries=FAST_RETRIES)
    gw.fake.status, gw.fake.fail_times = 500, 2
    done = await gw.openai().chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert done.choices[0].message.content
    assert len(gw.fake.requests) == 3
    record = await gw.app[RUNTIME].store.get_key(gw.key_id)
    assert record is not None and record.balance + record.usage == record.credits  # failed attempts released
    assert record.usage == round((done.model_extra or {})["billing"]["request_cost"] * 1e9)


async def test_retries_are_bounded(make_gateway: Any) -> None:
    gw = await make_gateway(retries=FAST_RETRIES)
    gw.fake.status = 503
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai().chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 502
    assert len(gw.fake.requests) == 3  # one try and max_retries more


async def test_client_errors_are_not_retried(make_gateway: Any) -> None:
    gw = await make_gateway(retries=FAST_RETRIES)
    gw.fake.status = 400
    with pytest.raises(openai.BadRequestError):
        await gw.openai().chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert len(gw.fake.requests) == 1


async def test_retry_after_is_honoured(make_gateway: Any) -> None:
    gw = await make_gateway(retries=FAST_RETRIES)
    gw.fake.status, gw.fake.fail_times, gw.fake.error_headers = 429, 1, {"Retry-After": "1"}
    started = time.monotonic()
    await gw.openai().chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert time.monotonic() - started >= 1.0
    assert len(gw.fake.requests) == 2


async def test_request_models_fall_back_and_bill_the_serving_model(make_gateway: Any) -> None:
    gw = await make_gateway(retries=FAST_RETRIES)
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model="dead/model", messages=MESSAGES, extra_body={"models": ["fake/gpt-4o"]})  # type: ignore[arg-type]
    body = json.loads(raw.content)
    assert body["model"] == "fake/gpt-4o"
    record = await gw.app[RUNTIME].store.get_generation(gw.key_id, body["id"])
    assert record is not None and record["model"] == "fake/gpt-4o"
    # fake/gpt-4o prices: 2.5 in, 10 out per Mtok; the fake answers 19 + 10 tokens
    assert round(body["billing"]["request_cost"] * 1e9) == (19 * 2_500_000_000 + 10 * 10_000_000_000) // 1_000_000
    assert "models" not in gw.fake.last.body  # a gateway field, never forwarded


async def test_unknown_fallback_model_is_404(make_gateway: Any) -> None:
    gw = await make_gateway()
    with pytest.raises(openai.NotFoundError):
        await gw.openai().chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                  extra_body={"models": ["nope/nope"]})


async def test_image_to_a_model_without_vision_is_400(make_gateway: Any) -> None:
    gw = await make_gateway()
    with pytest.raises(openai.BadRequestError) as info:
        await gw.openai().chat.completions.create(model="fake/gpt-4o", messages=image_message(PIXEL))  # type: ignore[arg-type]
    assert info.value.code == "model_not_vision" and "fake/gpt-4o" in info.value.message
    assert gw.fake.requests == []


async def test_image_to_a_vision_model_passes_unchanged(make_gateway: Any) -> None:
    gw = await make_gateway()
    await gw.openai().chat.completions.create(model="fake/gpt-5", messages=image_message(PIXEL))  # type: ignore[arg-type]
    part = gw.fake.last.body["messages"][0]["content"][1]
    assert part == {"type": "image_url", "image_url": {"url": PIXEL}}


async def test_fallback_skips_models_without_vision(make_gateway: Any) -> None:
    gw = await make_gateway(retries=FAST_RETRIES)
    gw.fake.status = 500
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + "/v1/chat/completions", headers=gw.auth(),
            json={"model": "fake/gpt-5", "models": ["fake/gpt-4o"], "messages": image_message(PIXEL)}) as r:
        assert r.status == 502
    assert {r.body["model"] for r in gw.fake.requests} == {"gpt-5"}  # gpt-4o has no vision: never tried


async def test_a_fallback_finds_the_failed_attempts_hold_returned(make_gateway: Any, redis_url: str) -> None:
    """The answer of a served request does not wait for its settlement, but a failed attempt's release
    does: with a balance for one hold only, the fallback tried at once after a 500 must be admitted."""
    import uuid

    gw = await make_gateway(retries={**FAST_RETRIES, "max_retries": 0}, store_url=redis_url,
                            prefix=f"t{uuid.uuid4().hex}:")
    # 10 USD per Mtok out on both models, so max_tokens=1000 holds ~0.01 USD; the key has 0.015
    key, key_id = await gw.add_key("tight", balance=15_000_000)
    gw.fake.status, gw.fake.fail_times = 500, 1
    client = gw.openai(api_key=key)
    done = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                max_tokens=1000, extra_body={"models": ["fake/gpt-5"]})
    assert done.model == "fake/gpt-5"
    assert len(gw.fake.requests) == 2
    await asyncio.sleep(0.05)  # the served request's own settlement is queued behind its answer
    record = await gw.app[RUNTIME].store.get_key(key_id)
    assert record is not None and record.balance + record.usage == record.credits


async def test_a_clients_own_key_never_goes_to_a_fallback_of_another_provider(api_gateway: Any) -> None:
    """A BYOK key is for the provider of the model asked for: when that model fails, a fallback at another
    provider (the request's `models`, or the config's `fallbacks`) is not tried with the client's key."""
    ups = api_gateway.extra["upstreams"]
    ups.openai.status = 500
    own = "sk-client-own-openai-key-000000000001"
    with pytest.raises(openai.APIStatusError):
        await api_gateway.openai().chat.completions.create(
            model="oai/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
            extra_body={"provider_api_key": own, "models": ["claude/sonnet"]})
    assert ups.openai.requests and ups.anthropic.requests == []
    assert all(r.headers["Authorization"] == f"Bearer {own}" for r in ups.openai.requests)


async def test_an_upstream_503s_retry_after_is_honoured_and_reaches_the_client(make_gateway: Any) -> None:
    gw = await make_gateway(retries=FAST_RETRIES)
    gw.fake.status, gw.fake.fail_times, gw.fake.error_headers = 503, 1, {"Retry-After": "1"}
    started = time.monotonic()
    await gw.openai().chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert time.monotonic() - started >= 1.0 and len(gw.fake.requests) == 2  # waited as told, then served
    gw.fake.fail_times, gw.fake.error_headers = 10, {"Retry-After": "7"}
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + "/v1/chat/completions", headers=gw.auth(),
            json={"model": "fake/gpt-4o", "messages": MESSAGES}) as r:
        assert r.status == 502 and r.headers.get("Retry-After") == "7"


async def test_a_fallback_whose_provider_has_no_key_is_skipped(make_gateway: Any) -> None:
    """A fallback at a provider the operator configured no key for is not a candidate: the next one serves
    (or the model asked for gives the answer), instead of the fallback's 503 ending the request."""
    gw = await make_gateway(retries=FAST_RETRIES | {"max_retries": 0})
    gw.fake.status, gw.fake.fail_times = 500, 1
    done = await gw.openai().chat.completions.create(
        model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
        extra_body={"models": ["nokey/model", "fake/gpt-5"]})
    assert done.model == "fake/gpt-5"
    assert [r.body["model"] for r in gw.fake.requests] == ["gpt-4o", "gpt-5"]
    gw.fake.reset()
    gw.fake.status = 500
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai().chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                  extra_body={"models": ["nokey/model"]})
    assert info.value.status_code == 502 and info.value.code == "upstream_error"  # the model asked for
    with pytest.raises(openai.APIStatusError) as info:  # asked for itself: the 503 naming the variable
        await gw.openai().chat.completions.create(model="nokey/model", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 503 and "NOKEY_API_KEY" in info.value.message


async def test_a_keys_output_cap_is_filled_in_per_attempt(api_gateway: Any) -> None:
    """A key's --max-tokens given to a request that asks none is bounded by each attempt's own model: a
    fallback with a smaller max_output_tokens is not sent (nor held for) the first model's figure."""
    ups = api_gateway.extra["upstreams"]
    ups.openai.status = 500
    key, _ = await api_gateway.add_key("capped", max_tokens=5000)
    done = await api_gateway.openai(api_key=key).chat.completions.create(
        model="oai/gpt-4o", messages=MESSAGES, extra_body={"models": ["claude/sonnet"]})  # type: ignore[arg-type]
    assert done.model == "claude/sonnet"
    assert ups.openai.last.body["max_tokens"] == 5000  # oai/gpt-4o: up to 16384
    assert ups.anthropic.last.body["max_tokens"] == 1024  # claude/sonnet: max_output_tokens 1024
    # claude/sonnet: 15 USD per Mtok out; the hold covered its 1024 output tokens and the prompt estimate
    assert (done.model_extra or {})["billing"]["reserved"] < 5000 * 15 / 1e6


async def test_a_fallback_that_cannot_give_the_asked_max_tokens_is_skipped(api_gateway: Any) -> None:
    """max_tokens above a fallback's max_output_tokens (which the gateway refuses for the model itself) is not
    sent to it: that fallback is skipped."""
    ups = api_gateway.extra["upstreams"]
    ups.openai.status = 500
    with pytest.raises(openai.APIStatusError) as info:
        await api_gateway.openai().chat.completions.create(
            model="oai/gpt-4o", messages=MESSAGES, max_tokens=4000,  # type: ignore[arg-type]
            extra_body={"models": ["claude/sonnet"]})
    assert info.value.status_code == 502
    assert ups.anthropic.requests == []
    done = await api_gateway.openai().chat.completions.create(
        model="oai/gpt-4o", messages=MESSAGES, max_tokens=1000,  # type: ignore[arg-type]
        extra_body={"models": ["claude/sonnet"]})
    assert done.model == "claude/sonnet" and ups.anthropic.last.body["max_tokens"] == 1000


async def test_any_upstream_5xxs_retry_after_is_honoured_and_reaches_the_client(make_gateway: Any) -> None:
    """The README's "upstream 5xx (its Retry-After passed on)": a 500 or 502 asking for a wait gets it, as a
    503 does, and the client is told it when no retry helped."""
    gw = await make_gateway(retries=FAST_RETRIES)
    gw.fake.status, gw.fake.fail_times, gw.fake.error_headers = 500, 1, {"Retry-After": "1"}
    started = time.monotonic()
    await gw.openai().chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert time.monotonic() - started >= 1.0 and len(gw.fake.requests) == 2
    gw.fake.status, gw.fake.fail_times, gw.fake.error_headers = 502, 10, {"Retry-After": "30"}  # past honoring
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + "/v1/chat/completions", headers=gw.auth(),
            json={"model": "fake/gpt-4o", "messages": MESSAGES}) as r:
        assert r.status == 502 and r.headers.get("Retry-After") == "30"
    assert len(gw.fake.requests) == 3  # not retried within the 30 s asked


OLLAMA_404 = {"error": {"message": 'model "llama3.2" not found, try pulling it first', "type": "api_error",
                        "param": None, "code": None}}


async def test_an_upstream_404_for_the_configured_model_is_the_operators_502(make_gateway: Any) -> None:
    """Ollama's 404 for a model not pulled reached the client as its own 404, for a model /v1/models lists:
    the client believed it had named a wrong model. The route is the operator's config: a 502, not retried
    on the same model (it stays unknown there)."""
    gw = await make_gateway(retries=FAST_RETRIES)
    gw.fake.status, gw.fake.error_body = 404, OLLAMA_404
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai().chat.completions.create(model="local/llama", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 502
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "upstream_model_not_found", error
    assert "local" in error["message"] and "not found" in error["message"]
    assert len(gw.fake.requests) == 1
    record = await gw.app[RUNTIME].store.get_key(gw.key_id)
    assert record is not None and record.usage == 0 and record.balance == record.credits


async def test_an_upstream_404_moves_on_to_the_fallback(make_gateway: Any) -> None:
    gw = await make_gateway(retries=FAST_RETRIES)
    gw.fake.status, gw.fake.fail_times, gw.fake.error_body = 404, 1, OLLAMA_404
    done = await gw.openai().chat.completions.create(
        model="local/llama", messages=MESSAGES, extra_body={"models": ["fake/gpt-4o"]})  # type: ignore[arg-type]
    assert done.model == "fake/gpt-4o"
    assert [r.body["model"] for r in gw.fake.requests] == ["llama3.2", "gpt-4o"]


async def test_a_404_on_the_clients_own_key_stays_the_clients(api_gateway: Any) -> None:
    """With the client's own provider key a 404 ("does not exist or you do not have access to it") is about
    what that key may reach: the client's to see as it is."""
    ups = api_gateway.extra["upstreams"]
    ups.openai.status, ups.openai.error_body = 404, {"error": {
        "message": "The model `gpt-4o` does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": None, "code": "model_not_found"}}
    with pytest.raises(openai.NotFoundError) as info:
        await api_gateway.openai().chat.completions.create(
            model="oai/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
            extra_body={"provider_api_key": "sk-client-own-openai-key-000000000001"})
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "model_not_found", info.value.body


async def test_a_fallback_the_key_cannot_use_leaves_the_primarys_failure_as_the_answer(make_gateway: Any) -> None:
    """The model asked for failed (its upstream unreachable: a 502, which the SDKs retry); its fallback then
    refused the key (balance short of its hold: 402; its per-model rate limit spent: 429). The client was told
    402 or 429 about a model it never asked for, and its SDK did not retry the model it asked for. The refusal
    of a fallback is a reason to skip it: the answer is the primary's own failure."""
    gw = await make_gateway(retries={**FAST_RETRIES, "max_retries": 0})
    poor, _ = await gw.add_key("poor", balance=1_000)  # a millionth of a dollar: no hold of fake/gpt-4o fits
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai(api_key=poor, max_retries=0).chat.completions.create(
            model="dead/model", messages=MESSAGES, max_tokens=1000,  # type: ignore[arg-type]
            extra_body={"models": ["fake/gpt-4o"]})
    assert (info.value.status_code, info.value.code) == (502, "upstream_unreachable")
    # the same key asking fake/gpt-4o itself is told the truth about its balance
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai(api_key=poor, max_retries=0).chat.completions.create(
            model="fake/gpt-4o", messages=MESSAGES, max_tokens=1000)  # type: ignore[arg-type]
    assert info.value.status_code == 402
    for _ in range(2):  # fake/limited allows 2 requests a minute: spend them
        await gw.openai(max_retries=0).chat.completions.create(model="fake/limited", messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai(max_retries=0).chat.completions.create(
            model="dead/model", messages=MESSAGES, extra_body={"models": ["fake/limited"]})  # type: ignore[arg-type]
    assert (info.value.status_code, info.value.code) == (502, "upstream_unreachable")
    assert [r.body["model"] for r in gw.fake.requests] == ["gpt-4o", "gpt-4o"]  # the two spent, nothing more
