"""Response models: the API's JSON shapes, and through them its OpenAPI schema.

They are separate from the store's dataclasses (``gateway.store.base``) on purpose: the store
may change its internals, the HTTP contract may not. Conventions every model follows:

* every time is epoch milliseconds (``ts``, ``last_seen``, ``created_at``) with an ISO 8601
  UTC twin whose name adds ``_iso`` (``ts_iso``, ``last_seen_iso``), null together; the
  integer is the exact value to compute with and to pass back in queries, the string is for
  people (tests/test_api_conventions.py checks every schema of the OpenAPI document);
* every list is ``{"items": [...], "next": cursor | null}`` (gateway.api.paging), so fields
  can be added without breaking clients and every list pages the same way;
* absent values are ``null``, never missing keys: a response has exactly the keys its
  schema lists.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from gateway.api.models.records import FromRecord
from gateway.api.params import iso, iso_or_none
from gateway.core.presence import presence
from gateway.store import VehicleSummary
from schemas import CATALOG, SignalSpec, SignalValue

__all__ = [
    "Catalog",
    "CatalogSignal",
    "ComponentHealth",
    "ErrorDetail",
    "ErrorInfo",
    "ErrorResponse",
    "Health",
    "History",
    "HistoryPointOut",
    "Page",
    "QuarantineOut",
    "QuarantinePage",
    "SignalState",
    "Vehicle",
    "VehicleDetail",
    "VehiclePage",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- errors --------------------------------------------------------------------------------


#: fields whose value an error never repeats: the caller knows what they typed, and an
#: error body ends up in logs, proxies and bug reports
SECRET_FIELDS: Final = frozenset(
    {"password", "current_password", "refresh_token", "token", "access_token", "key"}
)
#: the longest string (and list) an error repeats, about; longer inputs are cut, marked
MAX_ERROR_INPUT: Final = 200
_MAX_ERROR_MSG: Final = 500


def _bounded_input(value: JsonValue) -> JsonValue:
    """``value`` cut to :data:`MAX_ERROR_INPUT` characters (strings) or items (lists):
    a 300 MB body must not come back in its own 422."""
    # the margin leaves a value cut once alone when the model is validated again
    if isinstance(value, str) and len(value) > MAX_ERROR_INPUT + 40:
        return f"{value[:MAX_ERROR_INPUT]}... ({len(value)} characters)"
    if isinstance(value, list):
        return [_bounded_input(v) for v in value[:MAX_ERROR_INPUT]]
    if isinstance(value, dict):
        return None  # a whole object is never needed to point at the problem
    return value


class ErrorDetail(_Model):
    """One specific problem, e.g. one invalid query parameter."""

    loc: list[str | int] = Field(
        default_factory=list,
        description='Where the problem is, e.g. ["query", "limit"]; empty if not one field.',
    )
    msg: str = Field(description="What is wrong with it.")
    type: str | None = Field(default=None, description="Machine-readable kind of problem.")
    input: JsonValue = Field(
        default=None,
        description="The offending value, if there was one: cut to 200 characters, and "
        "never for a password, token or key.",
    )

    @model_validator(mode="after")
    def _safe_input(self) -> Self:
        secret = any(isinstance(part, str) and part in SECRET_FIELDS for part in self.loc)
        bounded = None if secret else _bounded_input(self.input)
        # frozen: each set once, while validating
        if bounded != self.input:
            object.__setattr__(self, "input", bounded)
        if len(self.msg) > _MAX_ERROR_MSG:
            object.__setattr__(self, "msg", self.msg[:_MAX_ERROR_MSG] + "...")
        return self


class ErrorInfo(_Model):
    code: str = Field(
        description="Stable machine-readable error code, e.g. vehicle_not_found.",
        examples=["vehicle_not_found"],
    )
    message: str = Field(description="What was wrong and how to fix it, for people.")
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(_Model):
    """The body of every error response."""

    error: ErrorInfo


# --- lists ---------------------------------------------------------------------------------


class Page(_Model):
    """Base of every list response (see gateway.api.paging); subclasses narrow ``items``."""

    items: list[Any]
    next: str | None = Field(
        description="Pass as `cursor` (with the same filters) for the next page; null on "
        "the last page."
    )


# --- vehicles ------------------------------------------------------------------------------


class Vehicle(_Model):
    vin: str = Field(examples=["WVWZZZ1JZXW000001"])
    reported: bool = Field(
        description="Whether the gateway has heard from it; false for a vehicle that is "
        "provisioned but never reported (then every time below is null)."
    )
    online: bool | None = Field(
        description="From the vehicle's last status message (the broker sends its last will "
        "when the connection drops), but false once nothing has come from the vehicle for "
        "the installation's silence limit (default 10 minutes); null if it never sent a "
        "status."
    )
    offline_reason: Literal["status", "silent"] | None = Field(
        description="Why `online` is false: `status` (its status message or Last Will said "
        "offline) or `silent` (its status says online, but no message has come for longer "
        "than the silence limit: it disconnected without saying so, or hangs); null when "
        "online or unknown."
    )
    missing_samples: int = Field(
        description="Telemetry `seq` numbers between the first and the last received that "
        "have not arrived: samples lost (or still on their way in a late upload)."
    )
    missing_events: int = Field(description="The same for the vehicle's event `seq` numbers.")
    first_seen: int | None = Field(description="When the gateway first heard from it, epoch ms.")
    first_seen_iso: str | None
    last_seen: int | None = Field(description="When the gateway last heard from it, epoch ms.")
    last_seen_iso: str | None
    status_changed_at: int | None = Field(
        description="When the gateway received the status message that set `online`, epoch "
        "ms (null when it never did, or learnt it only from a retained message)."
    )
    status_changed_at_iso: str | None

    @classmethod
    def from_summary(cls, s: VehicleSummary, *, now_ms: int, silent_after_ms: int) -> Vehicle:
        return cls.model_validate(_summary_fields(s, now_ms, silent_after_ms))

    @classmethod
    def never_reported(cls, vin: str) -> Vehicle:
        return cls.model_validate(_never_reported_fields(vin))


def _summary_fields(s: VehicleSummary, now_ms: int, silent_after_ms: int) -> dict[str, object]:
    online, offline_reason = presence(
        s.online, s.last_seen, now_ms=now_ms, silent_after_ms=silent_after_ms
    )
    return {
        "vin": s.vin,
        "reported": True,
        "online": online,
        "offline_reason": offline_reason,
        "missing_samples": s.missing_samples,
        "missing_events": s.missing_events,
        "first_seen": s.first_seen,
        "first_seen_iso": iso(s.first_seen),
        "last_seen": s.last_seen,
        "last_seen_iso": iso(s.last_seen),
        "status_changed_at": s.status_changed_at,
        "status_changed_at_iso": iso_or_none(s.status_changed_at),
    }


def _never_reported_fields(vin: str) -> dict[str, object]:
    times = ("first_seen", "last_seen", "status_changed_at")
    return {
        "vin": vin,
        "reported": False,
        "online": None,
        "offline_reason": None,
        "missing_samples": 0,
        "missing_events": 0,
        **dict.fromkeys(times),
        **{f"{name}_iso": None for name in times},
    }


class VehiclePage(Page):
    items: list[Vehicle] = Field(
        description="Ordered by VIN: every vehicle you may see, provisioned or heard from."
    )


class SignalState(_Model):
    value: SignalValue
    ts: int = Field(description="Sample time (vehicle clock) of this value, epoch ms.")
    ts_iso: str
    unit: str | None = Field(description="VSS unit from the catalog; null if unitless.")


class VehicleDetail(Vehicle):
    state: dict[str, SignalState] = Field(
        description="Newest value of every signal the vehicle has reported, by VSS path."
    )

    @classmethod
    def build(
        cls,
        s: VehicleSummary | str,
        latest: Mapping[str, tuple[SignalValue, int]],
        *,
        now_ms: int,
        silent_after_ms: int,
    ) -> VehicleDetail:
        """``s``: the store's summary, or the VIN of a vehicle that never reported."""
        fields = (
            _never_reported_fields(s)
            if isinstance(s, str)
            else _summary_fields(s, now_ms, silent_after_ms)
        )
        state: dict[str, SignalState] = {}
        for path, (value, ts) in latest.items():
            spec = CATALOG.get(path)
            state[path] = SignalState(
                value=value, ts=ts, ts_iso=iso(ts), unit=spec.unit if spec else None
            )
        return cls.model_validate({**fields, "state": state})


