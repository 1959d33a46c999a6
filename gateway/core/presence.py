"""Whether a vehicle is online as the API shows it: the last status, unless it went silent.

Pure; the store keeps ``online`` and ``last_seen`` per vehicle, the API applies this rule at
read time with its own clock. See docs/device-contract.md (units publish at least every
5 minutes) and docs/decisions/0011-device-contract-v1-clarified.md.
"""

from __future__ import annotations

__all__ = ["OFFLINE_BY_STATUS", "OFFLINE_SILENT", "presence"]

#: ``offline_reason`` values: the last status message (the unit's, or its Last Will) said
#: offline; or it says online but nothing has come from the vehicle for too long
OFFLINE_BY_STATUS = "status"
OFFLINE_SILENT = "silent"


def presence(
    online: bool | None, last_seen_ms: int, *, now_ms: int, silent_after_ms: int
) -> tuple[bool | None, str | None]:
    """(online, offline_reason) as the API shows it. Pure.

    The last status message decides, except that a vehicle whose status says online but
    from which no message at all (telemetry, event, status) has come for more than
    ``silent_after_ms`` is shown offline with reason ``silent``: a unit that disconnects
    normally without publishing ``offline`` (Mosquitto sends no Last Will then) or hangs
    would otherwise stay online forever. The contract makes every unit publish something at
    least every 5 minutes (``docs/device-contract.md``), so silence means it is gone.
    ``None``: it never sent a status.
    """
    if online is None:
        return None, None
    if not online:
        return False, OFFLINE_BY_STATUS
    if now_ms - last_seen_ms > silent_after_ms:
        return False, OFFLINE_SILENT
    return True, None
