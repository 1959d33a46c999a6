"""The audit trail as a request-scoped service: routes take ``audit: Audit`` (or
``audit: CallerAudit``, bound to the authenticated caller; both in ``gateway.api.deps``)
and call ``audit.record("grant_create", account_id=..., target=..., detail=...)``.

Who and from where are filled in once here (the caller, the client address, the time from
the app's clock), so the routes say only what happened. The entries themselves are
:class:`gateway.statedb.audit.AuditLog`'s; what is audited and why is decision 0007.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request

from gateway.api.security import AuthContext, client_address
from gateway.core.policy import Principal
from gateway.statedb.audit import AuditLog
from gateway.statedb.database import WriteScope

__all__ = ["AuditTrail"]


@dataclass(frozen=True, slots=True)
class AuditTrail:
    """Appends audit entries for one request; ``principal`` is who acts (None: anonymous,
    or named per entry)."""

    context: AuthContext
    request: Request
    principal: Principal | None = None

    def record(
        self,
        action: str,
        *,
        outcome: str = "ok",
        account_id: int | None = None,
        target: str | None = None,
        detail: Mapping[str, Any] | None = None,
        principal: Principal | None = None,
        content: bytes | str | None = None,
    ) -> None:
        """Append one entry: who (``principal``, else the trail's), what, about which
        account and object, with which outcome. A refused or failed attempt beyond the
        caller's bound (``AuthContext.refusal_audits``) is counted instead of written, and so
        is a successful one exactly like the caller's previous one, written within the last
        minute (``AuthContext.repeat_audits``). ``content`` is what the action set when the
        entry does not say it (a geofence's new shape, a new password): not written, only
        compared (as a digest), so a change to something else is never counted as a repeat
        (security review 9, decision 0061)."""
        repeats = self.context.repeat_audits
        if outcome == "ok" and repeats is not None:
            who = principal or self.principal
            actor = who.actor if who is not None else "anonymous"
            if isinstance(content, str):
                content = content.encode()
            alike = (
                actor,
                action,
                account_id,
                target,
                self.remote_addr,
                orjson.dumps(detail, option=orjson.OPT_SORT_KEYS, default=str),
                None if content is None else hashlib.sha256(content).digest(),
            )
            before = repeats.admit((actor, self.remote_addr), alike)
            if before is None:
                return
            if before:
                detail = {**(detail or {}), "repeats_before": before}
        throttle = self.context.refusal_audits
        if outcome != "ok" and throttle is not None:
            who = principal or self.principal
            caller = f"user:{who.user_id}" if who is not None else f"address:{self.remote_addr}"
            left_out = throttle.admit(caller)
            if left_out is None:
                return
            if left_out:
                detail = {**(detail or {}), "left_out_before": left_out}
        self.context.audit.append(
            **self._entry(action, outcome, account_id, target, detail, principal)
        )

    def record_in(
        self,
        session: WriteScope,
        action: str,
        *,
        account_id: int | None = None,
        target: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """:meth:`record` inside the caller's write transaction: the entry commits with the
        change it records, never one without the other (a created command)."""
        AuditLog.append_in(session, **self._entry(action, "ok", account_id, target, detail, None))

    def _entry(
        self,
        action: str,
        outcome: str,
        account_id: int | None,
        target: str | None,
        detail: Mapping[str, Any] | None,
        principal: Principal | None,
    ) -> dict[str, Any]:
        who = principal or self.principal
        return {
            "at": self.context.now_ms(),
            "actor": who.actor if who is not None else "anonymous",
            "actor_user_id": who.user_id if who is not None else None,
            "action": action,
            "outcome": outcome,
            "account_id": account_id,
            "target": target,
            "remote_addr": self.remote_addr,
            "detail": detail,
        }

    @property
    def remote_addr(self) -> str | None:
        return client_address(self.request)
