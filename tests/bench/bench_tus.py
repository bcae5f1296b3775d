#!/usr/bin/env python3
"""Side-by-side tus upload benchmark: our server against the peers of ../shared/bench.

One run measures every server with the same clients, alternating servers (the order rotates
each round) so that the noise of this shared machine hits all of them alike:

* ``tusbench.py`` (curl, one PATCH per chunk) with 64 MiB chunks, 8 MiB chunks and one PATCH
  for the whole file, reading the server's peak RSS (VmHWM) afterwards;
* ``tusload.py``: many small uploads at once, with the CPU the server used for them (its
  process tree and its dispatcher process, until it has been idle for 1.5 s: what it does
  after the last answer counts), which moves far less from run to run than uploads/s;
  besides each row's ratio of medians to the first of ours, the median of the ratios taken
  within each round ("same round"), with their range: rounds of 300 uploads last under a
  second, and the machine's speed drifts between them (``--load-uploads 3000`` makes
  rounds of several seconds);
* RSS flatness of our server: a fresh process per file size (128 MiB, then 1 GiB, 64 MiB
  chunks), reporting the peak RSS of each.

Besides our default configuration, ``--variant "LABEL:KEY=VALUE[,KEY=VALUE...]"`` (repeatable)
adds our server started with that extra environment as one more row, alternated with the rest;
each row of ours gets its ratios to @tus-file and tuspyserver. The RSS check uses the default.
A variant's values may name ``{webhook_sink}``: a receiver the run starts in its own process
(``webhook_sink.py``, answering 204 at once), so ``UPLOADER_WEBHOOK_URL={webhook_sink}``
measures uploads with webhooks delivered (with ``UPLOADER_WEBHOOK_DISPATCHER=process`` the
run also starts ``uploader webhooks deliver`` beside that server, unless the variant also
sets ``BENCH_DISPATCHER=none``: then the outbox is written and nothing delivers, which
isolates the cost of the write). A variant that sets ``UPLOADER_JWT_SECRET``
requires tokens: the load client sends one minted with that secret (``tusbench.py`` cannot
send headers, so such a run measures the load only: ``--sizes-mib ''``, which prints the
load table with each row's ratio to the first of ours). A variant that sets
``BENCH_HAPROXY=N`` runs N of our servers, each on a port of its own, behind HAProxy with
the shipped ``docker/haproxy/haproxy.cfg`` (per-request round-robin) on the port the
clients use; with several, give it PostgreSQL and Redis (``UPLOADER_DATABASE_URL``,
``UPLOADER_REDIS_URL``) as a deployment would.

Between measurements the server is left to finish its own work, every upload the run made is
deleted (tus DELETE of the client's upload, and of whatever our status API still lists; the
peers' upload folders are emptied) and dirty pages are written back with sync(2), so that no
leftover bytes or writeback of one run land in the next one; anything left over is reported.

It prints a Markdown table with those ratios and can write the same as JSON.

    python tests/bench/bench_tus.py [--sizes-mib 512] [--rss-sizes-mib 128,1024] \
        [--skip-peers | --only-peers] [--server-cmd "uploader serve --host {host} --port {port}"] \
        [--variant "LABEL:KEY=VALUE,..."]... [--repeats 3] [--json results.json]

The peers are installed by ``<bench>/peers/setup.sh`` (run here if missing) and started by
``<bench>/peers/start.sh``; ``<bench>`` is ``--peers-bench-dir``, ``$UPLOADER_PEERS_BENCH_DIR`` or
``<repo>/../shared/bench``. The client scripts are used as they are, never copied.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
HOST = "127.0.0.1"
DEFAULT_SERVER_CMD = "uploader serve --host {host} --port {port}"
OURS = "ours"
NODE_FILE = "node-file"
TUSPY = "tuspyserver"


@dataclass(frozen=True)
class PeerSpec:
    """A peer started by start.sh: its pid file name, port and data folder."""

    label: str
    port: int
    data_subdir: str | None  # folder under PEERS_DIR holding its uploads (None: not on disk)
    exe_prefix: str  # basename of /proc/<pid>/exe expected for the real server process


PEERS: dict[str, PeerSpec] = {
    NODE_FILE: PeerSpec("@tus/server file-store", 18080, "node-files", "node"),
    TUSPY: PeerSpec("tuspyserver", 18081, "py-files", "python"),
    "node-s3": PeerSpec("@tus/server s3-store (moto)", 18082, None, "node"),
}
# start.sh also starts these; they must be up for node-s3, and are stopped with the rest.
PEER_SIDECAR_PORTS = {"moto": 15000}
DEFAULT_LIST_PATH = "/api/v1/uploads"  # our status API: lists the uploads, newest first
GONE_STATES = {"terminated", "expired"}  # listed by it, but without bytes left to delete
DIRTY_WARN_MIB = 64  # more dirty page cache than this right after sync is reported
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


@dataclass(frozen=True)
class Variant:
    """A configuration of our server: the default one, or a --variant with extra environment."""

    key: str
    label: str
    env: tuple[str, ...] = ()  # KEY=VALUE, applied after --server-env


# ---------------------------------------------------------------- processes and /proc


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return Path(f"/proc/{pid}").exists()


def proc_children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def proc_tree(pid: int) -> list[int]:
    """The pid and all its descendants (those alive now)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if pid_alive(p):
            out.append(p)
            todo += proc_children(p)
    return out


