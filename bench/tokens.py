"""What a service token or an OAuth access token costs the gateway on `tools/call`, against the
same call with an API key.

    .venv/bin/python bench/tokens.py            # about 5 minutes on a quiet machine
    .venv/bin/python bench/tokens.py --quick    # smoke run, under a minute
    .venv/bin/python bench/tokens.py --profile 20   # and py-spy: API key against chain token

Starts one upstream (`bench/upstream.py`) and the gateway as subprocesses (as `overhead.py` does),
creates namespace `bench` with connection `u1` (metadata `{"userId": "u1"}`) and seven more on the
same upstream for users u2..u8 (so a metadata filter has rows to drop), and mints with the admin
key:

- `token: metadata`: `{"namespaces": "bench", "metadata": {"userId": "u1"}}`;
- `token: rpcReqMatch`: the same plus `rpcReqMatch {"method": "^tools/call$", "params.name": "^u1__echo$"}`;
- `token: 3-level chain`: `{"namespaces": "bench"}`, narrowed by that token to the metadata above,
  narrowed again to `operations: execute` with the rpcReqMatch above (every level is evaluated);
- `oauth access token`: from the gateway's authorization server over HTTP, as a client gets one
  (register a public client, `/authorize` with PKCE S256 and `resource=<gateway>/mcp/bench`, sign
  in with the admin key, approve namespace `bench`, exchange the code at `/token`). Signed in with
  an API key, its chain is the consent level alone (`{"namespaces": ["bench"], "resources":
  ["connections"], "operations": ["read", "execute"]}`, checked), so it compares with `token:
  metadata`; on MCP paths the middleware also checks its audience against the request URL and
  wraps `send` (a 403 gets an `insufficient_scope` challenge).

Then bare aiohttp JSON-RPC clients (`overhead.RawCaller`, 2026-07-28, stateless) call `u1__echo`
through `/mcp/bench` with each credential at each concurrency: `--warmup` calls each, then
`--calls` calls or `--duration` seconds per credential, in `--rounds` blocks that go round the
credentials (the starting one rotates each round), since this VM's speed drifts. A second set of
API-key clients (`api key (A/A)`) measures nothing new: its difference from `api key` is the noise
floor of every other difference. Gateway CPU is utime + stime of its process from /proc.

Last, in-process (no HTTP, no event loop) timeit of the pieces a token adds to a call: the
middleware's authentication (header to `Principal`; a cached token is a dict lookup plus the
expiry, revocation and key checks), the JSON parse of the body for the policy (`app._message`),
the three `allows()` checks (`NamespaceMCP` gates the namespace, then the message, with
`require_mcp`; `Catalog.resolve` checks the connection record), for the access token (minted
in process with `ServiceTokens.issue_access`, the consent level above) the audience check and the
wrapped `send` of a response's two messages, and one rpcReqMatch pattern's match. With
`--profile SECONDS`, py-spy then samples the gateway under c=8 load with the API key and with the
chain token, and each auth or policy function's share of the samples is shown as us per call.
JSON goes to bench/out/tokens.json.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import math
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import (  # noqa: E402
    OUT,
    ROOT,
    Cluster,
    Proc,
    machine,
    percentile,
    rest_ok,
    run_header,
    self_cpu_seconds,
    system_busy_seconds,
    table,
    wait_for_quiet,
    write_json,
)
from overhead import (  # noqa: E402
    ARGS,
    CLIENT_INFO,
    MODERN,
    NAMESPACE,
    Sessions,
    drive,
    find_py_spy,
    summarize_raw,
)

USER = "u1"
OTHER_USERS = [f"u{i}" for i in range(2, 9)]
TOOL = f"{USER}__echo"
RPC_MATCH = {"method": "^tools/call$", "params.name": f"^{TOOL}$"}
BASELINE = "api key"
AA = "api key (A/A)"
METADATA = {"namespaces": NAMESPACE, "metadata": {"userId": USER}}
# Each value: the policy of each level, minted in turn (level n with the token of level n - 1).
TOKENS: dict[str, list[dict[str, Any]]] = {
    "token: metadata": [METADATA],
    "token: rpcReqMatch": [{**METADATA, "rpcReqMatch": RPC_MATCH}],
    "token: 3-level chain": [
        {"namespaces": NAMESPACE},
        METADATA,
        {"operations": "execute", "rpcReqMatch": RPC_MATCH},
    ],
}
OAUTH = "oauth access token"
# The level the authorization server adds at consent (no `scope` asked: read and execute).
OAUTH_LEVEL = {"namespaces": [NAMESPACE], "resources": ["connections"], "operations": ["read", "execute"]}
REDIRECT = "http://127.0.0.1:9/callback"  # never followed: the code is read from the Location
HIDDEN = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


# --- through HTTP ---------------------------------------------------------------------------------
def mint_chain(gateway: Proc, admin_key: str, levels: list[dict[str, Any]]) -> str:
    """The token at the end of a chain: each level minted with the credential above it."""
    credential = admin_key
    for policy in levels:
        credential = rest_ok(gateway, credential, "POST", "/tokens", {"policy": [policy]})["token"]
    return credential


def oauth_login(gateway: Proc, credential: str) -> str:
    """An access token for `/mcp/<namespace>` through the authorization code flow, signed in with
    `credential`: what a browser and a public client do, over plain HTTP."""
    base = f"http://127.0.0.1:{gateway.port}"
    resource = f"{base}/mcp/{NAMESPACE}"
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(8)

    def ok(response: httpx2.Response, status: int = 200) -> httpx2.Response:
        if response.status_code != status:
            raise RuntimeError(
                f"{response.request.url.path} -> {response.status_code}: {response.text[:500]}"
            )
        return response

    def hidden(page: httpx2.Response) -> dict[str, str]:
        return {name: html.unescape(value) for name, value in HIDDEN.findall(page.text)}

    # One client keeps the cookie /authorize sets, as the browser would.
    with httpx2.Client(base_url=base, timeout=30.0, follow_redirects=False, trust_env=False) as http:
        client = {"client_name": "bench", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}
        client_id = ok(http.post("/register", json=client), 201).json()["client_id"]
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": state,
            "resource": resource,
        }
        page = ok(http.get("/authorize", params=params))
        page = ok(
            http.post("/authorize/login", data={"flow": hidden(page)["flow"], "credential": credential})
        )
        form = {"flow": hidden(page)["flow"], "namespace": NAMESPACE, "decision": "approve"}
        back = ok(http.post("/authorize/consent", data=form), 303)
        query = {k: v[0] for k, v in parse_qs(urlsplit(back.headers["location"]).query).items()}
        if query.get("state") != state:
            raise RuntimeError(f"the redirect carries state {query.get('state')!r}, not ours")
        exchange = {
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": REDIRECT,
            "client_id": client_id,
            "code_verifier": verifier,
            "resource": resource,
        }
        token: str = ok(http.post("/token", data=exchange)).json()["access_token"]
    # The micro timings mint the same chain in process: check that it is the consent level alone.
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    levels = [[{k: v for k, v in c.items() if k != "exp"} for c in level] for level in payload["pol"]]
    if levels != [[OAUTH_LEVEL]] or payload["aud"] != resource:
        raise RuntimeError(f"unexpected access token claims: {payload}")
    return token


def setup(gateway: Proc, upstream: Proc, admin_key: str) -> dict[str, str]:
    """The namespace, its connections, and every credential to measure (name -> bearer)."""
    url = f"http://127.0.0.1:{upstream.port}/mcp"
    rest_ok(gateway, admin_key, "PUT", f"/namespaces/{NAMESPACE}")
    for user in [USER, *OTHER_USERS]:
        body = {"mcpUrl": url, "connectionId": user, "metadata": {"userId": user}}
        rest_ok(gateway, admin_key, "POST", f"/{NAMESPACE}", body)
    credentials = {BASELINE: admin_key, AA: admin_key}
    for name, levels in TOKENS.items():
        credentials[name] = mint_chain(gateway, admin_key, levels)
    credentials[OAUTH] = oauth_login(gateway, admin_key)
    return credentials


@dataclass
class Block:
    calls: int
    errors: int
    elapsed: float
    gateway_cpu: float
    upstream_cpu: float
    other_cpu: float  # core-seconds used by anything but our three processes


@dataclass
class Series:
    latencies: list[float] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)


async def run_concurrency(
    sessions: dict[str, Sessions], c: int, gateway: Proc, upstream: Proc, opts: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every credential at concurrency `c`, interleaved; repeated when other jobs took CPU."""
    for attempt in range(1, opts.retries + 2):
        await wait_for_quiet(opts.max_other_cpu)
        for target in sessions.values():
            await drive(target.callers[:c], opts.warmup, 60.0)
        series = {name: Series() for name in sessions}
        names = list(sessions)
        per_block = math.ceil(opts.calls / opts.rounds)
        for r in range(opts.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                before = (gateway.cpu(), upstream.cpu(), self_cpu_seconds(), system_busy_seconds())
                latencies, errors, elapsed = await drive(
                    sessions[name].callers[:c], per_block, opts.duration / opts.rounds
                )
                after = (gateway.cpu(), upstream.cpu(), self_cpu_seconds(), system_busy_seconds())
                gw, up, us, busy = (a - b for a, b in zip(after, before, strict=True))
                series[name].latencies += latencies
                series[name].blocks.append(
                    Block(len(latencies), errors, elapsed, gw, up, max(0.0, busy - gw - up - us))
                )
        rows = [_row(name, c, s) for name, s in series.items()]
        _add_differences(rows, series)
        worst = max(r["other_cpu_util"] for r in rows)
        for row in rows:
            row["attempts"] = attempt
        if worst <= opts.max_other_cpu or attempt > opts.retries:
            return rows
        print(f"    other jobs used {worst} cores: waiting for a quiet machine, retrying", flush=True)
    raise AssertionError("unreachable")


def _row(name: str, c: int, s: Series) -> dict[str, Any]:
    latencies = sorted(s.latencies)
    n = len(latencies)
    elapsed = sum(b.elapsed for b in s.blocks)
    gw = sum(b.gateway_cpu for b in s.blocks)
    row = {
        "credential": name,
        "concurrency": c,
        "calls": n,
        "errors": sum(b.errors for b in s.blocks),
        "seconds": round(elapsed, 3),
        "throughput": round(n / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "gateway_cpu_us_per_call": round(gw / n * 1e6, 1),
        "upstream_cpu_us_per_call": round(sum(b.upstream_cpu for b in s.blocks) / n * 1e6, 1),
        "gateway_cpu_util": round(gw / elapsed, 3),
        "other_cpu_util": round(sum(b.other_cpu for b in s.blocks) / elapsed, 2),
        "rounds_gateway_cpu_us_per_call": [round(b.gateway_cpu / b.calls * 1e6, 1) for b in s.blocks],
    }
    print(
        f"  c={c:<2} {name:22} {n:6} calls {row['throughput']:7.1f}/s p50 {row['p50_ms']:6.3f} ms "
        f"gw {row['gateway_cpu_us_per_call']:6.1f} us/call errors {row['errors']} "
        f"other CPU {row['other_cpu_util']}",
        flush=True,
    )
    return row


def _add_differences(rows: list[dict[str, Any]], series: dict[str, Series]) -> None:
    """Each credential against the API key: totals, and the spread of the per-round differences
    (the rounds ran side by side, so a round's difference cancels most of the VM's drift)."""
    base = next(r for r in rows if r["credential"] == BASELINE)
    base_rounds = base["rounds_gateway_cpu_us_per_call"]
    for row in rows:
        if row is base:
            continue
        row["gateway_cpu_us_vs_key"] = round(
            row["gateway_cpu_us_per_call"] - base["gateway_cpu_us_per_call"], 1
        )
        row["p50_us_vs_key"] = round((row["p50_ms"] - base["p50_ms"]) * 1000, 1)
        row["throughput_vs_key_pct"] = round(100 * row["throughput"] / base["throughput"], 1)
        diffs = [a - b for a, b in zip(row["rounds_gateway_cpu_us_per_call"], base_rounds, strict=True)]
        row["rounds_gateway_cpu_us_vs_key"] = [round(d, 1) for d in diffs]
        row["gateway_cpu_us_vs_key_se"] = (
            round(statistics.stdev(diffs) / math.sqrt(len(diffs)), 1) if len(diffs) > 1 else None
        )


def render(rows: list[dict[str, Any]]) -> str:
    headers = [
        "credential",
        "c",
        "calls",
        "calls/s",
        "vs key",
        "p50 ms",
        "p50 vs key us",
        "gw CPU us/call",
        "gw CPU vs key us (+- s.e.)",
        "other CPU",
    ]
    body = []
    for r in rows:
        versus = "gateway_cpu_us_vs_key" in r
        body.append(
            [
                r["credential"],
                str(r["concurrency"]),
                str(r["calls"]) + (f" ({r['errors']} err)" if r["errors"] else ""),
                f"{r['throughput']:.0f}",
                f"{r['throughput_vs_key_pct']:.1f}%" if versus else "-",
                f"{r['p50_ms']:.3f}",
                f"{r['p50_us_vs_key']:+.0f}" if versus else "-",
                f"{r['gateway_cpu_us_per_call']:.1f}",
                f"{r['gateway_cpu_us_vs_key']:+.1f} (+- {r['gateway_cpu_us_vs_key_se']})" if versus else "-",
                f"{r['other_cpu_util']:.2f}",
            ]
        )
    return table(headers, body)


# What the profile compares: the auth and policy code, the body parse for the policy, RE2.
FOCUS = ("proxy/auth/", "app.py:_message", "wirejson.py:loads_strict", "re2/")
# Middleware wrap the whole request: their cumulative share says nothing about auth itself.
WRAPPERS = ("CorsMiddleware.__call__", "Authenticate.__call__")
PROFILED = (BASELINE, "token: 3-level chain")


async def profile(
    sessions: dict[str, Sessions], gateway: Proc, seconds: int, opts: argparse.Namespace
) -> dict[str, Any] | None:
    """py-spy (collapsed `--native` stacks) on the gateway under c=8 load, with the API key and
    with the chain token: each function's share of the busy samples, as us per call."""
    py_spy = find_py_spy()
    if py_spy is None:
        print("py-spy not found; skipping the profile (.venv/bin/pip install py-spy)")
        return None
    c = max(opts.concurrency)
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"concurrency": c, "rate": opts.profile_rate, "seconds": seconds, "runs": {}}
    for name in PROFILED:
        raw = OUT / f"profile-tokens-{name.split(':')[-1].strip().replace(' ', '-')}.txt"
        load: dict[str, Any] = {}

        async def run_load(name: str = name, load: dict[str, Any] = load) -> None:
            load["result"] = await drive(sessions[name].callers[:c], 10**9, seconds + 3)

        await wait_for_quiet(opts.max_other_cpu)
        cpu0 = gateway.cpu()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_load)
            await anyio.sleep(1)
            argv = [py_spy, "record", "--native", "--rate", str(opts.profile_rate), "--pid", str(gateway.pid)]
            argv += ["--duration", str(seconds), "-o", str(raw), "--format", "raw", "--nolineno"]
            done = await anyio.run_process(argv, check=False, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                print(f"py-spy failed: {done.stdout.decode(errors='replace')[-500:]}")
        calls = len(load["result"][0])
        us_per_call = (gateway.cpu() - cpu0) / calls * 1e6
        if not raw.exists():
            return None
        summary = summarize_raw(raw, 100)
        result["runs"][name] = {
            "raw": str(raw.relative_to(ROOT)),
            "busy_samples": summary["busy_samples"],
            "gateway_cpu_us_per_call": round(us_per_call, 1),
            "gc_pct": summary["gc_pct"],
            "focus": [
                {**e, "us_per_call": round(e["pct"] / 100 * us_per_call, 1)}
                for e in summary["cumulative"]
                if any(m in e["function"] for m in FOCUS) and not e["function"].endswith(WRAPPERS)
            ],
            "own_top": summary["own"][:25],
        }
        print(
            f"  profiled {name}: {summary['busy_samples']} busy samples, {us_per_call:.1f} us/call",
            flush=True,
        )
    return result


def render_profile(result: dict[str, Any]) -> str:
    names = list(result["runs"])
    functions: dict[str, dict[str, float]] = {}
    for name in names:
        for e in result["runs"][name]["focus"]:
            functions.setdefault(e["function"], {})[name] = e["us_per_call"]
    headers = ["function (cumulative)", *(f"{n} us/call" for n in names)]
    body = [
        [f, *(f"{v.get(n, 0.0):.1f}" for n in names)]
        for f, v in sorted(functions.items(), key=lambda kv: -max(kv[1].values()))
    ]
    gw = [
        "gateway CPU (whole process)",
        *(f"{result['runs'][n]['gateway_cpu_us_per_call']:.1f}" for n in names),
    ]
    return table(headers, [gw, *body])


# --- in process -----------------------------------------------------------------------------------
def _sync(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (a cache hit) without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the coroutine suspended: not a cache hit")


def _time(fn: Callable[[], Any], number: int) -> dict[str, float]:
    runs = timeit.Timer(fn).repeat(repeat=7, number=number)
    per_call = sorted(t / number * 1e6 for t in runs)
    return {"best_us": round(per_call[0], 3), "median_us": round(per_call[3], 3)}


async def micro(number: int) -> dict[str, Any]:
    """timeit of each piece a token adds to a `tools/call`, per credential, in this process."""
    import re2

    from proxy.app import _message
    from proxy.auth.constraints import _RE2_OPTIONS, _matcher
    from proxy.auth.keys import ApiKeys
    from proxy.auth.middleware import (
        Authentication,
        _audience_matches,
        _bearer,
        _resource,
        _scope_challenge,
    )
    from proxy.auth.policy import CALL, require, require_mcp
    from proxy.auth.tokens import AccessGrant, ServiceTokens
    from proxy.settings import Settings
    from proxy.store import open_store
    from proxy.vault import Vault

    tmp = Path(tempfile.mkdtemp(prefix="junction-bench-micro-"))
    admin_key = "bench-micro-admin-key"
    settings = Settings.load(env={}, data_dir=str(tmp), admin_key=admin_key)
    store = await open_store(settings.effective_database_url)
    try:
        keys = ApiKeys(store, admin_key)
        tokens = ServiceTokens(
            store, Vault.from_settings("", settings.data_path), keys, issuer="http://bench"
        )
        await tokens.load()
        authentication = Authentication(tokens, keys)
        credentials: dict[str, str] = {BASELINE: admin_key}
        for name, levels in TOKENS.items():
            parent = await keys.verify(admin_key)
            assert parent is not None
            token = ""
            for policy in levels:
                token = (await tokens.mint(parent, [policy])).token
                parent = await tokens.authenticate(token)
                assert parent is not None
            credentials[name] = token
        key = await keys.verify(admin_key)
        assert key is not None
        grant = AccessGrant(
            grant_id="grt_" + secrets.token_hex(12),
            key_id=key.key_id,
            token_ids=key.token_ids,
            claims=key.claims,
            level=[OAUTH_LEVEL],
            login_expires_at=1e18,  # an API key's login, as its sealed flow carries it
            audience=f"{settings.effective_public_url}/mcp/{NAMESPACE}",
            namespace=NAMESPACE,
            client_id="bench",
            scope="read execute",
            subject=f"API key {key.name}",
        )
        credentials[OAUTH] = tokens.issue_access(grant, 3600)
    finally:
        await store.close()
        shutil.rmtree(tmp, ignore_errors=True)

    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": TOOL,
            "arguments": ARGS,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
            },
        },
    }
    body = json.dumps(message).encode()  # as RawCaller sends it
    parsed = _message(body)
    record_metadata = {"userId": USER}
    # What the middleware reads for an access token's audience, and what it sends through.
    scope = {"app": SimpleNamespace(state=SimpleNamespace(settings=settings)), "path": f"/mcp/{NAMESPACE}"}
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json")],
    }
    end = {"type": "http.response.body", "body": b"{}"}

    async def send(message: dict[str, Any]) -> None:
        pass

    rows: list[dict[str, Any]] = []

    def add(credential: str, step: str, fn: Callable[[], Any]) -> None:
        rows.append({"credential": credential, "step": step, **_time(fn, number)})

    def steps(name: str, credential: str) -> None:
        header = f"Bearer {credential}".encode("latin-1")
        principal = _sync(authentication.authenticate(credential))
        assert principal is not None
        # As the middleware runs it: a new str from the header each time, so its hash is computed.
        add(
            name,
            "authenticate (header -> Principal)",
            lambda: _sync(authentication.authenticate(_bearer(header) or "")),
        )
        if principal.admin:
            return  # an API key skips the rest: no body parse, no allows()
        add(
            name,
            "  of which ServiceTokens.authenticate (same str)",
            lambda: _sync(tokens.authenticate(credential)),
        )
        add(name, "namespace gate: require_mcp(None)", lambda: require_mcp(principal, None, NAMESPACE))
        add(name, "JSON parse of the body (app._message)", lambda: _message(body))
        add(name, "message gate: require_mcp(message)", lambda: require_mcp(principal, parsed, NAMESPACE))
        add(
            name,
            "record: require(CALL, metadata, rpc)",
            lambda: require(principal, CALL, "connections", NAMESPACE, record_metadata, parsed),
        )
        if principal.kind == "oauth":
            audience = principal.audience or ""
            add(
                name,
                "audience check + send wrapper (middleware)",
                lambda: _audience_matches(audience, _resource(scope)) and _scope_challenge(scope, send),
            )
            wrapped = _scope_challenge(scope, send)
            add(name, "send of start + body, wrapped", lambda: (_sync(wrapped(start)), _sync(wrapped(end))))
            add(name, "  the same, not wrapped", lambda: (_sync(send(start)), _sync(send(end))))
        add(name, "first use only: verify + compile", lambda: _sync(tokens._verify(credential)))  # noqa: SLF001

    for name, credential in credentials.items():
        steps(name, credential)

    # One rpcReqMatch pattern: the matcher as compiled (google-re2's Python `search`, which builds
    # a match object), against RE2 itself through the binding (a bool is all allows() needs).
    pattern = RPC_MATCH["method"]
    matcher = _matcher(pattern)
    program = re2._re2.RE2(pattern.encode(), _RE2_OPTIONS)  # noqa: SLF001
    unanchored = re2._re2.RE2.Anchor.UNANCHORED  # noqa: SLF001

    def bare(text: str) -> bool:
        encoded = text.encode()
        return bool(program.Match(unanchored, encoded, 0, len(encoded))[0] != (-1, -1))

    assert matcher("tools/call") and bare("tools/call") and not bare("tools/list")
    add("(one pattern)", "rpcReqMatch matcher as compiled (re2 search)", lambda: matcher("tools/call"))
    add("(one pattern)", "  the same match through _re2.RE2.Match", lambda: bare("tools/call"))
    key_auth = next(r["median_us"] for r in rows if r["credential"] == BASELINE)
    totals = []
    for name, credential in credentials.items():
        if name == BASELINE:
            continue
        took = {r["step"]: r["median_us"] for r in rows if r["credential"] == name}
        extra = (
            took["authenticate (header -> Principal)"]
            - key_auth
            + took["namespace gate: require_mcp(None)"]
            + took["JSON parse of the body (app._message)"]
            + took["message gate: require_mcp(message)"]
            + took["record: require(CALL, metadata, rpc)"]
            + took.get("audience check + send wrapper (middleware)", 0.0)
            + took.get("send of start + body, wrapped", 0.0)
            - took.get("  the same, not wrapped", 0.0)
        )
        totals.append(
            {"credential": name, "token_chars": len(credential), "extra_us_per_call": round(extra, 2)}
        )
    return {"number": number, "steps": rows, "totals": totals}


