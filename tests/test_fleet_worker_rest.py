"""The rules worker's thread rests after a step only while the API serves people (decision
0024, revisiting 0022's rest after every step): a request that began within the last second
makes it rest as long as the step took; with nobody asking it goes straight on. And the API
stamps when each request began."""

from __future__ import annotations

import itertools
import time
from typing import Any, cast

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.api.activity import ActivityStamp, RequestActivity
from gateway.fleet.worker import RulesWorker, WorkerSettings, WorkerThread

STEP_S = 0.3


class _Steps:
    """A worker whose every step is busy for ``STEP_S`` and records when it began/ended."""

    def __init__(self) -> None:
        self.settings = WorkerSettings(poll_s=0.05)
        self.spans: list[tuple[float, float]] = []

    def step(self) -> int:
        started = time.monotonic()
        time.sleep(STEP_S)
        self.spans.append((started, time.monotonic()))
        return 1

    def stop(self) -> None:
        pass


def _pauses(busy: bool) -> list[float]:
    worker = _Steps()
    thread = WorkerThread(cast(RulesWorker, worker), busy=lambda: busy)
    thread.start()
    time.sleep(4 * STEP_S)
    thread.stop()
    spans = worker.spans
    return [b[0] - a[1] for a, b in itertools.pairwise(spans)]


def test_the_worker_rests_as_long_as_its_step_only_while_people_are_served() -> None:
    resting = _pauses(busy=True)
    assert resting
    assert min(resting) >= STEP_S * 0.95
    going_on = _pauses(busy=False)
    assert len(going_on) >= 2
    assert max(going_on) < STEP_S * 0.8


def test_each_request_is_stamped_as_it_begins() -> None:
    activity = RequestActivity(window_s=60.0)

    async def hello(_: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = ActivityStamp(Starlette(routes=[Route("/", hello)]), activity=activity)
    assert not activity.recent()
    with TestClient(app) as client:
        assert client.get("/").text == "hello"
    assert activity.recent()
    assert not RequestActivity(window_s=0.0).recent()


def test_a_step_that_evaluated_something_wakes_the_event_bus() -> None:
    """The API hands the thread its bus's poke: alerts go out when they are committed, not
    at the bus's next poll (up to 100 ms later)."""
    worker = _Steps()
    thread = WorkerThread(cast(RulesWorker, worker), busy=lambda: False)
    pokes: list[float] = []
    thread.on_commit = lambda: pokes.append(time.monotonic())
    thread.start()
    time.sleep(2 * STEP_S)
    thread.stop()
    assert len(pokes) == len(worker.spans) >= 1
    assert all(p >= end for p, (_, end) in zip(pokes, worker.spans, strict=True))
