"""Exposed tool names: safe forms are valid for strict clients, unique, stable and resolvable."""

from __future__ import annotations

import pytest

from proxy.errors import Conflict
from proxy.gateway.names import SAFE_NAME_RE, NameMap, choose_style, find_tool, safe_names, tools_under


def test_safe_names_match_the_strict_client_pattern_and_are_unique() -> None:
    refs = [
        ("gh", "repo.search"),
        ("gh", "repo_search"),  # collides with repo.search once dots become underscores
        ("gh", "a" * 40 + "." + "b" * 59),
        ("gh", "a" * 40 + "." + "b" * 58 + "c"),  # same 55-char prefix after shortening
        ("user-123-github", "search_repositories"),
        ("x", "weird name/with spaces"),
    ]
    names = safe_names(refs)
    assert len(set(names.values())) == len(refs)
    for name in names.values():
        assert SAFE_NAME_RE.match(name), name
    assert names[("user-123-github", "search_repositories")] == "user-123-github__search_repositories"


def test_safe_names_are_stable_for_the_same_set_in_any_order() -> None:
    refs = [("gh", "repo.search"), ("gh", "repo_search"), ("notion", "search")]
    assert safe_names(refs) == safe_names(list(reversed(refs)))


def test_name_map_resolves_both_forms() -> None:
    name_map = NameMap([("gh", "repo.search"), ("gh", "repo_search")])
    assert name_map.resolve("gh.repo.search") == ("gh", "repo.search")
    assert name_map.resolve("gh.repo_search") == ("gh", "repo_search")
    for ref in (("gh", "repo.search"), ("gh", "repo_search")):
        assert name_map.resolve(name_map.exposed(ref, "safe")) == ref
    assert name_map.resolve("gh.nothing") is None


def test_safe_names_are_the_default_for_every_client() -> None:
    # "auto" (the stored default of a namespace and of the gateway setting) means "no choice here".
    for client in ("claude-ai", "mcp-inspector", "python-sdk", "my-agent", None):
        assert choose_style(None, "auto", "auto", client) == "safe"
    assert choose_style(None, "auto", "auto") == "safe"
    assert choose_style("bogus", "auto", "auto") == "safe"  # an unknown ?tool_names= is ignored


def test_dotted_names_when_the_request_namespace_or_gateway_asks() -> None:
    assert choose_style("dotted", "safe", "safe") == "dotted"  # the request wins
    assert choose_style(None, "dotted", "safe") == "dotted"  # then the namespace
    assert choose_style(None, "auto", "dotted") == "dotted"  # then the gateway setting
    assert choose_style("safe", "dotted", "dotted") == "safe"
    assert choose_style(None, "safe", "dotted") == "safe"


def test_tool_paths_find_the_exact_name_first_then_slashes_and_dots_alike() -> None:
    names = ["repo.search", "files/read", "a.b", "a/b", "plain"]
    assert find_tool(names, "repo.search") == "repo.search"
    assert find_tool(names, "repo/search") == "repo.search"  # how the Smithery clients send it
    assert find_tool(names, "files/read") == "files/read"
    assert find_tool(names, "files.read") == "files/read"
    assert find_tool(names, "a.b") == "a.b" and find_tool(names, "a/b") == "a/b"  # exact wins
    assert find_tool(names, "plain") == "plain"
    assert find_tool(names, "repo") is None and find_tool(names, "repo_search") is None
    assert tools_under(["repo.search", "repo/get", "repos.x", "repo"], "repo") == ["repo.search", "repo/get"]
    assert tools_under(names, "files") == ["files/read"]


def test_a_tool_path_matching_several_tools_only_by_equivalence_is_a_conflict() -> None:
    with pytest.raises(Conflict, match=r"several tools \('a\.b/c', 'a/b\.c'\); give the exact name"):
        find_tool(["a/b.c", "a.b/c"], "a/b/c")
    assert find_tool(["a/b.c", "a.b/c"], "a.b/c") == "a.b/c"
