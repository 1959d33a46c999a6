"""The signal catalog (``schemas.CATALOG``) against the COVESA VSS catalog export.

Every entry must be a real, current VSS signal with the datatype, unit, bounds and allowed
values VSS gives it; product plausibility bounds (``bounds="product"``) must lie inside
whatever VSS allows. The export is vendored in the repository,
``third_party/vss/vss-catalog.csv`` (its README names the VSS commit; MPL-2.0), so a clone
anywhere passes on its own; a missing export fails the tests instead of skipping them, so a
broken checkout cannot pass silently.
"""

from __future__ import annotations

import ast
import csv
import functools
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from schemas import CATALOG, SignalSpec
from schemas.catalog import _ENTRIES

REPO = Path(__file__).resolve().parents[1]
VSS_CSV = REPO / "third_party/vss/vss-catalog.csv"
VSS_COLUMNS = [
    "Signal",
    "Type",
    "DataType",
    "Deprecated",
    "Unit",
    "Min",
    "Max",
    "Desc",
    "Comment",
    "Allowed",
    "Default",
]
SIGNAL_TYPES = frozenset({"sensor", "actuator", "attribute"})


@dataclass(frozen=True, slots=True)
class VssNode:
    """One row of the VSS export, with the columns the catalog is checked against parsed."""

    path: str
    type: str
    datatype: str
    deprecated: str
    unit: str
    min: float | None
    max: float | None
    allowed: tuple[str, ...] | None


def _number(text: str) -> float | None:
    return float(text) if text.strip() else None


def _allowed(text: str) -> tuple[str, ...] | None:
    if not text.strip():
        return None
    values = ast.literal_eval(text)  # the export writes a Python list: "['A', 'B']"
    assert isinstance(values, list), f"unexpected Allowed column {text!r}"
    return tuple(str(v) for v in values)


@functools.cache
def _read_vss(path: Path) -> dict[str, VssNode]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == VSS_COLUMNS, f"unexpected columns in {path}"
        rows = list(reader)
    duplicates = [p for p, n in Counter(r["Signal"] for r in rows).items() if n > 1]
    assert not duplicates, f"{path} lists these paths more than once: {duplicates}"
    return {
        r["Signal"]: VssNode(
            path=r["Signal"],
            type=r["Type"],
            datatype=r["DataType"],
            deprecated=r["Deprecated"],
            unit=r["Unit"],
            min=_number(r["Min"]),
            max=_number(r["Max"]),
            allowed=_allowed(r["Allowed"]),
        )
        for r in rows
    }


def vss() -> dict[str, VssNode]:
    """The VSS export, read once; fails (never skips) the calling test if it is missing."""
    if not VSS_CSV.is_file():
        pytest.fail(
            f"VSS catalog export not found: looked for {VSS_CSV} "
            "(third_party/vss/vss-catalog.csv in the repository)",
            pytrace=False,
        )
    return _read_vss(VSS_CSV)


def node(spec: SignalSpec) -> VssNode:
    found = vss().get(spec.path)
    assert found is not None, f"{spec.path} is not a VSS path (not in {VSS_CSV.name})"
    return found


SPECS = list(CATALOG.values())
by_path = pytest.mark.parametrize("spec", SPECS, ids=[s.path for s in SPECS])


def test_vss_export_is_present() -> None:
    assert len(vss()) > 1000, f"{VSS_CSV} looks truncated"


