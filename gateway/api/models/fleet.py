"""Request and response models of the fleet routes (issue 13: ``gateway.api.routes``
fleets, drivers, geofences, alerts, trips, reports and a vehicle's events).

Responses about a stored record are :class:`~gateway.api.models.records.FromRecord`
models, as for accounts. Geofences go in and out as GeoJSON ``Feature`` objects: a
``Polygon``, or a ``Point`` with ``properties.radius_m`` (``gateway.core.fleet.geo``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.api.bounds import ONLY_A_NUMBER
from gateway.api.models import Page
from gateway.api.models.accounts import Id, Name
from gateway.api.models.records import FromRecord
from gateway.api.params import Timestamp
from gateway.core.fleet.rules import AlertKind, Severity

__all__ = [
    "MAX_BULK_ACKNOWLEDGE",
    "ActiveWindowIn",
    "AlertAcknowledgeOut",
    "AlertAcknowledgeRequest",
    "AlertOut",
    "AlertPage",
    "AlertSelection",
    "AssignmentOut",
    "AssignmentPage",
    "AssignmentRequest",
    "DriverOut",
    "DriverPage",
    "DriverRequest",
    "DriverUpdate",
    "EventOut",
    "EventPage",
    "FaultReportOut",
    "FaultRow",
    "FleetOut",
    "FleetPage",
    "FleetRequest",
    "FleetUpdate",
    "FleetVehiclePage",
    "GeofenceIn",
    "GeofenceOut",
    "GeofencePage",
    "ReportOut",
    "ReportRow",
    "RuleSettingsIn",
    "RuleSettingsOut",
    "TripInProgressOut",
    "TripOut",
    "TripPage",
    "UtilizationOut",
    "UtilizationRow",
]

#: a speed limit, km/h: finite, 1 to 400 (a limit of 1e-300 km/h made every sample an
#: overspeed)
SpeedLimit = Annotated[
    float, Field(ge=1, le=400, allow_inf_nan=False, description="km/h"), ONLY_A_NUMBER
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- fleets ---------------------------------------------------------------------------------


class FleetRequest(_In):
    name: Name
    kind: Literal["fleet", "group"] = "fleet"
    account_id: Id | None = Field(default=None, description="Default: your account.")
    speed_limit_kmh: SpeedLimit | None = Field(
        default=None, description="The overspeed limit of the fleet's vehicles (the lowest of "
        "a vehicle's fleets applies, and a lower global or geofence limit)."
    )  # fmt: skip


class FleetUpdate(_In):
    name: Name | None = None
    speed_limit_kmh: SpeedLimit | None = None


class FleetOut(FromRecord):
    id: int
    account_id: int
    name: str
    kind: str
    speed_limit_kmh: float | None
    vehicle_count: int
    created_at: int
    created_at_iso: str


class FleetPage(Page):
    items: list[FleetOut] = Field(description="By id.")


class FleetVehicle(BaseModel):
    vin: str


class FleetVehiclePage(Page):
    items: list[FleetVehicle] = Field(description="By VIN.")


# --- drivers --------------------------------------------------------------------------------


class DriverRequest(_In):
    name: Name
    account_id: Id | None = Field(default=None, description="Default: your account.")
    user_id: Id | None = Field(default=None, description="The driver's login, if any.")


class DriverUpdate(_In):
    name: Name | None = None
    user_id: Id | None = None


class DriverOut(FromRecord):
    id: int
    account_id: int
    name: str
    user_id: int | None
    created_at: int
    created_at_iso: str


class DriverPage(Page):
    items: list[DriverOut] = Field(description="By id.")


class AssignmentRequest(_In):
    vin: str = Field(min_length=17, max_length=17)
    valid_from: Timestamp | None = Field(
        default=None,
        description="When the assignment starts (the response's start_at); default: now.",
    )
    valid_until: Timestamp | None = Field(
        default=None, description="Exclusive (the response's end_at); null: until further notice."
    )


class AssignmentOut(FromRecord):
    id: int
    driver_id: int
    vin: str
    start_at: int
    start_at_iso: str
    end_at: int | None
    end_at_iso: str | None


class AssignmentPage(Page):
    items: list[AssignmentOut] = Field(description="By id.")


# --- geofences ------------------------------------------------------------------------------


class ActiveWindowIn(_In):
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["06:00"])
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["20:00"])
    tz: str = Field(min_length=1, max_length=64, examples=["Europe/Berlin"])
    weekdays: list[Annotated[int, Field(ge=0, le=6), ONLY_A_NUMBER]] = Field(
        default=[0, 1, 2, 3, 4, 5, 6], max_length=7, description="0 is Monday."
    )


class GeofenceProperties(_In):
    name: Name
    radius_m: (
        Annotated[float, Field(ge=10, le=100_000, allow_inf_nan=False), ONLY_A_NUMBER] | None
    ) = Field(default=None, description="For a Point.")
    speed_limit_kmh: SpeedLimit | None = None
    active_window: ActiveWindowIn | None = Field(
        default=None, description="The fence's hours (a depot's opening hours): leaving it "
        "outside them raises a critical alert."
    )  # fmt: skip
    alert_enter: bool = True
    alert_exit: bool = True


class GeofenceIn(_In):
    """A GeoJSON Feature: a Polygon (at most 1,000 positions, 50 holes) or a Point with
    ``properties.radius_m`` (10 m to 100 km)."""

    type: Literal["Feature"]
    geometry: dict[str, Any]
    properties: GeofenceProperties


class GeofenceOut(BaseModel):
    """A GeoJSON Feature with the fence's id and settings in ``properties``."""

    type: Literal["Feature"] = "Feature"
    id: int
    geometry: dict[str, Any]
    properties: dict[str, Any]


