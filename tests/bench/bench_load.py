#!/usr/bin/env python3
"""How far one machine goes: the Locust load test (``tests/load/locustfile.py``) against
one API process, then against two and three behind HAProxy (the shipped
``docker/haproxy/haproxy.cfg``, per-request round-robin, no stickiness).

Each configuration is the full stack on a fresh PostgreSQL database and Redis prefix:
``uploader serve`` processes sharing a local storage folder, and one Celery worker
(``--concurrency 1``) processing what arrives. Locust runs headless in one process on the
same machine: it prints uploads/s, bytes/s and p50/p95/p99 of every request type, and
the CPU each side used, so that what the load generator took from the servers is plain.

Usage: python tests/bench/bench_load.py [--processes 1,2,3] [--users 40] [--seconds 60]
       [--json results.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import REDIS_URL, database_url, postgres_admin, uploader_executable, wait_for

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.e2e.proxies import haproxy_config  # noqa: E402

LOCUSTFILE = REPO / "tests" / "load" / "locustfile.py"
FIRST_PORT = 18300
HTTP_ROWS = ["tus create", "tus patch", "status", "download", "events stream"]
ROWS = ["whole upload", *HTTP_ROWS, "event"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU of these processes and their children that have exited."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime: fields 14-17 of stat(5), 12-15 after the name.
        total += sum(int(value) for value in fields[11:15]) / ticks
    return total


def tree(pid: int) -> list[int]:
    """A process and its descendants."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [pid, *(descendant for child in children for descendant in tree(int(child)))]


@dataclass
class Stack:
    """The API processes (behind HAProxy when more than one), the worker, their database."""

    processes: int
    work: Path
    database: str = field(default_factory=lambda: f"uploader_load_{secrets.token_hex(4)}")
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    url: str = ""

    def start(self) -> None:
        postgres_admin(f'CREATE DATABASE "{self.database}"')
        env = {
            **os.environ,
            "UPLOADER_DATABASE_URL": database_url(self.database),
            "UPLOADER_DATA_DIR": str(self.work / "data"),
            "UPLOADER_REDIS_URL": REDIS_URL,
            "UPLOADER_REDIS_PREFIX": f"load-{secrets.token_hex(4)}",
            "UPLOADER_PROCESSING": "celery",
            "UPLOADER_LOG_LEVEL": "warning",
            "UPLOADER_TRUSTED_PROXIES": '["127.0.0.1"]',
        }
        logs = open(self.work / "servers.log", "ab")  # noqa: SIM115 - open while they run
        command = uploader_executable()
        subprocess.run([command, "migrate"], env=env, check=True, stderr=logs)
        ports = [FIRST_PORT + 1 + i for i in range(self.processes)]
        for port in ports:
            self.children.append(
                subprocess.Popen([command, "serve", "--port", str(port)], env=env, stdout=logs, stderr=logs)
            )
        for port in ports:
            wait_for(f"http://127.0.0.1:{port}/readyz")
        worker = [command, "worker", "--concurrency", "1"]
        self.children.append(subprocess.Popen(worker, env=env, stdout=logs, stderr=logs))
        if self.processes == 1:
            self.url = f"http://127.0.0.1:{ports[0]}"
        else:
            config = self.work / "haproxy.cfg"
            config.write_text(haproxy_config(FIRST_PORT, ports))
            haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
            self.children.append(
                subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=logs, stderr=logs)
            )
            self.url = f"http://127.0.0.1:{FIRST_PORT}"
            wait_for(f"{self.url}/readyz")
            time.sleep(4.5)  # every server passes HAProxy's first health checks (2 s, rise 2)
        time.sleep(2)  # the worker has connected to its broker

    def pids(self) -> list[int]:
        return [pid for child in self.children for pid in tree(child.pid)]

    def stop(self) -> None:
        for child in reversed(self.children):
            child.terminate()
        for child in self.children:
            try:
                child.wait(40)
            except subprocess.TimeoutExpired:
                child.kill()
        postgres_admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def run_locust(url: str, users: int, spawn_rate: int, seconds: int, prefix: Path) -> tuple[float, float]:
    """Runs the load; returns the CPU seconds Locust used and the wall-clock seconds."""
    command = [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "-H",
        url,
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "-t",
        f"{seconds}s",
        "--stop-timeout",
        "20",
        "--csv",
        str(prefix),
        "--loglevel",
        "WARNING",
    ]
    started = time.monotonic()
    with open(prefix.with_suffix(".log"), "wb") as out:
        locust = subprocess.Popen(command, stdout=out, stderr=out)
        cpu = 0.0
        while locust.poll() is None:
            cpu = max(cpu, cpu_seconds(tree(locust.pid)))
            time.sleep(1)
            elapsed = int(time.monotonic() - started)
            if elapsed % 15 == 0:
                log(f"  load running, {elapsed} s of {seconds}")
    return cpu, time.monotonic() - started


