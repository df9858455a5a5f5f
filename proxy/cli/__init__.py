"""The `junction` command (placeholder until the CLI lands: only `serve`)."""

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(prog="junction")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    args = parser.parse_args()
    from proxy.app import run
    from proxy.settings import Settings

    run(Settings.load(host=args.host, port=args.port))
