"""The pipelined connection behind admit/settle: order, sharing, and every way the server can let it down."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from harness import gateway_config
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import metering
from gateway.catalog import Catalog
from gateway.keys import new_record
from gateway.store.base import Admission, KeyRecord, StoreError
from gateway.store.memory import MemoryStore
from gateway.store.multiplex import Multiplexed, sha1
from gateway.store.redis import RedisStore
from providers.types import Usage
from tests.redis_server import RedisServer

SCRIPT = "return {ARGV[1], redis.call('INCR', KEYS[1])}"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server of this module's own: these tests stop it and count its clients."""
    with RedisServer() as srv:
        yield srv


def connected_clients(srv: RedisServer) -> int:
    with redis.Redis(port=srv.port) as admin:
        return int(admin.info("clients")["connected_clients"]) - 1  # not counting this one


async def test_concurrent_callers_share_one_connection_and_get_their_own_replies(server: RedisServer) -> None:
    mux = Multiplexed(server.url, 1, 2)
    try:
        replies = await asyncio.gather(*(mux.call("INCR", f"k{i % 7}") for i in range(700)))
        assert sorted(replies) == sorted(n for _ in range(7) for n in range(1, 101))
        assert await asyncio.gather(*(mux.call("GET", f"k{i}") for i in range(7))) == ["100"] * 7
        assert connected_clients(server) == 1
    finally:
        await mux.close()


async def test_a_caller_that_gives_up_does_not_shift_the_replies_of_the_others(server: RedisServer) -> None:
    mux = Multiplexed(server.url, 1, 5)
    try:
        blocked = asyncio.create_task(mux.call("BLPOP", "never-pushed", "0.3"))  # holds the connection
        await asyncio.sleep(0.05)
        behind = asyncio.create_task(mux.call("INCR", "counter"))
        await asyncio.sleep(0.05)
        blocked.cancel()
        assert await behind == 1  # its own reply, not BLPOP's nil
        assert await mux.call("INCR", "counter") == 2
    finally:
        await mux.close()


async def test_scripts_run_by_sha_and_are_loaded_again_after_a_flush(server: RedisServer) -> None:
    mux = Multiplexed(server.url, 1, 2)
    try:
        assert await mux.script(SCRIPT, sha1(SCRIPT), ["n"], ["a"]) == ["a", 1]
        with redis.Redis(port=server.port) as admin:
            assert admin.script_exists(sha1(SCRIPT)) == [True]
            admin.script_flush()
        assert await mux.script(SCRIPT, sha1(SCRIPT), ["n"], ["b"]) == ["b", 2]
        with pytest.raises(ResponseError, match="ERR"):
            await mux.script("return redis.call('NOSUCHCOMMAND')", sha1("x"), [], [])
    finally:
        await mux.close()


async def test_an_outage_fails_fast_and_the_next_call_after_it_reconnects(server: RedisServer) -> None:
    mux = Multiplexed(server.url, 1, 2)
    try:
        assert await mux.call("INCR", "n") == 1
        server.stop()
        with pytest.raises(RedisConnectionError):
            await mux.call("INCR", "n")
        with pytest.raises(RedisConnectionError):
            await mux.call("INCR", "n")
        server.start()
        assert await mux.call("INCR", "n") == 1  # nothing persisted: a fresh server
    finally:
        await mux.close()


async def test_a_server_that_never_answers_times_out_and_drops_the_connection() -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    mux = Multiplexed(f"redis://127.0.0.1:{port}/0", 1, 0.2)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(mux.call("PING"), mux.call("PING"), return_exceptions=True)
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert loop.time() - started < 1.5
    finally:
        await mux.close()
        silent.close()


async def test_answered_commands_spread_over_several_timeouts_never_time_out(server: RedisServer) -> None:
    """The one watchdog per connection times the oldest unanswered command only."""
    mux = Multiplexed(server.url, 1, 0.3)
    try:
        for i in range(8):  # 1.2 s of commands, each answered at once, fired across the watchdog's ticks
            assert await mux.call("INCR", "spread") == i + 1
            await asyncio.sleep(0.15)
        blocked = await asyncio.gather(mux.call("BLPOP", "never-pushed", "1"), return_exceptions=True)
        assert isinstance(blocked[0], RedisTimeoutError)  # a reply 1 s away: over the 0.3 s limit
        assert await mux.call("INCR", "spread") == 9  # reconnected
    finally:
        await mux.close()


