"""Tracing is opt-in: on with the standard variables, and neither the SDK nor the
instrumentation loads when off. (FastAPI imports the OpenTelemetry API, about 4 MiB, when
it is installed.) A traced upload, end to end, is in test_stack.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from uploader.observability import tracing


@pytest.mark.parametrize(
    ("environment", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
    ],
)
def test_the_standard_variables_turn_tracing_on(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], on: bool
) -> None:
    for name in (*tracing.ENDPOINT_VARIABLES, "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert tracing.enabled() is on


def _loaded_after_serving(tmp_path: Path, extra_env: dict[str, str]) -> dict[str, object]:
    """Modules loaded by an app that served a request, in a fresh interpreter."""
    program = f"""
import asyncio, json, sys
import httpx
from uploader.app import create_app
from uploader.db.migrate import upgrade_to_head
from uploader.settings import Settings

settings = Settings(data_dir={str(tmp_path)!r})
upgrade_to_head(settings.resolved_database_url)
app = create_app(settings)

async def main():
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            answer = await client.post("/files/", headers={{"Tus-Resumable": "1.0.0", "Upload-Length": "3"}})
            assert answer.status_code == 201

asyncio.run(main())
print(json.dumps({{"otel": sorted(m for m in sys.modules if m.startswith("opentelemetry"))}}))
"""
    import os

    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", program],
        env={**environment, **extra_env},
        capture_output=True,
        text=True,
        check=True,
    )
    loaded: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


OURS = ("opentelemetry.sdk", "opentelemetry.instrumentation", "opentelemetry.exporter")


def test_off_neither_the_sdk_nor_the_instrumentation_is_loaded(tmp_path: Path) -> None:
    loaded = _loaded_after_serving(tmp_path, {})["otel"]
    assert [module for module in loaded if module.startswith(OURS)] == []  # type: ignore[attr-defined]


def test_on_the_sdk_and_the_instrumentation_are_loaded(tmp_path: Path) -> None:
    # An endpoint nothing listens on: the spans are dropped, the request is not delayed.
    loaded = _loaded_after_serving(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    modules = set(loaded["otel"])  # type: ignore[call-overload]
    assert {"opentelemetry.sdk.trace", "opentelemetry.instrumentation.sqlalchemy"} <= modules
