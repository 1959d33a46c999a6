"""Response models: the API's JSON shapes, and through them its OpenAPI schema.

They are separate from the store's dataclasses (``gateway.store.base``) on purpose: the store
may change its internals, the HTTP contract may not. Conventions every model follows:

* a time is epoch milliseconds (``ts``, ``last_seen``) with an ISO 8601 UTC twin whose name
  adds ``_iso`` (``ts_iso``, ``last_seen_iso``); the integer is the exact value to compute
  with and to pass back in queries, the string is for people;
* a list is wrapped in an object next to its paging information, so fields can be added
  without breaking clients;
* absent values are ``null``, never missing keys.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from gateway.api.params import iso, iso_or_none
from gateway.store import HistoryPoint, StoredQuarantine, VehicleSummary
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
    "Paging",
    "QuarantineOut",
    "QuarantinePage",
    "SignalState",
    "Vehicle",
    "VehicleDetail",
    "VehicleList",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- errors --------------------------------------------------------------------------------


class ErrorDetail(_Model):
    """One specific problem, e.g. one invalid query parameter."""

    loc: list[str | int] = Field(
        default_factory=list,
        description='Where the problem is, e.g. ["query", "limit"]; empty if not one field.',
    )
    msg: str = Field(description="What is wrong with it.")
    type: str | None = Field(default=None, description="Machine-readable kind of problem.")
    input: JsonValue = Field(default=None, description="The offending value, if there was one.")


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


# --- vehicles ------------------------------------------------------------------------------


class Vehicle(_Model):
    vin: str = Field(examples=["WVWZZZ1JZXW000001"])
    online: bool | None = Field(
        description="From the vehicle's last status message (the broker sends its last will "
        "when the connection drops); null if it never sent one."
    )
    first_seen: int = Field(description="When the gateway first heard from it, epoch ms.")
    first_seen_iso: str
    last_seen: int = Field(description="When the gateway last heard from it, epoch ms.")
    last_seen_iso: str
    status_changed_at: int | None = Field(
        description="Time of the status message that set `online`, epoch ms."
    )
    status_changed_at_iso: str | None

    @classmethod
    def from_summary(cls, s: VehicleSummary) -> Vehicle:
        return cls.model_validate(_summary_fields(s))


def _summary_fields(s: VehicleSummary) -> dict[str, object]:
    return {
        "vin": s.vin,
        "online": s.online,
        "first_seen": s.first_seen,
        "first_seen_iso": iso(s.first_seen),
        "last_seen": s.last_seen,
        "last_seen_iso": iso(s.last_seen),
        "status_changed_at": s.status_changed_at,
        "status_changed_at_iso": iso_or_none(s.status_changed_at),
    }


class Paging(_Model):
    limit: int
    offset: int
    total: int = Field(description="Vehicles known to the gateway.")
    next_offset: int | None = Field(
        description="`offset` for the next page; null on the last page."
    )


class VehicleList(_Model):
    vehicles: list[Vehicle] = Field(description="Ordered by VIN.")
    paging: Paging


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
        cls, s: VehicleSummary, latest: Mapping[str, tuple[SignalValue, int]]
    ) -> VehicleDetail:
        state: dict[str, SignalState] = {}
        for path, (value, ts) in latest.items():
            spec = CATALOG.get(path)
            state[path] = SignalState(
                value=value, ts=ts, ts_iso=iso(ts), unit=spec.unit if spec else None
            )
        return cls.model_validate({**_summary_fields(s), "state": state})


# --- history -------------------------------------------------------------------------------


class HistoryPointOut(_Model):
    seq: int = Field(description="The vehicle's sample sequence number.")
    ts: int = Field(description="Sample time (vehicle clock), epoch ms.")
    ts_iso: str
    values: dict[str, SignalValue] = Field(
        description="The requested signals this sample carries (a sample may carry only some)."
    )

    @classmethod
    def from_point(cls, p: HistoryPoint) -> HistoryPointOut:
        return cls(seq=p.seq, ts=p.ts, ts_iso=iso(p.ts), values=dict(p.values))


class History(_Model):
    vin: str
    signals: list[str]
    start: int = Field(description="Inclusive, epoch ms.")
    start_iso: str
    end: int = Field(description="Exclusive, epoch ms.")
    end_iso: str
    limit: int
    truncated: bool = Field(
        description="True if more samples matched than `limit`: narrow the window (start the "
        "next request at the last point's ts) or raise `limit`."
    )
    points: list[HistoryPointOut] = Field(description="Oldest first, by sample time.")


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


class QuarantineOut(_Model):
    id: int
    received_at: int = Field(description="When the gateway received it, epoch ms.")
    received_at_iso: str
    topic: str
    reason: str = Field(examples=["out_of_range"])
    detail: str
    vin: str | None
    seq: int | None
    signal: str | None = Field(description="The refused signal; null if the whole message was.")
    payload_text: str = Field(description="Raw payload as UTF-8 (invalid bytes replaced).")
    payload_base64: str = Field(description="Raw payload, exact bytes, base64.")
    payload_size: int = Field(description="Raw payload length in bytes.")

    @classmethod
    def from_stored(cls, q: StoredQuarantine) -> QuarantineOut:
        payload = bytes(q.payload)
        return cls(
            id=q.id,
            received_at=q.received_at,
            received_at_iso=iso(q.received_at),
            topic=q.topic,
            reason=q.reason,
            detail=q.detail,
            vin=q.vin,
            seq=q.seq,
            signal=q.signal,
            payload_text=payload.decode("utf-8", errors="replace"),
            payload_base64=base64.b64encode(payload).decode("ascii"),
            payload_size=len(payload),
        )


class QuarantinePage(_Model):
    entries: list[QuarantineOut] = Field(description="Newest first.")
    limit: int
    next_before_id: int | None = Field(
        description="Pass as `before_id` for the next (older) page; null on the last page."
    )


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
