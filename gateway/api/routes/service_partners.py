"""Service partners, dealer consent, diagnostics and maintenance (tag ``service``, issue 16
items 4 and 5; docs/decisions/0026-lifecycle-owner-services.md).

An administrator registers organization accounts as service partners (dealers,
workshops). A partner's fleet managers and viewers read a vehicle's diagnostics (fault
codes, maintenance state, the latest non-location signals; never a position) only while
the holder lets them: as the workshop of a running service (``POST
/v1/vehicles/{vin}/service``, until its end time) or as the dealer the holder consented to
(``PUT /v1/vehicles/{vin}/dealer``, until withdrawn or expired). Anyone else gets 404, as
for a vehicle that does not exist. Every partner read is in the holder's audit log.

Service plans (administrators) say per model (the start of the VIN) when a service is due;
the maintenance check raises ``maintenance.due`` events to the holder and the dealer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import AfterValidator, BaseModel, Field

from gateway.api.bounds import MAX_ID, ONLY_A_NUMBER
from gateway.api.deps import Auth, Caller, CallerAudit, Reader, vin_or_422
from gateway.api.errors import ApiError
from gateway.api.params import iso, iso_or_none
from gateway.api.routes.common import ACCOUNT_ERRORS, managed_vehicle
from gateway.api.security import AuthContext, require_admin, vehicle_not_found
from gateway.core.maintenance import ServicePlan, due_items, plan_for
from gateway.core.policy import Principal, Role
from gateway.fleet.maintenance import check_maintenance, readings
from gateway.statedb.lifecycle import LifecycleRepository
from gateway.statedb.service_partners import (
    MAX_PLANS,
    DealerConsent,
    ServicePartner,
    ServicePartnerRepository,
)
from gateway.text import check_plain_text

__all__ = ["DIAGNOSTIC_SIGNALS_EXCLUDED", "router"]

router = APIRouter(responses=ACCOUNT_ERRORS, tags=["service"])

#: what a partner never sees: where the car is or was
DIAGNOSTIC_SIGNALS_EXCLUDED = ("Vehicle.CurrentLocation.",)

#: partner users who read diagnostics (a partner's drivers do not)
_PARTNER_ROLES = frozenset({Role.FLEET_MANAGER, Role.FLEET_VIEWER})


async def _partners(request: Request) -> ServicePartnerRepository:
    return ServicePartnerRepository(request.app.state.state_db)


Partners = Annotated[ServicePartnerRepository, Depends(_partners)]


def _plain(value: str) -> str:
    return check_plain_text(value, "the text")


class PartnerIn(BaseModel):
    account_id: Annotated[int, ONLY_A_NUMBER] = Field(
        ge=1, le=MAX_ID, description="An organization account."
    )
    name: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_plain)]


class PartnerOut(BaseModel):
    account_id: int
    name: str
    created_at: int
    created_at_iso: str

    @classmethod
    def of(cls, p: ServicePartner) -> PartnerOut:
        return cls(
            account_id=p.account_id,
            name=p.name,
            created_at=p.created_at,
            created_at_iso=iso(p.created_at),
        )


class PartnerList(BaseModel):
    items: list[PartnerOut]
    next: str | None


class ConsentIn(BaseModel):
    dealer_account_id: Annotated[int, ONLY_A_NUMBER] = Field(
        ge=1, le=MAX_ID, description="A service partner."
    )
    duration_days: Annotated[int, Field(ge=1, le=3650), ONLY_A_NUMBER] | None = Field(
        default=None,
        description="How long the consent lasts (none: until you withdraw it or the vehicle "
        "changes hands).",
    )


class ConsentOut(BaseModel):
    id: int
    vin: str
    dealer_account_id: int
    dealer_name: str | None
    created_at: int
    created_at_iso: str
    expires_at: int | None
    expires_at_iso: str | None
    ended_at: int | None
    ended_at_iso: str | None

    @classmethod
    def of(cls, c: DealerConsent, name: str | None) -> ConsentOut:
        return cls(
            id=c.id,
            vin=c.vin,
            dealer_account_id=c.dealer_account_id,
            dealer_name=name,
            created_at=c.created_at,
            created_at_iso=iso(c.created_at),
            expires_at=c.expires_at,
            expires_at_iso=iso_or_none(c.expires_at),
            ended_at=c.ended_at,
            ended_at_iso=iso_or_none(c.ended_at),
        )


_CODE = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[A-Z0-9]+\*?$")]


class PlanIn(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_plain)]
    vin_prefix: str = Field(
        max_length=11,
        pattern=r"^[A-HJ-NPR-Z0-9]*$",
        description="The model: the start of its VINs (WMI and model positions); empty: "
        "every vehicle without a plan of its own.",
    )
    every_km: Annotated[int, Field(ge=100, le=1_000_000), ONLY_A_NUMBER] | None = None
    every_months: Annotated[int, Field(ge=1, le=240), ONLY_A_NUMBER] | None = None
    fault_codes: list[_CODE] = Field(
        default_factory=list,
        max_length=200,
        description="Trouble codes that need a workshop; `P03*` matches every code it starts.",
    )


class PlanOut(BaseModel):
    name: str
    vin_prefix: str
    every_km: int | None
    every_months: int | None
    fault_codes: list[str]

    @classmethod
    def of(cls, p: ServicePlan) -> PlanOut:
        return cls(
            name=p.name,
            vin_prefix=p.vin_prefix,
            every_km=p.every_km,
            every_months=p.every_months,
            fault_codes=list(p.fault_codes),
        )


class PlanList(BaseModel):
    items: list[PlanOut]
    next: str | None


class DueOut(BaseModel):
    key: str
    kind: str
    at: int | str
    message: str


class NoticeOut(BaseModel):
    key: str
    kind: str
    message: str
    raised_at: int
    raised_at_iso: str
    done_at: int | None
    done_at_iso: str | None


class MaintenanceOut(BaseModel):
    plan: PlanOut | None
    due: list[DueOut]
    notices: list[NoticeOut]


class DiagSignal(BaseModel):
    value: Any
    ts: int
    ts_iso: str


class DiagnosticsOut(BaseModel):
    vin: str
    via: Literal["holder", "workshop", "dealer"]
    until: int | None = Field(description="When a partner's access ends (null: when withdrawn).")
    until_iso: str | None
    signals: dict[str, DiagSignal] = Field(
        description="The latest value of each signal but the position's."
    )
    maintenance: MaintenanceOut


class PartnerVehicleOut(BaseModel):
    vin: str
    via: Literal["workshop", "dealer"]
    until: int | None
    until_iso: str | None


class PartnerVehicleList(BaseModel):
    items: list[PartnerVehicleOut]
    next: str | None


class CheckOut(BaseModel):
    vehicles: int
    notices: int


# --- partners --------------------------------------------------------------------------------


@router.post(
    "/v1/service-partners",
    response_model=PartnerOut,
    status_code=201,
    summary="Register an organization as a service partner (dealer, workshop)",
    responses={200: {"model": PartnerOut, "description": "Already registered by this name."}},
)
def register_partner(
    response: Response,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    partners: Partners,
    body: PartnerIn,
) -> PartnerOut:
    """Administrators. The organization's fleet managers and viewers then read the
    diagnostics of the vehicles whose holders let them (as workshop or dealer).
    Registering it again with the same name answers it (200); with another name, 409
    `partner_exists`: a partner's name is what owners choose by, so it is not changed by
    a repeated registration."""
    require_admin(principal, "Registering a service partner")
    registered = partners.register_partner(
        body.account_id, name=body.name, by=principal.user_id, now=context.now_ms()
    )
    if registered is None:
        raise ApiError(
            404,
            "account_not_found",
            f"No organization account {body.account_id}: service partners are organizations.",
        )
    partner, created = registered
    if not created:
        if partner.name != body.name:
            raise ApiError(
                409,
                "partner_exists",
                f"Account {body.account_id} is already the service partner {partner.name!r}; "
                "a registration does not rename it.",
            )
        response.status_code = 200
        return PartnerOut.of(partner)
    audit.record(
        "service_partner_register",
        account_id=body.account_id,
        target=f"account:{body.account_id}",
        detail={"name": body.name},
    )
    return PartnerOut.of(partner)


@router.get(
    "/v1/service-partners",
    response_model=PartnerList,
    summary="The installation's service partners",
)
def list_partners(principal: Caller, partners: Partners) -> PartnerList:
    """Everyone logged in: the partners an owner can choose as dealer or workshop (their
    account id and name, nothing else)."""
    return PartnerList(items=[PartnerOut.of(p) for p in partners.partners()], next=None)


@router.get(
    "/v1/service-partners/vehicles",
    response_model=PartnerVehicleList,
    summary="The vehicles a service partner may read now",
)
def partner_vehicles(principal: Caller, context: Auth, partners: Partners) -> PartnerVehicleList:
    """A partner's fleet managers and viewers: the vehicles in service with them and those
    whose holders consented to them as dealer, each with when that ends."""
    if principal.account_id is None or principal.role not in _PARTNER_ROLES:
        return PartnerVehicleList(items=[], next=None)
    found = partners.partner_vehicles(principal.account_id, context.now_ms())
    return PartnerVehicleList(
        items=[
            PartnerVehicleOut(vin=a.vin, via=a.via, until=a.until, until_iso=iso_or_none(a.until))
            for a in found
        ],
        next=None,
    )


# --- dealer consent --------------------------------------------------------------------------


@router.put(
    "/v1/vehicles/{vin}/dealer",
    response_model=ConsentOut,
    summary="Choose the vehicle's dealer: consent to its reading diagnostics",
)
def give_consent(
    vin: str,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    partners: Partners,
    body: ConsentIn,
) -> ConsentOut:
    """The holder's owner or fleet managers. The dealer (a service partner) reads the
    vehicle's diagnostics (never its position) and gets its maintenance notices by webhook,
    until the consent is withdrawn, expires, or the vehicle changes hands. Replaces an
    earlier consent."""
    vehicle = managed_vehicle(context, principal, vin_or_422(vin, ["path", "vin"]))
    partner = partners.partner(body.dealer_account_id)
    if partner is None:
        raise ApiError(
            404,
            "partner_not_found",
            f"No service partner {body.dealer_account_id}; GET /v1/service-partners lists them.",
        )
    now = context.now_ms()
    expires = None if body.duration_days is None else now + body.duration_days * 86_400_000
    consent = partners.give_consent(
        vin=vehicle.vin,
        tenure=vehicle.tenure,
        account_id=vehicle.account_id,
        dealer_account_id=partner.account_id,
        expires_at=expires,
        by=principal.user_id,
        now=now,
    )
    audit.record(
        "dealer_consent_give",
        account_id=vehicle.account_id,
        target=f"vehicle:{vehicle.vin}",
        detail={"dealer_account_id": partner.account_id, "expires_at": expires},
    )
    return ConsentOut.of(consent, partner.name)


@router.get(
    "/v1/vehicles/{vin}/dealer",
    response_model=ConsentOut,
    summary="The vehicle's dealer consent",
)
def read_consent(vin: str, principal: Caller, context: Auth, partners: Partners) -> ConsentOut:
    """Whoever reads the vehicle's data; 404 `no_dealer` when no consent is open."""
    vehicle = _holder_reader(context, principal, vin_or_422(vin, ["path", "vin"]))
    consent = partners.consent(vehicle.vin, vehicle.tenure, context.now_ms())
    if consent is None:
        raise _no_dealer(vehicle.vin)
    partner = partners.partner(consent.dealer_account_id)
    return ConsentOut.of(consent, None if partner is None else partner.name)


