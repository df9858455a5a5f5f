"""Shared plumbing for the benchmarks: processes on free ports, readiness, CPU time, REST setup."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
OUT = BENCH / "out"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")

_GATEWAY_CODE = (
    "import sys; from proxy.settings import Settings; from proxy.app import run; "
    "run(Settings.load(host='127.0.0.1', port=int(sys.argv[1]), data_dir=sys.argv[2], "
    "allow_private_upstreams=True, admin_key=sys.argv[3], log_level='warning'))"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_busy_seconds() -> float:
    """CPU seconds spent by everything on the machine (all cores, not idle/iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


async def wait_for_quiet(threshold: float, patience: float = 60.0) -> float:
    """Wait (up to `patience` s) until the machine is idle but for us; the last busy level seen."""
    deadline = time.monotonic() + patience
    busy = float("inf")
    while time.monotonic() < deadline:
        before = system_busy_seconds()
        await anyio.sleep(1.0)
        busy = system_busy_seconds() - before
        if busy < threshold:
            break
    return busy


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def reaped_children_cpu_seconds() -> float:
    """CPU of our children that have exited and been waited for (py-spy, not the servers)."""
    t = os.times()
    return t.children_user + t.children_system


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(8)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Cluster:
    """The processes a benchmark started, and the temp directory they write to."""

    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="junction-bench-")))
    procs: list[Proc] = field(default_factory=list)
    admin_key: str = field(default_factory=lambda: "bench-" + secrets.token_urlsafe(24))
    keep_tmp: bool = False

    def _spawn(self, name: str, argv: list[str], port: int) -> Proc:
        log_path = self.tmp / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - the child owns it for its lifetime
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUNCTION_")}
        popen = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        proc = Proc(name, popen, port, log_path)
        self.procs.append(proc)
        return proc

    def upstream(self, name: str = "upstream", list_delay: float = 0.0, tools: int = 0) -> Proc:
        port = free_port()
        argv = [PYTHON, str(BENCH / "upstream.py"), "--port", str(port)]
        if list_delay:
            argv += ["--list-delay", str(list_delay)]
        if tools:
            argv += ["--tools", str(tools)]
        return self._spawn(name, argv, port)

    def gateway(self) -> Proc:
        port = free_port()
        data_dir = self.tmp / "gateway-data"
        return self._spawn(
            "gateway", [PYTHON, "-c", _GATEWAY_CODE, str(port), str(data_dir), self.admin_key], port
        )

    def wait_ready(self, proc: Proc, path: str, timeout: float = 30.0) -> None:
        """Wait until `path` answers any HTTP status (the server is up)."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{proc.port}{path}"
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
            try:
                urllib.request.urlopen(url, timeout=1).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{proc.name} did not answer {url} within {timeout}s:\n{proc.log_tail()}")

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if not self.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rest(gateway: Proc, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One REST call to the gateway; (status, parsed JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.port}{path}",
        data=data,
        method=method,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def rest_ok(gateway: Proc, key: str, method: str, path: str, body: Any = None) -> Any:
    status, payload = rest(gateway, key, method, path, body)
    if status >= 300:
        raise RuntimeError(f"{method} {path} -> {status}: {payload}")
    return payload


def run_header(benchmark: str) -> dict[str, Any]:
    """What every result file starts with: which benchmark, when, where, and the command."""
    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_uncommitted_proxy_files": len(git("status", "--porcelain", "proxy").splitlines()),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def write_json(name: str, payload: Any) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, sep, *body])