def vm_hwm_mib(pid: int) -> float:
    """Peak resident set size (VmHWM) of one process, in MiB; 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, re.M)
    return int(m.group(1)) / 1024 if m else 0.0


def tree_hwm(pid: int) -> dict[str, float]:
    """VmHWM of each process of the tree; with more than one process their sum is an upper
    bound of the peak footprint (the peaks need not coincide)."""
    return {str(p): round(vm_hwm_mib(p), 1) for p in proc_tree(pid)}


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def exe_name(pid: int) -> str:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return "?"


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    alive: Callable[[], bool] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited")
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM one process we started, then SIGKILL if it lingers."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid) or _is_zombie(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


# ---------------------------------------------------------------- servers


@dataclass
class Server:
    """A running tus server as the benchmark sees it."""

    key: str
    label: str
    endpoint: str
    pid: int
    uploads_dir: Path | None = None  # where the uploads' bytes land; checked empty after cleanup
    prune: bool = False  # uploads_dir is safe to empty while it runs (peers; ours gets DELETEs)
    list_url: str | None = None  # status API listing the uploads (ours)
    headers: dict[str, str] = field(default_factory=dict)  # what every request sends (a token)
    helpers: tuple[int, ...] = ()  # processes of its own outside its tree (a webhook dispatcher)

    def pids(self) -> list[int]:
        """Its processes now: its tree and its helpers."""
        return [*proc_tree(self.pid), *(p for p in self.helpers if pid_alive(p))]

    def settle(self, timeout: float = 60.0, window: float = 0.5, busy_cpu: float = 0.05) -> bool:
        """Wait until the server tree is idle (post-upload work such as checksums or
        processing would otherwise run into the next measurement); False if it never was."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.pids()
            before = cpu_seconds(pids)
            time.sleep(window)
            if cpu_seconds(pids) - before < busy_cpu:
                return True
        log(f"{self.label}: still busy after {timeout:.0f} s, measuring anyway")
        return False


class OurServer:
    """Our server in one configuration, as a child process with a fresh data folder, in its own
    process group."""

    def __init__(
        self,
        args: argparse.Namespace,
        work_dir: Path,
        variant: Variant,
        port: int,
        tag: str | None = None,
    ) -> None:
        self.args, self.variant, self.port = args, variant, port
        self.tag = tag or variant.key
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"data-{self.tag}-", dir=work_dir))
        self.log_path = work_dir / f"server-{self.tag}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.dispatcher: subprocess.Popen[bytes] | None = None

    def _subst(self, s: str) -> str:
        return s.format(
            host=HOST, port=self.port, data_dir=self.data_dir, webhook_sink=self.args.webhook_sink_url
        )

    def start(self) -> Server:
        argv = [self._subst(a) for a in shlex.split(self.args.server_cmd)]
        argv[0] = resolve_executable(argv[0])
        env = dict(os.environ, UPLOADER_DATA_DIR=str(self.data_dir))
        extra = [*self.args.server_env, *self.variant.env]
        for item in extra:
            k, _, v = item.partition("=")
            env[k] = self._subst(v)
        behind = int(env.get("BENCH_HAPROXY", "0"))
        if behind:
            argv = self._behind_haproxy(argv, behind)
        if port_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use")
        log(f"starting {self.variant.label} ({self.tag}, port {self.port}): {shlex.join(argv)}")
        if extra:
            log(f"  with {' '.join(extra)}")
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc
        try:
            wait_until(
                self._ready,
                self.args.start_timeout,
                f"{self.variant.label} ({self.tag})",
                alive=lambda: proc.poll() is None,
            )
        except RuntimeError:
            log(f"server log {self.log_path}:\n{tail(self.log_path)}")
            self.stop()
            raise
        if env.get("UPLOADER_WEBHOOK_DISPATCHER") == "process" and env.get("BENCH_DISPATCHER") != "none":
            # Its deliveries are made by a dispatcher process of its own, beside it.
            with (self.data_dir.parent / f"dispatcher-{self.tag}.log").open("ab") as out:
                self.dispatcher = subprocess.Popen(
                    [argv[0], "webhooks", "deliver"], env=env, cwd=self.data_dir, stdout=out, stderr=out
                )
            log(f"  with a webhook dispatcher process (pid {self.dispatcher.pid})")
        if behind:
            time.sleep(4.5)  # HAProxy's first health checks pass on every server (2 s, rise 2)
        base = f"http://{HOST}:{self.port}"
        headers = {}
        if secret := env.get("UPLOADER_JWT_SECRET"):
            headers["Authorization"] = f"Bearer {bench_token(secret)}"
            log(f"  {self.variant.label} requires tokens: the clients send a minted HS256 token")
        return Server(
            self.variant.key,
            self.variant.label,
            base + self.args.files_path,
            proc.pid,
            uploads_dir=self.data_dir / "files",  # the default local storage, if it is used
            list_url=base + self.args.list_path if self.args.list_path else None,
            headers=headers,
            helpers=(self.dispatcher.pid,) if self.dispatcher is not None else (),
        )

    def _behind_haproxy(self, argv: list[str], count: int) -> list[str]:
        """A command that runs ``count`` of our servers on ports of their own, waits until
        each is ready, then HAProxy with the shipped configuration on this server's port;
        all in one process group, stopped together."""
        sys.path.insert(0, str(REPO))
        from tests.e2e.proxies import haproxy_config

        ports = []
        for _ in range(count):
            with socket.socket() as s:
                s.bind((HOST, 0))
                ports.append(s.getsockname()[1])
        config = self.data_dir.parent / f"haproxy-{self.tag}.cfg"
        config.write_text(haproxy_config(self.port, ports))
        at = shlex.join(argv).replace(f"--port {self.port}", "--port {port}")
        ready = f"{shlex.quote(sys.executable)} -c " + shlex.quote(
            "import sys, urllib.request as u; u.urlopen(f'http://127.0.0.1:{sys.argv[1]}/readyz', timeout=1)"
        )
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        script = "".join(f"{at.format(port=port)} &\n" for port in ports)
        script += "".join(f"until {ready} {port} 2>/dev/null; do sleep 0.2; done\n" for port in ports)
        script += f"exec {shlex.quote(haproxy)} -db -f {shlex.quote(str(config))}\n"
        log(f"  {count} servers on ports {ports}, behind HAProxy on {self.port}")
        return ["/bin/sh", "-c", script]

    def _ready(self) -> bool:
        if not self.args.health_path:
            return port_open(self.port)
        url = f"http://{HOST}:{self.port}{self.args.health_path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """Stop the process group we created, remove the data folder and write back what is
        still dirty of it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
        if self.dispatcher is not None:
            self.dispatcher.terminate()
            self.dispatcher.wait(timeout=20)
            self.dispatcher = None
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir, ignore_errors=True)
            os.sync()

    @contextlib.contextmanager
    def running(self) -> Iterator[Server]:
        try:
            yield self.start()
        finally:
            self.stop()


