"""Fault injection for simulated units: firmware that misbehaves on demand, so that every
defence of the gateway can be exercised through the real broker.

Pure: no I/O, no clocks. Randomness comes from the ``random.Random`` the caller passes, so
one seed gives one identical sequence of faults.

Each report a unit takes goes through :meth:`FaultInjector.next`, which decides what the
report becomes (a :class:`Planned`): the payloads to publish on the telemetry topic, how
many ``seq`` numbers they use, and whether the unit then drops its connection. The kinds,
and what the gateway must make of each (the gateway's contract is ``schemas.payloads``):

``malformed_json``
    the sample's JSON cut short -> quarantined ``malformed_json``
``wrong_type``
    one numeric signal sent as a string -> that signal quarantined ``wrong_type`` (the rest
    of the sample is stored)
``out_of_range``
    one bounded catalog signal just beyond its maximum -> ``out_of_range``
``unknown_signal``
    an extra ``Vehicle.Warp.Factor`` signal -> ``unknown_signal``
``wrong_vin``
    another valid VIN in the payload -> the message quarantined ``vin_mismatch``
``clock_skew``
    ``ts`` one hour ahead, beyond the gateway's 5-minute limit -> ``future_timestamp``
``duplicate_seq``
    the sample under the previous stored sample's ``seq`` -> not stored, counted in
    ``telematics_samples_duplicate_total`` (with no previous sample: the sample twice)
``burst_flood``
    the sample plus :attr:`FaultInjector.burst_size` (default 50) valid samples at once, each
    its own message with a fresh ``seq`` -> all stored
``abrupt_disconnect``
    the sample, then the TCP connection closed without DISCONNECT -> the broker publishes
    the Last Will (``offline``); the unit reconnects with its backoff and is ``online`` again
``silent``
    the sample, then nothing for ``silence_s`` (default 60 s) with the connection kept:
    hung firmware. The gateway still shows the vehicle online, its last-seen time frozen

:data:`EXPECTED_REASON` has the quarantine reasons as data. ``clock_skew`` assumes the
unit's clock is right to begin with (a sample stamped an hour in the past stays in the past).

Rates are probabilities per report (:class:`FaultRates`); at most one fault happens per
report. :meth:`FaultInjector.force` makes the next report a given fault regardless of the
rates (for tests and demos).

Imports: the standard library, ``schemas`` and ``device_sim`` only.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from typing import Final

from schemas.catalog import CATALOG, Datatype
from schemas.payloads import Reason, Sample, SignalValue, encode_sample
from schemas.vin import is_valid_vin

__all__ = [
    "CLOCK_SKEW_MS",
    "DEFAULT_BURST_SIZE",
    "DEFAULT_SILENCE_S",
    "EXPECTED_REASON",
    "UNKNOWN_SIGNAL",
    "FaultInjector",
    "FaultKind",
    "FaultRates",
    "Planned",
]


class FaultKind(enum.StrEnum):
    """The ways a simulated unit can misbehave (see the module docstring)."""

    MALFORMED_JSON = "malformed_json"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_SIGNAL = "unknown_signal"
    WRONG_VIN = "wrong_vin"
    DUPLICATE_SEQ = "duplicate_seq"
    CLOCK_SKEW = "clock_skew"
    BURST_FLOOD = "burst_flood"
    ABRUPT_DISCONNECT = "abrupt_disconnect"
    #: stays connected but stops reporting for a while (hung firmware): the gateway still
    #: shows it online, with a last-seen time that stops moving
    SILENT = "silent"


#: the quarantine reason each fault must produce at the gateway; the kinds not listed are
#: not quarantined (duplicate_seq is counted, burst_flood stored, abrupt_disconnect shows as
#: the Last Will)
EXPECTED_REASON: Final[Mapping[FaultKind, Reason]] = {
    FaultKind.MALFORMED_JSON: Reason.MALFORMED_JSON,
    FaultKind.WRONG_TYPE: Reason.WRONG_TYPE,
    FaultKind.OUT_OF_RANGE: Reason.OUT_OF_RANGE,
    FaultKind.UNKNOWN_SIGNAL: Reason.UNKNOWN_SIGNAL,
    FaultKind.WRONG_VIN: Reason.VIN_MISMATCH,
    FaultKind.CLOCK_SKEW: Reason.FUTURE_TIMESTAMP,
}

#: the signal ``unknown_signal`` adds (not in the catalog, and never will be)
UNKNOWN_SIGNAL: Final = "Vehicle.Warp.Factor"
#: how far ``clock_skew`` moves ``ts`` ahead: an hour, far beyond the gateway's 5 minutes
CLOCK_SKEW_MS: Final = 3_600_000
#: extra samples a ``burst_flood`` sends unless told otherwise
DEFAULT_BURST_SIZE: Final = 50
#: how long a ``silent`` unit reports nothing unless told otherwise
DEFAULT_SILENCE_S: Final = 60.0

_VIN_ALPHABET: Final = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
#: a signal to mangle when the sample has no suitable one (send-on-change reports are small)
_FALLBACK_SIGNAL: Final = "Vehicle.Speed"


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultRates:
    """Probability per report of each fault, 0..1; together at most 1. All 0 by default.

    ``FaultRates(clock_skew=0.05)``, or from a command line with :meth:`parse`.
    """

    malformed_json: float = 0.0
    wrong_type: float = 0.0
    out_of_range: float = 0.0
    unknown_signal: float = 0.0
    wrong_vin: float = 0.0
    duplicate_seq: float = 0.0
    clock_skew: float = 0.0
    burst_flood: float = 0.0
    abrupt_disconnect: float = 0.0
    silent: float = 0.0

    def __post_init__(self) -> None:
        for kind, rate in self.items():
            if isinstance(rate, bool) or not isinstance(rate, int | float):
                raise ValueError(f"the rate of {kind} must be a number, got {rate!r}")
            if not 0.0 <= rate <= 1.0:  # also refuses NaN
                raise ValueError(f"the rate of {kind} must be 0..1, got {rate}")
        if self.total > 1.0 + 1e-9:
            raise ValueError(f"the fault rates add up to {self.total:g}; at most 1 is possible")

    @classmethod
    def parse(cls, text: str) -> FaultRates:
        """``"malformed_json=0.01,clock_skew=0.05"`` (empty: no faults). Raises ValueError
        with a message fit for a command line."""
        rates: dict[str, float] = {}
        for part in text.split(","):
            item = part.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep:
                raise ValueError(f"{item!r}: expected kind=rate, e.g. malformed_json=0.01")
            try:
                kind = FaultKind(name)
            except ValueError:
                known = ", ".join(k.value for k in FaultKind)
                raise ValueError(f"unknown fault kind {name!r}; known: {known}") from None
            if kind.value in rates:
                raise ValueError(f"fault kind {name!r} given twice")
            try:
                rates[kind.value] = float(value.strip())
            except ValueError:
                raise ValueError(f"{name}: rate {value.strip()!r} is not a number") from None
        return cls(**rates)

    def rate(self, kind: FaultKind) -> float:
        rate: float = getattr(self, kind.value)
        return rate

    def items(self) -> Iterator[tuple[FaultKind, float]]:
        """(kind, rate) for every kind, in :class:`FaultKind` order."""
        for f in fields(self):
            yield FaultKind(f.name), getattr(self, f.name)

    @property
    def total(self) -> float:
        """The probability that a report carries some fault."""
        return sum(rate for _, rate in self.items())

    def __bool__(self) -> bool:
        return self.total > 0.0

    def __str__(self) -> str:
        """The :meth:`parse` form of the non-zero rates."""
        return ",".join(f"{kind}={rate:g}" for kind, rate in self.items() if rate > 0)


@dataclass(frozen=True, slots=True)
class Planned:
    """What one report becomes."""

    #: the fault injected, or None for a normal report
    kind: FaultKind | None
    #: publish these on the telemetry topic, in order (QoS 1)
    payloads: tuple[bytes, ...]
    #: seq numbers used, counting from the sample's own: the unit's next seq is
    #: ``sample.seq + seqs_used`` (0 when the sample went out under an old seq)
    seqs_used: int
    #: after publishing, drop the connection without DISCONNECT (the broker sends the Will)
    disconnect: bool = False
    #: then report nothing for this many seconds, connection kept (fault ``silent``)
    silence_s: float = 0.0


class FaultInjector:
    """Decides, report by report, which fault (if any) a unit injects.

    Owns ``rng`` from now on. One draw per report decides the kind (none when all rates are
    0 and nothing is forced, so a fault-free unit costs nothing); further draws pick the
    details (which signal, which VIN, where JSON is cut).
    """

    def __init__(
        self,
        rates: FaultRates,
        rng: random.Random,
        *,
        burst_size: int = DEFAULT_BURST_SIZE,
        silence_s: float = DEFAULT_SILENCE_S,
    ) -> None:
        if burst_size < 1:
            raise ValueError(f"burst_size must be >= 1, got {burst_size}")
        if silence_s <= 0:
            raise ValueError(f"silence_s must be > 0, got {silence_s}")
        self._silence_s = silence_s
        self._rates = rates
        self._rng = rng
        self._burst_size = burst_size
        self._forced: deque[FaultKind] = deque()
        #: the last seq the gateway will have stored (a duplicate of it is counted)
        self._last_stored_seq: int | None = None
        self._cumulative = self._build_cumulative(rates)

    @staticmethod
    def _build_cumulative(rates: FaultRates) -> tuple[tuple[float, FaultKind], ...]:
        out: list[tuple[float, FaultKind]] = []
        acc = 0.0
        for kind, rate in rates.items():
            if rate > 0:
                acc += rate
                out.append((acc, kind))
        return tuple(out)

    @property
    def rates(self) -> FaultRates:
        return self._rates

    @property
    def burst_size(self) -> int:
        return self._burst_size

    def force(self, kind: FaultKind) -> None:
        """Make the next report (after any forced before) this fault, whatever the rates."""
        self._forced.append(FaultKind(kind))

    @property
    def forced_pending(self) -> int:
        """Forced faults not yet injected."""
        return len(self._forced)

    def next(self, sample: Sample) -> Planned:
        """What ``sample`` (taken now, with the unit's next seq) becomes."""
        kind = self._choose()
        planned = self._plan(kind, sample)
        lost = kind in (FaultKind.MALFORMED_JSON, FaultKind.WRONG_VIN, FaultKind.CLOCK_SKEW)
        if not lost and planned.seqs_used > 0:
            self._last_stored_seq = sample.seq + planned.seqs_used - 1
        return planned

    def _choose(self) -> FaultKind | None:
        if self._forced:
            return self._forced.popleft()
        if not self._cumulative:
            return None
        draw = self._rng.random()
        for bound, kind in self._cumulative:
            if draw < bound:
                return kind
        return None

    def _plan(self, kind: FaultKind | None, sample: Sample) -> Planned:
        rng = self._rng
        signals: dict[str, SignalValue] = dict(sample.signals)
        if kind is None:
            return Planned(None, (encode_sample(sample),), 1)
        if kind is FaultKind.MALFORMED_JSON:
            whole = encode_sample(sample)
            cut = rng.randrange(1, len(whole))  # any proper prefix of an object is invalid
            return Planned(kind, (whole[:cut],), 1)
        if kind is FaultKind.WRONG_TYPE:
            numeric = sorted(
                path
                for path, value in signals.items()
                if path in CATALOG
                and CATALOG[path].datatype.is_number
                and isinstance(value, int | float)
                and not isinstance(value, bool)
            )
            path = rng.choice(numeric) if numeric else _FALLBACK_SIGNAL
            signals[path] = str(signals.get(path, 42.0))
        elif kind is FaultKind.OUT_OF_RANGE:
            bounded = sorted(
                path
                for path in signals
                if path in CATALOG
                and CATALOG[path].max is not None
                and CATALOG[path].datatype.is_number
            )
            path = rng.choice(bounded) if bounded else _FALLBACK_SIGNAL
            signals[path] = _beyond_max(path)
        elif kind is FaultKind.UNKNOWN_SIGNAL:
            signals[UNKNOWN_SIGNAL] = 9.0
        elif kind is FaultKind.WRONG_VIN:
            return Planned(
                kind, (encode_sample(replace(sample, vin=self._other_vin(sample.vin))),), 1
            )
        elif kind is FaultKind.CLOCK_SKEW:
            return Planned(kind, (encode_sample(replace(sample, ts=sample.ts + CLOCK_SKEW_MS)),), 1)
        elif kind is FaultKind.DUPLICATE_SEQ:
            if self._last_stored_seq is None:  # nothing sent before: the sample twice
                twice = encode_sample(sample)
                return Planned(kind, (twice, twice), 1)
            again = replace(sample, seq=self._last_stored_seq)
            return Planned(kind, (encode_sample(again),), 0)
        elif kind is FaultKind.BURST_FLOOD:
            burst = [encode_sample(sample)]
            for i in range(1, self._burst_size + 1):
                burst.append(encode_sample(replace(sample, seq=sample.seq + i, ts=sample.ts + i)))
            return Planned(kind, tuple(burst), self._burst_size + 1)
        elif kind is FaultKind.ABRUPT_DISCONNECT:
            return Planned(kind, (encode_sample(sample),), 1, disconnect=True)
        elif kind is FaultKind.SILENT:
            return Planned(kind, (encode_sample(sample),), 1, silence_s=self._silence_s)
        return Planned(kind, (encode_sample(replace(sample, signals=signals)),), 1)

    def _other_vin(self, vin: str) -> str:
        """A valid VIN that is not ``vin``: its last character replaced."""
        last = vin[-1:]
        choices = [ch for ch in _VIN_ALPHABET if ch != last]
        other = vin[:-1] + self._rng.choice(choices)
        if not is_valid_vin(other):  # the unit's own VIN is malformed: make one up
            other = "WSMZZZ" + "".join(self._rng.choice(_VIN_ALPHABET[-10:]) for _ in range(11))
        return other


def _beyond_max(path: str) -> SignalValue:
    spec = CATALOG[path]
    assert spec.max is not None
    if spec.datatype.is_integer:
        return int(spec.max) + 1
    if spec.datatype in (Datatype.FLOAT, Datatype.DOUBLE):
        return float(spec.max) + 1.0
    raise AssertionError(f"{path} is not numeric")
