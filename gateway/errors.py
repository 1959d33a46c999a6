"""The gateway's exceptions.

::

    GatewayError                     base of everything the gateway raises on purpose
     +-- ConfigurationError          a setting is missing or contradicts another
     +-- StoreError                  the telemetry store failed (disk full, locked, corrupt)
     +-- BrokerError                 (gateway.broker) Mosquitto missing or failed to start
     +-- TextRefused                 (gateway.text) a control or invisible character in a name

Bad device input is not an exception: it is a :class:`schemas.Rejection` value that ends in
the quarantine.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "GatewayError", "StoreError"]


class GatewayError(Exception):
    """Base class of the gateway's own exceptions."""


class ConfigurationError(GatewayError):
    """Raised at start-up when a setting is invalid; the message says which and how to fix it."""


class StoreError(GatewayError):
    """Raised when the telemetry store cannot commit or read; carries the operation."""

    def __init__(self, operation: str, cause: BaseException) -> None:
        self.operation = operation
        super().__init__(f"telemetry store failed to {operation}: {cause}")