def resolve_executable(name: str) -> str:
    """A bare name (e.g. ``uploader``) is taken from the active venv first, then the repo's
    ``.venv``, then PATH."""
    if "/" in name:
        return name
    dirs = [Path(sys.prefix) / "bin", Path(sys.executable).parent]
    if os.environ.get("VIRTUAL_ENV"):
        dirs.append(Path(os.environ["VIRTUAL_ENV"]) / "bin")
    dirs.append(REPO / ".venv" / "bin")
    for d in dirs:
        if os.access(d / name, os.X_OK):
            return str(d / name)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name!r} not found in {', '.join(map(str, dirs))} nor on PATH")
    return found


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Peers:
    """The peer servers, started with start.sh and stopped through their pid files."""

    def __init__(self, bench_dir: Path, peers_dir: Path, names: Sequence[str]) -> None:
        self.bench_dir, self.peers_dir, self.names = bench_dir, peers_dir, list(names)
        self.started_pids: list[int] = []
        self.servers: dict[str, Server] = {}

    def _env(self) -> dict[str, str]:
        return dict(os.environ, PEERS_DIR=str(self.peers_dir))

    def ensure_installed(self) -> None:
        ok = (self.peers_dir / "venv/bin/uvicorn").exists() and (
            self.peers_dir / "node_modules/@tus/server"
        ).exists()
        if ok:
            return
        log(f"peers not installed in {self.peers_dir}: running setup.sh (takes a few minutes)")
        subprocess.run(
            [str(self.bench_dir / "peers/setup.sh")],
            env=self._env(),
            check=True,
            stdin=subprocess.DEVNULL,
        )

    def _pid_file(self, name: str) -> Path:
        return self.peers_dir / f"{name}.pid"

    def _read_pid(self, name: str) -> int | None:
        try:
            return int(self._pid_file(name).read_text().strip())
        except (OSError, ValueError):
            return None

    def _data_dir(self, name: str) -> Path | None:
        subdir = PEERS[name].data_subdir
        return self.peers_dir / subdir if subdir else None

    def start(self) -> None:
        self.ensure_installed()
        ports = [PEERS[n].port for n in PEERS] + list(PEER_SIDECAR_PORTS.values())
        busy = [p for p in ports if port_open(p)]
        if busy:
            # Reuse peers someone else started, if their pid files say so; never stop them.
            if all(
                port_open(PEERS[n].port) and (pid := self._read_pid(n)) and pid_alive(pid) for n in self.names
            ):
                log(f"peers already running (ports {busy}); reusing them, will not stop them")
            else:
                raise RuntimeError(f"peer ports {busy} are taken by something else")
        else:
            for name in self.names:  # uploads left by earlier runs would be in the way
                if empty_dir(self._data_dir(name)):
                    log(f"peer {name}: removed leftover uploads from {self._data_dir(name)}")
            log("starting peers with start.sh")
            r = subprocess.run(
                [str(self.bench_dir / "peers/start.sh")],
                env=self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.started_pids = [
                pid
                for f in sorted(self.peers_dir.glob("*.pid"))
                if (pid := self._read_pid(f.stem)) is not None
            ]
            if r.returncode:
                raise RuntimeError(f"start.sh failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        for name in self.names:
            spec = PEERS[name]
            wait_until(functools.partial(port_open, spec.port), 60, f"peer {name}")
            pid = self._server_pid(name, spec)
            endpoint = f"http://{HOST}:{spec.port}/files/"
            self.servers[name] = Server(
                name, spec.label, endpoint, pid, uploads_dir=self._data_dir(name), prune=True
            )
            log(f"peer {name}: pid {pid} ({exe_name(pid)}), {self.servers[name].endpoint}")

    def _server_pid(self, name: str, spec: PeerSpec) -> int:
        """The pid in <name>.pid, checked to be the server itself (``env`` execs, so it
        should be); if it is a wrapper, its only matching descendant is used instead."""
        pid = self._read_pid(name)
        if pid is None or not pid_alive(pid):
            log_file = self.peers_dir / f"{name}.log"
            raise RuntimeError(f"peer {name}: no live pid ({pid}); log:\n{tail(log_file)}")
        if exe_name(pid).startswith(spec.exe_prefix):
            return pid
        matches = [p for p in proc_tree(pid)[1:] if exe_name(p).startswith(spec.exe_prefix)]
        if len(matches) != 1:
            raise RuntimeError(
                f"peer {name}: pid {pid} is {exe_name(pid)!r}, and no single "
                f"{spec.exe_prefix!r} process under it: {matches}"
            )
        log(f"peer {name}: pid file names wrapper {exe_name(pid)!r}; measuring {matches[0]}")
        return matches[0]

    def stop(self) -> None:
        for pid in self.started_pids:
            stop_pid(pid)
        if self.started_pids:
            log(f"stopped peers {self.started_pids}")
        self.started_pids = []
        for name in self.names:
            empty_dir(self._data_dir(name))


def empty_dir(path: Path | None) -> bool:
    """Remove what is in the folder (not the folder); True if there was anything."""
    if path is None or not path.is_dir():
        return False
    children = list(path.iterdir())
    for child in children:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    return bool(children)


def dir_bytes(path: Path | None) -> int:
    """Size of the files under the folder."""
    total = 0
    if path is not None and path.is_dir():
        for p in path.rglob("*"):
            with contextlib.suppress(OSError):
                if p.is_file() and not p.is_symlink():
                    total += p.stat().st_size
    return total


def dirty_mib() -> float:
    """Page cache waiting for or under writeback, machine-wide (/proc/meminfo), in MiB."""
    try:
        info = Path("/proc/meminfo").read_text()
    except OSError:
        return 0.0
    return sum(int(kb) for kb in re.findall(r"^(?:Dirty|Writeback):\s+(\d+) kB", info, re.M)) / 1024


# ---------------------------------------------------------------- clients


def parse_kv(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def run_client(argv: list[str], timeout: float) -> str:
    """Run a client script; its last line is its result. On interrupt or timeout its process
    group gets SIGINT first, so tusbench.py removes its chunk files before it goes."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    if proc.returncode or not out.strip():
        raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}):\n{out}{err}")
    return out.strip().splitlines()[-1]


def bench_token(secret: str) -> str:
    """An upload token for the benchmark's principal, as a backend would mint one: a JWT
    check on every request, a jti, no limits that would stop the run."""
    import jwt

    now = int(time.time())
    claims = {"sub": "bench", "iat": now, "exp": now + 6 * 3600, "jti": os.urandom(8).hex()}
    return jwt.encode({**claims, "scope": "upload read delete"}, secret, algorithm="HS256")


def tus_delete(location: str, headers: dict[str, str] | None = None) -> bool:
    req = urllib.request.Request(
        location, method="DELETE", headers={"Tus-Resumable": "1.0.0", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return bool(200 <= r.status < 300)
    except (OSError, urllib.error.URLError):
        return False


def listed_uploads(server: Server, issues: list[str]) -> list[str]:
    """tus URLs of the uploads the server's status API lists with bytes left (tusload.py does
    not report where its uploads are)."""
    urls: list[str] = []
    if server.list_url is None:
        return urls
    query: dict[str, str] = {"limit": "500"}
    try:
        while True:
            listing = urllib.request.Request(
                f"{server.list_url}?{urllib.parse.urlencode(query)}", headers=server.headers
            )
            with urllib.request.urlopen(listing, timeout=30) as r:
                page = json.load(r)
            urls += [
                urllib.parse.urljoin(server.list_url, item["links"]["tus"])
                for item in page["items"]
                if item["state"] not in GONE_STATES
            ]
            if not page.get("next_cursor"):
                return urls
            query["cursor"] = page["next_cursor"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        issues.append(f"listing its uploads failed: {exc!r}")
        return urls


def bench_file(server: Server, bench_dir: Path, path: Path, chunk_mib: int, timeout: float) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(bench_dir / "tusbench.py"),
        server.endpoint,
        str(path),
        str(chunk_mib),
        "--pid",
        str(server.pid),
    ]
    kv = parse_kv(run_client(argv, timeout))
    hwm = tree_hwm(server.pid)
    return {
        "mib_s": float(kv["mib_s"]),
        "seconds": float(kv["seconds"]),
        "chunk_mib": chunk_mib,
        "peak_rss_mib": round(sum(hwm.values()), 1),
        "peak_rss_main_mib": float(kv.get("peak_rss_mib", "nan")),
        "peak_rss_by_pid": hwm,
        "location": kv["location"],
    }


def bench_load(
    server: Server,
    bench_dir: Path,
    args: argparse.Namespace,
    uploads: int | None = None,
    size_kib: int | None = None,
) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(bench_dir / "tusload.py"),
        server.endpoint,
        "--uploads",
        str(uploads or args.load_uploads),
        "--size-kib",
        str(size_kib or args.load_size_kib),
        "--concurrency",
        str(args.load_concurrency),
    ]
    for name, value in server.headers.items():
        argv += ["--header", f"{name}: {value}"]
    started = {p: cpu_seconds([p]) for p in server.pids()}
    kv = parse_kv(run_client(argv, args.client_timeout))
    # The server's CPU for these uploads, with what it did after the last answer
    # (processing, deliveries): steadier from run to run than uploads/s on a shared machine.
    # Quiet for longer than a poll interval (1 s): a dispatcher process that polls has
    # delivered by then.
    server.settle(window=1.5, busy_cpu=0.02)
    used = sum(cpu_seconds([p]) - started.get(p, 0.0) for p in server.pids())
    done = float(kv.get("uploads", 0))
    cpu_ms = used / done * 1000 if done else float("nan")
    return {k: float(v) for k, v in kv.items()} | {
        "peak_rss_mib": sum(tree_hwm(server.pid).values()),
        "cpu_ms_per_upload": cpu_ms,
    }


def after_run(server: Server, res: Results, what: str, locations: Sequence[str] = ()) -> None:
    """Between measurements: let the server finish its own work (checksums, processing), delete
    every upload the run made (those at ``locations``, those its status API still lists; a
    peer's upload folder is emptied), flush dirty pages so that one run's writeback does not
    land in the next one, then check that nothing is left. Problems go to the report."""
    issues: list[str] = []
    if not server.settle():
        issues.append("did not go idle")
    failed = [loc for loc in locations if not tus_delete(loc, server.headers)]
    failed += [loc for loc in listed_uploads(server, issues) if not tus_delete(loc, server.headers)]
    if failed:
        issues.append(f"DELETE failed for {len(failed)} upload(s), e.g. {failed[0]}")
    if server.prune:
        empty_dir(server.uploads_dir)
    os.sync()
    if left := dir_bytes(server.uploads_dir):
        issues.append(f"{left / MIB:.1f} MiB of uploads left in {server.uploads_dir}")
    dirty = dirty_mib()
    res.meta["dirty_after_sync_max_mib"] = round(max(dirty, res.meta.get("dirty_after_sync_max_mib", 0)), 1)
    if dirty > DIRTY_WARN_MIB:
        issues.append(f"{dirty:.0f} MiB of page cache still dirty right after sync")
    for issue in issues:
        log(f"{server.label}, {what}: {issue}")
        res.cleanup_issues.append(f"{server.label}, {what}: {issue}")


def ensure_random_file(size_mib: int) -> Path:
    path = Path(tempfile.gettempdir()) / f"tus-bench-{size_mib}MiB.bin"
    if path.exists() and path.stat().st_size == size_mib * MIB:
        return path
    log(f"writing {path} ({size_mib} MiB of random bytes)")
    tmp = path.with_suffix(".part")
    with tmp.open("wb") as f:
        for _ in range(size_mib // 8):
            f.write(os.urandom(8 * MIB))
        f.write(os.urandom(size_mib % 8 * MIB))
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- the run


@dataclass
class Results:
    meta: dict[str, Any]
    # size_mib -> test -> server key -> samples
    throughput: dict[int, dict[str, dict[str, list[dict[str, Any]]]]] = field(default_factory=dict)
    load: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rss_flatness: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    cleanup_issues: list[str] = field(default_factory=list)

    def add(self, size: int, test: str, key: str, sample: dict[str, Any]) -> None:
        self.throughput.setdefault(size, {}).setdefault(test, {}).setdefault(key, []).append(sample)


def tests_for(size_mib: int) -> list[tuple[str, int]]:
    return [("chunks_64mib", 64), ("chunks_8mib", 8), ("one_patch", size_mib)]


def rotated(items: list[Server], k: int) -> list[Server]:
    k %= max(len(items), 1)
    return items[k:] + items[:k]


def measure_alternating(
    servers: list[Server], args: argparse.Namespace, bench_dir: Path, res: Results
) -> None:
    width = max(len(s.label) for s in servers)
    for s in servers:  # same warm-up for everyone: imports, JIT, connection pools
        bench_load(s, bench_dir, args, uploads=32, size_kib=64)
        after_run(s, res, "warm-up")
    for rep in range(args.repeats):
        # Each measurement starts with the next server than before, and each round one place
        # further than the last: the same test never keeps one order, however many servers.
        turn = rep
        for size in args.sizes_mib:
            path = ensure_random_file(size)
            for test, chunk in tests_for(size):
                for s in rotated(servers, turn):
                    r = bench_file(s, bench_dir, path, chunk, args.client_timeout)
                    r["repeat"] = rep
                    res.add(size, test, s.key, r)
                    log(
                        f"{s.label:{width}} {size} MiB {test:13} {r['mib_s']:7.1f} MiB/s "
                        f"peak RSS {r['peak_rss_mib']:.0f} MiB"
                    )
                    after_run(s, res, f"{size} MiB {test}", [r["location"]])
                turn += 1
        for s in rotated(servers, turn):
            r = bench_load(s, bench_dir, args)
            r["repeat"] = rep
            res.load.setdefault(s.key, []).append(r)
            log(
                f"{s.label:{width}} load {r['uploads_s']:.1f} uploads/s p50 {r['p50_ms']:.1f} ms "
                f"p99 {r['p99_ms']:.1f} ms, server CPU {r['cpu_ms_per_upload']:.2f} ms an upload"
            )
            after_run(s, res, "load")
        turn += 1


def measure_rss_flatness(args: argparse.Namespace, bench_dir: Path, work_dir: Path, res: Results) -> None:
    """Our default configuration, a fresh process per file size."""
    for size in args.rss_sizes_mib:
        path = ensure_random_file(size)
        with OurServer(args, work_dir, args.variants[0], args.port, f"rss-{size}").running() as s:
            r = bench_file(s, bench_dir, path, 64, args.client_timeout)
            r["size_mib"] = size
            res.rss_flatness.append(r)
            log(
                f"RSS flatness: {size} MiB file, fresh server: peak RSS "
                f"{r['peak_rss_mib']:.0f} MiB, {r['mib_s']:.1f} MiB/s"
            )
            after_run(s, res, f"RSS check {size} MiB", [r["location"]])


# ---------------------------------------------------------------- report


COLUMNS = [  # (key, header)
    ("chunks_64mib", "64 MiB chunks MiB/s"),
    ("chunks_8mib", "8 MiB chunks MiB/s"),
    ("one_patch", "one PATCH MiB/s"),
    ("peak_rss_mib", "peak RSS MiB"),
    ("uploads_s", "{n}x{k}KiB uploads/s"),
]


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x == x]  # drop NaN
    return statistics.median(xs) if xs else None


def summary(res: Results, size: int) -> dict[str, dict[str, float | None]]:
    by_server: dict[str, dict[str, float | None]] = {}
    tests = res.throughput.get(size, {})
    for key in res.labels:
        row: dict[str, float | None] = {}
        rss: list[float] = []
        for test, _ in tests_for(size):
            samples = tests.get(test, {}).get(key, [])
            row[test] = median([x["mib_s"] for x in samples])
            rss += [x["peak_rss_mib"] for x in samples]
        row["peak_rss_mib"] = max(rss) if rss else None
        row["uploads_s"] = median([x["uploads_s"] for x in res.load.get(key, [])])
        by_server[key] = row
    return by_server


def ratios(rows: dict[str, dict[str, float | None]], key: str, base: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for col, _ in COLUMNS:
        a, b = rows.get(key, {}).get(col), rows.get(base, {}).get(col)
        out[col] = round(a / b, 3) if a is not None and b else None
    return out


def fmt(x: float | None, ratio: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:.2f}x" if ratio else (f"{x:.0f}" if x >= 100 else f"{x:.1f}")


def markdown(res: Results, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    out: dict[str, Any] = {"sizes": {}}
    headers = [h.format(n=args.load_uploads, k=args.load_size_kib) for _, h in COLUMNS]
    for size in args.sizes_mib:
        rows = summary(res, size)
        lines += [
            f"### {size} MiB file, median of {args.repeats} run(s); "
            f"load: {args.load_uploads} x {args.load_size_kib} KiB, "
            f"{args.load_concurrency} at once",
            "",
            "| server | " + " | ".join(headers) + " |",
            "|---" * (len(headers) + 1) + "|",
        ]
        for key, row in rows.items():
            lines.append(f"| {res.labels[key]} | " + " | ".join(fmt(row[c]) for c, _ in COLUMNS) + " |")
        size_out: dict[str, Any] = {"servers": rows, "ratios": {}}
        for variant in args.variants:
            for base in (NODE_FILE, TUSPY):
                if variant.key in rows and base in rows:
                    rat = ratios(rows, variant.key, base)
                    size_out["ratios"][f"{variant.key}/{base}"] = rat
                    short = "@tus-file" if base == NODE_FILE else base
                    cells = " | ".join(fmt(rat[c], ratio=True) for c, _ in COLUMNS)
                    lines.append(f"| {variant.label} / {short} | {cells} |")
        out["sizes"][str(size)] = size_out
        lines.append("")
    if not args.sizes_mib and res.load:
        lines += load_table(res, args, out)
    if res.rss_flatness:
        lines += [
            "### Peak RSS of ours, fresh server per file size, 64 MiB chunks",
            "",
            "| file | peak RSS MiB | MiB/s |",
            "|---|---|---|",
        ]
        lines += [
            f"| {r['size_mib']} MiB | {r['peak_rss_mib']:.0f} | {r['mib_s']:.1f} |" for r in res.rss_flatness
        ]
        first, last = res.rss_flatness[0], res.rss_flatness[-1]
        growth = last["peak_rss_mib"] - first["peak_rss_mib"]
        lines += [
            "",
            f"{first['size_mib']} MiB -> {last['size_mib']} MiB file: peak RSS "
            f"{growth:+.0f} MiB ({last['peak_rss_mib'] / first['peak_rss_mib']:.2f}x)",
            "",
        ]
        out["rss_flatness"] = {"runs": res.rss_flatness, "growth_mib": round(growth, 1)}
    if res.cleanup_issues:
        lines += ["### Problems between runs", "", *(f"- {x}" for x in res.cleanup_issues), ""]
    else:
        lines += [
            "Between runs: servers idle, every upload deleted, no upload bytes left, page cache "
            "written back (sync).",
            "",
        ]
    out["cleanup_issues"] = res.cleanup_issues
    return "\n".join(lines), out


def load_table(res: Results, args: argparse.Namespace, out: dict[str, Any]) -> list[str]:
    """The many-small-uploads figures alone (``--sizes-mib ''``), with every row's ratio to
    our first configuration and to @tus/server."""
    med = {
        k: {m: median([x[m] for x in v]) for m in ("uploads_s", "p50_ms", "p99_ms", "cpu_ms_per_upload")}
        for k, v in res.load.items()
    }
    first = args.variants[0].key if args.variants else None
    lines = [
        f"### Load: {args.load_uploads} x {args.load_size_kib} KiB, {args.load_concurrency} at once, "
        f"median of {args.repeats}",
        "",
        "| server | uploads/s | p50 ms | p99 ms | vs first of ours | same round, vs first (range) "
        "| vs @tus-file | server CPU ms/upload | CPU, same round, vs first |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    out["load"] = {}
    for key, row in med.items():

        def ratio(base: str | None, row: dict[str, float | None] = row) -> float | None:
            a, b = row["uploads_s"], med.get(base or "", {}).get("uploads_s")
            return round(a / b, 3) if a is not None and b else None

        by_round = round_ratios(res.load, key, first, "uploads_s")
        cpu_by_round = round_ratios(res.load, key, first, "cpu_ms_per_upload")
        out["load"][key] = {
            **row,
            "vs_first": ratio(first),
            "vs_first_by_round": [round(r, 3) for r in by_round],
            "cpu_vs_first_by_round": [round(r, 3) for r in cpu_by_round],
            "vs_node_file": ratio(NODE_FILE),
        }
        cells = [fmt(row["uploads_s"]), fmt(row["p50_ms"]), fmt(row["p99_ms"]), fmt(ratio(first), ratio=True)]
        cells.append(
            f"{median(by_round):.2f}x ({min(by_round):.2f} to {max(by_round):.2f})" if by_round else "—"
        )
        cells.append(fmt(ratio(NODE_FILE), ratio=True))
        cells.append(f"{row['cpu_ms_per_upload']:.2f}" if row["cpu_ms_per_upload"] is not None else "—")
        cells.append(f"{median(cpu_by_round):.2f}x" if cpu_by_round else "—")
        lines.append(f"| {res.labels[key]} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def round_ratios(
    load: dict[str, list[dict[str, Any]]], key: str, base: str | None, metric: str
) -> list[float]:
    """``key``'s ``metric`` over ``base``'s in each round that measured both. The machine's
    speed drifts over tens of seconds, and the two rows of one round share it: a ratio
    taken within each round leaves the drift out, and the spread of those ratios says how
    far the run's figure can be trusted."""
    if base is None or key == base:
        return []
    base_by_round = {x["repeat"]: x[metric] for x in load.get(base, [])}
    rows = load.get(key, [])
    return [x[metric] / base_by_round[x["repeat"]] for x in rows if base_by_round.get(x["repeat"])]


# ---------------------------------------------------------------- main


def csv_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def parse_variant(spec: str) -> tuple[str, tuple[str, ...]]:
    """``LABEL:KEY=VALUE[,KEY=VALUE...]`` -> (label, ("KEY=VALUE", ...)). The label ends at the
    first colon followed by ``KEY=``, and a comma separates only before ``KEY=``: values may
    hold colons and commas."""
    m = re.fullmatch(rf"(.+?):({ENV_NAME}=.*)", spec, re.S)
    if not m or not m.group(1).strip():
        raise argparse.ArgumentTypeError(f"expected LABEL:KEY=VALUE[,KEY=VALUE...], got {spec!r}")
    return m.group(1).strip(), tuple(re.split(rf",(?={ENV_NAME}=)", m.group(2)))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--sizes-mib",
        type=csv_ints,
        default=[512],
        help="file sizes for the throughput runs, comma-separated (default 512)",
    )
    ap.add_argument(
        "--rss-sizes-mib",
        type=csv_ints,
        default=[128, 1024],
        help="file sizes for the RSS flatness check of ours (default 128,1024)",
    )
    ap.add_argument("--skip-rss", action="store_true", help="skip the RSS flatness check")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds of every measurement; the table shows medians",
    )
    ap.add_argument("--skip-peers", action="store_true", help="measure ours only")
    ap.add_argument(
        "--only-peers",
        action="store_true",
        help="measure the peers only (no server of ours, no RSS check)",
    )
    ap.add_argument(
        "--peers",
        type=lambda s: s.split(","),
        default=[NODE_FILE, TUSPY],
        help=f"peers to measure, of {', '.join(PEERS)} (default node-file,tuspyserver)",
    )
    default_bench = os.environ.get("UPLOADER_PEERS_BENCH_DIR", str(REPO.parent / "shared/bench"))
    ap.add_argument(
        "--peers-bench-dir",
        type=Path,
        default=Path(default_bench),
        help="folder with tusbench.py, tusload.py and peers/ "
        "(env UPLOADER_PEERS_BENCH_DIR; default <repo>/../shared/bench)",
    )
    ap.add_argument(
        "--peers-dir",
        type=Path,
        default=Path(os.environ.get("PEERS_DIR", "/tmp/uploader-peers")),
        help="where setup.sh installed the peers (env PEERS_DIR)",
    )
    ap.add_argument(
        "--server-cmd",
        default=DEFAULT_SERVER_CMD,
        help="command starting our server; {host}, {port} and {data_dir} are "
        "substituted, UPLOADER_DATA_DIR is set to a fresh folder "
        f"(default: {DEFAULT_SERVER_CMD!r})",
    )
    ap.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for our server (placeholders as --server-cmd)",
    )
    ap.add_argument("--label", default="uploader (ours)", help="name of our server in the table")
    ap.add_argument(
        "--variant",
        dest="extra_variants",
        type=parse_variant,
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE,...",
        help="also measure our server with this extra environment (after --server-env; "
        "placeholders as --server-cmd) as the row LABEL, alternated with the others; "
        "repeatable, each on the next port",
    )
    ap.add_argument("--port", type=int, default=18090)
    ap.add_argument("--files-path", default="/files/", help="tus endpoint path of our server")
    ap.add_argument(
        "--list-path",
        default=DEFAULT_LIST_PATH,
        help="GET path of our server listing its uploads, to delete those tusload.py made; empty: none",
    )
    ap.add_argument(
        "--health-path",
        default="/healthz",
        help="GET path answering 200 when up; empty: wait for the port only",
    )
    ap.add_argument("--start-timeout", type=float, default=60.0)
    ap.add_argument("--client-timeout", type=float, default=900.0)
    ap.add_argument("--load-uploads", type=int, default=300)
    ap.add_argument("--load-size-kib", type=int, default=256)
    ap.add_argument("--load-concurrency", type=int, default=32)
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--keep-work-dir", action="store_true", help="keep server logs")
    a = ap.parse_args(argv)
    if a.skip_peers and a.only_peers:
        ap.error("--skip-peers and --only-peers exclude each other")
    if unknown := [p for p in a.peers if p not in PEERS]:
        ap.error(f"unknown peers {unknown}; known: {', '.join(PEERS)}")
    if a.only_peers and a.extra_variants:
        ap.error("--variant measures our server, which --only-peers leaves out")
    a.variants = [] if a.only_peers else [Variant(OURS, a.label)]
    a.variants += [Variant(f"{OURS}-{i}", label, env) for i, (label, env) in enumerate(a.extra_variants, 1)]
    labels = [v.label for v in a.variants] + [PEERS[p].label for p in a.peers]
    if dup := {x for x in labels if labels.count(x) > 1}:
        ap.error(f"labels must differ: {sorted(dup)}")
    peer_ports = {spec.port for spec in PEERS.values()} | set(PEER_SIDECAR_PORTS.values())
    if clash := peer_ports & set(range(a.port, a.port + len(a.variants))):
        ap.error(f"ports {sorted(clash)} of ours (--port and the next ones) belong to the peers")
    if a.sizes_mib and any(item.startswith("UPLOADER_JWT_SECRET=") for v in a.variants for item in v.env):
        ap.error("tusbench.py sends no token: measure a variant that requires tokens with --sizes-mib ''")
    if not a.sizes_mib:
        a.skip_rss = True
    for script in ("tusbench.py", "tusload.py"):
        if not (a.peers_bench_dir / script).exists():
            ap.error(f"{a.peers_bench_dir / script} not found (see --peers-bench-dir)")
    return a