@router.delete(
    "/v1/vehicles/{vin}/dealer",
    response_model=ConsentOut,
    summary="Withdraw the dealer's consent",
)
def withdraw_consent(
    vin: str, principal: Caller, context: Auth, audit: CallerAudit, partners: Partners
) -> ConsentOut:
    """The holder's owner or fleet managers: the dealer's access ends at once."""
    vehicle = managed_vehicle(context, principal, vin_or_422(vin, ["path", "vin"]))
    consent = partners.withdraw_consent(
        vehicle.vin, vehicle.tenure, by=principal.user_id, now=context.now_ms()
    )
    if consent is None:
        raise _no_dealer(vehicle.vin)
    audit.record(
        "dealer_consent_withdraw",
        account_id=vehicle.account_id,
        target=f"vehicle:{vehicle.vin}",
        detail={"dealer_account_id": consent.dealer_account_id},
    )
    return ConsentOut.of(consent, None)


def _no_dealer(vin: str) -> ApiError:
    return ApiError(404, "no_dealer", f"Vehicle {vin} has no dealer consent open.")


def _holder_reader(context: AuthContext, principal: Principal, vin: str) -> Any:
    access, vehicle = context.lookup(principal, vin)
    if not access.read_data or vehicle is None or not vehicle.active:
        raise vehicle_not_found(vin)
    return vehicle


