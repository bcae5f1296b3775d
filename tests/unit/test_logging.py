"""Our events and the standard library's records come out as JSON lines of one shape."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from uploader.kit.logging import configure_logging, get_logger


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("restored_logging")
def test_events_and_library_records_share_one_shape(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json_lines=True)
    log = get_logger("uploader.somewhere")
    log.debug("below.the.level", detail=1)
    log.info("upload.received", upload_id="abc", length=3)
    try:
        raise ValueError("broken")
    except ValueError:
        log.exception("request.failed")
    logging.getLogger("uvicorn.error").warning("Started %s", "server")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["upload.received", "request.failed", "Started server"]
    received, failed, library = lines
    assert received["upload_id"] == "abc"
    assert received["length"] == 3
    assert {k: received[k] for k in ("level", "logger")} == {"level": "info", "logger": "uploader.somewhere"}
    assert {k: library[k] for k in ("level", "logger")} == {"level": "warning", "logger": "uvicorn.error"}
    assert received["timestamp"].endswith("Z")
    assert library["timestamp"].endswith("Z")
    assert failed["level"] == "error"
    assert "ValueError: broken" in failed["exception"]


class _FullDisk:
    """A stream whose writes fail as a full disk's do."""

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")

    def isatty(self) -> bool:
        return False


@pytest.mark.usefixtures("restored_logging")
def test_a_log_line_that_cannot_be_written_never_fails_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", _FullDisk())
    configure_logging("info", json_lines=True)
    get_logger("uploader.somewhere").warning("storage.failed", error="No space left on device")
    logging.getLogger("uvicorn.error").error("Exception in ASGI application")