def git_state() -> str:
    """Commit of the repo, with ``+dirty`` when the working tree differs (editable installs
    run the working tree)."""

    def git(*a: str) -> str:
        r = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def start_webhook_sink(args: argparse.Namespace, work_dir: Path) -> subprocess.Popen[bytes] | None:
    """The receiver of variants whose environment names ``{webhook_sink}`` (a webhook
    URL): its own process, answering 204 at once."""
    args.webhook_sink_url = ""
    if not any("{webhook_sink}" in item for v in args.variants for item in v.env):
        return None
    port = args.port + 90
    args.webhook_sink_url = f"http://{HOST}:{port}/hooks"
    script = Path(__file__).with_name("webhook_sink.py")
    with (work_dir / "webhook-sink.log").open("ab") as out:
        sink = subprocess.Popen([sys.executable, str(script), "--port", str(port)], stdout=out, stderr=out)
    wait_until(lambda: port_open(port), 10, "webhook sink", alive=lambda: sink.poll() is None)
    log(f"webhook sink on {args.webhook_sink_url}")
    return sink


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    bench_dir = args.peers_bench_dir.resolve()
    work_dir = Path(tempfile.mkdtemp(prefix="tus-bench-", dir=tempfile.gettempdir()))
    res = Results(
        meta={
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "python": sys.version.split()[0],
            "server_cmd": args.server_cmd,
            "server_env": args.server_env,
            "variants": {v.key: {"label": v.label, "env": list(v.env)} for v in args.variants},
            "git": git_state(),
            "sizes_mib": args.sizes_mib,
            "repeats": args.repeats,
            "load": {
                "uploads": args.load_uploads,
                "size_kib": args.load_size_kib,
                "concurrency": args.load_concurrency,
            },
        }
    )
    peers = None if args.skip_peers else Peers(bench_dir, args.peers_dir.resolve(), args.peers)
    ours = [OurServer(args, work_dir, v, args.port + i) for i, v in enumerate(args.variants)]
    ok = False
    sink = start_webhook_sink(args, work_dir)
    try:
        for size in sorted(
            set(args.sizes_mib + ([] if args.only_peers or args.skip_rss else args.rss_sizes_mib))
        ):
            ensure_random_file(size)
        servers = [o.start() for o in ours]
        if peers:
            peers.start()
            servers += [peers.servers[n] for n in args.peers]
        res.labels = {s.key: s.label for s in servers}
        res.meta["pids"] = {s.key: s.pid for s in servers}
        measure_alternating(servers, args, bench_dir, res)
        for o in ours:
            o.stop()
        if ours and not args.skip_rss:
            measure_rss_flatness(args, bench_dir, work_dir, res)
        ok = True
    finally:
        for o in ours:
            o.stop()
        if peers:
            peers.stop()
        if sink is not None:
            sink.terminate()
            sink.wait(10)
            log(tail(work_dir / "webhook-sink.log"))
        if (ok and not args.keep_work_dir) or not any(work_dir.iterdir()):
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            log(f"server logs kept in {work_dir}")
    res.meta["loadavg_end"] = os.getloadavg()
    table, summ = markdown(res, args)
    print(table)
    if args.json:
        doc = {
            "meta": res.meta,
            "labels": res.labels,
            "summary": summ,
            "samples": {"throughput": res.throughput, "load": res.load},
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")
