"""A ClamAV daemon of the tests' own: Debian's clamd, started on a signature database made
here (freshclam cannot reach its mirror), which knows the EICAR test file."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import subprocess
import threading
import time
import zipfile
from pathlib import Path

from tests.support import free_port

# The EICAR test file: harmless, and found by every scanner as if it were malware.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE = "Uploader-Test-EICAR.UNOFFICIAL"  # clamd names signatures of .ndb files so


def eicar_in_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("readme.txt", "nothing to see\n" * 50)
        archive.writestr("tools/eicar.com", EICAR)
    return buffer.getvalue()


class ClamdServer:
    """clamd on a loopback port and a Unix socket, with ``StreamMaxLength`` as given."""

    def __init__(self, root: Path, stream_max_bytes: int = 8 * 1024 * 1024) -> None:
        self.root = root
        self.port = free_port()
        self.socket = root / "clamd.ctl"
        self.stream_max_bytes = stream_max_bytes
        self.process: subprocess.Popen[bytes] | None = None
        database = root / "db"
        database.mkdir(parents=True, exist_ok=True)
        # A body signature: found in the file itself and in what clamd unpacks (a ZIP).
        (database / "uploader-test.ndb").write_text(f"Uploader-Test-EICAR:0:*:{EICAR.hex()}\n")
        self.config = root / "clamd.conf"
        self.config.write_text(
            f"DatabaseDirectory {database}\n"
            f"TCPSocket {self.port}\nTCPAddr 127.0.0.1\n"
            f"LocalSocket {self.socket}\n"
            "Foreground yes\n"
            f"LogFile {root / 'clamd.log'}\n"
            f"StreamMaxLength {stream_max_bytes}\n"
        )

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        clamd = shutil.which("clamd") or "/usr/sbin/clamd"
        self.process = subprocess.Popen(
            [clamd, "-c", str(self.config)],
            stdout=(self.root / "clamd.out").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60  # loading the engine takes a few seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"clamd exited: {(self.root / 'clamd.out').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"zPING\0")
                    if conn.recv(16).startswith(b"PONG"):
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("clamd did not answer within 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


def clamd_installed() -> bool:
    return shutil.which("clamd") is not None or Path("/usr/sbin/clamd").exists()


class KillingRelay:
    """A TCP relay in front of clamd that kills it (SIGKILL) once ``after_bytes`` of a
    stream have gone through: clamd gone in the middle of a scan."""

    def __init__(self, clamd: ClamdServer, after_bytes: int) -> None:
        self.clamd = clamd
        self.after_bytes = after_bytes
        self.killed = threading.Event()
        self._fired = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.clamd.port), timeout=30)
        except OSError:
            client.close()
            return

        def answers() -> None:
            with contextlib.suppress(OSError):
                while data := upstream.recv(65536):
                    client.sendall(data)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

        threading.Thread(target=answers, daemon=True).start()
        sent = 0
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                upstream.sendall(data)
                sent += len(data)
                if sent >= self.after_bytes and not self._fired:
                    self._fired = True
                    self.clamd.stop()
                    self.killed.set()
                    break
        for conn in (client, upstream):
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self.listener.close()
