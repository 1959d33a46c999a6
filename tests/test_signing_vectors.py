"""The signing test vectors of the device contract (``docs/device-contract/signing-vectors.json``)
against the gateway's own implementation (``schemas.signing``): what a firmware team runs
its signer and verifier against must be exactly what the gateway does."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from schemas.commands import CommandMessage, InvalidCommand, decode_command, unit_decision
from schemas.signing import (
    DOMAIN_TAG,
    canonical_command_bytes,
    load_public_key_pem,
    sign_command,
    verify_command,
)
from tests.support.canonical import canonical_float

REPO = Path(__file__).resolve().parents[1]
VECTORS_PATH = REPO / "docs/device-contract/signing-vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
CASES = VECTORS["vectors"]
IDS = [v["name"][:40] for v in CASES]


def private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex(VECTORS["key"]["private_key_seed_hex"])
    )


def decoded(vector: dict[str, Any]) -> CommandMessage | InvalidCommand:
    command = decode_command(vector["message"].encode())
    assert isinstance(command, CommandMessage | InvalidCommand), command
    return command


def test_key_pair_and_tag_are_consistent() -> None:
    public = private_key().public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw.hex() == VECTORS["key"]["public_key_hex"]
    pem = load_public_key_pem(VECTORS["key"]["public_key_pem"].encode())
    assert pem.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw
    assert bytes.fromhex(VECTORS["domain_tag_hex"]) == DOMAIN_TAG
    # the specification states the same tag
    assert VECTORS["domain_tag_hex"] in (REPO / "docs/device-contract.md").read_text()


def test_vectors_cover_what_a_signer_gets_wrong() -> None:
    texts = [v["canonical_text"] for v in CASES]
    assert any('"target_temperature_c":21.0' in t for t in texts)  # an integral float
    assert any(":null" in t for t in texts)
    assert any('"params":{}' in t for t in texts)
    assert any(not v["valid"] for v in CASES)
    assert any(isinstance(decoded(v), InvalidCommand) for v in CASES)  # an unknown type
    # §11's string rules and nesting: a verifier that escaped nothing, did not sort an object
    # nested in params or wrote non-ASCII as \\u escapes passed every vector before, since
    # none had a string to escape, a nested object or a non-ASCII character
    for escaped in ('\\"', "\\\\", "\\n", "\\t", "\\u0001"):
        assert any(escaped in t for t in texts), escaped
    assert any("München" in t for t in texts)  # non-ASCII as is, not \\u00fc
    assert any('{"a":0.1,"z":[' in t for t in texts)  # members sorted inside params too
    # §11's float forms where the usual encoders differ (decision 0054): orjson writes
    # 1.5e-7 and 0.00001, Python's repr 1.5e-07 and 1e-05; a unit re-encoding an unknown
    # type's parameters must know which, or it answers bad_signature for unsupported
    for written in (":1.5e-7", ":-2.5e-9", ":1e+20", ":1.5e+16", ":0.00001", ":1000000000000000.0"):
        assert any(written in t for t in texts), written


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_float_is_signed_in_the_documented_form(x: float) -> None:
    """The gateway's bytes (orjson's float formatting) are §11's rule, written again from
    the text in the independent unit: an orjson upgrade that changed the form would break
    every unit's verification of such a command."""
    message = {**json.loads(CASES[0]["message"]), "type": "calibrate", "params": {"x": x}}
    command = decode_command(orjson.dumps(message))
    assert isinstance(command, InvalidCommand)  # an unknown type: signed as received
    text = canonical_command_bytes(command)[len(DOMAIN_TAG) :].decode()
    assert f'"params":{{"x":{canonical_float(x)}}}' in text


@pytest.mark.parametrize("vector", CASES, ids=IDS)
def test_canonical_bytes(vector: dict[str, Any]) -> None:
    canonical = canonical_command_bytes(decoded(vector))
    assert canonical.hex() == vector["canonical_hex"]
    assert canonical == DOMAIN_TAG + vector["canonical_text"].encode()


@pytest.mark.parametrize("vector", CASES, ids=IDS)
def test_signature_verifies_exactly_when_valid(vector: dict[str, Any]) -> None:
    command = decoded(vector)
    public = private_key().public_key()
    assert verify_command(command, vector["signature"], public) is vector["valid"]
    # and the unit's rule book says so too: bad_signature first, or not
    answer = unit_decision(
        command, vin=command.vin, now_ms=command.issued_at, is_moving=False, public_key=public
    )
    refused_for_signature = (
        answer is not None
        and answer.reason is not None
        and (answer.reason.value == "bad_signature")
    )
    assert refused_for_signature is not vector["valid"]


@pytest.mark.parametrize("vector", [v for v in CASES if v["valid"]], ids=lambda v: v["name"][:40])
def test_signing_reproduces_the_signature(vector: dict[str, Any]) -> None:
    command = decoded(vector)
    signature = base64.urlsafe_b64encode(
        private_key().sign(canonical_command_bytes(command))
    ).rstrip(b"=")
    assert signature.decode() == vector["signature"]
    assert len(vector["signature"]) == 86
    if isinstance(command, CommandMessage):
        assert sign_command(command, private_key()) == vector["signature"]
