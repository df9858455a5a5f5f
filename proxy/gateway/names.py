"""Exposed tool names <-> (connection id, upstream tool name), and tool paths -> tool names.

Canonical names are `<connectionId>.<tool>`. LLM APIs (Anthropic, OpenAI, Gemini) reject a whole
tool list when one name falls outside `^[a-zA-Z0-9_-]{1,64}$`, and most clients pass MCP names
straight through while calling themselves something generic, so the namespace endpoint emits the
safe form unless asked for dotted names: `<connectionId>__<tool>` with other characters mapped to
`_`, shortened with a stable hash when too long, and de-duplicated deterministically. Calls are
resolved through the map, never by parsing.

REST paths (`/{ns}/{id}/.tools/files/read`) and the CLI name a tool of one connection; `find_tool`
is the one rule both go by: the exact name first, then `/` and `.` as the same separator.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Literal

from proxy.errors import Conflict

NameStyle = Literal["dotted", "safe", "bare"]
SAFE_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_SAFE = 64
MIN_LENGTH = 24  # the shortest limit a client may set: a few characters, `_` and an 8-digit hash
_HASHED = re.compile(r"_[0-9a-f]{8,}$")
SEPARATOR = "__"

Ref = tuple[str, str]  # (connection id, upstream tool name)


def dotted(connection_id: str, tool: str) -> str:
    return f"{connection_id}.{tool}"


def _digest(text: str, size: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def _shorten(base: str, canonical: str, size: int = 8, limit: int = MAX_SAFE) -> str:
    return f"{base[: limit - size - 1]}_{_digest(canonical, size)}"


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
    requested: str | None, namespace_style: str, default_style: str, client_name: str | None = None
) -> NameStyle:
    """The request's `?tool_names=`, else the namespace's, else the gateway's setting, else safe.

    `auto` (the stored default of namespaces and of the gateway setting) means "no choice here":
    a namespace set to `auto` follows the gateway, and a gateway set to `auto` gives safe names.
    Safe is the default for every client because a client's name does not tell which model reads
    the list: most clients pass names straight through while calling themselves something generic.
    `client_name` is accepted from callers written when it decided; it no longer changes the answer.
    """
    for choice in (requested, namespace_style, default_style):
        if choice in ("dotted", "safe", "bare"):
            return choice  # type: ignore[return-value]
    return "safe"


def tool_path_key(name: str) -> str:
    """The form in which `/` and `.` are the same separator: `files/read` -> `files.read`."""
    return name.replace("/", ".")


def find_tool(names: Iterable[str], path: str) -> str | None:
    """The tool that `path` names: the exact name, else the one name equal to it when `/` and `.`
    are taken as the same separator; None when no tool matches.

    So `repo/search` (how the Smithery clients send `repo.search`) and `files.read` (for a tool
    named `files/read`) both find their tool, and a name that is exact always wins. When several
    tools match only by the equivalence (`a.b/c` and `a/b.c` for `a/b/c`) it raises `Conflict`
    naming them, rather than picking one.
    """
    names = list(names)
    if path in names:
        return path
    key = tool_path_key(path)
    matches = sorted({name for name in names if tool_path_key(name) == key})
    if len(matches) > 1:
        candidates = ", ".join(repr(name) for name in matches)
        raise Conflict(f"tool path {path!r} matches several tools ({candidates}); give the exact name")
    return matches[0] if matches else None


def tools_under(names: Iterable[str], path: str) -> list[str]:
    """The tools in the group `path` names (`repo` -> `repo.search`, `repo/get`, ...), in order."""
    prefix = tool_path_key(path) + "."
    return [name for name in names if tool_path_key(name).startswith(prefix)]


class NameMap:
    """Both exposed forms of every tool of a namespace, for resolving `tools/call`."""

    def __init__(self, refs: Iterable[Ref]):
        refs = list(refs)
        self._refs = sorted(set(refs))
        self._fitted: dict[int, dict[str, dict[Ref, str]]] = {}
        self.safe = safe_names(refs)
        self._lookup: dict[str, Ref] = {}
        for ref in refs:
            self._lookup[dotted(*ref)] = ref
        for ref, name in self.safe.items():
            self._lookup.setdefault(name, ref)
        # A tool's own name, where no other connection of the namespace has a tool of that name:
        # the `bare` style (a namespace of one connection, as its server itself names things), and
        # what an MCP App's HTML calls (it knows only its own server's names).
        owners: dict[str, list[Ref]] = {}
        for ref in refs:
            owners.setdefault(ref[1], []).append(ref)
        self.bare = {group[0]: name for name, group in owners.items() if len(group) == 1}
        for ref, name in self.bare.items():
            self._lookup.setdefault(name, ref)

    def exposed(self, ref: Ref, style: NameStyle, max_length: int | None = None) -> str:
        """The name a client sees; `max_length` is the client's limit (None: no limit beyond the
        style's own), met by shortening with a stable hash (`_fit`)."""
        if style == "dotted":
            name = dotted(*ref)
        elif style == "bare" and ref in self.bare:
            name = self.bare[ref]
        else:
            name = self.safe[ref]
        if max_length is None or len(name) <= max(max_length, MIN_LENGTH):
            return name
        return self._fit(max_length)[style][ref]

    def resolve(self, name: str) -> Ref | None:
        ref = self._lookup.get(name)
        if ref is None and len(name) >= MIN_LENGTH and len(name) not in self._fitted and _HASHED.search(name):
            # A name shortened for some client's limit, called before anything was listed here
            # (after a restart, or on another instance): the limit is the name's own length.
            self._fit(len(name))
            ref = self._lookup.get(name)
        return ref

    def _fit(self, limit: int) -> dict[str, dict[Ref, str]]:
        """Every name longer than `limit`, in every style, cut to exactly `limit` characters and
        ended by a hash of the tool's dotted name (longer where it would name another tool).

        A shortened name has the limit's length, so it can only meet names of that length: the
        result depends on the namespace's tools alone, never on which limits were asked for
        before, and a restarted gateway gives the same names and resolves them."""
        limit = max(limit, MIN_LENGTH)
        fitted = self._fitted.get(limit)
        if fitted is not None:
            return fitted
        fitted = {}
        for style in ("safe", "dotted", "bare"):
            names: dict[Ref, str] = {}
            for ref in self._refs:
                full = self.exposed(ref, style)  # type: ignore[arg-type]
                if len(full) <= limit:
                    continue
                canonical, size = dotted(*ref), 8
                name = _shorten(full, canonical, size, limit)
                while self._lookup.get(name, ref) != ref and size < limit // 2:
                    size += 4
                    name = _shorten(full, canonical, size, limit)
                names[ref] = name
                self._lookup.setdefault(name, ref)
            fitted[style] = names
        self._fitted[limit] = fitted
        return fitted

    def __len__(self) -> int:
        return len(self._lookup)