class GeofencePage(Page):
    items: list[GeofenceOut] = Field(description="By id; GeoJSON Features.")


class RuleSettingsIn(_In):
    rules: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the rule thresholds (GET lists every name with its value "
        "in effect as effective_rules, e.g. speed_limit_kmh, idle_after_ms, low_soc_pct, "
        "offline_after_ms, enabled); what is not given keeps its default.",
    )
    trips: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the trip thresholds (moving_kmh, min_duration_ms, "
        "min_distance_m, parking_ms, max_gap_ms).",
    )


class RuleSettingsOut(BaseModel):
    account_id: int
    rules: dict[str, Any] = Field(description="What the account changed from the defaults.")
    trips: dict[str, Any] = Field(description="What the account changed from the defaults.")
    effective_rules: dict[str, Any] = Field(
        description="Every rule threshold with the value in effect (the default unless "
        "`rules` changes it): the names PUT takes."
    )
    effective_trips: dict[str, Any] = Field(
        description="Every trip threshold with the value in effect: the names PUT takes."
    )


# --- alerts, trips, events ------------------------------------------------------------------


class AlertOut(FromRecord):
    id: int
    vin: str
    kind: str
    key: str
    severity: str
    start_at: int
    start_at_iso: str
    end_at: int | None = Field(description="Null while the condition lasts.")
    end_at_iso: str | None
    detail: dict[str, Any]
    driver_id: int | None
    acknowledged_by: int | None
    acknowledged_at: int | None
    acknowledged_at_iso: str | None
    cleared_by: int | None
    cleared_at: int | None
    cleared_at_iso: str | None


class AlertPage(Page):
    items: list[AlertOut] = Field(description="Newest first.")


#: the most alerts one bulk acknowledgement takes (by ids) or acknowledges (by a filter)
MAX_BULK_ACKNOWLEDGE = 1000


class AlertSelection(_In):
    """The filters of `GET /v1/alerts`, as a body: the alerts they select."""

    vin: str | None = Field(default=None, min_length=17, max_length=17)
    fleet_id: Id | None = None
    account_id: Id | None = None
    kind: AlertKind | None = None
    severity: Severity | None = None
    state: Literal["open", "closed"] | None = None
    start: Timestamp | None = Field(default=None, description="Started at or after.")
    end: Timestamp | None = Field(default=None, description="Started before.")


class AlertAcknowledgeRequest(_In):
    """Either `ids` or `filter`, not both."""

    ids: list[Id] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_BULK_ACKNOWLEDGE,
        description=f"These alerts (1 to {MAX_BULK_ACKNOWLEDGE}).",
    )
    filter: AlertSelection | None = Field(
        default=None,
        description=f"The alerts not yet acknowledged that these filters select, newest first, "
        f"at most {MAX_BULK_ACKNOWLEDGE} (`more` says whether others remain: send it again).",
    )

    @model_validator(mode="after")
    def _one_of(self) -> AlertAcknowledgeRequest:
        if (self.ids is None) == (self.filter is None):
            raise ValueError(
                'give either ids (a list of alert ids) or filter (e.g. {"vin": ...}), '
                "not both and not neither"
            )
        return self


class AlertAcknowledgeOut(BaseModel):
    acknowledged: list[int] = Field(description="Acknowledged by you now.")
    already_acknowledged: list[int] = Field(
        description="Acknowledged before (the first acknowledgement stays)."
    )
    more: bool = Field(
        description="With a filter: more unacknowledged alerts match (send it again)."
    )


