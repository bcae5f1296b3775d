"""The OpenAPI document is a contract: the served one is the committed snapshot, and a
live server holds to it under schemathesis (every phase, bounded in time)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, start_server, uploader_command
from uploader.settings import Settings

SNAPSHOT = REPO / "tests" / "openapi.json"
WRITE_SNAPSHOT = "UPLOADER_WRITE_OPENAPI_SNAPSHOT"


async def test_the_served_document_is_the_committed_snapshot(tmp_path: Path, sqlite_url: str) -> None:
    from tests.support import in_process_client

    async with in_process_client(Settings(data_dir=tmp_path, database_url=sqlite_url)) as client:
        served = (await client.get("/openapi.json")).json()
    if os.environ.get(WRITE_SNAPSHOT):
        SNAPSHOT.write_text(json.dumps(served, indent=2, ensure_ascii=False) + "\n")
        pytest.skip(f"wrote {SNAPSHOT}")
    committed = json.loads(SNAPSHOT.read_text())
    assert served == committed, (
        f"the served OpenAPI document differs from {SNAPSHOT.relative_to(REPO)}: if the API changed on "
        f"purpose, write it anew with {WRITE_SNAPSHOT}=1 tests/run tests/api/test_openapi.py"
    )


def test_the_tus_operations_declare_their_headers_links_and_problems() -> None:
    document = json.loads(SNAPSHOT.read_text())
    operations = document["paths"]
    discover = operations["/files/{upload_id}"]["options"]
    assert [p["name"] for p in discover["parameters"] if p["in"] == "path"] == ["upload_id"]
    patch = operations["/files/{upload_id}"]["patch"]
    headers = {p["name"]: p["schema"] for p in patch["parameters"] if p["in"] == "header"}
    assert headers["Tus-Resumable"] == {"type": "string", "enum": ["1.0.0"]}
    assert headers["Upload-Offset"]["minimum"] == 0
    assert set(patch["requestBody"]["content"]) == {
        "application/offset+octet-stream",
        "application/partial-upload",
    }
    created = operations["/files/"]["post"]["responses"]["201"]
    assert created["headers"]["Location"]["required"] is True
    assert {link["operationId"] for link in created["links"].values()} >= {
        "head_upload",
        "append_to_upload",
        "terminate_upload",
        "upload_status",
        "download_content",
        "upload_events",
    }
    problem = patch["responses"]["4XX"]["content"]["application/problem+json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/Problem"}
    for path in operations.values():
        for operation in path.values():
            assert "422" not in operation["responses"]  # validation errors are 400 problems
            for response in operation["responses"].values():
                assert response["headers"]["X-Request-ID"]["required"] is True


def _admin_key(server_env: dict[str, str]) -> str:
    scopes = [arg for scope in ("upload", "read", "delete", "admin") for arg in ("--scope", scope)]
    made = subprocess.run(
        [*uploader_command(), "keys", "create", "schemathesis", *scopes],
        env=server_env,
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip()


@pytest.mark.e2e
def test_schemathesis_finds_no_server_error_and_no_departure_from_the_document(tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a test dependency"
    server = start_server(tmp_path / "server")
    try:
        key = _admin_key(server.env)
        server.stop()
        server.start()  # now a server that asks for credentials, with an admin key
        assert httpx.get(f"{server.url}/api/v1/uploads").status_code == 401
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "SCHEMATHESIS_HOOKS": "tests.observability.schemathesis_hooks",
        }
        checks = [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_schema_conformance",
            "response_headers_conformance",
        ]

        def schemathesis(phases: str, seconds: int) -> str:
            run = subprocess.run(
                [
                    st,
                    "run",
                    f"{server.url}/openapi.json",
                    f"--phases={phases}",
                    f"--checks={','.join(checks)}",
                    f"--max-time={seconds}",
                    # The direct-upload routes need S3 (tests/api/test_direct_s3.py) and
                    # renders a signed URL (tests/api/test_renders.py): here they answer only
                    # 404 or 403, and links inferred to them took the stateful phase away from
                    # real uploads.
                    "--exclude-path-regex=^/s3/|/render/",
                    "--seed=20261203",
                    "--request-timeout=10",
                    "--header",
                    f"Authorization: Bearer {key}",
                    "--no-color",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
                cwd=tmp_path,
            )
            report = run.stdout[-6000:] + run.stderr[-2000:]
            assert run.returncode == 0, report
            assert "passed" in run.stdout, report
            return run.stdout

        schemathesis("examples,coverage,fuzzing", 40)
        # The stateful phase with a budget of its own (one budget for both let a slow
        # fuzzing phase leave it too little to follow the links far).
        stateful = schemathesis("stateful", 50)
        # The links took the stateful phase from creations to real uploads.
        covered = re.search(r"API Links:\s+(\d+) covered", stateful)
        assert covered is not None, stateful[-6000:]
        assert int(covered.group(1)) >= 20, stateful[-6000:]
        assert "request.failed" not in server.log(), server.log()[-4000:]
    finally:
        server.stop()
