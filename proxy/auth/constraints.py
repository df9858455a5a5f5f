"""Policies as users write them (`POST /tokens`) and as tokens carry them (claims).

`parse_policy` validates a request's policy at the edge into claims: a canonical, compact JSON form
with absolute expiry times. `compile_policy` turns claims into the `Constraint`s `allows()` reads,
once per token (verified tokens are cached), so the hot path never parses or compiles.

`rpcReqMatch` patterns run on RE2, whose matching time is linear in the input: no pattern, however
hostile, can make a request hang the gateway (a `(a+)+$` on 4 MiB of "a" takes milliseconds).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final

import re2

from proxy.auth.policy import OPERATIONS, RESOURCES, Constraint, Matcher, Policy
from proxy.errors import ValidationFailed

DEFAULT_TTL: Final = 3600
MAX_TTL: Final = 24 * 3600
MAX_CONSTRAINTS: Final = 20
MAX_METADATA_ALTERNATIVES: Final = 20
MAX_METADATA_KEYS: Final = 20
MAX_RPC_MATCHES: Final = 20
MAX_CHAIN_PATTERNS: Final = 40  # over every level of a token: each pattern runs on each request
MAX_PATH: Final = 200
MAX_PATTERN: Final = 500
MAX_TEXT: Final = 256
_FIELDS: Final = frozenset({"namespaces", "resources", "operations", "metadata", "ttl", "rpcReqMatch"})
_TTL = re.compile(r"^(\d{1,6})([smhd]?)$")
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = 1 << 20  # a program over 1 MiB is refused at minting, not run
_RE2_OPTIONS.log_errors = False


def parse_ttl(value: Any, where: str = "ttl") -> int:
    """Seconds from `3600`, `"3600"`, `"30m"`, `"1h"` (1 s to 24 h)."""
    if isinstance(value, bool):
        raise ValidationFailed(f'{where} must be seconds or a duration like "30m" or "1h"')
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (m := _TTL.match(value.strip())):
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValidationFailed(f'{where} must be seconds or a duration like "30m" or "1h"')
    if not 1 <= seconds <= MAX_TTL:
        raise ValidationFailed(f"{where} must be between 1 second and 24 hours")
    return seconds


def parse_policy(value: Any, now: int, ttl: int | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Validate a request's `policy` into claims; also say whether any ttl was given explicitly.
    `ttl` (the CLI's `--ttl`) applies to constraints that set none; the default is one hour."""
    if value is None:
        value = [{}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CONSTRAINTS:
        raise ValidationFailed(f"policy must be a list of 1-{MAX_CONSTRAINTS} constraint objects")
    claims: list[dict[str, Any]] = []
    explicit = ttl is not None
    for index, item in enumerate(value):
        where = f"policy[{index}]"
        if not isinstance(item, dict):
            raise ValidationFailed(f"{where} must be an object")
        unknown = sorted(set(item) - _FIELDS)
        if unknown:
            raise ValidationFailed(
                f"{where} has unknown field(s) {', '.join(unknown)[:200]}; "
                f"a constraint takes {', '.join(sorted(_FIELDS))}"
            )
        claim: dict[str, Any] = {}
        if item.get("namespaces") is not None:
            claim["namespaces"] = _names(item["namespaces"], f"{where}.namespaces", None)
        if item.get("resources") is not None:
            claim["resources"] = _names(item["resources"], f"{where}.resources", RESOURCES)
        if item.get("operations") is not None:
            claim["operations"] = _names(item["operations"], f"{where}.operations", OPERATIONS)
        if item.get("metadata") is not None:
            claim["metadata"] = _metadata(item["metadata"], f"{where}.metadata")
        if item.get("rpcReqMatch") is not None:
            claim["rpcReqMatch"] = _rpc(item["rpcReqMatch"], f"{where}.rpcReqMatch")
        if item.get("ttl") is not None:
            explicit = True
            seconds = parse_ttl(item["ttl"], f"{where}.ttl")
        else:
            seconds = ttl if ttl is not None else DEFAULT_TTL
        claim["exp"] = now + seconds
        claims.append(claim)
    return claims, explicit


def compile_policy(claims: Any) -> Policy:
    """Claims (as a verified token carries them) to constraints. Raises ValueError if malformed."""
    if not isinstance(claims, list) or not claims:
        raise ValueError("a policy is a non-empty list")
    out: list[Constraint] = []
    for claim in claims:
        if not isinstance(claim, dict) or not isinstance(claim.get("exp"), int):
            raise ValueError("a constraint is an object with an exp")
        metadata = claim.get("metadata")
        rpc = claim.get("rpcReqMatch")
        out.append(
            Constraint(
                namespaces=_frozen(claim.get("namespaces")),
                resources=_frozen(claim.get("resources")),
                operations=_frozen(claim.get("operations")),
                metadata=(
                    tuple(tuple(sorted(alt.items())) for alt in metadata) if metadata is not None else None
                ),
                rpc=(
                    tuple((tuple(path.split(".")), _matcher(pattern)) for path, pattern in rpc.items())
                    if rpc is not None
                    else None
                ),
                expires=float(claim["exp"]),
            )
        )
    return tuple(out)


def _frozen(value: Any) -> frozenset[str] | None:
    return frozenset(value) if value is not None else None


def _names(value: Any, where: str, allowed: tuple[str, ...] | None) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or len(items) > 100:
        raise ValidationFailed(f"{where} must be a string or a list of 1-100 strings")
    for item in items:
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_TEXT:
            raise ValidationFailed(f"{where} must hold non-empty strings of at most {MAX_TEXT} characters")
        if allowed is not None and item not in allowed:
            raise ValidationFailed(f"{where}: {item[:40]!r} is not one of {', '.join(allowed)}")
    return sorted(set(items))


def _metadata(value: Any, where: str) -> list[dict[str, str]]:
    alternatives = [value] if isinstance(value, dict) else value
    if not isinstance(alternatives, list) or not 1 <= len(alternatives) <= MAX_METADATA_ALTERNATIVES:
        raise ValidationFailed(
            f"{where} must be an object or a list of 1-{MAX_METADATA_ALTERNATIVES} objects (any of them)"
        )
    out: list[dict[str, str]] = []
    for alternative in alternatives:
        if not isinstance(alternative, dict) or not 1 <= len(alternative) <= MAX_METADATA_KEYS:
            raise ValidationFailed(f"{where} objects must have 1-{MAX_METADATA_KEYS} keys")
        for key, wanted in alternative.items():
            if not 1 <= len(key) <= MAX_TEXT or not isinstance(wanted, str) or len(wanted) > MAX_TEXT:
                raise ValidationFailed(
                    f"{where} maps keys to string values (at most {MAX_TEXT} characters each)"
                )
        out.append(dict(sorted(alternative.items())))
    return out


def _rpc(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not 1 <= len(value) <= MAX_RPC_MATCHES:
        raise ValidationFailed(f"{where} must be an object of 1-{MAX_RPC_MATCHES} dot paths to patterns")
    for path, pattern in value.items():
        if not 1 <= len(path) <= MAX_PATH or "" in path.split("."):
            raise ValidationFailed(f"{where}: a path is 1-{MAX_PATH} characters of dot-separated keys")
        if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
            raise ValidationFailed(f"{where}: a pattern is a string of at most {MAX_PATTERN} characters")
        try:
            re2.compile(pattern, _RE2_OPTIONS)  # for RE2's reason, should the pattern be refused
            _matcher(pattern)
        except re2.error as exc:
            raise ValidationFailed(
                f"{where}[{path[:60]!r}] is not a pattern the gateway runs (RE2 syntax: no "
                f"backreferences or lookaround): {str(exc)[:120]}"
            ) from exc
    return dict(sorted(value.items()))


@functools.lru_cache(maxsize=4096)  # tokens minted alike share their compiled patterns
def _matcher(pattern: str) -> Matcher:
    # A one-pattern RE2 set answers "does it match anywhere" without building a match object:
    # 0.5 µs a match against 2.9 µs for `search` (bench/RESULTS.md, round 5).
    matcher = re2.Set.SearchSet(_RE2_OPTIONS)
    matcher.Add(pattern)
    matcher.Compile()
    search = matcher.Match

    def match(text: str | None) -> bool:
        return text is not None and search(text) is not None

    return match
