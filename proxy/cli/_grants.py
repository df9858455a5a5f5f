"""`junction grants`: what people consented to let MCP clients do (`/oauth/grants`).

A grant is made when someone signs in through the gateway's authorization server and lets a
client (Claude, Cursor, ...) use a namespace; revoking it ends that client's access and refresh
tokens at once. An API key sees every live grant, a service token those given with it.
"""

from __future__ import annotations

import click

from proxy.cli._client import Api, segment
from proxy.cli._options import json_option
from proxy.cli._output import clip, delete_each, emit_json, table

NAME_WIDTH = 40


@click.group()
def grants() -> None:
    """List and revoke the access people gave MCP clients through the gateway's OAuth sign-in."""


@grants.command("list")
@json_option
def list_grants(as_json: bool) -> None:
    """List the live grants this credential may see (never their tokens)."""
    data = Api.from_env().get("/oauth/grants")
    if as_json:
        emit_json(data)
        return
    table(
        ["id", "client", "namespace", "scope", "subject", "expires"],
        [
            [
                g["id"],
                clip(g.get("clientName") or g.get("clientId") or "-", NAME_WIDTH),
                g.get("namespace") or "-",
                g.get("scope") or "-",
                g.get("subject") or "-",
                g.get("expiresAt"),
            ]
            for g in data["grants"]
        ],
    )


@grants.command("revoke")
@click.argument("grant_ids", nargs=-1, required=True)
@json_option
def revoke_grants(grant_ids: tuple[str, ...], as_json: bool) -> None:
    """Revoke grants by id: their clients' access and refresh tokens stop working at once.

    Every id that can be revoked is; the others are reported, and the exit status is 1 if any
    could not be revoked.
    """
    api = Api.from_env()
    delete_each(
        api,
        {gid: f"/oauth/grants/{segment(gid)}" for gid in grant_ids},
        done="revoked",
        id_field="id",
        as_json=as_json,
    )