def read_stats(prefix: Path) -> dict[str, dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as stats:
        return {row["Name"]: row for row in csv.DictReader(stats)}


def measure(processes: int, args: argparse.Namespace, work: Path) -> dict[str, object]:
    stack = Stack(processes, work / f"p{processes}")
    stack.work.mkdir(parents=True)
    log(f"{processes} API process(es): starting the stack")
    stack.start()
    try:
        server_cpu_before = cpu_seconds(stack.pids())
        log(f"{processes} API process(es): {args.users} users for {args.seconds} s on {stack.url}")
        locust_cpu, wall = run_locust(
            stack.url, args.users, args.spawn_rate, args.seconds, stack.work / "locust"
        )
        server_cpu = cpu_seconds(stack.pids()) - server_cpu_before
    finally:
        stack.stop()
    stats = read_stats(stack.work / "locust")
    whole = stats.get("whole upload", {})
    uploads_per_s = float(whole.get("Requests/s", 0) or 0)
    mean_size = float(whole.get("Average Content Size", 0) or 0)
    return {
        "processes": processes,
        "uploads_per_s": uploads_per_s,
        "mib_per_s": uploads_per_s * mean_size / 2**20,
        # HTTP requests only: not the whole uploads and events counted beside them.
        "requests": sum(int(row["Request Count"]) for name, row in stats.items() if name in HTTP_ROWS),
        "failures": int(stats["Aggregated"]["Failure Count"]),
        "locust_cpu_percent": 100 * locust_cpu / wall,
        "server_cpu_percent": 100 * server_cpu / wall,
        "rows": {
            name: {
                "count": int(row["Request Count"]),
                "per_s": float(row["Requests/s"]),
                "p50": row["50%"],
                "p95": row["95%"],
                "p99": row["99%"],
            }
            for name, row in stats.items()
            if name in ROWS
        },
    }


def print_tables(results: list[dict[str, object]], args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    print(
        f"\nLocust, {args.users} users ({args.seconds} s each), full stack on {cores} cores "
        "(PostgreSQL, Redis, one Celery worker, local storage); Locust on the same machine:\n"
    )
    print("| API processes | uploads/s | MiB/s | HTTP requests | failures | CPU: servers | CPU: Locust |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        front = "1, direct" if r["processes"] == 1 else f"{r['processes']}, behind HAProxy"
        print(
            f"| {front} | {r['uploads_per_s']:.1f} | {r['mib_per_s']:.1f} | {r['requests']} "
            f"| {r['failures']} | {r['server_cpu_percent']:.0f} % | {r['locust_cpu_percent']:.0f} % |"
        )
    print("\np50 / p95 / p99 in ms, per request type:\n")
    print("| request | " + " | ".join(f"{r['processes']} process(es)" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for name in ROWS:
        cells = []
        for r in results:
            row = r["rows"].get(name)  # type: ignore[attr-defined]
            cells.append(
                "—" if row is None else f"{row['p50']} / {row['p95']} / {row['p99']} ({row['per_s']:.1f}/s)"
            )
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", default="1,2,3", help="API process counts to measure, in order")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--spawn-rate", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="uploader-load-"))
    try:
        results = [measure(int(n), args, work) for n in args.processes.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_tables(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
