"""The report's lines put together while a CSV is written (``report_cells``, decision 0024)
read exactly as the lines of ``report_from_sums`` (what JSON answers): the same rows in the
same order, the same totals to the bit, for keys that sort differently as numbers and as
text (driver 10 before driver 9)."""

from __future__ import annotations

from dataclasses import astuple

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.fleet.reports import DaySums, report_cells, report_from_sums

keys = st.one_of(st.integers(1, 120), st.sampled_from(["WVWZZZ1KZAW000001", "WBAXX11020L0003"]))
sums = st.tuples(
    st.integers(0, 40),  # trips
    st.integers(0, 10**8),  # driving ms
    st.floats(0, 10**6),  # distance
    st.one_of(st.none(), st.floats(0, 250)),  # top speed
    st.one_of(st.none(), st.floats(0, 100)),  # energy
    st.one_of(st.none(), st.floats(0, 100)),  # fuel
    st.integers(0, 50),  # alerts
    st.integers(0, 10**7),  # idle ms
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.tuples(keys, st.integers(20_000, 20_060)), sums, max_size=60))
def test_the_streamed_lines_are_the_lines_of_the_json_report(
    lines: dict[tuple[int | str, int], tuple[int, int, float, float | None, float | None,
                                             float | None, int, int]],
) -> None:  # fmt: skip
    days: list[DaySums] = [(k, d, *v) for (k, d), v in lines.items()]
    days.sort(key=lambda r: (str(r[0]), r[1]))  # what the database's ORDER BY gives
    rows, totals = report_from_sums(days)
    assert list(report_cells(days)) == [list(astuple(line)) for line in [*rows, *totals]]
