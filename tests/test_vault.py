"""Credentials are sealed with AES-256-GCM, bound to their row, and rotate by key id."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from proxy.errors import ConfigError
from proxy.vault import Vault, VaultError


def _key() -> bytes:
    return os.urandom(32)


def test_round_trip_and_no_plaintext_in_ciphertext() -> None:
    vault = Vault([_key()])
    sealed = vault.seal(
        {"Authorization": "Bearer s3cret"}, namespace="ns", connection_id="c", field="headers"
    )
    assert "s3cret" not in sealed
    assert vault.open(sealed, namespace="ns", connection_id="c", field="headers") == {
        "Authorization": "Bearer s3cret"
    }


def test_ciphertext_copied_to_another_row_does_not_open() -> None:
    vault = Vault([_key()])
    sealed = vault.seal({"k": "v"}, namespace="ns", connection_id="a", field="headers")
    with pytest.raises(VaultError):
        vault.open(sealed, namespace="ns", connection_id="b", field="headers")
    with pytest.raises(VaultError):
        vault.open(sealed, namespace="other", connection_id="a", field="headers")


def test_rotation_keeps_old_rows_readable() -> None:
    old, new = _key(), _key()
    sealed_old = Vault([old]).seal({"k": "v"}, namespace="n", connection_id="c", field="headers")
    rotated = Vault([new, old])
    assert rotated.open(sealed_old, namespace="n", connection_id="c", field="headers") == {"k": "v"}
    sealed_new = rotated.seal({"k": "w"}, namespace="n", connection_id="c", field="headers")
    with pytest.raises(VaultError):
        Vault([old]).open(sealed_new, namespace="n", connection_id="c", field="headers")


def test_key_file_is_created_owner_only_and_reused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = Vault.from_settings("", tmp_path)
    sealed = first.seal({"k": "v"}, namespace="n", connection_id="c", field="headers")
    mode = stat.S_IMODE((tmp_path / "master.key").stat().st_mode)
    assert mode == 0o600
    again = Vault.from_settings("", tmp_path)
    assert again.open(sealed, namespace="n", connection_id="c", field="headers") == {"k": "v"}


def test_master_key_setting_is_validated() -> None:
    with pytest.raises(ConfigError):
        Vault.from_settings("not base64!", None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Vault.from_settings(base64.b64encode(b"short").decode(), None)  # type: ignore[arg-type]
