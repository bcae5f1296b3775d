#!/usr/bin/env python3
"""A webhook receiver for benchmarks: answers every POST ``204`` at once, over keep-alive
HTTP/1.1, and counts what it took (printed every few seconds and on exit).

    python tests/bench/webhook_sink.py --port 18099
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

taken = 0


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global taken
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            taken += 1
            writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
