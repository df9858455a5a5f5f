"""How a stdio connection is stored: what it runs in `setup["stdio"]`, its env sealed there.

`{"command", "args", "cwd"?, "envNames", "envSealed"?}`: the env values are sealed by the vault
(bound to the row and the field "env", like headers to "headers") and only their names are kept in
the clear. No column of its own: the `setup` JSON column already holds how a connection is
configured, so no migration is needed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from proxy.errors import ValidationFailed
from proxy.settings import Settings
from proxy.store import ConnectionRecord
from proxy.upstream.stdio import MAX_ENV, StdioInput, StdioSpec
from proxy.vault import Vault, VaultError

UNDECRYPTABLE_ENV = (
    "the stored env of this connection cannot be decrypted with the configured master key; "
    "PUT new env values to replace them, or restart with the key that sealed them"
)
STDIO_OFF = (
    "this gateway does not run stdio upstreams; an administrator may set allow_stdio_upstreams "
    "to run this connection's command"
)
PROBLEMS = (UNDECRYPTABLE_ENV, STDIO_OFF)


def stored(record: ConnectionRecord) -> dict[str, Any] | None:
    """The stdio spec of a connection, None for an HTTP one."""
    spec = (record.setup or {}).get("stdio")
    return spec if isinstance(spec, dict) else None


def problem(record: ConnectionRecord, vault: Vault, settings: Settings) -> str:
    """Why a stdio connection's program must not be started ("" when it may)."""
    if not settings.allow_stdio_upstreams:
        return STDIO_OFF
    sealed = (stored(record) or {}).get("envSealed")
    if sealed and not vault.opens(
        sealed, namespace=record.namespace, connection_id=record.connection_id, field="env"
    ):
        return UNDECRYPTABLE_ENV
    return ""


def env(record: ConnectionRecord, vault: Vault) -> dict[str, str]:
    """The plaintext env of a stdio connection, or none when the vault cannot open it."""
    sealed = (stored(record) or {}).get("envSealed")
    if not sealed:
        return {}
    try:
        return vault.open(sealed, namespace=record.namespace, connection_id=record.connection_id, field="env")
    except VaultError:
        return {}


def spec(record: ConnectionRecord, vault: Vault) -> StdioSpec:
    """What the pool runs for a stdio connection (env opened)."""
    saved = stored(record) or {}
    return StdioSpec(saved["command"], tuple(saved.get("args") or ()), env(record, vault), saved.get("cwd"))


def changed(record: ConnectionRecord, change: StdioInput, vault: Vault) -> ConnectionRecord:
    """`record` running what `change` says: command, args and cwd replaced where given, env merged
    (a null value removes a variable), values sealed and only the names in the clear."""
    current = stored(record) or {}
    values = env(record, vault)
    for name, value in (change.env or {}).items():
        values.pop(name, None)
        if value is not None:
            values[name] = value
    if len(values) > MAX_ENV:
        raise ValidationFailed(f"a stdio connection may have at most {MAX_ENV} env variables")
    command = change.command or current["command"]
    saved: dict[str, Any] = {
        "command": command,
        "args": list(change.args if change.args is not None else current.get("args") or []),
        "envNames": sorted(values),
    }
    if cwd := change.cwd or current.get("cwd"):
        saved["cwd"] = cwd
    if values:
        saved["envSealed"] = vault.seal(
            values, namespace=record.namespace, connection_id=record.connection_id, field="env"
        )
    return replace(record, mcp_url=f"stdio:{command}", setup={**(record.setup or {}), "stdio": saved})
