"""Gaps in a vehicle's ``seq``: which samples (or events) never arrived. Pure.

A unit numbers its samples 1, 2, 3, ... without gaps (``docs/device-contract.md``), so a
number that has not arrived while later ones have is a sample lost on the way, whatever the
cause: a unit that dropped its buffer, a broker that dropped a queue, a subscriber that took
messages it could not read. Counting them makes silent loss visible.

Per vehicle and stream the store keeps the range of numbers seen, ``first..last``, the
number of them still missing, and the missing ones as intervals (gaps). Store-and-forward
makes numbers arrive late and out of order, so a gap is provisional: a late batch that
brings the missing numbers fills it again. Numbers below ``first`` extend the range
downwards (a buffered upload that arrives after the first live sample), leaving a gap only
for what is still absent between them.

:func:`advance` takes the current range, the sorted distinct numbers of one batch and the
known gaps that overlap the batch's numbers inside the range, and returns the new range and
the gap rows to delete and insert. A number already seen (a redelivery) changes nothing.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

__all__ = ["Advance", "Gap", "SeqRange", "advance", "inside"]


@dataclass(frozen=True, slots=True)
class SeqRange:
    """Numbers ``first..last`` seen so far, ``missing`` of them not received."""

    first: int
    last: int
    missing: int


@dataclass(frozen=True, slots=True, order=True)
class Gap:
    """The missing numbers ``start..end`` (both included)."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True, slots=True)
class Advance:
    state: SeqRange
    #: gap rows to delete (filled or split) and to insert (new, or what is left of a split)
    removed: tuple[Gap, ...] = ()
    added: tuple[Gap, ...] = ()
    #: numbers newly found missing by this batch (for the cumulative counter)
    detected: int = 0
    #: numbers of earlier gaps this batch filled
    filled: int = field(default=0)


def inside(state: SeqRange | None, seqs: Sequence[int]) -> tuple[int, int] | None:
    """The span of ``seqs`` (sorted) within ``state``'s range, whose gaps :func:`advance`
    needs; None when no number falls inside (the common case: every number is new)."""
    if state is None or not seqs or seqs[0] > state.last or seqs[-1] < state.first:
        return None
    low = next(s for s in seqs if s >= state.first)
    high = next(s for s in reversed(seqs) if s <= state.last)
    return (low, high) if low <= high else None


def _gaps_between(numbers: Sequence[int]) -> list[Gap]:
    return [Gap(a + 1, b - 1) for a, b in pairwise(numbers) if b > a + 1]


def advance(state: SeqRange | None, seqs: Sequence[int], known: Sequence[Gap] = ()) -> Advance:
    """The range after receiving ``seqs`` (sorted, distinct). ``known``: the stored gaps
    that hold one of ``seqs`` (those overlapping :func:`inside` will do; a gap that holds
    none of them is untouched and need not be passed, which bounds the work by the
    batch's numbers, whatever gaps its vehicle has)."""
    if not seqs:
        raise ValueError("advance() needs at least one number")
    if state is None:
        gaps = _gaps_between(seqs)
        missing = sum(g.size for g in gaps)
        return Advance(SeqRange(seqs[0], seqs[-1], missing), (), tuple(gaps), missing)
    below = [s for s in seqs if s < state.first]
    above = [s for s in seqs if s > state.last]
    within = [s for s in seqs if state.first <= s <= state.last]
    new_gaps: list[Gap] = []
    if below:
        new_gaps += _gaps_between([*below, state.first])
    if above:
        new_gaps += _gaps_between([state.last, *above])
    detected = sum(g.size for g in new_gaps)
    removed, kept, filled = _fill(known, within)
    return Advance(
        SeqRange(
            below[0] if below else state.first,
            above[-1] if above else state.last,
            state.missing + detected - filled,
        ),
        tuple(removed),
        tuple(sorted([*kept, *new_gaps])),
        detected,
        filled,
    )


def _fill(known: Sequence[Gap], numbers: Sequence[int]) -> tuple[list[Gap], list[Gap], int]:
    """Take ``numbers`` out of the ``known`` gaps: (gaps to delete, their remains, numbers
    filled). A number in no gap was already received (a duplicate)."""
    removed: list[Gap] = []
    remains: list[Gap] = []
    filled = 0
    ordered = sorted(numbers)
    for gap in sorted(known):
        hits = ordered[bisect_left(ordered, gap.start) : bisect_right(ordered, gap.end)]
        if not hits:
            continue
        removed.append(gap)
        filled += len(hits)
        remains += _gaps_between([gap.start - 1, *hits, gap.end + 1])
    return removed, remains, filled
