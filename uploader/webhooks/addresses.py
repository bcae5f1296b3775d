"""Receivers we refuse to call: link-local addresses, where clouds serve instance
metadata and credentials (169.254.169.254, fd00:ec2::254), and the metadata names.

A webhook URL is checked when the settings load (a literal address or a known name) and
again at each delivery, on what its host resolves to then (a name can be pointed at a
metadata address later)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from urllib.parse import urlsplit

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
# Link-local ranges are refused by ``is_link_local``; these are metadata addresses outside them.
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
)
_RESOLVED_FOR = 30.0  # seconds a verdict on a URL stands before its host is resolved again
_verdicts: dict[str, tuple[float, str | None]] = {}


def _refused_ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_link_local or address in METADATA_ADDRESSES


def refused_literal(url: str) -> str | None:
    """Why ``url`` names a refused receiver outright (no lookup), or None."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    if host in METADATA_HOSTS:
        return f"{host} is a cloud metadata service"
    if _refused_ip(host):
        return f"{host} is a link-local or metadata address"
    return None


async def refused_address(url: str) -> str | None:
    """Why ``url``'s host is refused now, by name or by what it resolves to, or None
    (the verdict is kept for a while: deliveries ask for every event)."""
    cached = _verdicts.get(url)
    if cached is not None and time.monotonic() - cached[0] < _RESOLVED_FOR:
        return cached[1]
    verdict = await _judge(url)
    _verdicts[url] = (time.monotonic(), verdict)
    return verdict


async def _judge(url: str) -> str | None:
    literal = refused_literal(url)
    if literal is not None:
        return f"refused receiver: {literal}"
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return None  # the delivery itself fails, with the reason
    for info in infos:
        address = str(info[4][0])
        if _refused_ip(address):
            return f"refused receiver: {host} resolves to {address}, a link-local or metadata address"
    return None
