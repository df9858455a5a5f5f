"""Service-token policies as properties: random policies and chains of narrowing, minted on one
real gateway, and every surface compared with an oracle.

The oracle restates the documented semantics and does not import `proxy.auth.policy` (an
independent statement is the point): a constraint grants a request when every field it has
matches; a level of a token passes when any of its constraints grants; a token passes when every
level passes. Two questions are about "some" record: whether a caller may act on *some*
connection of a namespace (the gate of a listing, which then filters rows by their metadata) and
whether *some* MCP request would do (a connection a caller may list tools of, or call, is one it can
see). A connection the caller cannot see answers exactly as a missing one.

The world is fixed up front (three namespaces, eight connections with metadata over a small
alphabet, all on one real upstream); hypothesis draws policies, chains and writes.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import httpx2
import pytest
from conftest import Gateway, Upstream
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

CALL_LIMIT = 15.0
SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    # No "explain" phase: it reruns a failing example dozens of times against the gateway.
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- the world --------------------------------------------------------------------------------------

NAMESPACES: Final = ("alpha", "beta", "gamma")
ELSEWHERE: Final = "zeta"  # a namespace policies may name, which does not exist
# (namespace, connection id) -> metadata (None: the connection has none). `dup` is in two
# namespaces with different metadata; `gamma` has no connections at all.
WORLD: Final[dict[tuple[str, str], dict[str, str] | None]] = {
    ("alpha", "a1"): {"userId": "a"},
    ("alpha", "a2"): {"userId": "b", "team": "a"},
    ("alpha", "a3"): None,
    ("alpha", "a4"): {"team": "c"},
    ("alpha", "dup"): {"userId": "a", "team": "b"},
    ("beta", "b1"): {"userId": "c", "team": "c"},
    ("beta", "b2"): None,
    ("beta", "dup"): {"userId": "b"},
}
ARGUMENTS: Final = {"echo": {"text": "hi"}, "add": {"a": 1, "b": 2}}
MODERN = "2026-07-28"
META: Final = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


def connections_of(namespace: str) -> list[str]:
    return sorted(cid for ns, cid in WORLD if ns == namespace)


# --- the oracle -------------------------------------------------------------------------------------


class _Some:
    def __repr__(self) -> str:
        return "SOME"


SOME: Final = _Some()
"""Some connection (for metadata) or some MCP request (for rpcReqMatch)."""
READ, WRITE, EXECUTE = frozenset({"read"}), frozenset({"write"}), frozenset({"execute"})
LIST_OPS = frozenset({"read", "execute"})  # listing tools: reading the connection, or calling it
ANY_OP = frozenset({"read", "write", "execute"})  # lifecycle messages: any use at all

Policy = list[dict[str, Any]]


def _listed(value: Any) -> list[Any]:
    """A policy field given as one item or as a list."""
    return value if isinstance(value, list) else [value]


def _text_at(message: Mapping[str, Any], path: str) -> str | None:
    """The value at a dot path of a JSON-RPC message: text as is, other JSON compact."""
    value: Any = message
    for key in path.split("."):
        if not isinstance(value, Mapping) or value.get(key) is None:
            return None
        value = value[key]
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def constraint_grants(
    constraint: Mapping[str, Any],
    operations: frozenset[str],
    resource: str,
    namespace: str | None,
    metadata: Mapping[str, Any] | _Some,
    rpc: Mapping[str, Any] | _Some | None,
) -> bool:
    """One constraint: each field present must match. A request about no namespace (the list of
    namespaces) is not narrowed by `namespaces`; only connections carry metadata; `rpc` None is
    a request that is not an MCP request, which no `rpcReqMatch` grants."""
    if "namespaces" in constraint and namespace is not None:
        if namespace not in _listed(constraint["namespaces"]):
            return False
    if "resources" in constraint and resource not in _listed(constraint["resources"]):
        return False
    if "operations" in constraint and not operations & set(_listed(constraint["operations"])):
        return False
    if "metadata" in constraint:
        if resource != "connections":
            return False
        if not isinstance(metadata, _Some) and not any(
            all(metadata.get(key) == wanted for key, wanted in alternative.items())
            for alternative in _listed(constraint["metadata"])
        ):
            return False
    if "rpcReqMatch" in constraint:
        if rpc is None:
            return False
        if not isinstance(rpc, _Some):
            for path, pattern in constraint["rpcReqMatch"].items():
                text = _text_at(rpc, path)
                if text is None or re.search(pattern, text) is None:
                    return False
    return True


def passes(
    chain: Sequence[Policy],
    operations: frozenset[str],
    resource: str,
    namespace: str | None = None,
    metadata: Mapping[str, Any] | _Some = SOME,
    rpc: Mapping[str, Any] | _Some | None = None,
) -> bool:
    """Every level of the chain has a constraint that grants the request."""
    return all(
        any(constraint_grants(c, operations, resource, namespace, metadata, rpc) for c in level)
        for level in chain
    )


def sees(chain: Sequence[Policy], namespace: str, metadata: Mapping[str, Any]) -> bool:
    """Whether a connection exists for the token: it may read it or list its tools (some request)."""
    return passes(chain, LIST_OPS, "connections", namespace, metadata, SOME)


def denied(chain: Sequence[Policy], namespace: str, metadata: Mapping[str, Any]) -> int:
    """The status of a refused request on one connection: 403 if the token sees it, else 404."""
    return 403 if sees(chain, namespace, metadata) else 404


def metadata_of(namespace: str, cid: str) -> dict[str, str]:
    return WORLD[namespace, cid] or {}


# --- MCP requests as sent ---------------------------------------------------------------------------


def tools_list() -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}


def tools_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": META},
    }


def rest_list_request() -> dict[str, Any]:
    """What `GET /{ns}/{id}/.tools` is matched as."""
    return {"jsonrpc": "2.0", "method": "tools/list", "params": {}}


def rest_call_request(tool: str) -> dict[str, Any]:
    """What `POST /{ns}/{id}/.tools/{tool}` is matched as."""
    return {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": tool, "arguments": ARGUMENTS[tool]}}


def initialize() -> dict[str, Any]:
    """A lifecycle message (2025 era: the 2026-07-28 protocol has no initialize)."""
    return {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }


def mcp_headers(token: str, message: dict[str, Any]) -> dict[str, str]:
    """Headers of a stateless request: 2026-07-28 ones name their method (and tool) again."""
    headers = {
        "authorization": f"Bearer {token}",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
    }
    if "_meta" in message["params"]:
        headers["mcp-protocol-version"] = MODERN
        headers["mcp-method"] = message["method"]
        if message["method"] == "tools/call":
            headers["mcp-name"] = message["params"]["name"]
    return headers


# --- strategies -------------------------------------------------------------------------------------


def one_or_more(items: Sequence[str]) -> st.SearchStrategy[Any]:
    """A policy field as users write it: one string, or a list of them."""
    element = st.sampled_from(items)
    return st.one_of(element, st.lists(element, min_size=1, max_size=3, unique=True))


METHOD_PATTERNS: Final = ("^tools/list$", "^tools/call$", "^tools/", "list$", "^initialize$")
NAME_PATTERNS: Final = ("^echo$", "^add$", "echo$", "^(echo|add)$", "^a1__", "^dup__", "__add$", "^b")
metadata_objects = st.dictionaries(
    st.sampled_from(("userId", "team")), st.sampled_from(("a", "b", "c")), min_size=1, max_size=2
)
CONSTRAINT_FIELDS: Final[dict[str, st.SearchStrategy[Any]]] = {
    "namespaces": one_or_more((*NAMESPACES, ELSEWHERE)),
    "resources": one_or_more(("connections", "namespaces", "servers", "skills")),
    "operations": one_or_more(("read", "write", "execute")),
    "metadata": st.one_of(metadata_objects, st.lists(metadata_objects, min_size=1, max_size=3)),
    "rpcReqMatch": st.one_of(
        st.fixed_dictionaries({"method": st.sampled_from(METHOD_PATTERNS)}),
        st.fixed_dictionaries({"params.name": st.sampled_from(NAME_PATTERNS)}),
        st.fixed_dictionaries(
            {"method": st.sampled_from(METHOD_PATTERNS), "params.name": st.sampled_from(NAME_PATTERNS)}
        ),
    ),
}
# A constraint narrows by 0-3 fields: with all five at once nearly every request is refused.
constraints = st.lists(st.sampled_from(sorted(CONSTRAINT_FIELDS)), unique=True, max_size=3).flatmap(
    lambda fields: st.fixed_dictionaries({f: CONSTRAINT_FIELDS[f] for f in fields})
)
policies = st.lists(constraints, min_size=1, max_size=3)
chains = st.lists(policies, min_size=1, max_size=3)


# --- the gateway ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_gateway(tmp_path_factory: pytest.TempPathFactory, modern_upstream: Upstream) -> Iterator[Gateway]:
    """One gateway for the module, holding the world; every connection's tools listed once."""
    gateway = Gateway(tmp_path_factory.mktemp("policy-properties")).start(attempts=3)
    try:
        with gateway.client() as admin:
            for ns in NAMESPACES:
                assert admin.put(f"/namespaces/{ns}").status_code == 201
            for (ns, cid), metadata in WORLD.items():
                body: dict[str, Any] = {"mcpUrl": modern_upstream.url}
                if metadata is not None:
                    body["metadata"] = metadata
                created = admin.put(f"/{ns}/{cid}", json=body)
                assert created.status_code == 201, created.text
            for ns in NAMESPACES:
                listed = admin.get(f"/{ns}/.tools").json()["connections"]
                assert all("echo" in {t["name"] for t in c["tools"]} for c in listed), listed
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def http(policy_gateway: Gateway) -> Iterator[httpx2.Client]:
    """The one client every example uses (credentials go per request)."""
    with httpx2.Client(base_url=policy_gateway.url, timeout=CALL_LIMIT) as client:
        yield client


