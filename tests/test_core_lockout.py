"""The login lock-out rule without a database or a request: nothing before the threshold,
then a wait that doubles per further failure, capped."""

from __future__ import annotations

import pytest

from gateway.core.lockout import lockout_ms


@pytest.mark.parametrize(
    ("failures", "wait_ms"),
    [(0, None), (4, None), (5, 1000), (6, 2000), (7, 4000), (14, 512_000), (15, 900_000)],
)
def test_the_wait_doubles_from_the_threshold_up_to_the_cap(
    failures: int, wait_ms: int | None
) -> None:
    assert lockout_ms(failures, lockout_after=5, max_lockout_s=900) == wait_ms


def test_the_cap_holds_for_any_number_of_failures() -> None:
    assert lockout_ms(10_000, lockout_after=5, max_lockout_s=900) == 900_000
