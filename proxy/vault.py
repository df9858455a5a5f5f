"""Envelope encryption for credentials: AES-256-GCM with a key ring.

Every ciphertext names the key that sealed it (so keys rotate: new writes use the first key,
old rows still open with the others) and is bound by associated data to
`namespace/connection/field`, so a ciphertext copied to another row fails to open.
Secrets pass through this module and nowhere else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.errors import ConfigError, JunctionError

_VERSION = "v1"


class VaultError(JunctionError):
    code = "vault_error"


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"junction-key-id:" + key).hexdigest()[:12]


class Vault:
    """Seals and opens small secrets (JSON objects) bound to where they are stored."""

    def __init__(self, keys: list[bytes]):
        if not keys:
            raise ConfigError("the vault needs at least one master key")
        for key in keys:
            if len(key) != 32:
                raise ConfigError("master keys must be 32 bytes (base64 of 32 random bytes)")
        self._active = _key_id(keys[0])
        self._ciphers = {_key_id(k): AESGCM(k) for k in keys}

    @classmethod
    def from_settings(cls, master_key: str, data_dir: Path) -> Vault:
        """Keys from the `master_key` setting (comma-separated, newest first) or a 0600 key file."""
        if master_key:
            try:
                keys = [
                    base64.b64decode(part.strip(), validate=True)
                    for part in master_key.split(",")
                    if part.strip()
                ]
            except ValueError as exc:
                raise ConfigError("master_key must be base64 (comma-separated for several keys)") from exc
            return cls(keys)
        path = data_dir / "master.key"
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        try:
            return cls([base64.b64decode(line, validate=True) for line in lines])
        except ValueError as exc:
            raise ConfigError(f"{path} does not hold base64 master keys") from exc

    @staticmethod
    def _aad(namespace: str, connection_id: str, field: str) -> bytes:
        return f"{namespace}/{connection_id}/{field}".encode()

    def seal(self, value: dict[str, str], *, namespace: str, connection_id: str, field: str) -> str:
        nonce = secrets.token_bytes(12)
        plaintext = json.dumps(value, separators=(",", ":")).encode()
        sealed = self._ciphers[self._active].encrypt(
            nonce, plaintext, self._aad(namespace, connection_id, field)
        )
        return f"{_VERSION}.{self._active}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def opens(self, token: str, *, namespace: str, connection_id: str, field: str) -> bool:
        """True when `open` would succeed (a key of this ring sealed `token` for this row)."""
        try:
            self.open(token, namespace=namespace, connection_id=connection_id, field=field)
        except VaultError:
            return False
        return True

    def open(self, token: str, *, namespace: str, connection_id: str, field: str) -> dict[str, str]:
        try:
            version, key_id, body = token.split(".", 2)
            blob = base64.urlsafe_b64decode(body)
        except ValueError as exc:
            raise VaultError("stored credential is malformed") from exc
        if base64.urlsafe_b64encode(blob).decode() != body:
            # Only the exact text we sealed opens: base64 ignores stray and padding bits, so an
            # edited token handed back by a client (an MCP requestState) must not still open.
            raise VaultError("stored credential is malformed")
        cipher = self._ciphers.get(key_id)
        if version != _VERSION or cipher is None:
            raise VaultError("stored credential was sealed with an unknown master key")
        try:
            plaintext = cipher.decrypt(blob[:12], blob[12:], self._aad(namespace, connection_id, field))
        except (InvalidTag, ValueError) as exc:
            raise VaultError("stored credential does not belong to this connection or key") from exc
        value = json.loads(plaintext)
        if not isinstance(value, dict):
            raise VaultError("stored credential is malformed")
        return value
