"""The command benchmark's HTTP client (decision 0058): the same requests as an app's
client, against a real HTTP server (uvicorn, as the API runs), at a small fraction of
httpx's CPU per request, so the harness does not take from the ingest it measures."""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.bench.client import KeepAliveClient
from gateway.bench.commands import BENCH_COMMANDS, _send
from gateway.broker import free_port

VINS = ["WVWZZZ1JZXW000001", "WVWZZZ1JZXW000002"]


class _Seen:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.connections: set[tuple[str, int]] = set()


async def _command(request: Request) -> Response:
    seen: _Seen = request.app.state.seen
    body = await request.json()
    assert request.client is not None
    seen.connections.add((request.client.host, request.client.port))
    seen.requests.append(
        {
            "path": request.url.path,
            "headers": dict(request.headers),
            "body": body,
        }
    )
    if request.query_params.get("close"):
        return JSONResponse({"id": "closed"}, status_code=201, headers={"Connection": "close"})
    return JSONResponse({"id": str(uuid.uuid4()), **body}, status_code=201)


async def _slow(request: Request) -> Response:
    seen: _Seen = request.app.state.seen
    await request.body()
    assert request.client is not None
    seen.connections.add((request.client.host, request.client.port))
    await asyncio.sleep(0.2)
    return JSONResponse({"id": "slow"}, status_code=201)


async def _chunked(request: Request) -> Response:
    await request.body()

    async def parts() -> Any:
        for part in (b'{"id": ', b'"chunked", ', b'"n": 3}'):
            yield part

    return StreamingResponse(parts(), status_code=201, media_type="application/json")


@pytest.fixture
def server() -> Iterator[tuple[str, _Seen]]:
    app = Starlette(
        routes=[
            Route("/v1/vehicles/{vin}/commands", _command, methods=["POST"]),
            Route("/chunked", _chunked, methods=["POST"]),
            Route("/slow", _slow, methods=["POST"]),
        ]
    )
    app.state.seen = seen = _Seen()
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=1
    )
    served = uvicorn.Server(config)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not served.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        served.should_exit = True
        thread.join(10)


def test_the_bench_sends_the_same_requests_over_kept_connections(
    server: tuple[str, _Seen],
) -> None:
    base, seen = server
    sent = asyncio.run(_send(base, VINS, 12, 20.0, {"Authorization": "Bearer tgk_x"}))
    assert len(sent) == 12
    assert all(started <= answered for started, answered in sent.values())
    assert len(seen.requests) == 12
    for i, request in enumerate(seen.requests):
        assert request["path"] == f"/v1/vehicles/{VINS[i % 2]}/commands"
        assert request["body"] == BENCH_COMMANDS[i % len(BENCH_COMMANDS)]
        headers = request["headers"]
        assert headers["authorization"] == "Bearer tgk_x"
        assert headers["content-type"] == "application/json"
        assert headers["host"] == base.removeprefix("http://")
        assert len(headers["idempotency-key"]) == 32
    assert len({r["headers"]["idempotency-key"] for r in seen.requests}) == 12
    # keep-alive: at this rate a few connections, not one per request
    assert len(seen.connections) < 12


def test_the_client_reads_chunked_answers_and_honours_connection_close(
    server: tuple[str, _Seen],
) -> None:
    base, seen = server

    async def go() -> list[Any]:
        async with KeepAliveClient(base, {}) as client:
            chunked = await client.post_json("/chunked", {"a": 1}, {})
            closed = await client.post_json(f"/v1/vehicles/{VINS[0]}/commands?close=1", {}, {})
            after = await client.post_json(f"/v1/vehicles/{VINS[0]}/commands", {}, {})
            return [chunked.json(), closed.status_code, after.status_code, after.json()]

    chunked, closed, after, body = asyncio.run(go())
    assert chunked == {"id": "chunked", "n": 3}
    assert (closed, after) == (201, 201)
    assert body["id"]
    # the connection the server closed was not reused
    assert len(seen.connections) == 2


def test_a_connection_the_server_closed_while_idle_is_not_reused(
    server: tuple[str, _Seen],
) -> None:
    """uvicorn closes a connection idle for its keep-alive timeout (1 s here): the next
    request goes on a new connection instead of failing on the closed one."""
    base, seen = server

    async def go() -> list[int]:
        async with KeepAliveClient(base, {}) as client:
            first = await client.post_json(f"/v1/vehicles/{VINS[0]}/commands", {}, {})
            await asyncio.sleep(1.5)
            second = await client.post_json(f"/v1/vehicles/{VINS[0]}/commands", {}, {})
            return [first.status_code, second.status_code]

    assert asyncio.run(go()) == [201, 201]
    assert len(seen.connections) == 2


def test_a_connection_idle_near_the_servers_timeout_is_closed_not_reused(
    server: tuple[str, _Seen],
) -> None:
    """A connection reused just as the server closes it fails the request (sent again,
    late): one idle for ``keepalive_expiry`` (below uvicorn's timeout) is not reused, one
    idle for less is."""
    base, seen = server

    async def go() -> None:
        async with KeepAliveClient(base, {}, keepalive_expiry=0.4) as client:
            for pause in (0.0, 0.1, 0.6, 0.1):
                await asyncio.sleep(pause)
                r = await client.post_json(f"/v1/vehicles/{VINS[0]}/commands", {}, {})
                assert r.status_code == 201

    asyncio.run(go())
    assert len(seen.connections) == 2  # a new one after the 0.6 s pause only


def test_requests_beyond_the_connection_limit_wait_for_a_connection(
    server: tuple[str, _Seen],
) -> None:
    """As httpx's pool did for the benchmark (200): a stalled API does not get a new
    connection for every request sent meanwhile."""
    base, seen = server

    async def go() -> list[int]:
        async with KeepAliveClient(base, {}, max_connections=2) as client:
            answers = await asyncio.gather(*[client.post_json("/slow", {}, {}) for _ in range(6)])
            return [r.status_code for r in answers]

    assert asyncio.run(go()) == [201] * 6
    assert len(seen.connections) == 2


def _calls_per_request(base: str, send: Any, n: int) -> float:
    """Python function calls in the client's thread per request (deterministic, unlike
    its CPU time on a shared machine); the server runs in another thread."""
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(send(n))
    profiler.disable()
    stats = pstats.Stats(profiler)
    return float(sum(s[1] for s in stats.stats.values())) / n  # type: ignore[attr-defined]


def test_the_bench_client_costs_a_fraction_of_httpx(server: tuple[str, _Seen]) -> None:
    """httpx's ``AsyncClient`` took ~2 ms of CPU per request on the benchmark's machine,
    counted against the ingest the benchmark compares (decision 0058); the benchmark's
    ``_send`` (pacing, tasks, the client) now makes a fraction of httpx's calls."""
    base, _ = server
    path = f"/v1/vehicles/{VINS[0]}/commands"

    async def with_httpx(n: int) -> None:
        async with httpx.AsyncClient(base_url=base) as client:
            for _ in range(n):
                (await client.post(path, json={"type": "lock"})).raise_for_status()

    async def bench(n: int) -> None:
        await _send(base, VINS, n, 100.0, {"Authorization": "Bearer tgk_x"})

    asyncio.run(bench(5))  # warm-up: imports, first connection
    ours = _calls_per_request(base, bench, 100)
    theirs = _calls_per_request(base, with_httpx, 100)
    print(f"Python calls per request: bench {ours:.0f}, httpx alone {theirs:.0f}")
    assert ours < theirs / 4, (ours, theirs)
