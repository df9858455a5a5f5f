"""Settings come from config.toml and JUNCTION_* env; every one is documented."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented_in_the_example_config() -> None:
    documented = tomllib.loads((ROOT / "config.example.toml").read_text())
    assert {f.name for f in fields(Settings)} == set(documented)
    # The example is itself a valid configuration.
    Settings.load(config_file=str(ROOT / "config.example.toml"), env={})


def test_env_overrides_file_and_flags_override_env(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("port = 9000\nallow_private_upstreams = false\ncall_timeout = 30\n")
    env = {"JUNCTION_PORT": "9100", "JUNCTION_ALLOW_PRIVATE_UPSTREAMS": "1"}
    settings = Settings.load(config_file=str(config), env=env)
    assert settings.port == 9100
    assert settings.allow_private_upstreams is True
    assert settings.call_timeout == 30.0
    assert Settings.load(config_file=str(config), env=env, port=9200).port == 9200


def test_bad_values_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JUNCTION_PORT"):
        Settings.load(env={"JUNCTION_PORT": "eighty"})
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_setting = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.load(config_file=str(bad), env={})
    with pytest.raises(ConfigError, match="tool_names"):
        Settings.load(env={"JUNCTION_TOOL_NAMES": "fancy"})
