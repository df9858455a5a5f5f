"""What one extra hop through a Python/uvicorn server costs at concurrency 1, and the gateway on top.

    .venv/bin/python bench/floor.py                 # about 1.5 minutes

Three targets for the same `tools/call echo` (2026-07-28, bare aiohttp JSON-RPC clients, c = 1):

- `direct`: the upstream (`bench/upstream.py`);
- `floor`: `bench/_forwarder.py`, which relays the bytes with the gateway's own server stack and
  upstream client and does nothing else (no auth, no JSON, no session or name handling);
- `gateway`: `/mcp/{ns}` of the real gateway.

The runs are interleaved in `--rounds` blocks. "Added p50" is against `direct`. The difference
between `floor` and `gateway` is what the gateway's own work costs; `floor` itself is the price
of a Python process and a loopback hop on this machine. JSON goes to bench/out/floor.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import BENCH, PYTHON, Cluster, free_port, rest_ok, run_header, table, write_json  # noqa: E402
from overhead import CONNECTION, NAMESPACE, Sessions, run_case  # noqa: E402


async def main(opts: argparse.Namespace) -> None:
    started = time.monotonic()
    with Cluster() as cluster:
        upstream = cluster.upstream()
        gateway = cluster.gateway()
        port = free_port()
        upstream_url = f"http://127.0.0.1:{upstream.port}/mcp"
        forwarder = cluster._spawn(  # noqa: SLF001
            "forwarder",
            [PYTHON, str(BENCH / "_forwarder.py"), "--port", str(port), "--upstream", upstream_url],
            port,
        )
        for proc, path in ((upstream, "/mcp"), (gateway, "/health"), (forwarder, "/")):
            cluster.wait_ready(proc, path)
        key = cluster.admin_key
        rest_ok(gateway, key, "PUT", f"/namespaces/{NAMESPACE}")
        rest_ok(gateway, key, "POST", f"/{NAMESPACE}", {"mcpUrl": upstream_url, "connectionId": CONNECTION})
        sessions = {
            "direct": Sessions(upstream_url, None, "auto", "echo", "raw"),
            "floor": Sessions(f"http://127.0.0.1:{port}/mcp", None, "auto", "echo", "raw"),
            "gateway": Sessions(
                f"http://127.0.0.1:{gateway.port}/mcp/{NAMESPACE}", key, "auto", f"{CONNECTION}__echo", "raw"
            ),
        }
        try:
            for target in sessions.values():
                await target.open(1)
            # `run_case` reports the CPU of the process in its `gateway` slot, so each hop is
            # measured in its own pair, against its own interleaved direct baseline.
            rows: list[dict[str, Any]] = []
            for name, hop in (("floor", forwarder), ("gateway", gateway)):
                pair = {"direct": sessions["direct"], name: sessions[name]}
                measured = await run_case(pair, 1, hop, upstream, opts)
                base = next(r for r in measured if r["target"] == "direct")
                for r in measured:
                    r["pair"] = name
                    r["added_p50_ms"] = round(r["p50_ms"] - base["p50_ms"], 3)
                    r["hop_cpu_ms_per_call"] = r.pop("gateway_cpu_ms_per_call")
                rows += measured
        finally:
            for target in reversed(sessions.values()):
                await target.close()
    headers = [
        "pair",
        "target",
        "calls",
        "p50 ms",
        "p99 ms",
        "added p50 ms",
        "hop CPU ms/call",
        "up CPU ms/call",
        "other CPU",
    ]
    body = [
        [
            r["pair"],
            r["target"],
            str(r["calls"]),
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            "-" if r["target"] == "direct" else f"{r['added_p50_ms']:+.2f}",
            "-" if r["target"] == "direct" else f"{r['hop_cpu_ms_per_call']:.3f}",
            f"{r['upstream_cpu_ms_per_call']:.3f}",
            f"{r['other_cpu_util']:.2f}",
        ]
        for r in rows
    ]
    print()
    print(table(headers, body))
    payload: dict[str, Any] = {
        **run_header("floor"),
        "settings": {
            "warmup": opts.warmup,
            "calls": opts.calls,
            "duration": opts.duration,
            "rounds": opts.rounds,
        },
        "runs": rows,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print(f"\nwrote {write_json('floor.json', payload)} in {payload['wall_seconds']}s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--calls", type=int, default=20000, help="max measured calls per target and pair")
    parser.add_argument(
        "--duration", type=float, default=20.0, help="max measured seconds per target and pair"
    )
    parser.add_argument("--rounds", type=int, default=10, help="blocks per pair, alternating (default 10)")
    parser.add_argument("--max-other-cpu", type=float, default=0.15)
    parser.add_argument("--retries", type=int, default=3)
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse_args(), backend_options={"use_uvloop": True})