def mint_chain(http: httpx2.Client, admin_key: str, chain: Sequence[Policy]) -> list[str]:
    """A token per level: the first minted with the admin key, each next one with the previous."""
    tokens: list[str] = []
    credential = admin_key
    for policy in chain:
        minted = http.post("/tokens", json={"policy": policy}, headers=bearer(credential))
        assert minted.status_code == 200, (policy, minted.text)
        credential = minted.json()["token"]
        tokens.append(credential)
    return tokens


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


# --- what each surface should answer, and what it does ----------------------------------------------

Answers = dict[str, Any]


def expected_answers(chain: Sequence[Policy], tool: str) -> Answers:
    """Every probe of `observe`, as the oracle answers it."""
    out: Answers = {}
    out["GET /namespaces"] = (
        [ns for ns in NAMESPACES if passes(chain, READ, "namespaces", ns)]
        if passes(chain, READ, "namespaces")
        else 403
    )
    out["GET /servers"] = 200 if passes(chain, READ, "servers") else 403
    rest_list, listing, arguments = rest_list_request(), tools_list(), ARGUMENTS[tool]
    for ns in NAMESPACES:
        ids = connections_of(ns)
        out[f"GET /namespaces/{ns}"] = 200 if passes(chain, READ, "namespaces", ns) else 403
        out[f"GET /{ns}"] = (
            [c for c in ids if passes(chain, READ, "connections", ns, metadata_of(ns, c))]
            if passes(chain, READ, "connections", ns)
            else 403
        )
        out[f"GET /{ns}/.tools"] = (
            [c for c in ids if passes(chain, LIST_OPS, "connections", ns, metadata_of(ns, c), rest_list)]
            if passes(chain, LIST_OPS, "connections", ns, SOME, rest_list)
            else 403
        )
        # A GET stream needs some use of some connection; then the SDK wants a session id (400).
        out[f"GET /mcp/{ns}"] = 400 if passes(chain, ANY_OP, "connections", ns, SOME, SOME) else 403
        out[f"MCP /mcp/{ns} tools/list"] = (
            [c for c in ids if passes(chain, LIST_OPS, "connections", ns, metadata_of(ns, c), listing)]
            if passes(chain, LIST_OPS, "connections", ns, SOME, listing)
            else "refused"
        )
        nobody = tools_call(f"nobody__{tool}", arguments)
        out[f"MCP /mcp/{ns} tools/call nobody__{tool}"] = (
            "missing" if passes(chain, EXECUTE, "connections", ns, SOME, nobody) else "refused"
        )
        for cid in ids:
            metadata = metadata_of(ns, cid)
            refused = denied(chain, ns, metadata)
            where = f"/{ns}/{cid}"
            out[f"GET {where}"] = 200 if passes(chain, READ, "connections", ns, metadata) else refused
            out[f"GET {where}/.tools"] = (
                200 if passes(chain, LIST_OPS, "connections", ns, metadata, rest_list) else refused
            )
            out[f"POST {where}/.tools/{tool}"] = (
                200
                if passes(chain, EXECUTE, "connections", ns, metadata, rest_call_request(tool))
                else refused
            )
            call = tools_call(f"{cid}__{tool}", arguments)
            if not passes(chain, EXECUTE, "connections", ns, SOME, call):
                outcome = "refused"  # at the door: no connection of the namespace would do
            elif passes(chain, EXECUTE, "connections", ns, metadata, call):
                outcome = "ok"
            else:
                outcome = "forbidden" if sees(chain, ns, metadata) else "missing"
            out[f"MCP /mcp/{ns} tools/call {cid}__{tool}"] = outcome
            for message in (listing, tools_call(tool, arguments)):
                operations = LIST_OPS if message["method"] == "tools/list" else EXECUTE
                allowed = passes(chain, operations, "connections", ns, metadata, message)
                out[f"MCP /mcp{where} {message['method']}"] = 200 if allowed else refused
            allowed = passes(chain, ANY_OP, "connections", ns, metadata, SOME)
            out[f"MCP /mcp{where} initialize"] = 200 if allowed else refused
    return out


