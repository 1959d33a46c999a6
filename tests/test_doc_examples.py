"""The payload and broker examples of README.md and docs/device-contract.md are what the
product accepts and writes, not only JSON that parses.

``tests/test_readme_examples.py`` runs every shell example against the demo and parses the
README's JSON blocks; a firmware engineer copies the JSON examples into a unit, and an
operator copies the Dynamic Security example into a broker. So each telemetry, event,
status and command-answer example decodes without a refusal through the contract's own
decoders (at the example's own time), every JSON block of the device contract parses, and
the README's Dynamic Security example gives a vehicle exactly the rights
``gateway.broker.auth.render_dynsec`` gives it.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.broker.auth import VehicleIdentity, render_dynsec
from schemas.commands import CommandResult, decode_command_result
from schemas.payloads import Rejection, decode_event, decode_status, decode_telemetry

REPO = Path(__file__).resolve().parent.parent
DOCS = {"README.md": REPO / "README.md", "device-contract.md": REPO / "docs/device-contract.md"}


def json_blocks(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every fenced ``json`` block, also one indented in a list."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```json\s*$", lines[i])
        if fence is None:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        blocks.append((start, "\n".join(body)))
        i += 1
    return blocks


#: (document, line, text) of every JSON block
BLOCKS = [(name, line, text) for name, path in DOCS.items() for line, text in json_blocks(path)]
EXAMPLES = [pytest.param(name, text, id=f"{name}:{line}") for name, line, text in BLOCKS]


def kind(example: dict[str, Any]) -> str | None:
    """Which message of the contract an example is (None: not a unit's message)."""
    if "samples" in example or "signals" in example:
        return "telemetry"
    if "type" in example and "seq" in example:
        return "event"
    if set(example) <= {"state", "ts", "vin"} and "state" in example:
        return "status"
    if "status" in example and "command_id" in example:
        return "result"
    return None


def test_the_documents_have_examples_of_every_message() -> None:
    found = {kind(json.loads(text)) for name, _, text in BLOCKS if name != "README.md"}
    assert {"telemetry", "event", "status", "result"} <= found
    found = {kind(json.loads(text)) for name, _, text in BLOCKS if name == "README.md"}
    assert {"telemetry", "event", "result"} <= found


@pytest.mark.parametrize(("document", "text"), EXAMPLES)
def test_a_units_example_is_accepted_as_written(document: str, text: str) -> None:
    example = json.loads(text)
    which = kind(example) if isinstance(example, dict) else None
    if which is None:
        return  # a command, a feedback notice, the broker's configuration: parses
    vin = example.get("vin", "WVWZZZ1JZXW000001")
    payload = text.encode()
    now = max(example.get("ts", 0), *(s["ts"] for s in example.get("samples", [])), 0)
    if which == "telemetry":
        decoded = decode_telemetry(payload, topic_vin=vin, now_ms=now)
        assert decoded.rejections == (), decoded.rejections
        assert decoded.samples
    elif which == "event":
        assert not isinstance(decode_event(payload, topic_vin=vin, now_ms=now), Rejection)
    elif which == "status":
        assert not isinstance(decode_status(payload, topic_vin=vin), Rejection)
    else:
        # a placeholder id ("6f1c...-...") is fine in prose; the decoder wants a real one
        example["command_id"] = "6f1c3a52-0d4e-4b8a-9c57-2f7e1b9d0a11"
        result = decode_command_result(json.dumps(example).encode(), topic_vin=vin)
        assert isinstance(result, CommandResult), result


def _rights(role: dict[str, Any]) -> set[tuple[str, str, bool]]:
    return {(a["acltype"], a["topic"], a["allow"]) for a in role["acls"]}


def test_the_readmes_dynamic_security_example_is_what_the_broker_gets() -> None:
    (example,) = (
        json.loads(text)
        for name, _, text in BLOCKS
        if name == "README.md" and "defaultACLAccess" in text
    )
    (client,) = example["clients"]
    vin = client["username"]
    rendered = json.loads(render_dynsec([VehicleIdentity(vin)], []))
    assert example["defaultACLAccess"] == rendered["defaultACLAccess"]
    assert client in rendered["clients"]
    (role,) = example["roles"]
    (same,) = (r for r in rendered["roles"] if r["rolename"] == role["rolename"])
    assert _rights(role) == _rights(same)


def test_the_own_broker_rules_let_the_service_account_publish_what_it_publishes() -> None:
    """README, Bringing your own broker, rule 3: every topic the private broker lets the
    service account publish on is named (``integrations/+/alerts`` was missing, so an own
    broker set up by the list dropped every integration's alerts)."""
    readme = DOCS["README.md"].read_text(encoding="utf-8")
    rule = readme[readme.index("3. give the gateway's service account") :]
    rule = rule[: rule.index("\n4. ")]
    rendered = json.loads(render_dynsec([], []))
    (service,) = (r for r in rendered["roles"] if r["rolename"] == "telematics-service")
    published = {a["topic"] for a in service["acls"] if a["acltype"] == "publishClientSend"}
    assert published
    assert {t for t in published if f"`{t}`" not in rule} == set()


def _requirement(name: str, group: str | None) -> str | None:
    """``name``'s requirement in pyproject.toml: of the runtime dependencies (group None) or
    of an optional group."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    listed = project["dependencies"] if group is None else project["optional-dependencies"][group]
    found = [r for r in listed if re.match(rf"{re.escape(name)}\b(?![-\w])", r)]
    return found[0] if found else None


@pytest.mark.parametrize("document", ["README.md", "device-contract.md"])
def test_the_device_docs_say_how_to_install_the_client_they_are_tried_with(
    document: str,
) -> None:
    """Both documents point a firmware engineer at a paho-mqtt unit, but ``scripts/demo.sh``
    (plain ``scripts/setup.sh``) installs only the runtime dependencies, which lack it: a
    newcomer's unit written from the docs failed with ``No module named 'paho'``. So each
    says how to install it, with the test suite's pin."""
    pin = _requirement("paho-mqtt", "test")
    assert pin is not None
    assert _requirement("paho-mqtt", None) is None
    text = " ".join(DOCS[document].read_text(encoding="utf-8").split())
    assert f".venv/bin/pip install '{pin}'" in text