class TripOut(FromRecord):
    id: int
    vin: str
    start_at: int
    start_at_iso: str
    end_at: int
    end_at_iso: str
    start_place: tuple[float, float] | None = Field(description="[lon, lat]")
    end_place: tuple[float, float] | None = Field(description="[lon, lat]")
    distance_m: float
    duration_ms: int
    max_speed_kmh: float | None
    avg_speed_kmh: float
    energy_used_pct: float | None
    fuel_used_pct: float | None
    ended_by: str
    driver_id: int | None


class TripInProgressOut(BaseModel):
    """The trip a vehicle is on now, from the rules worker's trip state: what it has
    driven so far (up to its latest sample the worker has evaluated and written,
    `last_at`: the worker writes its states every few seconds, 5 by default, so this may
    be that much behind the samples it has evaluated). It is not
    a stored trip: it has no id yet, is not in `items`, and reports do not count it until
    it has ended (and it counts only if it is long enough to be a trip)."""

    vin: str
    in_progress: Literal[True] = True
    start_at: int
    start_at_iso: str
    last_at: int = Field(description="The latest sample of the trip the worker has seen.")
    last_at_iso: str
    start_place: tuple[float, float] | None = Field(description="[lon, lat]")
    last_place: tuple[float, float] | None = Field(description="[lon, lat]")
    distance_m: float = Field(description="So far.")
    duration_ms: int = Field(description="So far: from start_at to last_at.")
    max_speed_kmh: float | None
    avg_speed_kmh: float


class TripPage(Page):
    items: list[TripOut] = Field(description="Newest first; finished trips only.")
    in_progress: TripInProgressOut | None = Field(
        default=None,
        description="With `vin` (on the first page, when it started in the range): the "
        "trip the vehicle is on now; null when it is parked, or without `vin`.",
    )


class EventOut(BaseModel):
    seq: int
    ts: int
    ts_iso: str
    received_at: int
    received_at_iso: str
    type: str
    code: str | None
    detail: str | None


class EventPage(Page):
    items: list[EventOut] = Field(description="In the order they were stored.")


# --- reports --------------------------------------------------------------------------------


class ReportRow(BaseModel):
    """One vehicle's (or driver's) day, or its total over the range (``day`` null)."""

    key: str = Field(description="The VIN, or the driver's id.")
    name: str | None = Field(
        description="The vehicle's label, or the driver's name (null: none given)."
    )
    day: str | None = Field(description="UTC date, YYYY-MM-DD; null: the total.")
    trips: int
    distance_m: float
    driving_ms: int
    idle_ms: int
    energy_used_pct: float
    fuel_used_pct: float
    max_speed_kmh: float | None
    alerts: int


class UtilizationRow(BaseModel):
    """One vehicle's use of the range, or the whole scope's (``vin`` null)."""

    vin: str | None = Field(description="The VIN; null: every vehicle of the scope.")
    vehicles: int = Field(description="1, or the scope's vehicles (used or not).")
    vehicles_used: int = Field(description="Vehicles with a trip started in the range.")
    days_used: int = Field(description="UTC days with a trip started (scope: vehicle-days).")
    trips: int
    driving_ms: int
    driving_share: float = Field(
        description="Driving time over the range's length (scope: over length x vehicles)."
    )
    distance_m: float


class UtilizationOut(BaseModel):
    """Fleet utilization from the stored trips (a trip counts on the day it started)."""

    start: int
    start_iso: str
    end: int
    end_iso: str
    vehicles: list[UtilizationRow] = Field(description="By VIN, every vehicle of the scope.")
    total: UtilizationRow


class FaultRow(BaseModel):
    model: str = Field(
        description="The model line as the VIN encodes it: manufacturer (WMI) and vehicle "
        "descriptor, the VIN's first 8 characters."
    )
    code: str = Field(description="The diagnostic trouble code.")
    vehicles: int = Field(description="Vehicles of the model that reported it.")
    occurrences: int = Field(description="Fault-code alerts raised for it in the range.")


class FaultReportOut(BaseModel):
    """Fault codes by model, from the stored fault-code alerts."""

    start: int
    start_iso: str
    end: int
    end_iso: str
    rows: list[FaultRow] = Field(description="By model, then code.")


class ReportOut(BaseModel):
    """Daily rows and totals, from the stored trips and alerts."""

    start: int
    start_iso: str
    end: int
    end_iso: str
    rows: list[ReportRow] = Field(description="By key, then day.")
    totals: list[ReportRow] = Field(description="One per key.")