def observe(http: httpx2.Client, token: str, tool: str) -> Answers:
    """Ask every surface, as `token`; the answers in the shape of `expected_answers`."""
    auth = bearer(token)
    out: Answers = {}
    listed = http.get("/namespaces", headers=auth)
    out["GET /namespaces"] = (
        [n["name"] for n in listed.json()["namespaces"]] if listed.status_code == 200 else listed.status_code
    )
    out["GET /servers"] = http.get("/servers", headers=auth).status_code
    arguments = ARGUMENTS[tool]
    for ns in NAMESPACES:
        out[f"GET /namespaces/{ns}"] = http.get(f"/namespaces/{ns}", headers=auth).status_code
        rows = http.get(f"/{ns}", headers=auth)
        out[f"GET /{ns}"] = (
            [c["connectionId"] for c in rows.json()["connections"]]
            if rows.status_code == 200
            else rows.status_code
        )
        envelopes = http.get(f"/{ns}/.tools", headers=auth)
        out[f"GET /{ns}/.tools"] = (
            [e["connectionId"] for e in envelopes.json()["connections"] if "tools" in e]
            if envelopes.status_code == 200
            else envelopes.status_code
        )
        stream = http.get(f"/mcp/{ns}", headers={**auth, "accept": "text/event-stream"})
        out[f"GET /mcp/{ns}"] = stream.status_code
        answer = mcp_post(http, f"/mcp/{ns}", token, tools_list())
        out[f"MCP /mcp/{ns} tools/list"] = (
            sorted({t["name"].split("__")[0] for t in answer["result"]["tools"]})
            if "result" in answer
            else classify(answer)
        )
        name = f"nobody__{tool}"
        answer = mcp_post(http, f"/mcp/{ns}", token, tools_call(name, arguments))
        out[f"MCP /mcp/{ns} tools/call {name}"] = classify(answer)
        for cid in connections_of(ns):
            where = f"/{ns}/{cid}"
            out[f"GET {where}"] = http.get(where, headers=auth).status_code
            out[f"GET {where}/.tools"] = http.get(f"{where}/.tools", headers=auth).status_code
            called = http.post(f"{where}/.tools/{tool}", json=arguments, headers=auth)
            out[f"POST {where}/.tools/{tool}"] = called.status_code
            name = f"{cid}__{tool}"
            answer = mcp_post(http, f"/mcp/{ns}", token, tools_call(name, arguments))
            outcome = out[f"MCP /mcp/{ns} tools/call {name}"] = classify(answer)
            if outcome == "missing":
                # A hidden connection's tool fails exactly like a tool that does not exist (one
                # whose name every pattern of NAME_PATTERNS treats alike, so the door is the same).
                absent = f"{cid}__x__{tool}"
                reference = mcp_post(http, f"/mcp/{ns}", token, tools_call(absent, arguments))
                assert normalized(answer, name) == normalized(reference, absent), (answer, reference)
            for message in (tools_list(), tools_call(tool, arguments), initialize()):
                answer = mcp_post(http, f"/mcp{where}", token, message)
                out[f"MCP /mcp{where} {message['method']}"] = passthrough_status(answer)
    return out


