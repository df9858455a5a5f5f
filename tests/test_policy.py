"""The policy decision as a pure function: constraints compiled from claims, asked directly."""

from __future__ import annotations

import time

from proxy.auth.constraints import compile_policy, parse_policy
from proxy.auth.policy import ANY, LIST, Principal, allows


def token(*levels: list[dict[str, object]]) -> Principal:
    now = int(time.time())
    compiled = tuple(compile_policy(parse_policy(level, now)[0]) for level in levels)
    return Principal(kind="service_token", id="t", name="t", key_id="k", policies=compiled)


def call(name: object, **arguments: object) -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def test_rpc_patterns_search_anywhere_and_honour_anchors() -> None:
    anywhere = token([{"rpcReqMatch": {"params.name": "echo"}}])
    anchored = token([{"rpcReqMatch": {"params.name": "^echo$"}}])
    for name, expected_anywhere, expected_anchored in (
        ("echo", True, True),
        ("gh__echo", True, False),
        ("echoes", True, False),
        ("ECHO", False, False),
    ):
        assert allows(anywhere, "execute", "connections", "ns", {}, call(name)) is expected_anywhere
        assert allows(anchored, "execute", "connections", "ns", {}, call(name)) is expected_anchored


def test_rpc_paths_read_nested_values_numbers_and_list_items() -> None:
    policy = token([{"rpcReqMatch": {"params.arguments.count": "^3$", "params.arguments.tags.1": "^b$"}}])
    assert allows(policy, "execute", "connections", "ns", {}, call("x", count=3, tags=["a", "b"]))
    assert not allows(policy, "execute", "connections", "ns", {}, call("x", count=4, tags=["a", "b"]))
    assert not allows(policy, "execute", "connections", "ns", {}, call("x", count=3))  # a missing value
    assert not allows(policy, "execute", "connections", "ns", {}, call("x", count=3, tags="ab"))


def test_rpc_constraints_never_grant_rest_management_but_leave_room_for_some_request() -> None:
    policy = token([{"rpcReqMatch": {"method": "^tools/call$"}}])
    assert not allows(policy, "read", "connections", "ns", {}, None)
    assert allows(policy, LIST, "connections", "ns", ANY, ANY)


def test_metadata_values_compare_as_strings_only() -> None:
    policy = token([{"metadata": {"tier": "3"}}])
    assert allows(policy, "read", "connections", "ns", {"tier": "3"})
    assert not allows(policy, "read", "connections", "ns", {"tier": 3})
    assert not allows(policy, "read", "namespaces", "ns")  # only connections carry metadata


def test_every_level_of_a_chain_must_pass() -> None:
    chain = token([{"namespaces": "a"}], [{"operations": "read"}])
    assert allows(chain, "read", "connections", "a", {})
    assert not allows(chain, "execute", "connections", "a", {})
    assert not allows(chain, "read", "connections", "b", {})


def test_only_strings_and_scalars_of_bounded_size_are_matched() -> None:
    anything = token([{"rpcReqMatch": {"params.arguments.value": ""}}])  # the empty pattern matches any text
    for value, matched in (
        ("text", True),
        (7, True),
        (1.5, True),
        (True, True),
        ({"nested": "x"}, False),
        (["x"], False),
        (None, False),
        ("x" * (64 * 1024), True),
        ("x" * (64 * 1024 + 1), False),
    ):
        assert allows(anything, "execute", "connections", "ns", {}, call("t", value=value)) is matched, value
    big = token([{"rpcReqMatch": {"params.arguments.value": "^12345678901234567890123$"}}])
    assert allows(big, "execute", "connections", "ns", {}, call("t", value=12345678901234567890123))
