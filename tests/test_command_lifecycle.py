"""The command lifecycle, exhaustively: every (status, event) pair of the cross product is either
the transition written out below or an :class:`IllegalTransition`. The table here is written
independently of ``gateway.core.lifecycle.TRANSITIONS`` on purpose: a change to the rules
must be made in both places, deliberately.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.lifecycle import (
    TERMINAL_STATUSES,
    TRANSITIONS,
    CommandEvent,
    CommandStatus,
    IllegalTransition,
    allowed_events,
    event_for_result,
    is_repeat,
    is_terminal,
    late_event,
    transition,
)
from schemas.commands import ResultStatus

S = CommandStatus
E = CommandEvent

EXPECTED: dict[tuple[CommandStatus, CommandEvent], CommandStatus] = {
    (S.QUEUED, E.PUBLISHED): S.SENT,
    (S.QUEUED, E.CANCEL_REQUESTED): S.CANCELLED,
    (S.QUEUED, E.TTL_ELAPSED): S.EXPIRED,
    (S.SENT, E.UNIT_ACCEPTED): S.ACCEPTED,
    (S.SENT, E.UNIT_REJECTED): S.REJECTED,
    (S.SENT, E.TTL_ELAPSED): S.EXPIRED,
    (S.SENT, E.UNIT_SUCCEEDED): S.SUCCEEDED,
    (S.SENT, E.UNIT_FAILED): S.FAILED,
    (S.ACCEPTED, E.UNIT_SUCCEEDED): S.SUCCEEDED,
    (S.ACCEPTED, E.UNIT_FAILED): S.FAILED,
    (S.ACCEPTED, E.RESULT_TIMEOUT): S.TIMED_OUT,
    (S.QUEUED, E.VEHICLE_REVOKED): S.CANCELLED,
    (S.SENT, E.VEHICLE_REVOKED): S.CANCELLED,
    (S.ACCEPTED, E.VEHICLE_REVOKED): S.CANCELLED,
}
TERMINAL = {S.REJECTED, S.SUCCEEDED, S.FAILED, S.EXPIRED, S.TIMED_OUT, S.CANCELLED}

ALL_PAIRS = list(itertools.product(CommandStatus, CommandEvent))


def test_the_vocabulary() -> None:
    assert [s.value for s in CommandStatus] == [
        "queued",
        "sent",
        "accepted",
        "rejected",
        "succeeded",
        "failed",
        "expired",
        "timed_out",
        "cancelled",
    ]
    assert {e.value for e in CommandEvent} == {
        "published",
        "unit_accepted",
        "unit_rejected",
        "unit_succeeded",
        "unit_failed",
        "ttl_elapsed",
        "result_timeout",
        "cancel_requested",
        "vehicle_revoked",
    }
    assert len(ALL_PAIRS) == 81


@pytest.mark.parametrize(
    ("status", "event"), ALL_PAIRS, ids=[f"{s.value}-{e.value}" for s, e in ALL_PAIRS]
)
def test_every_pair(status: CommandStatus, event: CommandEvent) -> None:
    target = EXPECTED.get((status, event))
    if target is not None:
        assert transition(status, event) is target
        return
    with pytest.raises(IllegalTransition) as info:
        transition(status, event)
    error = info.value
    assert isinstance(error, ValueError)
    assert (error.status, error.event) == (status, event)
    assert status.value in str(error)
    assert event.value in str(error)


def test_the_published_table_is_the_tested_table() -> None:
    assert dict(TRANSITIONS) == EXPECTED


@pytest.mark.parametrize("status", list(CommandStatus), ids=str)
def test_terminal_statuses(status: CommandStatus) -> None:
    assert is_terminal(status) == (status in TERMINAL)
    assert (status in TERMINAL_STATUSES) == (status in TERMINAL)
    # terminal exactly when nothing leaves it
    assert (allowed_events(status) == frozenset()) == is_terminal(status)
    assert allowed_events(status) == {e for (s, e) in EXPECTED if s is status}


@pytest.mark.parametrize("status", sorted(TERMINAL), ids=str)
def test_a_terminal_refusal_says_so(status: CommandStatus) -> None:
    with pytest.raises(IllegalTransition, match=f"{status.value} is terminal"):
        transition(status, E.UNIT_SUCCEEDED)


def test_a_refusal_lists_what_is_allowed() -> None:
    with pytest.raises(IllegalTransition) as info:
        transition(S.SENT, E.CANCEL_REQUESTED)
    assert str(info.value) == (
        "illegal command transition: cancel_requested in sent (allowed: ttl_elapsed, "
        "unit_accepted, unit_failed, unit_rejected, unit_succeeded, vehicle_revoked)"
    )


@pytest.mark.parametrize(
    ("result", "event"),
    [
        (ResultStatus.ACCEPTED, E.UNIT_ACCEPTED),
        (ResultStatus.REJECTED, E.UNIT_REJECTED),
        (ResultStatus.SUCCEEDED, E.UNIT_SUCCEEDED),
        (ResultStatus.FAILED, E.UNIT_FAILED),
    ],
    ids=str,
)
def test_event_for_result(result: ResultStatus, event: CommandEvent) -> None:
    assert event_for_result(result) is event


def test_every_status_is_reachable_from_queued() -> None:
    seen = {S.QUEUED}
    frontier = [S.QUEUED]
    while frontier:
        status = frontier.pop()
        for event in allowed_events(status):
            target = transition(status, event)
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(CommandStatus)


# --- properties over random histories ----------------------------------------------------------


def run(start: CommandStatus, events: list[CommandEvent]) -> list[CommandStatus]:
    """Apply ``events`` from ``start``, skipping the illegal ones; return every status visited."""
    path = [start]
    for event in events:
        try:
            path.append(transition(path[-1], event))
        except IllegalTransition:
            continue
    return path


events_lists = st.lists(st.sampled_from(CommandEvent), max_size=40)


@given(events=events_lists)
def test_random_histories_from_queued(events: list[CommandEvent]) -> None:
    path = run(S.QUEUED, events)
    for i, status in enumerate(path):
        if is_terminal(status):
            # nothing ever leaves a terminal status
            assert i == len(path) - 1
    # every step is one the table allows
    for before, after in itertools.pairwise(path):
        assert after in {EXPECTED[before, e] for e in allowed_events(before)}
    # never succeeded (or any unit answer) without passing through sent
    if set(path) & {S.ACCEPTED, S.REJECTED, S.SUCCEEDED, S.FAILED, S.TIMED_OUT}:
        assert S.SENT in path
        assert path.index(S.SENT) == 1
    # cancelled by the requester only straight from queued, by a revocation from any open
    # status; timed out only after accepted
    if S.CANCELLED in path:
        assert path in (
            [S.QUEUED, S.CANCELLED],
            [S.QUEUED, S.SENT, S.CANCELLED],
            [S.QUEUED, S.SENT, S.ACCEPTED, S.CANCELLED],
        )
        if path != [S.QUEUED, S.CANCELLED]:
            assert E.VEHICLE_REVOKED in events
    if S.TIMED_OUT in path:
        assert path == [S.QUEUED, S.SENT, S.ACCEPTED, S.TIMED_OUT]
    # expiry never after the unit accepted
    if S.EXPIRED in path:
        assert S.ACCEPTED not in path
    # the path is strictly forward: no status twice
    assert len(set(path)) == len(path)


@given(start=st.sampled_from(CommandStatus), events=events_lists)
def test_random_histories_from_anywhere(start: CommandStatus, events: list[CommandEvent]) -> None:
    path = run(start, events)
    assert len(path) <= 4  # queued -> sent -> accepted -> a terminal status
    if is_terminal(start):
        assert path == [start]
    if S.SUCCEEDED in path and start is S.QUEUED:
        assert S.SENT in path


# --- answers after the end ---------------------------------------------------------------------


def test_late_events_name_the_answer() -> None:
    assert {late_event(s) for s in ResultStatus} == {
        "late_accepted",
        "late_rejected",
        "late_succeeded",
        "late_failed",
    }
    # they fit the history's event column (String(32)) and are no lifecycle event
    assert all(len(late_event(s)) <= 32 for s in ResultStatus)
    assert not {late_event(s) for s in ResultStatus} & {e.value for e in CommandEvent}


def test_a_repeat_is_an_answer_already_in_the_history() -> None:
    S = CommandStatus
    expired = [(S.QUEUED, None), (S.SENT, "published"), (S.EXPIRED, "ttl_elapsed")]
    assert not is_repeat(ResultStatus.ACCEPTED, expired)  # late: record it
    noted = [*expired, (S.EXPIRED, late_event(ResultStatus.ACCEPTED))]
    assert is_repeat(ResultStatus.ACCEPTED, noted)  # its redelivery: once is enough
    assert not is_repeat(ResultStatus.SUCCEEDED, noted)
    done = [(S.QUEUED, None), (S.SENT, "published"), (S.ACCEPTED, "unit_accepted")]
    done.append((S.SUCCEEDED, "unit_succeeded"))
    assert is_repeat(ResultStatus.ACCEPTED, done)  # a redelivered accepted after the end
    assert not is_repeat(ResultStatus.FAILED, done)  # a contradicting final answer: late
