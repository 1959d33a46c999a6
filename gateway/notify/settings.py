"""``NotifySettings``: how the live stream and the webhooks behave (one per API process)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NotifySettings"]


@dataclass(frozen=True, slots=True)
class NotifySettings:
    #: how often the bus looks for events written by any process (the stream's latency)
    event_poll_s: float = 0.1
    #: events kept in memory for streams that reconnect (older ones are read from the log)
    event_buffer: int = 10_000
    #: how long the event log keeps events: the ``Last-Event-ID`` replay horizon
    event_retention_s: float = 24 * 3600
    #: POST deliveries to private, loopback and link-local addresses (an operator's choice;
    #: off by default: a webhook URL must not reach the gateway's own network)
    webhook_allow_private_targets: bool = False
    webhook_timeout_s: float = 5.0
    #: first retry after this long, doubling up to ``webhook_retry_cap_s``
    webhook_retry_base_s: float = 10.0
    webhook_retry_cap_s: float = 3600.0
    #: attempts before a delivery is given up (``failed``): 8 spans about 21 minutes
    webhook_max_attempts: int = 8
    #: how often the worker looks for due deliveries
    webhook_poll_s: float = 0.5
    #: a claimed delivery is retried after this long if its process died mid-attempt
    webhook_lease_s: float = 60.0
    #: deliveries sent at once by one process
    webhook_concurrency: int = 8
    #: finished deliveries kept per webhook in its log (the newest; pending ones always)
    webhook_delivery_log: int = 1000
    #: webhooks one organization may have (each event is queued once per webhook)
    max_webhooks_per_account: int = 20
    #: publish alerts on ``integrations/<account id>/alerts`` (needs the command service's
    #: MQTT settings: the fan-out connects as the gateway's service account)
    mqtt_fanout: bool = True
    #: integration credentials one organization may have
    max_integrations_per_account: int = 20
