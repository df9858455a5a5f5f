"""The `junction` command (placeholder until the CLI lands)."""


def main() -> None:
    raise SystemExit("junction CLI not built yet")