def mcp_post(http: httpx2.Client, path: str, token: str, message: dict[str, Any]) -> dict[str, Any]:
    """One stateless MCP request; the JSON-RPC answer, with the HTTP status under `status`."""
    response = http.post(path, content=json.dumps(message), headers=mcp_headers(token, message))
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        # The passthrough answers an initialize as its upstream does: here, as an event stream.
        events = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        answer = json.loads([e for e in events if e.strip()][-1])
    else:
        answer = response.json()
    assert isinstance(answer, dict), response.text
    return {"status": response.status_code, **answer}


def classify(answer: dict[str, Any]) -> str:
    """A namespace-endpoint answer: ok, refused at the door (403), forbidden on this connection
    (a JSON-RPC error), or missing (the error of a tool that does not exist)."""
    status, error = answer["status"], answer.get("error")
    if status == 200 and "result" in answer and not answer["result"].get("isError"):
        return "ok"
    # The door may answer with a REST body or a JSON-RPC error; the status is what matters here.
    if status == 403 and (error == "forbidden" or (isinstance(error, dict) and error["code"] == -32001)):
        return "refused"
    if status == 200 and isinstance(error, dict) and error["code"] == -32001:
        return "forbidden"
    if (
        status == 400
        and isinstance(error, dict)
        and error["code"] == -32602
        and "not found" in error["message"]
    ):
        return "missing"
    return f"unexpected: {json.dumps(answer)[:300]}"