def render_micro(result: dict[str, Any]) -> str:
    steps = table(
        ["credential", "step", "best us", "median us"],
        [
            [r["credential"], r["step"], f"{r['best_us']:.2f}", f"{r['median_us']:.2f}"]
            for r in result["steps"]
        ],
    )
    totals = table(
        ["credential", "token chars", "sum of the steps a token adds, us/call (medians)"],
        [[t["credential"], str(t["token_chars"]), f"{t['extra_us_per_call']:.2f}"] for t in result["totals"]],
    )
    return steps + "\n\n" + totals


# --- main -----------------------------------------------------------------------------------------
async def main(opts: argparse.Namespace) -> None:
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    if opts.micro_only:
        print(render_micro(await micro(opts.micro_number)))
        return
    measured = machine()  # the commit the gateway runs (others may commit while this runs)
    prof: dict[str, Any] | None = None
    with Cluster() as cluster:
        upstream = cluster.upstream()
        gateway = cluster.gateway()
        cluster.wait_ready(upstream, "/mcp")
        cluster.wait_ready(gateway, "/health")
        credentials = setup(gateway, upstream, cluster.admin_key)
        url = f"http://127.0.0.1:{gateway.port}/mcp/{NAMESPACE}"
        print(
            f"upstream pid {upstream.pid}, gateway pid {gateway.pid}; token lengths "
            + ", ".join(f"{n}: {len(t)}" for n, t in credentials.items() if n not in (BASELINE, AA))
            + f"; warmup {opts.warmup}, then {opts.calls} calls or {opts.duration} s per credential "
            f"in {opts.rounds} rounds",
            flush=True,
        )
        sessions = {name: Sessions(url, bearer, "auto", TOOL, "raw") for name, bearer in credentials.items()}
        try:
            for target in sessions.values():
                await target.open(max(opts.concurrency))
            for c in opts.concurrency:
                rows += await run_concurrency(sessions, c, gateway, upstream, opts)
            if opts.profile:
                prof = await profile(sessions, gateway, opts.profile, opts)
        finally:
            for target in reversed(sessions.values()):
                await target.close()
        if gateway.popen.poll() is not None:
            print(f"the gateway died:\n{gateway.log_tail()}")
        gateway_log = gateway.log_tail(30)
    print()
    print(render(rows))
    print(f"\nin process, timeit ({opts.micro_number} calls x 7, no HTTP, no event loop):")
    micro_result = await micro(opts.micro_number)
    print(render_micro(micro_result))
    if prof:
        print(f"\nprofile under c={prof['concurrency']} load ({prof['rate']} Hz, {prof['seconds']} s each):")
        print(render_profile(prof))
    payload = {
        **run_header("tokens"),
        "measured_commit": measured["git_commit"],
        "measured_uncommitted_proxy_files": measured["git_uncommitted_proxy_files"],
        "settings": {
            "warmup": opts.warmup,
            "calls": opts.calls,
            "duration": opts.duration,
            "rounds": opts.rounds,
            "concurrency": opts.concurrency,
            "tokens": TOKENS,
            "oauth_level": OAUTH_LEVEL,
            "other_connections": len(OTHER_USERS),
        },
        "runs": rows,
        "micro": micro_result,
        "profile": prof,
        "gateway_log_tail": gateway_log,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    path = write_json(opts.out, payload)
    print(f"\nwrote {path} in {payload['wall_seconds']}s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warmup", type=int, default=300, help="warmup calls per credential (default 300)")
    parser.add_argument(
        "--calls", type=int, default=10000, help="max measured calls per credential and c (default 10000)"
    )
    parser.add_argument(
        "--duration", type=float, default=16.0, help="max measured seconds per credential and c (default 16)"
    )
    parser.add_argument(
        "--rounds", type=int, default=10, help="blocks per credential, interleaved (default 10)"
    )
    parser.add_argument("--concurrency", default="1,8", help="comma-separated (default 1,8)")
    parser.add_argument(
        "--micro-number", type=int, default=20000, help="timeit calls per repeat (default 20000)"
    )
    parser.add_argument("--micro-only", action="store_true", help="only the in-process timeit (no JSON)")
    parser.add_argument("--quick", action="store_true", help="warmup 50, 1000 calls or 3 s, 4 rounds")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="SECONDS", help="then py-spy the gateway: API key vs chain"
    )
    parser.add_argument(
        "--profile-rate", type=int, default=500, help="py-spy samples per second (default 500)"
    )
    parser.add_argument("--max-other-cpu", type=float, default=0.15)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--out", default="", help="file name in bench/out (default tokens.json)")
    opts = parser.parse_args()
    if opts.quick:
        opts.warmup, opts.calls, opts.duration, opts.rounds = 50, 1000, 3.0, 4
        opts.micro_number = 2000
    opts.concurrency = [int(c) for c in opts.concurrency.split(",")]
    opts.out = opts.out or ("tokens-quick.json" if opts.quick else "tokens.json")
    return opts


if __name__ == "__main__":
    anyio.run(main, parse_args(), backend_options={"use_uvloop": True})
