"""The MQTT fan-out of alerts: every ``alert.*`` event on its organization's integration
topic ``integrations/<account id>/alerts`` (decision 0017).

For home-automation tools and the like, which speak MQTT rather than HTTP: an
organization's manager creates an integration credential (``POST /v1/integrations``), and
the broker lets that credential subscribe to the organization's topic and nothing else
(``gateway.broker.auth.integration_acls``). The payload is the event JSON of the stream and
the webhooks (:func:`gateway.statedb.events.event_body`), QoS 1, not retained.

One publisher per installation: the fan-out holds a lease on its cursor in the state
database (``notify_cursors``, renewed every few seconds), so with several API processes one
publishes and another takes over when it dies; the cursor is the last event id handed to
the MQTT client, so a restart resumes after it (at least once while the event log keeps
the events, 24 h). It connects as the gateway's service account, whose role may publish on
``integrations/+/alerts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

from gmqtt import Client as MqttClient
from gmqtt.mqtt.constants import MQTTv50

from gateway.broker.auth import integration_topic
from gateway.core.clock import wall_clock_ms
from gateway.notify.settings import NotifySettings
from gateway.settings import MqttSettings
from gateway.statedb.events import EventLog, EventRecord, event_body
from gateway.statedb.integrations import IntegrationRepository

__all__ = ["FANOUT_CURSOR", "AlertFanout", "fanout_payload"]

log = logging.getLogger(__name__)

#: the name of the fan-out's row in ``notify_cursors``
FANOUT_CURSOR = "mqtt-alerts"
_LEASE_MS = 15_000


def fanout_payload(event: EventRecord) -> tuple[str, bytes] | None:
    """(topic, payload) of an event for the fan-out; None for events it does not carry
    (anything but alerts, and events of no organization)."""
    if not event.type.startswith("alert.") or event.account_id is None:
        return None
    body = event_body(event.id, event.type, event.at, event.data)
    return integration_topic(event.account_id), body.encode()


class AlertFanout:
    """See the module docstring. :meth:`start`, :meth:`stop`."""

    def __init__(
        self,
        events: EventLog,
        integrations: IntegrationRepository,
        mqtt: MqttSettings,
        settings: NotifySettings,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.events, self.repo, self.mqtt, self.settings = events, integrations, mqtt, settings
        self._clock_ms = clock_ms
        self.owner = f"fanout-{uuid.uuid4().hex[:12]}"
        self._client: MqttClient | None = None
        self._connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: events published by this process (for tests and metrics)
        self.published = 0
        self._cursor: int | None = None
        self._renewed = -_LEASE_MS
        self._dialled = False

    async def start(self) -> None:
        client = MqttClient(f"telematics-notify-{self.owner}", clean_session=True)
        client.on_connect = lambda *_: self._connected.set()
        client.on_disconnect = lambda *_: self._connected.clear()
        if self.mqtt.username is not None:
            client.set_auth_credentials(self.mqtt.username, self.mqtt.password)
        self._client = client
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._client is not None and self._connected.is_set():
            await self._client.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.repo.release_cursor, FANOUT_CURSOR, self.owner)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self._dialled:
                    await self._connect()
                if self._connected.is_set():  # else the client is reconnecting by itself
                    await self._round()
            except Exception:
                log.exception("the MQTT fan-out of alerts failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.event_poll_s)

    async def _connect(self) -> None:
        assert self._client is not None
        await self._client.connect(self.mqtt.host, self.mqtt.port, version=MQTTv50, keepalive=30)
        self._dialled = True  # from now on gmqtt reconnects by itself after a loss
        await asyncio.wait_for(self._connected.wait(), 10)

    async def _round(self) -> None:
        """Publish what came after the cursor, if this process holds it. The lease is
        renewed every third of its time, not every round (a write ten times a second
        would compete with the API's own writes for nothing)."""
        assert self._client is not None
        now = self._clock_ms()
        if now - self._renewed >= _LEASE_MS // 3:
            self._cursor = await asyncio.to_thread(
                self.repo.take_cursor, FANOUT_CURSOR, self.owner, now=now, ttl_ms=_LEASE_MS
            )
            self._renewed = now
        if self._cursor is None:
            return  # another process publishes
        batch = await asyncio.to_thread(self.events.after, self._cursor, limit=500)
        if not batch:
            return
        for event in batch:
            out = fanout_payload(event)
            if out is not None:
                self._client.publish(out[0], out[1], qos=1)
                self.published += 1
        held = await asyncio.to_thread(
            self.repo.advance_cursor, FANOUT_CURSOR, self.owner, batch[-1].id, now=now
        )
        self._cursor = batch[-1].id if held else None
        if not held:
            self._renewed = -_LEASE_MS  # taken over: look again at the next round