# --- diagnostics -----------------------------------------------------------------------------


@router.get(
    "/v1/vehicles/{vin}/diagnostics",
    response_model=DiagnosticsOut,
    summary="A vehicle's diagnostics: fault codes, maintenance, latest signals (no position)",
)
def diagnostics(
    request: Request,
    vin: str,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    reader: Reader,
    partners: Partners,
) -> DiagnosticsOut:
    """Whoever reads the vehicle's data, and a service partner's fleet managers and viewers
    while the holder lets them (workshop of a running service, or consenting dealer); 404
    for everyone else. Never a position. Every partner read is in the holder's audit log."""
    vin = vin_or_422(vin, ["path", "vin"])
    now = context.now_ms()
    access, vehicle = context.lookup(principal, vin)
    via: Literal["holder", "workshop", "dealer"]
    if access.read_data and vehicle is not None and vehicle.active:
        via, until, tenure, holder = "holder", None, vehicle.tenure, vehicle.account_id
    else:
        granted = None
        if principal.account_id is not None and principal.role in _PARTNER_ROLES:
            granted = partners.partner_access(vin, principal.account_id, now)
        if granted is None:
            raise vehicle_not_found(vin)
        via, until = granted.via, granted.until
        tenure, holder = granted.tenure, granted.holder_account_id
    state = reader.vehicle_state(vin, tenure=tenure)
    latest = {} if state is None else state.latest
    signals = {
        name: DiagSignal(value=value, ts=ts, ts_iso=iso(ts))
        for name, (value, ts) in latest.items()
        if not name.startswith(DIAGNOSTIC_SIGNALS_EXCLUDED)
    }
    maintenance = _maintenance(request, partners, vin, tenure, latest, now)
    if via != "holder":
        audit.record(
            "vehicle_diagnostics_read",
            account_id=holder,
            target=f"vehicle:{vin}",
            detail={"via": via, "partner_account_id": principal.account_id},
        )
    return DiagnosticsOut(
        vin=vin,
        via=via,
        until=until,
        until_iso=iso_or_none(until),
        signals=signals,
        maintenance=maintenance,
    )


