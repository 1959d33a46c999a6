"""Signed remote commands: the gateway signs, the unit verifies (Ed25519).

The gateway signs every command with its private key over the canonical bytes of the
command (:func:`canonical_command_bytes`): the VIN, the command id, the type, the
parameters, the issue time, the expiry and a per-vehicle counter. The unit holds the
gateway's public key (provisioned with its credentials) and refuses a command whose
signature does not verify (see :func:`schemas.commands.unit_decision`), so that nobody who
can merely publish on a vehicle's command topic can unlock it.

Canonical bytes: the domain tag ``b"telematics-command-v1\\0"`` followed by the JSON object
``{vin, command_id, type, params, issued_at, expires_at, counter}`` encoded by orjson with
sorted keys (compact, UTF-8, deterministic; floats in the form the device contract §11
names, which is orjson's: ``1.5e-7``, ``1e+20``, ``0.00001``). The tag keeps a command
signature from ever being valid for anything else signed with the same key. The signature
travels in the command's ``signature`` field as unpadded base64url text (86 characters).

Pure apart from the key file helpers (:func:`load_private_key`, :func:`save_private_key`).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "DOMAIN_TAG",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "SignableCommand",
    "canonical_command_bytes",
    "generate_keypair",
    "load_private_key",
    "load_public_key_pem",
    "public_key_pem",
    "save_private_key",
    "sign_command",
    "verify_command",
]

#: Prefix of the signed bytes: the purpose and the version of the encoding.
DOMAIN_TAG = b"telematics-command-v1\0"


class SignableCommand(Protocol):
    """What is signed of a command (``CommandMessage`` and ``InvalidCommand`` both fit)."""

    @property
    def command_id(self) -> str: ...
    @property
    def vin(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def params(self) -> Mapping[str, Any]: ...
    @property
    def issued_at(self) -> int: ...
    @property
    def expires_at(self) -> int: ...
    @property
    def counter(self) -> int | None: ...


def canonical_command_bytes(message: SignableCommand) -> bytes:
    """The bytes a command signature covers (see the module docstring)."""
    body = {
        "vin": message.vin,
        "command_id": message.command_id,
        "type": str(message.type),
        "params": dict(message.params),
        "issued_at": message.issued_at,
        "expires_at": message.expires_at,
        "counter": message.counter,
    }
    return DOMAIN_TAG + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign_command(message: SignableCommand, private_key: Ed25519PrivateKey) -> str:
    """The base64url signature of ``message``. Raises ValueError without a counter: a
    command without one could be replayed at will."""
    if message.counter is None:
        raise ValueError("a command must carry a counter to be signed")
    signature = private_key.sign(canonical_command_bytes(message))
    return base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii")


def verify_command(message: SignableCommand, signature: str, public_key: Ed25519PublicKey) -> bool:
    """Whether ``signature`` is ``public_key``'s signature of ``message``. Never raises for
    bad input (a malformed signature is simply not valid)."""
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (binascii.Error, ValueError):
        return False
    if len(raw) != 64:
        return False
    try:
        public_key.verify(raw, canonical_command_bytes(message))
    except InvalidSignature:
        return False
    return True


# --- keys ---------------------------------------------------------------------------------------


def generate_keypair() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    private_key = Ed25519PrivateKey.generate()
    return private_key, private_key.public_key()


def save_private_key(path: Path, private_key: Ed25519PrivateKey) -> None:
    """Write ``private_key`` as unencrypted PKCS#8 PEM, readable by the owner only (0600)
    from the moment the file exists. Refuses to overwrite an existing file."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, pem)
    finally:
        os.close(fd)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM private key written by :func:`save_private_key`; raises ValueError if it is
    not an Ed25519 key."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The public key (of a private key, or itself) as SubjectPublicKeyInfo PEM: what a unit
    is provisioned with."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key_pem(pem: bytes) -> Ed25519PublicKey:
    """Parse a PEM public key; raises ValueError if it is not an Ed25519 public key."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key