def passthrough_status(answer: dict[str, Any]) -> Any:
    """200 for a result, else the HTTP status of the error (403 refused, 404 not found)."""
    if answer["status"] == 200 and "result" in answer and not answer["result"].get("isError"):
        return 200
    if "error" in answer:
        return answer["status"]
    return f"unexpected: {json.dumps(answer)[:300]}"


def normalized(answer: dict[str, Any], name: str) -> str:
    return json.dumps(answer).replace(name, "<tool>")


def assert_agrees(observed: Answers, expected: Answers, chain: Sequence[Policy]) -> None:
    wrong = [
        f"  {key}: gateway {observed.get(key)!r}, oracle {expected.get(key)!r}"
        for key in expected | observed
        if observed.get(key) != expected.get(key)
    ]
    assert not wrong, f"policy chain {json.dumps(chain)}:\n" + "\n".join(wrong)


def abilities(answers: Answers) -> set[tuple[str, str]]:
    """What a token could do and see: each listed item, each success, each connection that
    exists for it (any answer on a connection but "not found")."""
    out: set[tuple[str, str]] = set()
    for key, value in answers.items():
        if isinstance(value, list):
            out |= {(key, item) for item in value}
        elif value in (200, "ok"):
            out.add((key, "done"))
        if any(f"/{ns}/{cid}" in key or f" {cid}__" in key for ns, cid in WORLD) and value in (
            200,
            403,
            "ok",
            "forbidden",
        ):
            out.add((key, "exists"))
    return out


# --- the properties ---------------------------------------------------------------------------------


@given(chain=chains, tool=st.sampled_from(sorted(ARGUMENTS)))
@settings(SETTINGS, max_examples=200)
def test_every_surface_answers_as_the_oracle(
    policy_gateway: Gateway, http: httpx2.Client, chain: list[Policy], tool: str
) -> None:
    token = mint_chain(http, policy_gateway.admin_key, chain)[-1]
    assert_agrees(observe(http, token, tool), expected_answers(chain, tool), chain)


@given(chain=st.lists(policies, min_size=2, max_size=3), tool=st.sampled_from(sorted(ARGUMENTS)))
@settings(SETTINGS, max_examples=80)
def test_a_child_never_exceeds_its_parent(
    policy_gateway: Gateway, http: httpx2.Client, chain: list[Policy], tool: str
) -> None:
    tokens = mint_chain(http, policy_gateway.admin_key, chain)
    seen: list[set[tuple[str, str]]] = []
    for depth, token in enumerate(tokens, start=1):
        answers = observe(http, token, tool)
        assert_agrees(answers, expected_answers(chain[:depth], tool), chain[:depth])
        seen.append(abilities(answers))
    for parent, child in itertools.pairwise(seen):
        assert child <= parent, sorted(child - parent)


ABSENT: Final = "absent"  # an update that leaves the metadata as it is


