"""The full stack as an operator runs it: the API and a Celery worker on PostgreSQL,
Redis and S3 (moto), the worker serving its metrics, both tracing to an OTLP receiver, a
webhook receiver, and Debian's Prometheus scraping both with the shipped rules."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.metrics import MetricWrapperBase

from tests.conftest import fresh_postgres_database
from tests.e2e.proxies import debian_binary
from tests.e2e.test_workers import redis_env_context
from tests.observability.metrics import scrape_url
from tests.observability.otlp import OtlpReceiver
from tests.support import (
    PATCH_HEADERS,
    REPO,
    TUS,
    LiveServer,
    WebhookReceiver,
    WorkerProcess,
    free_port,
    metadata,
    s3_celery_env,
    start_server,
    stop_process,
)
from uploader.observability import metrics

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("celery-stack")]
PROMETHEUS_DIR = REPO / "docker" / "prometheus"
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "uploader.json"


@dataclass
class Stack:
    api: LiveServer
    worker: WorkerProcess
    worker_metrics_url: str
    webhooks: WebhookReceiver
    traces: OtlpReceiver

    def upload(self, data: bytes, *request_ids: str) -> str:
        """A tus upload in as many PATCHes as ``request_ids`` (the creation has none of
        them); returns its id."""
        created = httpx.post(
            self.api.tus_url,
            headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": metadata(filename="f.bin")},
        )
        assert created.status_code == 201, created.text
        url = created.headers["Location"]
        step = -(-len(data) // len(request_ids))
        for index, request_id in enumerate(request_ids):
            start = index * step
            sent = httpx.patch(
                url,
                content=data[start : start + step],
                headers={**PATCH_HEADERS, "Upload-Offset": str(start), "X-Request-ID": request_id},
                timeout=60,
            )
            assert sent.status_code == 204, sent.text
            assert sent.headers["x-request-id"] == request_id
        upload_id: str = url.rsplit("/", 1)[1]
        return upload_id

    def settled(self, upload_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status: dict[str, Any] = httpx.get(f"{self.api.url}/api/v1/uploads/{upload_id}").json()
            if status["state"] in ("ready", "failed"):
                return status
            time.sleep(0.1)
        raise AssertionError(f"{upload_id} not settled; worker log:\n{self.worker.log()[-3000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str, redis_url: str) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("operated")
    receiver = WebhookReceiver()
    traces = OtlpReceiver()
    with fresh_postgres_database() as database_url, redis_env_context(redis_url) as redis_settings:
        env = {
            **s3_celery_env(database_url, redis_settings, s3_endpoint, secrets.token_hex(6)),
            "UPLOADER_WEBHOOK_URL": receiver.url,
            "UPLOADER_WEBHOOK_SECRET": "whsec-operated",
            "UPLOADER_LOG_LEVEL": "info",
            # Every upload is hashed by the worker, none ready from the API at once.
            "UPLOADER_INLINE_DIGEST_MAX_BYTES": "0",
            "OTEL_EXPORTER_OTLP_ENDPOINT": traces.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: spans leave at once
        }
        api = start_server(root / "api", **env)
        worker = WorkerProcess(root / "worker.log", {**os.environ, **api.env})
        metrics_port = free_port()
        try:
            worker.start(2, f"--metrics-port={metrics_port}")
            yield Stack(api, worker, f"http://127.0.0.1:{metrics_port}", receiver, traces)
        finally:
            worker.stop()
            api.stop()
            receiver.close()
            traces.close()


def _log_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_request_id_reaches_the_worker_task_and_the_webhook_deliveries(stack: Stack) -> None:
    first, last = f"first-{secrets.token_hex(4)}", f"last-{secrets.token_hex(4)}"
    upload_id = stack.upload(os.urandom(300_000), first, last)
    assert stack.settled(upload_id)["state"] == "ready"
    # The request that sent the last byte caused the processing and both events.
    api_lines = [line for line in _log_lines(stack.api.log()) if line.get("upload_id") == upload_id]
    received = next(line for line in api_lines if line["event"] == "upload.received")
    assert received["request_id"] == last
    worker_lines = [line for line in _log_lines(stack.worker.log()) if line.get("upload_id") == upload_id]
    assert worker_lines, stack.worker.log()[-2000:]
    assert {line.get("request_id") for line in worker_lines} == {last}
    assert stack.webhooks.wait_for({"upload.received", "upload.ready"})
    ours = [
        headers for headers, body in stack.webhooks.received if json.loads(body)["upload_id"] == upload_id
    ]
    assert [headers["X-Request-ID"] for headers in ours] == [last, last]


def test_the_worker_serves_the_values_of_its_pool_processes(stack: Stack) -> None:
    before = scrape_url(stack.worker_metrics_url)
    upload_ids = [stack.upload(os.urandom(50_000), secrets.token_hex(8)) for _ in range(4)]
    for upload_id in upload_ids:
        assert stack.settled(upload_id)["state"] == "ready"
    after = scrape_url(stack.worker_metrics_url)
    # Counted in the pool's two processes, summed by the main process's endpoint.
    assert after.delta(before, "uploader_processing_finished_total", state="ready") == 4
    succeeded = {"task": "uploader.process_upload", "outcome": "succeeded"}
    assert after.delta(before, "uploader_tasks_total", **succeeded) == 4
    assert after.delta(before, "uploader_processing_steps_total", step="sha256", outcome="done") == 4
    assert after.delta(before, "uploader_processing_steps_total", step="sniff", outcome="done") == 4
    assert after.delta(before, "uploader_processing_step_duration_seconds_count", step="sniff") == 4
    assert httpx.get(f"{stack.worker_metrics_url}/elsewhere").status_code == 404


@dataclass
class Prometheus:
    url: str

    def query(self, expression: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expression}, timeout=10).json()
        assert answer["status"] == "success", (expression, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def eventually(self, expression: str, seconds: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while not (result := self.query(expression)):
            assert time.monotonic() < deadline, f"no answer to {expression} within {seconds} s"
            time.sleep(0.5)
        return result


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = debian_binary("prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    shutil.copy(PROMETHEUS_DIR / "rules.yml", root / "rules.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(root / "rules.yml")],
        "scrape_configs": [
            {
                "job_name": "uploader-api",
                "static_configs": [{"targets": [stack.api.url.removeprefix("http://")]}],
            },
            {
                "job_name": "uploader-worker",
                "static_configs": [{"targets": [stack.worker_metrics_url.removeprefix("http://")]}],
            },
        ],
    }
    (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    with open(root / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (root / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prometheus did not start in 30 s"
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        stop_process(process)  # type: ignore[arg-type]


def test_prometheus_scrapes_the_api_and_the_worker_and_evaluates_the_rules(
    stack: Stack, prometheus: Prometheus
) -> None:
    upload_id = stack.upload(os.urandom(100_000), secrets.token_hex(8))
    assert stack.settled(upload_id)["state"] == "ready"
    prometheus.eventually('count(up{job=~"uploader-.*"} == 1) == 2')
    up = prometheus.query('up{job=~"uploader-.*"}')
    assert {(series["metric"]["job"], series["value"][1]) for series in up} == {
        ("uploader-api", "1"),
        ("uploader-worker", "1"),
    }
    finished = prometheus.eventually('uploader_uploads_finished_total{job="uploader-api",protocol="tus"} > 0')
    assert len(finished) == 1
    steps = prometheus.eventually('sum by (step) (uploader_processing_steps_total{job="uploader-worker"})')
    assert {"sniff", "sha256"} <= {series["metric"]["step"] for series in steps}
    ready = prometheus.eventually('uploader_ready{job="uploader-api"}')
    assert ready[0]["value"][1] == "1"
    # The shipped recording rules evaluate over what was scraped.
    assert prometheus.eventually('uploader:requests:rate5m{job="uploader-api"}')
    assert prometheus.query("ALERTS") == []


def test_every_dashboard_query_is_valid_promql_over_metrics_we_export(
    stack: Stack, prometheus: Prometheus
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(expressions) >= 20
    exported = {
        described.name
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
        for described in value.describe()
    }
    for expression in expressions:
        concrete = expression.replace("$__rate_interval", "1m").replace("$job", ".*")
        prometheus.query(concrete)  # valid: a parse error fails the query
        for name in re.findall(r"\buploader_[a-z0-9_]+", concrete):
            assert re.sub(r"_(bucket|count|sum|total)$", "", name) in exported, (name, expression)


def test_the_shipped_prometheus_files_pass_promtool() -> None:
    debian_binary("prometheus")
    promtool = shutil.which("promtool")
    assert promtool is not None
    for command in (
        ["check", "rules", "rules.yml"],
        ["check", "config", "--syntax-only", "prometheus.yml"],
        ["test", "rules", "rules.test.yml"],
    ):
        checked = subprocess.run([promtool, *command], cwd=PROMETHEUS_DIR, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_one_upload_is_one_trace_from_the_request_to_the_worker_steps_and_the_webhook(stack: Stack) -> None:
    data = os.urandom(200_000)
    request_id = f"traced-{secrets.token_hex(4)}"
    # One request makes the whole upload (tus creation with upload).
    created = httpx.post(
        stack.api.tus_url,
        content=data,
        headers={
            **TUS,
            "Upload-Length": str(len(data)),
            "Content-Type": "application/offset+octet-stream",
            "X-Request-ID": request_id,
        },
        timeout=60,
    )
    assert created.status_code == 201, created.text
    upload_id = created.headers["Location"].rsplit("/", 1)[1]
    assert stack.settled(upload_id)["state"] == "ready"
    deadline = time.monotonic() + 30
    while not (server_spans := stack.traces.tagged("uploader.request_id", request_id)):
        assert time.monotonic() < deadline, "the request's span never arrived"
        time.sleep(0.1)
    assert len(server_spans) == 1, server_spans
    (request,) = server_spans
    assert request.name == "POST /files/"
    assert request.service == "uploader-api"
    spans = stack.traces.wait_for(
        request.trace_id,
        {
            "storage.create",
            "storage.write",
            "storage.finish",
            "S3.UploadPart",
            "run/uploader.process_upload",
            "processing.sniff",
            "processing.sha256",
        },
    )
    services = {span.name: span.service for span in spans}
    assert services["storage.write"] == "uploader-api"
    assert services["run/uploader.process_upload"] == "uploader-worker"
    assert services["processing.sha256"] == "uploader-worker"
    # Database statements and Redis commands of both processes are in it too.
    assert {s.service for s in spans if "db.system" in s.attributes or "db.system.name" in s.attributes} == {
        "uploader-api",
        "uploader-worker",
    }
    # Every span descends from the request's: one tree.
    by_id = {span.span_id: span for span in spans}
    for span in spans:
        ancestor = span
        while ancestor.parent_id and ancestor.parent_id in by_id:
            ancestor = by_id[ancestor.parent_id]
        assert ancestor == request, (span.name, ancestor.name)
    # The webhooks the upload caused carry the trace, and the log lines name it.
    assert stack.webhooks.wait_for({"upload.received", "upload.ready"})
    carried = {
        headers["traceparent"].split("-")[1]
        for headers, body in stack.webhooks.received
        if json.loads(body)["upload_id"] == upload_id
    }
    assert carried == {request.trace_id}
    received_line = next(
        line
        for line in _log_lines(stack.api.log())
        if line.get("upload_id") == upload_id and line["event"] == "upload.received"
    )
    assert received_line["trace_id"] == request.trace_id
    assert received_line["request_id"] == request_id
    worker_line = next(
        line
        for line in _log_lines(stack.worker.log())
        if line.get("upload_id") == upload_id and line["event"] == "processing.ready"
    )
    assert worker_line["trace_id"] == request.trace_id