# --- history -------------------------------------------------------------------------------


class HistoryPointOut(_Model, FromRecord):
    # ``model_validate(point)`` of a gateway.store.HistoryPoint (no docstring: it would
    # become the schema's description)

    seq: int = Field(description="The vehicle's sample sequence number.")
    ts: int = Field(description="Sample time (vehicle clock), epoch ms.")
    ts_iso: str
    values: dict[str, SignalValue] = Field(
        description="The requested signals this sample carries (a sample may carry only some)."
    )

    @classmethod
    def derived(cls, record: Any, context: dict[str, Any]) -> dict[str, Any]:
        return {"values": dict(record.values)}


class History(_Model):
    vin: str
    signals: list[str]
    start: int = Field(description="Inclusive, epoch ms.")
    start_iso: str
    end: int = Field(description="Exclusive, epoch ms.")
    end_iso: str
    items: list[HistoryPointOut] = Field(description="Oldest first, by sample time.")
    next: str | None = Field(
        description="More points may follow: pass as `cursor` (same signals, start and "
        "end) for the next page; null on the last page. A page of a signal the vehicle "
        "rarely sends may hold fewer than `limit` points, even none, and a `next`: each "
        "request looks at a bounded number of the vehicle's samples."
    )


# --- catalog -------------------------------------------------------------------------------