@given(
    chain=chains,
    ns=st.sampled_from(NAMESPACES),
    first=st.none() | metadata_objects,
    update=st.sampled_from((ABSENT, {})) | metadata_objects,
)
@settings(SETTINGS, max_examples=100)
def test_writes_follow_the_oracle(
    policy_gateway: Gateway,
    modern_upstream: Upstream,
    http: httpx2.Client,
    chain: list[Policy],
    ns: str,
    first: dict[str, str] | None,
    update: Any,
) -> None:
    """Create, update and delete a connection, and a namespace, as the token; the admin key
    sets up what the token could not and cleans up after every example."""
    token = mint_chain(http, policy_gateway.admin_key, chain)[-1]
    auth, admin = bearer(token), bearer(policy_gateway.admin_key)
    cid, where = "w1", f"/{ns}/w1"
    body: dict[str, Any] = {"connectionId": cid, "mcpUrl": modern_upstream.url}
    if first is not None:
        body["metadata"] = first
    created_with = first or {}
    try:
        created = http.post(f"/{ns}", json=body, headers=auth)
        may_create = passes(chain, WRITE, "connections", ns, created_with)
        assert created.status_code == (201 if may_create else 403), (chain, created.text)
        if created.status_code != 201:
            assert http.put(where, json=body, headers=admin).status_code == 201

        change = {"name": "renamed"} if update == ABSENT else {"metadata": update}
        resulting = created_with if update == ABSENT else update
        if not passes(chain, WRITE, "connections", ns, created_with):
            expected = denied(chain, ns, created_with)
        else:  # a token cannot move a connection out of its own reach
            expected = 200 if passes(chain, WRITE, "connections", ns, resulting) else 403
        updated = http.put(where, json=change, headers=auth)
        assert updated.status_code == expected, (chain, change, updated.text)
        current = resulting if updated.status_code == 200 else created_with
        assert (http.get(where, headers=admin).json()["metadata"] or {}) == current

        may_write = passes(chain, WRITE, "connections", ns, current)
        deleted = http.delete(where, headers=auth)
        assert deleted.status_code == (200 if may_write else denied(chain, ns, current)), (
            chain,
            deleted.text,
        )

        may_write = passes(chain, WRITE, "namespaces", ELSEWHERE)
        made = http.post("/namespaces", json={"name": ELSEWHERE}, headers=auth)
        assert made.status_code == (201 if may_write else 403), (chain, made.text)
        removed = http.delete(f"/namespaces/{ELSEWHERE}", headers=auth)
        assert removed.status_code == (200 if may_write else 403), (chain, removed.text)
        kept = http.put(f"/namespaces/{ns}", json={}, headers=auth)
        assert kept.status_code == (200 if passes(chain, WRITE, "namespaces", ns) else 403), kept.text
    finally:
        assert http.delete(where, headers=admin).status_code in (200, 404)
        assert http.delete(f"/namespaces/{ELSEWHERE}", headers=admin).status_code in (200, 404)


@pytest.mark.parametrize(
    "policy",
    [
        {"operations": "write"},
        {"operations": ["write", "execute"]},
        {"operations": "write", "metadata": {"userId": "a"}},
    ],
)
def test_a_token_may_delete_what_it_may_write(
    policy_gateway: Gateway, modern_upstream: Upstream, http: httpx2.Client, policy: Policy
) -> None:
    token = mint_chain(http, policy_gateway.admin_key, [[policy]])[-1]
    auth, admin = bearer(token), bearer(policy_gateway.admin_key)
    body = {"connectionId": "w2", "mcpUrl": modern_upstream.url, "metadata": {"userId": "a"}}
    try:
        assert http.post("/alpha", json=body, headers=auth).status_code == 201
        assert http.put("/alpha/w2", json={"name": "renamed"}, headers=auth).status_code == 200
        deleted = http.delete("/alpha/w2", headers=auth)
        assert deleted.status_code == 200, deleted.text
    finally:
        assert http.delete("/alpha/w2", headers=admin).status_code in (200, 404)


@given(chain=chains)
@settings(SETTINGS, max_examples=20)
def test_no_token_reaches_the_admin_surfaces(
    policy_gateway: Gateway, http: httpx2.Client, chain: list[Policy]
) -> None:
    """API keys and signing keys are for admin API keys only, whatever a token's policy says."""
    auth = bearer(mint_chain(http, policy_gateway.admin_key, chain)[-1])
    assert http.get("/keys", headers=auth).status_code == 403
    assert http.post("/keys", json={"name": "escalate"}, headers=auth).status_code == 403
    assert http.delete("/keys/key_nonexistent", headers=auth).status_code == 403
    assert http.post("/tokens/signing-key", headers=auth).status_code == 403
