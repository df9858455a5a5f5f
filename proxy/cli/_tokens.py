"""`junction auth token` and `junction tokens`: service tokens (`/tokens`).

A service token is minted from the caller's credential (an API key or another token) and can only
narrow it; the CLI sends it like an API key, so every command works with one, within its policy.
"""

from __future__ import annotations

from typing import Any

import click

from proxy.cli._client import Api, segment
from proxy.cli._options import json_option, json_value
from proxy.cli._output import clip, delete_each, emit_json, table

POLICY_EXAMPLE = (
    """give a constraint like '{"namespaces": "my-app", "metadata": {"userId": "alice"}}' or a list of them"""
)
SUMMARY_WIDTH = 80


@click.command("token")
@click.option(
    "--policy",
    "policies",
    multiple=True,
    help="A constraint as JSON (namespaces, resources, operations, metadata, ttl, rpcReqMatch), or a "
    "list of them; repeat for more. The token may do what any one of them allows. Without it, the "
    "token has all the rights of the credential that mints it. @FILE reads it from a file, - from stdin.",
)
@click.option(
    "--ttl",
    help='Lifetime of constraints that set no ttl: seconds, or "30m", "1h" (default 1h, at most 24h).',
)
@json_option
def mint_token(policies: tuple[str, ...], ttl: str | None, as_json: bool) -> None:
    """Mint a service token from the current credential; print it on stdout, its expiry on stderr.

    `TOKEN=$(junction auth token --policy ...)` keeps just the token. Give it to a user, an app
    or an agent instead of the API key; `JUNCTION_API_KEY=$TOKEN junction ...` uses it here.
    """
    body: dict[str, Any] = {}
    if (policy := _constraints(policies)) is not None:
        body["policy"] = policy
    if ttl is not None:
        body["ttl"] = ttl
    data = Api.from_env().request("POST", "/tokens", json_body=body)
    if as_json:
        emit_json(data)
        return
    click.echo(data["token"])
    click.echo(
        f"Expires at {data['expiresAt']}; revoke it with `junction tokens revoke {data['id']}`", err=True
    )


def _constraints(values: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """Every `--policy` as one list of constraints; None when none was given."""
    if not values:
        return None
    constraints: list[dict[str, Any]] = []
    for value in values:
        parsed, source = json_value(value, "--policy", POLICY_EXAMPLE)
        items = parsed if isinstance(parsed, list) else [parsed]
        if not items or not all(isinstance(item, dict) for item in items):
            raise click.UsageError(
                f"--policy{source} must be a JSON object or a non-empty list of objects; {POLICY_EXAMPLE}"
            )
        constraints += items
    return constraints


@click.group()
def tokens() -> None:
    """List and revoke service tokens, rotate their signing key (mint them with `junction auth token`)."""


@tokens.command("list")
@json_option
def list_tokens(as_json: bool) -> None:
    """List the service tokens this credential may see (never the tokens themselves)."""
    data = Api.from_env().get("/tokens")
    if as_json:
        emit_json(data)
        return
    table(
        ["id", "parent", "expires", "policy"],
        [
            [
                t["id"],
                t.get("parentId") or "-",
                t.get("expiresAt"),
                clip(summary(t.get("policy")), SUMMARY_WIDTH),
            ]
            for t in data["tokens"]
        ],
    )


def summary(policy: Any) -> str:
    """A policy in one line: `ns=app ops=read,execute meta=userId:alice OR ns=other`."""
    if not isinstance(policy, list) or not policy:
        return ""
    return " OR ".join(_constraint_summary(c) for c in policy if isinstance(c, dict))


def _constraint_summary(constraint: dict[str, Any]) -> str:
    parts = [
        f"{label}={','.join(constraint[field])}"
        for field, label in (("namespaces", "ns"), ("resources", "res"), ("operations", "ops"))
        if constraint.get(field)
    ]
    if constraint.get("metadata"):
        alternatives = [
            ",".join(f"{k}:{v}" for k, v in alternative.items()) for alternative in constraint["metadata"]
        ]
        parts.append(f"meta={'|'.join(alternatives)}")
    if constraint.get("rpcReqMatch"):
        parts.append(f"rpc={','.join(constraint['rpcReqMatch'])}")
    return " ".join(parts) or "all"


@tokens.command("revoke")
@click.argument("token_ids", nargs=-1, required=True)
@json_option
def revoke_tokens(token_ids: tuple[str, ...], as_json: bool) -> None:
    """Revoke service tokens by id, and every token minted from them.

    Every id that can be revoked is; the others are reported, and the exit status is 1 if any
    could not be revoked.
    """
    api = Api.from_env()
    delete_each(
        api,
        {tid: f"/tokens/{segment(tid)}" for tid in token_ids},
        done="revoked",
        id_field="id",
        as_json=as_json,
    )


@tokens.command("rotate-key")
@json_option
def rotate_key(as_json: bool) -> None:
    """Sign new tokens with a new key (admin API keys only); tokens signed before keep working."""
    data = Api.from_env().request("POST", "/tokens/signing-key")
    if as_json:
        emit_json(data)
    else:
        click.echo(f"New signing key {data['kid']}; tokens signed before stay valid until they expire")