def _maintenance(
    request: Request,
    partners: ServicePartnerRepository,
    vin: str,
    tenure: int,
    latest: Any,
    now: int,
) -> MaintenanceOut:
    plan = plan_for(vin, partners.plans())
    due: list[DueOut] = []
    if plan is not None:
        odometer_m, codes = readings(latest)
        registered = LifecycleRepository(request.app.state.state_db).view(vin).registered_at
        record = request.app.state.auth.accounts.get_vehicle(vin)
        started = None if record is None else record.provisioned_at
        items = due_items(
            plan,
            odometer_m=odometer_m,
            now_ms=now,
            since_ms=registered if registered is not None else started,
            fault_codes=codes,
        )
        done = {n.key for n in partners.notices(vin, tenure) if n.done_at is not None}
        due = [
            DueOut(key=i.key, kind=i.kind, at=i.at, message=i.message)
            for i in items
            if i.key not in done
        ]
    notices = [
        NoticeOut(
            key=n.key,
            kind=n.kind,
            message=n.message,
            raised_at=n.raised_at,
            raised_at_iso=iso(n.raised_at),
            done_at=n.done_at,
            done_at_iso=iso_or_none(n.done_at),
        )
        for n in partners.notices(vin, tenure)
    ]
    return MaintenanceOut(plan=None if plan is None else PlanOut.of(plan), due=due, notices=notices)


# --- service plans and the check -------------------------------------------------------------


@router.put(
    "/v1/service-plans",
    response_model=PlanOut,
    summary="Create or replace a model's service plan",
)
def put_plan(
    principal: Caller, context: Auth, audit: CallerAudit, partners: Partners, body: PlanIn
) -> PlanOut:
    """Administrators. A plan per model (`vin_prefix`); the longest prefix a VIN starts
    with applies. At least one of `every_km`, `every_months`, `fault_codes`."""
    require_admin(principal, "Setting a service plan")
    if body.every_km is None and body.every_months is None and not body.fault_codes:
        raise ApiError(
            422,
            "empty_plan",
            "A service plan needs every_km, every_months or fault_codes (or several).",
        )
    plan = ServicePlan(
        body.name, body.vin_prefix, body.every_km, body.every_months, tuple(body.fault_codes)
    )
    if not partners.put_plan(plan, by=principal.user_id, now=context.now_ms()):
        raise ApiError(
            409,
            "too_many_plans",
            f"The installation has {MAX_PLANS} service plans, the most it may have.",
        )
    audit.record(
        "service_plan_put",
        target=f"service_plan:{body.vin_prefix}",
        detail={"name": body.name, "every_km": body.every_km, "every_months": body.every_months},
    )
    return PlanOut.of(plan)


@router.get("/v1/service-plans", response_model=PlanList, summary="The service plans")
def list_plans(principal: Caller, partners: Partners) -> PlanList:
    """Administrators (owners see their vehicle's plan in its diagnostics)."""
    require_admin(principal, "Reading the service plans")
    return PlanList(items=[PlanOut.of(p) for p in partners.plans()], next=None)


@router.post(
    "/v1/maintenance/check",
    response_model=CheckOut,
    summary="Run the maintenance check now",
)
def run_check(
    principal: Caller, context: Auth, reader: Reader, partners: Partners, request: Request
) -> CheckOut:
    """Administrators. The API process runs it every 5 minutes by itself; this runs it at
    once (new service plans, the demo, tests). Each item is notified once per holding
    period."""
    require_admin(principal, "Running the maintenance check")
    result = check_maintenance(
        context.accounts,
        LifecycleRepository(request.app.state.state_db),
        partners,
        reader,
        now=context.now_ms(),
    )
    return CheckOut(vehicles=result.vehicles, notices=result.notices)