class CatalogSignal(_Model):
    path: str = Field(examples=["Vehicle.Speed"])
    datatype: str = Field(examples=["float"])
    unit: str | None
    min: float | None
    max: float | None
    allowed: list[str] | None
    bounds: Literal["vss", "product", "none"] = Field(
        description="Where min/max come from: the VSS specification or a product "
        "plausibility bound."
    )
    description: str

    @classmethod
    def from_spec(cls, spec: SignalSpec) -> CatalogSignal:
        return cls.model_validate(spec.to_json())


class Catalog(_Model):
    contract_version: str = Field(examples=["v1"])
    signals: list[CatalogSignal]


# --- quarantine ----------------------------------------------------------------------------


class QuarantineOut(_Model, FromRecord):
    # ``model_validate(stored)`` of a gateway.store.StoredQuarantine

    id: int
    received_at: int = Field(description="When the gateway received it, epoch ms.")
    received_at_iso: str
    topic: str
    reason: str = Field(examples=["out_of_range"])
    detail: str
    vin: str | None
    seq: int | None
    signal: str | None = Field(description="The refused signal; null if the whole message was.")
    payload_text: str = Field(
        description="Raw payload as UTF-8 (invalid bytes replaced); only its first bytes "
        "when `payload_truncated`."
    )
    payload_base64: str = Field(description="The payload bytes kept, exact, base64.")
    payload_size: int = Field(description="Length of the whole payload as received, bytes.")
    payload_truncated: bool = Field(
        description="True when only the payload's first bytes were kept (the gateway keeps "
        "at most `--quarantine-payload-bytes` of each refused payload)."
    )
    payload_sha256: str = Field(description="SHA-256 of the whole payload as received, hex.")

    @classmethod
    def derived(cls, record: Any, context: dict[str, Any]) -> dict[str, Any]:
        payload = bytes(record.payload)
        return {
            "payload_text": payload.decode("utf-8", errors="replace"),
            "payload_base64": base64.b64encode(payload).decode("ascii"),
            "payload_truncated": record.payload_size > len(payload),
        }


class QuarantinePage(Page):
    items: list[QuarantineOut] = Field(description="Newest first.")


# --- operations ----------------------------------------------------------------------------


class ComponentHealth(_Model):
    """One part of the installation as seen from this API process."""

    status: Literal["ok", "degraded", "unavailable", "unknown"] = Field(
        description="`unknown`: nothing here reports on it (say, no gateway writes its "
        "heartbeat into this data directory)."
    )
    detail: str = Field(description="What was observed, for people.")
    required: bool = Field(
        description="Whether the installation is unavailable without it (false: an optional "
        "part such as the demo simulator, which at worst makes it `degraded`)."
    )


class Health(_Model):
    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="`unavailable` (HTTP 503) when a required component is; `degraded` "
        "(200) when only an optional one is, or some gateways are down but not all."
    )
    database: Literal["ok", "unavailable"] = Field(
        description="The telemetry database (kept for clients of earlier versions)."
    )
    components: dict[str, ComponentHealth] = Field(
        description="Per component: `telemetry_store`, `state_database`, `broker` (this API's "
        "command service connection), `ingest` (the gateways' heartbeats), and under "
        "`telematics up` `broker_process` and `part:<name>` for every supervised process."
    )
    error: ErrorInfo | None = Field(
        default=None, description="Why the telemetry database cannot be read, if it cannot."
    )
