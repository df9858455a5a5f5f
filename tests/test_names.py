"""Exposed tool names: safe forms are valid for strict clients, unique, stable and resolvable."""

from __future__ import annotations

from proxy.gateway.names import SAFE_NAME_RE, NameMap, choose_style, safe_names


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


def test_style_choice_order() -> None:
    assert choose_style(None, "auto", "auto", "claude-ai") == "safe"
    assert choose_style(None, "auto", "auto", "Visual Studio Code") == "safe"
    assert choose_style(None, "auto", "auto", "mcp-inspector") == "dotted"
    assert choose_style(None, "auto", "auto", None) == "dotted"
    assert choose_style("dotted", "safe", "auto", "claude-ai") == "dotted"
    assert choose_style(None, "safe", "dotted", "inspector") == "safe"
    assert choose_style(None, "auto", "safe", "inspector") == "safe"