async def test_password_and_database_from_the_url_and_no_password_in_errors() -> None:
    with RedisServer(password="s3cret-pw") as srv:
        mux = Multiplexed(srv.url.replace("/0", "/3"), 1, 2)
        try:
            assert await mux.call("SET", "where", "here") == "OK"
            with redis.Redis(port=srv.port, password="s3cret-pw", db=3) as admin:
                assert admin.get("where") == b"here"
        finally:
            await mux.close()
        wrong = Multiplexed(srv.url.replace("s3cret-pw", "wrong-pw"), 1, 2)
        with pytest.raises(ResponseError) as info:
            await wrong.call("PING")
        assert "wrong-pw" not in str(info.value) and "AUTH" in str(info.value)
        await wrong.close()


async def test_unix_socket_urls(server: RedisServer) -> None:
    mux = Multiplexed(f"unix://{server.socket_path}", 1, 2)
    try:
        assert await mux.call("INCR", "over-unix") == 1
    finally:
        await mux.close()


async def test_the_store_admits_and_settles_through_an_outage_as_store_errors(server: RedisServer) -> None:
    store = RedisStore(server.url, prefix="mx:")
    try:
        await store.create_key(KeyRecord(id="k1", name="n", key_hash="h" * 64, prefix="gw-x", created=1,
                                         balance=1_000))
        admission = Admission(key_id="k1", model_id="m", generation_id="g1", hold=300, hold_ttl_s=60,
                              rpm=None, rpd=None, tpm=None)
        assert (await store.admit(admission)).outcome == "ok"
        server.stop()
        with pytest.raises(StoreError) as info:
            await store.settle("k1", "g1", 100, 10, {"id": "g1", "model": "m"}, 60)
        assert "redis settle failed" in str(info.value)
        server.start()  # empty again: the key is gone, and the store says so rather than failing
        with pytest.raises(ValueError, match="no key k1"):
            await store.settle("k1", "g1", 100, 10, {"id": "g1", "model": "m"}, 60)
    finally:
        await store.close()


async def test_a_cancelled_store_call_leaves_its_task_cancelled(server: RedisServer) -> None:
    """Python 3.11's `asyncio.wait_for`, inside redis-py's connection set-up, returns a result that arrived
    in the same loop turn as the cancellation and drops the cancellation: the task carried on (a shutdown
    waiting for it hung). Cancelled at random moments, every call must end its task cancelled."""
    store = RedisStore(server.url, prefix="cx:")
    await store.create_key(KeyRecord(id="k1", name="n", key_hash="c" * 64, prefix="gw-x", created=1))
    rng = random.Random(6)
    carried_on: list[str] = []

    async def call(name: str) -> None:
        if name == "ping":
            await store.ping()
        elif name == "get_key_by_hash":
            await store.get_key_by_hash("c" * 64)
        else:
            await store.get_key("k1")
        if asyncio.current_task().cancelling():  # type: ignore[union-attr]
            carried_on.append(name)  # returned as if never cancelled

    try:
        cut_short = calls = 0
        while cut_short < 150 and calls < 3000:  # enough calls really cut short, at varied moments
            task = asyncio.ensure_future(call(("ping", "get_key_by_hash", "get_key")[calls % 3]))
            calls += 1
            await asyncio.sleep(rng.random() * 0.0006)
            finished = task.done()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            cut_short += not finished
            assert finished or task.cancelled()
        assert carried_on == []
        assert cut_short == 150
        assert await store.get_key("k1") is not None  # and the store still works
    finally:
        await store.close()


