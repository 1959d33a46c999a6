"""The audit trail as a request-scoped service: routes take ``audit: Audit`` (or
``audit: CallerAudit``, bound to the authenticated caller; both in ``gateway.api.deps``)
and call ``audit.record("grant_create", account_id=..., target=..., detail=...)``.

Who and from where are filled in once here (the caller, the client address, the time from
the app's clock), so the routes say only what happened. The entries themselves are
:class:`gateway.statedb.audit.AuditLog`'s; what is audited and why is decision 0007.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from fastapi import Request

from gateway.api.security import AuthContext, client_address
from gateway.core.policy import Principal

__all__ = ["AuditTrail"]


@dataclass(frozen=True, slots=True)
class AuditTrail:
    """Appends audit entries for one request; ``principal`` is who acts (None: anonymous,
    or named per entry)."""

    context: AuthContext
    request: Request
    principal: Principal | None = None

    def by(self, principal: Principal) -> AuditTrail:
        """The same trail, for entries made on ``principal``'s behalf."""
        return replace(self, principal=principal)

    def record(
        self,
        action: str,
        *,
        outcome: str = "ok",
        account_id: int | None = None,
        target: str | None = None,
        detail: Mapping[str, Any] | None = None,
        principal: Principal | None = None,
    ) -> None:
        """Append one entry: who (``principal``, else the trail's), what, about which
        account and object, with which outcome."""
        self.context.record(
            self.request,
            action,
            principal=principal or self.principal,
            outcome=outcome,
            account_id=account_id,
            target=target,
            detail=detail,
        )

    @property
    def remote_addr(self) -> str | None:
        return client_address(self.request)
