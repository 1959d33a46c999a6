"""``GET /v1/catalog``: the signals of the device contract (tag ``contract``)."""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter

from gateway.api.deps import Caller
from gateway.api.models import Catalog, CatalogSignal
from schemas import CATALOG, CONTRACT_VERSION

__all__ = ["router"]

router = APIRouter(tags=["contract"])

_CATALOG: Final = Catalog(
    contract_version=CONTRACT_VERSION,
    signals=[CatalogSignal.from_spec(spec) for spec in CATALOG.values()],
)


@router.get("/v1/catalog", response_model=Catalog, summary="The signal catalog")
def get_catalog(principal: Caller) -> Catalog:
    """Every signal the gateway accepts: VSS path, datatype, unit, bounds and allowed
    values. Anything else a vehicle sends is quarantined as `unknown_signal`."""
    return _CATALOG
