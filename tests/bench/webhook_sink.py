#!/usr/bin/env python3
"""A webhook receiver for benchmarks: answers every POST ``204`` at once, over keep-alive
HTTP/1.1, and counts what it took (printed every few seconds and on exit). It shares the
machine with the server it measures, so it does as little as it can: an asyncio
protocol that finds each request's end by its ``Content-Length`` and answers.

    python tests/bench/webhook_sink.py --port 18099
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

ANSWER = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
taken = 0


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        global taken
        self.buffer += data
        answers = 0
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at)
                length = int(head[at + 15 : line_end if line_end > 0 else None])
            if len(self.buffer) < end + 4 + length:
                break
            self.buffer = self.buffer[end + 4 + length :]
            answers += 1
        if answers and self.transport is not None:
            taken += answers
            self.transport.write(ANSWER * answers)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"webhook sink on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    async with server:
        last = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5)
            if time.monotonic() - last >= 5:
                last = time.monotonic()
                print(f"webhook sink: {taken} deliveries", file=sys.stderr, flush=True)
    print(f"webhook sink: {taken} deliveries in all", file=sys.stderr, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
