"""Exposed tool names <-> (connection id, upstream tool name).

Canonical names are `<connectionId>.<tool>`. Strict clients (Claude, OpenAI, Copilot) reject any
list with a name outside `^[a-zA-Z0-9_-]{1,64}$`, so they get a safe form: `<connectionId>__<tool>`
with other characters mapped to `_`, shortened with a stable hash when too long, and
de-duplicated deterministically. Calls are resolved through the map, never by parsing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Literal

NameStyle = Literal["dotted", "safe"]
SAFE_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_SAFE = 64
SEPARATOR = "__"

# Substrings of clientInfo.name (lowercased) of clients known to reject dotted names.
STRICT_CLIENTS = ("claude", "openai", "chatgpt", "codex", "copilot", "visual studio code", "vscode")

Ref = tuple[str, str]  # (connection id, upstream tool name)


def dotted(connection_id: str, tool: str) -> str:
    return f"{connection_id}.{tool}"


def _digest(text: str, size: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def _shorten(base: str, canonical: str, size: int = 8) -> str:
    return f"{base[: MAX_SAFE - size - 1]}_{_digest(canonical, size)}"


def safe_names(refs: Iterable[Ref]) -> dict[Ref, str]:
    """A unique safe name for every (connection, tool), stable for a given set of tools."""
    by_base: dict[str, list[Ref]] = {}
    for ref in sorted(set(refs)):
        canonical = dotted(*ref)
        base = f"{ref[0]}{SEPARATOR}{_UNSAFE.sub('_', ref[1])}"
        if len(base) > MAX_SAFE:
            base = _shorten(base, canonical)
        by_base.setdefault(base, []).append(ref)
    out: dict[Ref, str] = {}
    taken = set(by_base)
    for base, group in by_base.items():
        out[group[0]] = base
        for ref in group[1:]:
            size = 8
            name = _shorten(base, dotted(*ref), size)
            while name in taken:
                size += 4
                name = _shorten(base, dotted(*ref), size)
            taken.add(name)
            out[ref] = name
    return out


def choose_style(
    requested: str | None, namespace_style: str, default_style: str, client_name: str | None
) -> NameStyle:
    """Per request > per namespace > gateway setting > detected from the client > dotted."""
    for choice in (requested, namespace_style, default_style):
        if choice in ("dotted", "safe"):
            return choice  # type: ignore[return-value]
    name = (client_name or "").lower()
    if any(marker in name for marker in STRICT_CLIENTS):
        return "safe"
    return "dotted"


class NameMap:
    """Both exposed forms of every tool of a namespace, for resolving `tools/call`."""

    def __init__(self, refs: Iterable[Ref]):
        refs = list(refs)
        self.safe = safe_names(refs)
        self._lookup: dict[str, Ref] = {}
        for ref in refs:
            self._lookup[dotted(*ref)] = ref
        for ref, name in self.safe.items():
            self._lookup.setdefault(name, ref)

    def exposed(self, ref: Ref, style: NameStyle) -> str:
        return dotted(*ref) if style == "dotted" else self.safe[ref]

    def resolve(self, name: str) -> Ref | None:
        return self._lookup.get(name)

    def __len__(self) -> int:
        return len(self._lookup)