async def test_a_connection_lost_right_after_its_handshake_fails_the_call_instead_of_hanging() -> None:
    """Redis goes away between the set-up's last reply and the first command (a restart at that moment): the
    call fails as a connection error (a 503 above it), not a wait for ever on a socket no watchdog times."""

    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # the handshake: SCRIPT LOAD
        writer.write(b"$40\r\n" + b"0" * 40 + b"\r\n")
        writer.close()

    server = await asyncio.start_server(answer_then_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mux = Multiplexed(f"redis://127.0.0.1:{port}/0", 1, 1, scripts=("return 1",))
    try:
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(mux.call("PING"), 3)
    finally:
        await mux.close()
        server.close()


async def test_a_connection_attempt_whose_callers_all_gave_up_is_not_reused_once_dead(server: RedisServer) -> None:
    """The only caller waiting for the connection is cancelled and the connection completes anyway: after a
    later Redis restart the next call reconnects, rather than being handed that attempt's dead connection."""
    mux = Multiplexed(server.url, 1, 1)
    try:
        first = asyncio.ensure_future(mux.call("PING"))
        await asyncio.sleep(0)  # the connection attempt has begun
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.sleep(0.2)  # ... and completed, with no caller left to see it
        server.restart()
        await asyncio.sleep(0.2)  # the old connection is known lost
        assert await asyncio.wait_for(mux.call("PING"), 3) == "PONG"
    finally:
        await mux.close()


async def admitted(store: RedisStore) -> tuple[metering.Ticket, metering.Settlements]:
    """A new key's request admitted through the gateway's metering, and the settlements it will use."""
    config = gateway_config("http://127.0.0.1:9/v1")
    _, key = new_record("k", 1_000_000_000)
    await store.create_key(key)
    settlements = metering.Settlements()
    body = {"model": "fake/gpt-5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    route = Catalog(config).resolve("fake/gpt-5")
    return await metering.admit(store, settlements, config, route, key, body, False, False), settlements


async def test_shutdown_drains_the_retry_a_settlement_in_flight_hands_off(server: RedisServer,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis stalls just as an answer is billed: the settlement times out and hands itself to a background
    retry. The shutdown's drain waits for that retry too (Redis is back a second later), rather than return
    and let the store close under it: the served request is charged."""
    monkeypatch.setattr("gateway.store.redis.SOCKET_TIMEOUT_S", 0.3)
    store = RedisStore(server.url, prefix="drain:")
    try:
        ticket, settlements = await admitted(store)
        server.pause(resume_after_s=1.0)
        bill = await ticket.settle(metering.Outcome(usage=Usage(prompt_tokens=19, completion_tokens=10,
                                                                 reported=True)))  # known: answered at once
        await settlements.drain(10)
        assert not settlements.pending
        generation = await store.get_generation(ticket.key.id, ticket.generation_id)
        assert generation is not None and int(generation["charged"]) == bill.cost
    finally:
        server.resume()
        await store.close()


async def test_a_served_request_whose_key_the_store_lost_is_answered_and_logged(
        server: RedisServer, log_lines: Any) -> None:
    """Redis restarted without its data between admission and settlement: the answer was served, so the
    client gets it (not a 500); the operator gets an error line naming the key and generation."""
    store = RedisStore(server.url, prefix="lost:")
    try:
        ticket, settlements = await admitted(store)
        server.restart()  # no persistence: the key is gone
        outcome = metering.Outcome(usage=Usage(prompt_tokens=19, completion_tokens=10, reported=True))
        await ticket.settle(outcome, wait=True)  # the old connection is lost: retried in the background
        await settlements.drain(5)
        assert not settlements.pending
        [line] = [li for li in log_lines() if li["event"].startswith("settlement for a key the store no longer")]
        assert line["level"] == "error"
        assert (line["key_id"], line["generation_id"]) == (ticket.key.id, ticket.generation_id)
    finally:
        await store.close()


async def test_a_cancelled_admission_gives_its_hold_back_once_the_store_answers_again() -> None:
    """The request is cancelled while its admission is in flight and the store fails the zero settlement
    that undoes it: the hold (and a stream slot) come back at the next try, not at the hold's TTL."""

    class Flaky(MemoryStore):
        settles = 0

        async def admit(self, admission: Admission) -> Any:
            result = await super().admit(admission)  # the script ran: the hold is in place ...
            await asyncio.sleep(10)  # ... and its answer is late
            return result

        async def settle(self, *args: Any) -> Any:
            self.settles += 1
            if self.settles == 1:
                raise StoreError("store down")
            return await super().settle(*args)

    store = Flaky()
    config = gateway_config("http://127.0.0.1:9/v1")
    route = Catalog(config).resolve("fake/gpt-5")
    _, key = new_record("k", 1_000_000_000, max_streams=1)
    await store.create_key(key)
    settlements = metering.Settlements()
    body = {"model": "fake/gpt-5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    admitting = asyncio.ensure_future(metering.admit(store, settlements, config, route, key, body, False, True))
    await asyncio.sleep(0.05)
    admitting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await admitting
    await settlements.drain(5)
    record = await store.get_key(key.id)
    assert store.settles == 2 and record is not None and record.balance == record.credits
    again = await MemoryStore.admit(store, Admission(key.id, route.model_id, "gen-next", 0, 60, streams=1))
    assert again.outcome == "ok"  # the stream slot came back too
