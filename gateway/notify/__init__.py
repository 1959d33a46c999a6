"""Notifications out of the gateway: the live stream's event bus and the webhook worker.

Layout:
    settings.py   ``NotifySettings``: polling, replay buffer, retention, webhook retries and
                  the private-address switch
    bus.py        ``EventBus``: one poller per process reads new events from the state
                  database's event log (written by :func:`gateway.statedb.events.publish`
                  in the transaction of each change, whichever process made it) into a
                  bounded in-memory buffer and wakes the streams waiting on it
    webhooks.py   ``WebhookWorker``: claims due deliveries, signs and POSTs them, records
                  each attempt and schedules the next with exponential backoff
    mqtt.py       ``AlertFanout``: alert events on ``integrations/<account id>/alerts``
                  for integration credentials, one publisher per installation (decision
                  0017)

Imports ``gateway.core.notify`` (the rules), ``gateway.statedb``, httpx and gmqtt; imported by the
API's composition root and routes. See docs/decisions/0016-command-jobs-and-notifications.md.
"""

from gateway.notify.bus import EventBus
from gateway.notify.settings import NotifySettings
from gateway.notify.webhooks import WebhookWorker

__all__ = ["EventBus", "NotifySettings", "WebhookWorker"]
