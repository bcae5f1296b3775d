"""The shipped proxy configurations, run with Debian's haproxy and nginx in front of API
processes of the test's own (their servers and listen port replaced)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import IN_CI
from tests.support import REPO, LiveServer, free_port

HAPROXY_CFG = REPO / "docker" / "haproxy" / "haproxy.cfg"
NGINX_CONF = REPO / "docker" / "nginx" / "uploader.conf"


def debian_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin")
    if found is None:
        if IN_CI:
            pytest.fail(f"Debian's {name} is required in CI (tests/run installs it)")
        pytest.skip(f"{name} is not installed")
    return found


@dataclass
class Proxy:
    kind: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def tus_url(self) -> str:
        return f"{self.url}/files/"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def haproxy_config(port: int, backend_ports: list[int]) -> str:
    """The shipped configuration, listening on ``port`` of loopback, in front of these."""
    servers = "\n".join(f"    server api{i} 127.0.0.1:{p}" for i, p in enumerate(backend_ports))
    config = re.sub(r"(?m)^    server-template .*$", servers, HAPROXY_CFG.read_text())
    return config.replace("    bind :8080", f"    bind 127.0.0.1:{port}")


def haproxy_in_front(root: Path, backends: list[LiveServer]) -> Proxy:
    port = free_port()
    path = root / "haproxy.cfg"
    path.write_text(haproxy_config(port, [backend.port for backend in backends]))
    log_path = root / "haproxy.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([debian_binary("haproxy"), "-db", "-f", str(path)], stdout=log, stderr=log)
    return Proxy("haproxy", f"http://127.0.0.1:{port}", process, log_path)


def nginx_in_front(root: Path, backends: list[LiveServer]) -> Proxy:
    port = free_port()
    servers = "\n".join(f"    server 127.0.0.1:{b.port} max_fails=2 fail_timeout=5s;" for b in backends)
    site = NGINX_CONF.read_text()
    site = re.sub(r"(?m)^    server api:8000 .*$", servers, site)
    site = site.replace("    listen 8081;", f"    listen 127.0.0.1:{port};")
    (root / "uploader.conf").write_text(site)
    temp = ";\n  ".join(
        f"{kind}_temp_path {root / kind}" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (root / "nginx.conf").write_text(
        f"daemon off;\npid {root / 'nginx.pid'};\nerror_log {root / 'nginx.log'} info;\n"
        f"events {{ worker_connections 1024; }}\n"
        f"http {{\n  access_log off;\n  {temp};\n  include {root / 'uploader.conf'};\n}}\n"
    )
    log_path = root / "nginx.log"
    with open(root / "nginx.out", "wb") as out:
        process = subprocess.Popen(
            [debian_binary("nginx"), "-c", str(root / "nginx.conf"), "-p", str(root)], stdout=out, stderr=out
        )
    return Proxy("nginx", f"http://127.0.0.1:{port}", process, log_path)


def wait_until_ready(proxy: Proxy) -> None:
    deadline = time.monotonic() + 20
    while True:  # the proxy listens, and sends requests to a ready process
        try:
            if httpx.get(f"{proxy.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proxy.process.poll() is None, proxy.log()[-3000:]
        assert time.monotonic() < deadline, f"{proxy.kind} did not start: {proxy.log()[-3000:]}"
        time.sleep(0.2)