def test_missing_export_fails_and_says_where(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "third_party/vss/vss-catalog.csv"
    monkeypatch.setattr(sys.modules[__name__], "VSS_CSV", missing)
    with pytest.raises(pytest.fail.Exception, match="looked for") as info:
        vss()
    assert str(missing) in str(info.value)


@by_path
def test_entry_is_a_vss_signal(spec: SignalSpec) -> None:
    vss_node = node(spec)
    assert vss_node.type in SIGNAL_TYPES, (
        f"{spec.path} is a VSS {vss_node.type!r}, not a signal (sensor/actuator/attribute)"
    )


@by_path
def test_entry_is_not_deprecated(spec: SignalSpec) -> None:
    assert node(spec).deprecated == "", f"{spec.path} is deprecated in VSS: {node(spec).deprecated}"


@by_path
def test_datatype_matches_vss(spec: SignalSpec) -> None:
    assert spec.datatype.value == node(spec).datatype


@by_path
def test_unit_matches_vss(spec: SignalSpec) -> None:
    assert (spec.unit or "") == node(spec).unit


@by_path
def test_bounds_match_vss(spec: SignalSpec) -> None:
    vss_node = node(spec)
    vss_has_bounds = vss_node.min is not None or vss_node.max is not None
    if spec.bounds == "vss":
        # labelled "from VSS": exactly what VSS gives, no more and no less
        assert vss_has_bounds, f"{spec.path}: bounds='vss' but VSS gives no Min/Max"
        assert (spec.min, spec.max) == (vss_node.min, vss_node.max)
    elif spec.bounds == "product":
        assert spec.min is not None or spec.max is not None, (
            f"{spec.path}: bounds='product' without a min or max"
        )
        if vss_node.min is not None:
            assert spec.min is not None, f"{spec.path}: drops the VSS minimum {vss_node.min}"
            assert spec.min >= vss_node.min
        if vss_node.max is not None:
            assert spec.max is not None, f"{spec.path}: drops the VSS maximum {vss_node.max}"
            assert spec.max <= vss_node.max
        if spec.min is not None and spec.max is not None:
            assert spec.min < spec.max
    else:
        assert (spec.min, spec.max) == (None, None), f"{spec.path}: bounds='none' with bounds"
        # "where VSS gives a minimum or maximum we use it"
        assert not vss_has_bounds, (
            f"{spec.path}: VSS gives Min={vss_node.min} Max={vss_node.max}; the entry has none"
        )


@by_path
def test_allowed_values_match_vss(spec: SignalSpec) -> None:
    assert spec.allowed == node(spec).allowed


@by_path
def test_description_is_not_empty(spec: SignalSpec) -> None:
    assert spec.description.strip(), f"{spec.path} has an empty description"


def test_no_duplicate_paths() -> None:
    # CATALOG is a dict built from the entry tuple: a duplicate would silently overwrite
    counts = Counter(e.path for e in _ENTRIES)
    assert [p for p, n in counts.items() if n > 1] == []
    assert len(CATALOG) == len(_ENTRIES)
    assert all(path == spec.path for path, spec in CATALOG.items())


# --- the repository stands alone ---------------------------------------------------------------


def _repository_files() -> list[Path]:
    """Every file of the checkout that git knows or would add (tracked and untracked, not
    ignored): what a fresh clone of this commit holds."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [REPO / name for name in listed.split("\0") if name and (REPO / name).is_file()]


def test_vss_export_comes_with_its_license_and_source() -> None:
    folder = VSS_CSV.parent
    assert "Mozilla Public License Version 2.0" in (folder / "LICENSE").read_text()
    readme = (folder / "README.md").read_text()
    assert "ce67f927" in readme, "the README must name the VSS commit the export came from"
    assert "scripts/refresh-vss.sh" in readme
    assert (REPO / "scripts/refresh-vss.sh").stat().st_mode & 0o111, "refresh script not executable"


def test_no_code_reads_outside_the_repository() -> None:
    # the old location of the VSS export, spelled so that this file does not match itself
    outside = ("../" + "shared", "/work/" + "shared", "shared/" + "reference")
    offenders = [
        f"{path.relative_to(REPO)}: {needle}"
        for path in _repository_files()
        if path.suffix in {".py", ".sh", ".toml", ".cfg", ".ini", ".json", ".yml", ".yaml"}
        for needle in outside
        if needle in path.read_text(errors="replace")
    ]
    assert offenders == []


def test_catalog_tests_pass_in_a_copy_without_anything_beside_it(tmp_path: Path) -> None:
    """A clone in any directory: copy the checkout's files into a fresh directory (nothing
    next to it) and run this module's catalog checks there, with the copy's own modules."""
    copy = tmp_path / "clone"
    for path in _repository_files():
        target = copy / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_catalog.py",
            "-k",
            "not copy_without_anything and not reads_outside",
        ],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
    assert "failed" not in run.stdout
    # the copy's catalog test read the copy's export, not this checkout's
    imported = subprocess.run(
        [sys.executable, "-c", "import tests.test_catalog as t; print(t.VSS_CSV)"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert imported == str(copy / "third_party/vss/vss-catalog.csv")
